//! The leases this process holds, kept alive while it holds them.
//!
//! On a store whose leases expire (Redis, shared by several instances), a job in flight is
//! another instance's to take once its lease runs out: that is how the jobs of an instance that
//! died get delivered. A live instance must therefore renew what it still holds, or a job
//! waiting in a worker's handoff, or an attempt that outlasts the lease (a target with a long
//! timeout), is sent twice. Every job taken under a lease (stored in flight by ingress for the
//! primary relay or a handoff, or leased from the store by a worker) is [`Leases::hold`]en when
//! taken and [`Leases::let_go`] once its outcome is recorded (an outcome the store refused is
//! retried, and its lease must outlive the retries) or it is released; one background task
//! ([`Leases::keep`]) renews everything held in one batch per account. A lease the store
//! reports lost (it expired and another instance took the job, e.g. after Redis was unreachable
//! for longer than a lease) is logged and forgotten: that job may now be delivered twice.
//!
//! On a store whose leases never expire (SQLite: one process owns it) this holds nothing and the
//! task ends at once. Shared by `ingress` and `delivery`, so it belongs to neither.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::{Job, JobId, LeaseToken, Leased, Store};

/// Most leases renewed by one call (one script per account), so Redis is never busy long.
const RENEW_BATCH: usize = 512;

/// This process's leases; cheap to clone, all clones share one set.
#[derive(Clone, Debug, Default)]
pub struct Leases {
    /// Job → the lease it is held under; `None` when leases do not expire.
    held: Option<Arc<Mutex<HashMap<JobId, Leased>>>>,
    /// How long a lease lasts, when they expire.
    lease: Duration,
}

impl Leases {
    /// Leases lasting `lease` (the store's [`Store::lease_duration`]); `None`: nothing to keep.
    pub fn new(lease: Option<Duration>) -> Leases {
        match lease {
            Some(lease) => Leases {
                held: Some(Arc::default()),
                lease,
            },
            None => Leases::default(),
        }
    }

    /// `job` is held by this process from now until [`Leases::let_go`].
    pub fn hold(&self, job: &Job) {
        if let Some(held) = &self.held {
            lock(held).insert(job.id, job.leased());
        }
    }

    /// The lease `token` of `job` is no longer held (its outcome is recorded, or it was
    /// released). A newer lease of the same job (retried and leased again meanwhile) stays.
    pub fn let_go(&self, job: JobId, token: LeaseToken) {
        if let Some(held) = &self.held {
            let mut held = lock(held);
            if held.get(&job).is_some_and(|l| l.token == token) {
                held.remove(&job);
            }
        }
    }

    /// How many leases are held now (the tests' view; nothing else asks).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.as_ref().map_or(0, |held| lock(held).len())
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Renews every held lease every third of the lease, until `stop`. A third, not a half: a
    /// renewal that fails or comes late (Redis busy, a reconnect) leaves two more tries before
    /// the lease runs out, and one round trip is small next to any lease worth configuring.
    pub async fn keep(self, store: Arc<dyn Store>, stop: CancellationToken) {
        let Some(held) = self.held else { return };
        let mut ticks = tokio::time::interval(self.lease / 3);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        // Reported lost by the last round; see [`confirm_lost`].
        let mut suspects = Vec::new();
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = stop.cancelled() => return,
            }
            confirm_lost(&held, std::mem::take(&mut suspects));
            let batch: Vec<Leased> = lock(&held).values().cloned().collect();
            let mut failed = None;
            for chunk in batch.chunks(RENEW_BATCH) {
                match store.renew(chunk).await {
                    Ok(lost) => {
                        suspects.extend(chunk.iter().filter(|l| lost.contains(&l.job)).cloned())
                    }
                    Err(e) => failed = Some(e),
                }
            }
            match failed {
                Some(e) if !failing => {
                    failing = true;
                    warn!(error = %e, held = batch.len(), "could not renew the leases of jobs in flight; \
                          if this lasts longer than a lease, other instances may deliver them again");
                }
                Some(_) => {}
                None if failing => {
                    failing = false;
                    info!(held = batch.len(), "leases of jobs in flight renewed again");
                }
                None => {}
            }
        }
    }
}

/// Forgets the leases reported lost by the previous round that are still held under the same
/// token, with a warning. Confirming one round later tells a lost lease from a job whose outcome
/// was recorded just before the renewal (its lease is gone from the store, so it is reported
/// lost too) but let go only after: that one is no longer held by now.
fn confirm_lost(held: &Mutex<HashMap<JobId, Leased>>, suspects: Vec<Leased>) {
    if suspects.is_empty() {
        return;
    }
    let mut held = lock(held);
    for leased in suspects {
        if held.get(&leased.job) == Some(&leased) {
            held.remove(&leased.job);
            warn!(
                account = &*leased.key.account,
                target = &*leased.key.target,
                delivery = leased.job.0,
                "the lease of a job in flight was lost (it expired and another instance took the \
                 job): the job may be delivered twice"
            );
        }
    }
}

fn lock(held: &Mutex<HashMap<JobId, Leased>>) -> std::sync::MutexGuard<'_, HashMap<JobId, Leased>> {
    held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CallbackId, Replay, TargetKey};

    fn job(id: JobId, lease: LeaseToken) -> Job {
        Job {
            id,
            callback: CallbackId(1),
            key: TargetKey {
                account: Arc::from("main"),
                target: Arc::from("crm"),
            },
            lease,
            attempts: 0,
            retry_base: 0,
            request: Arc::new(Replay {
                query: String::new(),
                content_type: None,
                body: bytes::Bytes::new(),
                authorizer: None,
                trace: None,
                headers: Vec::new(),
                lane: None,
            }),
            lane: None,
        }
    }

    #[test]
    fn a_store_whose_leases_never_expire_holds_nothing() {
        let leases = Leases::new(None);
        leases.hold(&job(JobId(1), 7));
        assert!(leases.is_empty());
    }

    /// A job retried and leased again before the old attempt let go keeps its new lease.
    #[test]
    fn letting_go_of_an_old_lease_keeps_the_new_one() {
        let leases = Leases::new(Some(Duration::from_secs(1)));
        leases.hold(&job(JobId(1), 7));
        leases.hold(&job(JobId(2), 8));
        leases.hold(&job(JobId(1), 9));
        leases.let_go(JobId(1), 7);
        assert_eq!(leases.len(), 2);
        leases.let_go(JobId(1), 9);
        leases.let_go(JobId(2), 8);
        assert!(leases.is_empty());
    }

    /// Reported lost: forgotten if still held under that token a round later; a job let go
    /// meanwhile, or held under a newer lease, is not touched.
    #[test]
    fn only_leases_still_held_are_forgotten_as_lost() {
        let leases = Leases::new(Some(Duration::from_secs(1)));
        let held = leases.held.clone().unwrap();
        for (id, token) in [(1, 7), (2, 8), (3, 9), (4, 10)] {
            leases.hold(&job(JobId(id), token));
        }
        let suspects: Vec<Leased> = [(1, 7), (2, 8), (4, 10)]
            .iter()
            .map(|(id, token)| job(JobId(*id), *token).leased())
            .collect();
        leases.hold(&job(JobId(2), 11));
        leases.let_go(JobId(4), 10);
        confirm_lost(&held, suspects);
        let mut left: Vec<(JobId, LeaseToken)> =
            lock(&held).values().map(|l| (l.job, l.token)).collect();
        left.sort_unstable();
        assert_eq!(left, [(JobId(2), 11), (JobId(3), 9)]);
    }
}
