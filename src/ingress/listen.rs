//! `GET /listen/{account}/{target}` on the WeChat port: a `listen` target's client opens a
//! WebSocket here, with `Authorization: Bearer <listen token>`, and the target's deliveries come
//! down it (the frames: `outbound::listen`, and docs/listen.md).
//!
//! A wrong or missing token is answered 401 before any upgrade, after the same pause whatever
//! was presented (the comparison itself takes constant time), so tries are slow and tell
//! nothing; and each client address has a handful of tries, then one a second (429 with
//! `Retry-After` beyond them, the token not even looked at), as on the admin port. The connection is pinged every [`PING_EVERY`]; one that sends nothing for
//! [`SILENT_FOR`] (not even the pong) is closed, and what waited on it is retried. At shutdown
//! each socket gets a close frame.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::header::{AUTHORIZATION, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, frame::coding::CloseCode};
use tracing::{debug, info, warn};

use super::Ingress;
use crate::http::text;
use crate::outbound::listen::Connection;

/// How often an open connection is pinged (docs/listen.md tells clients).
const PING_EVERY: Duration = Duration::from_secs(3);
/// A connection silent this long (no frame, no pong: three pings unanswered) is dead; so is
/// one whose writes wait this long (a client that stopped reading).
const SILENT_FOR: Duration = Duration::from_secs(10);
/// The pause before a refusal: tries are slow, and all take as long.
const REFUSAL_PAUSE: Duration = Duration::from_millis(300);

/// `/listen/{account}/{target}` → both.
pub(super) fn listen_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/listen/")?;
    let (account, target) = rest.split_once('/')?;
    (!account.is_empty() && !target.is_empty() && !target.contains('/'))
        .then_some((account, target))
}

impl Ingress {
    /// Upgrades the request to a listen target's WebSocket, or says why not.
    pub(super) async fn listen(
        self: &Arc<Self>,
        mut request: Request<Incoming>,
        account: &str,
        target: &str,
        peer: std::net::IpAddr,
    ) -> Response<Full<Bytes>> {
        if request.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        if let Err(spent) = self.guesses.take(peer, std::time::Instant::now()) {
            if spent.first {
                warn!(%peer, account, target, "listen: wrong tokens from this address; slowing it down");
            }
            let mut refused = text(
                StatusCode::TOO_MANY_REQUESTS,
                "too many wrong listen tokens from this address: try again later\n",
            );
            let seconds = spent.retry_after.as_secs().max(1);
            refused
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
            return refused;
        }
        let routes = self.shared.routes.load();
        let found = routes.account(account).and_then(|a| {
            a.targets
                .iter()
                .find(|t| &*t.key.target == target && t.listen.is_some())
        });
        let presented = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // One answer for an unknown target and a wrong token: neither is told apart.
        let admitted = found.filter(|t| t.listen.as_ref().is_some_and(|l| l.admits(presented)));
        let Some(target) = admitted.cloned() else {
            tokio::time::sleep(REFUSAL_PAUSE).await;
            warn!(
                account,
                target, "listen: refused (unknown target or wrong token)"
            );
            let mut refused = text(
                StatusCode::UNAUTHORIZED,
                "the listen token was refused (or no such listen target)\n",
            );
            refused.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            return refused;
        };
        drop(routes);
        // The right token costs no try.
        self.guesses.give_back(peer, std::time::Instant::now());
        let headers = request.headers();
        let is_websocket = headers
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let key = headers.get(SEC_WEBSOCKET_KEY).cloned();
        let (true, Some(key)) = (is_websocket, key) else {
            return text(
                StatusCode::UPGRADE_REQUIRED,
                "a listen client opens a WebSocket here (Upgrade: websocket)\n",
            );
        };
        let accept = derive_accept_key(key.as_bytes());
        let upgrading = hyper::upgrade::on(&mut request);
        let (account, name) = (target.key.account.clone(), target.key.target.clone());
        let this = self.clone();
        self.shared.in_flight.spawn(async move {
            match upgrading.await {
                Ok(upgraded) => {
                    let socket = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        None,
                    )
                    .await;
                    let connection = this.shared.listeners.open(&account, &name);
                    info!(
                        account = &*account,
                        target = &*name,
                        "listen: client connected"
                    );
                    this.shared.metrics.listeners(&account, &name, 1);
                    // A client waiting for it: its deliveries go at once.
                    target.plumbing.wake.notify_one();
                    let why = drive(socket, connection, &this.closing).await;
                    this.shared.metrics.listeners(&account, &name, -1);
                    info!(
                        account = &*account,
                        target = &*name,
                        why,
                        "listen: client gone"
                    );
                }
                Err(e) => debug!(error = %e, "listen: the upgrade failed"),
            }
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

/// Runs one connection: deliveries down, answers up, pings, until either side ends it or the
/// proxy stops. Says why it ended.
async fn drive<S>(
    mut socket: WebSocketStream<S>,
    mut connection: Connection,
    closing: &tokio_util::sync::CancellationToken,
) -> &'static str
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            frame = connection.frames.recv() => {
                let Some(frame) = frame else { return "closed" };
                match tokio::time::timeout(SILENT_FOR, socket.send(Message::text(frame))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return "the socket failed",
                    Err(_) => return "the client stopped reading",
                }
            }
            incoming = socket.next() => {
                heard = tokio::time::Instant::now();
                match incoming {
                    Some(Ok(Message::Text(text))) => {
                        if let Err(e) = connection.answer(text.as_str()) {
                            warn!(error = %e, "listen: a frame from the client was not understood");
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => return "the client closed it",
                    Some(Ok(_)) => {}
                    Some(Err(_)) => return "the socket failed",
                }
            }
            _ = ping.tick() => {
                if heard.elapsed() > SILENT_FOR {
                    return "silent for too long";
                }
                match tokio::time::timeout(SILENT_FOR, socket.send(Message::Ping(Bytes::new()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return "the socket failed",
                    Err(_) => return "the client stopped reading",
                }
            }
            () = closing.cancelled() => {
                let close = CloseFrame {
                    code: CloseCode::Away,
                    reason: "the proxy is stopping".into(),
                };
                let _ = socket.close(Some(close)).await;
                return "the proxy is stopping";
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_paths() {
        assert_eq!(listen_path("/listen/main/laptop"), Some(("main", "laptop")));
        assert_eq!(listen_path("/listen/main/"), None);
        assert_eq!(listen_path("/listen/main/a/b"), None);
        assert_eq!(listen_path("/wechat/main"), None);
    }
}
