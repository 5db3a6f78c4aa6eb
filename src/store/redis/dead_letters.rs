//! Dead letters on Redis: listed per account and target from the `dead:<t>` sets, found by id
//! deployment-wide (an id names a job, not its account), replayed and purged by scripts, one
//! per account.

use std::collections::BTreeMap;

use super::{RedisStore, number, shape, text};
use crate::store::{
    DeadLetter, DeadLetterDetail, DeadLetterFilter, FailedAttempt, JobId, Replayed, StoreError,
    TargetKey,
};

/// The dead letters, as the [`Store`](crate::store::Store) impl asks for them.
impl RedisStore {
    /// The dead letters of `account` matching `filter` (its targets; died in the range).
    async fn letters_of(
        &self,
        account: &str,
        filter: &DeadLetterFilter,
        limit: Option<usize>,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let targets = match &filter.target {
            Some(target) => vec![target.clone()],
            None => self.targets(account).await?,
        };
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let min = filter
            .since_ms
            .map_or("-inf".to_owned(), |since| since.to_string());
        let max = filter
            .until_ms
            .map_or("+inf".to_owned(), |until| format!("({until}"));
        let rows: Vec<Option<Vec<u8>>> = self
            .scripts
            .dead_list
            .key(self.base(account))
            .arg(min)
            .arg(max)
            // A negative count is no limit.
            .arg(limit.map_or(-1, |l| i64::try_from(l).unwrap_or(-1)))
            .arg(targets)
            .invoke_async(&mut self.conn())
            .await?;
        rows.chunks_exact(LETTER_FIELDS)
            .map(|row| letter(account, row))
            .collect()
    }

    /// The dead letters an operation applies to: the one with `id` (if it also matches
    /// `filter`), or all that match `filter`, deployment-wide.
    async fn selected_letters(
        &self,
        id: Option<JobId>,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let Some(id) = id else {
            let mut all = Vec::new();
            for account in self.accounts_for(&filter.account).await? {
                all.extend(self.letters_of(&account, filter, None).await?);
            }
            return Ok(all);
        };
        let Some((account, row)) = self.find_letter(id).await? else {
            return Ok(Vec::new());
        };
        let letter = letter(&account, &row[..LETTER_FIELDS.min(row.len())])?;
        Ok(matching_filter(&letter, filter)
            .then_some(letter)
            .into_iter()
            .collect())
    }

    /// Which account holds job `id` as a dead letter, and that letter's fields.
    async fn find_letter(
        &self,
        id: JobId,
    ) -> Result<Option<(String, Vec<Option<Vec<u8>>>)>, StoreError> {
        for account in self.accounts().await? {
            let row: Vec<Option<Vec<u8>>> = self
                .scripts
                .dead_detail
                .key(self.base(&account))
                .arg(id)
                .invoke_async(&mut self.conn())
                .await?;
            if !row.is_empty() {
                return Ok(Some((account, row)));
            }
        }
        Ok(None)
    }

    pub(super) async fn list_letters(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let limit = filter.limit.unwrap_or(100);
        let mut letters = Vec::new();
        for account in self.accounts_for(&filter.account).await? {
            letters.extend(self.letters_of(&account, filter, Some(limit)).await?);
        }
        letters.sort_by_key(|l| std::cmp::Reverse((l.died_at_ms, l.id)));
        letters.truncate(limit);
        Ok(letters)
    }

    pub(super) async fn letter_detail(
        &self,
        id: JobId,
    ) -> Result<Option<DeadLetterDetail>, StoreError> {
        let Some((account, row)) = self.find_letter(id).await? else {
            return Ok(None);
        };
        let (fields, rest) = row.split_at(LETTER_FIELDS.min(row.len()));
        let letter = letter(&account, fields)?;
        let [
            query,
            content_type,
            body,
            authorizer,
            version,
            trace,
            headers,
            attempts @ ..,
        ] = rest
        else {
            return Err(StoreError::Unexpected(
                "unexpected reply to dead_letter".into(),
            ));
        };
        let mut records = attempts
            .chunks_exact(2)
            .map(|pair| attempt_record(pair[0].clone(), pair[1].clone()))
            .collect::<Result<Vec<_>, _>>()?;
        records.sort_by_key(|r| r.attempt);
        Ok(Some(DeadLetterDetail {
            letter,
            request: shape(
                query.clone(),
                content_type.clone(),
                body.clone(),
                authorizer.clone(),
                version.clone(),
            )
            .traced(trace.clone(), headers.clone()),
            attempts: records,
        }))
    }

    pub(super) async fn replay_letters(
        &self,
        id: Option<JobId>,
        filter: &DeadLetterFilter,
        routed: Vec<TargetKey>,
    ) -> Result<Replayed, StoreError> {
        let mut letters = self.selected_letters(id, filter).await?;
        // In the order their callbacks arrived: lane-ordered letters rejoin their lanes so.
        letters.sort_by_key(|l| (l.received_at_ms, l.callback, l.id));
        let mut replayed = Replayed::default();
        let mut by_account: BTreeMap<String, Vec<&DeadLetter>> = BTreeMap::new();
        for letter in &letters {
            if routed
                .iter()
                .any(|k| *k.account == *letter.account && *k.target == *letter.target)
            {
                by_account
                    .entry(letter.account.clone())
                    .or_default()
                    .push(letter);
            } else {
                replayed.not_routed += 1;
            }
        }
        for (account, letters) in by_account {
            let mut invocation = self.scripts.replay.key(self.base(&account));
            for letter in &letters {
                invocation.arg(letter.id).arg(&letter.target);
            }
            let done: Vec<JobId> = invocation.invoke_async(&mut self.conn()).await?;
            for letter in letters {
                if done.contains(&letter.id)
                    && let Some(key) = routed
                        .iter()
                        .find(|k| *k.account == *letter.account && *k.target == *letter.target)
                {
                    replayed.targets.push(key.clone());
                }
            }
        }
        Ok(replayed)
    }

    pub(super) async fn purge_letters(
        &self,
        id: Option<JobId>,
        filter: &DeadLetterFilter,
    ) -> Result<u64, StoreError> {
        let letters = self.selected_letters(id, filter).await?;
        let mut by_account: BTreeMap<&str, Vec<&DeadLetter>> = BTreeMap::new();
        for letter in &letters {
            by_account.entry(&letter.account).or_default().push(letter);
        }
        let mut purged = 0;
        for (account, letters) in by_account {
            let mut invocation = self.scripts.purge_dead.key(self.base(account));
            for letter in letters {
                invocation.arg(letter.id).arg(&letter.target);
            }
            let n: i64 = invocation.invoke_async(&mut self.conn()).await?;
            purged += n.unsigned_abs();
        }
        Ok(purged)
    }
}

/// Whether a letter found by id also matches the filter's other conditions.
fn matching_filter(letter: &DeadLetter, filter: &DeadLetterFilter) -> bool {
    filter.account.as_ref().is_none_or(|a| *a == letter.account)
        && filter.target.as_ref().is_none_or(|t| *t == letter.target)
        && filter.since_ms.is_none_or(|s| letter.died_at_ms >= s)
        && filter.until_ms.is_none_or(|u| letter.died_at_ms < u)
}

/// Fields per dead letter in the scripts' replies.
const LETTER_FIELDS: usize = 10;

fn letter(account: &str, row: &[Option<Vec<u8>>]) -> Result<DeadLetter, StoreError> {
    if row.len() < LETTER_FIELDS {
        return Err(StoreError::Unexpected(
            "unexpected reply for a dead letter".into(),
        ));
    }
    Ok(DeadLetter {
        id: number(row[0].clone())?,
        callback: number(row[1].clone())?,
        account: account.to_owned(),
        target: text(row[2].clone().unwrap_or_default()),
        msg_type: row[3].clone().map(text),
        event: row[4].clone().map(text),
        received_at_ms: number(row[5].clone()).unwrap_or(0),
        died_at_ms: number(row[6].clone()).unwrap_or(0),
        attempts: number(row[7].clone()).unwrap_or(0),
        last_status: number(row[8].clone()).ok(),
        last_error: row[9].clone().map(text),
    })
}

/// An attempt stored as `at|status|E<error>` (status empty and `-` for none).
pub(super) fn attempt_record(
    attempt: Option<Vec<u8>>,
    stored: Option<Vec<u8>>,
) -> Result<FailedAttempt, StoreError> {
    let stored = text(stored.unwrap_or_default());
    let mut parts = stored.splitn(3, '|');
    let at = parts.next().unwrap_or("");
    let status = parts.next().unwrap_or("");
    let error = parts.next().unwrap_or("-");
    Ok(FailedAttempt {
        attempt: number(attempt)?,
        at_ms: at.parse().unwrap_or(0),
        status: status.parse().ok(),
        error: error.strip_prefix('E').map(str::to_owned),
    })
}
