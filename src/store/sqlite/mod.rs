//! The embedded default store: one SQLite file in WAL mode, written by one thread.
//!
//! Every operation is a command sent to the writer thread, which takes whatever has queued up
//! (up to [`writer::MAX_BATCH`]) and runs it in one transaction, then answers all of them. Under
//! load one disk flush thus covers many callbacks (group commit); when idle, a lone callback
//! commits at once. Answers are sent only after the commit, so "accepted" always means "on disk".
//!
//! The file belongs to one process at a time (a lock file next to it says so), which is what makes
//! it safe to turn jobs left in flight by a crash back into due jobs on open.
//!
//! A batch commits all its commands or none: if one fails (the disk is full), the transaction is
//! rolled back and every command in it is answered with the error, so a failure never leaves half
//! of a callback stored. After each batch that stored callbacks, the writer checks that the path
//! still leads to the file it opened: a file deleted or replaced under the running process would
//! take the callbacks with it at the next start, so they are answered with an error instead (and
//! an ERROR names the path). Readiness ([`Store::check_writable`]) also checks that, the free
//! space of the file system, and the commits that failed in a row, and then writes and deletes a
//! row as large as the largest callback, in a transaction of its own.
//!
//! Here: the public type and its [`Store`] impl, which sends commands to the writer and reads
//! on a connection of its own. `writer` runs the batches (group commit, readiness, the
//! checkpointer), `commands` says what each command does in SQL, `schema` keeps the tables and
//! brings files of older builds up to date.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension, ToSql, params, params_from_iter};
use tokio::sync::{mpsc, oneshot};

use self::schema::{DEAD, HELD, IN_FLIGHT, PENDING};
pub use self::writer::Readiness;
use self::writer::{Command, Reply, WRITER_CHECKPOINT_PAGES};
use super::shape::{Stored, read_routed};
use super::{
    Accepted, Answer, Arrival, AttemptReport, CallbackDetail, CallbackId, DeadLetter,
    DeadLetterDetail, DeadLetterFilter, FailedAttempt, HistoryPage, HistoryQuery, IdBlocks, Job,
    JobDetail, JobId, JobState, Leased, LocalPace, NewCallback, QueueDepth, Recorded, Replay,
    Replayed, Store, StoreError, TargetKey, new_lease_token,
};
use crate::clock::now_ms;
use crate::config::Synchronous;

mod commands;
mod history;
mod schema;
mod writer;

/// Ids reserved at once: a reservation is a commit some callback waits for, so it is rare (every
/// ~2 s at 10k callbacks/s); a restart skips what was left of the block.
const ID_BLOCK: u64 = 1 << 16;

/// Commands waiting for the writer; senders wait when it is full (backpressure on ingress).
const QUEUE: usize = 8192;

// The ids are integers in the file.
macro_rules! id_column {
    ($($id:ty),*) => {$(
        impl rusqlite::ToSql for $id {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                self.0.to_sql()
            }
        }

        impl rusqlite::types::FromSql for $id {
            fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                i64::column_result(value).map(Self)
            }
        }
    )*};
}
id_column!(CallbackId, JobId);

/// The SQLite store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct SqliteStore {
    commands: mpsc::Sender<Command>,
    readiness: Readiness,
    /// A second connection for the slow reads of the admin side (counts, listings), so they
    /// never hold up the writer: WAL lets readers and the writer run at once.
    reader: Arc<Mutex<Connection>>,
    path: PathBuf,
    /// Ids reserved in the file, [`ID_BLOCK`] at a time.
    ids: IdBlocks,
    /// The paced targets' next starts: one process owns the file, so memory is shared enough.
    pace: LocalPace,
    /// Held for the life of the store: the exclusive lock on `<path>.lock`.
    _lock: File,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, takes its lock, and returns jobs left in
    /// flight by a previous run to the due queue.
    pub fn open(path: &Path, synchronous: Synchronous) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let lock_path = lock_path(path);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        lock.try_lock().map_err(|_| {
            StoreError::Refused(format!(
                "{} is in use by another wechat-fanout process",
                path.display()
            ))
        })?;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        // The checkpointer thread copies the WAL back; the writer checkpoints only when it
        // fell this far behind (under saturation, where the WAL can restart only after a
        // checkpoint that no commit interleaves with).
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::migrate(&conn)?;
        // Single owner (the lock above): whatever was in flight died with the previous process.
        conn.execute(
            "UPDATE jobs SET state = ?1 WHERE state = ?2",
            params![PENDING, IN_FLIGHT],
        )?;
        // A held job with nothing open before it in its lane goes: its lane's first was
        // delivered or died under a build that keeps no lanes (a rollback; see `shape`, v5).
        conn.execute(
            "UPDATE jobs SET state = ?1 WHERE lane IS NOT NULL AND state = ?2 AND NOT EXISTS (
                SELECT 1 FROM jobs o WHERE o.account = jobs.account AND o.target = jobs.target
                AND o.lane = jobs.lane AND (o.state IN (0, 1) OR (o.state = 2 AND o.lane_seq < jobs.lane_seq)))",
            params![PENDING, HELD],
        )?;
        let ids_reserved = schema::highest_id(&conn)?;
        let reader = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        let (commands, receiver) = mpsc::channel(QUEUE);
        writer::start(conn, path, ids_reserved, receiver)?;
        Ok(SqliteStore {
            commands,
            readiness: Readiness::default(),
            reader: Arc::new(Mutex::new(reader)),
            path: path.to_path_buf(),
            ids: IdBlocks::empty(),
            pace: LocalPace::default(),
            _lock: lock,
        })
    }

    /// Sets what readiness checks besides a commit: the free space, the size of the probe's row.
    pub fn with_readiness(mut self, readiness: Readiness) -> SqliteStore {
        self.readiness = readiness;
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs a read on the reader connection, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            query(&conn)
        })
        .await
        .map_err(|e| StoreError::Unexpected(format!("read task failed: {e}")))?
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

#[async_trait]
impl Store for SqliteStore {
    async fn next_ids(&self, n: usize) -> Result<Vec<i64>, StoreError> {
        self.ids
            .next(n, ID_BLOCK, |count| {
                self.call(move |r| Command::ReserveIds(count, r))
            })
            .await
    }

    async fn accept(&self, callback: NewCallback) -> Result<Accepted, StoreError> {
        self.call(|r| Command::Accept(callback, r)).await
    }

    async fn save_answer(
        &self,
        _account: &str,
        callback: CallbackId,
        answer: Answer,
    ) -> Result<(), StoreError> {
        self.call(|r| Command::SaveAnswer(callback, answer, r))
            .await
    }

    async fn answer(
        &self,
        _account: &str,
        callback: CallbackId,
    ) -> Result<Option<Answer>, StoreError> {
        self.read(move |conn| {
            let found: Option<(Option<String>, Option<Vec<u8>>)> = conn
                .prepare_cached("SELECT answer_type, answer FROM callbacks WHERE id = ?1")?
                .query_row(params![callback], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            Ok(found.and_then(|(content_type, body)| {
                body.map(|body| Answer {
                    content_type,
                    body: Bytes::from(body),
                })
            }))
        })
        .await
    }

    async fn lease_due(&self, key: &TargetKey, limit: usize) -> Result<Vec<Job>, StoreError> {
        let token = new_lease_token();
        self.call(|r| Command::Lease(key.clone(), limit, token, r))
            .await
    }

    async fn next_due(&self, key: &TargetKey) -> Result<Option<Duration>, StoreError> {
        self.call(|r| Command::NextDue(key.clone(), r)).await
    }

    async fn record(&self, report: AttemptReport) -> Result<Recorded, StoreError> {
        self.call(|r| Command::Record(report, r)).await
    }

    async fn release(&self, jobs: Vec<Leased>) -> Result<(), StoreError> {
        self.call(|r| Command::Release(jobs, r)).await
    }

    async fn renew(&self, _jobs: &[Leased]) -> Result<Vec<JobId>, StoreError> {
        // One process owns the file and leases never expire here (jobs in flight are due again
        // only when the file is opened again): there is nothing to extend, and the trait's
        // `lease_duration` (none) holds.
        Ok(Vec::new())
    }

    async fn bury_unrouted(
        &self,
        routed: Vec<TargetKey>,
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<(TargetKey, u64)>, StoreError> {
        let reason = reason.to_owned();
        self.call(|r| Command::BuryUnrouted(routed, reason, now_ms, r))
            .await
    }

    async fn kept_value(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT value FROM kept WHERE name = ?1")?
                .query_row(params![name], |row| row.get::<_, Vec<u8>>(0))
                .optional()?
                .map(Bytes::from))
        })
        .await
    }

    async fn keep_value(&self, name: &str, value: Bytes) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.call(|r| Command::Keep(name, value, r)).await
    }

    async fn pace(&self, key: &TargetKey, interval: Duration) -> Result<Duration, StoreError> {
        Ok(self.pace.reserve(key, interval))
    }

    async fn bury_waiting(
        &self,
        key: &TargetKey,
        waited: Duration,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let now = now_ms();
        let before = now.saturating_sub(i64::try_from(waited.as_millis()).unwrap_or(i64::MAX));
        let (key, reason) = (key.clone(), reason.to_owned());
        self.call(move |r| Command::BuryWaiting(key, before, reason, now, r))
            .await
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        let readiness = self.readiness;
        self.call(|r| Command::Probe(readiness, r)).await
    }

    async fn usage(&self) -> Result<Option<f64>, StoreError> {
        let stat = rustix::fs::statvfs(&self.path)
            .map_err(|e| StoreError::from(std::io::Error::from(e)))?;
        // What an unprivileged process can still use, of what it could in all.
        let usable = stat.f_blocks.saturating_sub(stat.f_bfree) + stat.f_bavail;
        Ok((usable > 0).then(|| 1.0 - stat.f_bavail as f64 / usable as f64))
    }

    async fn purge_delivered(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        self.call(|r| Command::Purge(older_than_ms, r)).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Commands run in order, so an empty transaction after them commits after them.
        self.call(Command::Flush).await
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.ids
            .close(|reserved, out| self.call(move |r| Command::ReturnIds(reserved, out, r)))
            .await
    }

    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError> {
        self.read(|conn| {
            let mut depths: Vec<QueueDepth> = Vec::new();
            // One pass over the jobs: callback ids grow with arrival on the one process that
            // writes the file, so the lowest one of a target's open jobs is its oldest.
            let mut statement = conn.prepare_cached(
                "SELECT account, target, state, COUNT(*), MIN(callback_id) FROM jobs \
                 GROUP BY account, target, state",
            )?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            })?;
            let mut oldest: Vec<Option<i64>> = Vec::new();
            for row in rows {
                let (account, target, state, count, first) = row?;
                let at = match depths
                    .iter()
                    .position(|d| d.account == account && d.target == target)
                {
                    Some(at) => at,
                    None => {
                        depths.push(QueueDepth {
                            account,
                            target,
                            pending: 0,
                            in_flight: 0,
                            dead: 0,
                            oldest_pending_ms: None,
                        });
                        oldest.push(None);
                        depths.len() - 1
                    }
                };
                let depth = &mut depths[at];
                match state {
                    PENDING | HELD => depth.pending += count,
                    IN_FLIGHT => depth.in_flight += count,
                    DEAD => depth.dead += count,
                    _ => continue,
                }
                if state != DEAD {
                    oldest[at] = Some(oldest[at].map_or(first, |o: i64| o.min(first)));
                }
            }
            let mut received =
                conn.prepare_cached("SELECT received_at FROM callbacks WHERE id = ?1")?;
            for (depth, first) in depths.iter_mut().zip(oldest) {
                if let Some(id) = first {
                    depth.oldest_pending_ms =
                        received.query_row([id], |row| row.get(0)).optional()?;
                }
            }
            Ok(depths)
        })
        .await
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, StoreError> {
        let filter = filter.clone();
        self.read(move |conn| {
            let limit = i64::try_from(filter.limit.unwrap_or(100)).unwrap_or(i64::MAX);
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM jobs j JOIN callbacks c ON c.id = j.callback_id
                 WHERE {DEAD_LETTER_MATCH} ORDER BY j.updated_at DESC, j.id DESC LIMIT ?6"
            ))?;
            let letters = statement
                .query_map(
                    params_from_iter(matching(&None, &filter).into_iter().chain([&limit as _])),
                    dead_letter_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(letters)
        })
        .await
    }

    async fn callback(&self, id: CallbackId) -> Result<Option<CallbackDetail>, StoreError> {
        self.read(move |conn| {
            // One snapshot for the callback, its jobs and their attempts.
            let snapshot = conn.unchecked_transaction()?;
            let found = snapshot
                .prepare_cached(&format!(
                    "SELECT c.account, c.received_at, c.msg_type, c.event, c.answer_type, c.answer,
                     c.instance, {SHAPE_COLUMNS} FROM callbacks c WHERE c.id = ?1"
                ))?
                .query_row(params![id], |row| {
                    let (answer_type, answer): (Option<String>, Option<Vec<u8>>) =
                        (row.get(4)?, row.get(5)?);
                    Ok(CallbackDetail {
                        id,
                        account: row.get(0)?,
                        received_at_ms: row.get(1)?,
                        msg_type: row.get(2)?,
                        event: row.get(3)?,
                        answer: answer.map(|body| Answer {
                            content_type: answer_type,
                            body: Bytes::from(body),
                        }),
                        instance: row.get(6)?,
                        request: shape_at(row, 7)?,
                        jobs: Vec::new(),
                    })
                })
                .optional()?;
            let Some(mut detail) = found else {
                return Ok(None);
            };
            let now = now_ms();
            detail.jobs = snapshot
                .prepare_cached(
                    "SELECT id, target, state, attempts, next_at, last_status, last_error
                     FROM jobs WHERE callback_id = ?1 ORDER BY id",
                )?
                .query_map(params![id], |row| {
                    let state = match row.get::<_, i64>(2)? {
                        PENDING | HELD => JobState::Pending,
                        IN_FLIGHT => JobState::InFlight,
                        _ => JobState::Dead,
                    };
                    let next_at: i64 = row.get(4)?;
                    Ok(JobDetail {
                        id: row.get(0)?,
                        target: row.get(1)?,
                        state,
                        attempts: row.get(3)?,
                        due_in: (state == JobState::Pending).then(|| {
                            Duration::from_millis(u64::try_from(next_at - now).unwrap_or(0))
                        }),
                        last_status: row.get(5)?,
                        last_error: row.get(6)?,
                        failed: Vec::new(),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            for job in &mut detail.jobs {
                job.failed = failed_attempts(&snapshot, job.id)?;
            }
            Ok(Some(detail))
        })
        .await
    }

    async fn callbacks(
        &self,
        account: Option<&str>,
        limit: usize,
    ) -> Result<Vec<CallbackId>, StoreError> {
        let account = account.map(str::to_owned);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT id FROM callbacks WHERE ?1 IS NULL OR account = ?1
                     ORDER BY id DESC LIMIT ?2",
                )?
                .query_map(params![account, limit], |row| row.get(0))?
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn arrivals(
        &self,
        account: &str,
        since_ms: i64,
        until_ms: i64,
        after: Option<CallbackId>,
        limit: usize,
    ) -> Result<Vec<Arrival>, StoreError> {
        let account = account.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // One process makes the ids in arrival order: a walk of the primary key from `after`
        // (no index on arrival to keep up on every accept; a backfill reads the window once).
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT c.id, c.received_at, c.routed, {SHAPE_COLUMNS} FROM callbacks c
                     WHERE c.id > ?1 AND c.account = ?2 AND c.received_at >= ?3 AND c.received_at < ?4
                     ORDER BY c.id LIMIT ?5"
                ))?
                .query_map(
                    params![after.map_or(0, |a| a.0), account, since_ms, until_ms, limit],
                    |row| {
                        Ok(Arrival {
                            id: row.get(0)?,
                            received_at_ms: row.get(1)?,
                            routed: row.get::<_, Option<String>>(2)?.as_deref().map(read_routed),
                            request: shape_at(row, 3)?,
                        })
                    },
                )?
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn history(&self, query: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        self.history_page(query).await
    }

    async fn backfill(
        &self,
        key: &TargetKey,
        jobs: Vec<(CallbackId, JobId)>,
    ) -> Result<u64, StoreError> {
        let key = key.clone();
        self.call(move |r| Command::Backfill(key, jobs, now_ms(), r))
            .await
    }

    async fn dead_letter(&self, id: JobId) -> Result<Option<DeadLetterDetail>, StoreError> {
        self.read(move |conn| {
            let found = conn
                .prepare_cached(&format!(
                    "SELECT {DEAD_LETTER_COLUMNS}, {SHAPE_COLUMNS}
                     FROM jobs j JOIN callbacks c ON c.id = j.callback_id WHERE j.id = ?1 AND j.state = 3"
                ))?
                .query_row(params![id], |row| {
                    Ok((dead_letter_row(row)?, shape_at(row, 11)?))
                })
                .optional()?;
            let Some((letter, request)) = found else {
                return Ok(None);
            };
            let attempts = failed_attempts(conn, id)?;
            Ok(Some(DeadLetterDetail { letter, request, attempts }))
        })
        .await
    }

    async fn replay_dead(
        &self,
        id: Option<JobId>,
        filter: &DeadLetterFilter,
        routed: Vec<TargetKey>,
    ) -> Result<Replayed, StoreError> {
        let filter = filter.clone();
        self.call(|r| Command::ReplayDead(id, filter, routed, r))
            .await
    }

    async fn purge_dead(
        &self,
        id: Option<JobId>,
        filter: &DeadLetterFilter,
    ) -> Result<u64, StoreError> {
        let filter = filter.clone();
        self.call(|r| Command::PurgeDead(id, filter, r)).await
    }
}

/// SQLite's errors, at this backend's edge: by what a caller can do about them, with SQLite's
/// own text (`database or disk is full`) as the message.
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        use rusqlite::ffi::ErrorCode;
        let message = e.to_string();
        match &e {
            rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
                ErrorCode::DiskFull => StoreError::Full(message),
                // Another connection held the file past the busy timeout.
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => StoreError::Timeout(message),
                ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
                    StoreError::Corrupt(message)
                }
                ErrorCode::PermissionDenied
                | ErrorCode::ReadOnly
                | ErrorCode::AuthorizationForStatementDenied => StoreError::Refused(message),
                ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::NotFound
                | ErrorCode::OutOfMemory
                | ErrorCode::FileLockingProtocolFailed
                | ErrorCode::NoLargeFileSupport
                | ErrorCode::OperationInterrupted
                | ErrorCode::OperationAborted => StoreError::Unavailable(message),
                _ => StoreError::Unexpected(message),
            },
            // A value of another type than this build wrote: not something it can read.
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt(message),
            _ => StoreError::Unexpected(message),
        }
    }
}

/// The columns of a callback's shape, of `callbacks c`, in the order [`shape_at`] reads them.
const SHAPE_COLUMNS: &str =
    "c.shape_version, c.query, c.authorizer, c.content_type, c.body, c.trace, c.headers, c.lane";

/// The callback's shape in the [`SHAPE_COLUMNS`] of `row` from column `first` on, as every
/// version of it is read.
fn shape_at(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Replay> {
    Ok(Stored {
        version: row.get(first)?,
        query: row.get(first + 1)?,
        authorizer: row.get(first + 2)?,
        content_type: row.get(first + 3)?,
        body: Bytes::from(row.get::<_, Vec<u8>>(first + 4)?),
        trace: row.get(first + 5)?,
        headers: row.get(first + 6)?,
        lane: row.get(first + 7)?,
    }
    .into_replay())
}

/// The columns [`dead_letter_row`] reads, in its order.
const DEAD_LETTER_COLUMNS: &str =
    "j.id, j.callback_id, j.account, j.target, c.msg_type, c.event, c.received_at,
    j.updated_at, j.attempts, j.last_status, j.last_error";

/// Dead jobs selected by id (?1) or by account (?2), target (?3), died since (?4) and until (?5);
/// a NULL parameter does not filter.
const DEAD_LETTER_MATCH: &str = "j.state = 3 AND (?1 IS NULL OR j.id = ?1) AND (?2 IS NULL OR j.account = ?2)
    AND (?3 IS NULL OR j.target = ?3) AND (?4 IS NULL OR j.updated_at >= ?4) AND (?5 IS NULL OR j.updated_at < ?5)";

/// The parameters of [`DEAD_LETTER_MATCH`], in its order.
fn matching<'a>(id: &'a Option<JobId>, filter: &'a DeadLetterFilter) -> [&'a dyn ToSql; 5] {
    [
        id,
        &filter.account,
        &filter.target,
        &filter.since_ms,
        &filter.until_ms,
    ]
}

/// The failed attempts kept for job `id`, in order.
fn failed_attempts(conn: &Connection, id: JobId) -> Result<Vec<FailedAttempt>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT attempt, at, status, error FROM attempts WHERE job_id = ?1 ORDER BY attempt",
        )?
        .query_map(params![id], |row| {
            Ok(FailedAttempt {
                attempt: row.get(0)?,
                at_ms: row.get(1)?,
                status: row.get(2)?,
                error: row.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?)
}

fn dead_letter_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        id: row.get(0)?,
        callback: row.get(1)?,
        account: row.get(2)?,
        target: row.get(3)?,
        msg_type: row.get(4)?,
        event: row.get(5)?,
        received_at_ms: row.get(6)?,
        died_at_ms: row.get(7)?,
        attempts: row.get(8)?,
        last_status: row.get(9)?,
        last_error: row.get(10)?,
    })
}

#[cfg(test)]
mod tests;
