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

mod sqlite;

pub use sqlite::SqliteStore;

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
    /// Attempts made before this one.
    pub attempts: u32,
    pub request: Arc<Replay>,
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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
    #[error("store is closed")]
    Closed,
    #[error("store: {0}")]
    Other(String),
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

    /// Succeeds when a write can be committed now (readiness).
    async fn check_writable(&self) -> Result<(), StoreError>;

    /// Deletes callbacks received before `older_than_ms` whose jobs are all delivered (dedupe
    /// forgets them then); returns how many. Dead letters are kept until purged explicitly.
    async fn purge_delivered(&self, older_than_ms: i64) -> Result<u64, StoreError>;

    /// Waits until everything queued before this call is committed.
    async fn flush(&self) -> Result<(), StoreError>;
}
