//! Issue 29, pace per target: `rate_limit_per_sec` spreads a burst of callbacks over time for
//! one target, losing none and never slowing WeChat's answers or the other targets; several
//! instances on one Redis respect one limit together; a reply owner cannot be paced.

use std::time::{Duration, Instant};

use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use crate::instances::{Instance, on_redis};
use crate::support::redis::RedisServer;
use crate::support::{FAST, Proxy, Received, Target, Wx, eventually_async, text_xml};

const BURST: usize = 60;
const RATE: f64 = 20.0;

/// Checks that `got` (one target's receipts) holds every one of `sent` once, spread at `RATE`:
/// the whole burst over about (BURST - 1) / RATE seconds, and no second with more than RATE + 1.
fn paced(got: &[Received], sent: &[Vec<u8>]) {
    let mut bodies: Vec<&[u8]> = got.iter().map(|r| &r.body[..]).collect();
    bodies.sort();
    let mut expected: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
    expected.sort();
    assert_eq!(bodies, expected, "each callback once");
    let mut at: Vec<Instant> = got.iter().map(|r| r.at).collect();
    at.sort();
    let spread = at[at.len() - 1] - at[0];
    let least = Duration::from_secs_f64((BURST - 1) as f64 / RATE * 0.95);
    assert!(
        spread >= least && spread < least * 3,
        "{BURST} deliveries at {RATE}/s took {spread:?}"
    );
    for (i, first) in at.iter().enumerate() {
        let within = at[i..]
            .iter()
            .take_while(|t| **t - *first < Duration::from_secs(1))
            .count();
        assert!(
            within <= RATE as usize + 1,
            "{within} deliveries within a second"
        );
    }
}

/// 60 quick callbacks: WeChat has each answer at once; the paced target gets them over ~3 s,
/// every one; an unpaced target of the same account gets them at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_target_gets_a_burst_spread_over_time_and_loses_none() {
    let (slow, fast) = (Target::start(200).await, Target::start(200).await);
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}{}",
        wx.account("main", ""),
        Wx::target("slow", &slow.url("/slow"), "rate_limit_per_sec = 20"),
        Wx::target("fast", &fast.url("/fast"), ""),
    );
    let proxy = Proxy::start_with_admin(&toml).await;
    let mut sent = Vec::new();
    let started = Instant::now();
    for i in 0..BURST {
        let sealed = wx.seal(&text_xml(&format!("burst {i}")));
        let answered = Instant::now();
        proxy.post("main", &sealed).await.assert_success();
        assert!(answered.elapsed() < Duration::from_secs(1), "WeChat waited");
        sent.push(sealed.body.into_bytes());
    }
    let posted = started.elapsed();
    let fast_done = fast.wait_for(BURST).await;
    let last_fast = fast_done.iter().map(|r| r.at).max().unwrap();
    assert!(
        last_fast - started < posted + Duration::from_secs(1),
        "the unpaced target is not held back"
    );
    let got = eventually_async("the whole burst at the paced target", || async {
        (slow.count() == BURST).then(|| slow.received())
    })
    .await;
    paced(&got, &sent);
    // The wait is shown.
    let metrics = proxy.admin(reqwest::Method::GET, "/metrics").await.text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("wechat_fanout_paced_deliveries_total{") && l.contains("slow"))
        .unwrap_or_else(|| panic!("no paced_deliveries for slow:\n{metrics}"));
    let waited: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(waited >= (BURST / 2) as f64, "{line}");
}

/// Two instances on one Redis, WeChat's callbacks spread over both: together they keep the
/// target's rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_redis_keep_one_rate_together() {
    let redis = RedisServer::start(&[]);
    let slow = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let rest = format!(
        "{}{}{}",
        on_redis(&redis),
        wx.account("main", ""),
        Wx::target("slow", &slow.url("/slow"), "rate_limit_per_sec = 20"),
    );
    let (a, b) = tokio::join!(Instance::start(&rest), Instance::start(&rest));
    let mut sent = Vec::new();
    for i in 0..BURST {
        let sealed = wx.seal(&text_xml(&format!("burst {i}")));
        let instance = if i % 2 == 0 { &a } else { &b };
        assert_eq!(instance.post(&sealed).await.0, 200);
        sent.push(sealed.body.into_bytes());
    }
    let got = eventually_async("the whole burst at the paced target", || async {
        (slow.count() >= BURST).then(|| slow.received())
    })
    .await;
    paced(&got, &sent);
    a.drained().await;
}

/// A reply owner's (`replies_to`, `primary`) deliveries are made while WeChat waits: pacing
/// one is refused at load, exit 64, naming the key.
#[test]
fn a_paced_reply_owner_or_shadow_is_refused() {
    for (extra, needle) in [
        ("rate_limit_per_sec = 5\nreplies_to = [\"*\"]", "replies_to"),
        ("rate_limit_per_sec = 0", "greater than 0"),
    ] {
        let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
        let error = crate::support::config_error(&format!(
            "{}{}",
            wx.account("main", ""),
            Wx::target("bot", "http://127.0.0.1:9/a", extra)
        ));
        assert!(
            error.contains("accounts[0].targets[0].rate_limit_per_sec") && error.contains(needle),
            "{error}"
        );
    }
    // A shadow: its deliveries are made beside the owner's, while WeChat waits.
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let error = crate::support::config_error(&format!(
        "{}{}{}",
        wx.account("main", ""),
        Wx::target("bot", "http://127.0.0.1:9/a", "replies_to = [\"*\"]"),
        Wx::target(
            "candidate",
            "http://127.0.0.1:9/b",
            "shadow_of = \"bot\"\nrate_limit_per_sec = 5"
        ),
    ));
    assert!(
        error.contains("accounts[0].targets[1].rate_limit_per_sec") && error.contains("shadow_of"),
        "{error}"
    );
    // The primary too: the account names it its reply owner.
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let error = crate::support::config_error(&format!(
        "{}{}",
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", "http://127.0.0.1:9/a", "rate_limit_per_sec = 5")
    ));
    assert!(
        error.contains("accounts[0].targets[0].rate_limit_per_sec")
            && error.contains("primary's deliveries"),
        "{error}"
    );
}
