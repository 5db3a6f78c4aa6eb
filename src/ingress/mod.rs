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

mod accept;
mod body;
mod listen;
mod pay;
pub mod rejection;
mod relay;
pub mod rescue;
mod resends;
pub mod shadow;
pub mod sources;

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::attempt::Shared;
use crate::clock::now_ms;
use crate::config::ServerConfig;
use crate::events::Event;
use crate::http::text;
use crate::metrics::CallbackOutcome;
use crate::routing::Account;
use crate::store::{Answer, Replay};
use crate::telemetry::event_at;
use crate::telemetry::traces::Traced;
use crate::wechat::{
    CallbackQuery, DedupeKey, Envelope, Kind, dedupe_key, is_app_id, open_callback, verify_url,
};
use rejection::Rejection;
use resends::Resends;
use shadow::ShadowLog;
use sources::Sources;

const SUCCESS: &[u8] = b"success";
/// How long past the leader's deadline a concurrent copy waits for the leader's answer: the
/// leader publishes as soon as its deadline passes, so this covers scheduling, not work.
const FOLLOWER_SLACK: Duration = Duration::from_millis(200);
/// WeChat gives up on an answer after 5 s; whatever happens, answer a little before that.
const ANSWER_WITHIN: Duration = Duration::from_millis(4800);

/// Everything a request needs, shared by all connections.
pub struct Ingress {
    /// The process's shared parts: routes, store, attempts, metrics, events…
    shared: Arc<Shared>,
    settings: ServerConfig,
    /// This instance's name (`server.instance_name`), stored with each callback it accepts.
    instance: Arc<str>,
    resends: Arc<Resends>,
    /// Trusted proxies and WeChat's callback IPs, for accounts with `allowed_sources`.
    sources: Arc<Sources>,
    /// Where shadow targets' comparisons are counted and their differences kept.
    shadows: Arc<ShadowLog>,
    /// Fired at shutdown: the listen targets' WebSockets are closed with a close frame.
    closing: CancellationToken,
    /// Wrong listen tokens per client address: a guesser gets a handful of tries, then one a
    /// second.
    guesses: crate::http::guesses::Guesses,
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Ingress {
    /// The request's body, read once into `Bytes`: bounded by `server.max_body_bytes` (the
    /// declared length refused before a byte is read) and by the read timeout.
    async fn read_body(
        &self,
        headers: &http::HeaderMap,
        incoming: Incoming,
    ) -> Result<Bytes, Rejection> {
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = body::read(
            incoming,
            declared,
            self.settings.max_body_bytes,
            self.settings.body_read_timeout_ms.duration(),
        )
        .await?;
        Ok(body)
    }
    pub fn new(
        shared: Arc<Shared>,
        settings: ServerConfig,
        sources: Arc<Sources>,
        shadows: Arc<ShadowLog>,
        closing: CancellationToken,
    ) -> Ingress {
        Ingress {
            shared,
            instance: Arc::from(settings.instance_name()),
            settings,
            resends: Arc::default(),
            sources,
            shadows,
            closing,
            guesses: crate::http::guesses::Guesses::default(),
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
        if let Some((account, target)) = listen::listen_path(uri.path()) {
            return self.listen(request, account, target, peer).await;
        }
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
                self.shared
                    .metrics
                    .callback(label, CallbackOutcome::Rejected(reason));
                self.shared.events.publish(Event::Rejected {
                    at_ms: now_ms(),
                    account: if label.is_empty() { "-" } else { label }.to_owned(),
                    reason: reason.to_owned(),
                });
                // WeChat Pay's paths answer its FAIL JSON, so that its logs say why.
                let pay = account.is_some_and(|id| {
                    (self.shared.routes.load().account(id)).is_some_and(|a| a.pay.is_some())
                });
                let account = account.unwrap_or("-");
                event_at!(rejection.level(), account, %method, reason, error = %rejection, "rejected");
                let mut response = if pay {
                    pay::fail(rejection.status(), &rejection.to_string())
                } else {
                    text(rejection.status(), format!("{rejection}\n"))
                };
                if matches!(rejection, Rejection::Method) {
                    let allow = if pay { "POST" } else { "GET, POST" };
                    response
                        .headers_mut()
                        .insert(ALLOW, http::HeaderValue::from_static(allow));
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
            let routes = self.shared.routes.load();
            let id = account.ok_or(Rejection::UnknownAccount)?;
            routes
                .account(id)
                .cloned()
                .ok_or(Rejection::UnknownAccount)?
        };
        // `/wechat/{id}/{authorizer_appid}`: an open platform's message URL, nobody else's.
        if authorizer.is_some_and(|appid| {
            account.credentials.kind != Kind::OpenPlatform || !is_app_id(appid)
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
        if let Some(pay) = account.pay.clone() {
            return match *request.method() {
                Method::POST => (self.pay_notification(account, &pay, request, started)).await,
                _ => Err(Rejection::Method),
            };
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
        let body = self.read_body(&parts.headers, body).await?;
        let raw_query = parts.uri.query().unwrap_or("");
        let query = CallbackQuery::parse(raw_query)?;
        let opened = open_callback(&account.credentials, &query, &body)?;
        self.check_freshness(&query)?;
        // Open platform: the authorized account from the message URL's path, or the one an
        // authorization event names; its callbacks dedupe apart from other authorizers'.
        let authorizer = authorizer.map(str::to_owned).or_else(|| {
            (opened.envelope.authorizer_appid.as_deref())
                .filter(|appid| is_app_id(appid))
                .map(str::to_owned)
        });
        let scope = match (&authorizer, opened.envelope.info_type.is_none()) {
            (Some(appid), true) => Cow::Owned(format!("{}/{appid}", account.id)),
            _ => Cow::Borrowed(&*account.id),
        };
        let key = dedupe_key(&scope, &opened.envelope, opened.message(&body));
        let content = (self.shared.events.carries_content())
            .then(|| String::from_utf8_lossy(opened.message(&body)).into_owned());
        let traced = self.shared.traces.callback(&account.id);
        let replay = Arc::new(Replay {
            query: raw_query.to_owned(),
            content_type,
            body,
            authorizer: authorizer.clone(),
            trace: traced.traceparent(),
            headers: Vec::new(),
            lane: (account.lanes.as_ref())
                .map(|lanes| lanes.of(&opened.envelope, authorizer.as_deref())),
        });
        let verified = Verified {
            account,
            envelope: opened.envelope,
            authorizer,
            key,
            replay,
            content,
            traced,
        };
        let answer = self.accept_in_task(verified, started).await?;
        Ok(answer_response(&answer))
    }

    /// Accepts a verified callback in a task of its own, so that it is handled to the end even
    /// if the caller hangs up; its answer, or a 503 before WeChat would give up waiting.
    async fn accept_in_task(
        self: &Arc<Self>,
        verified: Verified,
        started: Instant,
    ) -> Result<Answer, Rejection> {
        let this = self.clone();
        let span = info_span!(
            "callback",
            account = &*verified.account.id,
            callback = tracing::field::Empty
        );
        // From here on the callback may be stored: finish even if WeChat hangs up.
        let handled =
            tokio::spawn(async move { this.accept(verified, started).await }.instrument(span));
        // A stalled store must not keep WeChat waiting past its 5 s: answer 503 by then and let
        // the task finish (stored callbacks are delivered; the resend gets the stored answer).
        let reply_deadline = started + self.settings.reply_deadline_ms.duration();
        let answer_by = (started + ANSWER_WITHIN).max(reply_deadline + FOLLOWER_SLACK);
        match tokio::time::timeout_at(answer_by.into(), handled).await {
            Ok(Ok(result)) => result,
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
}

/// Serves `listener` until `shutdown` fires, then lets open connections finish within `grace`.
pub async fn serve(
    listener: TcpListener,
    ingress: Arc<Ingress>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    // Every connection's task, so that shutdown waits for them within the grace period.
    let connections = tokio_util::task::TaskTracker::new();
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
        let in_flight = ingress.shared.in_flight.clone();
        let ingress = ingress.clone();
        let service = service_fn(move |request| {
            let ingress = ingress.clone();
            async move { Ok::<_, Infallible>(ingress.handle(request, peer.ip()).await) }
        });
        // Upgrades: a listen target's client turns its request into a WebSocket.
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let closing = shutdown.clone();
        // Tracked, so a connection still open after the grace period is closed, not leaked.
        in_flight.spawn(connections.track_future(async move {
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = closing.cancelled() => {
                    // Finish the request in progress, take no other.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        }));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        warn!("connections still open after the grace period; closing them");
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
    /// The callback's root span (traces on), ended when the callback has been answered.
    traced: Traced,
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
        content_type: Some(crate::http::TEXT_PLAIN.to_owned()),
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
