//! The one clock: wall time in Unix milliseconds and seconds.
//!
//! Everything that reads the time reads it here, at the edge, and hands the reading to the code
//! that decides (backoff, due times, circuit breakers, freshness, sessions): those take `now` as
//! an argument, so their tests pass a time instead of sleeping. The store's own clock (Redis's
//! `TIME`) stays the store's: see `store`.

use std::time::SystemTime;

/// Milliseconds since the Unix epoch (0 before it; the maximum past `i64`).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Seconds since the Unix epoch (0 before it).
pub fn now_secs() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or(0)
}

/// The wall clock as `SystemTime`, for what speaks in HTTP dates (`Retry-After`).
pub fn now() -> SystemTime {
    SystemTime::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_milliseconds_agree() {
        let (ms, s) = (now_ms(), now_secs());
        assert!(ms > 1_700_000_000_000, "{ms}");
        assert!(s.abs_diff(u64::try_from(ms / 1000).unwrap_or(0)) <= 1);
    }
}
