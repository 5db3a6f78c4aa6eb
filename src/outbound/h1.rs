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
use http::uri::Authority;
use http::uri::Scheme;
use http::{Request, Uri};
use http_body_util::Full;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Failure, read_body};

/// A connection idle for longer is closed rather than used. Targets close idle connections on
/// their own schedule too, which [`Open::still_open`] sees; this bounds how long one we no longer
/// need stays open.
const IDLE_FOR: Duration = Duration::from_secs(60);
/// Idle connections kept per target address: more than any target's concurrency needs.
const MOST_IDLE: usize = 1024;

/// A connection's state machine, on the heap: several hundred bytes that every exchange on it
/// would otherwise carry in its future, and move with it.
type Conn = Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>;

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
            // Boxed: connecting (the resolver, happy eyeballs) is a future of KiBs that most
            // exchanges, on a kept connection, never run; inline, every attempt would carry it.
            None => Box::pin(connect(&self.connector, address)).await?,
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
        Pin::new(&mut *self.conn).poll(&mut cx).is_pending() && self.send.is_ready()
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
        conn: Box::new(conn),
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
        .is_some_and(|c| Pin::new(&mut **c).poll(cx).is_ready())
    {
        *conn = None;
    }
}
