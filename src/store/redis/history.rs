//! The history of stored callbacks on Redis ([`Store::history`](crate::store::Store::history)):
//! per account, `lua/history.lua` walks its arrival index (`arrivals`, the sorted set by time
//! received that accept writes from shape version 5 on, shared with backfills) newest first and
//! filters in the script.
//!
//! No index of its own: MsgId and the sender's hash are two small fields of the callback's hash
//! (about 50 bytes a callback with their names, counted, not measured), written by accept and
//! read only here. The cost is the search's: a call examines at most [`BUDGET`] callbacks per
//! account (an `HMGET` each, in one script; fewer with a target's state, whose jobs are read
//! too), and a search that needs more goes on from the cursor it returns, so Redis is never
//! busy long for a rare MsgId in a large index. Callbacks an older build stored are not
//! in the index, and not in the history.

use super::{RedisStore, number, text};
use crate::store::history::{HistoryPart, merge};
use crate::store::shape::read_routed;
use crate::store::{
    CallbackId, HistoryCursor, HistoryEntry, HistoryPage, HistoryQuery, JobId, StoreError,
    TargetAt, TargetState,
};

/// Callbacks one call examines per account, at most…
const BUDGET: usize = 1000;
/// …and when it asks where each stands for a target (a read of its job more per callback).
/// Redis serves nothing else while a script runs: measured (AOF everysec, 3,000 callbacks
/// stored, a search matching none), 8.3–13.9 ms for 2,000 callbacks examined, 16.1 ms for
/// 2,000 with a target's state; so a call stays within about 5 ms, and the console asks again
/// from the cursor.
const BUDGET_BY_STATE: usize = 500;

impl RedisStore {
    pub(super) async fn history_page(
        &self,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, StoreError> {
        let mut parts = Vec::new();
        for account in self.accounts_for(&query.account).await? {
            let mut invocation = self.scripts.history.key(self.base(&account));
            let before = query.before;
            invocation
                .arg(
                    before
                        .map(|b| b.received_at_ms.to_string())
                        .unwrap_or_default(),
                )
                .arg(before.map(|b| b.id.to_string()).unwrap_or_default())
                .arg(query.since_ms.map(|ms| ms.to_string()).unwrap_or_default())
                .arg(query.until_ms.map(|ms| ms.to_string()).unwrap_or_default())
                .arg(query.msg_id.as_deref().unwrap_or(""))
                .arg(query.kind.as_deref().unwrap_or("").to_lowercase())
                .arg(query.limit.max(1))
                .arg(if query.target_state.is_some() {
                    BUDGET_BY_STATE
                } else {
                    BUDGET
                })
                .arg(query.instance.as_deref().unwrap_or(""))
                .arg(query.target.as_deref().unwrap_or(""))
                .arg(query.target_state.map_or("", TargetState::as_str));
            for sender in &query.senders {
                invocation.arg(sender);
            }
            let row: Vec<Option<Vec<u8>>> = invocation.invoke_async(&mut self.conn()).await?;
            parts.push(part(&account, row)?);
        }
        Ok(merge(parts, query.limit.max(1)))
    }
}

/// One account's part of a page, as the script answers it.
fn part(account: &str, row: Vec<Option<Vec<u8>>>) -> Result<HistoryPart, StoreError> {
    let mut fields = row.into_iter();
    let mut next = move || fields.next().flatten();
    let (ms, id) = (
        next().filter(|f| !f.is_empty()),
        next().filter(|f| !f.is_empty()),
    );
    let reached = match (ms, id) {
        (Some(ms), Some(id)) => Some(HistoryCursor {
            received_at_ms: score(ms)?,
            id: CallbackId(number(Some(id))?),
        }),
        _ => None,
    };
    let mut matched = Vec::new();
    while let Some(id) = next() {
        let received_at_ms = score(next().unwrap_or_default())?;
        let (msg_type, event, msg_id) = (next().map(text), next().map(text), next().map(text));
        let routed = next().map(|r| read_routed(&text(r)));
        let instance = next().map(text);
        let count: usize = number(next())?;
        let mut targets = Vec::with_capacity(count);
        for _ in 0..count {
            let target = text(next().unwrap_or_default());
            let job = next().filter(|j| !j.is_empty());
            let state = text(next().unwrap_or_default());
            targets.push(TargetAt {
                target,
                job: job.map(|j| number(Some(j)).map(JobId)).transpose()?,
                state: state.parse().map_err(|e: &str| {
                    StoreError::Corrupt(format!("a history target's state {state:?}: {e}"))
                })?,
            });
        }
        matched.push(HistoryEntry {
            id: CallbackId(number(Some(id))?),
            account: account.to_owned(),
            received_at_ms,
            msg_type,
            event,
            msg_id,
            routed,
            targets,
            instance,
        });
    }
    Ok(HistoryPart { matched, reached })
}

/// A time received as the index scores it (Redis may write a score as a float).
fn score(field: Vec<u8>) -> Result<i64, StoreError> {
    let value: f64 = number(Some(field))?;
    Ok(value as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_reads_where_it_stopped_and_each_match() {
        let f = |s: &str| Some(s.as_bytes().to_vec());
        let row = vec![
            f("1700"),
            f("7"),
            f("9"),
            f("1800"),
            f("text"),
            None,
            f("42"),
            f("bot\n"),
            f("eu-1"),
            f("1"),
            f("bot"),
            f("10"),
            f("failing"),
        ];
        let part = part("acct", row).expect("a reply of the script");
        assert_eq!(
            part.reached,
            Some(HistoryCursor {
                received_at_ms: 1700,
                id: CallbackId(7)
            })
        );
        assert_eq!(part.matched.len(), 1);
        assert_eq!(part.matched[0].msg_id.as_deref(), Some("42"));
        assert_eq!(part.matched[0].routed, Some(vec!["bot".to_owned()]));
        assert_eq!(part.matched[0].instance.as_deref(), Some("eu-1"));
        assert_eq!(
            part.matched[0].targets,
            [TargetAt {
                target: "bot".into(),
                state: TargetState::Failing,
                job: Some(JobId(10)),
            }]
        );
        let done = part_of_nothing();
        assert_eq!(done.reached, None);
    }

    fn part_of_nothing() -> HistoryPart {
        let empty = Some(Vec::new());
        part("acct", vec![empty.clone(), empty]).expect("an empty reply")
    }
}
