//! A deployment on Redis behind a Sentinel (`store.redis.sentinel_master`), issue 26: the
//! primary's machine dies (SIGKILL) and the Sentinel promotes its replica. The instances follow
//! by themselves, with no restart and no change of configuration: they answer 200 again, deliver,
//! and the console of one shows the other's callbacks again (the feed's publisher and subscriber
//! moved to the new primary too).
#![allow(clippy::print_stderr)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use super::{EventStream, Instance, is_callback};
use crate::support::redis::{MASTER_NAME, RedisSentinelSet};
use crate::support::{Target, Wx, text_xml};

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
