//! Callbacks that could never be delivered are refused before they are stored, and a failure
//! that belongs to one request never pauses a healthy target.
//!
//! A target gets the callback's query appended to its URL; a query near the ~64 KiB request
//! targets the server accepts made that URL invalid: the callback was answered 200, every
//! attempt failed with "uri too long", it died, and a few of them opened the circuit breaker of
//! a target that was fine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};
use wechat_fanout::config::Mode;
use wechat_fanout::store::JobState;
use wechat_fanout::wechat::Kind;

use crate::operate::{get_admin_of_binary, post_to_binary, write_binary_config};
use crate::support::scrape::Scrape;
use crate::support::{
    Binary, StoreView, Target, WAIT, Wx, callbacks, eventually_async, free_addr, jobs, settle,
    text_xml,
};

/// The real binary with one safe-mode account whose only target is `target` (with `extra`
/// keys), its store in `dir`: it, its WeChat port and its config file.
async fn serve(dir: &Path, target: &Target, extra: &str) -> (Binary, SocketAddr, PathBuf) {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let listen = free_addr();
    let accounts = format!(
        "{}{}",
        wx.account("main", ""),
        Wx::target("t", &target.url("/hook"), extra)
    );
    let config = write_binary_config(dir, listen, &accounts);
    let mut binary = Binary::serve(&config, listen, &dir.join("serve.log")).await;
    binary.wait_listening().await;
    (binary, listen, config)
}

/// A validly signed callback with 10 KiB more of query (`server.max_query_bytes` is 4096 by
/// default): 414 before anything is stored, so nothing is delivered, with the reason in the log
/// and in the rejection metric. A callback of normal size is accepted as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_with_a_10_kib_query_gets_414_and_is_neither_stored_nor_delivered() {
    let target = Target::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut binary, listen, config) = serve(dir.path(), &target, "").await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);

    let mut long = wx.seal(&text_xml("a query that no target could be sent"));
    long.query = format!("{}&pad={}", long.query, "a".repeat(10 * 1024));
    let (status, text) = post_to_binary(listen, &long).await;
    assert_eq!(status, 414, "{text}");
    assert!(text.contains("query longer than 4096 bytes"), "{text}");

    let normal = wx.seal(&text_xml("a query of the usual size"));
    assert_eq!(
        post_to_binary(listen, &normal).await,
        (200, "success".to_owned())
    );
    let got = target.wait_for(1).await;
    settle().await;
    assert_eq!(target.count(), 1, "only the normal callback: {got:?}");
    assert_eq!(got[0].body, normal.body.as_bytes());
    assert_eq!(callbacks(&StoreView::admin_of(&config)).await, 1);

    let log = binary
        .wait_log("the refusal's reason", |log| {
            log.contains("reason=\"query_too_long\"") || log.contains("reason=query_too_long")
        })
        .await;
    assert!(log.contains("rejected"), "{log}");
    let (status, metrics) = get_admin_of_binary(&config, "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    let scrape = Scrape::parse(&metrics);
    assert_eq!(
        scrape.value(
            "wechat_fanout_callbacks_total",
            "account=main,outcome=rejected,reason=query_too_long"
        ),
        1.0,
        "{metrics}"
    );
}

/// Stores a callback for `main`/`t` the way an older version did, with `query` as it came,
/// and its job due now, straight into the proxy's SQLite file.
fn store_legacy_callback(db: &Path, n: usize, query: &str) {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(WAIT).unwrap();
    conn.execute(
        "INSERT INTO callbacks (id, account, dedupe_key, received_at, query, body) VALUES (?3, 'main', ?1, 0, ?2, x'3c786d6c2f3e')",
        params![format!("legacy-{n}"), query, legacy_id(n)],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO jobs (id, callback_id, account, target, state, attempts, next_at, updated_at)
         VALUES (?1, ?1, 'main', 't', 0, 0, 0, 0)",
        params![legacy_id(n)],
    )
    .unwrap();
}

/// Ids far above the running store's own (it counts from the highest id in the file at open,
/// and these rows are written behind its back).
fn legacy_id(n: usize) -> i64 {
    1_000_000 + n as i64
}

/// The warning a target's breaker logs when it opens.
const PAUSED: &str = "pausing its deliveries";

/// Six jobs whose URL cannot be built (stored before the query limit existed) die at their
/// first attempt with the reason, and do not open the target's circuit breaker: the target is
/// fine, and the next callback is delivered. Five real failures in a row (503) still open it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_of_one_request_never_open_the_targets_breaker_but_target_failures_do() {
    let target = Target::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut binary, listen, config) = serve(dir.path(), &target, "max_attempts = 1").await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let db = dir.path().join("fanout.db");

    let too_long = "a".repeat(70_000);
    for n in 0..6 {
        store_legacy_callback(&db, n, &too_long);
    }
    let dead = eventually_async("the six undeliverable jobs dead", || async {
        let rows = jobs(&StoreView::admin_of(&config)).await;
        (rows.len() == 6 && rows.iter().all(|j| j.state == JobState::Dead)).then_some(rows)
    })
    .await;
    for job in &dead {
        assert_eq!(job.attempts, 1, "dead at the first attempt: {job:?}");
        let error = job.last_error.as_deref().unwrap_or_default();
        assert!(error.contains("not a valid URI"), "{job:?}");
    }
    let sealed = wx.seal(&text_xml("after the undeliverable ones"));
    assert_eq!(
        post_to_binary(listen, &sealed).await,
        (200, "success".to_owned())
    );
    let got = target.wait_for(1).await;
    assert_eq!(got[0].body, sealed.body.as_bytes());
    assert!(!binary.log().contains(PAUSED), "{}", binary.log());

    target.set_status(503);
    for n in 0..5 {
        let sealed = wx.seal(&text_xml(&format!("failing {n}")));
        assert_eq!(
            post_to_binary(listen, &sealed).await,
            (200, "success".to_owned())
        );
        target.wait_for(2 + n).await;
    }
    binary
        .wait_log("the breaker opening after five 503s", |log| {
            log.contains(PAUSED)
        })
        .await;
}
