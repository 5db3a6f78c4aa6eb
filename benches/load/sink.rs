//! The load benchmark's downstream target: a small hyper server that answers every delivery with
//! a short body, counts requests and bytes, and checks that each one is byte-identical to the
//! callback that was sent. One port takes HTTP/1.1 and HTTP/2 with prior knowledge (h2c), so
//! the same sink serves targets configured with `http2 = true`, the others, nginx and curl.
//!
//! The check is real without any channel to the load generator: callbacks are a deterministic
//! function of their number (`corpus.rs`), so the sink finds the number (the `MsgId` of a plain
//! body, the `EventKey` of an event, the `nonce` of a safe-mode query), rebuilds the expected query string and body, and
//! compares bytes; the content type must be `text/xml`. It also counts numbers seen twice
//! (at-least-once delivery may resend; the benchmark wants none).
//!
//! Control and counters live under `/_sink/` (never a delivery path):
//! `GET /_sink/stats` → one JSON object; `POST /_sink/set?status=503&delay_ms=2000` changes the
//! answer of later deliveries (a slow or failing target that recovers mid-run).
//!
//! `load-sink --listen 127.0.0.1:9101 --expect plain|event|safe|none [--delay-ms 2000] [--status 200]`
#![forbid(unsafe_code)]

#[allow(dead_code)] // shared by every bench binary; the sink needs only the checking half
#[path = "corpus.rs"]
mod corpus;

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(about = "Load-bench target: counts deliveries and checks each is byte-identical")]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    /// Which callbacks to expect (decides how a delivery is rebuilt); `none` only counts.
    #[arg(long, value_enum, default_value_t = Expect::Plain)]
    expect: Expect,
    /// Safe mode: the number of pooled callbacks (numbers 0..pool) rebuilt at start.
    #[arg(long, default_value_t = 0)]
    pool: u64,
    /// Status of the answers (changeable at run time).
    #[arg(long, default_value_t = 200)]
    status: u16,
    /// Delay before each answer, in ms (changeable at run time).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Expect {
    Plain,
    /// Events without a `MsgId` (`corpus::event`).
    Event,
    Safe,
    None,
}

/// The answer body: short, as a real service's `ok`/`success`.
const ANSWER: &[u8] = b"ok";
/// Mismatching requests kept for the report (their first bytes), so a failure can be read.
const SAMPLES: usize = 3;

/// What the sink has seen; every field is reported by `/_sink/stats`.
#[derive(Debug, Default)]
struct Counters {
    /// Connections accepted: a client that does not keep connections alive shows here.
    connections: AtomicU64,
    /// Deliveries (requests outside `/_sink/`).
    requests: AtomicU64,
    /// Those that came over HTTP/2 (h2c): shows that a target's `http2 = true` took effect.
    http2: AtomicU64,
    /// Query plus body bytes of those requests.
    bytes: AtomicU64,
    /// Deliveries that matched the expected bytes.
    identical: AtomicU64,
    /// Deliveries whose query, body or content type differed, or whose number was not found.
    mismatched: AtomicU64,
    /// Callback numbers seen, to count duplicates.
    seen: Mutex<HashSet<u64>>,
    duplicates: AtomicU64,
    samples: Mutex<Vec<String>>,
}

/// The sink's state shared by every connection.
struct Sink {
    expect: Expect,
    /// Plain callbacks, or events: the per-variant parts (rebuilt without allocating).
    variants: Vec<corpus::Variant>,
    /// Safe mode: the pool, rebuilt once at start so that checking costs a comparison only
    /// (the sink shares its core with the proxy and must not steal it for AES).
    pool: Vec<(String, String)>,
    status: AtomicU16,
    delay_ms: AtomicU64,
    counters: Counters,
}

impl Sink {
    fn new(expect: Expect, pool: Vec<(String, String)>, status: u16, delay_ms: u64) -> Sink {
        Sink {
            expect,
            variants: match expect {
                Expect::Event => corpus::event_variants(),
                _ => corpus::variants(),
            },
            pool,
            status: AtomicU16::new(status),
            delay_ms: AtomicU64::new(delay_ms),
            counters: Counters::default(),
        }
    }

    /// The callback number of a delivery if its query, body and content type are the expected
    /// ones; `Err` says what differed.
    fn check(
        &self,
        query: &str,
        content_type: Option<&[u8]>,
        body: &[u8],
    ) -> Result<u64, &'static str> {
        if content_type != Some(corpus::CONTENT_TYPE.as_bytes()) {
            return Err("content type differs");
        }
        match self.expect {
            Expect::None => Ok(0),
            Expect::Plain | Expect::Event => {
                let plain = self.expect == Expect::Plain;
                let id = if plain {
                    corpus::msg_id(body).ok_or("no MsgId in the body")?
                } else {
                    corpus::event_key(body).ok_or("no bench EventKey in the body")?
                };
                let n = id
                    .checked_sub(corpus::MSG_ID_BASE)
                    .filter(|n| *n < corpus::MAX_N)
                    .ok_or("number out of the bench's range")?;
                let (v, suffix) = if plain {
                    (
                        &self.variants[(n % corpus::VARIANTS) as usize],
                        corpus::BODY_SUFFIX,
                    )
                } else {
                    (
                        &self.variants[corpus::event_variant_of(n)],
                        corpus::EVENT_SUFFIX,
                    )
                };
                if query != v.query {
                    return Err("query differs");
                }
                // An event starts with the common head and its sender's number.
                let body = if plain {
                    body
                } else {
                    let sender = corpus::event_sender(n);
                    let start = corpus::EVENT_HEAD.len() + sender.len();
                    if body.get(..corpus::EVENT_HEAD.len()) != Some(corpus::EVENT_HEAD.as_bytes())
                        || body.get(corpus::EVENT_HEAD.len()..start) != Some(sender.as_bytes())
                    {
                        return Err("body differs");
                    }
                    &body[start..]
                };
                let id = id.to_string();
                let suffix = suffix.as_bytes();
                let expected_len = v.prefix.len() + id.len() + suffix.len();
                let (head, rest) = body.split_at(v.prefix.len().min(body.len()));
                if body.len() != expected_len
                    || head != v.prefix.as_bytes()
                    || &rest[..id.len()] != id.as_bytes()
                    || &rest[id.len()..] != suffix
                {
                    return Err("body differs");
                }
                Ok(n)
            }
            Expect::Safe => {
                let k = corpus::query_param(query, "nonce")
                    .and_then(|nonce| nonce.parse::<u64>().ok())
                    .and_then(|nonce| nonce.checked_sub(corpus::NONCE_BASE))
                    .ok_or("no bench nonce in the query")?;
                let (q, b) = usize::try_from(k)
                    .ok()
                    .and_then(|k| self.pool.get(k))
                    .ok_or("nonce outside the pool")?;
                if query != q {
                    return Err("query differs");
                }
                if body != b.as_bytes() {
                    return Err("body differs");
                }
                Ok(k)
            }
        }
    }

    fn record(&self, query: &str, content_type: Option<&[u8]>, body: &[u8]) {
        let c = &self.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        c.bytes
            .fetch_add((query.len() + body.len()) as u64, Ordering::Relaxed);
        match self.check(query, content_type, body) {
            Ok(n) => {
                c.identical.fetch_add(1, Ordering::Relaxed);
                let fresh =
                    self.expect == Expect::None || c.seen.lock().expect("not poisoned").insert(n);
                if !fresh {
                    c.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(reason) => {
                c.mismatched.fetch_add(1, Ordering::Relaxed);
                let mut samples = c.samples.lock().expect("not poisoned");
                if samples.len() < SAMPLES {
                    let shown: String = String::from_utf8_lossy(body).chars().take(160).collect();
                    samples.push(format!("{reason}: ?{query} {shown}"));
                }
            }
        }
    }

    fn stats(&self) -> String {
        let c = &self.counters;
        let unique = c.seen.lock().expect("not poisoned").len();
        serde_json::json!({
            "connections": c.connections.load(Ordering::Relaxed),
            "requests": c.requests.load(Ordering::Relaxed),
            "http2": c.http2.load(Ordering::Relaxed),
            "bytes": c.bytes.load(Ordering::Relaxed),
            "identical": c.identical.load(Ordering::Relaxed),
            "mismatched": c.mismatched.load(Ordering::Relaxed),
            "unique": unique,
            "duplicates": c.duplicates.load(Ordering::Relaxed),
            "samples": *c.samples.lock().expect("not poisoned"),
        })
        .to_string()
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let body = match body.collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return answer(StatusCode::BAD_REQUEST, Bytes::new()),
        };
        let query = parts.uri.query().unwrap_or("");
        match (&parts.method, parts.uri.path()) {
            (&Method::GET, "/_sink/stats") => answer(StatusCode::OK, self.stats().into()),
            (&Method::POST, "/_sink/set") => {
                if let Some(status) = corpus::query_param(query, "status") {
                    match status
                        .parse::<u16>()
                        .ok()
                        .filter(|s| (200..600).contains(s))
                    {
                        Some(status) => self.status.store(status, Ordering::Relaxed),
                        None => return answer(StatusCode::BAD_REQUEST, "bad status".into()),
                    }
                }
                if let Some(delay) = corpus::query_param(query, "delay_ms") {
                    match delay.parse::<u64>() {
                        Ok(delay) => self.delay_ms.store(delay, Ordering::Relaxed),
                        Err(_) => return answer(StatusCode::BAD_REQUEST, "bad delay".into()),
                    }
                }
                answer(StatusCode::OK, self.stats().into())
            }
            _ => {
                let content_type = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.as_bytes());
                if parts.version == http::Version::HTTP_2 {
                    self.counters.http2.fetch_add(1, Ordering::Relaxed);
                }
                self.record(query, content_type, &body);
                let delay = self.delay_ms.load(Ordering::Relaxed);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let status = StatusCode::from_u16(self.status.load(Ordering::Relaxed))
                    .unwrap_or(StatusCode::OK);
                answer(status, Bytes::from_static(ANSWER))
            }
        }
    }
}

fn answer(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = match args.expect {
        Expect::Safe => {
            let sealer = corpus::Sealer::new();
            (0..args.pool).map(|k| sealer.safe(k)).collect()
        }
        _ => Vec::new(),
    };
    let sink = Arc::new(Sink::new(args.expect, pool, args.status, args.delay_ms));
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("load-sink listening on {}", listener.local_addr()?);
    serve(listener, sink).await
}

/// Serves every connection the listener accepts, until the process ends.
async fn serve(listener: TcpListener, sink: Arc<Sink>) -> anyhow::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors and the like: keep serving the connections we have.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        sink.counters.connections.fetch_add(1, Ordering::Relaxed);
        let sink = sink.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let sink = sink.clone();
                async move { Ok::<_, Infallible>(sink.handle(request).await) }
            });
            // HTTP/1.1, or h2c when the client opens with HTTP/2's preface (a target with
            // `http2 = true`); nginx and curl keep speaking HTTP/1.1 to the same port.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;

    /// Sends the plain callback `n` to the sink at `addr` through `client`; the answer's status.
    async fn deliver(
        client: &Client<HttpConnector, Full<Bytes>>,
        addr: SocketAddr,
        n: u64,
    ) -> StatusCode {
        let variants = corpus::variants();
        let (query, body) = corpus::plain(&variants, n);
        let request = Request::post(format!("http://{addr}/wx?{query}"))
            .header(http::header::CONTENT_TYPE, corpus::CONTENT_TYPE)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request");
        client.request(request).await.expect("answered").status()
    }

    /// A target configured with `http2 = true` speaks h2c with prior knowledge to the same port
    /// that other targets (and nginx, and curl) reach over HTTP/1.1: the sink takes both, checks
    /// both alike, and counts the HTTP/2 ones.
    #[tokio::test]
    async fn one_port_takes_http1_and_h2c_prior_knowledge() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let sink = Arc::new(Sink::new(Expect::Plain, Vec::new(), 200, 0));
        tokio::spawn(serve(listener, sink.clone()));

        let http1 = Client::builder(TokioExecutor::new()).build_http();
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        assert_eq!(deliver(&http1, addr, 5).await, StatusCode::OK);
        assert_eq!(deliver(&h2c, addr, 6).await, StatusCode::OK);
        assert_eq!(deliver(&h2c, addr, 7).await, StatusCode::OK);

        let stats: serde_json::Value = serde_json::from_str(&sink.stats()).expect("JSON");
        assert_eq!(stats["requests"], 3, "{stats}");
        assert_eq!(stats["identical"], 3, "{stats}");
        assert_eq!(stats["unique"], 3, "{stats}");
        assert_eq!(stats["http2"], 2, "{stats}");
        // The h2c client keeps one connection for both of its requests.
        assert_eq!(stats["connections"], 2, "{stats}");
    }
}
