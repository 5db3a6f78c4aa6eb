//! The durable store: callbacks as received, one job per (callback, target), and the attempts
//! that failed. It is both the dedupe and the retry timer.
//!
//! * [`Store::accept`] records a callback and its jobs in one atomic insert-if-absent on
//!   (account, dedupe key): WeChat's resends can arrive concurrently, so check-then-write would
//!   race. Only after it returns may WeChat get its 200.
//! * A job is *pending* (due at `next_at`), *in flight* (leased by this process), or *dead*.
//!   Delivered jobs are removed. Retries are pending jobs with a later `next_at`: no task sleeps.
//! * The store never interprets bodies: it keeps and returns the original bytes.
//!
//! One small trait, one file per backend; the same contract suite (`tests/`) runs against each.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

mod sqlite;

pub use sqlite::{Readiness, SqliteStore};

pub type CallbackId = i64;
pub type JobId = i64;

/// Which target of which account a job is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetKey {
    pub account: Arc<str>,
    pub target: Arc<str>,
}

/// A verified callback, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewCallback {
    pub account: Arc<str>,
    pub dedupe_key: String,
    pub received_at_ms: i64,
    /// For listing and filtering dead letters; routing already happened.
    pub msg_type: Option<String>,
    pub event: Option<String>,
    pub request: Arc<Replay>,
    /// The targets whose filters matched, in order.
    pub jobs: Vec<NewJob>,
}

/// One target to deliver a new callback to.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub target: Arc<str>,
    /// The caller attempts this job at once itself (primary relay, in-memory hand-off): it is
    /// stored in flight rather than due, so no worker leases it twice.
    pub leased: bool,
}

/// Exactly what WeChat sent and every target gets again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The raw query string, byte for byte (without `?`).
    pub query: String,
    pub content_type: Option<String>,
    pub body: Bytes,
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
    },
    /// A resend: nothing was written. `answer` is the stored answer, if one was saved.
    Duplicate {
        callback: CallbackId,
        answer: Option<Answer>,
    },
}

/// A job to attempt, with the bytes to send.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: JobId,
    pub callback: CallbackId,
    pub key: TargetKey,
    /// Attempts made before this one, over the job's whole life.
    pub attempts: u32,
    /// `attempts` when the job was last replayed from the dead letters: a replay gets a fresh
    /// allowance of `max_attempts`, while attempt numbers keep counting.
    pub retry_base: u32,
    pub request: Arc<Replay>,
}

impl Job {
    /// This attempt's number within the current allowance (from 1).
    pub fn attempt_in_round(&self) -> u32 {
        (self.attempts + 1).saturating_sub(self.retry_base)
    }
}

/// How many jobs one target has, by state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueDepth {
    pub account: String,
    pub target: String,
    pub pending: i64,
    pub in_flight: i64,
    pub dead: i64,
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
pub struct AttemptRecord {
    pub attempt: u32,
    pub at_ms: i64,
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// A dead letter with what it would send and every failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterDetail {
    pub letter: DeadLetter,
    pub request: Replay,
    pub attempts: Vec<AttemptRecord>,
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
    /// Pending again, due at this time (Unix ms).
    RetryAt(i64),
    /// No more attempts: a dead letter.
    Dead,
}

/// The end of one attempt, as the store records it.
#[derive(Debug, Clone)]
pub struct AttemptReport {
    pub job: JobId,
    /// This attempt's number, from 1.
    pub attempt: u32,
    pub at_ms: i64,
    /// The target's HTTP status, if it answered.
    pub status: Option<u16>,
    /// Why the attempt failed, if it did.
    pub error: Option<String>,
    pub disposition: Disposition,
}

/// The message names the cause itself, so the cause is not also its `source()`: a chain
/// printer (`{:#}` of anyhow) would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(rusqlite::Error),
    #[error("store: {0}")]
    Io(std::io::Error),
    #[error("store is closed")]
    Closed,
    #[error("store: {0}")]
    Other(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Sqlite(e)
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> StoreError {
        StoreError::Io(e)
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records the callback and its jobs unless its (account, dedupe key) is known already.
    async fn accept(&self, callback: NewCallback) -> Result<Accepted, StoreError>;

    /// Keeps the answer WeChat got for this callback.
    async fn save_answer(&self, callback: CallbackId, answer: Answer) -> Result<(), StoreError>;

    /// Takes up to `limit` jobs of `key` that are due at `now_ms`, earliest first, and marks them
    /// in flight until their attempt is recorded.
    async fn lease_due(
        &self,
        key: &TargetKey,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError>;

    /// When the earliest pending job of `key` comes due (Unix ms), if there is one.
    async fn next_due(&self, key: &TargetKey) -> Result<Option<i64>, StoreError>;

    /// Records the end of an attempt: removes, reschedules or buries the job.
    async fn record(&self, report: AttemptReport) -> Result<(), StoreError>;

    /// Returns jobs in flight that will not be attempted after all (a worker stopping with jobs
    /// handed to it) to the due queue, due at `now_ms`.
    async fn release(&self, jobs: Vec<JobId>, now_ms: i64) -> Result<(), StoreError>;

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

    /// Succeeds when a write can be committed now (readiness).
    async fn check_writable(&self) -> Result<(), StoreError>;

    /// Deletes callbacks received before `older_than_ms` whose jobs are all delivered (dedupe
    /// forgets them then); returns how many. Dead letters are kept until purged explicitly.
    async fn purge_delivered(&self, older_than_ms: i64) -> Result<u64, StoreError>;

    /// Waits until everything queued before this call is committed.
    async fn flush(&self) -> Result<(), StoreError>;

    /// Jobs per target and state, for metrics.
    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError>;

    /// Dead letters matching `filter`, most recent death first.
    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, StoreError>;

    /// One dead letter with its request and attempts; `None` if `id` is not a dead letter.
    async fn dead_letter(&self, id: JobId) -> Result<Option<DeadLetterDetail>, StoreError>;

    /// Makes dead letters due again at `now_ms` with a fresh allowance of attempts: the one with
    /// `id`, or all matching `filter`, of the targets in `routed`. Letters of other targets stay
    /// as they are: no worker would send them (see [`Store::bury_unrouted`]).
    async fn replay_dead(
        &self,
        id: Option<JobId>,
        filter: &DeadLetterFilter,
        routed: Vec<TargetKey>,
        now_ms: i64,
    ) -> Result<Replayed, StoreError>;

    /// Deletes dead letters: the one with `id`, or all matching `filter`. Returns how many.
    async fn purge_dead(
        &self,
        id: Option<JobId>,
        filter: &DeadLetterFilter,
    ) -> Result<u64, StoreError>;
}
