//! What each command does in SQL, run by the writer thread inside its batch's transaction
//! (see `writer`): the accept (dedupe and insert-if-absent of a callback and its jobs), leases,
//! outcomes, releases, dead letters and purges.
//!
//! Nothing here commits: a command's answer waits for its batch's commit, so a command that
//! fails leaves nothing behind once the writer rolls the batch back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{OptionalExtension, params};

use super::schema::{DEAD, HELD, IN_FLIGHT, PENDING};
use super::writer::Writer;
use super::{DEAD_LETTER_MATCH, SHAPE_COLUMNS, matching, shape_at};
use crate::clock::now_ms;
use crate::store::shape::{read_routed, routed_field};
use crate::store::{
    Accepted, Answer, AttemptReport, CallbackId, DeadLetterFilter, Disposition, Job, JobId,
    LEGACY_KEY_WINDOW, LeaseToken, Leased, NewCallback, Recorded, Replayed, SHAPE_VERSION,
    StoreError, TargetKey,
};

/// A stored callback as a resend finds it: its id, its answer's type and body, and when its
/// answer is due (the primary's relay may still save one).
type StoredCopy = (CallbackId, Option<String>, Option<Vec<u8>>, Option<i64>);

/// What a resend of the stored callback `first` hears.
fn duplicate_of((id, answer_type, answer, answer_due): StoredCopy) -> Accepted {
    let answer = answer.map(|body| Answer {
        content_type: answer_type,
        body: Bytes::from(body),
    });
    let answer_pending = answer_due
        .filter(|_| answer.is_none())
        .map(|due| due - now_ms())
        .filter(|left| *left > 0)
        .map(|left| Duration::from_millis(left.unsigned_abs()));
    Accepted::Duplicate {
        callback: id,
        answer,
        answer_pending,
    }
}

/// A lease token as SQLite stores it (an INTEGER is signed; the bits are what matter).
fn lease_param(token: LeaseToken) -> i64 {
    i64::from_ne_bytes(token.to_ne_bytes())
}

/// The key in `routed` for `account`'s `target`, if it is there.
fn routed_key<'a>(routed: &'a [TargetKey], account: &str, target: &str) -> Option<&'a TargetKey> {
    routed
        .iter()
        .find(|k| &*k.account == account && &*k.target == target)
}

/// The commands, each on the writer's connection in the open transaction.
impl Writer {
    pub(super) fn accept(&mut self, callback: &NewCallback) -> Result<Accepted, StoreError> {
        // A resend whose first copy the build before stored, under the key it computed.
        if let Some(legacy) = &callback.legacy_dedupe_key {
            let window = i64::try_from(LEGACY_KEY_WINDOW.as_millis()).unwrap_or(i64::MAX);
            let since = callback.received_at_ms.saturating_sub(window);
            if let Some(first) = self.stored_copy(&callback.account, legacy, since)?
                && first.0 != callback.id
            {
                return Ok(duplicate_of(first));
            }
        }
        let request = &callback.request;
        // Not `RETURNING id`: the caller made the id, and RETURNING costs a temporary table.
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO callbacks (id, account, dedupe_key, received_at, msg_type, event, query, content_type, body, answer_due, shape_version, authorizer, trace, headers, routed, lane, msg_id, sender, instance)
                 VALUES (?9, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
                 ON CONFLICT (account, dedupe_key) DO NOTHING",
            )?
            .execute(params![
                    &*callback.account,
                    callback.dedupe_key,
                    callback.received_at_ms,
                    callback.msg_type,
                    callback.event,
                    request.stored_query(),
                    request.content_type,
                    &request.body[..],
                    callback.id,
                    callback
                        .answer_pending_ms
                        .map(|ms| now_ms().saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))),
                    SHAPE_VERSION,
                    request.authorizer,
                    request.trace,
                    request.stored_headers(),
                    routed_field(callback.jobs.iter().map(|job| &*job.target)),
                    request.lane,
                    callback.msg_id,
                    callback.sender,
                    callback.instance.as_deref(),
            ])?
            == 1;
        let new = |waiting| Accepted::New {
            callback: callback.id,
            jobs: callback.jobs.iter().map(|job| job.id).collect(),
            waiting,
        };
        if !inserted {
            let first = self
                .stored_copy(&callback.account, &callback.dedupe_key, i64::MIN)?
                .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
            if first.0 == callback.id {
                // This very write, sent again: it is stored already. A job it leased waits
                // unless it is still in flight under that lease.
                let mut waiting = Vec::new();
                for job in callback.jobs.iter().filter(|job| job.ordered) {
                    if let Some(lease) = job.lease
                        && !self.in_flight_under(job.id, lease)?
                    {
                        waiting.push(job.id);
                    }
                }
                return Ok(new(waiting));
            }
            return Ok(duplicate_of(first));
        }
        let id = callback.id;
        let now = now_ms();
        let mut insert_job = self.conn.prepare_cached(
            "INSERT INTO jobs (id, callback_id, account, target, state, attempts, next_at, updated_at, lease, lane, lane_seq)
             VALUES (?6, ?1, ?2, ?3, ?4, 0, ?5, ?5, ?7, ?8, ?9)",
        )?;
        let mut waiting = Vec::new();
        for job in &callback.jobs {
            let mut state = if job.lease.is_some() {
                IN_FLIGHT
            } else {
                PENDING
            };
            // A lane-ordered job joins the end of its lane, held if the lane has an open job.
            let lane = request.lane.as_deref().filter(|_| job.ordered);
            let mut seq = None;
            if let Some(lane) = lane {
                let (held, place) = self.join_lane(&callback.account, &job.target, lane)?;
                if held {
                    state = HELD;
                    if job.lease.is_some() {
                        waiting.push(job.id);
                    }
                }
                seq = Some(place);
            }
            insert_job.execute(params![
                id,
                &*callback.account,
                &*job.target,
                state,
                now,
                job.id,
                lease_param(job.lease.unwrap_or(0)),
                lane,
                seq,
            ])?;
        }
        Ok(new(waiting))
    }

    /// Whether job `id` is in flight under `lease`.
    fn in_flight_under(&self, id: JobId, lease: LeaseToken) -> Result<bool, StoreError> {
        let found = self
            .conn
            .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1 AND state = ?2 AND lease = ?3")?
            .query_row(params![id, IN_FLIGHT, lease_param(lease)], |_| Ok(()))
            .optional()?;
        Ok(found.is_some())
    }

    /// Where a job joining the end of `lane` for `target` goes: whether it is held (the lane
    /// has an open job: pending, in flight or held), and its place, after the last open one's.
    fn join_lane(
        &self,
        account: &str,
        target: &str,
        lane: &str,
    ) -> Result<(bool, i64), StoreError> {
        let last: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT MAX(lane_seq) FROM jobs
                 WHERE account = ?1 AND target = ?2 AND lane = ?3 AND state IN (0, 1, 2)",
            )?
            .query_row(params![account, target, lane], |row| row.get(0))?;
        Ok((last.is_some(), last.unwrap_or(0) + 1))
    }

    /// Lets the next held job of `lane` go (pending, due since it arrived), unless the lane still
    /// has a job pending or in flight: called when a job of the lane was delivered or died.
    fn release_lane(&self, account: &str, target: &str, lane: &str) -> Result<bool, StoreError> {
        let released = self
            .conn
            .prepare_cached(
                "UPDATE jobs SET state = 0 WHERE id = (
                    SELECT id FROM jobs WHERE account = ?1 AND target = ?2 AND lane = ?3 AND state = 2
                    ORDER BY lane_seq LIMIT 1)
                 AND NOT EXISTS (SELECT 1 FROM jobs
                    WHERE account = ?1 AND target = ?2 AND lane = ?3 AND state IN (0, 1))",
            )?
            .execute(params![account, target, lane])?;
        Ok(released > 0)
    }

    /// Reserves the next `count` ids, in the transaction of the batch: the reservation is on
    /// disk before any of them is handed out. Kept in memory even if the batch fails, which only
    /// skips those ids.
    pub(super) fn reserve_ids(&mut self, count: u64) -> Result<i64, StoreError> {
        let last = i64::try_from(count)
            .ok()
            .and_then(|count| self.ids_reserved.checked_add(count))
            .filter(|last| *last < 1 << 53)
            .ok_or_else(|| StoreError::Unexpected("no ids left below 2^53".into()))?;
        self.conn
            .prepare_cached(
                "INSERT INTO ids_reserved (one, last) VALUES (1, ?1)
                 ON CONFLICT (one) DO UPDATE SET last = excluded.last",
            )?
            .execute(params![last])?;
        self.ids_reserved = last;
        Ok(last)
    }

    /// Gives back the ids after `out` of the block that ends at `reserved`, if it is still the
    /// latest; ids already in the file stay below the new mark, since they were handed out.
    pub(super) fn return_ids(&mut self, reserved: i64, out: i64) -> Result<(), StoreError> {
        if self.ids_reserved != reserved || out >= reserved {
            return Ok(());
        }
        self.conn
            .prepare_cached("UPDATE ids_reserved SET last = ?1 WHERE last = ?2")?
            .execute(params![out, reserved])?;
        self.ids_reserved = out;
        Ok(())
    }

    pub(super) fn keep(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO kept (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![name, value])?;
        Ok(())
    }

    /// The callback stored under `key` of `account`, received at or after `since_ms`, if any.
    pub(super) fn stored_copy(
        &self,
        account: &str,
        key: &str,
        since_ms: i64,
    ) -> Result<Option<StoredCopy>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id, answer_type, answer, answer_due FROM callbacks
                 WHERE account = ?1 AND dedupe_key = ?2 AND received_at >= ?3",
            )?
            .query_row(params![account, key, since_ms], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })
            .optional()?)
    }

    pub(super) fn save_answer(
        &mut self,
        id: CallbackId,
        answer: &Answer,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE callbacks SET answer_type = ?2, answer = ?3 WHERE id = ?1")?
            .execute(params![id, answer.content_type, &answer.body[..]])?;
        Ok(())
    }

    pub(super) fn release(&mut self, jobs: &[Leased], now: i64) -> Result<(), StoreError> {
        let mut release = self.conn.prepare_cached(
            "UPDATE jobs SET state = ?2, next_at = ?3, updated_at = ?3, lease = 0
             WHERE id = ?1 AND state = ?4 AND lease = ?5",
        )?;
        for job in jobs {
            release.execute(params![
                job.job,
                PENDING,
                now,
                IN_FLIGHT,
                lease_param(job.token)
            ])?;
        }
        Ok(())
    }

    pub(super) fn lease(
        &mut self,
        key: &TargetKey,
        now: i64,
        limit: usize,
        token: LeaseToken,
    ) -> Result<Vec<Job>, StoreError> {
        let mut select = self.conn.prepare_cached(&format!(
            "SELECT j.id, j.callback_id, j.attempts, j.retry_base, j.lane, {SHAPE_COLUMNS}
             FROM jobs j JOIN callbacks c ON c.id = j.callback_id
             WHERE j.account = ?1 AND j.target = ?2 AND j.state = 0 AND j.next_at <= ?3
             ORDER BY j.next_at LIMIT ?4"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let jobs = select
            .query_map(params![&*key.account, &*key.target, now, limit], |row| {
                Ok(Job {
                    id: row.get(0)?,
                    callback: row.get(1)?,
                    key: key.clone(),
                    lease: token,
                    attempts: row.get(2)?,
                    retry_base: row.get(3)?,
                    lane: row.get::<_, Option<String>>(4)?.map(Arc::from),
                    request: Arc::new(shape_at(row, 5)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        drop(select);
        let mut mark = self
            .conn
            .prepare_cached("UPDATE jobs SET state = ?2, lease = ?3 WHERE id = ?1")?;
        for job in &jobs {
            mark.execute(params![job.id, IN_FLIGHT, lease_param(token)])?;
        }
        Ok(jobs)
    }

    pub(super) fn next_due(
        &mut self,
        key: &TargetKey,
        now: i64,
    ) -> Result<Option<Duration>, StoreError> {
        let at: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT MIN(next_at) FROM jobs WHERE account = ?1 AND target = ?2 AND state = 0",
            )?
            .query_row(params![&*key.account, &*key.target], |row| row.get(0))?;
        Ok(at.map(|at| Duration::from_millis(u64::try_from(at - now).unwrap_or(0))))
    }

    pub(super) fn record(&mut self, report: &AttemptReport) -> Result<Recorded, StoreError> {
        let lease = lease_param(report.lease);
        let (state, next_at) = match report.disposition {
            Disposition::Delivered => {
                let deleted = self
                    .conn
                    .prepare_cached("DELETE FROM jobs WHERE id = ?1 AND state = ?2 AND lease = ?3")?
                    .execute(params![report.job, IN_FLIGHT, lease])?;
                if deleted == 0 {
                    return Ok(Recorded::LeaseLost);
                }
                if report.attempt > 1 {
                    // Earlier attempts failed and were recorded; the job is done, so are they.
                    self.conn
                        .prepare_cached("DELETE FROM attempts WHERE job_id = ?1")?
                        .execute(params![report.job])?;
                }
                if let Some(lane) = &report.lane
                    && self.release_lane(&report.key.account, &report.key.target, lane)?
                {
                    return Ok(Recorded::LaneNextDue);
                }
                return Ok(Recorded::Applied);
            }
            Disposition::RetryIn(delay) => (
                PENDING,
                now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
            ),
            Disposition::Dead => (DEAD, report.at_ms),
        };
        // Only under the attempt's own lease: an outcome recorded again (retried after a commit
        // that was reported failed but did reach the disk) must not undo a later lease.
        let updated = self
            .conn
            .prepare_cached(
                "UPDATE jobs SET state = ?2, attempts = ?3, next_at = ?4, updated_at = ?5, last_status = ?6, last_error = ?7
                 WHERE id = ?1 AND state = ?8 AND lease = ?9",
            )?
            .execute(params![
                report.job,
                state,
                report.attempt,
                next_at,
                report.at_ms,
                report.status,
                report.error,
                IN_FLIGHT,
                lease
            ])?;
        if updated == 0 {
            return Ok(Recorded::LeaseLost);
        }
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO attempts (job_id, attempt, at, status, error) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![report.job, report.attempt, report.at_ms, report.status, report.error])?;
        // A dead letter releases its lane; a retry keeps it.
        if let (Some(lane), Disposition::Dead) = (&report.lane, report.disposition)
            && self.release_lane(&report.key.account, &report.key.target, lane)?
        {
            return Ok(Recorded::LaneNextDue);
        }
        Ok(Recorded::Applied)
    }

    /// A target's pending jobs due since before `before`: dead letters with `reason`.
    pub(super) fn bury_waiting(
        &mut self,
        key: &TargetKey,
        before: i64,
        reason: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        let lanes = self
            .conn
            .prepare_cached(
                "UPDATE jobs SET state = ?3, updated_at = ?4, last_error = ?5
                 WHERE account = ?1 AND target = ?2 AND state = ?6 AND next_at <= ?7 RETURNING lane",
            )?
            .query_map(
                params![
                    &*key.account,
                    &*key.target,
                    DEAD,
                    now,
                    reason,
                    PENDING,
                    before
                ],
                |row| row.get::<_, Option<String>>(0),
            )?
            .collect::<Result<Vec<_>, _>>()?;
        // Each lane-ordered job buried releases its lane, as any dead letter does.
        let mut released: Vec<&str> = lanes.iter().flatten().map(String::as_str).collect();
        released.sort_unstable();
        released.dedup();
        for lane in released {
            self.release_lane(&key.account, &key.target, lane)?;
        }
        Ok(lanes.len() as u64)
    }

    pub(super) fn bury_unrouted(
        &mut self,
        routed: &[TargetKey],
        reason: &str,
        now: i64,
    ) -> Result<Vec<(TargetKey, u64)>, StoreError> {
        // The targets with pending jobs: one seek each in the due index rather than a scan of
        // every job (a target that is down may have millions).
        let mut next_target = self.conn.prepare_cached(
            "SELECT account, target FROM jobs WHERE state = 0 AND (account, target) > (?1, ?2)
             ORDER BY account, target LIMIT 1",
        )?;
        let mut pending = Vec::new();
        let (mut account, mut target) = (String::new(), String::new());
        while let Some(next) = next_target
            .query_row(params![account, target], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .optional()?
        {
            (account, target) = next;
            pending.push((account.clone(), target.clone()));
        }
        drop(next_target);
        // Held jobs too: they wait for a worker as much as due ones.
        let mut bury = self.conn.prepare_cached(
            "UPDATE jobs SET state = ?3, updated_at = ?4, last_error = ?5
             WHERE account = ?1 AND target = ?2 AND state IN (?6, 2)",
        )?;
        let mut buried = Vec::new();
        for (account, target) in pending {
            if routed_key(routed, &account, &target).is_some() {
                continue;
            }
            let n = bury.execute(params![account, target, DEAD, now, reason, PENDING])?;
            buried.push((
                TargetKey {
                    account: Arc::from(account),
                    target: Arc::from(target),
                },
                n as u64,
            ));
        }
        Ok(buried)
    }

    pub(super) fn replay_dead(
        &mut self,
        id: Option<JobId>,
        filter: &DeadLetterFilter,
        routed: &[TargetKey],
        now: i64,
    ) -> Result<Replayed, StoreError> {
        // In the order their callbacks arrived: lane-ordered letters rejoin their lanes so.
        let letters = self
            .conn
            .prepare_cached(&format!(
                "SELECT j.id, j.account, j.target, j.lane FROM jobs j WHERE {DEAD_LETTER_MATCH}
                 ORDER BY j.callback_id, j.id"
            ))?
            .query_map(matching(&id, filter), |row| {
                Ok((
                    row.get::<_, JobId>(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                ))
            })?
            .collect::<Result<Vec<(JobId, String, String, Option<String>)>, _>>()?;
        let mut replayed = Replayed::default();
        for (job, account, target, lane) in letters {
            let Some(key) = routed_key(routed, &account, &target) else {
                replayed.not_routed += 1;
                continue;
            };
            // A lane-ordered letter joins the end of its lane, held if the lane has an open job.
            let (mut state, mut seq) = (PENDING, None);
            if let Some(lane) = &lane {
                let (held, place) = self.join_lane(&account, &target, lane)?;
                if held {
                    state = HELD;
                }
                seq = Some(place);
            }
            self.conn
                .prepare_cached(
                    "UPDATE jobs SET state = ?2, next_at = ?3, updated_at = ?3, retry_base = attempts,
                     lane_seq = COALESCE(?4, lane_seq) WHERE id = ?1",
                )?
                .execute(params![job, state, now, seq])?;
            replayed.targets.push(key.clone());
        }
        Ok(replayed)
    }

    pub(super) fn purge_dead(
        &mut self,
        id: Option<JobId>,
        filter: &DeadLetterFilter,
    ) -> Result<u64, StoreError> {
        let ids = self
            .conn
            .prepare_cached(&format!(
                "DELETE FROM jobs AS j WHERE {DEAD_LETTER_MATCH} RETURNING id"
            ))?
            .query_map(matching(&id, filter), |row| row.get::<_, JobId>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut attempts = self
            .conn
            .prepare_cached("DELETE FROM attempts WHERE job_id = ?1")?;
        for id in &ids {
            attempts.execute(params![id])?;
        }
        Ok(ids.len() as u64)
    }

    /// [`crate::store::Store::backfill`]: each callback queued for `key`'s target unless it is
    /// listed in its `routed` already (or has none: stored before builds said).
    pub(super) fn backfill(
        &mut self,
        key: &TargetKey,
        jobs: &[(CallbackId, JobId)],
        now: i64,
    ) -> Result<u64, StoreError> {
        let mut queued = 0;
        for (callback, job) in jobs {
            let routed: Option<Option<String>> = self
                .conn
                .prepare_cached("SELECT routed FROM callbacks WHERE id = ?1 AND account = ?2")?
                .query_row(params![callback, &*key.account], |row| row.get(0))
                .optional()?;
            let Some(Some(routed)) = routed else { continue };
            let mut targets = read_routed(&routed);
            if targets.iter().any(|t| **t == *key.target) {
                continue;
            }
            targets.push(key.target.to_string());
            self.conn
                .prepare_cached("UPDATE callbacks SET routed = ?2 WHERE id = ?1")?
                .execute(params![
                    callback,
                    routed_field(targets.iter().map(String::as_str))
                ])?;
            self.conn
                .prepare_cached(
                    "INSERT INTO jobs (id, callback_id, account, target, state, attempts, next_at, updated_at, lease)
                     VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?6, 0)",
                )?
                .execute(params![job, callback, &*key.account, &*key.target, PENDING, now])?;
            queued += 1;
        }
        Ok(queued)
    }

    pub(super) fn purge(&mut self, before: i64) -> Result<u64, StoreError> {
        let deleted = self
            .conn
            .prepare_cached(
                "DELETE FROM callbacks WHERE id IN (
                    SELECT c.id FROM callbacks c
                    WHERE c.received_at < ?1 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.callback_id = c.id)
                    LIMIT 10000)",
            )?
            .execute(params![before])?;
        Ok(deleted as u64)
    }
}
