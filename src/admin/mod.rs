//! The admin listener, separate from the WeChat port: health, readiness, metrics, and the
//! routing of every other path to what serves it.
//!
//! - `GET /healthz`: the process is alive.
//! - `GET /readyz`: the store could take a callback now (it commits a test row as large as the
//!   largest callback within 2 s, its file is in place, the disk has room): 200, else 503.
//! - `GET /metrics`: Prometheus text format; queue depths are read from the store at scrape time.
//! - `GET /dead-letters?account=&target=&since_ms=&until_ms=&limit=`: list, newest first.
//! - `GET /dead-letters/{id}`: one, with the request it replays and every failed attempt.
//! - `POST /dead-letters/{id}/replay`, `POST /dead-letters/replay?filters`: due again now, with a
//!   fresh allowance of attempts; the same bytes are sent.
//! - `DELETE /dead-letters/{id}`, `DELETE /dead-letters?filters` (`all=true` for no filter).
//!   All four: [`dead_letters`].
//! - `GET /callbacks?account=&limit=`, `GET /callbacks/{id}`: the latest callbacks' ids, and one
//!   callback with the jobs it still holds ([`callbacks`]).
//! - `POST /targets/probe?account=&target=`: the URL-verification GET sent to each target now
//!   (see [`crate::cmd::probe`]); 200 with each target's result, `"ok"` only if all echoed.
//! - `POST /targets/{account}/{target}/backfill?since_ms=&until_ms=`: the stored callbacks of a
//!   window queued for that target alone, each once ([`backfill`]).
//! - `GET /shadow/differences`: shadow targets' recent answers that differed from the owner's.
//!
//! - `GET /console/targets`, `GET /console/routes`: the console's targets view, each target's
//!   state and configuration and each account's reply routes ([`targets`]).
//! - `GET /console/history?account=&msg_id=&user=&type=&since_ms=&until_ms=&instance=&target=&state=&before=&limit=`:
//!   stored callbacks newest first, a page at a time, searched ([`history`]).
//! - `GET /console/charts?minutes=`: the deployment's per-minute counts for the console's
//!   charts ([`charts`]).
//! - The live console in the browser and its event stream: see [`crate::admin::console`], which also
//!   decides who gets in (`admin.token`): everything above but health and readiness (and
//!   metrics, unless `admin.protect_metrics`) answers 401 without the token.
//!
//! Before anything else, every request's `Host` must be an IP address, `localhost` or a name in
//! `admin.hosts` ([`hosts`]), token or not: else 403. Every refusal is logged with its reason
//! and counted in `admin_refusals_total{reason}`.
//!
//! It never listens on the WeChat port.

mod backfill;
mod callbacks;
mod charts;
pub mod console;
mod dead_letters;
mod history;
mod hosts;
mod targets;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use hosts::Hosts;

use crate::admin::console::{Body, Console, Refusal};
use crate::attempt::{ACCOUNT_HEADER, Shared};
use crate::clock::now_ms;
use crate::http::{error, json, text};
use crate::ingress::shadow::ShadowLog;
use crate::store::{Replay, StoreError};

const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Admin {
    /// The process's shared parts: routes, store, metrics…
    pub shared: Arc<Shared>,
    pub registry: Registry,
    /// The console, its login and its event stream.
    pub console: Console,
    /// Shadow targets' recent differences (`GET /shadow/differences`).
    pub shadows: Arc<ShadowLog>,
    /// The host names requests may name (`admin.hosts`).
    pub hosts: Hosts,
    /// `store.delivered_retention_secs`: how far back a backfill reaches.
    pub retention: Duration,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

/// Serves the admin API on `listener` until `shutdown` fires; returns once every connection it
/// served (event streams included) has ended, so none still holds the store.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    if let Ok(address) = listener.local_addr() {
        info!(%address, "admin listening (health, metrics, dead letters, console)");
    }
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let admin = admin.clone();
        let service = service_fn(move |request| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(admin.handle(request, peer.ip()).await) }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            tokio::select! {
                result = connection => if let Err(e) = result { debug!(error = %e, "admin connection error") },
                () = shutdown.cancelled() => {}
            }
        });
    }
    // Every connection ends at shutdown (see the select above): this waits for no request.
    connections.close();
    connections.wait().await;
}

impl Admin {
    async fn handle(&self, request: Request<Incoming>, peer: IpAddr) -> Response<Body> {
        let uri = request.uri().clone();
        // First, whatever the path: a rebound name must learn nothing, not even health.
        if !self.hosts.allows(request.headers(), &uri) {
            return self.refused(Refusal::ForeignHost, &request, peer);
        }
        let query = uri.query().unwrap_or("");
        let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
        let method = request.method().clone();
        if let (&Method::POST, ["console", "login"]) = (&method, segments.as_slice()) {
            let (method, path) = (request.method().clone(), uri.path().to_owned());
            return match self.console.login(request, peer).await {
                Ok(response) => {
                    info!(%peer, "console login");
                    response.map(Either::Left)
                }
                Err(refusal) => self.log_refusal(refusal, &method, &path, None, peer),
            };
        }
        // Open to all: liveness, readiness, the page (it holds no data) and the login.
        let open = match (&method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => Some(text(StatusCode::OK, "ok\n")),
            (&Method::GET, ["readyz"]) => Some(self.ready().await),
            (&Method::GET, ["metrics"]) if !self.console.protects_metrics() => {
                Some(self.scrape().await)
            }
            (&Method::GET, path) => Console::asset(path),
            (&Method::POST, ["console", "logout"]) => Some(self.console.logout()),
            _ => None,
        };
        if let Some(response) = open {
            return response.map(Either::Left);
        }
        let caller = match self.console.admit(&request, peer) {
            Ok(caller) => caller,
            Err(refusal) => return self.refused(refusal, &request, peer),
        };
        if let (&Method::GET, ["console", "events"]) = (&method, segments.as_slice()) {
            return match self.console.events() {
                Ok(stream) => stream,
                Err(refusal) => self.refused(refusal, &request, peer),
            };
        }
        let result = match (method, segments.as_slice()) {
            (Method::GET, ["metrics"]) => Ok(self.scrape().await),
            (Method::GET, ["console", "session"]) => Ok(self.console.session(&caller)),
            (Method::GET, ["console", "targets"]) => self.targets().await,
            (Method::GET, ["console", "routes"]) => Ok(self.routes()),
            (Method::GET, ["console", "history"]) => self.history(query).await,
            (Method::GET, ["console", "charts"]) => self.charts(query).await,
            (Method::GET, ["console", "dead-letters", id]) => self.dead_letter(id, true).await,
            (Method::GET, ["dead-letters"]) => self.dead_letters(query).await,
            (Method::GET, ["dead-letters", id]) => self.dead_letter(id, false).await,
            (Method::POST, ["dead-letters", "replay"]) => self.replay(None, query).await,
            (Method::POST, ["dead-letters", id, "replay"]) => self.replay(Some(id), "").await,
            (Method::DELETE, ["dead-letters"]) => self.purge(None, query).await,
            (Method::DELETE, ["dead-letters", id]) => self.purge(Some(id), "").await,
            (Method::GET, ["callbacks"]) => self.callbacks(query).await,
            (Method::GET, ["callbacks", id]) => self.callback(id).await,
            (Method::POST, ["targets", "probe"]) => self.probe(query).await,
            (Method::POST, ["targets", account, target, "backfill"]) => {
                self.backfill(account, target, query).await
            }
            (Method::GET, ["shadow", "differences"]) => Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "differences": self.shadows.differences() }),
            )),
            _ => Err((StatusCode::NOT_FOUND, "no such admin endpoint".to_owned())),
        };
        result
            .unwrap_or_else(|(status, message)| error(status, &message))
            .map(Either::Left)
    }

    /// Logs and counts a refusal of `request`; its answer.
    fn refused<B>(&self, refusal: Refusal, request: &Request<B>, peer: IpAddr) -> Response<Body> {
        let host = request
            .headers()
            .get(http::header::HOST)
            .map(|host| String::from_utf8_lossy(host.as_bytes()).into_owned());
        self.log_refusal(
            refusal,
            request.method(),
            request.uri().path(),
            host.as_deref(),
            peer,
        )
    }

    fn log_refusal(
        &self,
        refusal: Refusal,
        method: &Method,
        path: &str,
        host: Option<&str>,
        peer: IpAddr,
    ) -> Response<Body> {
        self.shared.metrics.admin_refused(refusal.reason());
        let reason = refusal.reason();
        match refusal {
            // What an operator must act on (a name to list, a guesser, a cross-site page).
            Refusal::ForeignHost => warn!(
                %peer, %method, path, host, reason,
                "admin request refused: its Host is not an IP address, localhost or in admin.hosts"
            ),
            Refusal::BadToken | Refusal::CrossOrigin | Refusal::Csrf => {
                warn!(%peer, %method, path, reason, "admin request refused");
            }
            Refusal::StreamsFull => info!(
                %peer, reason,
                "console event stream refused: admin.max_event_streams are open"
            ),
            // Many and harmless, or warned about once (guessing).
            Refusal::NoToken | Refusal::Guessing { .. } | Refusal::TooLarge => {
                debug!(%peer, %method, path, reason, "admin request refused");
            }
        }
        refusal.response().map(Either::Left)
    }

    async fn probe(&self, query: &str) -> Result<Response<Full<Bytes>>, Failure> {
        let (mut account, mut target) = (None, None);
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "account" => account = Some(value.into_owned()),
                "target" => target = Some(value.into_owned()),
                _ => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        format!("unknown parameter {key:?}"),
                    ));
                }
            }
        }
        let routes = self.shared.routes.load_full();
        let results = crate::cmd::probe::probe(&routes, account.as_deref(), target.as_deref())
            .await
            .map_err(|e| (StatusCode::NOT_FOUND, e.to_string()))?;
        Ok(json(StatusCode::OK, &crate::cmd::probe::report(&results)))
    }

    async fn ready(&self) -> Response<Full<Bytes>> {
        match tokio::time::timeout(READY_TIMEOUT, self.shared.store.check_writable()).await {
            Ok(Ok(())) => text(StatusCode::OK, "ready\n"),
            Ok(Err(e)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the store did not commit within 2 s\n",
            ),
        }
    }

    async fn scrape(&self) -> Response<Full<Bytes>> {
        let store = &self.shared.store;
        match tokio::time::timeout(READY_TIMEOUT, store.queue_depths()).await {
            Ok(Ok(depths)) => {
                // Every configured target gets its gauges, at 0 when it has no jobs: an alert on
                // `pending` or `dead` must read 0, not "no data". Targets no longer configured
                // appear while the store still holds jobs of theirs.
                let now = now_ms();
                let mut queue: Vec<(String, String, [i64; 3], f64)> =
                    (self.shared.routes.load().targets())
                        .map(|t| {
                            let key = &t.key;
                            (key.account.to_string(), key.target.to_string(), [0; 3], 0.0)
                        })
                        .collect();
                for d in depths {
                    let counts = [d.pending, d.in_flight, d.dead];
                    let age = d
                        .oldest_pending_ms
                        .map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0);
                    match queue
                        .iter_mut()
                        .find(|(a, t, ..)| *a == d.account && *t == d.target)
                    {
                        Some(row) => (row.2, row.3) = (counts, age),
                        None => queue.push((d.account, d.target, counts, age)),
                    }
                }
                self.shared.metrics.set_queue(queue);
            }
            Ok(Err(e)) => warn!(error = %e, "reading queue depths for metrics failed"),
            Err(_) => warn!("reading queue depths for metrics timed out"),
        }
        let ready = matches!(
            tokio::time::timeout(READY_TIMEOUT, store.check_writable()).await,
            Ok(Ok(()))
        );
        let usage = match tokio::time::timeout(READY_TIMEOUT, store.usage()).await {
            Ok(Ok(usage)) => usage,
            _ => None,
        };
        self.shared.metrics.set_store(ready, usage);
        let mut response = Response::new(Full::new(Bytes::from(crate::metrics::encode(
            &self.registry,
        ))));
        response.headers_mut().insert(
            CONTENT_TYPE,
            http::HeaderValue::from_static(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        );
        response
    }

    /// `request` of `account` as the deliveries send it. Shown as to the console (`console`):
    /// without openid and body unless `admin.show_content`, and then with the decrypted message
    /// of a safe-mode account.
    fn shown_request(&self, account: &str, request: &Replay, console: bool) -> ShownRequest {
        let mut headers = vec![(ACCOUNT_HEADER, account.to_owned())];
        // As the delivery sends it: the open platform's authorizer, in a header.
        if let Some(appid) = &request.authorizer {
            headers.push((crate::wechat::AUTHORIZER_HEADER, appid.clone()));
        }
        if let Some(content_type) = &request.content_type {
            headers.insert(0, ("content-type", content_type.clone()));
        }
        // WeChat Pay's, as received and replayed.
        for (name, value) in &request.headers {
            if let Some(name) = crate::wechat::PAY_HEADERS.iter().find(|n| **n == name) {
                headers.push((name, value.clone()));
            }
        }
        // The console without `admin.show_content` gets neither openid nor body: neither is
        // written out only to be thrown away.
        if console && !self.console.show_content() {
            ShownRequest {
                method: "POST",
                query: crate::privacy::without_openid(&request.query),
                headers,
                body: ShownBytes::hidden(),
                decrypted: None,
            }
        } else {
            ShownRequest {
                method: "POST",
                query: request.query.clone(),
                headers,
                body: ShownBytes::of(&request.body),
                decrypted: console.then(|| self.decrypt(account, request)).flatten(),
            }
        }
    }

    /// The message inside an encrypted callback of `account`, as text; `None` for plaintext
    /// (its body is the message) or when the account's credentials no longer open it. For a
    /// WeChat Pay account with its APIv3 key: the decrypted resource, the payer's ids hidden.
    fn decrypt(&self, account: &str, request: &Replay) -> Option<String> {
        let routes = self.shared.routes.load();
        let account = routes.account(account)?;
        if let Some(pay) = &account.pay {
            let plain = pay.open(&request.body).ok()?.resource?;
            return Some(crate::privacy::hide_payer_ids(&String::from_utf8_lossy(
                &plain,
            )));
        }
        let credentials = &account.credentials;
        let query = crate::wechat::CallbackQuery::parse(&request.query).ok()?;
        let opened = crate::wechat::open_callback(credentials, &query, &request.body).ok()?;
        opened
            .decrypted
            .map(|message| String::from_utf8_lossy(&message).into_owned())
    }
}

/// What a request failed with: its status, and the message of its `{"error": …}`.
type Failure = (StatusCode, String);

/// A stored request as the admin API shows it.
#[derive(Serialize)]
struct ShownRequest {
    method: &'static str,
    query: String,
    headers: Vec<(&'static str, String)>,
    #[serde(flatten)]
    body: ShownBytes,
    /// The decrypted message of an encrypted body (console, with content shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    decrypted: Option<String>,
}

/// A body as the admin API shows it: as text (lossy if it is not UTF-8) and exactly, in
/// base64; or [`HIDDEN`].
#[derive(Serialize)]
struct ShownBytes {
    body: String,
    body_base64: String,
}

impl ShownBytes {
    fn of(bytes: &[u8]) -> ShownBytes {
        ShownBytes {
            body: String::from_utf8_lossy(bytes).into_owned(),
            body_base64: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    fn hidden() -> ShownBytes {
        ShownBytes {
            body: HIDDEN.to_owned(),
            body_base64: String::new(),
        }
    }
}

/// What the console shows instead of a body while `admin.show_content` is off.
const HIDDEN: &str = "(message content hidden: admin.show_content is off)";

fn store_error(e: StoreError) -> Failure {
    (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}
