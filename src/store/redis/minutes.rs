//! The console charts' per-minute counts on Redis ([`Store::add_minutes`],
//! [`Store::minutes`](crate::store::Store::minutes)): one hash per minute for the whole
//! deployment (`<prefix>:{:minutes}:<minute>`, every minute in one slot of a Cluster), a field
//! per (account, target, name), expiring [`MINUTES_KEPT`] after its minute.
//!
//! What it costs Redis: each instance adds what it counted every few seconds in one script
//! call (`lua/minutes_add.lua`), whatever the rate, never on a callback's way; a chart of an
//! hour reads 60 hashes in one call (`lua/minutes.lua`).
//!
//! [`Store::add_minutes`]: crate::store::Store::add_minutes

use super::{RedisStore, number, text};
use crate::metrics::minutes::{Merge, MinuteCount, minute_now};
use crate::store::{MINUTES_KEPT, StoreError};

impl RedisStore {
    fn minutes_base(&self) -> String {
        format!("{}:{{:minutes}}", self.prefix)
    }

    pub(super) async fn add_minute_counts(
        &self,
        counts: Vec<MinuteCount>,
    ) -> Result<(), StoreError> {
        if counts.is_empty() {
            return Ok(());
        }
        let mut invocation = self.scripts.minutes_add.key(self.minutes_base());
        invocation.arg(u64::try_from(MINUTES_KEPT.as_millis()).unwrap_or(u64::MAX));
        for c in &counts {
            let highest = Merge::of(&c.name) == Merge::Highest;
            invocation
                .arg(c.minute)
                .arg(format!("{}\n{}\n{}", c.account, c.target, c.name))
                .arg(c.value)
                .arg(u8::from(highest));
        }
        let () = invocation.invoke_async(&mut self.conn()).await?;
        Ok(())
    }

    pub(super) async fn minute_counts(&self, since: i64) -> Result<Vec<MinuteCount>, StoreError> {
        let reply: Vec<Vec<u8>> = self
            .scripts
            .minutes
            .key(self.minutes_base())
            .arg(since)
            .arg(minute_now())
            .invoke_async(&mut self.conn())
            .await?;
        read_counts(reply)
    }
}

/// The counts as `lua/minutes.lua` answers them.
fn read_counts(reply: Vec<Vec<u8>>) -> Result<Vec<MinuteCount>, StoreError> {
    let mut fields = reply.into_iter();
    let mut counts = Vec::new();
    while let Some(minute) = fields.next() {
        let minute: i64 = number(Some(minute))?;
        let n: usize = number(fields.next())?;
        for _ in 0..n {
            let field = text(fields.next().unwrap_or_default());
            let value = number(fields.next())?;
            let mut parts = field.splitn(3, '\n');
            let (Some(account), Some(target), Some(name)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(StoreError::Corrupt(format!(
                    "a minute's count is named {field:?}"
                )));
            };
            counts.push(MinuteCount {
                minute,
                account: account.to_owned(),
                target: target.to_owned(),
                name: name.to_owned(),
                value,
            });
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_back_and_a_bad_name_is_an_error() {
        let b = |s: &str| s.as_bytes().to_vec();
        let counts = read_counts(vec![
            b("29000000"),
            b("2"),
            b("main\n\naccepted"),
            b("7"),
            b("main\ncrm\nle_5"),
            b("3"),
        ])
        .expect("a reply of the script");
        assert_eq!(counts.len(), 2);
        assert_eq!(
            (
                counts[1].minute,
                &*counts[1].target,
                &*counts[1].name,
                counts[1].value
            ),
            (29_000_000, "crm", "le_5", 3)
        );
        assert!(read_counts(vec![b("1"), b("1"), b("nonsense"), b("1")]).is_err());
    }
}
