//! Faults of a deployment on Redis, each under real servers: Redis restarted (SIGTERM, and
//! SIGKILL with AOF `always`) while callbacks arrive, an instance SIGKILLed with deliveries in
//! flight, and a rolling restart under steady load.
//!
//! The load is sent the way a load balancer would: callbacks alternate between the instances,
//! and one that an instance does not answer at all (connection refused or closed: it is
//! stopping) goes to the other. What WeChat would see is then checked whole: every answer, and
//! every delivery of every callback answered 200. Each test prints its figures (answers, how
//! long recovery took, what was delivered twice) for `--nocapture`.
#![allow(clippy::print_stderr)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wechat_fanout::config::Mode;
use wechat_fanout::wechat::{Kind, SealedRequest};

use super::{Instance, by_body, on_redis, on_redis_with_lease};
use crate::support::redis::RedisServer;
use crate::support::{Received, Target, WAIT, Wx, eventually_async, settle, text_xml};

/// Callbacks per second of the steady load.
const PER_SECOND: u32 = 30;

/// One callback of the load, and the answer it finally got.
#[derive(Debug, Clone)]
pub(super) struct Sent {
    pub(super) sealed: SealedRequest,
    /// The status and body, or why no instance answered.
    pub(super) answer: Result<(u16, String), String>,
    /// How many instances did not answer it at all before one did.
    pub(super) unanswered: usize,
}

/// One callback of the load: its copies (two for a resend to another instance), each with the
/// answer it finally got.
#[derive(Debug)]
pub(super) struct Posted {
    pub(super) sealed: SealedRequest,
    pub(super) copies: Vec<Sent>,
}

/// Steady load through a load balancer in front of `instances`, until [`Load::finish`]: `tag`
/// and a number make each callback's text; with `resend_every`, every so many callbacks go to
/// two instances at once (the same bytes: a WeChat resend that lands on the other instance).
pub(super) struct Load {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<Posted>>,
}

impl Load {
    pub(super) fn start(
        wx: Wx,
        instances: Vec<SocketAddr>,
        tag: &'static str,
        per_second: u32,
        resend_every: Option<usize>,
    ) -> Load {
        let stop = CancellationToken::new();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            // A connection per request, as most load balancers open to a backend that restarts:
            // a pooled connection closed by a stopping instance would be a failure of the pool.
            let client = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(WAIT)
                .build()
                .expect("HTTP client");
            let mut ticks = tokio::time::interval(Duration::from_secs(1) / per_second);
            let mut posts = Vec::new();
            for n in 0usize.. {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = until.cancelled() => break,
                }
                let sealed = wx.seal(&text_xml(&format!("{tag} {n}")));
                let (client, instances) = (client.clone(), instances.clone());
                let resend = resend_every.is_some_and(|every| n % every == 0);
                posts.push(tokio::spawn(async move {
                    let copies = if resend {
                        // The same bytes to this instance and the next, at once.
                        let (first, second) = tokio::join!(
                            balance(client.clone(), instances.clone(), n, sealed.clone()),
                            balance(client, instances, n + 1, sealed.clone()),
                        );
                        vec![first, second]
                    } else {
                        vec![balance(client, instances, n, sealed.clone()).await]
                    };
                    Posted { sealed, copies }
                }));
            }
            let mut posted = Vec::with_capacity(posts.len());
            for post in posts {
                posted.push(post.await.expect("the POST's task"));
            }
            posted
        });
        Load { stop, task }
    }

    /// Stops sending; every callback sent, once all are answered.
    pub(super) async fn finish(self) -> Vec<Posted> {
        self.stop.cancel();
        tokio::time::timeout(WAIT * 2, self.task)
            .await
            .expect("the load's answers within the wait")
            .expect("the load's task")
    }

    /// [`Load::finish`], each copy sent on its own.
    async fn finish_copies(self) -> Vec<Sent> {
        let posted = self.finish().await;
        posted.into_iter().flat_map(|p| p.copies).collect()
    }
}

/// POSTs `sealed` to instance `n % len`, and to the next one whenever an instance does not
/// answer at all (also the rolling deploy's, in [`super::rolling`]).
pub(super) async fn balance(
    client: reqwest::Client,
    instances: Vec<SocketAddr>,
    n: usize,
    sealed: SealedRequest,
) -> Sent {
    let mut unanswered = 0;
    let mut last_error = String::new();
    for i in 0..instances.len() {
        let listen = instances[(n + i) % instances.len()];
        let request = client
            .post(format!("http://{listen}/wechat/main?{}", sealed.query))
            .header("content-type", sealed.content_type)
            .body(sealed.body.clone());
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                return Sent {
                    sealed,
                    answer: Ok((status, text)),
                    unanswered,
                };
            }
            Err(e) => {
                unanswered += 1;
                last_error = format!("{e:?}");
            }
        }
    }
    Sent {
        sealed,
        answer: Err(last_error),
        unanswered,
    }
}

/// Every callback answered 200 reached `target` (at `path`) at least once, byte for byte (body
/// and query); returns how many were delivered more than once.
fn all_delivered(sent: &[Sent], target: &Target, path: &str) -> usize {
    let received = by_body(target);
    let mut twice = 0;
    for s in sent.iter().filter(|s| matches!(s.answer, Ok((200, _)))) {
        let copies = received
            .get(s.sealed.body.as_bytes())
            .unwrap_or_else(|| panic!("{path}: a callback answered 200 was not delivered: {s:?}"));
        for copy in copies {
            assert_eq!(copy.path_and_query, format!("{path}?{}", s.sealed.query));
        }
        if copies.len() > 1 {
            twice += 1;
        }
    }
    twice
}

/// The account `main` on `redis` (the `[store]` keys in `store`) with two targets, `crm` and
/// `audit`.
fn two_targets(store: &str, wx: &Wx, crm: &Target, audit: &Target) -> String {
    format!(
        "{store}{}{}{}",
        wx.account("main", ""),
        Wx::target("crm", &crm.url("/crm"), ""),
        Wx::target("audit", &audit.url("/audit"), ""),
    )
}

/// Waits (bounded) until `/readyz` of `instance` answers `status`.
async fn ready_becomes(instance: &Instance, status: u16) {
    eventually_async(&format!("/readyz to answer {status}"), || async {
        (instance.admin("/readyz").await.0 == status).then_some(())
    })
    .await;
}

/// Redis goes away (`signal`) for about a second and a half while two instances take 30
/// callbacks a second, then comes back on the same port and files. `audit` takes 300 ms, so
/// attempts are running when Redis goes and their outcomes cannot be recorded until it is back.
/// The outage is shorter than two thirds of the lease (6 s): renewed leases hold, the outcomes
/// are recorded once Redis is back, and nothing is delivered twice.
async fn redis_restarts_under_load(signal: &'static str) {
    let mut redis = RedisServer::start(&[]);
    let crm = Target::start(200).await;
    let audit = Target::start(200).await;
    audit.set_delay(Duration::from_millis(300));
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let rest = two_targets(&on_redis_with_lease(&redis, 6000), &wx, &crm, &audit);
    let (a, b) = tokio::join!(Instance::start(&rest), Instance::start(&rest));
    let load = Load::start(wx, vec![a.listen, b.listen], signal, PER_SECOND, None);
    tokio::time::sleep(Duration::from_millis(500)).await;

    tokio::task::block_in_place(|| redis.signal(signal));
    let down = Instant::now();
    // Not ready while Redis is away, on every instance.
    tokio::join!(ready_becomes(&a, 503), ready_becomes(&b, 503));
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(down.elapsed())).await;
    tokio::task::block_in_place(|| redis.restart());
    let up = Instant::now();
    // Both recover by themselves: the same processes, ready and storing again.
    tokio::join!(ready_becomes(&a, 200), ready_becomes(&b, 200));
    let recovered = up.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = load.finish_copies().await;

    let failed: Vec<&Sent> = sent
        .iter()
        .filter(|s| !matches!(s.answer, Ok((200, _)) | Ok((503, _))))
        .collect();
    assert!(failed.is_empty(), "only 200 or 503: {failed:#?}");
    let refused = sent
        .iter()
        .filter(|s| matches!(s.answer, Ok((503, _))))
        .count();
    assert!(refused > 0, "callbacks during the outage get 503");
    // The last half second, after both were ready again: every callback stored.
    let tail = &sent[sent.len().saturating_sub(10)..];
    assert!(
        tail.iter().all(|s| matches!(s.answer, Ok((200, _)))),
        "after recovery: {tail:#?}"
    );
    tokio::join!(a.drained(), b.drained());
    settle().await;
    let twice = (
        all_delivered(&sent, &crm, "/crm"),
        all_delivered(&sent, &audit, "/audit"),
    );
    let accepted = sent.len() - refused;
    eprintln!(
        "redis {signal}: {} callbacks, {accepted} answered 200, {refused} answered 503; \
         recovered {recovered:?} after Redis was back; delivered twice (crm, audit): {twice:?}",
        sent.len()
    );
    assert_eq!(twice, (0, 0), "{}\n{}", a.log(), b.log());
    let retried = |log: String| log.contains("attempt recorded once the store took it");
    assert!(
        retried(a.log()) || retried(b.log()),
        "an outcome was recorded after the outage:\n{}\n{}",
        a.log(),
        b.log()
    );
}

/// SIGTERM: Redis writes its AOF and exits; every callback answered 200 is delivered, the ones
/// during the outage get 503, and both instances recover without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_started_again_loses_no_callback_answered_200() {
    redis_restarts_under_load("TERM").await;
}

/// SIGKILL: with `appendfsync always`, what Redis acknowledged is on disk; the same holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_started_again_loses_no_callback_answered_200() {
    redis_restarts_under_load("KILL").await;
}

/// Three deliveries are running (the target takes 1.5 s) when their instance is SIGKILLed: the
/// other instance sends them again once their lease expires, under the same delivery ids. That
/// is the at-least-once case: the target got each of them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_delivery_is_covered_by_the_other_after_the_lease() {
    let redis = RedisServer::start(&[]);
    let crm = Target::start(200).await;
    crm.set_delay(Duration::from_millis(1500));
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let rest = format!(
        "{}{}{}",
        on_redis(&redis),
        wx.account("main", ""),
        Wx::target("crm", &crm.url("/crm"), "timeout_ms = 5000"),
    );
    let (mut a, b) = tokio::join!(Instance::start(&rest), Instance::start(&rest));
    let sealed: Vec<SealedRequest> = (0..3)
        .map(|n| wx.seal(&text_xml(&format!("in flight {n}"))))
        .collect();
    for answer in super::post_all(a.listen, &sealed).await {
        assert_eq!(answer, (200, "success".to_owned()));
    }
    let first = crm.wait_for(3).await;
    a.kill();
    let killed = Instant::now();
    crm.set_delay(Duration::ZERO);

    let all = crm.wait_for(6).await;
    b.drained().await;
    settle().await;
    let all_now = crm.received();
    assert_eq!(all_now.len(), 6, "{all_now:#?}");
    let again = &all[3..];
    let ids = |got: &[Received]| {
        let mut ids: Vec<i64> = got.iter().map(Received::delivery).collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(ids(&first), ids(again), "the same delivery ids");
    for copy in again {
        let original = first
            .iter()
            .find(|r| r.delivery() == copy.delivery())
            .unwrap();
        assert_eq!(copy.body, original.body);
        assert_eq!(copy.path_and_query, original.path_and_query);
        // Not before the lease the killed instance last renewed ran out: renewed every third
        // of it, that lease had at least two thirds left at the kill (half, with some slack).
        let lease_left = Duration::from_millis(super::LEASE_MS / 2);
        assert!(
            copy.at >= killed + lease_left,
            "sent again {:?} after the kill: {copy:?}",
            copy.at - killed
        );
    }
    eprintln!(
        "instance killed: redelivered {:?} after the kill",
        again.iter().map(|r| r.at - killed).max()
    );
}

/// A deploy: SIGTERM one instance, start it, then the other, while 30 callbacks a second
/// arrive through the load balancer. Every callback is answered 200 (none 5xx), delivered to
/// every target, and once: a SIGTERM lets attempts in flight finish and be recorded, and
/// returns the jobs handed to its workers to the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_nothing_and_answers_no_5xx() {
    let redis = RedisServer::start(&[]);
    let crm = Target::start(200).await;
    let audit = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let rest = two_targets(&on_redis(&redis), &wx, &crm, &audit);
    let (mut a, mut b) = tokio::join!(Instance::start(&rest), Instance::start(&rest));
    let load = Load::start(wx, vec![a.listen, b.listen], "rolling", PER_SECOND, None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for instance in [&mut a, &mut b] {
        instance.stop().await;
        // The new version takes a moment to come up; the other instance has it all meanwhile.
        tokio::time::sleep(Duration::from_millis(300)).await;
        instance.start_again().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = load.finish_copies().await;

    let not_200: Vec<&Sent> = sent
        .iter()
        .filter(|s| !matches!(s.answer, Ok((200, _))))
        .collect();
    assert!(
        not_200.is_empty(),
        "every callback answered 200: {not_200:#?}"
    );
    let rerouted = sent.iter().filter(|s| s.unanswered > 0).count();
    assert!(rerouted > 0, "some callbacks found their instance down");
    tokio::join!(a.drained(), b.drained());
    settle().await;
    let twice = (
        all_delivered(&sent, &crm, "/crm"),
        all_delivered(&sent, &audit, "/audit"),
    );
    assert_eq!(twice, (0, 0), "no callback delivered twice");
    for target in [&crm, &audit] {
        assert_eq!(target.count(), sent.len());
    }
    eprintln!(
        "rolling restart: {} callbacks, all answered 200, {rerouted} sent to the other instance",
        sent.len()
    );
}
