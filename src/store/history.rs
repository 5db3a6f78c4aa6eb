//! The history of stored callbacks, as the console pages back through it and searches it
//! ([`Store::history`](super::Store::history)): newest first, by time received then id, with a
//! cursor ([`HistoryCursor`]) to go on from, filtered by account, MsgId, type or event, time,
//! sender, accepting instance and a target's state ([`TargetState`]). Each entry says where
//! each of its targets stands ([`TargetAt`]), so the console's live view opens with them.
//!
//! The sender is matched by its keyed hash ([`NewCallback::sender`](super::NewCallback::sender)),
//! which the store keeps instead of the openid: the caller hashes what an operator typed with
//! each account's key and asks for any of those hashes.
//!
//! A backend may examine only so many callbacks per call (Redis filters in a script, a bounded
//! number a call): a page may then hold fewer than asked, even none, and still have a cursor to
//! go on from. Only a page without a cursor says the search reached the end of what is kept.

use serde::Serialize;

use super::{CallbackId, JobId};

/// Where a page of history ends: the next page holds callbacks strictly older, by
/// (time received, id). Written `ms.id` in URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HistoryCursor {
    pub received_at_ms: i64,
    pub id: CallbackId,
}

impl std::fmt::Display for HistoryCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.received_at_ms, self.id)
    }
}

impl std::str::FromStr for HistoryCursor {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const BAD: &str = "a cursor is <ms>.<id>";
        let (ms, id) = text.split_once('.').ok_or(BAD)?;
        Ok(HistoryCursor {
            received_at_ms: ms.parse().map_err(|_| BAD)?,
            id: id.parse().map_err(|_| BAD)?,
        })
    }
}

impl Serialize for HistoryCursor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Which callbacks a page of history holds. Every filter set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Of this account only (`None`: of every account).
    pub account: Option<String>,
    /// WeChat's `MsgId`, exactly.
    pub msg_id: Option<String>,
    /// Sent by a user whose keyed hash is one of these (one per account the caller hashed the
    /// user for); empty: by anyone.
    pub senders: Vec<String>,
    /// Of this `MsgType` or this `Event`, case aside.
    pub kind: Option<String>,
    /// Received at or after (Unix ms).
    pub since_ms: Option<i64>,
    /// Received before (Unix ms).
    pub until_ms: Option<i64>,
    /// Accepted by this instance (`server.instance_name`), exactly.
    pub instance: Option<String>,
    /// Queued for this target and, with [`HistoryQuery::target_state`], in that state for it.
    pub target: Option<String>,
    pub target_state: Option<TargetState>,
    /// Older than this (the previous page's [`HistoryPage::next`]); `None`: the newest.
    pub before: Option<HistoryCursor>,
    /// At most this many.
    pub limit: usize,
}

/// One stored callback in a page of history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    pub id: CallbackId,
    pub account: String,
    pub received_at_ms: i64,
    pub msg_type: Option<String>,
    pub event: Option<String>,
    /// WeChat's `MsgId`, where the message had one (events have none); stored from shape
    /// version 5 (this release) on.
    pub msg_id: Option<String>,
    /// The targets it was queued for; `None` when stored by a build before shape version 5.
    pub routed: Option<Vec<String>>,
    /// Where each of the [`HistoryEntry::routed`] targets stands now, in that order.
    pub targets: Vec<TargetAt>,
    /// The instance that accepted it; `None` when a build before shape version 6 did.
    pub instance: Option<String>,
}

/// Where a callback stands for one target it was queued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// No job left: delivered (or, for a dead letter purged since, given up on).
    Delivered,
    /// Not attempted yet (due, in flight for the first time, or held in its lane).
    Pending,
    /// Attempted and failed at least once, to be tried again.
    Failing,
    /// A dead letter.
    Dead,
}

impl std::str::FromStr for TargetState {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        (TargetState::ALL.into_iter())
            .find(|state| state.as_str() == text)
            .ok_or("a state is delivered, pending, failing or dead")
    }
}

impl TargetState {
    const ALL: [TargetState; 4] = [
        TargetState::Delivered,
        TargetState::Pending,
        TargetState::Failing,
        TargetState::Dead,
    ];

    /// The state of a target's job still held: dead, or failed `attempts` times so far.
    pub(super) fn of_job(dead: bool, attempts: u32) -> TargetState {
        match (dead, attempts) {
            (true, _) => TargetState::Dead,
            (false, 0) => TargetState::Pending,
            (false, _) => TargetState::Failing,
        }
    }

    /// The name the store's scripts and the admin API use (and serde's, `snake_case`).
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Delivered => "delivered",
            TargetState::Pending => "pending",
            TargetState::Failing => "failing",
            TargetState::Dead => "dead",
        }
    }
}

/// One target of a callback in the history, and where the callback stands for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetAt {
    pub target: String,
    pub state: TargetState,
    /// Its job, while one is held (not delivered).
    pub job: Option<JobId>,
}

impl HistoryEntry {
    /// The cursor of a page that ends with this callback.
    pub fn cursor(&self) -> HistoryCursor {
        HistoryCursor {
            received_at_ms: self.received_at_ms,
            id: self.id,
        }
    }
}

/// Where a callback stands for each target it was queued for (`routed`, in order), from the
/// jobs still held for it (target, job, state): a target without one was delivered. Jobs of a
/// target not listed (stored by a build before shape version 5, which did not list them) come
/// after, so a callback never hides a job it holds.
pub(super) fn targets_of(
    routed: Option<&[String]>,
    mut jobs: Vec<(String, JobId, TargetState)>,
) -> Vec<TargetAt> {
    let mut targets = Vec::with_capacity(jobs.len().max(routed.map_or(0, <[_]>::len)));
    for target in routed.unwrap_or_default() {
        let held = jobs.iter().position(|(t, ..)| t == target);
        targets.push(match held.map(|at| jobs.swap_remove(at)) {
            Some((target, job, state)) => TargetAt {
                target,
                state,
                job: Some(job),
            },
            None => TargetAt {
                target: target.clone(),
                state: TargetState::Delivered,
                job: None,
            },
        });
    }
    jobs.sort_unstable_by_key(|(_, job, _)| *job);
    targets.extend(jobs.into_iter().map(|(target, job, state)| TargetAt {
        target,
        state,
        job: Some(job),
    }));
    targets
}

/// A page of history, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HistoryPage {
    pub callbacks: Vec<HistoryEntry>,
    /// Where to go on from for older callbacks; `None`: nothing older matches.
    pub next: Option<HistoryCursor>,
}

/// One part of a page (one account's, on Redis): what matched, newest first, and how far the
/// search went (`reached`: the last callback examined when it stopped early, at `limit` matches
/// or its budget; `None` when it examined everything older than the cursor).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct HistoryPart {
    pub(super) matched: Vec<HistoryEntry>,
    pub(super) reached: Option<HistoryCursor>,
}

/// One page from the parts of several searches of one cursor (one per account): only what is
/// newer than the furthest any unfinished part reached is complete, so the page ends there.
pub(super) fn merge(parts: Vec<HistoryPart>, limit: usize) -> HistoryPage {
    let floor = parts.iter().filter_map(|p| p.reached).max();
    let mut callbacks: Vec<HistoryEntry> = (parts.into_iter())
        .flat_map(|p| p.matched)
        .filter(|e| floor.is_none_or(|floor| e.cursor() >= floor))
        .collect();
    callbacks.sort_unstable_by_key(|e| std::cmp::Reverse(e.cursor()));
    let next = if callbacks.len() >= limit && limit > 0 {
        callbacks.truncate(limit);
        callbacks.last().map(HistoryEntry::cursor)
    } else {
        floor
    };
    HistoryPage { callbacks, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ms: i64, id: i64) -> HistoryEntry {
        HistoryEntry {
            id: CallbackId(id),
            account: "a".into(),
            received_at_ms: ms,
            msg_type: Some("text".into()),
            event: None,
            msg_id: None,
            routed: None,
            targets: Vec::new(),
            instance: None,
        }
    }

    fn at(ms: i64, id: i64) -> HistoryCursor {
        HistoryCursor {
            received_at_ms: ms,
            id: CallbackId(id),
        }
    }

    #[test]
    fn a_target_without_a_job_was_delivered_and_an_unlisted_job_is_shown() {
        let routed = ["a".to_owned(), "b".to_owned()];
        let jobs = vec![
            ("z".to_owned(), JobId(9), TargetState::Dead),
            ("b".to_owned(), JobId(3), TargetState::Failing),
        ];
        let targets = targets_of(Some(&routed), jobs);
        let states: Vec<(&str, TargetState, Option<i64>)> = (targets.iter())
            .map(|t| (t.target.as_str(), t.state, t.job.map(|j| j.0)))
            .collect();
        assert_eq!(
            states,
            [
                ("a", TargetState::Delivered, None),
                ("b", TargetState::Failing, Some(3)),
                ("z", TargetState::Dead, Some(9)),
            ]
        );
        assert_eq!(TargetState::of_job(false, 0), TargetState::Pending);
        assert_eq!(TargetState::of_job(false, 2), TargetState::Failing);
        assert_eq!(TargetState::of_job(true, 0), TargetState::Dead);
        assert_eq!("failing".parse(), Ok(TargetState::Failing));
        for state in TargetState::ALL {
            let json = serde_json::to_string(&state).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(state.as_str().parse(), Ok(state));
        }
        assert!("late".parse::<TargetState>().is_err());
    }

    #[test]
    fn cursors_read_back_and_refuse_nonsense() {
        assert_eq!("17.4".parse::<HistoryCursor>(), Ok(at(17, 4)));
        assert_eq!(at(17, 4).to_string(), "17.4");
        assert!("17".parse::<HistoryCursor>().is_err());
        assert!("x.4".parse::<HistoryCursor>().is_err());
    }

    /// A part that stopped early (its budget) bounds the page: a callback older than where it
    /// stopped may have been missed there, so the page ends at it, and the cursor says so.
    #[test]
    fn a_page_ends_where_an_unfinished_part_stopped() {
        let done = HistoryPart {
            matched: vec![entry(50, 5), entry(10, 1)],
            reached: None,
        };
        let stopped = HistoryPart {
            matched: vec![entry(40, 4)],
            reached: Some(at(30, 3)),
        };
        let page = merge(vec![done, stopped], 10);
        let ids: Vec<i64> = page.callbacks.iter().map(|e| e.id.0).collect();
        assert_eq!(ids, [5, 4]);
        assert_eq!(page.next, Some(at(30, 3)));
    }

    #[test]
    fn a_full_page_ends_at_its_last_callback_and_an_empty_search_at_none() {
        let part = HistoryPart {
            matched: vec![entry(50, 5), entry(50, 4), entry(40, 3)],
            reached: Some(at(40, 3)),
        };
        let page = merge(vec![part], 2);
        assert_eq!(page.callbacks.len(), 2);
        assert_eq!(page.next, Some(at(50, 4)));
        assert_eq!(
            merge(vec![HistoryPart::default()], 2),
            HistoryPage::default()
        );
    }
}
