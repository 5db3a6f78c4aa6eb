//! The console charts' per-minute counts on SQLite ([`Store::add_minutes`],
//! [`Store::minutes`](crate::store::Store::minutes)): one row per (minute, account, target,
//! name) in the table `minutes`, added to by the writer in its next transaction, read on the
//! reader connection. A few hundred rows a minute at most (a handful per target), kept for
//! [`MINUTES_KEPT`](crate::store::MINUTES_KEPT): the table stays small whatever the traffic.
//!
//! [`Store::add_minutes`]: crate::store::Store::add_minutes

use rusqlite::params;

use super::SqliteStore;
use super::writer::{Command, Writer};
use crate::metrics::minutes::{Merge, MinuteCount};
use crate::store::StoreError;

impl Writer {
    /// Adds `counts` (a reading of the queue keeps the highest), and forgets minutes before
    /// `forget`.
    pub(super) fn add_minutes(
        &mut self,
        counts: &[MinuteCount],
        forget: i64,
    ) -> Result<(), StoreError> {
        let mut add = self.conn.prepare_cached(
            "INSERT INTO minutes (minute, account, target, name, value) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (minute, account, target, name) DO UPDATE
             SET value = CASE WHEN ?6 THEN max(value, excluded.value) ELSE value + excluded.value END",
        )?;
        for c in counts {
            let highest = Merge::of(&c.name) == Merge::Highest;
            add.execute(params![
                c.minute, c.account, c.target, c.name, c.value, highest
            ])?;
        }
        self.conn
            .prepare_cached("DELETE FROM minutes WHERE minute < ?1")?
            .execute(params![forget])?;
        Ok(())
    }
}

impl SqliteStore {
    pub(super) async fn add_minute_counts(
        &self,
        counts: Vec<MinuteCount>,
        forget: i64,
    ) -> Result<(), StoreError> {
        self.call(move |r| Command::AddMinutes(counts, forget, r))
            .await
    }

    pub(super) async fn minute_counts(&self, since: i64) -> Result<Vec<MinuteCount>, StoreError> {
        self.read(move |conn| {
            let counts = conn
                .prepare_cached(
                    "SELECT minute, account, target, name, value FROM minutes WHERE minute >= ?1",
                )?
                .query_map(params![since], |row| {
                    Ok(MinuteCount {
                        minute: row.get(0)?,
                        account: row.get(1)?,
                        target: row.get(2)?,
                        name: row.get(3)?,
                        value: row.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(counts)
        })
        .await
    }
}
