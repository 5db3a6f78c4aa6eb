//! A deployment on Redis behind a Sentinel (`store.redis.sentinel_master`), issue 26: the
//! primary's machine dies (SIGKILL) and the Sentinel promotes its replica. The instances follow
//! by themselves, with no restart and no change of configuration: they answer 200 again, deliver,
//! and the console of one shows the other's callbacks again (the feed's publisher and subscriber
//! moved to the new primary too). And `min_replicas` as WeChat and a load balancer see it: 503
//! while the replica cannot acknowledge. (The failover with `min_replicas`, and the loss without
//! it, are measured on the store in `tests/store_contract/sentinel.rs`.)
#![allow(clippy::print_stderr)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use super::{EventStream, Instance, is_callback};
use crate::support::redis::{MASTER_NAME, RedisSentinelSet};
use crate::support::{Target, Wx, settle, text_xml};

/// The callback ids of the callback events in what a console stream read.
fn callback_ids(seen: &str) -> HashSet<String> {
    seen.lines()
        .filter(|l| is_callback(l))
        .filter_map(|l| {
            let rest = l.split("\"callback\":").nth(1)?;
            Some(rest.split([',', '}']).next()?.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_behind_a_sentinel_follow_a_failover_by_themselves() {
    let mut set = RedisSentinelSet::start();
    let crm = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let rest = format!(
        "backend = \"redis\"\n[store.redis]\nurls = [\"{}\"]\nsentinel_master = \"{MASTER_NAME}\"\n\
         key_prefix = \"it\"\nlease_ms = 1000\n{}{}",
        set.sentinel_url(),
        wx.account("main", ""),
        Wx::target("crm", &crm.url("/crm"), ""),
    );
    let (a, b) = tokio::join!(Instance::start(&rest), Instance::start(&rest));
    let mut stream = EventStream::open(&b).await;
    let sealed = wx.seal(&text_xml("before the failover"));
    assert_eq!(a.post(&sealed).await, (200, "success".to_owned()));
    stream.until("A's callback", is_callback).await;
    let before = callback_ids(&stream.seen);
    crm.wait_for(1).await;

    set.primary.signal("KILL");
    let killed = Instant::now();

    // A answers 503 while there is no primary (WeChat resends), each in time for WeChat's
    // 5 s, then 200 again by itself.
    let (mut answered, mut refused) = (1, 0);
    let mut slowest = Duration::ZERO;
    let mut promoted = None;
    loop {
        let sealed = wx.seal(&text_xml(&format!("after the failover {refused}")));
        let sent = Instant::now();
        let (status, body) = a.post(&sealed).await;
        slowest = slowest.max(sent.elapsed());
        if promoted.is_none() && set.primary_port() == Some(set.replica.port) {
            promoted = Some(killed.elapsed());
        }
        if status == 200 {
            answered += 1;
            break;
        }
        assert_eq!(status, 503, "{body}");
        refused += 1;
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "the instance did not follow the failover:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        slowest < Duration::from_secs(5),
        "an answer took {slowest:?}"
    );
    assert_eq!(set.primary_port(), Some(set.replica.port));
    let writing = killed.elapsed();

    // B's console shows A's callbacks again: A publishes to, and B listens on, the new primary.
    let mut shown = None;
    for n in 0..20 {
        if callback_ids(&stream.seen)
            .difference(&before)
            .next()
            .is_some()
        {
            shown = Some(killed.elapsed());
            break;
        }
        if n > 0 {
            let sealed = wx.seal(&text_xml(&format!("shown after the failover {n}")));
            assert_eq!(a.post(&sealed).await.0, 200);
            answered += 1;
        }
        stream.read_for(Duration::from_millis(500)).await;
    }
    let shown = shown.unwrap_or_else(|| {
        panic!(
            "B's console never showed A's callbacks again:\n{}\n{}",
            stream.seen,
            b.log()
        )
    });
    // Every callback answered 200 is delivered (the one before was on the replica in time:
    // with asynchronous replication that is likely, not promised).
    crm.wait_for(answered).await;
    eprintln!(
        "promoted by {promoted:?}, answering 200 {writing:?} ({refused} answered 503 meanwhile, \
         the slowest answer {slowest:?}), B's console showing A's callbacks {shown:?} after the \
         primary died"
    );
}

/// `min_replicas = 1` end to end, issue 26: while the only replica stalls (SIGSTOP), a callback
/// is answered 503 (WeChat resends), `/readyz` is 503 and the refusal is counted under its own
/// reason; once the replica resumes, the resend is answered 200 from the copy stored meanwhile,
/// which is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_min_replicas_a_stalled_replica_turns_answers_and_readiness_503() {
    let set = RedisSentinelSet::start();
    let crm = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let rest = format!(
        "backend = \"redis\"\n[store.redis]\nurls = [\"{}\"]\nsentinel_master = \"{MASTER_NAME}\"\n\
         key_prefix = \"it\"\nlease_ms = 1000\nmin_replicas = 1\nmin_replicas_timeout_ms = 300\n{}{}",
        set.sentinel_url(),
        wx.account("main", ""),
        Wx::target("crm", &crm.url("/crm"), ""),
    );
    let a = Instance::start(&rest).await;
    let first = wx.seal(&text_xml("replicated"));
    assert_eq!(a.post(&first).await, (200, "success".to_owned()));
    assert_eq!(a.admin("/readyz").await.0, 200);

    set.replica.send_signal("STOP");
    let stalled = wx.seal(&text_xml("while the replica stalls"));
    let (status, body) = a.post(&stalled).await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = a.admin("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("min_replicas"), "{body}");
    let (_, metrics) = a.admin("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wechat_fanout_callbacks_total")
                && l.contains("reason=\"store_not_replicated\"")),
        "{metrics}"
    );

    set.replica.send_signal("CONT");
    let resumed = Instant::now();
    loop {
        let (status, body) = a.post(&stalled).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            resumed.elapsed() < Duration::from_secs(10),
            "still refused after the replica resumed:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(a.admin("/readyz").await.0, 200);
    crm.wait_for(2).await;
    settle().await;
    assert_eq!(crm.count(), 2, "each delivered once: {:?}", crm.received());
}
