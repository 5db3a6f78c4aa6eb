//! Slows down guessing of a token (the admin token on the admin listener, a listen target's on
//! the WeChat port), per listener: each client address
//! (an IPv4 address; an IPv6 address by its /64, which one host can fill) has an allowance of
//! [`BURST`] tries that refills by one a second. Each try takes one before the token is
//! checked, and the right token gives it back, so neither a right token nor a valid session
//! ever costs anything, while any number of concurrent guessers from one address share the
//! same handful of tries. With nothing left, a request that presents a token is answered 429
//! without looking at the token.
//!
//! Only addresses with recent wrong tries are remembered, at most [`MAX_SOURCES`] of them: one
//! that has refilled is forgotten, and at the limit the longest-quiet one goes first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tries an address has at once.
pub const BURST: f64 = 5.0;
/// Tries given back each second.
pub const PER_SECOND: f64 = 1.0;
/// Addresses remembered at most (a few dozen bytes each).
pub const MAX_SOURCES: usize = 4096;

/// Where tries come from: one address, or one IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => Source::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Allowance {
    left: f64,
    at: Instant,
    /// A refusal was logged since the last try that was let through.
    warned: bool,
}

impl Allowance {
    /// What is left at `now`, refilled since `at`.
    fn at(self, now: Instant) -> f64 {
        let refilled = now.saturating_duration_since(self.at).as_secs_f64() * PER_SECOND;
        (self.left + refilled).min(BURST)
    }
}

/// The tries of every address that guessed lately.
#[derive(Debug, Default)]
pub struct Guesses {
    sources: Mutex<HashMap<Source, Allowance>>,
}

/// No try is left to this address: how long until one is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    pub retry_after: Duration,
    /// The first refusal since the address last had a try let through: worth a warning, the
    /// rest are not.
    pub first: bool,
}

impl Guesses {
    /// Takes one of `ip`'s tries, before its token is checked; [`Guesses::give_back`] returns
    /// it if the token was right.
    pub fn take(&self, ip: IpAddr, now: Instant) -> Result<(), Spent> {
        let source = Source::from(ip);
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if !sources.contains_key(&source) {
            make_room(&mut sources, now);
        }
        let allowance = sources.entry(source).or_insert(Allowance {
            left: BURST,
            at: now,
            warned: false,
        });
        let left = allowance.at(now);
        if left < 1.0 {
            // Nothing is taken from a refused try, so refusals do not push the refill back.
            let first = !allowance.warned;
            allowance.warned = true;
            return Err(Spent {
                retry_after: Duration::from_secs_f64((1.0 - left) / PER_SECOND),
                first,
            });
        }
        *allowance = Allowance {
            left: left - 1.0,
            at: now,
            warned: false,
        };
        Ok(())
    }

    /// The token `ip` gave was right: its try is given back (and an address with all its tries
    /// is forgotten).
    pub fn give_back(&self, ip: IpAddr, now: Instant) {
        let source = Source::from(ip);
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(allowance) = sources.get_mut(&source) {
            let left = (allowance.at(now) + 1.0).min(BURST);
            if left >= BURST {
                sources.remove(&source);
            } else {
                allowance.left = left;
                allowance.at = now;
            }
        }
    }

    /// How many addresses are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.sources.lock().map(|s| s.len()).unwrap_or(0)
    }
}

/// Before a new address is remembered: forgets every address that has all its tries again,
/// then, if still full, the one that has been quiet longest.
fn make_room(sources: &mut HashMap<Source, Allowance>, now: Instant) {
    if sources.len() < MAX_SOURCES {
        return;
    }
    sources.retain(|_, allowance| allowance.at(now) < BURST);
    if sources.len() >= MAX_SOURCES
        && let Some(quiet) = sources
            .iter()
            .min_by_key(|(_, allowance)| allowance.at)
            .map(|(source, _)| *source)
    {
        sources.remove(&quiet);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn five_tries_then_one_a_second_per_address() {
        let guesses = Guesses::default();
        let now = Instant::now();
        for _ in 0..5 {
            assert!(guesses.take(A, now).is_ok());
        }
        let spent = guesses.take(A, now).unwrap_err();
        assert_eq!(spent.retry_after, Duration::from_secs(1));
        assert!(spent.first);
        let again = guesses.take(A, now).unwrap_err();
        assert!(!again.first, "one warning per spell");
        assert_eq!(again.retry_after, Duration::from_secs(1));
        // Another address is not held back.
        assert!(guesses.take(B, now).is_ok());
        // Refusals did not push the refill back.
        assert!(guesses.take(A, now + Duration::from_secs(1)).is_ok());
        assert!(guesses.take(A, now + Duration::from_secs(1)).is_err());
        assert!(guesses.take(A, now + Duration::from_secs(3)).is_ok());
    }

    #[test]
    fn the_right_token_costs_nothing_and_an_ipv6_slash_64_is_one_address() {
        let guesses = Guesses::default();
        let now = Instant::now();
        for _ in 0..100 {
            guesses.take(A, now).unwrap();
            guesses.give_back(A, now);
        }
        assert_eq!(guesses.len(), 0, "a full allowance is forgotten");
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(A);
        let other: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap_or(A);
        for _ in 0..5 {
            guesses.take(one, now).unwrap();
        }
        assert!(guesses.take(other, now).is_err());
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap_or(A);
        for _ in 0..5 {
            guesses.take(mapped, now).unwrap();
        }
        assert!(
            guesses.take(B, now).is_err(),
            "a v4-mapped address is the v4 one"
        );
    }

    #[test]
    fn memory_is_bounded_and_the_longest_quiet_address_goes_first() {
        let guesses = Guesses::default();
        let now = Instant::now();
        let ip = |n: u32| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        // Within a few ms: nobody has refilled, so only the quietest can make room.
        let last = MAX_SOURCES as u32 + 99;
        for n in 0..=last {
            let at = now + Duration::from_micros(u64::from(n));
            guesses.take(ip(n), at).unwrap();
        }
        assert_eq!(guesses.len(), MAX_SOURCES);
        let later = now + Duration::from_millis(10);
        for _ in 0..5 {
            guesses.take(ip(0), later).unwrap();
        }
        for _ in 0..4 {
            guesses.take(ip(last), later).unwrap();
        }
        assert!(guesses.take(ip(last), later).is_err());
        assert_eq!(guesses.len(), MAX_SOURCES);
    }
}
