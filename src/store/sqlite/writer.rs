//! The writer thread: every command to the SQLite store runs here, in batches, one transaction
//! per batch (group commit), and is answered only after that transaction commits.
//!
//! Also here: the readiness probe (a real write of the largest callback's size, in a
//! transaction of its own), the check that the path still leads to the opened file, and the
//! checkpointer thread that copies the WAL into the database file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use crate::clock::now_ms;
use crate::metrics::minutes::MinuteCount;
use crate::store::{
    Accepted, Answer, AttemptReport, CallbackId, DeadLetterFilter, Job, JobId, LeaseToken, Leased,
    NewCallback, Recorded, Replayed, StoreError, TargetKey,
};

/// The probe's row by default: the default largest body (`server.max_body_bytes`) and query
/// (`server.max_query_bytes`).
const DEFAULT_PROBE_BYTES: usize = 65536 + 4096;

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

/// Most commands in one transaction: bounds the latency a large group adds to its first member.
pub(super) const MAX_BATCH: usize = 1024;
/// How often the checkpointer thread copies the WAL into the database file. Shorter intervals
/// make each checkpoint's `fsync` of the database file shorter, and the WAL's syncs (so the
/// answers) wait behind it: at 2,000 callbacks/s the p99 was 1.4–1.9 ms every 20 ms against
/// 1.6–3.0 ms every 100 ms. They also let the WAL restart sooner in the space its file already
/// has, so on a full disk callbacks that fit there are still stored (durably) before the
/// first refusal.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(20);
/// WAL pages after which the writer checkpoints itself (about 16 MiB of WAL).
pub(super) const WRITER_CHECKPOINT_PAGES: i64 = 4000;
/// How long outcomes of attempts may wait for a command that needs its commit at once, when
/// nothing else is queued: see [`Writer::linger`].
pub(super) const OUTCOME_LINGER: Duration = Duration::from_millis(20);
/// Commits failed in a row after which readiness says 503 once more even if its own probe
/// succeeds (which resets the count): the disk just refused real writes.
const NOT_READY_AFTER: u32 = 3;

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(super) enum Command {
    Accept(NewCallback, Reply<Accepted>),
    SaveAnswer(CallbackId, Answer, Reply<()>),
    Keep(String, Bytes, Reply<()>),
    /// Adds per-minute counts, forgetting minutes before the given one.
    AddMinutes(Vec<MinuteCount>, i64, Reply<()>),
    Lease(TargetKey, usize, LeaseToken, Reply<Vec<Job>>),
    NextDue(TargetKey, Reply<Option<Duration>>),
    Record(AttemptReport, Reply<Recorded>),
    Release(Vec<Leased>, Reply<()>),
    BuryUnrouted(Vec<TargetKey>, String, i64, Reply<Vec<(TargetKey, u64)>>),
    /// A target's pending jobs due since before the first time: dead, with the reason.
    BuryWaiting(TargetKey, i64, String, i64, Reply<u64>),
    /// Queues each callback for the target unless it was already: how many were.
    Backfill(TargetKey, Vec<(CallbackId, JobId)>, i64, Reply<u64>),
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
    /// Lowers the reservation from the first id to the second (the last handed out).
    ReturnIds(i64, i64, Reply<()>),
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
    fn error(&self) -> Option<StoreError> {
        fn of<T>(result: &Result<T, StoreError>) -> Option<StoreError> {
            result.as_ref().err().cloned()
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

    fn send(self, commit: &Result<(), StoreError>) {
        fn finish<T>(
            reply: Reply<T>,
            result: Result<T, StoreError>,
            commit: &Result<(), StoreError>,
        ) {
            let result = match commit {
                Ok(()) => result,
                Err(e) => Err(e.clone().context("commit failed")),
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

/// Moves what is queued into `batch`, up to [`MAX_BATCH`] commands, without waiting.
fn take_queued(receiver: &mut mpsc::Receiver<Command>, batch: &mut Vec<Command>) {
    while batch.len() < MAX_BATCH {
        match receiver.try_recv() {
            Ok(command) => batch.push(command),
            Err(_) => break,
        }
    }
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

pub(super) struct Writer {
    pub(super) conn: Connection,
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
    last_failure: Option<StoreError>,
    /// The last id of the latest block reserved (or used by this file before blocks were).
    pub(super) ids_reserved: i64,
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

/// Starts the writer thread on `conn` (the file at `path`, its ids reserved up to
/// `ids_reserved`), and the checkpointer thread beside it; the writer runs the commands of
/// `receiver` until every sender is gone.
pub(super) fn start(
    conn: Connection,
    path: &Path,
    ids_reserved: i64,
    receiver: mpsc::Receiver<Command>,
) -> Result<(), StoreError> {
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
        last_failure: None,
        ids_reserved,
        _checkpointer: alive,
    };
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer.run(receiver))?;
    Ok(())
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
                    let _ = reply.send(ready.clone());
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
    ) -> Result<(), StoreError> {
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
        let mut failure = began.err().map(StoreError::from);
        let mut accepts = false;
        for command in batch.drain(..) {
            match command {
                Command::Probe(readiness, reply) => probes.push((readiness, reply)),
                command => {
                    accepts |= matches!(command, Command::Accept(..));
                    let finished = match &failure {
                        Some(error) => self.fail(command, error),
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
            Some(error) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                Err(error)
            }
            None => self.conn.execute_batch("COMMIT").map_err(|e| {
                let _ = self.conn.execute_batch("ROLLBACK");
                StoreError::from(e)
            }),
        };
        match &committed {
            Err(error) => self.failed(error),
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
                    *result = Err(StoreError::Unavailable(lost.clone()));
                }
            }
        }
        committed
    }

    fn failed(&mut self, error: &StoreError) {
        self.failed_in_a_row = self.failed_in_a_row.saturating_add(1);
        self.last_failure = Some(error.clone());
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
    fn probe(&mut self, readiness: Readiness) -> Result<(), StoreError> {
        if let Some(lost) = self.check_file() {
            return Err(StoreError::Unavailable(lost.to_owned()));
        }
        if readiness.min_free_bytes > 0 {
            let free = free_bytes(&self.file).map_err(|e| {
                StoreError::from(e).context("cannot read the free space of the store's file system")
            })?;
            if free < readiness.min_free_bytes {
                return Err(StoreError::Full(format!(
                    "{free} bytes free on the store's file system, below store.min_free_bytes ({})",
                    readiness.min_free_bytes
                )));
            }
        }
        // Real commits that failed in a row (the probe's own failures are not counted: they
        // answer 503 by themselves). Its success resets them, so the next answer can be 200.
        let failed_before = self.failed_in_a_row;
        if let Err(e) = self.write_probe(readiness.probe_bytes) {
            return Err(e.context(format!(
                "a test write of {} bytes failed",
                readiness.probe_bytes
            )));
        }
        self.failed_in_a_row = 0;
        if failed_before >= NOT_READY_AFTER {
            // Of the kind of the last failure (a full disk), which just refused real writes.
            let last = (self.last_failure.clone())
                .unwrap_or_else(|| StoreError::Unexpected("no failure recorded".into()));
            return Err(last.map_message(|last| {
                format!(
                    "the last {failed_before} commits failed ({last}); a test write just succeeded"
                )
            }));
        }
        Ok(())
    }

    /// Writes and deletes a row of `bytes` in a transaction of its own: as much new data as
    /// the largest callback, so it fails when the disk could not take that callback.
    fn write_probe(&self, bytes: usize) -> Result<(), StoreError> {
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
            StoreError::from(e)
        })
    }

    fn fail(&self, command: Command, error: &StoreError) -> Done {
        match command {
            Command::Accept(_, r) => Done::Accept(r, Err(error.clone())),
            Command::SaveAnswer(_, _, r)
            | Command::Keep(_, _, r)
            | Command::AddMinutes(_, _, r)
            | Command::Release(_, r)
            | Command::Flush(r)
            | Command::Probe(_, r) => Done::Unit(r, Err(error.clone())),
            Command::Record(_, r) => Done::Recorded(r, Err(error.clone())),
            Command::Lease(_, _, _, r) => Done::Lease(r, Err(error.clone())),
            Command::NextDue(_, r) => Done::NextDue(r, Err(error.clone())),
            Command::Purge(_, r) | Command::PurgeDead(_, _, r) => {
                Done::Count(r, Err(error.clone()))
            }
            Command::ReplayDead(_, _, _, r) => Done::Replayed(r, Err(error.clone())),
            Command::ReserveIds(_, r) => Done::Reserved(r, Err(error.clone())),
            Command::ReturnIds(_, _, r) => Done::Unit(r, Err(error.clone())),
            Command::BuryUnrouted(_, _, _, r) => Done::Buried(r, Err(error.clone())),
            Command::BuryWaiting(_, _, _, _, r) => Done::Count(r, Err(error.clone())),
            Command::Backfill(_, _, _, r) => Done::Count(r, Err(error.clone())),
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
            Command::ReturnIds(reserved, out, r) => Done::Unit(r, self.return_ids(reserved, out)),
            Command::BuryUnrouted(routed, reason, now, r) => {
                Done::Buried(r, self.bury_unrouted(&routed, &reason, now))
            }
            Command::BuryWaiting(key, before, reason, now, r) => {
                Done::Count(r, self.bury_waiting(&key, before, &reason, now))
            }
            Command::Backfill(key, jobs, now, r) => Done::Count(r, self.backfill(&key, &jobs, now)),
            // Nothing to do but to be in the transaction: its answer waits for the commit.
            Command::Flush(r) => Done::Unit(r, Ok(())),
            Command::Keep(name, value, r) => Done::Unit(r, self.keep(&name, &value)),
            Command::AddMinutes(counts, forget, r) => {
                Done::Unit(r, self.add_minutes(&counts, forget))
            }
            // `run_batch` takes probes out of the batch; one that got here is answered after
            // the commit like a flush.
            Command::Probe(_, r) => Done::Unit(r, Ok(())),
        }
    }
}
