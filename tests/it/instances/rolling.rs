//! A rolling deploy between two builds of the proxy on one real Redis: the build before (the
//! commit pinned in `tests/fixtures/build-before`, built by `scripts/test` and named by
//! `WECHAT_FANOUT_BUILD_BEFORE`) and the build now (the binary cargo built for this run). Two
//! instances of the build before take a steady load; each is replaced in turn by the build now
//! (SIGTERM, then start), and one is then rolled back to the build before, while callbacks keep
//! coming and a share of them is sent to two instances at once (a WeChat resend that lands on
//! the other instance). One sink answers every delivery 200; the other answers 500 to the first
//! attempt of each callback and 200 after, so every callback also leaves a retry stored as a due
//! job, which either build may pick up.
//!
//! What must hold is strict, so that a build now with another stored shape is held to the same:
//! every answer an instance gives is 200 `success`; an instance that does not answer at all
//! (connection refused or closed: it is stopping or not up yet) is no answer, and the sender
//! tries the next one, as WeChat's resend reaching another instance would. Every callback
//! reaches the fast sink exactly once and the retrying sink exactly twice (the 500, then the
//! 200, under one delivery id, attempts 1 and 2), body and query byte-identical to what was
//! sent. Without the build before the test fails (never skips): run `scripts/test`.
#![allow(clippy::print_stderr)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use super::faults::{Load, Posted};
use super::{Instance, LEASE_MS, by_body, on_redis};
use crate::support::binary::{EXE, command_of};
use crate::support::redis::RedisServer;
use crate::support::{Received, Target, WAIT, Wx};

/// Callbacks per second of the load.
const PER_SECOND: u32 = 40;
/// Every this many callbacks, one is sent to two instances at once.
const RESEND_EVERY: usize = 4;
/// How long each step of the deploy runs under load before the next.
const STEP: Duration = Duration::from_millis(1500);
/// How long an instance stays stopped before its new build starts.
const DOWN: Duration = Duration::from_millis(300);

/// The build before: its path from `WECHAT_FANOUT_BUILD_BEFORE`, after checking that it is the
/// pinned commit's build and not the build now.
fn build_before() -> PathBuf {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/build-before");
    let text = std::fs::read_to_string(fixture).expect("read tests/fixtures/build-before");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let [commit] = lines[..] else {
        panic!("tests/fixtures/build-before holds one commit id: {lines:?}")
    };
    assert!(
        commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
        "tests/fixtures/build-before: not a full commit id: {commit:?}"
    );
    let Some(path) = std::env::var_os("WECHAT_FANOUT_BUILD_BEFORE") else {
        panic!(
            "WECHAT_FANOUT_BUILD_BEFORE is not set: run the tests with scripts/test, which builds \
             the build before (commit {commit}) into target/build-before/ and sets it \
             (e.g. `scripts/test --test it instances::rolling`)"
        )
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "WECHAT_FANOUT_BUILD_BEFORE={} is not a file: run scripts/test, which builds commit \
         {commit} there",
        path.display()
    );
    let version = command_of(&path, &["--version"])
        .output()
        .expect("run the build before");
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.contains(commit),
        "{} is not the build of {commit} (tests/fixtures/build-before): it says {version:?}; \
         delete it and run scripts/test",
        path.display()
    );
    let same = std::fs::read(&path).expect("read the build before")
        == std::fs::read(EXE).expect("read the build now");
    assert!(
        !same,
        "the build now ({EXE}) is the same file as the build before ({}): cargo did not link \
         the current sources after scripts/test built the build before",
        path.display()
    );
    path
}

/// Stops `instance` (SIGTERM), starts `program` in its place, and lets the load run a step.
async fn replace(instance: &mut Instance, program: &Path) {
    instance.stop().await;
    tokio::time::sleep(DOWN).await;
    instance.start_again_as(program).await;
    tokio::time::sleep(STEP).await;
}

/// Checks what `target` (at `path`) got of each callback in `posted`, strictly: nothing it was
/// not sent, and of each callback `statuses.len()` requests, answered `statuses` in that order,
/// attempts 1, 2… under one delivery id, each byte-identical to what WeChat sent. A failure
/// shows `warnings` (what the instances logged above info, but for the expected 500s) after it.
fn delivered_exactly(
    posted: &[Posted],
    target: &Target,
    path: &str,
    statuses: &[u16],
    warnings: &str,
) {
    let mut received = by_body(target);
    let mut wrong = Vec::new();
    for (n, p) in posted.iter().enumerate() {
        let copies = received
            .remove(p.sealed.body.as_bytes())
            .unwrap_or_default();
        let query = format!("{path}?{}", p.sealed.query);
        let got: Vec<u16> = copies.iter().map(|r| r.status).collect();
        let attempts: Vec<u32> = copies.iter().map(Received::attempt).collect();
        let ids: HashSet<i64> = copies.iter().map(Received::delivery).collect();
        let want_attempts: Vec<u32> = (1..=statuses.len() as u32).collect();
        if got != statuses
            || attempts != want_attempts
            || ids.len() != 1
            || copies.iter().any(|r| r.path_and_query != query)
        {
            wrong.push(format!(
                "callback {n} ({} cop{}): statuses {got:?}, attempts {attempts:?}, deliveries {ids:?}, \
                 paths {:?}",
                p.copies.len(),
                if p.copies.len() == 1 { "y" } else { "ies" },
                copies.iter().map(|r| &r.path_and_query).collect::<Vec<_>>(),
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{path}: {} of {} callbacks not delivered exactly as expected ({statuses:?}), the first \
         ones:\n{}\n{warnings}",
        wrong.len(),
        posted.len(),
        wrong[..wrong.len().min(20)].join("\n")
    );
    assert!(
        received.is_empty(),
        "{path}: got bodies that were never sent: {:?}",
        received.keys().collect::<Vec<_>>()
    );
}

/// The deploy: A and B on the build before; B, then A replaced by the build now; then A rolled
/// back to the build before, all under load. See the module docs for what must hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_from_the_build_before_and_back_loses_nothing_and_sends_nothing_twice() {
    let before = build_before();
    let now = PathBuf::from(EXE);
    let started = Instant::now();
    let redis = RedisServer::start(&["--appendfsync", "everysec"]);
    let fast = Target::start(200).await;
    let retrying = Target::start(200).await;
    retrying.fail_first_of_each(500);
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    // The retries wait 100 to 200 ms in the store: long enough to be picked up by any instance.
    let rest = format!(
        "{}{}{}{}",
        on_redis(&redis),
        wx.account("main", ""),
        Wx::target("fast", &fast.url("/fast"), ""),
        Wx::target(
            "retrying",
            &retrying.url("/retrying"),
            "backoff_initial_ms = 200\nbackoff_max_ms = 400"
        ),
    );
    let (mut a, mut b) = tokio::join!(
        Instance::start_of(&before, Some("a"), &rest),
        Instance::start_of(&before, Some("b"), &rest),
    );
    let load = Load::start(
        wx,
        vec![a.listen, b.listen],
        "rolling",
        PER_SECOND,
        Some(RESEND_EVERY),
    );
    tokio::time::sleep(STEP).await;

    replace(&mut b, &now).await;
    replace(&mut a, &now).await;
    // A rollback of one instance: the build before on what the build now stored.
    replace(&mut a, &before).await;
    let posted = load.finish().await;
    let sending = started.elapsed();

    let logs = || {
        format!(
            "--- instance A ---\n{}\n--- instance B ---\n{}",
            a.log(),
            b.log()
        )
    };
    let not_200: Vec<&Posted> = posted
        .iter()
        .filter(|p| {
            p.copies
                .iter()
                .any(|c| !matches!(&c.answer, Ok((200, text)) if text == "success"))
        })
        .collect();
    assert!(
        not_200.is_empty(),
        "every copy answered 200 success: {not_200:#?}\n{}",
        logs()
    );
    let rerouted = (posted.iter().flat_map(|p| &p.copies))
        .filter(|c| c.unanswered > 0)
        .count();
    assert!(rerouted > 0, "some callbacks found their instance down");
    let resent = posted.iter().filter(|p| p.copies.len() == 2).count();

    // Everything arrives (bounded: what is missing then is shown by the checks below), then
    // nothing more: two leases more, for a job an instance lost and another would send again.
    let total = posted.len();
    let deadline = Instant::now() + WAIT;
    while (fast.count() < total || retrying.count() < 2 * total) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = started.elapsed();
    tokio::time::sleep(Duration::from_millis(2 * LEASE_MS)).await;

    let warnings: String = (logs().lines())
        .filter(|l| l.starts_with("---") || l.contains("WARN") || l.contains("ERROR"))
        // Every callback's first attempt at the retrying sink, as it should be.
        .filter(|l| !l.contains("status=500"))
        .map(|l| format!("{l}\n"))
        .collect();
    delivered_exactly(&posted, &fast, "/fast", &[200], &warnings);
    delivered_exactly(&posted, &retrying, "/retrying", &[500, 200], &warnings);
    tokio::join!(a.drained(), b.drained());
    let panicked = logs();
    assert!(!panicked.contains("panicked"), "{panicked}");
    let bodies: HashSet<&[u8]> = posted.iter().map(|p| p.sealed.body.as_bytes()).collect();
    assert_eq!(bodies.len(), total, "every callback sent is distinct");
    eprintln!(
        "rolling deploy: {total} callbacks ({resent} sent to two instances at once), all \
         answered 200, {rerouted} copies sent on to the other instance; sent for {sending:?}, \
         all delivered at {delivered:?}, checked at {:?}",
        started.elapsed()
    );
}
