//! Per-minute counts for the console's charts ([`MinuteCount`]): what this instance did in each
//! minute (callbacks by outcome; per target, attempts by result and their durations in
//! buckets), held in memory until the app hands them to the store, which adds up every
//! instance's into the deployment's. The queue's backlog is a reading of the store, added by
//! the app as a gauge ([`Merge::Highest`]).
//!
//! Counts, not samples: the store keeps a few numbers per target and minute whatever the rate,
//! and a percentile is read from the buckets ([`percentile_ms`]), never from one instance's
//! histogram.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Upper bounds (ms) of the attempt-duration buckets; `le_inf` holds the rest.
pub const LATENCY_BOUNDS_MS: [u64; 12] = [
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000,
];

/// Each bucket's name, in [`LATENCY_BOUNDS_MS`]'s order, then the last (unbounded) one.
pub const LATENCY_NAMES: [&str; 13] = [
    "le_5", "le_10", "le_25", "le_50", "le_100", "le_250", "le_500", "le_1000", "le_2500",
    "le_5000", "le_10000", "le_30000", "le_inf",
];

/// A target's jobs not delivered yet (pending, in flight and held) at a reading of the store.
pub const PENDING: &str = "pending";
/// The age in seconds of a target's oldest open job at a reading of the store.
pub const OLDEST_SECONDS: &str = "oldest_s";

/// One number of one minute: an account's (`target` empty) or one of its targets'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteCount {
    /// Minutes since the Unix epoch.
    pub minute: i64,
    pub account: String,
    /// Empty for an account's own numbers (callbacks by outcome).
    pub target: String,
    /// `accepted`, `duplicate`, `rejected`; `delivered`, `retry`, `dead`, a bucket of
    /// [`LATENCY_NAMES`]; [`PENDING`], [`OLDEST_SECONDS`].
    pub name: String,
    pub value: i64,
}

/// How two instances' numbers of one minute make the deployment's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Counts of what happened: they add up.
    Sum,
    /// Readings of the one shared queue: every instance reads about the same, the highest counts.
    Highest,
}

impl Merge {
    pub fn of(name: &str) -> Merge {
        match name {
            PENDING | OLDEST_SECONDS => Merge::Highest,
            _ => Merge::Sum,
        }
    }
}

/// The minute (since the Unix epoch) it is now.
pub fn minute_now() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_secs() / 60).unwrap_or(i64::MAX)
}

/// The bucket of an attempt that took `seconds`.
pub fn latency_bucket(seconds: f64) -> &'static str {
    let ms = seconds * 1000.0;
    let at = LATENCY_BOUNDS_MS
        .iter()
        .position(|bound| ms <= *bound as f64);
    LATENCY_NAMES[at.unwrap_or(LATENCY_BOUNDS_MS.len())]
}

/// The duration (ms) under which a fraction `q` of attempts came, from one minute's buckets
/// (`counts[i]` of [`LATENCY_NAMES`]`[i]`): the bound of the bucket it falls in, interpolated
/// in it; `None` without attempts. The last bucket reads as its lower bound.
pub fn percentile_ms(counts: &[i64; 13], q: f64) -> Option<f64> {
    let total: i64 = counts.iter().sum();
    if total <= 0 {
        return None;
    }
    let wanted = q * total as f64;
    let mut below = 0.0;
    for (i, count) in counts.iter().enumerate() {
        let count = *count as f64;
        if count > 0.0 && below + count >= wanted {
            let low = if i == 0 {
                0.0
            } else {
                LATENCY_BOUNDS_MS[i - 1] as f64
            };
            let Some(high) = LATENCY_BOUNDS_MS.get(i) else {
                return Some(low);
            };
            return Some(low + (*high as f64 - low) * ((wanted - below) / count).clamp(0.0, 1.0));
        }
        below += count;
    }
    LATENCY_BOUNDS_MS.last().map(|b| *b as f64)
}

/// (minute, account, target, name) of a count held in memory.
type Key = (i64, String, String, &'static str);

/// This instance's counts since they were last taken.
#[derive(Debug, Default)]
pub(super) struct Minutes {
    counts: Mutex<HashMap<Key, i64>>,
}

impl Minutes {
    pub(super) fn add(&self, account: &str, target: &str, name: &'static str) {
        let key = (minute_now(), account.to_owned(), target.to_owned(), name);
        // A poisoned lock only means another thread panicked mid-count: counting goes on.
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(key).or_default() += 1;
    }

    pub(super) fn take(&self) -> Vec<MinuteCount> {
        let taken = std::mem::take(&mut *self.counts.lock().unwrap_or_else(|e| e.into_inner()));
        (taken.into_iter())
            .map(|((minute, account, target, name), value)| MinuteCount {
                minute,
                account,
                target,
                name: name.to_owned(),
                value,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fall_in_their_buckets() {
        assert_eq!(latency_bucket(0.001), "le_5");
        assert_eq!(latency_bucket(0.005), "le_5");
        assert_eq!(latency_bucket(0.0051), "le_10");
        assert_eq!(latency_bucket(31.0), "le_inf");
    }

    #[test]
    fn percentiles_are_read_from_the_buckets() {
        let mut counts = [0; 13];
        assert_eq!(percentile_ms(&counts, 0.5), None);
        // 100 attempts: 90 under 5 ms, 10 between 100 and 250 ms.
        counts[0] = 90;
        counts[5] = 10;
        assert_eq!(percentile_ms(&counts, 0.5), Some(5.0 * 50.0 / 90.0));
        let p99 = percentile_ms(&counts, 0.99).unwrap();
        assert!((p99 - 235.0).abs() < 1e-9, "{p99}");
        counts[12] = 1000;
        assert_eq!(percentile_ms(&counts, 0.99), Some(30_000.0));
    }

    #[test]
    fn counts_are_taken_once() {
        let minutes = Minutes::default();
        minutes.add("a", "", "accepted");
        minutes.add("a", "", "accepted");
        minutes.add("a", "t", "delivered");
        // By name, whichever minute each fell in (the three may straddle one's end).
        let mut by_name = std::collections::BTreeMap::new();
        for count in minutes.take() {
            *by_name.entry(count.name).or_insert(0) += count.value;
        }
        assert_eq!(
            by_name
                .iter()
                .map(|(n, v)| (n.as_str(), *v))
                .collect::<Vec<_>>(),
            [("accepted", 2), ("delivered", 1)]
        );
        assert!(minutes.take().is_empty());
        assert_eq!(Merge::of(PENDING), Merge::Highest);
        assert_eq!(Merge::of("delivered"), Merge::Sum);
    }
}
