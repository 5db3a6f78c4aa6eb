//! Crashes, restarts and shutdowns: what was accepted survives a SIGKILL, and a SIGTERM or a
//! cancelled shutdown token ends the process cleanly within the grace period.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use crate::support::{
    Binary, FAST, Proxy, Target, Wx, eventually, free_addr, jobs, settle, text_xml,
};

/// A config file for the real binary: `listen`, the store in `dir`, one official account whose
/// single target is `target`, and `extra` keys for that target.
fn write_config(dir: &Path, listen: SocketAddr, target: &str, extra: &str) -> std::path::PathBuf {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let text = format!(
        "{FAST}[server]\nlisten = \"{listen}\"\nshutdown_grace_ms = 1000\n\
         [store]\npath = \"{}\"\n{}{}",
        dir.join("fanout.db").display(),
        wx.account("main", ""),
        Wx::target("t", target, extra),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write the config");
    path
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(crate::support::WAIT)
        .build()
        .expect("HTTP client")
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
    let client = client();
    let url = format!("http://{listen}/wechat/main");
    let mut sent = HashSet::new();
    for batch in 0..5 {
        let sealed: Vec<_> = (0..10)
            .map(|n| wx.seal(&text_xml(&format!("backlog {batch}-{n}"))))
            .collect();
        let answers = sealed.iter().map(|s| {
            client
                .post(format!("{url}?{}", s.query))
                .header("content-type", s.content_type)
                .body(s.body.clone())
                .send()
        });
        for (s, answer) in sealed.iter().zip(futures_join_all(answers).await) {
            let answer = answer.expect("the binary answers");
            assert_eq!(answer.status(), 200);
            assert_eq!(answer.text().await.unwrap(), "success");
            sent.insert(s.body.clone());
        }
    }
    assert_eq!(sent.len(), 50);

    let killed = first.kill_9();
    assert!(!killed.success(), "SIGKILL: {killed}");
    drop(first);

    let target = Target::start_on(down, 200).await;
    let second = Binary::serve(&config, listen, &dir.path().join("second.log")).await;
    eventually("all 50 callbacks at the target", || {
        let bodies: HashSet<String> = target
            .received()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect();
        (bodies.len() >= 50).then_some(())
    })
    .await;
    let received = target.received();
    let bodies: HashSet<String> = received
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(bodies, sent, "exactly the accepted callbacks arrived");
    assert!(received.len() >= 50);
    eventually("no job left in the store", || {
        jobs(&dir.path().join("fanout.db")).is_empty().then_some(())
    })
    .await;
    drop(second);
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

/// SIGTERM with a delivery in flight to a target that never answers: the binary stops within the
/// grace period (1 s) and exits 0; the undelivered job stays in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_within_the_grace_period() {
    let hanging = Target::start(200).await;
    hanging.hang();
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let config = write_config(
        dir.path(),
        listen,
        &hanging.url("/hook"),
        "timeout_ms = 30000",
    );
    let mut binary = Binary::serve(&config, listen, &dir.path().join("serve.log")).await;

    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let sealed = wx.seal(&text_xml("in flight at shutdown"));
    let answer = client()
        .post(format!("http://{listen}/wechat/main?{}", sealed.query))
        .header("content-type", sealed.content_type)
        .body(sealed.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    hanging.wait_for(1).await;

    binary.terminate();
    let (status, took) = binary.wait_exit().await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}:\n{}",
        binary.log()
    );
    assert!(
        took < Duration::from_millis(3000),
        "took {took:?} with a 1 s grace period:\n{}",
        binary.log()
    );
    assert!(
        std::net::TcpStream::connect(listen).is_err(),
        "nothing listens after the exit"
    );
    let left = jobs(&dir.path().join("fanout.db"));
    assert_eq!(left.len(), 1, "the undelivered job is kept: {left:?}");
}

/// The library's shutdown token does the same for an embedded proxy: `run` returns `Ok` within
/// the grace period though a delivery hangs, and the port is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_shutdown_token_stops_run_within_the_grace_period() {
    let hanging = Target::start(200).await;
    hanging.hang();
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}[server]\nshutdown_grace_ms = 500\n{}{}",
        wx.account("main", ""),
        Wx::target("t", &hanging.url("/h"), "timeout_ms = 30000"),
    );
    let proxy = Proxy::start(&toml).await;
    proxy
        .post("main", &wx.seal(&text_xml("in flight")))
        .await
        .assert_success();
    hanging.wait_for(1).await;

    let addr = proxy.addr;
    let (result, took) = proxy.stop().await;
    result.expect("run ends with Ok");
    assert!(
        took < Duration::from_millis(2500),
        "took {took:?} with a 500 ms grace"
    );
    settle().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}
