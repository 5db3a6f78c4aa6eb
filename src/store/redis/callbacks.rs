//! Stored callbacks on Redis as the admin and the tests see them: one with its jobs, found by id
//! deployment-wide (an id does not name its account), and the latest ids of an account.
//!
//! Neither has an index of its own (none is written on the way of a callback): a callback's
//! jobs are looked for by `lua/callback.lua` (right after its id, else among every job its
//! account holds), and an account's callbacks are read from its dedupe hash, which names every
//! callback it keeps (`HSCAN`, so Redis is never busy long): O(callbacks the account keeps) per
//! listing. Callbacks stored from shape version 5 on are also in the account's arrival index
//! (`arrivals`, by time received), which a backfill reads by window ([`RedisStore::arrivals_of`]).

use super::dead_letters::attempt_record;
use super::{RedisStore, number, shape, text};
use crate::store::shape::read_routed;
use crate::store::{
    Answer, Arrival, CallbackDetail, CallbackId, JobDetail, JobId, JobState, StoreError, TargetKey,
};

/// Fields per callback in `lua/arrivals.lua`'s reply.
const ARRIVAL_FIELDS: usize = 10;

/// Fields of the dedupe hash read per `HSCAN` call.
const SCAN_COUNT: usize = 1000;

/// The callbacks, as the [`Store`](crate::store::Store) impl asks for them.
impl RedisStore {
    pub(super) async fn callback_detail(
        &self,
        id: CallbackId,
    ) -> Result<Option<CallbackDetail>, StoreError> {
        for account in self.accounts().await? {
            let row: Vec<Option<Vec<u8>>> = self
                .scripts
                .callback
                .key(self.base(&account))
                .arg(id)
                .invoke_async(&mut self.conn())
                .await?;
            if !row.is_empty() {
                return detail(id, account, row).map(Some);
            }
        }
        Ok(None)
    }

    /// [`crate::store::Store::arrivals`], from the account's arrival index.
    pub(super) async fn arrivals_of(
        &self,
        account: &str,
        since_ms: i64,
        until_ms: i64,
        after: Option<CallbackId>,
        limit: usize,
    ) -> Result<Vec<Arrival>, StoreError> {
        let row: Vec<Option<Vec<u8>>> = self
            .scripts
            .arrivals
            .key(self.base(account))
            .arg(since_ms)
            .arg(until_ms)
            .arg(after.map(|a| a.0.to_string()).unwrap_or_default())
            .arg(limit)
            .invoke_async(&mut self.conn())
            .await?;
        row.chunks_exact(ARRIVAL_FIELDS)
            .map(|fields| {
                let mut fields = fields.iter().cloned();
                let mut next = move || fields.next().flatten();
                let id = CallbackId(number(next())?);
                let received_at_ms = number(next())?;
                let (query, content_type, body) = (next(), next(), next());
                let (authorizer, version, trace, headers) = (next(), next(), next(), next());
                let routed = next().map(|r| read_routed(&text(r)));
                Ok(Arrival {
                    id,
                    received_at_ms,
                    request: shape(query, content_type, body, authorizer, version)
                        .traced(trace, headers),
                    routed,
                })
            })
            .collect()
    }

    /// [`crate::store::Store::backfill`]: one script for the whole list (one account).
    pub(super) async fn backfill_jobs(
        &self,
        key: &TargetKey,
        jobs: Vec<(CallbackId, JobId)>,
    ) -> Result<u64, StoreError> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let mut invocation = self.scripts.backfill.key(self.base(&key.account));
        invocation.arg(&*key.target);
        for (callback, job) in jobs {
            invocation.arg(callback.0).arg(job.0);
        }
        let queued: u64 = invocation.invoke_async(&mut self.conn()).await?;
        Ok(queued)
    }

    pub(super) async fn latest_callbacks(
        &self,
        account: Option<&str>,
        limit: usize,
    ) -> Result<Vec<CallbackId>, StoreError> {
        let mut latest = Vec::new();
        for account in self.accounts_for(&account.map(str::to_owned)).await? {
            let key = format!("{}:dedupe", self.base(&account));
            let mut cursor = 0u64;
            loop {
                // Field, value, field, value…: the values are the callbacks' ids (a callback
                // stored under two keys, its own and the build before's, is there twice).
                let (next, pairs): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
                    .arg(&key)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query_async(&mut self.conn())
                    .await?;
                for id in pairs.into_iter().skip(1).step_by(2) {
                    latest.push(CallbackId(number(Some(id))?));
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            latest.sort_unstable_by(|a, b| b.cmp(a));
            latest.dedup();
            latest.truncate(limit);
        }
        Ok(latest)
    }
}

/// A callback as `lua/callback.lua` answers it (see there), of `account`.
fn detail(
    id: CallbackId,
    account: String,
    row: Vec<Option<Vec<u8>>>,
) -> Result<CallbackDetail, StoreError> {
    let mut fields = row.into_iter();
    let mut next = move || fields.next().flatten();
    let received_at_ms = number(next())?;
    let (msg_type, event) = (next().map(text), next().map(text));
    let (query, content_type, body, authorizer, version) = (next(), next(), next(), next(), next());
    let (trace, headers) = (next(), next());
    let (answer, answer_type, instance) = (next(), next().map(text), next().map(text));
    let mut detail = CallbackDetail {
        id,
        account,
        received_at_ms,
        msg_type,
        event,
        request: shape(query, content_type, body, authorizer, version).traced(trace, headers),
        answer: answer.map(|body| Answer {
            content_type: answer_type,
            body: body.into(),
        }),
        instance,
        jobs: Vec::new(),
    };
    let jobs: usize = number(next())?;
    for _ in 0..jobs {
        let id = number(next())?;
        let target = text(next().unwrap_or_default());
        let state = match next().as_deref() {
            // Held: pending behind its lane's first job.
            Some(b"p" | b"h") => JobState::Pending,
            Some(b"f") => JobState::InFlight,
            Some(b"d") => JobState::Dead,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "job {id} has no known state: {:?}",
                    other.map(String::from_utf8_lossy)
                )));
            }
        };
        let attempts = number(next()).unwrap_or(0);
        let due_in = next()
            .map(|ms| number::<u64>(Some(ms)).map(std::time::Duration::from_millis))
            .transpose()?;
        let (last_status, last_error) = (number(next()).ok(), next().map(text));
        let records: usize = number(next())?;
        let mut failed = (0..records)
            .map(|_| attempt_record(next(), next()))
            .collect::<Result<Vec<_>, _>>()?;
        failed.sort_by_key(|attempt| attempt.attempt);
        detail.jobs.push(JobDetail {
            id,
            target,
            state,
            attempts,
            due_in,
            last_status,
            last_error,
            failed,
        });
    }
    detail.jobs.sort_by_key(|job| job.id);
    Ok(detail)
}
