//! Delivery: one worker per target leases due jobs from the store, sends each once through
//! [`Downstream`], and records the outcome, which removes, reschedules or buries the job.
//!
//! The store is the queue and the retry timer: a worker holds no job it has not leased, sleeps
//! until it is rung (new jobs), the earliest due retry, or the poll interval, and never sleeps
//! on behalf of a job. At most `max_concurrency` requests are in flight per target, a budget the
//! primary relay in ingress shares. On shutdown workers stop leasing; attempts in flight finish
//! (the caller bounds that by the grace period) and anything unfinished is due again on restart.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info_span};

use crate::downstream::{Downstream, now_ms};
use crate::shutdown::InFlight;
use crate::store::{Disposition, Job, Store};
use crate::targets::Target;

/// Most jobs leased at once, however large the target's concurrency.
const LEASE_BATCH: usize = 256;

/// What every worker shares.
#[derive(Clone)]
pub struct Delivery {
    pub store: Arc<dyn Store>,
    pub downstream: Downstream,
    pub poll_interval: Duration,
    /// Attempts in flight, so shutdown can wait for them (and abandon them after the grace).
    pub in_flight: InFlight,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Starts the worker of `target`; it stops when `stop` fires.
    pub fn spawn_worker(
        &self,
        target: Arc<Target>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let delivery = self.clone();
        let span = info_span!(
            "worker",
            account = &*target.key.account,
            target = &*target.key.target
        );
        tokio::spawn(async move { delivery.work(target, stop).await }.instrument(span))
    }

    async fn work(self, target: Arc<Target>, stop: CancellationToken) {
        loop {
            // Hold one permit while leasing, so a lease never outruns the concurrency budget.
            let first = tokio::select! {
                permit = target.permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                () = stop.cancelled() => return,
            };
            let want = (1 + target.permits.available_permits()).min(LEASE_BATCH);
            let jobs = match self.store.lease_due(&target.key, now_ms(), want).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    error!(error = %e, "leasing due jobs failed");
                    drop(first);
                    tokio::select! {
                        () = tokio::time::sleep(self.poll_interval) => continue,
                        () = stop.cancelled() => return,
                    }
                }
            };
            let full = jobs.len() == want;
            let mut first = Some(first);
            for job in jobs {
                let permit = match first.take() {
                    Some(permit) => permit,
                    // Leased jobs are always attempted, even if stop fires meanwhile.
                    None => match target.permits.clone().acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                };
                self.in_flight.spawn(
                    self.clone()
                        .deliver(target.clone(), job, permit)
                        .in_current_span(),
                );
            }
            drop(first);
            if full {
                continue;
            }
            let wait = match self.store.next_due(&target.key).await {
                Ok(Some(at)) => Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0))
                    .min(self.poll_interval),
                _ => self.poll_interval,
            };
            tokio::select! {
                () = target.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    async fn deliver(self, target: Arc<Target>, job: Job, permit: OwnedSemaphorePermit) {
        let attempt = self.downstream.attempt(&target, &job).await;
        drop(permit);
        let disposition = self
            .downstream
            .finish(&*self.store, &target, &job, &attempt)
            .await;
        if matches!(disposition, Disposition::RetryAt(_)) {
            // The worker may be asleep for a whole poll interval; let it see the new due time.
            target.wake.notify_one();
        }
    }
}
