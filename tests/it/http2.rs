//! Targets with `http2 = true`: sent to over HTTP/2 only (cleartext with prior knowledge here),
//! the same bytes as over HTTP/1.1, their requests in flight multiplexed on one connection and
//! still bounded by `max_concurrency`. A target whose server does not speak the protocol its
//! `http2` setting asks for fails the attempt, which is retried like any connection failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use crate::support::{
    FAST, Proxy, Target, Wx, eventually_async, jobs, no_jobs_left, text_xml,
    through_a_primary_and_a_plain_target,
};

/// An HTTP/2-only target gets what an HTTP/1.1 target gets, byte for byte (path and query,
/// body, Content-Type, delivery headers), over HTTP/2; as the primary, its answer is the
/// passive reply WeChat gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_primary_gets_the_callback_byte_identical_and_its_reply_is_relayed() {
    let bot = Target::start_h2(200).await;
    let (_, over_h2, over_h1) = through_a_primary_and_a_plain_target(
        &bot,
        "http2 = true",
        "<xml><Content>over h2</Content></xml>",
    )
    .await;
    assert_eq!(over_h2.version, hyper::Version::HTTP_2);
    assert_eq!(over_h1.version, hyper::Version::HTTP_11);
}

/// `http2 = true` at a server that speaks only HTTP/1.1 fails every attempt with a connection
/// error and is retried; a target without it at an HTTP/2-only server fails the same way. The
/// one whose `http2` matches its server gets the callback. Nothing waits for the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_whose_http2_setting_does_not_match_its_server_fails_and_is_retried() {
    let h1_only = Target::start(200).await;
    let h2_only = Target::start_h2(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let retried = "max_attempts = 1000\ntimeout_ms = 5000";
    let toml = format!(
        "{FAST}{}{}{}{}",
        wx.account("main", ""),
        Wx::target(
            "h2-at-h1",
            &h1_only.url("/h"),
            &format!("http2 = true\n{retried}")
        ),
        Wx::target("h1-at-h2", &h2_only.url("/h"), retried),
        Wx::target("h2", &h2_only.url("/ok"), "http2 = true"),
    );
    let proxy = Proxy::start(&toml).await;

    let sealed = wx.seal(&text_xml("which protocol"));
    proxy.post("main", &sealed).await.assert_success();

    let got = h2_only.wait_for(1).await;
    assert!(got.iter().any(|r| r.path_and_query.starts_with("/ok?")));
    // Three attempts each within far less than one 5 s timeout: refused, not waited out.
    let failed = eventually_async("both mismatched targets retried twice", || async {
        let jobs = jobs(&proxy.store()).await;
        let retried: Vec<_> = jobs.into_iter().filter(|j| j.attempts >= 3).collect();
        (retried.len() == 2).then_some(retried)
    })
    .await;
    for job in &failed {
        let error = job.last_error.clone().unwrap_or_default();
        assert_eq!(job.last_status, None, "{}: {error}", job.target);
        assert!(
            !error.contains("timed out"),
            "{}: last_error {error:?}",
            job.target
        );
        let expected = match &*job.target {
            // Says which protocol the target did not speak.
            "h2-at-h1" => "request failed over HTTP/2: ",
            _ => "request failed: ",
        };
        assert!(
            error.starts_with(expected),
            "{}: last_error {error:?}",
            job.target
        );
    }
    assert!(
        h1_only.received().is_empty(),
        "the HTTP/1.1 server took an HTTP/2 request"
    );
    let at_h2: Vec<_> = h2_only
        .received()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert!(
        at_h2.iter().all(|p| p.starts_with("/ok?")),
        "the HTTP/2 server took an HTTP/1.1 request: {at_h2:?}"
    );
}

/// Callbacks to an HTTP/2 target share one connection, and no more than its `max_concurrency`
/// are in flight at once: with 2 slots and a target that takes 300 ms, the third request starts
/// only when one of the first two is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_target_multiplexes_one_connection_within_max_concurrency() {
    let target = Target::start_h2(200).await;
    let slow = Duration::from_millis(300);
    target.set_delay(slow);
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}",
        wx.account("main", ""),
        Wx::target("t", &target.url("/t"), "http2 = true\nmax_concurrency = 2"),
    );
    let proxy = Proxy::start(&toml).await;

    for n in 0..4 {
        let sealed = wx.seal(&text_xml(&format!("multiplexed {n}")));
        proxy.post("main", &sealed).await.assert_success();
    }

    no_jobs_left(&proxy.store(), "four callbacks delivered").await;
    let mut arrivals: Vec<_> = target.received().into_iter().map(|r| r.at).collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), 4, "one request per callback");
    let second = arrivals[1].duration_since(arrivals[0]);
    assert!(
        second < slow,
        "the first two were not in flight together: {second:?}"
    );
    let third = arrivals[2].duration_since(arrivals[0]);
    assert!(
        third >= slow - Duration::from_millis(50),
        "the third request started {third:?} after the first, within the first's 300 ms"
    );
    assert_eq!(
        target.connections(),
        1,
        "the requests shared one connection"
    );
}

/// A target's HTTP/2 connection whose peer goes silent without a reset (a host that died, a NAT
/// that forgot the flow) is given up on: the attempts it swallows time out, a ping finds it
/// dead, and a new connection delivers the callback. Were it kept in the pool, every attempt
/// would go to it and time out until TCP itself gave up, minutes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_that_goes_silent_is_replaced() {
    let target = Target::start_h2(200).await;
    let relay = Relay::start(target.addr).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}",
        wx.account("main", ""),
        Wx::target(
            "t",
            &format!("http://{}/t", relay.addr),
            "http2 = true\ntimeout_ms = 500\nmax_attempts = 1000"
        ),
    );
    let proxy = Proxy::start(&toml).await;
    proxy
        .post("main", &wx.seal(&text_xml("before")))
        .await
        .assert_success();
    target.wait_for(1).await;
    // Its answer through the relay is recorded before the silence, or the silence could swallow
    // it and "before" would be sent again.
    no_jobs_left(&proxy.store(), "the first callback delivered").await;
    assert_eq!(relay.accepted(), 1);

    relay.silence_open_connections();
    let sealed = wx.seal(&text_xml("after the silence"));
    proxy.post("main", &sealed).await.assert_success();

    let got = target.wait_for(2).await;
    assert_eq!(got[1].body, sealed.body.as_bytes());
    assert!(
        got[1].attempt() >= 2,
        "the silent connection swallowed the first attempt"
    );
    assert_eq!(relay.accepted(), 2, "one new connection");
}

/// A TCP relay in front of a target whose open connections can go silent: from
/// [`Relay::silence_open_connections`] on, they swallow every byte both ways and never close,
/// while connections opened later pass.
struct Relay {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Connections numbered below this are silent.
    silent_below: Arc<AtomicUsize>,
    stop: tokio_util::sync::CancellationToken,
}

impl Relay {
    async fn start(to: std::net::SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            silent_below: Arc::default(),
            stop: tokio_util::sync::CancellationToken::new(),
        };
        let (accepted, silent_below, stop) = (
            relay.accepted.clone(),
            relay.silent_below.clone(),
            relay.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap(),
                    () = stop.cancelled() => return,
                };
                let number = accepted.fetch_add(1, Ordering::SeqCst);
                let server = TcpStream::connect(to).await.unwrap();
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                for (from, to) in [(client_read, server_write), (server_read, client_write)] {
                    let (silent_below, stop) = (silent_below.clone(), stop.clone());
                    tokio::spawn(async move {
                        tokio::select! {
                            () = pump(from, to, number, &silent_below) => {}
                            () = stop.cancelled() => {}
                        }
                    });
                }
            }
        });
        relay
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn silence_open_connections(&self) {
        self.silent_below.store(self.accepted(), Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies `from` to `to` until either ends, dropping the bytes once connection `number` is
/// silent.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    number: usize,
    silent_below: &AtomicUsize,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if number < silent_below.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
