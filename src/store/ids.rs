//! Ids made by the caller before a write, so a write sent twice carries the same ids.
//!
//! An id is 63 bits: milliseconds since 2025-01-01 (41 bits, enough until 2094), a node number
//! fixed per process (10 bits) and a sequence within the millisecond (12 bits). Ids of one
//! process strictly increase (the clock going back, or 4,096 ids in one millisecond, borrow
//! from the next millisecond); processes sharing a store get different node numbers from it
//! (Redis) or own the store alone (SQLite), so no two writes ever get the same id. Old SQLite
//! rows (AUTOINCREMENT, small numbers) cannot collide with them either.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// 2025-01-01T00:00:00Z in Unix milliseconds.
const EPOCH_MS: u64 = 1_735_689_600_000;
const NODE_BITS: u32 = 10;
const SEQUENCE_BITS: u32 = 12;
/// How many node numbers there are.
pub(super) const NODES: u64 = 1 << NODE_BITS;

/// Makes ids for one process.
#[derive(Debug)]
pub struct IdGenerator {
    node: u64,
    /// The millisecond and sequence of the last id handed out.
    last: Mutex<(u64, u64)>,
}

impl IdGenerator {
    /// A generator for node `node` (taken modulo [`NODES`]).
    pub fn new(node: u64) -> IdGenerator {
        IdGenerator {
            node: node % NODES,
            last: Mutex::new((0, 0)),
        }
    }

    /// The next id: greater than every id this generator made before.
    pub fn next(&self) -> i64 {
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
            .saturating_sub(EPOCH_MS);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (mut ms, mut sequence) = *last;
        if clock > ms {
            (ms, sequence) = (clock, 0);
        } else {
            sequence += 1;
            if sequence == 1 << SEQUENCE_BITS {
                (ms, sequence) = (ms + 1, 0);
            }
        }
        *last = (ms, sequence);
        let id = (ms << (NODE_BITS + SEQUENCE_BITS)) | (self.node << SEQUENCE_BITS) | sequence;
        // 41 bits of milliseconds: positive as an i64 until 2094.
        i64::try_from(id & (u64::MAX >> 1)).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_strictly_increase_even_past_4096_in_one_millisecond() {
        let ids = IdGenerator::new(5);
        let mut last = 0;
        for _ in 0..20_000 {
            let id = ids.next();
            assert!(id > last, "{id} after {last}");
            last = id;
        }
    }

    #[test]
    fn nodes_never_share_an_id() {
        let (a, b) = (IdGenerator::new(1), IdGenerator::new(2));
        let mine: std::collections::HashSet<i64> = (0..5000).map(|_| a.next()).collect();
        assert!((0..5000).all(|_| !mine.contains(&b.next())));
        assert_eq!((a.next() >> 12) & 1023, 1);
    }
}
