//! The embedded default store: one SQLite file in WAL mode, written by one thread.
//!
//! Every operation is a command sent to the writer thread, which takes whatever has queued up
//! (up to [`MAX_BATCH`]) and runs it in one transaction, then answers all of them. Under load one
//! disk flush thus covers many callbacks (group commit); when idle, a lone callback commits at
//! once. Answers are sent only after the commit, so "accepted" always means "on disk".
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

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, OptionalExtension, ToSql, params, params_from_iter};
use tokio::sync::{mpsc, oneshot};

use super::{
    Accepted, Answer, AttemptRecord, AttemptReport, CallbackId, DeadLetter, DeadLetterDetail,
    DeadLetterFilter, Disposition, IdBlocks, Job, JobId, LEGACY_KEY_WINDOW, LeaseToken, Leased,
    NewCallback, QueueDepth, Recorded, Replay, Replayed, Store, StoreError, TargetKey,
    new_lease_token,
};
use crate::clock::now_ms;
use crate::config::Synchronous;

/// Most commands in one transaction: bounds the latency a large group adds to its first member.
const MAX_BATCH: usize = 1024;
/// How often the checkpointer thread copies the WAL into the database file. Shorter intervals
/// make each checkpoint's `fsync` of the database file shorter, and the WAL's syncs (so the
/// answers) wait behind it: at 2,000 callbacks/s the p99 was 1.4–1.9 ms every 20 ms against
/// 1.6–3.0 ms every 100 ms. They also let the WAL restart sooner in the space its file already
/// has, so on a full disk callbacks that fit there are still stored (durably) before the
/// first refusal.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(20);
/// WAL pages after which the writer checkpoints itself (about 16 MiB of WAL).
const WRITER_CHECKPOINT_PAGES: i64 = 4000;
/// How long outcomes of attempts may wait for a command that needs its commit at once, when
/// nothing else is queued: see [`Writer::linger`].
const OUTCOME_LINGER: Duration = Duration::from_millis(20);
/// Commands waiting for the writer; senders wait when it is full (backpressure on ingress).
const QUEUE: usize = 8192;
/// Commits failed in a row after which readiness says 503 once more even if its own probe
/// succeeds (which resets the count): the disk just refused real writes.
const NOT_READY_AFTER: u32 = 3;
/// The probe's row by default: the default largest body (`server.max_body_bytes`) and query
/// (`server.max_query_bytes`).
const DEFAULT_PROBE_BYTES: usize = 65536 + 4096;
/// Ids reserved at once: a reservation is a commit some callback waits for, so it is rare (every
/// ~2 s at 10k callbacks/s); a restart skips what was left of the block.
const ID_BLOCK: u64 = 1 << 16;

const PENDING: i64 = 0;
const IN_FLIGHT: i64 = 1;
const DEAD: i64 = 3;

// Ids are never reused, though delivered jobs and purged callbacks are deleted: a job's id is
// the delivery id targets dedupe on, so a reused id would make a target drop a new callback as
// a duplicate of an old one. They come from blocks reserved in `ids_reserved` (see
// [`Writer::reserve_ids`]), not from AUTOINCREMENT, which costs every insert a write of
// `sqlite_sequence`. Files made by earlier versions keep their AUTOINCREMENT (harmless).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS callbacks (
    id INTEGER PRIMARY KEY,
    account TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    msg_type TEXT,
    event TEXT,
    query TEXT NOT NULL,
    content_type TEXT,
    body BLOB NOT NULL,
    answer_type TEXT,
    answer BLOB,
    UNIQUE (account, dedupe_key)
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    callback_id INTEGER NOT NULL,
    account TEXT NOT NULL,
    target TEXT NOT NULL,
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_base INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (account, target, next_at) WHERE state = 0;
CREATE INDEX IF NOT EXISTS jobs_by_callback ON jobs (callback_id);
CREATE TABLE IF NOT EXISTS readiness_probe (body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS kept (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
-- The last id of the latest block reserved: every id up to it may have been handed out.
CREATE TABLE IF NOT EXISTS ids_reserved (one INTEGER PRIMARY KEY CHECK (one = 1), last INTEGER NOT NULL);
-- Columns added since the first release are added by MIGRATIONS, for files made before them.
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    at INTEGER NOT NULL,
    status INTEGER,
    error TEXT,
    PRIMARY KEY (job_id, attempt)
) WITHOUT ROWID;
";

/// Columns added after the first release: (table, column, definition), added where missing.
const MIGRATIONS: &[(&str, &str, &str)] = &[
    // The token of the lease a job in flight is held under (0: none).
    ("jobs", "lease", "INTEGER NOT NULL DEFAULT 0"),
    // Until when (Unix ms) the primary's answer may still be saved.
    ("callbacks", "answer_due", "INTEGER"),
];

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Command {
    Accept(NewCallback, Reply<Accepted>),
    SaveAnswer(CallbackId, Answer, Reply<()>),
    Keep(String, Bytes, Reply<()>),
    Lease(TargetKey, usize, LeaseToken, Reply<Vec<Job>>),
    NextDue(TargetKey, Reply<Option<Duration>>),
    Record(AttemptReport, Reply<Recorded>),
    Release(Vec<Leased>, Reply<()>),
    BuryUnrouted(Vec<TargetKey>, String, i64, Reply<Vec<(TargetKey, u64)>>),
    Purge(i64, Reply<u64>),
    ReplayDead(
        Option<JobId>,
        DeadLetterFilter,
        Vec<TargetKey>,
        Reply<Replayed>,
    ),
    PurgeDead(Option<JobId>, DeadLetterFilter, Reply<u64>),
    /// Reserves this many more ids; answers the last one.
    ReserveIds(u64, Reply<i64>),
    /// Commits with the commands before it (a flush).
    Flush(Reply<()>),
    /// Readiness: answered after the batch it came in, by a probe of its own.
    Probe(Readiness, Reply<()>),
}

/// A finished command waiting for the commit before its answer is sent.
enum Done {
    Accept(Reply<Accepted>, Result<Accepted, StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
    Lease(Reply<Vec<Job>>, Result<Vec<Job>, StoreError>),
    NextDue(
        Reply<Option<Duration>>,
        Result<Option<Duration>, StoreError>,
    ),
    Recorded(Reply<Recorded>, Result<Recorded, StoreError>),
    Count(Reply<u64>, Result<u64, StoreError>),
    Reserved(Reply<i64>, Result<i64, StoreError>),
    Replayed(Reply<Replayed>, Result<Replayed, StoreError>),
    Buried(
        Reply<Vec<(TargetKey, u64)>>,
        Result<Vec<(TargetKey, u64)>, StoreError>,
    ),
}

impl Done {
    /// The command's own error, if it failed.
    fn error(&self) -> Option<String> {
        fn of<T>(result: &Result<T, StoreError>) -> Option<String> {
            result.as_ref().err().map(ToString::to_string)
        }
        match self {
            Done::Accept(_, v) => of(v),
            Done::Unit(_, v) => of(v),
            Done::Lease(_, v) => of(v),
            Done::NextDue(_, v) => of(v),
            Done::Recorded(_, v) => of(v),
            Done::Count(_, v) => of(v),
            Done::Reserved(_, v) => of(v),
            Done::Replayed(_, v) => of(v),
            Done::Buried(_, v) => of(v),
        }
    }

    fn send(self, commit: &Result<(), String>) {
        fn finish<T>(reply: Reply<T>, result: Result<T, StoreError>, commit: &Result<(), String>) {
            let result = match commit {
                Ok(()) => result,
                Err(e) => Err(StoreError::Other(format!("commit failed: {e}"))),
            };
            // The requester may have gone away (client disconnected); nothing to do then.
            let _ = reply.send(result);
        }
        match self {
            Done::Accept(r, v) => finish(r, v, commit),
            Done::Unit(r, v) => finish(r, v, commit),
            Done::Lease(r, v) => finish(r, v, commit),
            Done::NextDue(r, v) => finish(r, v, commit),
            Done::Recorded(r, v) => finish(r, v, commit),
            Done::Count(r, v) => finish(r, v, commit),
            Done::Reserved(r, v) => finish(r, v, commit),
            Done::Replayed(r, v) => finish(r, v, commit),
            Done::Buried(r, v) => finish(r, v, commit),
        }
    }
}

/// What readiness asks of the store besides a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// Below this many free bytes on the store's file system, not ready (0: no check).
    pub min_free_bytes: u64,
    /// The size of the row the probe writes and deletes: the largest callback that can come.
    pub probe_bytes: usize,
}

impl Default for Readiness {
    fn default() -> Readiness {
        Readiness {
            min_free_bytes: 0,
            probe_bytes: DEFAULT_PROBE_BYTES,
        }
    }
}

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
            StoreError::Other(format!(
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
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        // Single owner (the lock above): whatever was in flight died with the previous process.
        conn.execute(
            "UPDATE jobs SET state = ?1 WHERE state = ?2",
            params![PENDING, IN_FLIGHT],
        )?;
        let ids_reserved = highest_id(&conn)?;
        let reader = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        // Held open, so the inode cannot be reused while the path is compared with it.
        let file = File::open(path)?;
        let identity = file_identity(&file.metadata()?);
        let checkpointer = Connection::open(path)?;
        checkpointer.busy_timeout(std::time::Duration::from_secs(5))?;
        let (alive, writer_ended) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || checkpoint_until(&checkpointer, &writer_ended))?;
        let writer = Writer {
            conn,
            file,
            path: path.to_path_buf(),
            identity,
            lost: None,
            failed_in_a_row: 0,
            last_failure: String::new(),
            ids_reserved,
            _checkpointer: alive,
        };
        let (commands, receiver) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(receiver))?;
        Ok(SqliteStore {
            commands,
            readiness: Readiness::default(),
            reader: Arc::new(Mutex::new(reader)),
            path: path.to_path_buf(),
            ids: IdBlocks::empty(),
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
        .map_err(|e| StoreError::Other(format!("read task failed: {e}")))?
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

/// Adds the columns of [`MIGRATIONS`] that a file made by an older version lacks.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    for (table, column, definition) in MIGRATIONS {
        let present = conn
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
            ))?
            .exists(params![column])?;
        if !present {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    Ok(())
}

/// The highest id the file may have handed out: the last block reserved, or for a file made
/// before blocks were, AUTOINCREMENT's record of the highest id ever used (also of rows since
/// deleted).
fn highest_id(conn: &Connection) -> Result<i64, StoreError> {
    let autoincrement = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'")?
        .exists([])?;
    let sequence: i64 = if autoincrement {
        conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence",
            [],
            |row| row.get(0),
        )?
    } else {
        0
    };
    let used: i64 = conn.query_row(
        "SELECT MAX(m) FROM (SELECT COALESCE(MAX(last), 0) AS m FROM ids_reserved
         UNION ALL SELECT COALESCE(MAX(id), 0) FROM callbacks
         UNION ALL SELECT COALESCE(MAX(id), 0) FROM jobs)",
        [],
        |row| row.get(0),
    )?;
    Ok(sequence.max(used))
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

    async fn check_writable(&self) -> Result<(), StoreError> {
        let readiness = self.readiness;
        self.call(|r| Command::Probe(readiness, r)).await
    }

    async fn purge_delivered(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        self.call(|r| Command::Purge(older_than_ms, r)).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Commands run in order, so an empty transaction after them commits after them.
        self.call(Command::Flush).await
    }

    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError> {
        self.read(|conn| {
            let mut depths: Vec<QueueDepth> = Vec::new();
            let mut statement = conn.prepare_cached(
                "SELECT account, target, state, COUNT(*) FROM jobs GROUP BY account, target, state",
            )?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })?;
            for row in rows {
                let (account, target, state, count) = row?;
                let depth = match depths
                    .iter_mut()
                    .find(|d| d.account == account && d.target == target)
                {
                    Some(depth) => depth,
                    None => {
                        depths.push(QueueDepth {
                            account,
                            target,
                            pending: 0,
                            in_flight: 0,
                            dead: 0,
                        });
                        depths
                            .last_mut()
                            .ok_or_else(|| StoreError::Other("unreachable".into()))?
                    }
                };
                match state {
                    PENDING => depth.pending += count,
                    IN_FLIGHT => depth.in_flight += count,
                    DEAD => depth.dead += count,
                    _ => {}
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

    async fn dead_letter(&self, id: JobId) -> Result<Option<DeadLetterDetail>, StoreError> {
        self.read(move |conn| {
            let found = conn
                .prepare_cached(&format!(
                    "SELECT {DEAD_LETTER_COLUMNS}, c.query, c.content_type, c.body
                     FROM jobs j JOIN callbacks c ON c.id = j.callback_id WHERE j.id = ?1 AND j.state = 3"
                ))?
                .query_row(params![id], |row| {
                    Ok((
                        dead_letter_row(row)?,
                        Replay {
                            query: row.get(11)?,
                            content_type: row.get(12)?,
                            body: Bytes::from(row.get::<_, Vec<u8>>(13)?),
                        },
                    ))
                })
                .optional()?;
            let Some((letter, request)) = found else {
                return Ok(None);
            };
            let attempts = conn
                .prepare_cached("SELECT attempt, at, status, error FROM attempts WHERE job_id = ?1 ORDER BY attempt")?
                .query_map(params![id], |row| {
                    Ok(AttemptRecord { attempt: row.get(0)?, at_ms: row.get(1)?, status: row.get(2)?, error: row.get(3)? })
                })?
                .collect::<Result<Vec<_>, _>>()?;
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

/// The columns [`dead_letter_row`] reads, in its order.
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

/// Moves what is queued into `batch`, up to [`MAX_BATCH`] commands, without waiting.
fn take_queued(receiver: &mut mpsc::Receiver<Command>, batch: &mut Vec<Command>) {
    while batch.len() < MAX_BATCH {
        match receiver.try_recv() {
            Ok(command) => batch.push(command),
            Err(_) => break,
        }
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

/// (device, inode) of a file: what the path must still lead to.
#[cfg(unix)]
fn file_identity(metadata: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    (metadata.dev(), metadata.ino())
}

#[cfg(not(unix))]
fn file_identity(_: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// Bytes an unprivileged process may still write on the file system of `file`.
#[cfg(unix)]
fn free_bytes(file: &File) -> std::io::Result<u64> {
    let stat = rustix::fs::fstatvfs(file)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(not(unix))]
fn free_bytes(_: &File) -> std::io::Result<u64> {
    Ok(u64::MAX)
}

struct Writer {
    conn: Connection,
    /// The database file as opened, kept open: its inode stays what the path is compared with,
    /// and its file system is the one whose free space counts.
    file: File,
    path: PathBuf,
    /// (device, inode) of `file`.
    identity: (u64, u64),
    /// Why the path no longer leads to `file`, while that is so (logged when it starts).
    lost: Option<String>,
    /// Transactions in a row that failed, and the last one's error: readiness reports them.
    failed_in_a_row: u32,
    last_failure: String,
    /// The last id of the latest block reserved (or used by this file before blocks were).
    ids_reserved: i64,
    /// Dropped with the writer, which ends the checkpointer thread.
    _checkpointer: std::sync::mpsc::Sender<()>,
}

/// Copies committed pages from the WAL into the database file every [`CHECKPOINT_EVERY`], on
/// a connection of its own, until the writer ends. In the writer, a checkpoint (SQLite's
/// default: every 1,000 pages) made the commits queued behind it wait for its page writes and
/// an `fdatasync` of the database file: at 2,000 callbacks/s, several times a second. A
/// passive checkpoint takes no lock the writer needs.
fn checkpoint_until(conn: &Connection, writer_ended: &std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut failing = false;
    while let Err(RecvTimeoutError::Timeout) = writer_ended.recv_timeout(CHECKPOINT_EVERY) {
        let checkpointed = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        match (checkpointed, failing) {
            (Err(e), false) => {
                // The writer still checkpoints once its WAL is WRITER_CHECKPOINT_PAGES long.
                tracing::warn!(error = %e, "background checkpoint of the store failed; retrying");
                failing = true;
            }
            (Ok(()), true) => failing = false,
            _ => {}
        }
    }
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut done = Vec::with_capacity(MAX_BATCH);
        let mut probes = Vec::new();
        // Only for waiting on the queue with a time limit, which tokio's receiver offers to
        // async code alone. Without it (it cannot fail short of the OS refusing a timer),
        // outcomes are committed at once, as any command.
        let waiter = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .ok();
        while let Some(first) = receiver.blocking_recv() {
            batch.push(first);
            // Let the threads that send commands run once before taking the batch: on a busy
            // machine that multiplies the commands per commit (measured ×4 on one core), and
            // when idle there is nobody to yield to, so a lone command is not delayed.
            std::thread::yield_now();
            take_queued(&mut receiver, &mut batch);
            if let Some(waiter) = &waiter {
                Writer::linger(waiter, &mut receiver, &mut batch);
            }
            let commit = self.run_batch(&mut batch, &mut done, &mut probes);
            for finished in done.drain(..) {
                finished.send(&commit);
            }
            // After the batch's answers: a probe never delays, nor fails, real commands.
            if let Some(&(readiness, _)) = probes.first() {
                let ready = self.probe(readiness);
                for (_, reply) in probes.drain(..) {
                    let _ = reply.send(ready.clone().map_err(StoreError::Other));
                }
            }
        }
    }

    /// A batch of attempts' outcomes alone waits up to [`OUTCOME_LINGER`] for a command that
    /// needs its commit now (a new callback, whose answer waits for it; a flush) and commits
    /// with it. Below saturation each callback otherwise cost a commit, and an `fdatasync`, for
    /// its own accept and another for each delivery's outcome: the writer then spent most of
    /// its time syncing. What an outcome waits for is only its removal from the queue: an
    /// attempt lost with a crash meanwhile is sent again, which at-least-once delivery allows.
    fn linger(
        waiter: &tokio::runtime::Runtime,
        receiver: &mut mpsc::Receiver<Command>,
        batch: &mut Vec<Command>,
    ) {
        let can_wait = |command: &Command| matches!(command, Command::Record(..));
        if batch.len() >= MAX_BATCH || !batch.iter().all(can_wait) {
            return;
        }
        waiter.block_on(async {
            let until = tokio::time::Instant::now() + OUTCOME_LINGER;
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(until, receiver.recv()).await {
                    Ok(Some(command)) => {
                        let urgent = !can_wait(&command);
                        batch.push(command);
                        if urgent {
                            return;
                        }
                    }
                    // The time is up, or the store is closing: commit what there is.
                    Ok(None) | Err(_) => return,
                }
            }
        });
        take_queued(receiver, batch);
    }

    /// Runs `batch` in one transaction, all or nothing; readiness probes go to `probes`.
    fn run_batch(
        &mut self,
        batch: &mut Vec<Command>,
        done: &mut Vec<Done>,
        probes: &mut Vec<(Readiness, Reply<()>)>,
    ) -> Result<(), String> {
        if batch
            .iter()
            .all(|command| matches!(command, Command::Probe(..)))
        {
            // Nothing to commit: the probe's own transaction is all there is to wait for.
            probes.extend(batch.drain(..).filter_map(|command| match command {
                Command::Probe(readiness, reply) => Some((readiness, reply)),
                _ => None,
            }));
            return Ok(());
        }
        let began = self.conn.execute_batch("BEGIN IMMEDIATE");
        let changes = self.conn.total_changes();
        let mut failure = began.err().map(|e| e.to_string());
        let mut accepts = false;
        for command in batch.drain(..) {
            match command {
                Command::Probe(readiness, reply) => probes.push((readiness, reply)),
                command => {
                    accepts |= matches!(command, Command::Accept(..));
                    let finished = match &failure {
                        Some(message) => self.fail(command, message),
                        None => self.execute(command),
                    };
                    if failure.is_none() {
                        failure = finished.error();
                    }
                    done.push(finished);
                }
            }
        }
        let committed = match failure {
            // One command failed: the others are not committed either, so that nothing is
            // half-stored (a callback without its jobs would be answered as a duplicate later).
            // SQLite may have rolled back already (a full disk does that).
            Some(message) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                Err(message)
            }
            None => self.conn.execute_batch("COMMIT").map_err(|e| {
                let _ = self.conn.execute_batch("ROLLBACK");
                e.to_string()
            }),
        };
        match &committed {
            Err(message) => self.failed(message),
            // A transaction that wrote nothing (a lease that found no job) needs no disk space:
            // it proves nothing about the next real write.
            Ok(()) if self.conn.total_changes() > changes => self.failed_in_a_row = 0,
            Ok(()) => {}
        }
        if accepts && committed.is_ok() && self.check_file().is_some() {
            // Stored in a file that is gone from its path: lost at the next start. Not accepted.
            let lost = self.lost.clone().unwrap_or_default();
            for finished in done.iter_mut() {
                if let Done::Accept(_, result) = finished {
                    *result = Err(StoreError::Other(lost.clone()));
                }
            }
        }
        committed
    }

    fn failed(&mut self, message: &str) {
        self.failed_in_a_row = self.failed_in_a_row.saturating_add(1);
        message.clone_into(&mut self.last_failure);
    }

    /// Is the path still the file this store opened? `Some(why not)` if not; an ERROR names the
    /// path when that starts, and a warning when it ends.
    fn check_file(&mut self) -> Option<&str> {
        let path = self.path.display();
        let now = match std::fs::metadata(&self.path) {
            Ok(metadata) if file_identity(&metadata) == self.identity => None,
            Ok(_) => Some(format!(
                "the store's file {path} was replaced while running: callbacks are refused until a restart"
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
                "the store's file {path} was deleted while running: callbacks are refused until a restart"
            )),
            Err(e) => Some(format!(
                "the store's file {path} cannot be checked ({e}): callbacks are refused"
            )),
        };
        match (&self.lost, &now) {
            (None, Some(reason)) => tracing::error!(
                path = %path,
                "{reason}; what was accepted before is still delivered from the open file, \
                 and lost at the next start if undelivered by then"
            ),
            (Some(_), None) => tracing::warn!(path = %path, "the store's file is back at its path"),
            _ => {}
        }
        self.lost = now;
        self.lost.as_deref()
    }

    /// Readiness: the file is where it was, the file system has `min_free_bytes`, the last
    /// commits did not all fail, and a row of `probe_bytes` can be written and deleted now.
    fn probe(&mut self, readiness: Readiness) -> Result<(), String> {
        if let Some(lost) = self.check_file() {
            return Err(lost.to_owned());
        }
        if readiness.min_free_bytes > 0 {
            let free = free_bytes(&self.file).map_err(|e| {
                format!("cannot read the free space of the store's file system: {e}")
            })?;
            if free < readiness.min_free_bytes {
                return Err(format!(
                    "{free} bytes free on the store's file system, below store.min_free_bytes ({})",
                    readiness.min_free_bytes
                ));
            }
        }
        // Real commits that failed in a row (the probe's own failures are not counted: they
        // answer 503 by themselves). Its success resets them, so the next answer can be 200.
        let failed_before = self.failed_in_a_row;
        if let Err(e) = self.write_probe(readiness.probe_bytes) {
            return Err(format!(
                "a test write of {} bytes failed: {e}",
                readiness.probe_bytes
            ));
        }
        self.failed_in_a_row = 0;
        if failed_before >= NOT_READY_AFTER {
            return Err(format!(
                "the last {failed_before} commits failed ({}); a test write just succeeded",
                self.last_failure
            ));
        }
        Ok(())
    }

    /// Writes and deletes a row of `bytes` in a transaction of its own: as much new data as
    /// the largest callback, so it fails when the disk could not take that callback.
    fn write_probe(&self, bytes: usize) -> Result<(), String> {
        let conn = &self.conn;
        let result = (|| -> rusqlite::Result<()> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            conn.prepare_cached("INSERT INTO readiness_probe (body) VALUES (zeroblob(?1))")?
                .execute(params![i64::try_from(bytes).unwrap_or(i64::MAX)])?;
            conn.prepare_cached("DELETE FROM readiness_probe")?
                .execute([])?;
            conn.execute_batch("COMMIT")
        })();
        result.map_err(|e| {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            e.to_string()
        })
    }

    fn fail(&self, command: Command, message: &str) -> Done {
        fn err<T>(message: &str) -> Result<T, StoreError> {
            Err(StoreError::Other(message.to_owned()))
        }
        match command {
            Command::Accept(_, r) => Done::Accept(r, err(message)),
            Command::SaveAnswer(_, _, r)
            | Command::Keep(_, _, r)
            | Command::Release(_, r)
            | Command::Flush(r)
            | Command::Probe(_, r) => Done::Unit(r, err(message)),
            Command::Record(_, r) => Done::Recorded(r, err(message)),
            Command::Lease(_, _, _, r) => Done::Lease(r, err(message)),
            Command::NextDue(_, r) => Done::NextDue(r, err(message)),
            Command::Purge(_, r) | Command::PurgeDead(_, _, r) => Done::Count(r, err(message)),
            Command::ReplayDead(_, _, _, r) => Done::Replayed(r, err(message)),
            Command::ReserveIds(_, r) => Done::Reserved(r, err(message)),
            Command::BuryUnrouted(_, _, _, r) => Done::Buried(r, err(message)),
        }
    }

    fn execute(&mut self, command: Command) -> Done {
        match command {
            Command::Accept(callback, r) => Done::Accept(r, self.accept(&callback)),
            Command::SaveAnswer(id, answer, r) => Done::Unit(r, self.save_answer(id, &answer)),
            Command::Lease(key, limit, token, r) => {
                Done::Lease(r, self.lease(&key, now_ms(), limit, token))
            }
            Command::NextDue(key, r) => Done::NextDue(r, self.next_due(&key, now_ms())),
            Command::Record(report, r) => Done::Recorded(r, self.record(&report)),
            Command::Release(jobs, r) => Done::Unit(r, self.release(&jobs, now_ms())),
            Command::Purge(before, r) => Done::Count(r, self.purge(before)),
            Command::ReplayDead(id, filter, routed, r) => {
                Done::Replayed(r, self.replay_dead(id, &filter, &routed, now_ms()))
            }
            Command::PurgeDead(id, filter, r) => Done::Count(r, self.purge_dead(id, &filter)),
            Command::ReserveIds(count, r) => Done::Reserved(r, self.reserve_ids(count)),
            Command::BuryUnrouted(routed, reason, now, r) => {
                Done::Buried(r, self.bury_unrouted(&routed, &reason, now))
            }
            // Nothing to do but to be in the transaction: its answer waits for the commit.
            Command::Flush(r) => Done::Unit(r, Ok(())),
            Command::Keep(name, value, r) => Done::Unit(r, self.keep(&name, &value)),
            // `run_batch` takes probes out of the batch; one that got here is answered after
            // the commit like a flush.
            Command::Probe(_, r) => Done::Unit(r, Ok(())),
        }
    }

    fn accept(&mut self, callback: &NewCallback) -> Result<Accepted, StoreError> {
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
                "INSERT INTO callbacks (id, account, dedupe_key, received_at, msg_type, event, query, content_type, body, answer_due)
                 VALUES (?9, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?10)
                 ON CONFLICT (account, dedupe_key) DO NOTHING",
            )?
            .execute(params![
                    &*callback.account,
                    callback.dedupe_key,
                    callback.received_at_ms,
                    callback.msg_type,
                    callback.event,
                    request.query,
                    request.content_type,
                    &request.body[..],
                    callback.id,
                    callback
                        .answer_pending_ms
                        .map(|ms| now_ms().saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))),
            ])?
            == 1;
        let new = || Accepted::New {
            callback: callback.id,
            jobs: callback.jobs.iter().map(|job| job.id).collect(),
        };
        if !inserted {
            let first = self
                .stored_copy(&callback.account, &callback.dedupe_key, i64::MIN)?
                .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
            if first.0 == callback.id {
                // This very write, sent again: it is stored already.
                return Ok(new());
            }
            return Ok(duplicate_of(first));
        }
        let id = callback.id;
        let now = now_ms();
        let mut insert_job = self.conn.prepare_cached(
            "INSERT INTO jobs (id, callback_id, account, target, state, attempts, next_at, updated_at, lease)
             VALUES (?6, ?1, ?2, ?3, ?4, 0, ?5, ?5, ?7)",
        )?;
        for job in &callback.jobs {
            let state = if job.lease.is_some() {
                IN_FLIGHT
            } else {
                PENDING
            };
            insert_job.execute(params![
                id,
                &*callback.account,
                &*job.target,
                state,
                now,
                job.id,
                lease_param(job.lease.unwrap_or(0)),
            ])?;
        }
        Ok(new())
    }

    /// Reserves the next `count` ids, in the transaction of the batch: the reservation is on
    /// disk before any of them is handed out. Kept in memory even if the batch fails, which only
    /// skips those ids.
    fn reserve_ids(&mut self, count: u64) -> Result<i64, StoreError> {
        let last = i64::try_from(count)
            .ok()
            .and_then(|count| self.ids_reserved.checked_add(count))
            .filter(|last| *last < 1 << 53)
            .ok_or_else(|| StoreError::Other("no ids left below 2^53".into()))?;
        self.conn
            .prepare_cached(
                "INSERT INTO ids_reserved (one, last) VALUES (1, ?1)
                 ON CONFLICT (one) DO UPDATE SET last = excluded.last",
            )?
            .execute(params![last])?;
        self.ids_reserved = last;
        Ok(last)
    }

    fn keep(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO kept (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![name, value])?;
        Ok(())
    }

    /// The callback stored under `key` of `account`, received at or after `since_ms`, if any.
    fn stored_copy(
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

    fn save_answer(&mut self, id: CallbackId, answer: &Answer) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE callbacks SET answer_type = ?2, answer = ?3 WHERE id = ?1")?
            .execute(params![id, answer.content_type, &answer.body[..]])?;
        Ok(())
    }

    fn release(&mut self, jobs: &[Leased], now: i64) -> Result<(), StoreError> {
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

    fn lease(
        &mut self,
        key: &TargetKey,
        now: i64,
        limit: usize,
        token: LeaseToken,
    ) -> Result<Vec<Job>, StoreError> {
        let mut select = self.conn.prepare_cached(
            "SELECT j.id, j.callback_id, j.attempts, j.retry_base, c.query, c.content_type, c.body
             FROM jobs j JOIN callbacks c ON c.id = j.callback_id
             WHERE j.account = ?1 AND j.target = ?2 AND j.state = 0 AND j.next_at <= ?3
             ORDER BY j.next_at LIMIT ?4",
        )?;
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
                    request: Arc::new(Replay {
                        query: row.get(4)?,
                        content_type: row.get(5)?,
                        body: Bytes::from(row.get::<_, Vec<u8>>(6)?),
                    }),
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

    fn next_due(&mut self, key: &TargetKey, now: i64) -> Result<Option<Duration>, StoreError> {
        let at: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT MIN(next_at) FROM jobs WHERE account = ?1 AND target = ?2 AND state = 0",
            )?
            .query_row(params![&*key.account, &*key.target], |row| row.get(0))?;
        Ok(at.map(|at| Duration::from_millis(u64::try_from(at - now).unwrap_or(0))))
    }

    fn record(&mut self, report: &AttemptReport) -> Result<Recorded, StoreError> {
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
        Ok(Recorded::Applied)
    }

    fn bury_unrouted(
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
        let mut bury = self.conn.prepare_cached(
            "UPDATE jobs SET state = ?3, updated_at = ?4, last_error = ?5
             WHERE account = ?1 AND target = ?2 AND state = ?6",
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

    fn replay_dead(
        &mut self,
        id: Option<JobId>,
        filter: &DeadLetterFilter,
        routed: &[TargetKey],
        now: i64,
    ) -> Result<Replayed, StoreError> {
        let letters = self
            .conn
            .prepare_cached(&format!(
                "SELECT j.id, j.account, j.target FROM jobs j WHERE {DEAD_LETTER_MATCH}"
            ))?
            .query_map(matching(&id, filter), |row| {
                Ok((row.get::<_, JobId>(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect::<Result<Vec<(JobId, String, String)>, _>>()?;
        let mut replay = self.conn.prepare_cached(
            "UPDATE jobs SET state = ?2, next_at = ?3, updated_at = ?3, retry_base = attempts WHERE id = ?1",
        )?;
        let mut replayed = Replayed::default();
        for (job, account, target) in letters {
            match routed_key(routed, &account, &target) {
                Some(key) => {
                    replay.execute(params![job, PENDING, now])?;
                    replayed.targets.push(key.clone());
                }
                None => replayed.not_routed += 1,
            }
        }
        Ok(replayed)
    }

    fn purge_dead(
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

    fn purge(&mut self, before: i64) -> Result<u64, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewJob;

    fn callback(key: &str) -> NewCallback {
        NewCallback {
            id: 1,
            account: Arc::from("a"),
            dedupe_key: key.to_owned(),
            legacy_dedupe_key: None,
            received_at_ms: 0,
            msg_type: None,
            event: None,
            request: Arc::new(Replay {
                query: "q".into(),
                content_type: None,
                body: Bytes::from_static(b"<xml/>"),
            }),
            jobs: vec![NewJob {
                id: 2,
                target: Arc::from("t"),
                lease: None,
            }],
            answer_pending_ms: None,
        }
    }

    fn key() -> TargetKey {
        TargetKey {
            account: Arc::from("a"),
            target: Arc::from("t"),
        }
    }

    fn report(job: &Job, attempt: u32, disposition: Disposition) -> AttemptReport {
        AttemptReport {
            key: key(),
            job: job.id,
            lease: job.lease,
            attempt,
            at_ms: 0,
            status: Some(503),
            error: Some("target answered 503".into()),
            disposition,
        }
    }

    /// A fresh store (in the returned directory) with one callback whose job is leased.
    async fn store_with_a_leased_job() -> (tempfile::TempDir, SqliteStore, Job) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("store.db"), Synchronous::Full).unwrap();
        store.accept(callback("k")).await.unwrap();
        let job = store.lease_due(&key(), 1).await.unwrap().remove(0);
        (dir, store, job)
    }

    /// An outcome alone is not committed at once: it waits up to OUTCOME_LINGER for company,
    /// and is applied then. A command that needs its commit now (here a flush) takes the
    /// waiting outcome along: once the flush returns, the outcome is stored.
    #[tokio::test]
    async fn an_outcome_alone_waits_for_company_and_an_urgent_command_takes_it_along() {
        let (_dir, store, job) = store_with_a_leased_job().await;
        let started = std::time::Instant::now();
        let retry = report(&job, 1, Disposition::RetryIn(Duration::ZERO));
        assert_eq!(store.record(retry).await.unwrap(), Recorded::Applied);
        assert!(
            started.elapsed() >= OUTCOME_LINGER,
            "a lone outcome was committed after {:?}",
            started.elapsed()
        );

        let again = store.lease_due(&key(), 1).await.unwrap().remove(0);
        let store = Arc::new(store);
        let recording = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .record(report(&again, 2, Disposition::Delivered))
                    .await
            }
        });
        // Let the outcome reach the writer and wait there.
        tokio::time::sleep(OUTCOME_LINGER / 4).await;
        store.flush().await.unwrap();
        assert!(
            store.queue_depths().await.unwrap().is_empty(),
            "the flush committed without the outcome waiting beside it"
        );
        assert_eq!(recording.await.unwrap().unwrap(), Recorded::Applied);
    }

    /// Committed pages reach the database file within a few checkpoint periods, long before
    /// the writer's own checkpoint (at WRITER_CHECKPOINT_PAGES) would copy them.
    #[tokio::test]
    async fn the_checkpointer_copies_commits_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store = SqliteStore::open(&path, Synchronous::Full).unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        let empty = size();
        for n in 0..200 {
            let mut new = callback(&format!("k{n}"));
            new.id = 10 * n + 1;
            new.jobs[0].id = 10 * n + 2;
            new.request = Arc::new(Replay {
                query: "q".into(),
                content_type: None,
                body: Bytes::from(vec![b'x'; 2000]),
            });
            assert!(matches!(
                store.accept(new).await.unwrap(),
                Accepted::New { .. }
            ));
        }
        // 200 callbacks of 2 kB: about 100 pages, far below the writer's own threshold.
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while size() < empty + 200 * 2000 && std::time::Instant::now() < until {
            tokio::time::sleep(CHECKPOINT_EVERY / 2).await;
        }
        assert!(
            size() >= empty + 200 * 2000,
            "the database file is still {} bytes ({empty} empty)",
            size()
        );
    }

    /// The probe must need as much new space as the largest callback: an empty transaction
    /// (what readiness used to commit) writes nothing, and so succeeds on a full disk.
    #[tokio::test]
    async fn the_readiness_probe_writes_a_row_of_its_size_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store = SqliteStore::open(&path, Synchronous::Full)
            .unwrap()
            .with_readiness(Readiness {
                min_free_bytes: 0,
                probe_bytes: 256 * 1024,
            });
        let wal = dir.path().join("store.db-wal");
        let before = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        store.check_writable().await.unwrap();
        let after = std::fs::metadata(&wal).unwrap().len();
        assert!(
            after >= before + 256 * 1024,
            "the WAL grew from {before} to {after} bytes only"
        );
        let rows: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM readiness_probe", [], |row| row.get(0))
            .unwrap();
        assert_eq!(
            rows, 0,
            "the probe's row is deleted in the same transaction"
        );
    }

    /// An outcome recorded twice (retried after a commit that was reported failed but reached
    /// the disk) must not undo what happened since: here, the retry was leased again.
    #[tokio::test]
    async fn an_outcome_recorded_again_does_not_undo_a_later_lease() {
        let (_dir, store, job) = store_with_a_leased_job().await;
        let first = report(&job, 1, Disposition::RetryIn(Duration::ZERO));
        assert_eq!(
            store.record(first.clone()).await.unwrap(),
            Recorded::Applied
        );
        let again = store.lease_due(&key(), 1).await.unwrap().remove(0);
        assert_eq!((again.id, again.attempts), (job.id, 1));

        assert_eq!(store.record(first).await.unwrap(), Recorded::LeaseLost);
        assert_eq!(
            store.next_due(&key()).await.unwrap(),
            None,
            "still in flight"
        );
        assert!(store.lease_due(&key(), 1).await.unwrap().is_empty());
        let delivered = store
            .record(report(&again, 2, Disposition::Delivered))
            .await
            .unwrap();
        assert_eq!(delivered, Recorded::Applied);
        assert!(store.queue_depths().await.unwrap().is_empty());
    }
}
