//! The live console in the browser, served by the admin listener: its page (plain HTML, CSS and
//! JavaScript from `console/`, compiled in), its login, the event stream it reads, and the
//! per-target figures of its targets view.
//!
//! - `GET /`, `/console.css`, `/i18n.js` (its words in English and Chinese), `/message.js` (a
//!   message as fields), `/targets.js`, `/history.js` (the stored callbacks: the live view's
//!   first rows, and searched), `/charts.js` (the charts, from `GET /console/charts`),
//!   `/console.js`: the page; it holds no data, so it is always
//!   served.
//! - `POST /console/login` `{"token": …}`: a session cookie; `POST /console/logout` ends it.
//! - `GET /console/session`: whether the caller is in, the CSRF token, whether content is shown.
//! - `GET /console/events`: Server-Sent Events, one JSON [`Event`] per message; a client that
//!   cannot keep up gets `{"kind":"dropped","count":n}` instead of what it missed.
//! - `GET /console/targets`: queue depths, recent outcomes, circuit breaker, last error, and how
//!   each target is configured; `GET /console/routes`: each account's reply routes (both in
//!   [`crate::admin`]'s `targets`).
//! - `GET /console/dead-letters/{id}`: one dead letter, its openid and body hidden unless
//!   `admin.show_content`.
//!
//! Access ([`Console::admit`]): with `admin.token` set, everything but health, readiness, the
//! page itself and the login (and `/metrics`, unless `admin.protect_metrics`) needs the token as
//! a bearer token or a session cookie; a request that changes state with a cookie must carry the
//! session's CSRF token. Whatever the auth, a state-changing request from another origin (its
//! `Origin` is not this host) is refused. Wrong tokens are slowed per client address
//! ([`guesses`]): past a few, a request that presents a token gets 429 unchecked.
//!
//! At most `admin.max_event_streams` event streams are open at once: each one costs work on the
//! threads that answer WeChat for every event, so one more gets 503 until one ends.

mod auth;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, COOKIE, HOST, ORIGIN, RETRY_AFTER, SET_COOKIE,
    WWW_AUTHENTICATE,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Either, Full, Limited};
use hyper::body::{Frame, Incoming};
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::http::guesses::Guesses;
pub use auth::{Auth, CSRF_HEADER, Session};

use crate::clock::{now_ms, now_secs};
use crate::config::{AdminConfig, ConfigError};
use crate::events::{Event, EventFeed, Received};
use crate::http::{error as refuse, json};

/// The body of an admin response: whole, or the event stream.
pub type Body = Either<Full<Bytes>, EventStream>;

const INDEX_HTML: &str = include_str!("../../../console/index.html");
const CONSOLE_CSS: &str = include_str!("../../../console/console.css");
const CONSOLE_JS: &str = include_str!("../../../console/console.js");
const I18N_JS: &str = include_str!("../../../console/i18n.js");
const MESSAGE_JS: &str = include_str!("../../../console/message.js");
const TARGETS_JS: &str = include_str!("../../../console/targets.js");
const HISTORY_JS: &str = include_str!("../../../console/history.js");
const CHARTS_JS: &str = include_str!("../../../console/charts.js");

/// A login's body is a small JSON object.
const MAX_LOGIN_BYTES: usize = 4096;
/// What a stream refused for want of room is told: a browser's page retries by itself.
const STREAMS_RETRY_AFTER_S: u32 = 5;
/// A comment line this often keeps idle streams open through proxies and finds closed ones.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Messages queued for one stream's connection; past that, its subscription falls behind.
const STREAM_QUEUE: usize = 64;
/// A stream writes at most this often, everything that came meanwhile in one write: a write per
/// event and stream would cost the threads that answer WeChat a wake-up and a system call for
/// each, while a browser sees no difference.
const STREAM_BATCH: Duration = Duration::from_millis(100);
/// How many minutes of attempt outcomes the targets view keeps per target.
const STATS_MINUTES: usize = 5;

/// The console's share of the admin listener.
#[derive(Debug)]
pub struct Console {
    /// `None`: no token is configured (only a loopback `admin.listen` allows that).
    auth: Option<Auth>,
    protect_metrics: bool,
    /// Carries openids and message content when `admin.show_content` is on.
    feed: Arc<dyn EventFeed>,
    stats: Arc<Mutex<Stats>>,
    /// Ends the event streams when the proxy stops.
    shutdown: CancellationToken,
    /// Wrong tokens per client address, for the whole listener.
    guesses: Guesses,
    /// One permit per event stream that may be open (`admin.max_event_streams`).
    streams: Arc<Semaphore>,
    /// The event streams open now (a metric).
    open_streams: Gauge,
    /// The instance serving the page (`server.instance_name`), shown in its header.
    instance_name: Arc<str>,
}

/// Who is asking, once admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No token is configured.
    Open,
    /// `Authorization: Bearer` with the token.
    Bearer,
    /// The console's session cookie.
    Session(Session),
}

impl Console {
    /// Reads the token (it may come from the environment) and starts counting attempt outcomes.
    pub fn new(
        config: &AdminConfig,
        feed: Arc<dyn EventFeed>,
        open_streams: Gauge,
        shutdown: CancellationToken,
        instance_name: &str,
    ) -> Result<Console, ConfigError> {
        let auth = config.token()?.map(|token| Auth::new(&token));
        let stats = Arc::new(Mutex::new(Stats::default()));
        tokio::spawn(count_outcomes(
            feed.subscribe(),
            stats.clone(),
            shutdown.clone(),
        ));
        Ok(Console {
            auth,
            protect_metrics: config.protect_metrics,
            feed,
            stats,
            shutdown,
            guesses: Guesses::default(),
            streams: Arc::new(Semaphore::new(config.max_event_streams)),
            open_streams,
            instance_name: Arc::from(instance_name),
        })
    }

    /// Publishes an operator's action (a replay) to the live view.
    pub fn publish(&self, event: Event) {
        self.feed.publish(event);
    }

    /// `admin.show_content`, as the feed was built with it.
    pub fn show_content(&self) -> bool {
        self.feed.carries_content()
    }

    pub fn protects_metrics(&self) -> bool {
        self.protect_metrics && self.auth.is_some()
    }

    /// The page and its assets, for paths that name one.
    pub fn asset(path: &[&str]) -> Option<Response<Full<Bytes>>> {
        let (body, content_type) = match path {
            [] | ["index.html"] => (INDEX_HTML, "text/html; charset=utf-8"),
            ["console.css"] => (CONSOLE_CSS, "text/css; charset=utf-8"),
            ["console.js"] => (CONSOLE_JS, "text/javascript; charset=utf-8"),
            ["i18n.js"] => (I18N_JS, "text/javascript; charset=utf-8"),
            ["message.js"] => (MESSAGE_JS, "text/javascript; charset=utf-8"),
            ["targets.js"] => (TARGETS_JS, "text/javascript; charset=utf-8"),
            ["history.js"] => (HISTORY_JS, "text/javascript; charset=utf-8"),
            ["charts.js"] => (CHARTS_JS, "text/javascript; charset=utf-8"),
            _ => return None,
        };
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // Everything the page loads comes from here; it is never framed by another site.
        headers.insert(
            "content-security-policy",
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            ),
        );
        headers.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        Some(response)
    }

    /// Lets a request from `peer` through, or says why not (401, 403 for a cross-site or CSRF
    /// failure, 429 for a bearer token from an address that has guessed too often).
    pub fn admit<B>(&self, request: &Request<B>, peer: IpAddr) -> Result<Caller, Refusal> {
        let changes_state = !matches!(*request.method(), Method::GET | Method::HEAD);
        if changes_state && !same_origin(request) {
            return Err(Refusal::CrossOrigin);
        }
        let Some(auth) = &self.auth else {
            return Ok(Caller::Open);
        };
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        if let Some(authorization) = header(AUTHORIZATION.as_str()) {
            self.take_try(peer)?;
            if !auth.is_bearer(authorization) {
                return Err(Refusal::BadToken);
            }
            self.guesses.give_back(peer, Instant::now());
            return Ok(Caller::Bearer);
        }
        let session =
            header(COOKIE.as_str()).and_then(|cookie| auth.session_of(cookie, now_secs()));
        let Some(session) = session else {
            return Err(Refusal::NoToken);
        };
        if changes_state && !header(CSRF_HEADER).is_some_and(|given| auth.is_csrf(&session, given))
        {
            return Err(Refusal::Csrf);
        }
        Ok(Caller::Session(session))
    }

    /// Takes one of `peer`'s tries at a token (see [`guesses`]).
    fn take_try(&self, peer: IpAddr) -> Result<(), Refusal> {
        self.guesses.take(peer, Instant::now()).map_err(|spent| {
            if spent.first {
                warn!(
                    %peer,
                    reason = "guessing",
                    "too many wrong admin tokens from this address: its tries are refused for a while"
                );
            }
            Refusal::Guessing {
                retry_after_s: spent.retry_after.as_secs_f64().ceil().max(1.0) as u32,
            }
        })
    }

    /// `POST /console/login` from `peer`: checks the token and sets the session cookie.
    pub async fn login(
        &self,
        request: Request<Incoming>,
        peer: IpAddr,
    ) -> Result<Response<Full<Bytes>>, Refusal> {
        if !same_origin(&request) {
            return Err(Refusal::CrossOrigin);
        }
        let Some(auth) = &self.auth else {
            return Ok(json(StatusCode::OK, &self.session_info(&Caller::Open)));
        };
        // Before the body is read: a guesser with no tries left costs nothing more.
        self.take_try(peer)?;
        let body = match Limited::new(request.into_body(), MAX_LOGIN_BYTES)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(_) => return Err(Refusal::TooLarge),
        };
        #[derive(serde::Deserialize)]
        struct Login {
            token: String,
        }
        let given = serde_json::from_slice::<Login>(&body).map(|login| login.token);
        if !given.is_ok_and(|token| auth.is_token(&token)) {
            return Err(Refusal::BadToken);
        }
        self.guesses.give_back(peer, Instant::now());
        let (cookie, session) = auth.open_session(now_secs());
        info!("console login");
        let mut response = json(
            StatusCode::OK,
            &self.session_info(&Caller::Session(session)),
        );
        if let Ok(value) = HeaderValue::from_str(&auth::set_cookie(&cookie, auth::SESSION)) {
            response.headers_mut().insert(SET_COOKIE, value);
        }
        Ok(response)
    }

    /// `POST /console/logout`: the browser forgets its cookie. (Only changing the token ends
    /// every session: they hold no server state.)
    pub fn logout(&self) -> Response<Full<Bytes>> {
        let mut response = json(StatusCode::OK, &serde_json::json!({ "logged_out": true }));
        if let Ok(value) = HeaderValue::from_str(&auth::set_cookie("", Duration::ZERO)) {
            response.headers_mut().insert(SET_COOKIE, value);
        }
        response
    }

    /// `GET /console/session`.
    pub fn session(&self, caller: &Caller) -> Response<Full<Bytes>> {
        json(StatusCode::OK, &self.session_info(caller))
    }

    fn session_info(&self, caller: &Caller) -> serde_json::Value {
        serde_json::json!({
            "login_required": self.auth.is_some(),
            "csrf": match caller {
                Caller::Session(session) => session.csrf.as_str(),
                _ => "",
            },
            "expires_s": match caller {
                Caller::Session(session) => Some(session.expires_s),
                _ => None,
            },
            "show_content": self.show_content(),
            "instance_name": &*self.instance_name,
        })
    }

    /// `GET /console/events`: the live stream of this caller, until it hangs up or the proxy
    /// stops; refused while `admin.max_event_streams` are open.
    pub fn events(&self) -> Result<Response<Body>, Refusal> {
        let permit =
            (self.streams.clone().try_acquire_owned()).map_err(|_| Refusal::StreamsFull)?;
        let slot = StreamSlot::new(permit, self.open_streams.clone());
        let (sender, receiver) = mpsc::channel(STREAM_QUEUE);
        tokio::spawn(stream_events(
            self.feed.subscribe(),
            sender,
            self.shutdown.clone(),
            slot,
        ));
        let mut response = Response::new(Either::Right(EventStream { receiver }));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }

    /// Delivered and failed attempts of the last minute and the last few, and the last error,
    /// of one target.
    pub fn recent(&self, account: &str, target: &str) -> Recent {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let minute = now_ms() / 60_000;
        let mut recent = Recent::default();
        if let Some(target) = stats.targets.get(&(account.to_owned(), target.to_owned())) {
            for bucket in &target.minutes {
                if bucket.minute > minute - STATS_MINUTES as i64 {
                    recent.delivered_5m += bucket.delivered;
                    recent.failed_5m += bucket.failed;
                }
                if bucket.minute == minute {
                    recent.delivered_1m += bucket.delivered;
                    recent.failed_1m += bucket.failed;
                }
            }
            recent.last_error = target.last_error.clone();
            recent.last_error_at_ms = target.last_error_at_ms;
        }
        recent
    }
}

/// Why an admin request was not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Host` names a host other than localhost, an IP address or one in `admin.hosts`: 403.
    ForeignHost,
    /// Neither the token nor a valid session: 401.
    NoToken,
    /// A wrong token, as a bearer token or at the login: 401.
    BadToken,
    /// A token from an address that has given too many wrong ones lately, not checked: 429.
    Guessing { retry_after_s: u32 },
    /// A state-changing request (or a login) whose `Origin` is another site: 403.
    CrossOrigin,
    /// A state-changing request with a session cookie but without its CSRF token: 403.
    Csrf,
    /// A login body over [`MAX_LOGIN_BYTES`]: 400.
    TooLarge,
    /// `admin.max_event_streams` event streams are open: 503.
    StreamsFull,
}

impl Refusal {
    /// The label of `admin_refusals_total` and of the log line.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::ForeignHost => "foreign_host",
            Refusal::NoToken => "no_token",
            Refusal::BadToken => "bad_token",
            Refusal::Guessing { .. } => "guessing",
            Refusal::CrossOrigin => "cross_origin",
            Refusal::Csrf => "csrf",
            Refusal::TooLarge => "too_large",
            Refusal::StreamsFull => "event_streams_full",
        }
    }

    pub fn response(self) -> Response<Full<Bytes>> {
        match self {
            Refusal::ForeignHost => refuse(
                StatusCode::FORBIDDEN,
                "this host name is not one of the admin listener's: use its IP address or \
                 localhost, or list the name in admin.hosts",
            ),
            Refusal::NoToken | Refusal::BadToken => {
                let message = if self == Refusal::NoToken {
                    "the admin token is required"
                } else {
                    "wrong token"
                };
                let mut response = refuse(StatusCode::UNAUTHORIZED, message);
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"wechat-fanout admin\""),
                );
                response
            }
            Refusal::Guessing { retry_after_s } => {
                let mut response = refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    &format!(
                        "too many wrong tokens from this address: try again in {retry_after_s} s"
                    ),
                );
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry_after_s));
                response
            }
            Refusal::CrossOrigin => refuse(
                StatusCode::FORBIDDEN,
                "cross-origin requests may not change anything",
            ),
            Refusal::Csrf => refuse(
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token (reload the console)",
            ),
            Refusal::TooLarge => refuse(StatusCode::BAD_REQUEST, "the login body is too large"),
            Refusal::StreamsFull => {
                let mut response = refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "as many event streams as admin.max_event_streams allows are open: close a \
                     console tab, or raise the limit",
                );
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(STREAMS_RETRY_AFTER_S));
                response
            }
        }
    }
}

/// An open event stream's place: given back, and counted down, when its task ends.
#[derive(Debug)]
struct StreamSlot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl StreamSlot {
    fn new(permit: OwnedSemaphorePermit, open: Gauge) -> StreamSlot {
        open.inc();
        StreamSlot {
            _permit: permit,
            open,
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// What the targets view shows of a target's recent attempts.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Recent {
    pub delivered_1m: u64,
    pub failed_1m: u64,
    pub delivered_5m: u64,
    pub failed_5m: u64,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<i64>,
}

#[derive(Debug, Default)]
struct Stats {
    targets: HashMap<(String, String), TargetStats>,
}

#[derive(Debug, Default)]
struct TargetStats {
    minutes: VecDeque<Bucket>,
    last_error: Option<String>,
    last_error_at_ms: Option<i64>,
}

#[derive(Debug)]
struct Bucket {
    minute: i64,
    delivered: u64,
    failed: u64,
}

/// Counts every attempt's outcome per target and minute, from the feed (so, with a feed shared
/// by several instances, theirs too).
async fn count_outcomes(
    mut subscription: crate::events::Subscription,
    stats: Arc<Mutex<Stats>>,
    shutdown: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            received = subscription.next() => received,
            () = shutdown.cancelled() => return,
        };
        let attempt = match received {
            Received::Event(event) => match event.event() {
                Event::Attempt(attempt) => attempt.clone(),
                _ => continue,
            },
            Received::Dropped(n) => {
                warn!(
                    dropped = n,
                    "the targets view missed attempt outcomes (too many at once)"
                );
                continue;
            }
            Received::Closed => return,
        };
        let mut stats = stats.lock().unwrap_or_else(|e| e.into_inner());
        let target = stats
            .targets
            .entry((attempt.account, attempt.target))
            .or_default();
        let minute = attempt.at_ms / 60_000;
        if target.minutes.back().is_none_or(|b| b.minute != minute) {
            target.minutes.push_back(Bucket {
                minute,
                delivered: 0,
                failed: 0,
            });
            if target.minutes.len() > STATS_MINUTES {
                target.minutes.pop_front();
            }
        }
        if let Some(bucket) = target.minutes.back_mut() {
            if attempt.outcome == "delivered" {
                bucket.delivered += 1;
            } else {
                bucket.failed += 1;
            }
        }
        if let Some(error) = attempt.error {
            target.last_error = Some(error);
            target.last_error_at_ms = Some(attempt.at_ms);
        }
    }
}

/// Feeds one event stream: each event's message (written once for all streams), a `dropped`
/// message when this connection fell behind, a comment now and then; what came within
/// [`STREAM_BATCH`] of the last write goes in one. Waiting for a slow connection only makes its
/// own subscription fall behind; publishers never wait. Returns, and frees its `slot`, once the
/// connection is gone.
async fn stream_events(
    mut subscription: crate::events::Subscription,
    sender: mpsc::Sender<Bytes>,
    shutdown: CancellationToken,
    slot: StreamSlot,
) {
    let _slot = slot;
    // Made once, not per event: with many streams, timers and waiters registered anew for every
    // event are work on the threads that answer WeChat. A ping every 15 s, busy or not, is no
    // harm.
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopping = shutdown.cancelled();
    tokio::pin!(stopping);
    // `retry`: the browser reconnects after a second when the connection drops.
    let mut message = Bytes::from_static(b"retry: 1000\n: connected\n\n");
    loop {
        tokio::select! {
            sent = sender.send(message) => if sent.is_err() { return },
            () = &mut stopping => return,
        }
        tokio::select! {
            () = tokio::time::sleep(STREAM_BATCH) => {}
            () = sender.closed() => return,
            () = &mut stopping => return,
        }
        let first = tokio::select! {
            received = subscription.next() => received,
            _ = heartbeat.tick() => {
                message = Bytes::from_static(b": ping\n\n");
                continue;
            }
            () = sender.closed() => return,
            () = &mut stopping => return,
        };
        let Some(first) = sse(first) else { return };
        let Some(more) = subscription.ready() else {
            message = first;
            continue;
        };
        let mut batch = BytesMut::from(&first[..]);
        let mut next = Some(more);
        // Bounded, should events come faster than they are gathered.
        for _ in 0..crate::events::BUFFER {
            let Some(received) = next else { break };
            let Some(bytes) = sse(received) else { return };
            batch.extend_from_slice(&bytes);
            next = subscription.ready();
        }
        message = batch.freeze();
    }
}

/// What a stream sends for what its subscription received; `None` once the feed is gone.
fn sse(received: Received) -> Option<Bytes> {
    match received {
        Received::Event(event) => Some(event.message()),
        Received::Dropped(n) => Some(Bytes::from(format!(
            "data: {{\"kind\":\"dropped\",\"count\":{n}}}\n\n"
        ))),
        Received::Closed => None,
    }
}

/// The body of an event stream: what [`stream_events`] queues, as it comes.
#[derive(Debug)]
pub struct EventStream {
    receiver: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.receiver
            .poll_recv(cx)
            .map(|message| message.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// A request with no `Origin` (scripts, the CLI) or one naming this host (the console itself).
/// Browsers send `Origin` with every cross-origin POST and DELETE.
fn same_origin<B>(request: &Request<B>) -> bool {
    let Some(origin) = request.headers().get(ORIGIN) else {
        return true;
    };
    let host = request.headers().get(HOST).and_then(|v| v.to_str().ok());
    let origin = origin.to_str().unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((origin_host, host), (Some(a), Some(b)) if a.eq_ignore_ascii_case(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri("/dead-letters/1");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap_or_default()
    }

    fn console(token: Option<&str>) -> Console {
        Console {
            auth: token.map(Auth::new),
            protect_metrics: false,
            feed: Arc::new(crate::events::LocalFeed::new(1, false)),
            stats: Arc::default(),
            shutdown: CancellationToken::new(),
            guesses: Guesses::default(),
            streams: Arc::new(Semaphore::new(1)),
            open_streams: Gauge::default(),
            instance_name: Arc::from("test"),
        }
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    const TOKEN: &str = "0123456789abcdef-token";

    /// A connection that reads nothing holds back only itself: publishing never waits, and
    /// when it reads again it is told how many events it lost, then gets the newest. On a
    /// paused clock: the stream's batching and the wait for its last message pass at once.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_stream_loses_events_and_is_told_so_while_publishing_goes_on() {
        let feed = crate::events::LocalFeed::new(8, false);
        let (sender, mut receiver) = mpsc::channel(1);
        let shutdown = CancellationToken::new();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned();
        let Ok(permit) = permit else {
            panic!("a permit of a new semaphore")
        };
        let slot = StreamSlot::new(permit, Gauge::default());
        tokio::spawn(stream_events(
            feed.subscribe(),
            sender,
            shutdown.clone(),
            slot,
        ));
        let rejected = |n| Event::Rejected {
            at_ms: n,
            account: "main".into(),
            reason: "bad_signature".into(),
        };
        let started = std::time::Instant::now();
        for n in 0..1000 {
            feed.publish(rejected(n));
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        let mut text = String::new();
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(200), receiver.recv()).await
        {
            text.push_str(&String::from_utf8_lossy(&message));
        }
        assert!(text.starts_with("retry: 1000"), "{text}");
        assert!(text.contains(r#"{"kind":"dropped","count":"#), "{text}");
        assert!(
            text.contains(r#""at_ms":999,"#),
            "the newest event arrives: {text}"
        );
        assert!(text.matches("data: ").count() <= 8 + 3, "{text}");
        shutdown.cancel();
    }

    #[test]
    fn a_cross_origin_post_is_refused_even_without_a_token() {
        let open = console(None);
        let status = |r: Result<Caller, Refusal>| r.map_err(|e| e.response().status());
        let evil = [
            ("host", "127.0.0.1:9090"),
            ("origin", "http://evil.example"),
        ];
        assert_eq!(
            status(open.admit(&request(Method::POST, &evil), PEER)),
            Err(StatusCode::FORBIDDEN)
        );
        let same = [
            ("host", "127.0.0.1:9090"),
            ("origin", "http://127.0.0.1:9090"),
        ];
        assert_eq!(
            status(open.admit(&request(Method::POST, &same), PEER)),
            Ok(Caller::Open)
        );
        assert_eq!(
            status(open.admit(&request(Method::GET, &evil), PEER)),
            Ok(Caller::Open)
        );
    }

    #[test]
    fn a_session_changes_state_only_with_its_csrf_token() {
        let console = console(Some(TOKEN));
        let auth = Auth::new(TOKEN);
        let (cookie, session) = auth.open_session(now_secs());
        let cookie = format!("wf_console={cookie}");
        let status = |r: Result<Caller, Refusal>| r.map(|_| ()).map_err(|e| e.response().status());
        assert_eq!(
            status(console.admit(&request(Method::GET, &[("cookie", &cookie)]), PEER)),
            Ok(())
        );
        assert_eq!(
            status(console.admit(&request(Method::POST, &[("cookie", &cookie)]), PEER)),
            Err(StatusCode::FORBIDDEN)
        );
        let with_csrf = [("cookie", cookie.as_str()), (CSRF_HEADER, &session.csrf)];
        assert_eq!(
            status(console.admit(&request(Method::POST, &with_csrf), PEER)),
            Ok(())
        );
        assert_eq!(
            status(console.admit(&request(Method::GET, &[]), PEER)),
            Err(StatusCode::UNAUTHORIZED)
        );
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(
            status(console.admit(
                &request(Method::DELETE, &[("authorization", &bearer)]),
                PEER
            )),
            Ok(())
        );
        let wrong = [("authorization", "Bearer 0123456789abcdef-tokem")];
        assert_eq!(
            status(console.admit(&request(Method::GET, &wrong), PEER)),
            Err(StatusCode::UNAUTHORIZED)
        );
    }
}
