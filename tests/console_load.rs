//! Issue 23: the console's event streams must not slow the answers to WeChat. With thousands of
//! streams asked for (a page left open in many tabs, or a script), WeChat's answers once took
//! seconds: every stream wrote every event as JSON on the threads that answer WeChat.
//!
//! The real binary, with `admin.show_content` (the largest events) and the default
//! `admin.max_event_streams`, gets 50 callbacks a second; the p99 of the answers is measured
//! with 6,000 streams asked for (those let in are read as a browser would), and must stay within
//! [`MARGIN`] of the p99 with no stream open. That one is measured before the streams are asked
//! for and again after they are closed, and the larger counts: on a machine that also runs other
//! work, the figure drifts by a few ms from one run of seconds to the next. For the same reason a
//! run with the streams open that is over the margin is run once more, and the better counts.
//!
//! Its own test binary: `cargo test` runs one binary at a time, so nothing else runs beside this
//! timing-sensitive test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The figures are printed on success too (`--nocapture`): they are what the README quotes.
#![allow(clippy::print_stderr)]

#[allow(dead_code, unused_imports)]
#[path = "it/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use support::{Binary, FAST, Target, Wx, free_addr, text_xml};

/// Streams asked for.
const STREAMS: usize = 6000;
/// Callbacks a second, for [`RUN`].
const RATE: u32 = 50;
const RUN: Duration = Duration::from_secs(5);
/// How much later the p99 answer may come with the streams open. Each event is written once and
/// sent to at most `admin.max_event_streams` (64) streams: a few hundred small writes a second,
/// which on this machine moves the p99 by well under 1 ms. Before the cap, the p99 was seconds.
/// The margin is wide because CI machines are shared: one CI run measured 20 ms with the streams
/// open (twice) against 4 ms without, where this machine measures 3.9 against 3.7; a margin that
/// tight measures the neighbours, and the fault it guards against is a hundred times larger. The
/// streams' cost itself is measured by the load benchmark, not here.
const MARGIN: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_event_streams_do_not_slow_the_answers_to_wechat() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let (listen, admin) = (free_addr(), free_addr());
    // `normal`: what is measured is the CPU the streams take, not the disk's flushes.
    let config = format!(
        "{FAST}[server]\nlisten = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\nshow_content = true\n\
         [store]\npath = \"{}\"\nsynchronous = \"normal\"\n{}{}",
        dir.path().join("fanout.db").display(),
        wx.account("main", ""),
        Wx::target("crm", &target.url("/crm"), ""),
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let mut binary = Binary::serve(&path, listen, &dir.path().join("log")).await;
    binary.wait_listening().await;
    binary.wait_for_port(admin, Duration::from_millis(20)).await;

    // Warm up: connections, the store's pages.
    callbacks(listen, &wx, 20, Duration::from_secs(1)).await;
    let (before, failed_before) = p99(callbacks(listen, &wx, RATE, RUN).await);

    let (accepted, refused, streams) = open_streams(admin).await;
    let (mut loaded, mut failed) = p99(callbacks(listen, &wx, RATE, RUN).await);
    if loaded > before + MARGIN {
        // One run of seconds on a shared machine can catch a burst of other work (once 17 ms
        // in CI): a second run with the streams still open decides, and the better one counts.
        // The fault this guards against cost seconds in every run.
        let (again, failed_again) = p99(callbacks(listen, &wx, RATE, RUN).await);
        eprintln!("p99 with the streams open: {loaded:?}, then {again:?}");
        loaded = loaded.min(again);
        failed += failed_again;
    }
    drop(streams);
    let (after, failed_after) = p99(callbacks(listen, &wx, RATE, RUN).await);
    let baseline = before.max(after);
    let failed_alone = failed_before + failed_after;
    eprintln!(
        "p99 of the answers to WeChat: {before:?} before and {after:?} after, without streams \
         ({failed_alone} not `success`); {loaded:?} with {accepted} streams open and {refused} \
         refused ({failed} not `success`)"
    );
    assert!(
        loaded <= baseline + MARGIN,
        "p99 {loaded:?} with {accepted} streams, {baseline:?} without"
    );
    assert_eq!(
        (failed_alone, failed),
        (0, 0),
        "answers other than 200 success"
    );
    assert_eq!((accepted, refused), (64, STREAMS - 64));
    drop(binary);
}

/// Sends `rate` callbacks a second for `run`, each on schedule whatever the earlier ones are
/// doing (as WeChat does). Each one's answer time, and whether it was 200 `success`.
async fn callbacks(listen: SocketAddr, wx: &Wx, rate: u32, run: Duration) -> Vec<(Duration, bool)> {
    // Longer than support's 10 s: a slow answer is a figure to report, not a panic.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let every = Duration::from_secs(1) / rate;
    let count = (run.as_millis() / every.as_millis()) as u32;
    let start = Instant::now();
    let mut sent = JoinSet::new();
    for n in 0..count {
        tokio::time::sleep_until((start + every * n).into()).await;
        let sealed = wx.seal(&text_xml(&format!(
            "callback {n} for the console's streams"
        )));
        let request = client
            .post(format!("http://{listen}/wechat/main?{}", sealed.query))
            .header("content-type", sealed.content_type)
            .body(sealed.body);
        sent.spawn(async move {
            let started = Instant::now();
            let response = request.send().await.expect("the proxy answers");
            let status = response.status().as_u16();
            let body = response.bytes().await.expect("an answer");
            (
                started.elapsed(),
                (status, &body[..]) == (200, &b"success"[..]),
            )
        });
    }
    sent.join_all().await
}

/// The p99 of the answer times, and how many answers were not `success`.
fn p99(answers: Vec<(Duration, bool)>) -> (Duration, usize) {
    let failed = answers.iter().filter(|(_, ok)| !ok).count();
    let mut times: Vec<Duration> = answers.into_iter().map(|(time, _)| time).collect();
    times.sort();
    let index = (times.len() * 99).div_ceil(100) - 1;
    (times[index], failed)
}

/// Asks for [`STREAMS`] event streams, 100 at a time; those let in are read to the end in the
/// background, as a browser reads them. How many were let in and refused (503), and the readers.
async fn open_streams(admin: SocketAddr) -> (usize, usize, JoinSet<()>) {
    let at_once = Arc::new(Semaphore::new(100));
    let mut opening = JoinSet::new();
    for _ in 0..STREAMS {
        let permit = at_once.clone().acquire_owned().await.unwrap();
        opening.spawn(async move {
            let opened = open_stream(admin).await;
            drop(permit);
            opened
        });
    }
    let (mut accepted, mut refused) = (0, 0);
    let mut streams = JoinSet::new();
    while let Some(opened) = opening.join_next().await {
        match opened.unwrap() {
            Ok(mut stream) => {
                accepted += 1;
                streams.spawn(async move {
                    let mut buf = vec![0; 16 * 1024];
                    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
            Err(status) => {
                assert_eq!(status, 503);
                refused += 1;
            }
        }
    }
    (accepted, refused, streams)
}

/// `GET /console/events` on a connection of its own: the open stream after its head, or the
/// status it was refused with.
async fn open_stream(admin: SocketAddr) -> Result<TcpStream, u16> {
    let mut stream = TcpStream::connect(admin).await.expect("connect");
    let request = format!("GET /console/events HTTP/1.1\r\nHost: {admin}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.expect("read the head");
        assert_eq!(n, 1, "the stream closed in its head: {head:?}");
        head.push(byte[0]);
    }
    let status: u16 = String::from_utf8_lossy(&head[9..12]).parse().unwrap();
    match status {
        200 => Ok(stream),
        other => Err(other),
    }
}
