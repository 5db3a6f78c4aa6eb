//! Ids made by the caller before a write, so a write sent twice carries the same ids.
//!
//! Ids are plain counters, never above 2^53: a callback or delivery id is read by browsers (the
//! console) and `jq`, which hold JSON numbers as doubles, and an id they round is a replay of the
//! wrong dead letter. The store hands them out from [`IdBlocks`]: each backend reserves a block
//! of ids where its writes are counted (SQLite: a row of the file, written in the writer's
//! transaction; Redis: `INCRBY` on one counter shared by every instance), and the process gives
//! them out from memory, so an id costs no round trip.
//! Ids of one process strictly increase; ids of different processes never meet, since each block
//! is reserved once.

use std::future::Future;
use std::sync::Mutex;

use super::StoreError;

/// The ids a store has reserved and not handed out yet.
#[derive(Debug)]
pub struct IdBlocks {
    /// The next id to hand out and the last one reserved (`next > last`: none left).
    range: Mutex<(i64, i64)>,
    /// One reservation at a time: two at once would waste a block and could hand out a lower
    /// block after a higher one.
    reserving: tokio::sync::Mutex<()>,
}

impl IdBlocks {
    /// No ids reserved yet.
    pub fn empty() -> IdBlocks {
        IdBlocks {
            range: Mutex::new((1, 0)),
            reserving: tokio::sync::Mutex::new(()),
        }
    }

    /// `n` ids from what is reserved, if enough is left.
    fn take(&self, n: usize) -> Option<Vec<i64>> {
        let mut range = self.range.lock().unwrap_or_else(|p| p.into_inner());
        let (next, last) = *range;
        let n = i64::try_from(n).ok()?;
        let end = next.checked_add(n)?;
        if end.checked_sub(1)? > last {
            return None;
        }
        range.0 = end;
        Some((next..end).collect())
    }

    fn install(&self, first: i64, last: i64) {
        *self.range.lock().unwrap_or_else(|p| p.into_inner()) = (first, last);
    }

    /// `n` fresh ids. When the reserved ones run out, `reserve(count)` reserves `count` more
    /// where the store counts them and answers the last id of the block it got.
    pub async fn next<F, Fut>(
        &self,
        n: usize,
        block: u64,
        reserve: F,
    ) -> Result<Vec<i64>, StoreError>
    where
        F: FnOnce(u64) -> Fut,
        Fut: Future<Output = Result<i64, StoreError>>,
    {
        if let Some(ids) = self.take(n) {
            return Ok(ids);
        }
        let _one_at_a_time = self.reserving.lock().await;
        // Another task may have reserved a block while this one waited.
        if let Some(ids) = self.take(n) {
            return Ok(ids);
        }
        let count = block.max(u64::try_from(n).unwrap_or(u64::MAX));
        let last = reserve(count).await?;
        let count = i64::try_from(count)
            .map_err(|_| StoreError::Unexpected("id block too large".into()))?;
        self.install(last - count + 1, last);
        self.take(n)
            .ok_or_else(|| StoreError::Unexpected("the reserved id block is too small".into()))
    }

    /// Hands out no more ids, and gives back what is left of the current block:
    /// `give_back(last reserved, last handed out)` lowers the store's counter from the first to
    /// the second where nobody reserved after it, so the next process goes on from there
    /// instead of skipping a block. Nothing to give back: `give_back` is not called.
    pub async fn close<F, Fut>(&self, give_back: F) -> Result<(), StoreError>
    where
        F: FnOnce(i64, i64) -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        let _one_at_a_time = self.reserving.lock().await;
        let (next, last) = {
            let mut range = self.range.lock().unwrap_or_else(|p| p.into_inner());
            let taken = *range;
            // Empty from now on: a late caller gets a fresh block rather than a given-back id.
            *range = (1, 0);
            taken
        };
        if next > last {
            return Ok(());
        }
        give_back(last, next - 1).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ids_come_from_reserved_blocks_and_strictly_increase() {
        let blocks = IdBlocks::empty();
        let mut counter = 0i64;
        let mut reserved = 0;
        let mut last = 0;
        for n in [1, 3, 2, 5, 1, 4, 7, 2] {
            let ids = blocks
                .next(n, 4, |count| {
                    reserved += 1;
                    counter += i64::try_from(count).unwrap_or(0);
                    let at = counter;
                    async move { Ok(at) }
                })
                .await
                .unwrap_or_default();
            assert_eq!(ids.len(), n);
            for id in ids {
                assert!(id > last, "{id} after {last}");
                last = id;
            }
        }
        // Blocks of 4, or of n when n is larger; what is left of a block too small is skipped.
        assert_eq!((last, counter, reserved), (30, 32, 7));
        // Closing gives back the rest of the block: the counter goes back to the last id out.
        let mut given = None;
        blocks
            .close(|reserved, out| {
                given = Some((reserved, out));
                async { Ok(()) }
            })
            .await
            .unwrap();
        assert_eq!(given, Some((32, 30)));
        // Nothing left to give back the second time.
        blocks
            .close(|_, _| async { panic!("nothing to give back") })
            .await
            .unwrap();
    }
}
