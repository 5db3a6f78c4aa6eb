//! The harness every integration test stands on: a proxy started in-process on `127.0.0.1:0`
//! ([`Proxy`], with its admin listener when asked), fake downstream services that record what
//! they receive ([`Target`]), a simulated WeChat that signs and encrypts callbacks like the real
//! one ([`Wx`]), the real binary ([`Binary`], and its other commands through
//! [`binary::run_async`]), what the proxy stored as a user sees it, through the `Store` trait or
//! the admin API ([`stored`]: [`jobs`], [`no_jobs_left`]…), and a parser for what `/metrics`
//! serves ([`scrape`]).
//!
//! Every wait is bounded: [`eventually`] polls until a condition holds or [`WAIT`] passes, and
//! then fails the test with what it was waiting for. Nothing sleeps and hopes, except
//! [`settle`], which gives a proxy that should do *nothing* a fair chance to misbehave.

pub(crate) mod binary;
pub(crate) mod browser;
/// Real `redis-server`s (standalone and Cluster), shared with the store contract.
#[path = "../../support/redis.rs"]
pub(crate) mod redis;
pub(crate) mod scrape;
mod stored;
mod target;
pub(crate) mod wechat_api;
pub(crate) mod wx;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wechat_fanout::config::{Config, Mode};
use wechat_fanout::store::{SqliteStore, Store};
use wechat_fanout::wechat::{Kind, SealedRequest};

pub(crate) use binary::Binary;
pub(crate) use stored::{
    JobRow, StoreView, a_job_after, attempts, callbacks, job_states_of, jobs, no_jobs_left, stored,
};
pub(crate) use target::{Received, Target};
pub(crate) use wx::{Wx, event_xml, text_from, text_json, text_xml};

/// The longest any test waits for something that should happen.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// How long a test watches for something that must NOT happen (a delivery, a retry): many poll
/// intervals and backoffs of [`FAST`].
pub(crate) const SETTLE: Duration = Duration::from_millis(400);

/// Settings that make every test fast: workers poll every 20 ms, retries start after 10 ms.
/// Tests add their own `[server]` table and accounts after it; per-target keys override these.
pub(crate) const FAST: &str = r#"
[delivery]
poll_interval_ms = 20

[target_defaults]
timeout_ms = 2000
max_attempts = 5
backoff_initial_ms = 10
backoff_max_ms = 50
"#;

/// Polls `check` every 10 ms until it returns `Some`, for at most [`WAIT`]; fails the test with
/// `what` otherwise.
pub(crate) async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {WAIT:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`eventually`] for checks that must await (an HTTP request): polls every 10 ms, each check
/// included, for at most [`WAIT`].
pub(crate) async fn eventually_async<T, F>(what: &str, mut check: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Some(value)) = tokio::time::timeout(left, check()).await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {WAIT:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Gives the proxy [`SETTLE`] to do something it must not do.
pub(crate) async fn settle() {
    tokio::time::sleep(SETTLE).await;
}

/// What `serve` (and `check-config`) say of the configuration `toml` layered over the defaults:
/// loading it, then building what the proxy runs on; the test fails if both succeed.
pub(crate) fn config_error(toml: &str) -> String {
    let built = Config::from_toml(toml).and_then(|config| wechat_fanout::routing::build(&config));
    match built {
        Ok(_) => panic!("the configuration was accepted:\n{toml}"),
        Err(e) => e.to_string(),
    }
}

/// A proxy with one plaintext account, `main`, whose only target, `t`, is at `url` with
/// `settings`.
pub(crate) async fn proxy_with_one_target(url: &str, settings: &str) -> (Wx, Proxy) {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}",
        wx.account("main", ""),
        Wx::target("t", url, settings)
    );
    let proxy = Proxy::start(&toml).await;
    (wx, proxy)
}

/// A safe-mode account `main` whose primary `bot` (with `bot_settings`) answers `reply`, beside
/// a `plain` target, both at `/hook?via=…`: posts one callback and checks that WeChat's answer
/// is the bot's reply. Returns the callback and what each target got, once both deliveries are
/// recorded, after checking what must be the same (method, path and query, body, Content-Type,
/// the headers but for the delivery id and `Host`) and that each got it once.
pub(crate) async fn through_a_primary_and_a_plain_target(
    bot: &Target,
    bot_settings: &str,
    reply: &str,
) -> (SealedRequest, Received, Received) {
    bot.set_reply("application/xml", reply);
    let plain = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let toml = format!(
        "{FAST}{}{}{}",
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", &bot.url("/hook?via=primary"), bot_settings),
        Wx::target("plain", &plain.url("/hook?via=primary"), ""),
    );
    let proxy = Proxy::start(&toml).await;

    let sealed = wx.seal(&text_xml("the same bytes to both"));
    let answer = proxy.post("main", &sealed).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.text(), reply);
    assert_eq!(answer.header("content-type"), Some("application/xml"));

    let at_bot = bot.wait_for(1).await.remove(0);
    let at_plain = plain.wait_for(1).await.remove(0);
    assert_eq!(at_bot.method, "POST");
    assert_eq!(
        at_bot.path_and_query,
        format!("/hook?via=primary&{}", sealed.query)
    );
    assert_eq!(at_bot.path_and_query, at_plain.path_and_query);
    assert_eq!(at_bot.body, sealed.body.as_bytes());
    assert_eq!(at_bot.body, at_plain.body);
    assert_eq!(at_bot.header("content-type"), Some(sealed.content_type));
    assert_eq!(at_bot.header("x-wechat-fanout-account"), Some("main"));
    assert_eq!(at_bot.attempt(), 1);
    no_jobs_left(&proxy.store(), "both deliveries recorded").await;
    settle().await;
    assert_eq!((bot.count(), plain.count()), (1, 1));
    assert_ne!(
        at_bot.delivery(),
        at_plain.delivery(),
        "one delivery per target"
    );
    // The same header set, names and values, but for the per-target delivery id and the
    // protocol's own (HTTP/2 has no Host; lengths are framing).
    let headers = |r: &Received| {
        let mut headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .filter(|(name, _)| {
                !matches!(
                    &**name,
                    "x-wechat-fanout-delivery" | "host" | "content-length"
                )
            })
            .collect();
        headers.sort();
        headers
    };
    assert_eq!(headers(&at_bot), headers(&at_plain));
    (sealed, at_bot, at_plain)
}

/// The most of a target's answer the proxy reads: 1 MiB. A longer one is never relayed.
pub(crate) const ANSWER_CAP: usize = 1 << 20;

/// A passive text reply of exactly `len` bytes, its content padded with `a`.
pub(crate) fn text_reply_of(len: usize) -> String {
    let start = "<xml><ToUserName>o1</ToUserName><MsgType>text</MsgType><Content>";
    let end = "</Content></xml>";
    let mut reply = String::with_capacity(len);
    reply.push_str(start);
    reply.extend(std::iter::repeat_n('a', len - start.len() - end.len()));
    reply.push_str(end);
    reply
}

/// The first whole request in `buf`, as a test target written on TCP reads it: how many bytes
/// it takes, its head (without the blank line that ends it) and its body, framed by its
/// Content-Length (none: no body). `None` until all of it is in.
pub(crate) fn next_request(buf: &[u8]) -> Option<(usize, String, Vec<u8>)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let length: usize = header_in(&head, "content-length").map_or(Some(0), |v| v.parse().ok())?;
    let body = buf.get(end + 4..end + 4 + length)?.to_vec();
    Some((end + 4 + length, head, body))
}

/// The value of header `name` in an HTTP head.
pub(crate) fn header_in<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// A local address where nothing listens (bound, then released): a target that is down, or a
/// port a process binds again after a restart. It is taken below the kernel's ephemeral range
/// (32768 and up on Linux), where the outgoing connections of every test get their ports: a
/// port from there, once released, can become one of theirs before it is bound again, and the
/// bind then fails. Each call gets a port of its own, from a start that differs per process.
pub(crate) fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static TAKEN: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % u32::from(SPAN)) as u16;
    loop {
        let n = TAKEN.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free port left below the ephemeral range");
        let port = FIRST + (start + n) % SPAN;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("local address");
        }
    }
}

/// The proxy, running in this test's runtime with its own SQLite file in a temporary folder.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    /// The admin listener, for proxies started with [`Proxy::start_with_admin`].
    pub(crate) admin: Option<SocketAddr>,
    /// The SQLite file, for tests that damage or hold it as a fault would (a lock, a full
    /// disk); what is stored in it is seen through [`Proxy::store`].
    pub(crate) db: PathBuf,
    /// The store it runs on; `None` once stopped, so that its file is free for another.
    store: Option<Arc<dyn Store>>,
    /// The effective configuration, with the real addresses: what [`Proxy::write_config`] writes.
    config: Config,
    shutdown: CancellationToken,
    run: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts the proxy (`wechat_fanout::run_with`, no admin listener, no reload) with `toml`
    /// layered over the defaults; the store path is replaced by a file in a fresh temporary folder.
    pub(crate) async fn start(toml: &str) -> Proxy {
        Proxy::launch(toml, false).await
    }

    /// The same, with the admin listener (health, metrics, dead letters) on its own port.
    pub(crate) async fn start_with_admin(toml: &str) -> Proxy {
        Proxy::launch(toml, true).await
    }

    async fn launch(toml: &str, with_admin: bool) -> Proxy {
        let mut config = Config::from_toml(toml)
            .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{toml}"));
        let dir = tempfile::tempdir().expect("temporary folder");
        let db = dir.path().join("fanout.db");
        config.store.path = db.clone();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&db, config.store.synchronous).expect("open the store"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        config.server.listen = addr;
        let admin_listener = if with_admin {
            Some(TcpListener::bind("127.0.0.1:0").await.expect("bind admin"))
        } else {
            None
        };
        let admin = admin_listener
            .as_ref()
            .map(|l| l.local_addr().expect("local address"));
        if let Some(admin) = admin {
            config.admin.listen = admin;
        }
        let shutdown = CancellationToken::new();
        let listeners = wechat_fanout::Listeners {
            wechat: listener,
            admin: admin_listener,
        };
        let run = spawn_run(&config, store.clone(), listeners, &shutdown);
        Proxy {
            addr,
            admin,
            db,
            store: Some(store),
            config,
            shutdown,
            run: Some(run),
            client: client(),
            _dir: dir,
        }
    }

    /// Sends a sealed callback to `/wechat/{account}` as WeChat would.
    pub(crate) async fn post(&self, account: &str, sealed: &SealedRequest) -> Answer {
        self.post_raw(
            account,
            &sealed.query,
            sealed.content_type,
            sealed.body.clone(),
        )
        .await
    }

    /// A POST with exactly this query string, Content-Type and body.
    pub(crate) async fn post_raw(
        &self,
        account: &str,
        query: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let request = self
            .client
            .post(format!("http://{}/wechat/{account}?{query}", self.addr))
            .header(CONTENT_TYPE, content_type)
            .body(body);
        send(request).await
    }

    /// A GET with exactly this query string.
    pub(crate) async fn get(&self, account: &str, query: &str) -> Answer {
        send(
            self.client
                .get(format!("http://{}/wechat/{account}?{query}", self.addr)),
        )
        .await
    }

    /// Any other request.
    pub(crate) async fn request(&self, method: reqwest::Method, path_and_query: &str) -> Answer {
        send(
            self.client
                .request(method, format!("http://{}{path_and_query}", self.addr)),
        )
        .await
    }

    /// `http://127.0.0.1:port` of the admin listener.
    pub(crate) fn admin_url(&self) -> String {
        let admin = self
            .admin
            .expect("the proxy was started with an admin listener");
        format!("http://{admin}")
    }

    /// A request to the admin API: `path_and_query` starts with `/`.
    pub(crate) async fn admin(&self, method: reqwest::Method, path_and_query: &str) -> Answer {
        let url = format!("{}{path_and_query}", self.admin_url());
        send(self.client.request(method, url)).await
    }

    /// What it stored, through the `Store` trait it runs on.
    pub(crate) fn store(&self) -> StoreView {
        StoreView::Store(self.store.clone().expect("the proxy is running"))
    }

    /// Writes this proxy's effective configuration (secrets, real `server.listen` and
    /// `admin.listen` included) to `dir/config.toml`, for the CLI commands that talk to it.
    pub(crate) fn write_config(&self, dir: &Path) -> PathBuf {
        let path = dir.join("config.toml");
        let text = toml::to_string(&self.config).expect("the config serializes");
        std::fs::write(&path, text).expect("write the config");
        path
    }

    /// Stops the proxy and starts it again on the same ports with the same store, as a restart
    /// of the process would.
    pub(crate) async fn restart(&mut self) {
        let (result, _) = self.stop().await;
        result.expect("the proxy stopped cleanly");
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&self.db, self.config.store.synchronous).expect("reopen the store"),
        );
        self.store = Some(store.clone());
        let wechat = TcpListener::bind(self.addr).await.expect("rebind");
        let admin = match self.admin {
            Some(admin) => Some(TcpListener::bind(admin).await.expect("rebind admin")),
            None => None,
        };
        self.shutdown = CancellationToken::new();
        let listeners = wechat_fanout::Listeners { wechat, admin };
        self.run = Some(spawn_run(&self.config, store, listeners, &self.shutdown));
    }

    /// Cancels the shutdown token and waits for `run` to return: its result and how long it took.
    /// Its store is closed then (the file is free for another to open); the file stays until
    /// the `Proxy` is dropped.
    pub(crate) async fn stop(&mut self) -> (anyhow::Result<()>, Duration) {
        let started = Instant::now();
        self.shutdown.cancel();
        let run = self.run.take().expect("the proxy is running");
        let result = tokio::time::timeout(WAIT, run)
            .await
            .expect("run returned within the wait limit")
            .expect("run did not panic");
        self.store = None;
        (result, started.elapsed())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Runs the proxy on `listeners` until `shutdown` is cancelled, as `serve` would.
fn spawn_run(
    config: &Config,
    store: Arc<dyn Store>,
    listeners: wechat_fanout::Listeners,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let routes = wechat_fanout::routing::build(config).expect("the test config builds");
    tokio::spawn(wechat_fanout::run_with(
        config.clone(),
        routes,
        store,
        listeners,
        None,
        shutdown.clone(),
    ))
}

/// An HTTP client for loopback servers: no proxy from the environment, at most [`WAIT`].
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .expect("HTTP client")
}

/// What the proxy answered, and how long the answer took.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) elapsed: Duration,
}

impl Answer {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the plain `success` WeChat expects.
    pub(crate) fn assert_success(&self) {
        assert_eq!(
            (self.status, self.text().as_str()),
            (200, "success"),
            "expected 200 success, got {self:?}"
        );
    }
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let started = Instant::now();
    let response = request.send().await.expect("the proxy answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("the answer's body");
    Answer {
        status,
        headers,
        body,
        elapsed: started.elapsed(),
    }
}

/// Writes a whole HTTP/1.1 request on a fresh connection and reads the answer until the server
/// closes it: for what `reqwest` will not send (chunked bodies of our choosing).
pub(crate) async fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write the request");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no complete answer within {WAIT:?}: {answer:?}"),
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    (status, text)
}

/// The head of a raw POST of `query` to `/wechat/main`: the request line and `Host`, then
/// `headers` as given (the blank line that ends the head is the caller's, who may leave it out).
pub(crate) fn raw_post_head(query: &str, headers: &str) -> Vec<u8> {
    format!("POST /wechat/main?{query} HTTP/1.1\r\nHost: wx\r\n{headers}").into_bytes()
}

/// `body` in chunks of `size` bytes, chunked-encoded, with the final empty chunk.
pub(crate) fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}
