//! The WeChat-facing server: request in, answer out.
//!
//! `/wechat/{account}`: GET answers the URL-verification handshake locally; POST runs
//! verify → buffer → dedupe → persist → reply. The answer is `success` once the callback and its
//! jobs are stored, or the reply owner's 2xx answer when it comes within the reply deadline (the
//! owner: [`crate::routing::replies`]). Its shadows are asked at the same moment and compared
//! ([`crate::ingress::shadow`]); its answer after the deadline may be rescued ([`crate::ingress::rescue`]). Other
//! targets are never waited for: their jobs are stored due and their workers are woken.
//!
//! Once a callback is verified, the rest of its handling runs in its own task, so a client that
//! hangs up cannot leave a stored callback half-handled.

mod body;
pub mod rejection;
pub mod rescue;
mod resends;
pub mod shadow;
pub mod sources;

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::mpsc::OwnedPermit;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::config::ServerConfig;
use crate::events::{CallbackEvent, Event, EventFeed, JobRef};
use crate::metrics::{CallbackOutcome, Metrics};
use crate::outbound::{Attempt, Downstream, now_ms};
use crate::routing::{Account, Routes, Target};
use crate::shutdown::InFlight;
use crate::store::leases::Leases;
use crate::store::{
    Accepted, Answer, CallbackId, Job, NewCallback, NewJob, Replay, Store, new_lease_token,
};
use crate::telemetry::event_at;
use crate::wechat::authorizer;
use crate::wechat::{
    CallbackQuery, DedupeKey, Envelope, Kind, dedupe_key, open_callback, verify_url,
};
use rejection::Rejection;
use resends::{Resends, Role};
use shadow::ShadowLog;
use sources::Sources;

const SUCCESS: &[u8] = b"success";
const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
/// How long past the leader's deadline a concurrent copy waits for the leader's answer: the
/// leader publishes as soon as its deadline passes, so this covers scheduling, not work.
const FOLLOWER_SLACK: Duration = Duration::from_millis(200);
/// WeChat gives up on an answer after 5 s; whatever happens, answer a little before that.
const ANSWER_WITHIN: Duration = Duration::from_millis(4800);
/// How often a resend polls the store for the answer of its first copy on another instance.
const ANSWER_POLL: Duration = Duration::from_millis(25);

/// Everything a request needs, shared by all connections.
pub struct Ingress {
    routes: Arc<ArcSwap<Routes>>,
    store: Arc<dyn Store>,
    downstream: Downstream,
    settings: ServerConfig,
    resends: Arc<Resends>,
    /// Connections, primary attempts that outlive their request, and answers being saved.
    in_flight: InFlight,
    /// Jobs stored in flight (relayed or handed over) are held here until their attempt ends.
    leases: Leases,
    metrics: Arc<Metrics>,
    /// Accepted and rejected callbacks, for the live console.
    events: Arc<dyn EventFeed>,
    /// Trusted proxies and WeChat's callback IPs, for accounts with `allowed_sources`.
    sources: Arc<Sources>,
    /// Where shadow targets' comparisons are counted and their differences kept.
    shadows: Arc<ShadowLog>,
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Ingress {
    // Each is one of the process's shared parts, handed in by `run_with`; a struct of them
    // would only name the same ten things again.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        routes: Arc<ArcSwap<Routes>>,
        store: Arc<dyn Store>,
        downstream: Downstream,
        settings: ServerConfig,
        in_flight: InFlight,
        leases: Leases,
        metrics: Arc<Metrics>,
        events: Arc<dyn EventFeed>,
        sources: Arc<Sources>,
        shadows: Arc<ShadowLog>,
    ) -> Ingress {
        Ingress {
            routes,
            store,
            downstream,
            settings,
            resends: Arc::default(),
            in_flight,
            leases,
            metrics,
            events,
            sources,
            shadows,
        }
    }

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: IpAddr,
    ) -> Response<Full<Bytes>> {
        let started = Instant::now();
        // Kept for the rejection line; a clone of the request's URI shares its bytes.
        let uri = request.uri().clone();
        let (account, authorizer) = match account_id(uri.path()) {
            Some((account, authorizer)) => (Some(account), authorizer),
            None => (None, None),
        };
        let method = request.method().clone();
        match self
            .route(request, account, authorizer, peer, started)
            .await
        {
            Ok(response) => response,
            Err(rejection) => {
                let reason = rejection.reason();
                // An unknown id is the caller's text: never a metric label (unbounded cardinality).
                let label = match rejection {
                    Rejection::UnknownAccount => "",
                    _ => account.unwrap_or(""),
                };
                self.metrics
                    .callback(label, CallbackOutcome::Rejected(reason));
                self.events.publish(Event::Rejected {
                    at_ms: now_ms(),
                    account: if label.is_empty() { "-" } else { label }.to_owned(),
                    reason: reason.to_owned(),
                });
                let account = account.unwrap_or("-");
                event_at!(rejection.level(), account, %method, reason, error = %rejection, "rejected");
                let mut response = text(rejection.status(), format!("{rejection}\n"));
                if matches!(rejection, Rejection::Method) {
                    response
                        .headers_mut()
                        .insert(ALLOW, http::HeaderValue::from_static("GET, POST"));
                }
                response
            }
        }
    }

    async fn route(
        self: &Arc<Self>,
        request: Request<Incoming>,
        account: Option<&str>,
        authorizer: Option<&str>,
        peer: IpAddr,
        started: Instant,
    ) -> Result<Response<Full<Bytes>>, Rejection> {
        let account = {
            let routes = self.routes.load();
            let id = account.ok_or(Rejection::UnknownAccount)?;
            routes
                .account(id)
                .cloned()
                .ok_or(Rejection::UnknownAccount)?
        };
        // `/wechat/{id}/{authorizer_appid}`: an open platform's message URL, nobody else's.
        if authorizer.is_some_and(|appid| {
            account.credentials.kind != Kind::OpenPlatform || !authorizer::is_app_id(appid)
        }) {
            return Err(Rejection::UnknownAccount);
        }
        // Before anything else is looked at: a refused client is never stored.
        if let Some(allowed) = &account.allowed {
            self.sources
                .check(&account.id, allowed, peer, request.headers())?;
        }
        // Before the body is read: a target gets the query appended to its URL, and a query this
        // long is never WeChat's; storing it would answer 200 for what can never be delivered.
        let max_query = self.settings.max_query_bytes;
        if request.uri().query().is_some_and(|q| q.len() > max_query) {
            return Err(Rejection::QueryTooLong(max_query));
        }
        match *request.method() {
            Method::GET => {
                let query = CallbackQuery::parse(request.uri().query().unwrap_or(""))?;
                let echo = verify_url(&account.credentials, &query)?;
                self.check_freshness(&query)?;
                info!(account = &*account.id, "URL verification answered");
                Ok(text(StatusCode::OK, echo))
            }
            Method::POST => self.callback(account, authorizer, request, started).await,
            _ => Err(Rejection::Method),
        }
    }

    async fn callback(
        self: &Arc<Self>,
        account: Arc<Account>,
        authorizer: Option<&str>,
        request: Request<Incoming>,
        started: Instant,
    ) -> Result<Response<Full<Bytes>>, Rejection> {
        let (parts, body) = request.into_parts();
        let content_type = replayable_content_type(&parts.headers)?;
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = body::read(
            body,
            declared,
            self.settings.max_body_bytes,
            self.settings.body_read_timeout_ms.duration(),
        )
        .await?;
        let raw_query = parts.uri.query().unwrap_or("");
        let query = CallbackQuery::parse(raw_query)?;
        let opened = open_callback(&account.credentials, &query, &body)?;
        self.check_freshness(&query)?;
        // Open platform: the authorized account from the message URL's path, or the one an
        // authorization event names; its callbacks dedupe apart from other authorizers'.
        let authorizer = authorizer.map(str::to_owned).or_else(|| {
            (opened.envelope.authorizer_appid.as_deref())
                .filter(|appid| authorizer::is_app_id(appid))
                .map(str::to_owned)
        });
        let scope = match (&authorizer, opened.envelope.info_type.is_none()) {
            (Some(appid), true) => Cow::Owned(format!("{}/{appid}", account.id)),
            _ => Cow::Borrowed(&*account.id),
        };
        let key = dedupe_key(&scope, &opened.envelope, opened.message(&body));
        let content = (self.events.carries_content())
            .then(|| String::from_utf8_lossy(opened.message(&body)).into_owned());
        let replay = Arc::new(Replay {
            query: raw_query.to_owned(),
            content_type,
            body,
            authorizer: authorizer.clone(),
        });
        let this = self.clone();
        let span = info_span!(
            "callback",
            account = &*account.id,
            callback = tracing::field::Empty
        );
        // From here on the callback may be stored: finish even if WeChat hangs up.
        let handled = tokio::spawn(
            async move {
                let verified = Verified {
                    account,
                    envelope: opened.envelope,
                    authorizer,
                    key,
                    replay,
                    content,
                };
                this.accept(verified, started).await
            }
            .instrument(span),
        );
        // A stalled store must not keep WeChat waiting past its 5 s: answer 503 by then and let
        // the task finish (stored callbacks are delivered; the resend gets the stored answer).
        let reply_deadline = started + self.settings.reply_deadline_ms.duration();
        let answer_by = (started + ANSWER_WITHIN).max(reply_deadline + FOLLOWER_SLACK);
        match tokio::time::timeout_at(answer_by.into(), handled).await {
            Ok(Ok(result)) => result.map(|answer| answer_response(&answer)),
            Ok(Err(e)) => {
                error!(error = %e, "callback task failed");
                Err(Rejection::Internal)
            }
            Err(_) => Err(Rejection::StoreTooSlow),
        }
    }

    /// With `max_timestamp_skew_secs` set, refuses a (verified) request whose `timestamp` is
    /// further than that from the local clock: callbacks and the GET handshake alike.
    fn check_freshness(&self, query: &CallbackQuery<'_>) -> Result<(), Rejection> {
        match self.settings.max_timestamp_skew_secs {
            0 => Ok(()),
            max_skew_secs => check_freshness(query.timestamp.as_deref(), max_skew_secs),
        }
    }

    async fn accept(
        self: Arc<Self>,
        verified: Verified,
        started: Instant,
    ) -> Result<Answer, Rejection> {
        let Verified {
            account,
            envelope,
            authorizer,
            key,
            replay,
            content,
        } = verified;
        let deadline = started + self.settings.reply_deadline_ms.duration();
        let answered_duplicate = |callback, how| {
            self.answered_duplicate(&account, &key.key, callback, &envelope, started, how);
        };
        let leader = match self.resends.join(&key.key, deadline) {
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
                        tracing::Span::current().record("callback", callback);
                        answered_duplicate(callback, "resend answered like its first copy");
                        Ok(answer)
                    }
                    // Not stored (yet): make WeChat try again rather than claim success.
                    _ => Err(Rejection::Store(
                        crate::store::StoreError::FirstCopyNotStored,
                    )),
                };
            }
        };
        let matched: Vec<&Arc<Target>> = account
            .targets
            .iter()
            .filter(|t| t.accepts(&envelope, authorizer.as_deref()))
            .collect();
        // The reply owner of this callback's route (`replies_to`, `primary`), if it gets it.
        let primary = account.owner(&envelope, authorizer.as_deref());
        // How each job starts, decided before it is stored (a job started at once is stored in
        // flight, so no worker leases it twice). The primary relay takes from the primary's
        // concurrency budget; without a permit, or while its circuit is open (it keeps failing),
        // the primary is delivered like any other target and the answer is `success` at once.
        // Other targets get their job handed straight to their worker when its handoff has room:
        // the worker then needs no lease and no second copy of the body.
        let now = now_ms();
        let mut owner_permit = primary
            .filter(|p| p.breaker.open_for(now).is_none())
            .and_then(|p| p.permits.clone().try_acquire_owned().ok());
        // Shadows of a relaying owner are asked at the same moment, with the same deadline,
        // unless their own circuit is open.
        let shadows: Vec<&Arc<Target>> = match (primary, &owner_permit) {
            (Some(owner), Some(_)) => account
                .shadows(owner)
                .filter(|s| s.breaker.open_for(now).is_none())
                .collect(),
            _ => Vec::new(),
        };
        let starts: Vec<Start> = matched
            .iter()
            .map(|t| {
                let owner = primary.is_some_and(|p| Arc::ptr_eq(t, p));
                let relay = if owner { owner_permit.take() } else { None };
                let shadow = shadows
                    .iter()
                    .any(|s| Arc::ptr_eq(s, t))
                    .then(|| t.permits.clone().try_acquire_owned().ok())
                    .flatten();
                match (relay, shadow) {
                    (Some(permit), _) => Start::Relay(permit),
                    (None, Some(permit)) => Start::Shadow(permit),
                    (None, None) => match t.handoff.clone().try_reserve_owned() {
                        Ok(handoff) => Start::Handoff(handoff),
                        Err(_) => Start::Stored,
                    },
                }
            })
            .collect();
        // Made before the write, so a write sent twice (a reconnect) carries the same ids.
        let mut ids = self.store.next_ids(1 + matched.len()).await?.into_iter();
        let callback_id = ids.next().unwrap_or_default();
        let jobs: Vec<NewJob> = matched
            .iter()
            .zip(&starts)
            .zip(ids)
            .map(|((t, start), id)| NewJob {
                id,
                target: t.key.target.clone(),
                lease: (!matches!(start, Start::Stored)).then(new_lease_token),
            })
            .collect();
        let relaying = starts.iter().any(|s| matches!(s, Start::Relay(_)));
        let answer_pending_ms = relaying.then(|| {
            u64::try_from(
                deadline
                    .saturating_duration_since(Instant::now())
                    .as_millis(),
            )
            .unwrap_or(u64::MAX)
        });
        let accepted = self
            .store
            .accept(NewCallback {
                id: callback_id,
                account: account.id.clone(),
                dedupe_key: key.key.clone(),
                legacy_dedupe_key: key.legacy.clone(),
                received_at_ms: now_ms(),
                msg_type: envelope.msg_type.clone(),
                event: envelope.event.clone(),
                request: replay.clone(),
                jobs: jobs.clone(),
                answer_pending_ms,
            })
            .await?;
        let (callback, job_ids) = match accepted {
            Accepted::Duplicate {
                answer,
                callback,
                answer_pending,
            } => {
                // Recorded once, before waiting: the lines of the wait carry the id too.
                tracing::Span::current().record("callback", callback);
                let answer = match (answer, answer_pending) {
                    (Some(answer), _) => answer,
                    (None, Some(pending)) => {
                        self.first_answer(&account.id, callback, pending, deadline)
                            .await
                    }
                    (None, None) => success(),
                };
                leader.publish(callback, answer.clone());
                answered_duplicate(callback, "resend of a stored callback");
                return Ok(answer);
            }
            Accepted::New { callback, jobs } => (callback, jobs),
        };
        // Every later line of this callback, and each delivery line, carries this id.
        tracing::Span::current().record("callback", callback);
        // Before any job starts, so the console has the row when the first attempt ends.
        self.events.publish(Event::Callback(CallbackEvent {
            at_ms: now_ms(),
            account: account.id.to_string(),
            callback,
            msg_type: envelope.msg_type.clone(),
            event: envelope.event.clone(),
            msg_id: envelope.msg_id.clone(),
            jobs: (matched.iter().zip(&job_ids))
                .map(|(t, &job)| JobRef {
                    job,
                    target: t.key.target.to_string(),
                })
                .collect(),
            from: content
                .is_some()
                .then(|| envelope.from_user_name.clone())
                .flatten(),
            content,
        }));
        let new_job = |target: &Target, id, lease: Option<u64>| Job {
            id,
            callback,
            key: target.key.clone(),
            lease: lease.unwrap_or(0),
            attempts: 0,
            retry_base: 0,
            request: replay.clone(),
        };
        let mut relay = None;
        let mut shadowed = Vec::new();
        for (((target, id), start), stored) in matched.iter().zip(job_ids).zip(starts).zip(&jobs) {
            let job = new_job(target, id, stored.lease);
            match start {
                Start::Relay(permit) => {
                    self.leases.hold(&job);
                    relay = Some((*target, permit, job))
                }
                Start::Shadow(permit) => {
                    self.leases.hold(&job);
                    let answer = self.start_attempt((*target).clone(), permit, job);
                    shadowed.push(((*target).clone(), answer));
                }
                Start::Handoff(handoff) => {
                    // Held before it is sent: the worker may be done with it at once.
                    self.leases.hold(&job);
                    let (id, lease) = (job.id, job.lease);
                    if handoff.send(job).is_closed() {
                        // The worker is stopping: it returns the jobs it still drains to the
                        // store as due, and one it no longer drains is due once its lease runs
                        // out. Neither needs renewing, and nothing here would let go of it.
                        self.leases.let_go(id, lease);
                    }
                }
                Start::Stored => target.wake.notify_one(),
            }
        }
        let (relayed, late) = match relay {
            Some((primary, permit, job)) => self.relay(primary, permit, job, deadline).await,
            None => {
                if primary.is_some() {
                    self.metrics.primary(&account.id, "skipped");
                }
                (None, None)
            }
        };
        // WeChat gets `success` now; the owner's answer, if it still comes, can only reach the
        // user through the customer-service API (`late_replies`).
        if let (Some(late), Some(sender)) = (late, &account.late_replies) {
            let rescue = rescue::late_reply(
                self.store.clone(),
                self.metrics.clone(),
                account.clone(),
                sender.clone(),
                callback,
                envelope.from_user_name.clone(),
                late,
            );
            self.in_flight.spawn(rescue.in_current_span());
        }
        if let (false, Some(owner)) = (shadowed.is_empty(), primary) {
            let compare = shadow::compare(
                self.shadows.clone(),
                account.clone(),
                owner.key.target.clone(),
                callback,
                relayed
                    .as_ref()
                    .map_or_else(|| success().body, |a| a.body.clone()),
                shadowed,
                deadline,
            );
            self.in_flight.spawn(compare.in_current_span());
        }
        let answered = if relayed.is_some() {
            "relayed"
        } else {
            "success"
        };
        info!(
            msg_type = envelope.msg_type.as_deref().unwrap_or("-"),
            event = envelope.event.as_deref().unwrap_or("-"),
            // Both embed the openid: a keyed hash unless `log.show_user_ids` is set.
            user = %account.user_ids.show(envelope.from_user_name.as_deref().unwrap_or("-")),
            dedupe_key = %account.user_ids.show(&key.key),
            targets = %TargetNames(&matched),
            outcome = "accepted",
            answer = answered,
            elapsed_us = started.elapsed().as_micros() as u64,
            "callback"
        );
        self.events.publish(Event::Answered {
            callback,
            answer: answered.to_owned(),
        });
        let answer = relayed.unwrap_or_else(success);
        leader.publish(callback, answer.clone());
        if answer_pending_ms.is_some() {
            // Resends were told an answer may come (`answer_pending`): save the one WeChat got,
            // the primary's or `success` when it did not answer in time, so that copies waiting
            // on other instances stop at once with the same bytes. Keep leading until it is
            // saved, so no resend here can miss it.
            let store = self.store.clone();
            let saved = answer.clone();
            let account_id = account.id.clone();
            self.in_flight.spawn(async move {
                if let Err(e) = store.save_answer(&account_id, callback, saved).await {
                    warn!(error = %e, "could not save the answer; a resend will get success");
                }
                drop(leader);
            });
        }
        self.metrics
            .callback(&account.id, CallbackOutcome::Accepted);
        self.metrics
            .answered(&account.id, started.elapsed().as_secs_f64());
        Ok(answer)
    }

    /// A resend answered like its first copy (`how`: which way): its log line, its console line
    /// (the ids of what was resent, nothing personal) and its metrics.
    fn answered_duplicate(
        &self,
        account: &Account,
        key: &str,
        callback: CallbackId,
        envelope: &Envelope,
        started: Instant,
        how: &'static str,
    ) {
        info!(dedupe_key = %account.user_ids.show(key), outcome = "duplicate", "{how}");
        self.events.publish(Event::Duplicate {
            at_ms: now_ms(),
            account: account.id.to_string(),
            callback,
            msg_type: envelope.msg_type.clone(),
            event: envelope.event.clone(),
            msg_id: envelope.msg_id.clone(),
        });
        self.metrics
            .callback(&account.id, CallbackOutcome::Duplicate);
        self.metrics
            .answered(&account.id, started.elapsed().as_secs_f64());
    }

    /// The answer a resend gets while the first copy of its callback may still be relaying the
    /// primary's answer, here or on another instance: polls the store for the answer the first
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
        loop {
            match tokio::time::timeout_at(until.into(), self.store.answer(account, callback)).await
            {
                Ok(Ok(Some(answer))) => {
                    debug!("the first copy's answer arrived");
                    return answer;
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => debug!(error = %e, "could not read the first copy's answer"),
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

    /// Sends `job` now, in its own task that records the outcome like any delivery; the
    /// attempt's result also comes back through the returned channel.
    fn start_attempt(
        &self,
        target: Arc<Target>,
        permit: OwnedSemaphorePermit,
        job: Job,
    ) -> oneshot::Receiver<Attempt> {
        let (reply, answer) = oneshot::channel();
        let store = self.store.clone();
        let downstream = self.downstream.clone();
        let leases = self.leases.clone();
        self.in_flight.spawn(
            async move {
                let attempt = downstream.attempt(&target, &job).await;
                drop(permit);
                let _ = reply.send(attempt.clone());
                downstream.finish(&*store, &target, &job, &attempt).await;
                leases.let_go(job.id, job.lease);
                // A retry may now be scheduled: let the target's worker see when it is due.
                target.wake.notify_one();
            }
            .in_current_span(),
        );
        answer
    }

    /// Sends the primary's job now and waits for its answer until `deadline`; the attempt goes on
    /// (and is recorded) past the deadline, like any delivery, and past it its answer comes
    /// through the returned receiver.
    async fn relay(
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
                    reply: Some((content_type, body)),
                    ..
                })) => ("relayed", Some(Answer { content_type, body }), None),
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
        self.metrics.primary(&target.key.account, outcome);
        (relayed, late)
    }
}

/// Serves `listener` until `shutdown` fires, then lets open connections finish within `grace`.
pub async fn serve(
    listener: TcpListener,
    ingress: Arc<Ingress>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(ingress.settings.header_read_timeout_ms.duration())
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let in_flight = ingress.in_flight.clone();
        let ingress = ingress.clone();
        let service = service_fn(move |request| {
            let ingress = ingress.clone();
            async move { Ok::<_, Infallible>(ingress.handle(request, peer.ip()).await) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        // Tracked, so a connection still open after the grace period is closed, not leaked.
        in_flight.spawn(async move {
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("connections still open after the grace period; closing them");
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

/// A callback whose signature checked out, on its way into the store.
struct Verified {
    account: Arc<Account>,
    envelope: Envelope,
    /// Open platform: the authorized account the callback concerns.
    authorizer: Option<String>,
    key: DedupeKey,
    replay: Arc<Replay>,
    /// The message as text, for a console that shows content (`admin.show_content`).
    content: Option<String>,
}

/// How a new job starts once its callback is stored.
enum Start {
    /// The primary's, sent by ingress now; its answer may become the passive reply.
    Relay(OwnedSemaphorePermit),
    /// A shadow's (`shadow_of`) of the relaying owner, sent by ingress now; only compared.
    Shadow(OwnedSemaphorePermit),
    /// Handed to the target's worker with the request in memory.
    Handoff(OwnedPermit<Job>),
    /// Left in the store as due; the target's worker is rung.
    Stored,
}

/// `/wechat/{id}` (a trailing slash allowed) → `id`; `/wechat/{id}/{authorizer}` → both.
fn account_id(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path.strip_prefix("/wechat/")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (id, authorizer) = match rest.split_once('/') {
        Some((id, authorizer)) => (id, Some(authorizer)),
        None => (rest, None),
    };
    let ok = !id.is_empty() && authorizer.is_none_or(|a| !a.is_empty() && !a.contains('/'));
    ok.then_some((id, authorizer))
}

/// The Content-Type to replay, as WeChat sent it (`text/xml`, `application/json`). Two of them,
/// or one with bytes outside visible ASCII, could not be replayed as received (a stored request
/// keeps one value, as text), and WeChat sends neither: refused rather than altered.
fn replayable_content_type(headers: &http::HeaderMap) -> Result<Option<String>, Rejection> {
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Rejection::ContentType(
            "Content-Type appears more than once",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| Rejection::ContentType("Content-Type is not visible ASCII"))?;
    Ok(Some(value.to_owned()))
}

fn check_freshness(timestamp: Option<&str>, max_skew_secs: u64) -> Result<(), Rejection> {
    let sent: i64 = timestamp
        .and_then(|t| t.parse().ok())
        .ok_or(Rejection::StaleTimestamp)?;
    let now = now_ms() / 1000;
    if sent.abs_diff(now) > max_skew_secs {
        return Err(Rejection::StaleTimestamp);
    }
    Ok(())
}

fn success() -> Answer {
    Answer {
        content_type: Some(TEXT_PLAIN.to_owned()),
        body: Bytes::from_static(SUCCESS),
    }
}

fn answer_response(answer: &Answer) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(answer.body.clone()));
    if let Some(value) = answer
        .content_type
        .as_deref()
        .and_then(|v| http::HeaderValue::from_str(v).ok())
    {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

/// A plain-text response (also the admin API's).
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(TEXT_PLAIN));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_paths() {
        assert_eq!(account_id("/wechat/main"), Some(("main", None)));
        assert_eq!(account_id("/wechat/main/"), Some(("main", None)));
        assert_eq!(account_id("/wechat/"), None);
        assert_eq!(account_id("/wechat/a/b"), Some(("a", Some("b"))));
        assert_eq!(account_id("/wechat/a/b/"), Some(("a", Some("b"))));
        assert_eq!(account_id("/wechat/a/b/c"), None);
        assert_eq!(account_id("/wechat/a//"), None);
        assert_eq!(account_id("/other/main"), None);
    }
}
