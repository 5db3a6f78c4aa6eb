//! HTTP/1.1 over plain TCP to targets, on connections kept between attempts and driven by the
//! attempt that uses them.
//!
//! hyper's pooled client gives each connection a task of its own and hands every request to it
//! through a channel, and the answer back through another: two task wake-ups per request, and
//! the pool's bookkeeping, on the hottest path of the fan-out. Here an attempt takes an idle
//! connection (or opens one), polls the connection itself while its request is out, and puts it
//! back once the answer is read to its end. `https` targets and those with `http2 = true` keep
//! hyper's pooled client.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Mutex;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::response::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Uri};
use http_body_util::Full;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Failure, read_body, with_query};

/// A connection idle for longer is closed rather than used. Targets close idle connections on
/// their own schedule too, which [`Open::still_open`] sees; this bounds how long one we no longer
/// need stays open.
const IDLE_FOR: Duration = Duration::from_secs(60);
/// Idle connections kept per target address: more than any target's concurrency needs.
const MOST_IDLE: usize = 1024;

type Conn = Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// One open connection: the handle requests go in by, and the connection's state machine.
struct Open {
    send: SendRequest<Full<Bytes>>,
    conn: Conn,
    idle_since: Instant,
}

/// Idle connections by target address (`host:port` as the target's URL has it), and how new
/// ones are made.
pub(super) struct Connections {
    idle: Mutex<Idle>,
    connector: HttpConnector,
}

#[derive(Default)]
struct Idle {
    by_address: HashMap<Authority, Vec<Open>>,
    swept: Option<Instant>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections").finish_non_exhaustive()
    }
}

impl Connections {
    pub(super) fn new() -> Connections {
        Connections {
            idle: Mutex::default(),
            connector: connector(),
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) to `address` and reads the answer: its head,
    /// its body and whether the body is whole (see [`read_body`]). The connection goes back to
    /// the idle ones only if the answer was read to its end and the target keeps it open.
    pub(super) async fn exchange(
        &self,
        address: &Authority,
        request: Request<Full<Bytes>>,
    ) -> Result<(Parts, Bytes, bool), Failure> {
        let open = match self.take(address) {
            Some(open) => open,
            None => connect(&self.connector, address).await?,
        };
        let Open { mut send, conn, .. } = open;
        let sent = send.send_request(request);
        // A body cut short is the answer's failure, as the pooled client reports it.
        let answer = async {
            let (head, mut incoming) = sent.await.map_err(Failure::H1Request)?.into_parts();
            let (body, complete) = read_body(&mut incoming).await.map_err(Failure::Body)?;
            Ok::<_, Failure>((head, body, complete))
        };
        let (answer, conn) = drive(conn, answer).await;
        let (head, body, complete) = answer?;
        if let (true, Some(conn)) = (complete, conn) {
            let idle_since = Instant::now();
            self.put_back(
                address,
                Open {
                    send,
                    conn,
                    idle_since,
                },
            );
        }
        Ok((head, body, complete))
    }

    /// The most recently used idle connection to `address` that is still open. Each is checked
    /// outside the lock: the check may read from its socket.
    fn take(&self, address: &Authority) -> Option<Open> {
        loop {
            let mut open = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle.by_address.get_mut(address)?.pop()?
            };
            if open.idle_since.elapsed() < IDLE_FOR && open.still_open() {
                return Some(open);
            }
        }
    }

    fn put_back(&self, address: &Authority, open: Open) {
        let now = open.idle_since;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Now and then, close what stayed idle too long everywhere (a target removed by a
        // reload leaves its connections behind).
        if idle
            .swept
            .is_none_or(|swept| now.saturating_duration_since(swept) >= IDLE_FOR)
        {
            idle.swept = Some(now);
            idle.by_address.retain(|_, list| {
                list.retain(|open| now.saturating_duration_since(open.idle_since) < IDLE_FOR);
                !list.is_empty()
            });
        }
        let list = idle.by_address.entry(address.clone()).or_default();
        if list.len() < MOST_IDLE {
            list.push(open);
        }
    }
}

impl Open {
    /// Whether the connection can take a request now: it is polled once (without waking
    /// anything later) so that an end of stream the target sent meanwhile is seen here.
    fn still_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(&mut self.conn).poll(&mut cx).is_pending() && self.send.is_ready()
    }
}

/// How connections to plain `http` targets are made: hyper-util's connector, as its pooled
/// client makes them (the system resolver, and IPv6 and IPv4 tried in parallel when a name has
/// both, so a black-holed route of one does not stall the attempt), without Nagle's delay.
pub(super) fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

/// A new TCP connection to `address` (`host:port`), made by `connector` (see [`connector`]).
pub(super) async fn dial(
    connector: &HttpConnector,
    address: &Authority,
) -> Result<TcpStream, Box<dyn std::error::Error + Send + Sync>> {
    use tower_service::Service as _;
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(address.clone())
        .path_and_query("/")
        .build()?;
    Ok(connector.clone().call(uri).await?.into_inner())
}

/// A new HTTP/1.1 connection to `address`.
async fn connect(connector: &HttpConnector, address: &Authority) -> Result<Open, Failure> {
    let tcp = dial(connector, address)
        .await
        .map_err(Failure::TcpConnect)?;
    let (send, conn) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(Failure::H1Request)?;
    Ok(Open {
        send,
        conn,
        idle_since: Instant::now(),
    })
}

/// Runs `work` while polling `conn`, which moves its bytes; returns what `work` returned and
/// the connection if it can take another request.
async fn drive<T>(conn: Conn, work: impl Future<Output = T>) -> (T, Option<Conn>) {
    let mut work = pin!(work);
    let mut conn = Some(conn);
    // The connection first: it writes the request and reads what answers it.
    let result = poll_fn(|cx| {
        poll_until_ended(&mut conn, cx);
        work.as_mut().poll(cx)
    })
    .await;
    // Once more, so that it takes in the end of the answer and asks for the next request.
    poll_until_ended(&mut conn, &mut Context::from_waker(Waker::noop()));
    (result, conn)
}

/// Polls the connection, if there still is one, and drops it once it has ended, which ends
/// whatever still waits on it.
fn poll_until_ended(conn: &mut Option<Conn>, cx: &mut Context<'_>) {
    if conn
        .as_mut()
        .is_some_and(|c| Pin::new(c).poll(cx).is_ready())
    {
        *conn = None;
    }
}

/// Where a plain `http://` target's requests go, taken from its URL once rather than for every
/// request: the address to connect to, the `Host` header, and the path (with any query of its
/// own) that each callback's query is appended to.
#[derive(Debug, Clone)]
pub struct Origin {
    pub(super) address: Authority,
    pub(super) host: Option<HeaderValue>,
    path: String,
}

impl Origin {
    /// `None` for a URL that is not `http://` with an address (those go through the pooled
    /// client with their whole URL).
    pub fn parse(url: &str) -> Option<Origin> {
        let uri = Uri::try_from(url).ok()?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return None;
        }
        let address = uri.authority()?.clone();
        Some(Origin {
            host: host_header(&address),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
            address,
        })
    }

    /// The request target in origin form: the path, then `query` (after `&` when the path has a
    /// query of its own). Checked as a URI's path and query would be.
    pub(super) fn target(&self, query: &str) -> Result<PathAndQuery, http::Error> {
        Ok(PathAndQuery::try_from(with_query(&self.path, query))?)
    }
}

/// The `Host` header for `address`: its host and port as the URL has them, without the default
/// port (nor any user info).
fn host_header(address: &Authority) -> Option<HeaderValue> {
    match address.port_u16() {
        Some(80) | None => HeaderValue::from_str(address.host()).ok(),
        Some(port) => HeaderValue::from_str(&format!("{}:{port}", address.host())).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target_of(url: &str, query: &str) -> String {
        Origin::parse(url)
            .unwrap()
            .target(query)
            .unwrap()
            .as_str()
            .to_owned()
    }

    #[test]
    fn the_callback_query_follows_the_path_or_the_urls_own_query() {
        assert_eq!(target_of("http://127.0.0.1:9000/wx", "a=1"), "/wx?a=1");
        assert_eq!(
            target_of("http://127.0.0.1:9000/crm?t=7", "a=1"),
            "/crm?t=7&a=1"
        );
        assert_eq!(target_of("http://127.0.0.1:9000", "a=1"), "/?a=1");
        assert_eq!(target_of("http://127.0.0.1:9000/wx", ""), "/wx");
    }

    #[test]
    fn host_is_the_urls_address_without_the_default_port() {
        let host = |url: &str| Origin::parse(url).unwrap().host.unwrap();
        assert_eq!(host("http://127.0.0.1:9000/wx"), "127.0.0.1:9000");
        assert_eq!(host("http://crm.internal:80/wx"), "crm.internal");
        assert_eq!(host("http://crm.internal/wx"), "crm.internal");
    }

    #[test]
    fn only_plain_http_urls_have_an_origin() {
        assert!(Origin::parse("https://crm.internal/wx").is_none());
        assert!(Origin::parse("/wx").is_none());
    }

    #[test]
    fn a_query_a_request_line_cannot_carry_is_refused() {
        let origin = Origin::parse("http://127.0.0.1:9000/wx").unwrap();
        assert!(origin.target("a=1 HTTP/1.1\r\nx: y").is_err());
    }
}
