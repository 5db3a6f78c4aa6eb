//! Retry policy: which target answers are worth another attempt, and when.
//!
//! * 2xx: delivered. 5xx, 408, 429, connection errors and timeouts: retry. Any other status
//!   (3xx included: redirects are not followed, a POST must not turn into a GET): give up at once,
//!   the target said this request will never succeed.
//! * delays double from `backoff_initial` up to `backoff_max`; the second half of each delay is
//!   random ("equal jitter"), so a recovering target is not hit by every retry at the same instant;
//!   a `Retry-After` is honoured up to `backoff_max`.
//! * after `max_attempts` attempts in all, the job is a dead letter.
//! * a target that fails [`TRIP_AFTER`] attempts in a row is left alone for a cool-down (the
//!   [`Breaker`]), so a target that is down costs a few probes, not an attempt per due job. A
//!   failure that belongs to one request (its URL cannot be built; 413, 414, 431) is not counted:
//!   it says nothing about the target.
//!
//! Pure functions over numbers; the caller supplies the clock and the randomness.

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use crate::config::TargetSettings;
use crate::store::Disposition;

/// How one attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    Retry { after: Option<Duration> },
    GiveUp,
}

/// Classifies a target's HTTP status; `retry_after` is the raw `Retry-After` header, if any.
pub fn classify_status(
    status: u16,
    retry_after: Option<&str>,
    now: std::time::SystemTime,
) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 429 | 500..=599 => Verdict::Retry {
            after: retry_after.and_then(|value| parse_retry_after(value, now)),
        },
        _ => Verdict::GiveUp,
    }
}

/// Statuses by which a target refuses one request as too large (413 body, 414 URI, 431 headers):
/// they say nothing about the target's health, so its breaker does not count them.
pub fn refuses_the_request(status: u16) -> bool {
    matches!(status, 413 | 414 | 431)
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The delay before attempt `attempt + 1`, after `attempt` (from 1) attempts; `jitter` in [0, 1).
pub fn backoff(settings: &TargetSettings, attempt: u32, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(40);
    let base = settings
        .backoff_initial
        .checked_mul(1u32 << doublings.min(31))
        .unwrap_or(settings.backoff_max)
        .min(settings.backoff_max);
    let half = base / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// How long a delivery that keeps failing is retried before it becomes a dead letter: from its
/// first attempt to its last, `earliest` when every delay's jitter is least, `latest` when
/// most. A `Retry-After` and an open circuit only make it longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub attempts: u32,
    pub earliest: Duration,
    pub latest: Duration,
}

/// The retry window of `settings`.
pub fn window(settings: &TargetSettings) -> Window {
    let delays = 1..settings.max_attempts;
    Window {
        attempts: settings.max_attempts,
        earliest: delays.clone().map(|a| backoff(settings, a, 0.0)).sum(),
        latest: delays.map(|a| backoff(settings, a, 1.0)).sum(),
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.attempts <= 1 {
            return write!(f, "gives up after 1 attempt (no retry)");
        }
        write!(
            f,
            "gives up after {} attempts, {} after the first at the earliest ({} at the latest)",
            self.attempts,
            Span(self.earliest),
            Span(self.latest)
        )
    }
}

/// A duration as a person reads it: `2 min 7 s`, `24 h 47 min`, `850 ms`.
#[derive(Debug, Clone, Copy)]
pub struct Span(pub Duration);

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0.as_secs();
        match secs {
            0 => write!(f, "{} ms", self.0.as_millis()),
            1..60 => write!(f, "{secs} s"),
            60..3600 => match secs % 60 {
                0 => write!(f, "{} min", secs / 60),
                s => write!(f, "{} min {s} s", secs / 60),
            },
            _ => match secs % 3600 / 60 {
                0 => write!(f, "{} h", secs / 3600),
                m => write!(f, "{} h {m} min", secs / 3600),
            },
        }
    }
}

/// What becomes of a job whose attempt number `attempt` (from 1) ended with `verdict`.
pub fn disposition(
    settings: &TargetSettings,
    attempt: u32,
    verdict: Verdict,
    jitter: f64,
) -> Disposition {
    match verdict {
        Verdict::Delivered => Disposition::Delivered,
        Verdict::GiveUp => Disposition::Dead,
        Verdict::Retry { .. } if attempt >= settings.max_attempts => Disposition::Dead,
        Verdict::Retry { after } => {
            let mut delay = backoff(settings, attempt, jitter);
            if let Some(after) = after {
                delay = delay.max(after.min(settings.backoff_max));
            }
            Disposition::RetryIn(delay)
        }
    }
}

/// Failed attempts in a row (retryable failures: connection errors, timeouts, 5xx, 408, 429) that
/// open a target's circuit.
pub const TRIP_AFTER: u32 = 5;
/// The longest cool-down, however often the circuit trips: a target that comes back is found
/// within this long.
const MAX_COOL_DOWN: Duration = Duration::from_secs(30);

/// A target's circuit breaker, shared by its worker and the primary relay. Open, the worker
/// starts no attempts until the cool-down ends; then attempts resume, and [`TRIP_AFTER`] more
/// failures in a row open it again for twice as long (from `backoff_initial`, at most
/// [`MAX_COOL_DOWN`]). Any other outcome closes it. Jobs are untouched: they wait in the store.
#[derive(Debug, Default)]
pub struct Breaker {
    failures: AtomicU32,
    trips: AtomicU32,
    open_until_ms: AtomicI64,
}

impl Breaker {
    /// Counts an attempt's outcome at `now_ms`; returns the cool-down if this one opened it.
    pub fn record(
        &self,
        verdict: Verdict,
        now_ms: i64,
        settings: &TargetSettings,
    ) -> Option<Duration> {
        if !matches!(verdict, Verdict::Retry { .. }) {
            self.failures.store(0, Ordering::Relaxed);
            self.trips.store(0, Ordering::Relaxed);
            self.open_until_ms.store(0, Ordering::Relaxed);
            return None;
        }
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 < TRIP_AFTER {
            return None;
        }
        self.failures.store(0, Ordering::Relaxed);
        let trips = self.trips.fetch_add(1, Ordering::Relaxed).min(16);
        let cool_down = settings
            .backoff_initial
            .saturating_mul(1 << trips)
            .min(settings.backoff_max)
            .min(MAX_COOL_DOWN);
        let until = now_ms.saturating_add(i64::try_from(cool_down.as_millis()).unwrap_or(i64::MAX));
        self.open_until_ms.store(until, Ordering::Relaxed);
        Some(cool_down)
    }

    /// How long the circuit stays open from `now_ms`, if it is open.
    pub fn open_for(&self, now_ms: i64) -> Option<Duration> {
        let until = self.open_until_ms.load(Ordering::Relaxed);
        (until > now_ms).then(|| Duration::from_millis(u64::try_from(until - now_ms).unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::SystemTime;

    fn settings(max_attempts: u32, initial_ms: u64, max_ms: u64) -> TargetSettings {
        TargetSettings {
            timeout: Duration::from_secs(1),
            max_attempts,
            backoff_initial: Duration::from_millis(initial_ms),
            backoff_max: Duration::from_millis(max_ms),
            max_concurrency: 1,
            http2: false,
            pipelining: false,
            traceparent: false,
            pace: None,
            order: crate::config::Order::None,
        }
    }

    #[test]
    fn statuses() {
        let now = SystemTime::now();
        assert_eq!(classify_status(204, None, now), Verdict::Delivered);
        assert_eq!(
            classify_status(500, None, now),
            Verdict::Retry { after: None }
        );
        assert_eq!(
            classify_status(408, None, now),
            Verdict::Retry { after: None }
        );
        assert_eq!(
            classify_status(429, Some("7"), now),
            Verdict::Retry {
                after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(classify_status(404, None, now), Verdict::GiveUp);
        assert_eq!(classify_status(302, None, now), Verdict::GiveUp);
        for status in [413, 414, 431] {
            assert_eq!(classify_status(status, None, now), Verdict::GiveUp);
            assert!(refuses_the_request(status));
        }
        assert!(!refuses_the_request(400) && !refuses_the_request(503));
    }

    #[test]
    fn retry_after_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:48:37 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn doubles_then_caps_and_gives_up() {
        let s = settings(4, 1000, 3000);
        assert_eq!(backoff(&s, 1, 1.0), Duration::from_millis(1000));
        assert_eq!(backoff(&s, 2, 1.0), Duration::from_millis(2000));
        assert_eq!(backoff(&s, 3, 1.0), Duration::from_millis(3000));
        assert_eq!(backoff(&s, 30, 0.0), Duration::from_millis(1500));
        let retry = Verdict::Retry { after: None };
        assert_eq!(
            disposition(&s, 3, retry, 1.0),
            Disposition::RetryIn(Duration::from_millis(3000))
        );
        assert_eq!(disposition(&s, 4, retry, 1.0), Disposition::Dead);
        let later = Verdict::Retry {
            after: Some(Duration::from_secs(3600)),
        };
        assert_eq!(
            disposition(&s, 1, later, 0.0),
            Disposition::RetryIn(Duration::from_millis(3000))
        );
    }

    /// Issue 25: the defaults outlast a day. A target down for 24 hours gets no dead letter:
    /// even with the least jitter on every delay, the last attempt comes after a day.
    #[test]
    fn the_default_window_outlasts_a_day() {
        let config = crate::config::Config::load(None).unwrap();
        let w = window(&config.target_defaults.settings());
        assert!(w.earliest >= Duration::from_secs(24 * 3600), "{w}");
        assert!(w.latest <= Duration::from_secs(3 * 24 * 3600), "{w}");
        assert_eq!(
            w.to_string(),
            "gives up after 110 attempts, 24 h 47 min after the first at the earliest \
             (49 h 34 min at the latest)"
        );
    }

    #[test]
    fn a_window_adds_the_delays_between_attempts() {
        let s = settings(4, 1000, 3000);
        let w = window(&s);
        // Delays after attempts 1, 2, 3: bases 1 s, 2 s, 3 s; half of each at the least.
        assert_eq!(w.latest, Duration::from_secs(6));
        assert_eq!(w.earliest, Duration::from_secs(3));
        assert_eq!(window(&settings(1, 1000, 3000)).earliest, Duration::ZERO);
        assert_eq!(
            window(&settings(8, 1000, 600_000)).to_string(),
            "gives up after 8 attempts, 1 min 3 s after the first at the earliest (2 min 7 s at \
             the latest)"
        );
        assert_eq!(Span(Duration::from_millis(850)).to_string(), "850 ms");
        assert_eq!(Span(Duration::from_secs(7200)).to_string(), "2 h");
    }

    proptest! {
        #[test]
        fn delay_is_within_half_and_whole_of_the_capped_base(
            initial in 1u64..100_000, extra in 0u64..1_000_000, attempt in 1u32..100, jitter in 0.0f64..1.0
        ) {
            let s = settings(100, initial, initial + extra);
            let d = backoff(&s, attempt, jitter);
            prop_assert!(d <= s.backoff_max);
            prop_assert!(d >= s.backoff_initial / 2);
            prop_assert!(backoff(&s, attempt + 1, jitter) >= d || d > s.backoff_max / 2);
        }
    }

    #[test]
    fn breaker_opens_after_failures_in_a_row_doubles_and_closes_on_success() {
        let settings = TargetSettings {
            timeout: Duration::from_secs(1),
            max_attempts: 8,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(600),
            max_concurrency: 4,
            http2: false,
            pipelining: false,
            traceparent: false,
            pace: None,
            order: crate::config::Order::None,
        };
        let breaker = Breaker::default();
        let fail = Verdict::Retry { after: None };
        for _ in 1..TRIP_AFTER {
            assert_eq!(breaker.record(fail, 0, &settings), None);
        }
        assert_eq!(breaker.open_for(0), None);
        assert_eq!(
            breaker.record(fail, 0, &settings),
            Some(Duration::from_millis(100))
        );
        assert_eq!(breaker.open_for(40), Some(Duration::from_millis(60)));
        assert_eq!(breaker.open_for(100), None);
        for _ in 1..TRIP_AFTER {
            breaker.record(fail, 100, &settings);
        }
        assert_eq!(
            breaker.record(fail, 100, &settings),
            Some(Duration::from_millis(200))
        );
        // A 4xx (the target is up, it refuses this request) closes it, like a success.
        assert_eq!(breaker.record(Verdict::GiveUp, 150, &settings), None);
        assert_eq!(breaker.open_for(150), None);
        for _ in 1..TRIP_AFTER {
            breaker.record(fail, 200, &settings);
        }
        assert_eq!(
            breaker.record(fail, 200, &settings),
            Some(Duration::from_millis(100))
        );
        // However often it trips, the cool-down stays at most 30 s.
        for _ in 0..20 * TRIP_AFTER {
            breaker.record(fail, 0, &settings);
        }
        assert_eq!(breaker.open_for(0), Some(MAX_COOL_DOWN));
    }
}
