//! A target's pace (`rate_limit_per_sec`): each delivery reserves the next free start time,
//! one interval after the previous one's. The rate is the store's to keep, so that every
//! instance on one store counts against the same limit: in memory for the embedded store (one
//! process owns the file), in one Redis key per target, kept by `lua/pace.lua` with the same
//! rule, for a deployment.
//!
//! A reservation is a time, not a permission to retry: a worker asks once per delivery and
//! waits what it is told. So waiting deliveries start in the order they asked, none spins on
//! the store, and a reservation nobody used (its process died) costs one interval once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::TargetKey;

/// The start reserved after the last one (`next`, when there was one), at `now`, one
/// `interval` apart: how long to wait for it, and the next free start after it. A start in
/// the past is now: a target idle for a while gets no burst of saved-up starts.
fn reserve(next: Option<u64>, now: u64, interval: u64) -> (u64, u64) {
    let start = next.map_or(now, |next| next.max(now));
    (start - now, start.saturating_add(interval))
}

/// The paces of one process's targets, for the embedded store: the same rule, in
/// microseconds since the store opened.
#[derive(Debug)]
pub struct LocalPace {
    opened: Instant,
    next: Mutex<HashMap<TargetKey, u64>>,
}

impl Default for LocalPace {
    fn default() -> LocalPace {
        LocalPace {
            opened: Instant::now(),
            next: Mutex::default(),
        }
    }
}

impl LocalPace {
    /// Reserves the target's next start: how long to wait for it.
    pub fn reserve(&self, key: &TargetKey, interval: Duration) -> Duration {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let now = micros(self.opened.elapsed());
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let (wait, after) = reserve(next.get(key).copied(), now, micros(interval));
        next.insert(key.clone(), after);
        Duration::from_micros(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_one_interval_apart_and_an_idle_target_saves_none_up() {
        let (wait, next) = reserve(None, 1_000, 50);
        assert_eq!((wait, next), (0, 1_050));
        let (wait, next) = reserve(Some(next), 1_010, 50);
        assert_eq!((wait, next), (40, 1_100));
        let (wait, next) = reserve(Some(next), 1_010, 50);
        assert_eq!((wait, next), (90, 1_150));
        // Idle since: the next start is now, and only one.
        let (wait, next) = reserve(Some(next), 5_000, 50);
        assert_eq!((wait, next), (0, 5_050));
    }

    #[test]
    fn the_local_pace_spaces_each_targets_starts_on_its_own() {
        let pace = LocalPace::default();
        let key = |t: &str| TargetKey {
            account: "main".into(),
            target: t.into(),
        };
        let (a, b) = (key("a"), key("b"));
        let every = Duration::from_millis(100);
        assert_eq!(pace.reserve(&a, every), Duration::ZERO);
        let second = pace.reserve(&a, every);
        assert!(
            second > Duration::from_millis(90) && second <= every,
            "{second:?}"
        );
        assert_eq!(pace.reserve(&b, every), Duration::ZERO);
    }
}
