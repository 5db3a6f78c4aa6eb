//! The reply owner's job sent by ingress itself, at once, and its answer awaited until the
//! reply deadline: what WeChat gets if it comes in time. The attempt goes on, and is recorded,
//! like any delivery; an answer past the deadline comes through the receiver for the late-reply
//! rescue. Shadows' jobs are started the same way, only to be compared.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tracing::{Instrument, debug, warn};

use super::Ingress;
use crate::attempt::Attempt;
use crate::routing::Target;
use crate::store::{Answer, Job};

impl Ingress {
    /// Sends `job` now, in its own task that records the outcome like any delivery; the
    /// attempt's result also comes back through the returned channel.
    pub(super) fn start_attempt(
        &self,
        target: Arc<Target>,
        permit: OwnedSemaphorePermit,
        job: Job,
    ) -> oneshot::Receiver<Attempt> {
        let (reply, answer) = oneshot::channel();
        let shared = self.shared.clone();
        self.shared.in_flight.spawn(
            async move {
                let attempt = shared.attempts.attempt(&target, &job).await;
                drop(permit);
                let _ = reply.send(attempt.clone());
                (shared.attempts)
                    .finish(&*shared.store, &target, &job, &attempt)
                    .await;
                shared.leases.let_go(job.id, job.lease);
                // A retry may now be scheduled: let the target's worker see when it is due.
                target.plumbing.wake.notify_one();
            }
            .in_current_span(),
        );
        answer
    }

    /// Sends the primary's job now and waits for its answer until `deadline`; the attempt goes on
    /// (and is recorded) past the deadline, like any delivery, and past it its answer comes
    /// through the returned receiver.
    pub(super) async fn relay(
        &self,
        target: &Arc<Target>,
        permit: OwnedSemaphorePermit,
        job: Job,
        deadline: Instant,
    ) -> (Option<Answer>, Option<oneshot::Receiver<Attempt>>) {
        let mut answer = self.start_attempt(target.clone(), permit, job);
        let (outcome, relayed, late) =
            match tokio::time::timeout_at(deadline.into(), &mut answer).await {
                Ok(Ok(Attempt {
                    reply: Some(answer),
                    ..
                })) => ("relayed", Some(answer), None),
                Ok(Ok(Attempt {
                    withheld: Some(why),
                    ..
                })) => {
                    // Delivered, but WeChat would not get the owner's whole answer.
                    warn!(
                        target = &*target.key.target,
                        outcome = why.label(),
                        reason = %why,
                        "the reply owner's answer is not relayed; WeChat gets success"
                    );
                    (why.label(), None, None)
                }
                Ok(_) => ("failed", None, None),
                Err(_) => {
                    debug!("primary did not answer before the reply deadline");
                    ("timed_out", None, Some(answer))
                }
            };
        self.shared.metrics.primary(&target.key.account, outcome);
        (relayed, late)
    }
}
