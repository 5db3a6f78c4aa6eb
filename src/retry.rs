//! Retry policy: which target answers are worth another attempt, and when.
//!
//! * 2xx: delivered. 5xx, 408, 429, connection errors and timeouts: retry. Any other status
//!   (3xx included: redirects are not followed, a POST must not turn into a GET): give up at once,
//!   the target said this request will never succeed.
//! * delays double from `backoff_initial` up to `backoff_max`; the second half of each delay is
//!   random ("equal jitter"), so a recovering target is not hit by every retry at the same instant;
//!   a `Retry-After` is honoured up to `backoff_max`.
//! * after `max_attempts` attempts in all, the job is a dead letter.
//!
//! Pure functions over numbers; the caller supplies the clock and the randomness.

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

/// What becomes of a job whose attempt number `attempt` (from 1) ended with `verdict` at `now_ms`.
pub fn disposition(
    settings: &TargetSettings,
    attempt: u32,
    verdict: Verdict,
    now_ms: i64,
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
            let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            Disposition::RetryAt(now_ms.saturating_add(delay_ms))
        }
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
            disposition(&s, 3, retry, 0, 1.0),
            Disposition::RetryAt(3000)
        );
        assert_eq!(disposition(&s, 4, retry, 0, 1.0), Disposition::Dead);
        let later = Verdict::Retry {
            after: Some(Duration::from_secs(3600)),
        };
        assert_eq!(
            disposition(&s, 1, later, 0, 0.0),
            Disposition::RetryAt(3000)
        );
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
}
