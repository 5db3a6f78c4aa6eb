//! A verified callback taken in, as named steps: **join** the copies of it being handled here
//! (a resend waits for its first copy's answer), **plan** how each of its jobs starts, **persist**
//! the callback and its jobs in one insert-if-absent (a resend stored before gets that copy's
//! answer), **dispatch** the jobs (the reply owner's relayed, shadows asked, the rest handed to
//! their workers or left due in the store), then **answer** WeChat with the owner's reply or
//! `success`, and save that answer for resends on any instance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc::OwnedPermit;
use tracing::{Instrument, info, warn};

use super::rejection::Rejection;
use super::resends::{self, Leader, Role};
use super::{FOLLOWER_SLACK, Ingress, Verified, rescue, shadow, success};
use crate::clock::now_ms;
use crate::config::Order;
use crate::events::{CallbackEvent, Event, JobRef};
use crate::metrics::CallbackOutcome;
use crate::routing::Target;
use crate::store::{
    Accepted, Answer, CallbackId, Job, JobId, LeaseToken, NewCallback, NewJob, new_lease_token,
};

/// One job of the callback being accepted: its target, how it starts, its id, and the lease it
/// is stored under when it starts at once.
struct Planned<'a> {
    target: &'a Arc<Target>,
    start: Start,
    id: JobId,
    lease: Option<LeaseToken>,
}

/// How a new job starts once its callback is stored.
enum Start {
    /// The reply owner's, sent by ingress now; its answer may become the passive reply.
    Relay(OwnedSemaphorePermit),
    /// A shadow's (`shadow_of`) of the relaying owner, sent by ingress now; only compared.
    Shadow(OwnedSemaphorePermit),
    /// Handed to the target's worker with the request in memory.
    Handoff(OwnedPermit<Job>),
    /// Left in the store as due; the target's worker is rung.
    Stored,
}

/// What [`Ingress::plan`] decided: the callback's id, one [`Planned`] per matching target, and
/// the reply owner of its route, if it gets the callback.
struct Plan<'a> {
    callback: CallbackId,
    jobs: Vec<Planned<'a>>,
    owner: Option<&'a Arc<Target>>,
}

impl Plan<'_> {
    fn relaying(&self) -> bool {
        self.jobs.iter().any(|j| matches!(j.start, Start::Relay(_)))
    }
}

/// The jobs [`Ingress::dispatch`] started that the answer waits on or compares with.
struct Dispatched<'a> {
    /// The reply owner's job, with its permit: relayed now.
    relay: Option<(&'a Arc<Target>, OwnedSemaphorePermit, Job)>,
    /// Each shadow asked now, and where its attempt's outcome comes.
    shadowed: Vec<(
        Arc<Target>,
        tokio::sync::oneshot::Receiver<crate::attempt::Attempt>,
    )>,
}

impl Ingress {
    /// Whether `target` can be sent to from here: any target but a listen target with no
    /// client connected (to this instance, or to another that said so lately).
    fn reachable(&self, target: &Target) -> bool {
        let key = &target.key;
        target.listen.is_none() || self.shared.listeners.reachable(&key.account, &key.target)
    }

    /// Whether this process's worker can send to `target`: any target but a listen target with
    /// no client connected to this instance.
    fn worked_here(&self, target: &Target) -> bool {
        let key = &target.key;
        target.listen.is_none() || self.shared.listeners.connections(&key.account, &key.target) > 0
    }

    /// Takes a verified callback in: stored (or found stored), dispatched, answered.
    pub(super) async fn accept(
        self: Arc<Self>,
        verified: Verified,
        started: Instant,
    ) -> Result<Answer, Rejection> {
        let deadline = started + self.settings.reply_deadline_ms.duration();
        let leader = match self.resends.join(&verified.key.key, deadline) {
            Role::Leader(leader) => leader,
            Role::Follower {
                leader_deadline,
                outcome,
            } => {
                // The leader answers by its own deadline, which may be later than ours.
                let wait_until = deadline.max(leader_deadline) + FOLLOWER_SLACK;
                let answer =
                    tokio::time::timeout_at(wait_until.into(), resends::follow(outcome)).await;
                return match answer {
                    Ok(Some((callback, answer))) => {
                        tracing::Span::current().record("callback", callback.0);
                        let how = "resend answered like its first copy";
                        self.answered_duplicate(&verified, callback, started, how);
                        Ok(answer)
                    }
                    // Not stored (yet): make WeChat try again rather than claim success.
                    _ => Err(Rejection::FirstCopyNotStored),
                };
            }
        };
        let plan = self.plan(&verified).await?;
        let answer_pending_ms = plan.relaying().then(|| {
            let left = deadline.saturating_duration_since(Instant::now());
            u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
        });
        let storing = self.shared.traces.child(&verified.traced, "store");
        let stored = self
            .shared
            .store
            .accept(new_callback(
                &verified,
                &plan,
                answer_pending_ms,
                &self.instance,
            ))
            .await;
        if let Err(e) = &stored {
            storing.fail(e.to_string());
        }
        drop(storing);
        let stored = stored?;
        let (callback, outcome) = match &stored {
            Accepted::New { callback, .. } => (*callback, "accepted"),
            Accepted::Duplicate { callback, .. } => (*callback, "duplicate"),
        };
        verified.traced.set("wechat_fanout.callback", callback.0);
        verified.traced.set("wechat_fanout.outcome", outcome);
        let (callback, waiting) = match stored {
            Accepted::New {
                callback, waiting, ..
            } => (callback, waiting),
            Accepted::Duplicate {
                callback,
                answer,
                answer_pending,
            } => {
                // Recorded once, before waiting: the lines of the wait carry the id too.
                tracing::Span::current().record("callback", callback.0);
                let answer = match (answer, answer_pending) {
                    (Some(answer), _) => answer,
                    (None, Some(pending)) => {
                        let account = &verified.account.id;
                        self.first_answer(account, callback, pending, deadline)
                            .await
                    }
                    (None, None) => success(),
                };
                leader.publish(callback, answer.clone());
                self.answered_duplicate(
                    &verified,
                    callback,
                    started,
                    "resend of a stored callback",
                );
                return Ok(answer);
            }
        };
        // Every later line of this callback, and each delivery line, carries this id.
        tracing::Span::current().record("callback", callback.0);
        self.publish_callback(&verified, &plan);
        let owner = plan.owner;
        let targets: Vec<&Arc<Target>> = plan.jobs.iter().map(|j| j.target).collect();
        let dispatched = self.dispatch(&verified, plan, &waiting);
        let answer = self
            .answer(&verified, callback, owner, dispatched, deadline)
            .await;
        self.log_accepted(&verified, &targets, &answer, started);
        self.finish(
            &verified,
            callback,
            answer,
            leader,
            answer_pending_ms,
            started,
        )
    }

    /// Decides how each matching target's job starts (a job started at once is stored in
    /// flight, so no worker leases it twice), and takes the ids, before anything is stored.
    ///
    /// The reply owner's relay takes from its concurrency budget; without a permit, or while its
    /// circuit is open (it keeps failing), it is delivered like any other target and the answer
    /// is `success` at once. Shadows of a relaying owner are asked at the same moment, unless
    /// their own circuit is open. Other targets get their job handed straight to their worker
    /// when its handoff has room: the worker then needs no lease and no second copy of the body.
    async fn plan<'a>(&self, verified: &'a Verified) -> Result<Plan<'a>, Rejection> {
        let Verified {
            account,
            envelope,
            authorizer,
            ..
        } = verified;
        let owner = account.owner(envelope, authorizer.as_deref());
        let now = now_ms();
        // An owner that cannot answer now (its circuit open; a listen target nobody is
        // connected to) does not hold WeChat's answer, and nor do its shadows.
        let mut owner_permit = owner
            .filter(|p| p.plumbing.breaker.open_for(now).is_none() && self.reachable(p))
            .and_then(|p| p.plumbing.permits.clone().try_acquire_owned().ok());
        let shadows: Vec<&Arc<Target>> = match (owner, &owner_permit) {
            (Some(owner), Some(_)) => account
                .shadows(owner)
                .filter(|s| s.plumbing.breaker.open_for(now).is_none())
                .collect(),
            _ => Vec::new(),
        };
        let matched = account
            .targets
            .iter()
            .filter(|t| t.accepts(envelope, authorizer.as_deref()));
        let starts: Vec<(&Arc<Target>, Start)> = matched
            .map(|target| {
                let relay = owner
                    .is_some_and(|p| Arc::ptr_eq(target, p))
                    .then(|| owner_permit.take())
                    .flatten();
                // Not handed to this process's worker, which sends to its own clients only: a
                // client connected to another instance (or later) has that instance's worker
                // find the job in the store. The owner's reply is asked of it, though.
                if relay.is_none() && !self.worked_here(target) {
                    return (target, Start::Stored);
                }
                // A lane-ordered job (never an owner or a shadow: refused at load) is handed
                // off like any other, under a lease the store grants only if its lane has no
                // open job (on any instance): else it waits there, and is not started here.
                let shadow = shadows
                    .iter()
                    .any(|s| Arc::ptr_eq(s, target))
                    .then(|| target.plumbing.permits.clone().try_acquire_owned().ok())
                    .flatten();
                let start = match (relay, shadow) {
                    (Some(permit), _) => Start::Relay(permit),
                    (None, Some(permit)) => Start::Shadow(permit),
                    (None, None) => match target.plumbing.handoff.clone().try_reserve_owned() {
                        Ok(handoff) => Start::Handoff(handoff),
                        Err(_) => Start::Stored,
                    },
                };
                (target, start)
            })
            .collect();
        // Made before the write, so a write sent twice (a reconnect) carries the same ids.
        let mut ids = (self.shared.store)
            .next_ids(1 + starts.len())
            .await?
            .into_iter();
        let callback = CallbackId(ids.next().unwrap_or_default());
        let jobs = starts
            .into_iter()
            .zip(ids)
            .map(|((target, start), id)| Planned {
                lease: (!matches!(start, Start::Stored)).then(new_lease_token),
                target,
                start,
                id: JobId(id),
            })
            .collect();
        Ok(Plan {
            callback,
            jobs,
            owner,
        })
    }

    /// Before any job starts, so the console has the row when the first attempt ends.
    fn publish_callback(&self, verified: &Verified, plan: &Plan<'_>) {
        let envelope = &verified.envelope;
        self.shared.events.publish(Event::Callback(CallbackEvent {
            at_ms: now_ms(),
            account: verified.account.id.to_string(),
            callback: plan.callback.0,
            msg_type: envelope.msg_type.clone(),
            event: envelope.event.clone(),
            msg_id: envelope.msg_id.clone(),
            jobs: (plan.jobs.iter())
                .map(|job| JobRef {
                    job: job.id.0,
                    target: job.target.key.target.to_string(),
                })
                .collect(),
            from: (verified.content.is_some())
                .then(|| envelope.from_user_name.clone())
                .flatten(),
            content: verified.content.clone(),
        }));
    }

    /// Starts each stored job as planned, but those `waiting` behind their lane; returns the
    /// owner's job to relay and the shadows' attempts to compare.
    fn dispatch<'a>(
        &self,
        verified: &Verified,
        plan: Plan<'a>,
        waiting: &[JobId],
    ) -> Dispatched<'a> {
        let mut dispatched = Dispatched {
            relay: None,
            shadowed: Vec::new(),
        };
        let leases = &self.shared.leases;
        for Planned {
            target,
            start,
            id,
            lease,
        } in plan.jobs
        {
            if waiting.contains(&id) {
                // Its handoff place goes back unused (dropped); the store lets it go when the
                // job before it in its lane ends, and the worker then leases it.
                continue;
            }
            let job = Job {
                id,
                callback: plan.callback,
                key: target.key.clone(),
                lease: lease.unwrap_or(0),
                attempts: 0,
                retry_base: 0,
                request: verified.replay.clone(),
                lane: lane_for(target, verified).map(Arc::from),
            };
            match start {
                Start::Relay(permit) => {
                    leases.hold(&job);
                    dispatched.relay = Some((target, permit, job));
                }
                Start::Shadow(permit) => {
                    leases.hold(&job);
                    let answer = self.start_attempt(target.clone(), permit, job);
                    dispatched.shadowed.push((target.clone(), answer));
                }
                Start::Handoff(handoff) => {
                    // Held before it is sent: the worker may be done with it at once.
                    leases.hold(&job);
                    let (id, lease) = (job.id, job.lease);
                    if handoff.send(job).is_closed() {
                        // The worker is stopping: it returns the jobs it still drains to the
                        // store as due, and one it no longer drains is due once its lease runs
                        // out. Neither needs renewing, and nothing here would let go of it.
                        leases.let_go(id, lease);
                    }
                }
                Start::Stored => target.plumbing.wake.notify_one(),
            }
        }
        dispatched
    }

    /// What WeChat gets: the owner's answer, if it comes by the deadline, else `success`. A
    /// late answer goes to the late-reply rescue, and the shadows' are compared with the one
    /// WeChat got, both after this returns.
    async fn answer(
        &self,
        verified: &Verified,
        callback: CallbackId,
        owner: Option<&Arc<Target>>,
        dispatched: Dispatched<'_>,
        deadline: Instant,
    ) -> Option<Answer> {
        let account = &verified.account;
        let (relayed, late) = match dispatched.relay {
            Some((owner, permit, job)) => self.relay(owner, permit, job, deadline).await,
            None => {
                if owner.is_some() {
                    self.shared.metrics.primary(&account.id, "skipped");
                }
                (None, None)
            }
        };
        // WeChat gets `success` now; the owner's answer, if it still comes, can only reach the
        // user through the customer-service API (`late_replies`).
        if let (Some(late), Some(sender)) = (late, &account.late_replies) {
            let rescue = rescue::late_reply(
                self.shared.store.clone(),
                self.shared.metrics.clone(),
                account.clone(),
                sender.clone(),
                callback,
                verified.envelope.from_user_name.clone(),
                late,
            );
            self.shared.in_flight.spawn(rescue.in_current_span());
        }
        if let (false, Some(owner)) = (dispatched.shadowed.is_empty(), owner) {
            let compare = shadow::compare(
                self.shadows.clone(),
                account.clone(),
                owner.key.target.clone(),
                callback,
                relayed
                    .as_ref()
                    .map_or_else(|| success().body, |a| a.body.clone()),
                dispatched.shadowed,
                deadline,
            );
            self.shared.in_flight.spawn(compare.in_current_span());
        }
        relayed
    }

    /// The line of an accepted callback; the openid and the dedupe key (which embeds it) as a
    /// keyed hash unless `log.show_user_ids` is set.
    fn log_accepted(
        &self,
        verified: &Verified,
        targets: &[&Arc<Target>],
        relayed: &Option<Answer>,
        started: Instant,
    ) {
        let Verified {
            account, envelope, ..
        } = verified;
        info!(
            msg_type = envelope.msg_type.as_deref().unwrap_or("-"),
            event = envelope.event.as_deref().unwrap_or("-"),
            user = %account.user_ids.show(envelope.from_user_name.as_deref().unwrap_or("-")),
            dedupe_key = %account.user_ids.show(&verified.key.key),
            targets = %TargetNames(targets),
            outcome = "accepted",
            answer = answered(relayed),
            elapsed_us = started.elapsed().as_micros() as u64,
            "callback"
        );
    }

    /// Publishes and counts the answer, hands it to resends here, and saves it for resends
    /// elsewhere when they were told one may come.
    fn finish(
        &self,
        verified: &Verified,
        callback: CallbackId,
        relayed: Option<Answer>,
        leader: Leader,
        answer_pending_ms: Option<u64>,
        started: Instant,
    ) -> Result<Answer, Rejection> {
        let account = &verified.account;
        self.shared.events.publish(Event::Answered {
            callback: callback.0,
            answer: answered(&relayed).to_owned(),
        });
        let answer = relayed.unwrap_or_else(success);
        leader.publish(callback, answer.clone());
        if answer_pending_ms.is_some() {
            // Resends were told an answer may come (`answer_pending`): save the one WeChat got,
            // the owner's or `success` when it did not answer in time, so that copies waiting
            // on other instances stop at once with the same bytes. Keep leading until it is
            // saved, so no resend here can miss it.
            let store = self.shared.store.clone();
            let saved = answer.clone();
            let account_id = account.id.clone();
            self.shared.in_flight.spawn(async move {
                if let Err(e) = store.save_answer(&account_id, callback, saved).await {
                    warn!(error = %e, "could not save the answer; a resend will get success");
                }
                drop(leader);
            });
        }
        let metrics = &self.shared.metrics;
        metrics.callback(&account.id, CallbackOutcome::Accepted);
        metrics.answered(&account.id, started.elapsed().as_secs_f64());
        Ok(answer)
    }

    /// A resend answered like its first copy (`how`: which way): its log line, its console line
    /// (the ids of what was resent, nothing personal) and its metrics. The caller has recorded
    /// the callback's id in the span.
    fn answered_duplicate(
        &self,
        verified: &Verified,
        callback: CallbackId,
        started: Instant,
        how: &'static str,
    ) {
        let Verified {
            account, envelope, ..
        } = verified;
        info!(dedupe_key = %account.user_ids.show(&verified.key.key), outcome = "duplicate", "{how}");
        self.shared.events.publish(Event::Duplicate {
            at_ms: now_ms(),
            account: account.id.to_string(),
            callback: callback.0,
            msg_type: envelope.msg_type.clone(),
            event: envelope.event.clone(),
            msg_id: envelope.msg_id.clone(),
        });
        let metrics = &self.shared.metrics;
        metrics.callback(&account.id, CallbackOutcome::Duplicate);
        metrics.answered(&account.id, started.elapsed().as_secs_f64());
    }

    /// The answer a resend gets while the first copy of its callback may still be relaying the
    /// owner's answer, here or on another instance: polls the store for the answer the first
    /// copy saves, until it is due (`pending`, by the store's clock, plus a little for the save
    /// to land) or this copy's own deadline passes. Then `success`: the callback is stored, and a
    /// 5xx would only make WeChat resend it again.
    async fn first_answer(
        &self,
        account: &str,
        callback: CallbackId,
        pending: Duration,
        deadline: Instant,
    ) -> Answer {
        // Well inside the 503 that `callback` answers at `deadline + FOLLOWER_SLACK` at the
        // earliest.
        let until = (Instant::now() + pending + FOLLOWER_SLACK).min(deadline + FOLLOWER_SLACK / 2);
        let store = &self.shared.store;
        loop {
            match tokio::time::timeout_at(until.into(), store.answer(account, callback)).await {
                Ok(Ok(Some(answer))) => {
                    tracing::debug!("the first copy's answer arrived");
                    return answer;
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "could not read the first copy's answer"),
                Err(_) => break,
            }
            if Instant::now() + ANSWER_POLL >= until {
                break;
            }
            tokio::time::sleep(ANSWER_POLL).await;
        }
        info!("the first copy's answer did not come in time; answering success");
        success()
    }
}

/// How often a resend polls the store for the answer of its first copy on another instance.
const ANSWER_POLL: Duration = Duration::from_millis(25);

/// The new callback and its jobs as the store takes them.
fn new_callback(
    verified: &Verified,
    plan: &Plan<'_>,
    answer_pending_ms: Option<u64>,
    instance: &Arc<str>,
) -> NewCallback {
    NewCallback {
        id: plan.callback,
        account: verified.account.id.clone(),
        dedupe_key: verified.key.key.clone(),
        legacy_dedupe_key: verified.key.legacy.clone(),
        received_at_ms: now_ms(),
        msg_type: verified.envelope.msg_type.clone(),
        event: verified.envelope.event.clone(),
        msg_id: verified.envelope.msg_id.clone(),
        sender: (verified.envelope.from_user_name.as_deref())
            .filter(|user| !user.is_empty())
            .map(|user| verified.account.user_hash.hex(user)),
        instance: Some(instance.clone()),
        request: verified.replay.clone(),
        jobs: (plan.jobs.iter())
            .map(|job| NewJob {
                id: job.id,
                target: job.target.key.target.clone(),
                lease: job.lease,
                ordered: lane_for(job.target, verified).is_some(),
            })
            .collect(),
        answer_pending_ms,
    }
}

/// The lane `target` delivers the callback in: its lane, for a target in per-user order.
fn lane_for<'v>(target: &Target, verified: &'v Verified) -> Option<&'v str> {
    (verified.replay.lane.as_deref()).filter(|_| target.settings.order == Order::PerUser)
}

/// What WeChat got, in a word: `relayed` (the owner's answer) or `success`.
fn answered(relayed: &Option<Answer>) -> &'static str {
    if relayed.is_some() {
        "relayed"
    } else {
        "success"
    }
}

/// `bot,crm`: the names of the targets a callback goes to, written only when its line is logged.
struct TargetNames<'a>(&'a [&'a Arc<Target>]);

impl std::fmt::Display for TargetNames<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, target) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&target.key.target)?;
        }
        Ok(())
    }
}
