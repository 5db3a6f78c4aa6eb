//! Delivery to targets that fail: retried from the store with backoff, given up on after
//! `max_attempts` (a dead letter in the store), at once when the target says the request
//! will never succeed, and after the delay a throttling target asks for.

use std::time::Duration;

use wechat_fanout::config::Mode;
use wechat_fanout::store::JobState;
use wechat_fanout::wechat::Kind;

use crate::support::{
    FAST, Proxy, Target, Wx, a_job_after, attempts, eventually_async, free_addr, header_in, jobs,
    next_request, no_jobs_left, proxy_with_one_target, settle, text_xml,
};

/// An `https` target goes through TLS: a server that answers the handshake with plain HTTP is a
/// failed connection, recorded with the TLS reason and retried, and never receives the callback
/// in clear text. The same with `http2 = true` at a cleartext HTTP/2 server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_target_is_reached_over_tls_only() {
    let plain = Target::start(200).await;
    let plain_h2 = Target::start_h2(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}{}",
        wx.account("main", ""),
        Wx::target(
            "t",
            &format!("https://{}/hook", plain.addr),
            "max_attempts = 1000"
        ),
        Wx::target(
            "h2",
            &format!("https://{}/hook", plain_h2.addr),
            "max_attempts = 1000\nhttp2 = true"
        ),
    );
    let proxy = Proxy::start(&toml).await;

    proxy
        .post("main", &wx.seal(&text_xml("over tls")))
        .await
        .assert_success();

    let failed = eventually_async(
        "two failed TLS attempts recorded for each target",
        || async {
            let failed: Vec<_> = jobs(&proxy.store())
                .await
                .into_iter()
                .filter(|j| j.attempts >= 2)
                .collect();
            (failed.len() == 2).then_some(failed)
        },
    )
    .await;
    for job in failed {
        let error = job.last_error.clone().unwrap_or_default();
        assert!(
            error.starts_with("connection failed: "),
            "{}: last_error: {error:?}",
            job.target
        );
        assert_eq!(job.last_status, None);
    }
    assert!(
        plain.received().is_empty() && plain_h2.received().is_empty(),
        "the callback went out in clear text"
    );
}

/// A target that is down when the callback arrives gets it once it comes up, on the same port:
/// the refused attempts were recorded and retried, and the same delivery id arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_was_down_gets_the_callback_when_it_comes_up() {
    let down = free_addr();
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}",
        wx.account("main", ""),
        Wx::target("t", &format!("http://{down}/hook"), "max_attempts = 1000"),
    );
    let proxy = Proxy::start(&toml).await;

    let sealed = wx.seal(&text_xml("while you were down"));
    proxy.post("main", &sealed).await.assert_success();

    let refused = eventually_async("two refused attempts recorded", || async {
        jobs(&proxy.store())
            .await
            .into_iter()
            .find(|j| j.attempts >= 2 && j.state != JobState::Dead)
    })
    .await;
    let error = refused.last_error.clone().unwrap_or_default();
    assert!(error.contains("connection failed"), "last_error: {error:?}");
    assert_eq!(refused.last_status, None);

    let target = Target::start_on(down, 200).await;
    let got = target.wait_for(1).await;
    assert_eq!(got[0].body, sealed.body.as_bytes());
    assert_eq!(got[0].delivery(), refused.id, "the same delivery");
    assert!(got[0].attempt() >= 3, "attempt {}", got[0].attempt());
    no_jobs_left(&proxy.store(), "the delivery recorded").await;
    settle().await;
    assert_eq!(target.count(), 1);
}

/// A target that keeps answering 500 gets exactly `max_attempts` attempts, numbered 1..=n, all
/// of one delivery; then the job is a dead letter with every attempt recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_answering_500_becomes_a_dead_letter_after_max_attempts() {
    let target = Target::start(500).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Compatible);
    let toml = format!(
        "{FAST}{}{}",
        wx.account("main", ""),
        Wx::target("t", &target.url("/t"), "max_attempts = 4"),
    );
    let proxy = Proxy::start(&toml).await;

    let sealed = wx.seal(&text_xml("doomed"));
    proxy.post("main", &sealed).await.assert_success();

    let dead = eventually_async("a dead letter in the store", || async {
        jobs(&proxy.store())
            .await
            .into_iter()
            .find(|j| j.state == JobState::Dead)
    })
    .await;
    settle().await;
    let got = target.received();
    assert_eq!(
        got.iter().map(|r| r.attempt()).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    for request in &got {
        assert_eq!(request.delivery(), dead.id);
        assert_eq!(request.body, sealed.body.as_bytes());
    }
    assert_eq!((dead.attempts, dead.last_status), (4, Some(500)));
    assert_eq!(jobs(&proxy.store()).await.len(), 1);
    assert_eq!(
        attempts(&proxy.store(), dead.id).await,
        (1..=4).map(|n| (n, Some(500))).collect::<Vec<_>>()
    );
}

/// 400 means the target will never take this request: a dead letter after one attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_answering_400_is_given_up_on_after_one_attempt() {
    let target = Target::start(400).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}",
        wx.account("main", ""),
        Wx::target("t", &target.url("/t"), "max_attempts = 5"),
    );
    let proxy = Proxy::start(&toml).await;

    proxy
        .post("main", &wx.seal(&text_xml("rejected")))
        .await
        .assert_success();
    let dead = eventually_async("a dead letter in the store", || async {
        jobs(&proxy.store())
            .await
            .into_iter()
            .find(|j| j.state == JobState::Dead)
    })
    .await;
    settle().await;
    assert_eq!(target.count(), 1, "{:?}", target.received());
    assert_eq!((dead.attempts, dead.last_status), (1, Some(400)));
}

/// 429 with `Retry-After: 1` is retried, and not before the second it asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_answering_429_is_retried_after_its_retry_after() {
    let target = Target::start(429).await;
    target.set_header("Retry-After", "1");
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}",
        wx.account("main", ""),
        Wx::target(
            "t",
            &target.url("/t"),
            "max_attempts = 5\nbackoff_max_ms = 5000"
        ),
    );
    let proxy = Proxy::start(&toml).await;

    let sealed = wx.seal(&text_xml("throttled"));
    proxy.post("main", &sealed).await.assert_success();
    let first = target.wait_for(1).await.remove(0);
    target.set_status(200);

    let got = target.wait_for(2).await;
    let gap = got[1].at - first.at;
    assert!(
        gap >= Duration::from_millis(950),
        "retried after {gap:?}, before Retry-After: 1"
    );
    assert_eq!((got[0].attempt(), got[1].attempt()), (1, 2));
    assert_eq!(got[1].delivery(), first.delivery());
    assert_eq!(got[1].body, sealed.body.as_bytes());
    no_jobs_left(&proxy.store(), "the delivery recorded").await;
    settle().await;
    assert_eq!(target.count(), 2);
}

/// `x-wechat-fanout-delivery` is what a target dedupes at-least-once deliveries by, so a new
/// callback must never get the id of an earlier, finished delivery. SQLite hands out the
/// highest rowid + 1 again once the newest job is deleted (delivered), which made every
/// callback after an idle moment arrive as "delivery 1" and be dropped as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_ids_are_not_reused_after_the_queue_empties() {
    let target = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}",
        wx.account("main", ""),
        Wx::target("t", &target.url("/t"), ""),
    );
    let proxy = Proxy::start(&toml).await;

    let mut ids = Vec::new();
    for n in 1..=3 {
        let sealed = wx.seal(&text_xml(&format!("message {n}")));
        proxy.post("main", &sealed).await.assert_success();
        let got = target.wait_for(n).await;
        assert_eq!(got[n - 1].body, sealed.body.as_bytes());
        ids.push(got[n - 1].delivery());
        no_jobs_left(&proxy.store(), "the delivery recorded").await;
    }
    // Strictly increasing, so no id was handed out twice.
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "a delivery id was handed out twice or went back: {ids:?}"
    );
}

/// A target that fails every attempt is not hammered with one attempt per due job: after
/// `TRIP_AFTER` failures in a row its worker pauses for a cool-down, and when the target is
/// back every callback is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_is_paused_after_failures_in_a_row_then_gets_everything() {
    let target = Target::start(503).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}",
        wx.account("main", ""),
        Wx::target(
            "t",
            &target.url("/t"),
            "max_concurrency = 1\nmax_attempts = 100\nbackoff_initial_ms = 2000\nbackoff_max_ms = 2000"
        ),
    );
    let proxy = Proxy::start(&toml).await;
    let mut sent = Vec::new();
    for n in 0..20 {
        let sealed = wx.seal(&text_xml(&format!("backlog {n}")));
        proxy.post("main", &sealed).await.assert_success();
        sent.push(sealed.body);
    }

    let trip = wechat_fanout::routing::retry::TRIP_AFTER as usize;
    target.wait_for(trip).await;
    settle().await;
    // One more may have started before the last failure was counted (one request in flight).
    let tried = target.count();
    assert!(
        (trip..=trip + 1).contains(&tried),
        "{tried} attempts for 20 due jobs while the circuit is open"
    );

    target.set_status(200);
    no_jobs_left(
        &proxy.store(),
        "every callback delivered once the target is back",
    )
    .await;
    let delivered: std::collections::HashSet<Vec<u8>> = target
        .received()
        .into_iter()
        .map(|r| r.body.to_vec())
        .collect();
    assert_eq!(
        delivered.len(),
        20,
        "each callback arrived (and was recorded as delivered)"
    );
    for body in &sent {
        assert!(delivered.contains(body.as_bytes()));
    }
}

/// Deliveries one after another to a plain-HTTP target go over one kept-alive connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_to_a_plain_http_target_share_one_connection() {
    let target = Target::start(200).await;
    let (wx, proxy) = proxy_with_one_target(&target.url("/hook"), "").await;
    for n in 0..5 {
        proxy
            .post("main", &wx.seal(&text_xml(&format!("kept alive {n}"))))
            .await
            .assert_success();
        target.wait_for(n + 1).await;
        no_jobs_left(&proxy.store(), "the delivery recorded").await;
    }
    assert_eq!(target.connections(), 1);
}

/// A target written on TCP directly, for answers no HTTP server library would give: it reads
/// one request per connection, records its attempt header, writes `answer` as given, and closes
/// the connection `linger` later.
struct RawTarget {
    addr: std::net::SocketAddr,
    /// The head of each request received.
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl RawTarget {
    async fn start(answer: &'static str, linger: Duration) -> RawTarget {
        RawTarget::start_at("127.0.0.1:0", answer, linger).await
    }

    /// The same, listening at `bind` (`[::1]:0` for IPv6).
    async fn start_at(bind: &str, answer: &'static str, linger: Duration) -> RawTarget {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let received = heads.clone();
        let server = tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let received = received.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    let head = loop {
                        let n = stream.read(&mut buf).await.unwrap();
                        assert!(n > 0, "the proxy closed before its request was complete");
                        request.extend_from_slice(&buf[..n]);
                        if let Some((_, head, _)) = next_request(&request) {
                            break head;
                        }
                    };
                    received.lock().unwrap().push(head);
                    stream.write_all(answer.as_bytes()).await.unwrap();
                    tokio::time::sleep(linger).await;
                });
            }
        });
        RawTarget {
            addr,
            heads,
            server,
        }
    }

    /// Its URL, with the path `/hook`.
    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Header `name` of each request received, in order ("none" where it was missing).
    fn headers(&self, name: &str) -> Vec<String> {
        let heads = self.heads.lock().unwrap();
        let value = |head: &String| header_in(head, name).unwrap_or("none").to_owned();
        heads.iter().map(value).collect()
    }
}

impl Drop for RawTarget {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A kept-alive connection that the target closed while it was idle (its keep-alive timeout)
/// is not used again: the next delivery opens a new one and succeeds at its first attempt,
/// instead of failing on the closed one and waiting for a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_target_closed_while_idle_is_not_used_again() {
    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nsuccess";
    let target = RawTarget::start(answer, Duration::from_millis(100)).await;
    let (wx, proxy) = proxy_with_one_target(&target.url(), "").await;
    for n in 0..3 {
        proxy
            .post(
                "main",
                &wx.seal(&text_xml(&format!("after an idle close {n}"))),
            )
            .await
            .assert_success();
        no_jobs_left(&proxy.store(), "the delivery recorded").await;
        // The target closes the connection meanwhile.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(target.headers("x-wechat-fanout-attempt"), ["1", "1", "1"]);
}

/// A target that closes the connection in the middle of its answer's body fails the attempt
/// at once, as an answer that could not be read (the words the `https` client uses for it),
/// not after the target's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_short_fails_the_attempt_at_once() {
    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nsucc";
    let target = RawTarget::start(answer, Duration::ZERO).await;
    let (wx, proxy) =
        proxy_with_one_target(&target.url(), "timeout_ms = 60000\nmax_attempts = 1000").await;
    proxy
        .post("main", &wx.seal(&text_xml("cut short")))
        .await
        .assert_success();
    let job = a_job_after(&proxy.store(), 1, "a failed attempt recorded").await;
    let error = job.last_error.unwrap_or_default();
    assert!(
        error.starts_with("reading the answer failed"),
        "last_error: {error:?}"
    );
    assert_eq!(job.last_status, None);
}

/// A plain-HTTP target at an IPv6 address gets its deliveries, with the address in brackets in
/// `Host`, as HTTP has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_at_an_ipv6_address_gets_its_deliveries() {
    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nsuccess";
    let target = RawTarget::start_at("[::1]:0", answer, Duration::from_secs(5)).await;
    let (wx, proxy) = proxy_with_one_target(&target.url(), "").await;
    proxy
        .post("main", &wx.seal(&text_xml("over IPv6")))
        .await
        .assert_success();
    no_jobs_left(&proxy.store(), "the delivery recorded").await;
    assert_eq!(target.headers("x-wechat-fanout-attempt"), ["1"]);
    assert_eq!(
        target.headers("host"),
        [format!("[::1]:{}", target.addr.port())]
    );
}
