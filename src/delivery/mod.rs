//! Delivery: one worker per target sends each job once through [`crate::attempt`] and records
//! the outcome, which removes, reschedules or buries the job.
//!
//! Jobs come two ways. New ones arrive through the target's handoff: ingress stored them as in
//! flight and passes the request it already holds, so the common case costs no lease through the
//! store and no copy of the body. Everything else (retries, a backlog that overflowed the
//! handoff, jobs from a previous run, replayed dead letters) is leased from the store, which is
//! the queue and the retry timer: a worker sleeps until it is rung, the earliest due retry, or the
//! poll interval, and never sleeps on behalf of a job. At most `max_concurrency` requests are in
//! flight per target, a budget the primary relay in ingress shares; while the target's circuit
//! breaker is open (it keeps failing), the worker starts nothing; a paced target's worker
//! waits before each start for the turn the store reserves (`rate_limit_per_sec`, shared by every
//! instance). A lane-ordered target's (`order = "per_user"`) jobs are never handed over: the
//! store leases a lane's first job only, and a delivered or dead one lets the next go, so the
//! worker is rung after each of them. On stop, jobs still in the
//! handoff go back to the store as due; attempts in flight finish (the caller bounds that by the
//! grace period) and anything unfinished is due again on restart.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info_span, warn};

use crate::attempt::Shared;
use crate::clock::now_ms;
use crate::config::Order;
use crate::routing::Target;
use crate::store::{Disposition, Job, Leased};

/// How often a listen target with no client looks for callbacks past its backlog, at most.
const BACKLOG_CHECK: Duration = Duration::from_secs(60);
/// Most jobs leased at once, however large the target's concurrency.
const LEASE_BATCH: usize = 256;
/// How far ahead a paced target's worker leases jobs: about this long's worth at its rate.
const PACE_LOOKAHEAD: Duration = Duration::from_secs(1);
/// How long a stopping worker waits for jobs that ingress is handing over at that moment.
const RELEASE_WAIT: Duration = Duration::from_secs(2);
/// How often a lane-ordered target's worker looks for lanes an older build left blocked, at
/// most: a rolling deploy's leftover, not worth a script call on every look into the store.
const TEND_LANES_EVERY: Duration = Duration::from_secs(1);

/// What a look into the store found.
enum Lease {
    /// As many jobs as were asked for: there may be more.
    Full,
    /// Fewer: look again after this long, or when rung.
    Done(Duration),
    Stopped,
}

/// What every worker shares: the process's shared parts (attempts in flight are tracked there,
/// so shutdown can wait for them; leases of jobs leased here are kept alive there until they
/// end), and how often a worker looks into the store when nothing rings it.
#[derive(Clone)]
pub struct Delivery {
    pub shared: Arc<Shared>,
    pub poll_interval: Duration,
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
        let Some(mut inbox) = target
            .plumbing
            .inbox
            .lock()
            .ok()
            .and_then(|mut inbox| inbox.take())
        else {
            error!("the target's handoff is taken by another worker");
            return;
        };
        // Look in the store at start (jobs left by a previous run), when rung (jobs stored as
        // pending, retries rescheduled) and at the earliest due time or poll interval.
        let mut look_in_store = true;
        let mut next_look = tokio::time::Instant::now();
        // A job taken from the handoff but not started when stop fired: it goes back too.
        let mut unstarted = Vec::new();
        // When this worker last looked for blocked lanes (lane-ordered targets only).
        let mut tended: Option<tokio::time::Instant> = None;
        loop {
            if let Some(cool_down) = target.plumbing.breaker.open_for(now_ms()) {
                // The target keeps failing: start nothing until the cool-down ends. New jobs
                // wait in the handoff, then in the store.
                tokio::select! {
                    () = tokio::time::sleep(cool_down) => {}
                    () = stop.cancelled() => break,
                }
                look_in_store = true;
                continue;
            }
            if let Some(listen) = target.listen.as_ref().filter(|_| !self.connected(&target)) {
                // No client of this listen target is connected: its jobs wait in the store
                // with their attempts untouched, like a down target's, until one connects or
                // they have waited `listen_backlog_secs`.
                let (account, name) = (&target.key.account, &target.key.target);
                tokio::select! {
                    () = self.shared.listeners.connected(account, name) => {}
                    () = tokio::time::sleep(listen.backlog.min(BACKLOG_CHECK)) => {
                        self.bury_waiting(&target, listen.backlog).await;
                    }
                    () = stop.cancelled() => break,
                }
                look_in_store = true;
                continue;
            }
            if look_in_store {
                look_in_store = false;
                match self.lease_from_store(&target, &stop, &mut tended).await {
                    Lease::Full => {
                        look_in_store = true;
                        continue;
                    }
                    Lease::Stopped => break,
                    Lease::Done(wait) => next_look = tokio::time::Instant::now() + wait,
                }
            }
            tokio::select! {
                job = inbox.recv() => {
                    let Some(job) = job else { break };
                    tokio::select! {
                        Ok(permit) = target.plumbing.permits.clone().acquire_owned() => {
                            self.take_turn(&target).await;
                            self.spawn_attempt(&target, job, permit);
                        }
                        () = stop.cancelled() => {
                            unstarted.push(job.leased());
                            break;
                        }
                    }
                }
                () = target.plumbing.wake.notified() => look_in_store = true,
                () = tokio::time::sleep_until(next_look) => look_in_store = true,
                () = stop.cancelled() => break,
            }
        }
        self.release(&mut inbox, unstarted).await;
    }

    /// A listen target's jobs that waited past its backlog: dead letters.
    async fn bury_waiting(&self, target: &Target, backlog: Duration) {
        let reason = format!(
            "no listen client connected for listen_backlog_secs ({} s)",
            backlog.as_secs()
        );
        match self
            .shared
            .store
            .bury_waiting(&target.key, backlog, &reason)
            .await
        {
            Ok(0) => {}
            Ok(n) => warn!(
                dead_letters = n,
                "listen target: callbacks waited past listen_backlog_secs with no client connected"
            ),
            Err(e) => error!(error = %e, "burying a listen target's old callbacks failed"),
        }
    }

    /// Whether a listen target has a client connected to this process.
    fn connected(&self, target: &Target) -> bool {
        let key = &target.key;
        self.shared.listeners.connections(&key.account, &key.target) > 0
    }

    /// Leases due jobs from the store, at most as many as there are free permits, and starts
    /// their attempts; says how long until the store should be looked at again. `tended`: when
    /// the worker last looked for blocked lanes.
    async fn lease_from_store(
        &self,
        target: &Arc<Target>,
        stop: &CancellationToken,
        tended: &mut Option<tokio::time::Instant>,
    ) -> Lease {
        // Lease only when there is room, but hold no permit while the store is asked: a reply
        // owner's relay takes one without waiting, and a worker that merely polls the store
        // (most polls find nothing) must not make it skip the relay. A permit taken meanwhile
        // only makes a leased job wait for the next one.
        let permits = &target.plumbing.permits;
        if permits.available_permits() == 0 {
            // Busy: wait for room (the permit is given back at once).
            tokio::select! {
                permit = permits.acquire() => if permit.is_err() { return Lease::Stopped },
                () = stop.cancelled() => return Lease::Stopped,
            }
        }
        let mut want = permits.available_permits().clamp(1, LEASE_BATCH);
        if let Some(interval) = target.settings.pace {
            // A paced target's leased jobs wait their turns here: lease about a second's worth,
            // so that none waits long under a lease (nor long after a crash).
            let per_second = (PACE_LOOKAHEAD.as_secs_f64() / interval.as_secs_f64()).ceil();
            want = want.min(per_second as usize).max(1);
        }
        if target.settings.order == Order::PerUser
            && tended.is_none_or(|at| at.elapsed() >= TEND_LANES_EVERY)
        {
            *tended = Some(tokio::time::Instant::now());
            if let Err(e) = self.shared.store.tend_lanes(&target.key).await {
                warn!(error = %e, "looking for lanes left blocked by an older build failed");
            }
        }
        let jobs = match self.shared.store.lease_due(&target.key, want).await {
            Ok(jobs) => jobs,
            Err(e) => {
                error!(error = %e, "leasing due jobs failed");
                return Lease::Done(self.poll_interval);
            }
        };
        let full = jobs.len() == want;
        for job in &jobs {
            self.shared.leases.hold(job);
        }
        for job in jobs {
            // Leased jobs are always attempted, even if stop fires meanwhile.
            let permit = match target.plumbing.permits.clone().acquire_owned().await {
                Ok(permit) => permit,
                Err(_) => return Lease::Stopped,
            };
            self.take_turn(target).await;
            self.spawn_attempt(target, job, permit);
        }
        if full {
            return Lease::Full;
        }
        Lease::Done(match self.shared.store.next_due(&target.key).await {
            Ok(Some(due_in)) => due_in.min(self.poll_interval),
            _ => self.poll_interval,
        })
    }

    /// For a paced target (`rate_limit_per_sec`), waits for the next start the store reserves
    /// for this delivery: one at a time per worker, so a process that dies holds at most one
    /// unused turn. A store that cannot say is not waited for.
    async fn take_turn(&self, target: &Target) {
        let Some(interval) = target.settings.pace else {
            return;
        };
        match self.shared.store.pace(&target.key, interval).await {
            Ok(wait) if wait.is_zero() => {}
            Ok(wait) => {
                let (account, name) = (&target.key.account, &target.key.target);
                self.shared.metrics.paced(account, name, wait.as_secs_f64());
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                warn!(error = %e, "the target's pace could not be read from the store; delivering without waiting")
            }
        }
    }

    fn spawn_attempt(&self, target: &Arc<Target>, job: Job, permit: OwnedSemaphorePermit) {
        self.shared.in_flight.spawn(
            self.clone()
                .deliver(target.clone(), job, permit)
                .in_current_span(),
        );
    }

    /// On stop: jobs still in the handoff go back to the store as due, so the next worker (after
    /// a reload) or the next start sends them. Closing first makes ingress store new jobs as
    /// pending instead; jobs it is handing over right now are waited for, briefly.
    async fn release(&self, inbox: &mut mpsc::Receiver<Job>, mut jobs: Vec<Leased>) {
        inbox.close();
        let drained = tokio::time::timeout(RELEASE_WAIT, async {
            while let Some(job) = inbox.recv().await {
                jobs.push(job.leased());
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                "jobs still being handed over after {RELEASE_WAIT:?}; they resume on the next start"
            );
        }
        if jobs.is_empty() {
            return;
        }
        for job in &jobs {
            self.shared.leases.let_go(job.job, job.token);
        }
        if let Err(e) = self.shared.store.release(jobs).await {
            warn!(error = %e, "could not return handed-over jobs to the queue; they resume on the next start");
        }
    }

    async fn deliver(self, target: Arc<Target>, job: Job, permit: OwnedSemaphorePermit) {
        let attempt = self.shared.attempts.attempt(&target, &job).await;
        drop(permit);
        let finished = self
            .shared
            .attempts
            .finish(&*self.shared.store, &target, &job, &attempt)
            .await;
        self.shared.leases.let_go(job.id, job.lease);
        if matches!(finished.disposition, Disposition::RetryIn(_)) || finished.lane_next_due {
            // The worker may be asleep for a whole poll interval; let it see the new due time,
            // or the next job of the lane this one released (an empty lane wakes no one: most
            // lanes, at everyday rates).
            target.plumbing.wake.notify_one();
        }
    }
}
