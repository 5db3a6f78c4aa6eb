//! Prometheus metrics, registered into a registry that is handed in (never global), and importing
//! nothing from the rest of the crate: callers pass plain labels.
//!
//! Two kinds. **Per instance**: what this process did, each series labelled `instance_name` (the
//! instance's stable name, `server.instance_name`; not Prometheus's own `instance`, the scrape
//! address, which changes with a pod's IP). **Deployment-wide**: read from the store at scrape
//! time, so any instance of a deployment on Redis shows the whole of it (no `instance_name`):
//! `queue_jobs`, `oldest_pending_age_seconds`, `store_usage_ratio`; aggregate them with `max`,
//! not `sum`, across instances.
//!
//! Names and labels (all prefixed `wechat_fanout_`); per instance:
//! - `callbacks_total{account, outcome, reason}`: accepted, duplicate, or rejected with a reason;
//! - `answer_duration_seconds{account}`: from request start to the answer, for accepted callbacks;
//! - `primary_total{account, outcome}`: relayed, timed_out, failed, too_large (a 2xx answer
//!   over the cap, not relayed), or skipped (no capacity);
//! - `delivery_attempts_total{account, target, result}`: every attempt: delivered, retry, dead;
//! - `delivery_duration_seconds{account, target}`: per attempt, whatever its result;
//! - `shadow_total{account, target, result}`, `late_replies_total{account, outcome}`;
//! - `admin_refusals_total{reason}`: admin requests refused (foreign_host, no_token, bad_token,
//!   guessing, cross_origin, csrf, too_large, event_streams_full);
//! - `console_event_streams`: the console's event streams open now;
//! - `store_ready`: 1 when this instance's store commits a test write at scrape time, else 0;
//! - `listeners{account, target}`: listen clients connected to this instance.
//!
//! Deployment-wide:
//! - `queue_jobs{account, target, state}`: pending, in_flight and dead jobs;
//! - `oldest_pending_age_seconds{account, target}`: how long the oldest job not yet delivered
//!   (pending or in flight) has waited since its callback arrived; 0 when there is none;
//! - `store_usage_ratio`: the fraction of the store's room in use (SQLite: its file system;
//!   Redis: `used_memory` of `maxmemory`, absent without one).
//!
//! Beside them, per minute, the counts the console's charts draw ([`minutes`]): taken from here
//! and added up in the store, so the charts show the deployment, not one instance.

pub mod minutes;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use minutes::{MinuteCount, Minutes, latency_bucket};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallbackLabels {
    account: String,
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabels {
    account: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrimaryLabels {
    account: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    account: String,
    target: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    account: String,
    target: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShadowLabels {
    account: String,
    target: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    account: String,
    target: String,
    state: &'static str,
}

/// How a callback ended at ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackOutcome {
    Accepted,
    Duplicate,
    Rejected(&'static str),
}

#[derive(Debug)]
pub struct Metrics {
    callbacks: Family<CallbackLabels, Counter>,
    answer_seconds: Family<AccountLabels, Histogram>,
    primary: Family<PrimaryLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    delivery_seconds: Family<TargetLabels, Histogram>,
    queue: Family<QueueLabels, Gauge>,
    oldest_pending: Family<TargetLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    store_ready: Gauge,
    listeners: Family<TargetLabels, Gauge>,
    paced: Family<TargetLabels, Counter>,
    pace_wait: Family<TargetLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// A family of one unlabelled gauge: absent when the store has no limit.
    store_usage: Family<Vec<(String, String)>, Gauge<f64, std::sync::atomic::AtomicU64>>,
    shadow: Family<ShadowLabels, Counter>,
    late_replies: Family<PrimaryLabels, Counter>,
    admin_refusals: Family<ReasonLabels, Counter>,
    event_streams: Gauge,
    minutes: Minutes,
}

/// 100 µs … 1.6 s doubling, then every half second from 2 to 5 s and 6.5 s: an alert on answers
/// near WeChat's 5 s deadline needs bounds between 3 and 5 s, which doubling skips.
const ANSWER_BUCKETS: [f64; 22] = [
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048,
    0.4096, 0.8192, 1.6384, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0,
];

fn answer_histogram() -> Histogram {
    Histogram::new(ANSWER_BUCKETS.into_iter().chain([6.5]))
}

fn delivery_histogram() -> Histogram {
    // 500 µs … ~65 s: targets may be slow; timeouts end up in the last buckets.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

impl Metrics {
    /// Registers every metric into `registry`; the per-instance ones carry `instance_name`.
    pub fn register(registry: &mut Registry, instance_name: &str) -> Metrics {
        let metrics = Metrics {
            callbacks: Family::default(),
            answer_seconds: Family::new_with_constructor(answer_histogram),
            primary: Family::default(),
            attempts: Family::default(),
            delivery_seconds: Family::new_with_constructor(delivery_histogram),
            queue: Family::default(),
            oldest_pending: Family::default(),
            store_ready: Gauge::default(),
            listeners: Family::default(),
            paced: Family::default(),
            pace_wait: Family::default(),
            store_usage: Family::default(),
            shadow: Family::default(),
            late_replies: Family::default(),
            admin_refusals: Family::default(),
            event_streams: Gauge::default(),
            minutes: Minutes::default(),
        };
        let registry = registry.sub_registry_with_prefix("wechat_fanout");
        registry.register(
            "queue_jobs",
            "Jobs in the store by target and state (pending, in_flight, dead), read at scrape time \
             (deployment-wide)",
            metrics.queue.clone(),
        );
        registry.register(
            "oldest_pending_age_seconds",
            "Age of the oldest job not yet delivered (pending or in flight) by target, since its \
             callback arrived; 0 when none (deployment-wide)",
            metrics.oldest_pending.clone(),
        );
        registry.register(
            "store_usage_ratio",
            "Fraction of the store's room in use: SQLite its file system, Redis used_memory of \
             maxmemory (deployment-wide)",
            metrics.store_usage.clone(),
        );
        let registry = registry.sub_registry_with_label((
            std::borrow::Cow::Borrowed("instance_name"),
            std::borrow::Cow::Owned(instance_name.to_owned()),
        ));
        registry.register(
            "listeners",
            "Listen clients connected to this instance, by target",
            metrics.listeners.clone(),
        );
        registry.register(
            "store_ready",
            "1 when this instance's store committed a test write at scrape time, else 0",
            metrics.store_ready.clone(),
        );
        registry.register(
            "callbacks",
            "Callbacks received, by account and outcome (accepted, duplicate, rejected with a reason)",
            metrics.callbacks.clone(),
        );
        registry.register(
            "answer_duration_seconds",
            "Time from the start of a callback request to its answer, for stored callbacks",
            metrics.answer_seconds.clone(),
        );
        registry.register(
            "primary",
            "Primary relays by outcome: relayed, timed_out, failed, too_large, skipped",
            metrics.primary.clone(),
        );
        registry.register(
            "delivery_attempts",
            "Delivery attempts by target and result: delivered, retry, dead",
            metrics.attempts.clone(),
        );
        registry.register(
            "delivery_duration_seconds",
            "Duration of delivery attempts, by target",
            metrics.delivery_seconds.clone(),
        );
        registry.register(
            "paced_deliveries",
            "Deliveries that waited for their turn under the target's rate_limit_per_sec",
            metrics.paced.clone(),
        );
        registry.register(
            "pace_wait_seconds",
            "Time deliveries waited for their turn under the target's rate_limit_per_sec",
            metrics.pace_wait.clone(),
        );
        registry.register(
            "shadow",
            "Shadow targets' answers compared with the owner's: same, different, late, failed, \
             too_large",
            metrics.shadow.clone(),
        );
        registry.register(
            "late_replies",
            "Reply owners' answers that came after the deadline, by what became of them: queued \
             (for the customer-service API), duplicate, empty, unconvertible, unreadable, \
             too_large, store_failed",
            metrics.late_replies.clone(),
        );
        registry.register(
            "admin_refusals",
            "Admin requests refused, by reason: foreign_host, no_token, bad_token, guessing, \
             cross_origin, csrf, too_large, event_streams_full",
            metrics.admin_refusals.clone(),
        );
        registry.register(
            "console_event_streams",
            "The console's event streams open now (at most admin.max_event_streams)",
            metrics.event_streams.clone(),
        );
        metrics
    }

    /// A delivery to a paced target waited `seconds` for its turn.
    pub fn paced(&self, account: &str, target: &str, seconds: f64) {
        let labels = TargetLabels {
            account: account.to_owned(),
            target: target.to_owned(),
        };
        self.paced.get_or_create(&labels).inc();
        self.pace_wait.get_or_create(&labels).inc_by(seconds);
    }

    /// An admin request refused; `reason` as in [`Metrics::register`].
    pub fn admin_refused(&self, reason: &'static str) {
        self.admin_refusals
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The gauge of open event streams, for the console to move as streams open and end.
    pub fn event_streams(&self) -> Gauge {
        self.event_streams.clone()
    }

    /// `outcome`: queued, duplicate, empty, unconvertible, unreadable, too_large or store_failed.
    pub fn late_reply(&self, account: &str, outcome: &'static str) {
        self.late_replies
            .get_or_create(&PrimaryLabels {
                account: account.to_owned(),
                outcome,
            })
            .inc();
    }

    /// `result`: same, different, late, failed or too_large.
    pub fn shadow(&self, account: &str, target: &str, result: &'static str) {
        self.shadow
            .get_or_create(&ShadowLabels {
                account: account.to_owned(),
                target: target.to_owned(),
                result,
            })
            .inc();
    }

    pub fn callback(&self, account: &str, outcome: CallbackOutcome) {
        let (outcome, reason) = match outcome {
            CallbackOutcome::Accepted => ("accepted", ""),
            CallbackOutcome::Duplicate => ("duplicate", ""),
            CallbackOutcome::Rejected(reason) => ("rejected", reason),
        };
        self.minutes.add(account, "", outcome);
        self.callbacks
            .get_or_create(&CallbackLabels {
                account: account.to_owned(),
                outcome,
                reason,
            })
            .inc();
    }

    pub fn answered(&self, account: &str, seconds: f64) {
        self.answer_seconds
            .get_or_create(&AccountLabels {
                account: account.to_owned(),
            })
            .observe(seconds);
    }

    /// `outcome`: relayed, timed_out, failed, too_large or skipped.
    pub fn primary(&self, account: &str, outcome: &'static str) {
        self.primary
            .get_or_create(&PrimaryLabels {
                account: account.to_owned(),
                outcome,
            })
            .inc();
    }

    /// `result`: delivered, retry or dead.
    pub fn attempt(&self, account: &str, target: &str, result: &'static str, seconds: f64) {
        self.minutes.add(account, target, result);
        self.minutes.add(account, target, latency_bucket(seconds));
        self.attempts
            .get_or_create(&AttemptLabels {
                account: account.to_owned(),
                target: target.to_owned(),
                result,
            })
            .inc();
        self.delivery_seconds
            .get_or_create(&TargetLabels {
                account: account.to_owned(),
                target: target.to_owned(),
            })
            .observe(seconds);
    }

    /// Replaces the queue gauges with a fresh reading of the store: per target its pending, in
    /// flight and dead jobs, and the age of its oldest open job in seconds.
    pub fn set_queue(&self, depths: impl IntoIterator<Item = (String, String, [i64; 3], f64)>) {
        self.queue.clear();
        self.oldest_pending.clear();
        for (account, target, counts, oldest) in depths {
            self.oldest_pending
                .get_or_create(&TargetLabels {
                    account: account.clone(),
                    target: target.clone(),
                })
                .set(oldest);
            for (state, count) in ["pending", "in_flight", "dead"].into_iter().zip(counts) {
                self.queue
                    .get_or_create(&QueueLabels {
                        account: account.clone(),
                        target: target.clone(),
                        state,
                    })
                    .set(count);
            }
        }
    }
}

impl Metrics {
    /// The per-minute counts made since they were last taken, for the store.
    pub fn take_minutes(&self) -> Vec<MinuteCount> {
        self.minutes.take()
    }

    /// A listen target's client connected (`1`) or went away (`-1`).
    pub fn listeners(&self, account: &str, target: &str, change: i64) {
        self.listeners
            .get_or_create(&TargetLabels {
                account: account.to_owned(),
                target: target.to_owned(),
            })
            .inc_by(change);
    }

    /// The store's readiness and usage as a scrape found them (`usage` `None`: no limit, or
    /// unknown; the gauge is then absent).
    pub fn set_store(&self, ready: bool, usage: Option<f64>) {
        self.store_ready.set(i64::from(ready));
        self.store_usage.clear();
        if let Some(usage) = usage {
            self.store_usage.get_or_create(&Vec::new()).set(usage);
        }
    }
}

/// The registry in Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}
