//! The history of stored callbacks, as the console pages back through it and searches it
//! ([`Store::history`](super::Store::history)): newest first, by time received then id, with a
//! cursor ([`HistoryCursor`]) to go on from, filtered by account, MsgId, type or event, time
//! and sender.
//!
//! The sender is matched by its keyed hash ([`NewCallback::sender`](super::NewCallback::sender)),
//! which the store keeps instead of the openid: the caller hashes what an operator typed with
//! each account's key and asks for any of those hashes.
//!
//! A backend may examine only so many callbacks per call (Redis filters in a script, a bounded
//! number a call): a page may then hold fewer than asked, even none, and still have a cursor to
//! go on from. Only a page without a cursor says the search reached the end of what is kept.

use serde::Serialize;

use super::CallbackId;

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
        }
    }

    fn at(ms: i64, id: i64) -> HistoryCursor {
        HistoryCursor {
            received_at_ms: ms,
            id: CallbackId(id),
        }
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
