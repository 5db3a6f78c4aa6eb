//! Prometheus metrics, registered into a registry that is handed in (never global), and importing
//! nothing from the rest of the crate: callers pass plain labels.
//!
//! Names and labels (all prefixed `wechat_fanout_`):
//! - `callbacks_total{account, outcome, reason}`: accepted, duplicate, or rejected with a reason;
//! - `answer_duration_seconds{account}`: from request start to the answer, for accepted callbacks;
//! - `primary_total{account, outcome}`: relayed, timed_out, failed, too_large (a 2xx answer
//!   over the cap, not relayed), or skipped (no capacity);
//! - `delivery_attempts_total{account, target, result}`: every attempt: delivered, retry, dead;
//! - `delivery_duration_seconds{account, target}`: per attempt, whatever its result;
//! - `queue_jobs{account, target, state}`: pending, in_flight and dead jobs, read at scrape time;
//! - `admin_refusals_total{reason}`: admin requests refused (foreign_host, no_token, bad_token,
//!   guessing, cross_origin, csrf, too_large, event_streams_full);
//! - `console_event_streams`: the console's event streams open now.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
    shadow: Family<ShadowLabels, Counter>,
    late_replies: Family<PrimaryLabels, Counter>,
    admin_refusals: Family<ReasonLabels, Counter>,
    event_streams: Gauge,
}

fn answer_histogram() -> Histogram {
    // 100 µs … ~6.5 s: the answer must stay far below WeChat's 5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

fn delivery_histogram() -> Histogram {
    // 500 µs … ~65 s: targets may be slow; timeouts end up in the last buckets.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            callbacks: Family::default(),
            answer_seconds: Family::new_with_constructor(answer_histogram),
            primary: Family::default(),
            attempts: Family::default(),
            delivery_seconds: Family::new_with_constructor(delivery_histogram),
            queue: Family::default(),
            shadow: Family::default(),
            late_replies: Family::default(),
            admin_refusals: Family::default(),
            event_streams: Gauge::default(),
        };
        let registry = registry.sub_registry_with_prefix("wechat_fanout");
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
            "queue_jobs",
            "Jobs in the store by target and state (pending, in_flight, dead), read at scrape time",
            metrics.queue.clone(),
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

    /// Replaces the queue gauges with a fresh reading of the store.
    pub fn set_queue(&self, depths: impl IntoIterator<Item = (String, String, [i64; 3])>) {
        self.queue.clear();
        for (account, target, counts) in depths {
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

/// The registry in Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}
