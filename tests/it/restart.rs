//! Crashes, restarts and shutdowns: what was accepted survives a SIGKILL, and a SIGTERM or a
//! cancelled shutdown token ends the process cleanly within the grace period.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wechat_fanout::config::Mode;
use wechat_fanout::store::Store;
use wechat_fanout::wechat::{Kind, SealedRequest};

use crate::operate::{post_to_binary, write_binary_config};
use crate::support::{
    Binary, FAST, Proxy, StoreView, Target, Wx, eventually, free_addr, jobs, no_jobs_left, settle,
    text_xml,
};

/// A config file for the real binary (see [`write_binary_config`]) with one official account
/// whose single target is `target`, and `extra` keys for that target.
fn write_config(dir: &Path, listen: SocketAddr, target: &str, extra: &str) -> PathBuf {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let account = format!(
        "{}{}",
        wx.account("main", ""),
        Wx::target("t", target, extra)
    );
    write_binary_config(dir, listen, &account)
}

/// The incident: the target is down, 50 callbacks pile up (each answered 200), the process is
/// killed with SIGKILL. After a restart on the same store, with the target up, every accepted
/// callback is delivered (at least once) and nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_a_backlog_loses_no_accepted_callback() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let down = free_addr();
    let config = write_config(
        dir.path(),
        listen,
        &format!("http://{down}/hook"),
        "max_attempts = 1000\nbackoff_max_ms = 200",
    );
    let mut first = Binary::serve(&config, listen, &dir.path().join("first.log")).await;

    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let mut sent = HashSet::new();
    for batch in 0..5 {
        let sealed: Vec<_> = (0..10)
            .map(|n| wx.seal(&text_xml(&format!("backlog {batch}-{n}"))))
            .collect();
        let answers =
            (sealed.iter().cloned()).map(|s| async move { post_to_binary(listen, &s).await });
        for (s, answer) in sealed.iter().zip(futures_join_all(answers).await) {
            assert_eq!(answer, (200, "success".to_owned()));
            sent.insert(s.body.clone());
        }
    }
    assert_eq!(sent.len(), 50);

    let killed = first.kill_9();
    assert!(!killed.success(), "SIGKILL: {killed}");
    drop(first);

    let target = Target::start_on(down, 200).await;
    let mut second = Binary::serve(&config, listen, &dir.path().join("second.log")).await;
    let bodies = eventually("all 50 callbacks at the target", || {
        let bodies: HashSet<String> = target
            .received()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect();
        (bodies.len() >= 50).then_some(bodies)
    })
    .await;
    assert_eq!(bodies, sent, "exactly the accepted callbacks arrived");
    no_jobs_left(&StoreView::admin_of(&config), "no job left in the store").await;

    // Idle, it stops at once on SIGTERM.
    second.terminate();
    let (status, took) = second.wait_exit().await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}:\n{}",
        second.log()
    );
    assert!(
        took < Duration::from_millis(1000),
        "idle shutdown took {took:?}"
    );
}

/// Joins futures without a dependency on `futures`: all are polled concurrently by a task each.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("task"));
    }
    out
}

/// The real binary with one callback being delivered to `hanging`, which never answers: it, its
/// WeChat port and its config file.
async fn binary_with_a_delivery_in_flight(
    dir: &Path,
    hanging: &Target,
) -> (Binary, SocketAddr, PathBuf) {
    let listen = free_addr();
    let config = write_config(dir, listen, &hanging.url("/hook"), "timeout_ms = 30000");
    let binary = Binary::serve(&config, listen, &dir.join("serve.log")).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let sealed = wx.seal(&text_xml("in flight at shutdown"));
    assert_eq!(
        post_to_binary(listen, &sealed).await,
        (200, "success".to_owned())
    );
    hanging.wait_for(1).await;
    (binary, listen, config)
}

/// SIGTERM, then waits for the exit: it must be 0 and come within the 1 s grace period (plus
/// 500 ms for the process to start and end).
async fn terminate_within_the_grace_period(binary: &mut Binary, listen: SocketAddr) {
    binary.terminate();
    let (status, took) = binary.wait_exit().await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}:\n{}",
        binary.log()
    );
    assert!(
        took < Duration::from_millis(1500),
        "took {took:?} with a 1 s grace period:\n{}",
        binary.log()
    );
    assert!(
        std::net::TcpStream::connect(listen).is_err(),
        "nothing listens after the exit"
    );
}

/// SIGTERM with a delivery in flight to a target that never answers: the binary stops within the
/// grace period and exits 0; the undelivered job stays in the store for the next start, which
/// shows it (its admin API) and sends it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_within_the_grace_period() {
    let hanging = Target::start(200).await;
    hanging.hang();
    let dir = tempfile::tempdir().unwrap();
    let (mut binary, listen, config) = binary_with_a_delivery_in_flight(dir.path(), &hanging).await;

    terminate_within_the_grace_period(&mut binary, listen).await;
    let _next = Binary::serve(&config, listen, &dir.path().join("next.log")).await;
    let left = jobs(&StoreView::admin_of(&config)).await;
    assert_eq!(left.len(), 1, "the undelivered job is kept: {left:?}");
    let again = hanging.wait_for(2).await;
    assert_eq!(again[1].delivery(), left[0].id, "and sent again");
}

/// The same, with also a client that is slowly sending a request (headers sent, body not yet)
/// when SIGTERM arrives: the grace period bounds the whole shutdown, not each of its steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_slow_client_and_a_delivery_in_flight_exits_within_the_grace_period() {
    use tokio::io::AsyncWriteExt as _;
    let hanging = Target::start(200).await;
    hanging.hang();
    let dir = tempfile::tempdir().unwrap();
    let (mut binary, listen, _) = binary_with_a_delivery_in_flight(dir.path(), &hanging).await;
    let mut slow = tokio::net::TcpStream::connect(listen).await.unwrap();
    slow.write_all(b"POST /wechat/main HTTP/1.1\r\nHost: wx\r\nContent-Length: 100\r\n\r\n<xml>")
        .await
        .unwrap();

    terminate_within_the_grace_period(&mut binary, listen).await;
    drop(slow);
}

/// An embedded proxy with a shutdown grace of `grace_ms` and one callback being delivered to
/// `hanging`, which never answers: the proxy, its config and the callback.
async fn proxy_with_a_delivery_in_flight(
    hanging: &Target,
    grace_ms: u64,
) -> (Proxy, String, SealedRequest) {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}[server]\nshutdown_grace_ms = {grace_ms}\n{}{}",
        wx.account("main", ""),
        Wx::target("t", &hanging.url("/h"), "timeout_ms = 30000"),
    );
    let proxy = Proxy::start(&toml).await;
    let sealed = wx.seal(&text_xml("in flight"));
    proxy.post("main", &sealed).await.assert_success();
    hanging.wait_for(1).await;
    (proxy, toml, sealed)
}

/// The library's shutdown token does the same for an embedded proxy: `run` returns `Ok` within
/// the grace period though a delivery hangs, and the port is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_shutdown_token_stops_run_within_the_grace_period() {
    let hanging = Target::start(200).await;
    hanging.hang();
    let (mut proxy, _, _) = proxy_with_a_delivery_in_flight(&hanging, 500).await;

    let (result, took) = proxy.stop().await;
    result.expect("run ends with Ok");
    assert!(
        took < Duration::from_millis(1000),
        "took {took:?} with a 500 ms grace"
    );
    settle().await;
    assert!(
        tokio::net::TcpStream::connect(proxy.addr).await.is_err(),
        "the listener is closed"
    );
}

/// An embedded proxy stopped with a delivery still in flight can be started again on the same
/// store once `run` has returned, and the undelivered callback is delivered by the new run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_run_returns_the_store_can_be_opened_again_and_the_backlog_resumes() {
    let target = Target::start(200).await;
    target.hang();
    let (mut proxy, toml, sealed) = proxy_with_a_delivery_in_flight(&target, 200).await;
    proxy.stop().await.0.expect("run ends with Ok");

    // The next start, in the same process, on the same file.
    target.set_delay(Duration::ZERO);
    let mut config = wechat_fanout::config::Config::from_toml(&toml).unwrap();
    config.store.path = proxy.db.clone();
    let store: Arc<dyn Store> = Arc::new(
        wechat_fanout::store::SqliteStore::open(&proxy.db, config.store.synchronous)
            .expect("the store is free once run has returned"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let again = tokio::spawn(wechat_fanout::run(
        config,
        store.clone(),
        listener,
        shutdown.clone(),
    ));
    let got = target.wait_for(2).await;
    assert_eq!(got[1].body, sealed.body.as_bytes());
    assert_eq!(got[1].delivery(), got[0].delivery());
    no_jobs_left(&StoreView::Store(store), "the delivery recorded").await;
    shutdown.cancel();
    again.await.unwrap().unwrap();
}
