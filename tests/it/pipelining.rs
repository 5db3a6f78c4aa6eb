//! Targets with `pipelining = true`: their requests share one HTTP/1.1 connection and go out
//! without waiting for the answers before them; the answers come back in order. The bytes are
//! those of any other delivery. A target that closes the connection, or does not answer in
//! time, fails the requests still on it, and they are sent again on a new one.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use wechat_fanout::wechat::SealedRequest;

use crate::support::{
    Proxy, Target, Wx, a_job_after, eventually, free_addr, next_request, no_jobs_left,
    proxy_with_one_target, text_xml, through_a_primary_and_a_plain_target,
};

/// A pipelined primary gets the callback byte for byte as a target without pipelining gets it
/// (path and query, body, Content-Type, delivery headers), and its answer is the passive reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_primary_gets_the_callback_byte_identical_and_its_reply_is_relayed() {
    let bot = Target::start(200).await;
    let reply = "<xml><Content>pipelined</Content></xml>";
    let (_, pipelined, _) =
        through_a_primary_and_a_plain_target(&bot, "pipelining = true", reply).await;
    assert_eq!(pipelined.version, hyper::Version::HTTP_11);
    assert_eq!(
        pipelined.header("host"),
        Some(&*bot.addr.to_string()),
        "Host names the target's address"
    );
}

/// Requests go out without waiting for the answers before them: a target that answers nothing
/// until three requests are in gets all three on one connection, and answers them in one write.
/// (Without pipelining each would wait on a connection of its own for the other two.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_out_before_the_answers_to_those_before_them() {
    let target = RawTarget::start(3, Duration::from_secs(10)).await;
    let (wx, proxy) =
        proxy_with_one_target(&target.url(), "pipelining = true\ntimeout_ms = 20000").await;

    let sealed = post_three(&wx, &proxy, "pipelined").await;
    no_jobs_left(&proxy.store(), "three callbacks delivered").await;
    assert_eq!(target.connections(), 1, "one connection");
    assert_eq!(target.batches(), vec![3], "three answers in one write");
    let mut bodies = target.bodies();
    bodies.sort();
    assert_eq!(
        bodies,
        sorted_bodies(&sealed),
        "each callback once, byte for byte"
    );
}

/// A target that answers one request with `Connection: close` and closes: the requests already
/// written behind it are failed and sent again on a new connection; nothing is lost, nothing
/// becomes a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_behind_a_closed_connection_are_sent_again_on_a_new_one() {
    let target = RawTarget::start(3, Duration::from_millis(200)).await;
    target.close_after_one.store(true, Ordering::SeqCst);
    let (wx, proxy) =
        proxy_with_one_target(&target.url(), "pipelining = true\nmax_attempts = 1000").await;

    let sealed = post_three(&wx, &proxy, "behind a close").await;
    no_jobs_left(&proxy.store(), "three callbacks delivered").await;
    // Each connection answered one request and was closed.
    let batches = target.batches();
    assert!(batches.iter().all(|&n| n == 1), "{batches:?}");
    assert_eq!(batches.len(), target.connections());
    assert!(
        target.connections() >= 3,
        "{} connections",
        target.connections()
    );
    // The requests that were on a closed connection came again.
    let mut bodies = target.bodies();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies, sorted_bodies(&sealed), "every callback arrived");
    assert!(
        target.bodies().len() > 3,
        "no request was behind another on a connection: the test did not test"
    );
}

/// A connection whose oldest request is not answered within the target's timeout is closed
/// with every request on it: each retry goes out on a new connection, and once the target
/// answers again the callback is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_does_not_answer_in_time_is_closed_and_replaced() {
    let target = RawTarget::start(1, Duration::from_secs(10)).await;
    target.silent.store(true, Ordering::SeqCst);
    let (wx, proxy) = proxy_with_one_target(
        &target.url(),
        "pipelining = true\ntimeout_ms = 300\nmax_attempts = 1000",
    )
    .await;

    let sealed = wx.seal(&text_xml("no answer in time"));
    proxy.post("main", &sealed).await.assert_success();
    let timed_out = a_job_after(&proxy.store(), 2, "two attempts timed out").await;
    let error = timed_out.last_error.unwrap_or_default();
    assert!(error.contains("timed out after 300ms"), "{error}");
    eventually("a new connection for each attempt", || {
        (target.connections() >= 2).then_some(())
    })
    .await;

    target.silent.store(false, Ordering::SeqCst);
    no_jobs_left(&proxy.store(), "delivered once the target answers").await;
    assert!(target.bodies().iter().all(|b| b == sealed.body.as_bytes()));
}

/// A pipelined target that is down fails each attempt with the connection's error, and gets
/// the callback once it is up: the failed connection is not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_target_that_is_down_gets_the_callback_once_it_is_up() {
    let addr = free_addr();
    let url = format!("http://{addr}/hook");
    let (wx, proxy) = proxy_with_one_target(&url, "pipelining = true\nmax_attempts = 1000").await;
    let sealed = wx.seal(&text_xml("while it is down"));
    proxy.post("main", &sealed).await.assert_success();
    let refused = a_job_after(&proxy.store(), 1, "an attempt refused").await;
    let error = refused.last_error.unwrap_or_default();
    assert!(error.starts_with("connection failed: "), "{error}");

    let target = Target::start_on(addr, 200).await;
    let got = target.wait_for(1).await;
    assert_eq!(got[0].body, sealed.body.as_bytes());
    no_jobs_left(&proxy.store(), "delivered once up").await;
}

/// Three callbacks posted at once, each answered 200.
async fn post_three(wx: &Wx, proxy: &Proxy, text: &str) -> Vec<SealedRequest> {
    let sealed: Vec<_> = (0..3)
        .map(|n| wx.seal(&text_xml(&format!("{text} {n}"))))
        .collect();
    let (a, b, c) = tokio::join!(
        proxy.post("main", &sealed[0]),
        proxy.post("main", &sealed[1]),
        proxy.post("main", &sealed[2]),
    );
    for answer in [a, b, c] {
        answer.assert_success();
    }
    sealed
}

/// The callbacks' bodies, sorted.
fn sorted_bodies(sealed: &[SealedRequest]) -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = sealed.iter().map(|s| s.body.as_bytes().to_vec()).collect();
    bodies.sort();
    bodies
}

/// A target on TCP directly, to see how requests arrive: on each connection it reads requests
/// and answers those waiting (`200`, `success`) in one write once `batch` are in, or `wait`
/// after the first of them came. `close_after_one`: it answers only the first, with
/// `Connection: close`, and closes. `silent`: it reads and never answers.
struct RawTarget {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Each request's body, in order of arrival.
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    /// How many answers each write carried.
    batches: Arc<Mutex<Vec<usize>>>,
    close_after_one: Arc<AtomicBool>,
    silent: Arc<AtomicBool>,
    server: tokio::task::JoinHandle<()>,
}

impl RawTarget {
    async fn start(batch: usize, wait: Duration) -> RawTarget {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut target = RawTarget {
            addr,
            connections: Arc::default(),
            bodies: Arc::default(),
            batches: Arc::default(),
            close_after_one: Arc::default(),
            silent: Arc::default(),
            server: tokio::spawn(async {}),
        };
        let (connections, bodies, batches) = (
            target.connections.clone(),
            target.bodies.clone(),
            target.batches.clone(),
        );
        let (close_after_one, silent) = (target.close_after_one.clone(), target.silent.clone());
        target.server = tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                connections.fetch_add(1, Ordering::SeqCst);
                let (bodies, batches) = (bodies.clone(), batches.clone());
                let (close_after_one, silent) = (close_after_one.clone(), silent.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let mut waiting = 0;
                    loop {
                        let read = if waiting > 0 {
                            tokio::time::timeout(wait, stream.read(&mut chunk)).await
                        } else {
                            Ok(stream.read(&mut chunk).await)
                        };
                        match read {
                            Ok(Ok(0) | Err(_)) => return,
                            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                            // Waited long enough: answer what is in.
                            Err(_) => {}
                        }
                        while let Some((len, _, body)) = next_request(&buf) {
                            bodies.lock().unwrap().push(body);
                            buf.drain(..len);
                            waiting += 1;
                        }
                        if silent.load(Ordering::SeqCst) || waiting == 0 {
                            continue;
                        }
                        if waiting < batch && read.is_ok() {
                            continue;
                        }
                        if close_after_one.load(Ordering::SeqCst) {
                            let close = "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\
                                         Connection: close\r\n\r\nsuccess";
                            batches.lock().unwrap().push(1);
                            let _ = stream.write_all(close.as_bytes()).await;
                            return;
                        }
                        let answers =
                            "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsuccess".repeat(waiting);
                        batches.lock().unwrap().push(waiting);
                        waiting = 0;
                        if stream.write_all(answers.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        target
    }

    /// Its URL, with the path `/hook`.
    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().unwrap().clone()
    }

    fn batches(&self) -> Vec<usize> {
        self.batches.lock().unwrap().clone()
    }
}

impl Drop for RawTarget {
    fn drop(&mut self) {
        self.server.abort();
    }
}
