//! The durable store: callbacks as received, one job per (callback, target), and the attempts
//! that failed. It is both the dedupe and the retry timer.
//!
//! * [`Store::accept`] records a callback and its jobs in one atomic insert-if-absent on
//!   (account, dedupe key): WeChat's resends can arrive concurrently, so check-then-write would
//!   race. Only after it returns may WeChat get its 200.
//! * A job is *pending* (due at some time), *in flight* (leased), or *dead*. Delivered jobs are
//!   removed. Retries are pending jobs due later: no task sleeps.
//! * A job of a target with `order = "per_user"` is *lane-ordered* ([`NewJob::ordered`]): it
//!   waits in its callback's lane ([`Replay::lane`]) for that target. Only the lane's first
//!   open job is ever due or in flight; the others wait behind it, pending but never leased,
//!   until it is delivered or dead (a dead letter releases the lane). The lane is kept in the
//!   store, so it holds across instances and restarts. Jobs that are not lane-ordered cost
//!   nothing of it.
//! * The store never interprets bodies: it keeps and returns the original bytes.
//! * What is stored of a callback has one shape, [`Replay`], versioned ([`SHAPE_VERSION`]) so
//!   that builds of two releases share a store (`shape`).
//!
//! Several processes may share one store (Redis), so the trait is built for that:
//!
//! * **Ids are made by the caller** ([`Store::next_ids`], before the write): a write sent twice (a
//!   resend after a reconnect) recognises its own earlier copy, and [`Store::accept`] answers
//!   `New` with the same ids again rather than `Duplicate`. Job ids are the delivery ids targets
//!   dedupe on: never reused.
//! * **Leases carry a token** ([`LeaseToken`]): an attempt's outcome is applied only if the job is
//!   still leased with the token the attempt started under, so a process whose lease expired
//!   (and whose job another process now delivers) cannot overwrite that other's result
//!   ([`Recorded::LeaseLost`]). [`Store::renew`] extends leases of long attempts.
//! * **Due times are the store's clock**: callers say "in 2 s" ([`Disposition::RetryIn`]) and
//!   hear "due in 300 ms" ([`Store::next_due`]), never an absolute time of their own clock, since
//!   the clocks of several machines differ. `now_ms` parameters that remain are local facts kept
//!   for people (when an attempt ran, when a letter died).
//! * **A resend on another process** sees whether the first copy's answer (the primary's relayed
//!   reply) may still come ([`Accepted::Duplicate::answer_pending`]) and can poll
//!   [`Store::answer`] for it.
//!
//! One small trait, one file per backend; the same contract suite (`tests/`) runs against each.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::{Backend, StoreConfig};
use crate::metrics::minutes::MinuteCount;

mod history;
mod ids;
pub mod leases;
mod pace;
mod redis;
mod shape;
mod sqlite;

pub use self::redis::{RedisNodes, RedisOptions, RedisStore};
pub use history::{HistoryCursor, HistoryEntry, HistoryPage, HistoryQuery, TargetAt, TargetState};
pub use ids::IdBlocks;
pub use pace::LocalPace;
pub use shape::{Replay, SHAPE_VERSION};

/// How long the per-minute counts of the console's charts are kept ([`Store::add_minutes`]).
pub const MINUTES_KEPT: Duration = Duration::from_secs(24 * 3600);

/// The first minute (Unix minutes) still kept now: older ones are forgotten.
fn first_minute_kept() -> i64 {
    crate::metrics::minutes::minute_now() - (MINUTES_KEPT.as_secs() / 60) as i64
}
pub use sqlite::{Readiness, SqliteStore};

/// Opens the store `config` names: the one place that knows every backend. Its errors do not
/// say which store: [`StoreConfig::location`] does. `readiness` is what
/// the embedded store's readiness probe checks besides a commit.
pub async fn open(
    config: &StoreConfig,
    readiness: Readiness,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config.backend {
        Backend::Sqlite => {
            Arc::new(SqliteStore::open(&config.path, config.synchronous)?.with_readiness(readiness))
        }
        Backend::Redis => {
            Arc::new(RedisStore::open(&RedisOptions::from_config(&config.redis)?).await?)
        }
    })
}

/// How long a callback stored under a legacy dedupe key ([`NewCallback::legacy_dedupe_key`])
/// is taken for the first copy of a callback that has that legacy key. WeChat resends within
/// about 20 s (three tries, 5 s each); past this window the legacy lookup finds nothing, so a
/// deploy's transition ends by itself.
pub const LEGACY_KEY_WINDOW: Duration = Duration::from_secs(600);

/// A stored callback's id. Made by the caller before the write ([`Store::next_ids`]), unique in
/// the whole store, never reused.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct CallbackId(pub i64);

/// A job's id: one (callback, target) pair, the delivery id targets dedupe on
/// (`X-WeChat-Fanout-Delivery`). From the same sequence as callbacks' ids, never reused.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct JobId(pub i64);

macro_rules! id_text {
    ($($id:ty),*) => {$(
        impl std::fmt::Display for $id {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $id {
            type Err = std::num::ParseIntError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                text.parse().map(Self)
            }
        }
    )*};
}
id_text!(CallbackId, JobId);
/// Names one lease of one job; made by whoever takes the lease (random), never 0.
pub type LeaseToken = u64;

/// Which target of which account a job is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetKey {
    pub account: Arc<str>,
    pub target: Arc<str>,
}

/// A verified callback, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewCallback {
    /// Made by [`Store::next_ids`]: the same value on a resend of this very write.
    pub id: CallbackId,
    pub account: Arc<str>,
    pub dedupe_key: String,
    /// The key the build before this one gave this callback, where it differs: a callback
    /// stored under it by that build, received less than [`LEGACY_KEY_WINDOW`] before this
    /// one, is this callback's first copy (see `wechat::dedupe`). Dropped one release on.
    pub legacy_dedupe_key: Option<String>,
    pub received_at_ms: i64,
    /// For listing and filtering dead letters; routing already happened.
    pub msg_type: Option<String>,
    pub event: Option<String>,
    /// WeChat's `MsgId`, where the message has one: kept for searches of the history.
    pub msg_id: Option<String>,
    /// A keyed hash of the sender (`FromUserName`, `privacy::UserHash`), never the sender:
    /// kept so that the history can be searched by user (shape version 5 on).
    pub sender: Option<String>,
    /// The instance that accepted it (`server.instance_name`), shown with it in the console and
    /// searched by (shape version 6 on).
    pub instance: Option<Arc<str>>,
    pub request: Arc<Replay>,
    /// The targets whose filters matched, in order.
    pub jobs: Vec<NewJob>,
    /// The primary's answer is being awaited for at most this long (the relay started): a resend
    /// arriving meanwhile, on any process, is told so and may wait for [`Store::answer`].
    pub answer_pending_ms: Option<u64>,
}

/// One target to deliver a new callback to.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Made by [`Store::next_ids`]; the delivery id.
    pub id: JobId,
    pub target: Arc<str>,
    /// `Some`: the caller attempts this job at once itself (primary relay, in-memory hand-off)
    /// under this lease: it is stored in flight rather than due, so no worker leases it twice.
    /// With `ordered`, only if its lane has no open job (which only the store knows): else it
    /// waits behind them, and the store says so ([`Accepted::New`]'s `waiting`).
    pub lease: Option<LeaseToken>,
    /// The target delivers its callbacks per lane (`order = "per_user"`): this job waits behind
    /// the open jobs of its callback's lane ([`Replay::lane`], which it must have) for that
    /// target.
    pub ordered: bool,
}

/// The answer WeChat got, kept so that its resends get the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub content_type: Option<String>,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// First time seen: the ids of its jobs, in the order of [`NewCallback::jobs`].
    New {
        callback: CallbackId,
        jobs: Vec<JobId>,
        /// Jobs stored with a lease that wait behind their lane instead (lane-ordered jobs whose
        /// lane had an open job): the caller must not start them; the store lets each go when
        /// the job before it in its lane ends.
        waiting: Vec<JobId>,
    },
    /// A resend: nothing was written. `answer` is the stored answer, if one was saved.
    Duplicate {
        callback: CallbackId,
        answer: Option<Answer>,
        /// No answer yet, but the first copy's relay may still save one within this long
        /// (by the store's clock); `None` when no answer is to be expected.
        answer_pending: Option<Duration>,
    },
}

/// A job to attempt, with the bytes to send.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: JobId,
    pub callback: CallbackId,
    pub key: TargetKey,
    /// The lease this attempt runs under; its outcome is recorded only while it holds.
    pub lease: LeaseToken,
    /// Attempts made before this one, over the job's whole life.
    pub attempts: u32,
    /// `attempts` when the job was last replayed from the dead letters: a replay gets a fresh
    /// allowance of `max_attempts`, while attempt numbers keep counting.
    pub retry_base: u32,
    pub request: Arc<Replay>,
    /// The lane this job holds (it is lane-ordered): its outcome, once delivered or dead,
    /// lets the lane's next job go.
    pub lane: Option<Arc<str>>,
}

impl Job {
    /// This attempt's number within the current allowance (from 1).
    pub fn attempt_in_round(&self) -> u32 {
        (self.attempts + 1).saturating_sub(self.retry_base)
    }

    /// Which lease this job is held under.
    pub fn leased(&self) -> Leased {
        Leased {
            key: self.key.clone(),
            job: self.id,
            callback: self.callback,
            token: self.lease,
        }
    }
}

/// A job held under a lease, as [`Store::release`] and [`Store::renew`] name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    pub key: TargetKey,
    pub job: JobId,
    /// The job's callback: on Redis, a job leased at accept is held in its callback's hash.
    pub callback: CallbackId,
    pub token: LeaseToken,
}

/// A fresh lease token: random, never 0 (0 means "not leased" in the stores).
pub fn new_lease_token() -> LeaseToken {
    rand::random::<u64>().max(1)
}

/// How many jobs one target has, by state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueDepth {
    pub account: String,
    pub target: String,
    pub pending: i64,
    pub in_flight: i64,
    pub dead: i64,
    /// When the oldest of its jobs not yet delivered (pending or in flight) arrived, Unix ms;
    /// `None` when it has none. What an alert on a target's backlog reads: its age.
    pub oldest_pending_ms: Option<i64>,
}

/// Which dead letters an operation applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterFilter {
    pub account: Option<String>,
    pub target: Option<String>,
    /// Died at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Died before this time (Unix ms).
    pub until_ms: Option<i64>,
    /// At most this many (listing only; default 100).
    pub limit: Option<usize>,
}

/// A dead letter as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub id: JobId,
    pub callback: CallbackId,
    pub account: String,
    pub target: String,
    pub msg_type: Option<String>,
    pub event: Option<String>,
    pub received_at_ms: i64,
    pub died_at_ms: i64,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

/// One failed attempt of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedAttempt {
    pub attempt: u32,
    pub at_ms: i64,
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// Which state a job is in: see the module's doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Due now or later.
    Pending,
    /// Leased for an attempt.
    InFlight,
    /// A dead letter.
    Dead,
}

/// A stored callback with the jobs it still has, as [`Store::callback`] shows it.
///
/// Delivered jobs are removed from the store, so a job of the callback that is not listed was
/// delivered (or purged as a dead letter). Once none is left, the callback itself is forgotten
/// after the retention ([`Store::purge_delivered`]), and [`Store::callback`] finds nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackDetail {
    pub id: CallbackId,
    pub account: String,
    pub received_at_ms: i64,
    pub msg_type: Option<String>,
    pub event: Option<String>,
    pub request: Replay,
    /// The answer WeChat got, if one was saved ([`Store::save_answer`]).
    pub answer: Option<Answer>,
    /// The instance that accepted it; `None` when a build before shape version 6 did.
    pub instance: Option<String>,
    /// One per job still held, by id.
    pub jobs: Vec<JobDetail>,
}

/// A stored callback in a window of arrivals ([`Store::arrivals`]): what a backfill needs to
/// route it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    pub id: CallbackId,
    pub received_at_ms: i64,
    pub request: Replay,
    /// The targets it was queued for, at accept or by a backfill; `None` when it was stored by
    /// a build before shape version 5, which did not say.
    pub routed: Option<Vec<String>>,
}

/// One job of a stored callback, in [`CallbackDetail::jobs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDetail {
    pub id: JobId,
    pub target: String,
    pub state: JobState,
    /// Attempts made over the job's whole life (replays keep counting).
    pub attempts: u32,
    /// A pending job's time until it is due, by the store's clock (zero: due now).
    pub due_in: Option<Duration>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// Every failed attempt kept for it, in order.
    pub failed: Vec<FailedAttempt>,
}

/// A dead letter with what it would send and every failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterDetail {
    pub letter: DeadLetter,
    pub request: Replay,
    pub attempts: Vec<FailedAttempt>,
}

/// What a replay of dead letters did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// The target of each job made due again, one entry per job.
    pub targets: Vec<TargetKey>,
    /// Matching letters left dead because their target is not routed.
    pub not_routed: u64,
}

/// What became of a job after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Delivered,
    /// Pending again, due this long from now by the store's clock.
    RetryIn(Duration),
    /// No more attempts: a dead letter.
    Dead,
}

/// The end of one attempt, as the store records it.
#[derive(Debug, Clone)]
pub struct AttemptReport {
    pub key: TargetKey,
    pub job: JobId,
    /// The job's callback: on Redis, a job leased at accept is held in its callback's hash.
    pub callback: CallbackId,
    /// The lease the attempt ran under: the outcome applies only if it still holds.
    pub lease: LeaseToken,
    /// This attempt's number, from 1.
    pub attempt: u32,
    pub at_ms: i64,
    /// The target's HTTP status, if it answered.
    pub status: Option<u16>,
    /// Why the attempt failed, if it did.
    pub error: Option<String>,
    pub disposition: Disposition,
    /// The job's lane ([`Job::lane`]), released when it is delivered or dead.
    pub lane: Option<Arc<str>>,
}

/// Whether [`Store::record`] applied an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Recorded {
    Applied,
    /// Applied, and the job (lane-ordered, delivered or dead) let its lane's next job go: that
    /// one is due now, and its target's worker should look in the store.
    LaneNextDue,
    /// The job is no longer leased with that token (the lease expired and another process took
    /// the job, or it was released): nothing was written.
    LeaseLost,
}

/// What went wrong with the store, as a caller can act on it. Each backend converts its own
/// errors where they arise (`sqlite`, `redis`), so no type of a backend's library leaves the
/// store; the message keeps the innermost cause's text (`database or disk is full`,
/// `Connection refused (os error 111)`) for logs and people. Only strings inside, so an error can
/// be cloned to every member of a batch that failed together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or written now: a connection refused or dropped, an I/O
    /// error, Redis loading or failing over, the store's file gone from its path. Retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// No room: the disk is full (or below `store.min_free_bytes`), or Redis reached its
    /// `maxmemory`. Retry once space is freed.
    #[error("store full: {0}")]
    Full(String),
    /// The store did not answer in time (a response timeout, a lock held past its timeout, an
    /// fsync not confirmed in time); the write may still have happened.
    #[error("store timed out: {0}")]
    Timeout(String),
    /// Written, but not acknowledged by as many replicas as `store.redis.min_replicas` asks
    /// in time: a failover now could lose it. Retry later; the write itself stays.
    #[error("store not replicated: {0}")]
    NotReplicated(String),
    /// The store was closed: nothing more will be written by this process.
    #[error("store is closed")]
    Closed,
    /// Refused until someone changes something: a malformed URL, a wrong password or missing
    /// permission, the file owned by another process. Retrying alone does not help.
    #[error("store refused: {0}")]
    Refused(String),
    /// The store holds what this build cannot read (a damaged file, a value of the wrong type).
    #[error("store corrupt: {0}")]
    Corrupt(String),
    /// Anything else: an answer or a failure this build does not expect.
    #[error("store: {0}")]
    Unexpected(String),
}

impl StoreError {
    /// The same kind of error, with `what` (the step that failed) in front of its message.
    pub(crate) fn context(self, what: impl std::fmt::Display) -> StoreError {
        self.map_message(|m| format!("{what}: {m}"))
    }

    /// The same kind of error with another message made from this one's.
    pub(crate) fn map_message(self, f: impl FnOnce(String) -> String) -> StoreError {
        match self {
            StoreError::Unavailable(m) => StoreError::Unavailable(f(m)),
            StoreError::Full(m) => StoreError::Full(f(m)),
            StoreError::Timeout(m) => StoreError::Timeout(f(m)),
            StoreError::NotReplicated(m) => StoreError::NotReplicated(f(m)),
            StoreError::Refused(m) => StoreError::Refused(f(m)),
            StoreError::Corrupt(m) => StoreError::Corrupt(f(m)),
            StoreError::Unexpected(m) => StoreError::Unexpected(f(m)),
            StoreError::Closed => StoreError::Closed,
        }
    }
}

/// An I/O error of the store's own files (its folder, its lock, the threads it starts).
impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> StoreError {
        use std::io::ErrorKind;
        let message = e.to_string();
        match e.kind() {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge => {
                StoreError::Full(message)
            }
            ErrorKind::TimedOut => StoreError::Timeout(message),
            ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
                StoreError::Refused(message)
            }
            ErrorKind::InvalidData => StoreError::Corrupt(message),
            _ => StoreError::Unavailable(message),
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `n` fresh ids for a callback and its jobs: unique in the whole store, never reused, below
    /// 2^53 (see [`IdBlocks`]).
    async fn next_ids(&self, n: usize) -> Result<Vec<i64>, StoreError>;

    /// Records the callback and its jobs unless its (account, dedupe key) is known already. The
    /// same write sent again (same callback id) answers `New` again and writes nothing more.
    async fn accept(&self, callback: NewCallback) -> Result<Accepted, StoreError>;

    /// Keeps the answer WeChat got for this callback.
    async fn save_answer(
        &self,
        account: &str,
        callback: CallbackId,
        answer: Answer,
    ) -> Result<(), StoreError>;

    /// The answer saved for this callback, if any (a resend waiting for the primary polls it).
    async fn answer(
        &self,
        account: &str,
        callback: CallbackId,
    ) -> Result<Option<Answer>, StoreError>;

    /// Takes up to `limit` jobs of `key` that are due now (by the store's clock), earliest first,
    /// with those whose lease expired, and leases them under a new token until their attempt is
    /// recorded.
    async fn lease_due(&self, key: &TargetKey, limit: usize) -> Result<Vec<Job>, StoreError>;

    /// How long until the earliest pending job of `key` comes due (zero if due), if there is one.
    async fn next_due(&self, key: &TargetKey) -> Result<Option<Duration>, StoreError>;

    /// Reserves the next start of a delivery to a paced target (`rate_limit_per_sec`), one
    /// `interval` after the last start reserved on any instance sharing this store: how long
    /// to wait for it (see `pace`).
    async fn pace(&self, key: &TargetKey, interval: Duration) -> Result<Duration, StoreError>;

    /// Records the end of an attempt: removes, reschedules or buries the job, if the attempt's
    /// lease still holds.
    async fn record(&self, report: AttemptReport) -> Result<Recorded, StoreError>;

    /// Returns jobs in flight that will not be attempted after all (a worker stopping with jobs
    /// handed to it) to the due queue, due now; jobs no longer held under that lease are left.
    async fn release(&self, jobs: Vec<Leased>) -> Result<(), StoreError>;

    /// Extends the leases of attempts still running, so they do not expire mid-attempt. Returns
    /// the jobs whose lease was lost meanwhile.
    async fn renew(&self, jobs: &[Leased]) -> Result<Vec<JobId>, StoreError>;

    /// For a lane-ordered target: lets go of a few of its lanes left blocked by a build that
    /// keeps no lanes (its outcome of a lane's first job did not release the lane; see `shape`,
    /// version 5), picked at random. Nothing to do where no such build can share the store
    /// while this one runs (SQLite heals its lanes when it opens).
    async fn tend_lanes(&self, _key: &TargetKey) -> Result<(), StoreError> {
        Ok(())
    }

    /// How long a lease lasts unless [`Store::renew`]ed, after which another process may take
    /// the job; `None` when leases never expire (one process owns the store).
    fn lease_duration(&self) -> Option<Duration> {
        None
    }

    /// Turns the pending jobs of every target not in `routed` into dead letters with `reason` as
    /// their last error: a target removed from the configuration has no worker, and its jobs
    /// would otherwise wait, and keep their callbacks, forever. Jobs in flight are left to their
    /// attempt (one that fails is pending again, and buried by the next call). Returns the
    /// targets affected and how many jobs each.
    async fn bury_unrouted(
        &self,
        routed: Vec<TargetKey>,
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<(TargetKey, u64)>, StoreError>;

    /// Turns `key`'s pending jobs that have been due for longer than `waited` into dead letters
    /// with `reason` (a listen target nobody listened to for its `listen_backlog_secs`); how
    /// many. On Redis by its clock, at most 1,000 a call.
    async fn bury_waiting(
        &self,
        key: &TargetKey,
        waited: Duration,
        reason: &str,
    ) -> Result<u64, StoreError>;

    /// Succeeds when a write can be committed now (readiness).
    async fn check_writable(&self) -> Result<(), StoreError>;

    /// The fraction of the store's room in use (0 to 1), where it has a limit: SQLite, its
    /// file system's; Redis, `used_memory` of `maxmemory` on the fullest primary (`None` without
    /// a `maxmemory`). What an alert reads before writes are refused.
    async fn usage(&self) -> Result<Option<f64>, StoreError>;

    /// Deletes callbacks received before `older_than_ms` whose jobs are all delivered (dedupe
    /// forgets them then); returns how many. Dead letters are kept until purged explicitly.
    async fn purge_delivered(&self, older_than_ms: i64) -> Result<u64, StoreError>;

    /// Waits until everything queued before this call is committed.
    async fn flush(&self) -> Result<(), StoreError>;

    /// At a clean stop, after the last write: gives back the ids reserved and not handed out,
    /// so the next start goes on from the last id used instead of skipping the rest of a block
    /// (a crash still skips it: the ids may have been handed out).
    async fn close(&self) -> Result<(), StoreError>;

    /// Jobs per target and state, for metrics.
    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError>;

    /// Dead letters matching `filter`, most recent death first.
    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, StoreError>;

    /// One stored callback with its jobs and their failed attempts; `None` if no callback has
    /// `id` (never stored, or purged). For the admin and tests, never on the way of a
    /// callback: on Redis, finding a callback's jobs may read every job its account holds
    /// (see `redis::callbacks`).
    async fn callback(&self, id: CallbackId) -> Result<Option<CallbackDetail>, StoreError>;

    /// The ids of the latest `limit` callbacks stored for `account` (of every account: `None`),
    /// newest first: highest id first, which is arrival order on one process (a callback takes
    /// its ids when it arrives) and roughly so across instances (each takes ids from blocks of
    /// its own). For the admin and tests: on Redis it reads every id the account keeps (see
    /// `redis::callbacks`), until an index of arrivals replaces it.
    async fn callbacks(
        &self,
        account: Option<&str>,
        limit: usize,
    ) -> Result<Vec<CallbackId>, StoreError>;

    /// A page of the callbacks `account` stored that arrived in `since_ms..until_ms`, in
    /// arrival order, after callback `after` (the last of the previous page; `None`: from the
    /// start), at most `limit`. For a backfill: each with its request and the targets it was
    /// queued for. Callbacks are kept for `store.delivered_retention_secs` after their last
    /// delivery: an older window finds only those still held (dead letters).
    async fn arrivals(
        &self,
        account: &str,
        since_ms: i64,
        until_ms: i64,
        after: Option<CallbackId>,
        limit: usize,
    ) -> Result<Vec<Arrival>, StoreError>;

    /// A page of the stored callbacks matching `query`, newest first (see `history`): for the
    /// console's history and search, never on the way of a callback. SQLite reads its table
    /// (no index of its own); Redis reads each account's arrival index, examining a bounded
    /// number of callbacks per account and call.
    async fn history(&self, query: &HistoryQuery) -> Result<HistoryPage, StoreError>;

    /// Queues a new delivery for `key`'s target of each stored callback in `jobs` (callback,
    /// the new job's id from [`Store::next_ids`]) that was never queued for that target, due
    /// now; each callback's check and write are one atomic step, so two backfills of one window
    /// queue each callback once. Callbacks gone (purged), stored by a build that did not record
    /// their targets, or already queued for the target are skipped. Returns how many were
    /// queued.
    async fn backfill(
        &self,
        key: &TargetKey,
        jobs: Vec<(CallbackId, JobId)>,
    ) -> Result<u64, StoreError>;

    /// Adds one instance's per-minute counts ([`MinuteCount`]) to the deployment's: counts add
    /// up, readings of the queue keep the highest ([`Merge`](crate::metrics::minutes::Merge)); minutes older than
    /// [`MINUTES_KEPT`] are forgotten. For the console's charts, never on a callback's way.
    async fn add_minutes(&self, counts: Vec<MinuteCount>) -> Result<(), StoreError>;

    /// The deployment's per-minute counts of every account from minute `since` (Unix minutes)
    /// on, in no order.
    async fn minutes(&self, since: i64) -> Result<Vec<MinuteCount>, StoreError>;

    /// One dead letter with its request and attempts; `None` if `id` is not a dead letter.
    async fn dead_letter(&self, id: JobId) -> Result<Option<DeadLetterDetail>, StoreError>;

    /// Makes dead letters due now with a fresh allowance of attempts: the one with `id`, or all
    /// matching `filter`, of the targets in `routed`. Letters of other targets stay as they are:
    /// no worker would send them (see [`Store::bury_unrouted`]). A lane-ordered letter rejoins
    /// its lane at the end, behind the jobs open in it now; letters of one lane rejoin in the
    /// order their callbacks arrived.
    async fn replay_dead(
        &self,
        id: Option<JobId>,
        filter: &DeadLetterFilter,
        routed: Vec<TargetKey>,
    ) -> Result<Replayed, StoreError>;

    /// Deletes dead letters: the one with `id`, or all matching `filter`. Returns how many.
    async fn purge_dead(
        &self,
        id: Option<JobId>,
        filter: &DeadLetterFilter,
    ) -> Result<u64, StoreError>;

    /// A small value the deployment keeps beside its callbacks, by name (WeChat's callback IP
    /// lists, so that a start while WeChat's API is unreachable still has them); `None` if none
    /// was kept. Read at start, written rarely; every instance sharing the store sees it.
    async fn kept_value(&self, name: &str) -> Result<Option<Bytes>, StoreError>;

    /// Keeps `value` under `name`, replacing what was there.
    async fn keep_value(&self, name: &str, value: Bytes) -> Result<(), StoreError>;
}
