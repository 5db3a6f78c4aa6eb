//! The Redis primary's machine dies under load, issue 26, as WeChat sees the deployment: a few
//! senders post signed callbacks to an instance all along (resending a refused one once, as
//! WeChat does), while the test stalls the primary's only replica (SIGSTOP, its link killed on
//! the primary), lets two seconds of load through, kills the primary (SIGKILL), resumes the
//! replica at once so that it can be promoted, awaits the promotion and starts the old primary
//! again on its port and data (it comes back as the new primary's replica). The target answers
//! 503 from the stall until the promotion, so that what the store lost cannot have been
//! delivered from memory meanwhile.
//!
//! With `min_replicas = 1` every callback answered 200 reaches the target, none is answered 200
//! while the replica cannot acknowledge, and the instance answers 200 again by itself once the
//! new primary has a replica again. With `min_replicas = 0` the same sequence loses callbacks
//! answered 200: the tests can fail. Behind a Sentinel (`down-after-milliseconds` 1000), and on a
//! Cluster of three shards with one replica each (`cluster-node-timeout` 1000; the shard of the
//! test's account loses its primary). Each takes 15–30 s, most of it the failover.
#![allow(clippy::print_stderr)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wechat_fanout::config::Mode;
use wechat_fanout::wechat::{Kind, SealedRequest};

use super::Instance;
use crate::support::redis::{MASTER_NAME, RedisCluster, RedisSentinelSet, RedisServer};
use crate::support::{Target, Wx, text_xml};

/// Concurrent senders of the load.
const SENDERS: usize = 3;
/// How long the replica stays stalled before the primary dies.
const STALLED: Duration = Duration::from_secs(2);

/// One POST of the load.
#[derive(Debug, Clone)]
struct Post {
    body: String,
    sent: Instant,
    /// How long the answer took.
    took: Duration,
    /// The answer's status; 0 if none came.
    status: u16,
}

/// Senders posting signed callbacks to one instance until stopped.
struct Load {
    stop: CancellationToken,
    posts: Arc<Mutex<Vec<Post>>>,
    senders: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(listen: SocketAddr, wx: &Wx) -> Load {
        let stop = CancellationToken::new();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let senders = (0..SENDERS)
            .map(|sender| {
                let (stop, posts, client, wx) =
                    (stop.clone(), posts.clone(), client.clone(), wx.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.is_cancelled() {
                        let sealed = wx.seal(&text_xml(&format!("load {sender}-{n}")));
                        n += 1;
                        // WeChat resends a callback that was not answered 200.
                        for _ in 0..2 {
                            let sent = Instant::now();
                            let status = post(&client, listen, &sealed).await;
                            posts.lock().unwrap().push(Post {
                                body: sealed.body.clone(),
                                sent,
                                took: sent.elapsed(),
                                status,
                            });
                            if status == 200 || stop.is_cancelled() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            posts,
            senders,
        }
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// Waits (bounded by `within` from `since`) until a callback sent after `since` is answered
    /// 200; how long after `since` that answer was sent.
    async fn until_answered(
        &self,
        since: Instant,
        within: Duration,
        log: &dyn Fn() -> String,
    ) -> Duration {
        loop {
            if let Some(post) = self
                .posts()
                .iter()
                .find(|p| p.sent > since && p.status == 200)
            {
                return post.sent - since;
            }
            assert!(
                since.elapsed() < within,
                "no callback answered 200 within {within:?}:\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) -> Vec<Post> {
        self.stop.cancel();
        for sender in self.senders {
            sender.await.unwrap();
        }
        self.posts.lock().unwrap().clone()
    }
}

async fn post(client: &reqwest::Client, listen: SocketAddr, sealed: &SealedRequest) -> u16 {
    let request = client
        .post(format!("http://{listen}/wechat/main?{}", sealed.query))
        .header("content-type", sealed.content_type)
        .body(sealed.body.clone());
    match request.send().await {
        Ok(answer) => answer.status().as_u16(),
        Err(_) => 0,
    }
}

/// What the load saw of one failover (some fields are only printed, through `Debug`).
#[derive(Debug)]
#[allow(dead_code)]
struct Seen {
    /// Callbacks answered 200, and refused (any other answer), all along.
    answered: usize,
    refused: usize,
    /// Posts sent while the replica was stalled (before the primary died) answered 200, and not.
    stalled_answered: usize,
    stalled_refused: usize,
    /// Callbacks answered 200 that the target never got (with 200).
    lost: usize,
    /// Of those, when each was sent after the replica stalled (negative: before, in ms), and
    /// how long its answer took.
    lost_posts: Vec<(String, i64, Duration)>,
    /// From the primary's death to the first callback answered 200 after it.
    answering_again: Duration,
}

impl Seen {
    fn of(
        posts: &[Post],
        target: &Target,
        stalled: Instant,
        killed: Instant,
        again: Duration,
    ) -> Seen {
        let delivered: HashSet<Vec<u8>> = target
            .received()
            .into_iter()
            .filter(|r| r.status == 200)
            .map(|r| r.body.to_vec())
            .collect();
        let answered: HashSet<&str> = posts
            .iter()
            .filter(|p| p.status == 200)
            .map(|p| p.body.as_str())
            .collect();
        let in_stall = |p: &&Post| p.sent >= stalled && p.sent < killed;
        Seen {
            answered: answered.len(),
            refused: posts.iter().filter(|p| p.status != 200).count(),
            stalled_answered: posts
                .iter()
                .filter(in_stall)
                .filter(|p| p.status == 200)
                .count(),
            stalled_refused: posts
                .iter()
                .filter(in_stall)
                .filter(|p| p.status != 200)
                .count(),
            lost: answered
                .iter()
                .filter(|b| !delivered.contains(b.as_bytes()))
                .count(),
            lost_posts: posts
                .iter()
                .filter(|p| p.status == 200 && !delivered.contains(p.body.as_bytes()))
                .map(|p| {
                    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                    let after = if p.sent >= stalled {
                        ms(p.sent - stalled)
                    } else {
                        -ms(stalled - p.sent)
                    };
                    let content = p.body.split("CDATA[load ").nth(1).unwrap_or("");
                    let content = content.split(']').next().unwrap_or("").to_owned();
                    (content, after, p.took)
                })
                .collect(),
            answering_again: again,
        }
    }

    /// `min_replicas = 1`: nothing answered 200 is lost, and nothing was while the replica
    /// could not acknowledge.
    fn assert_nothing_lost(&self, log: &str) {
        assert_eq!(self.stalled_answered, 0, "{self:?}\n{log}");
        assert!(self.stalled_refused > 0, "{self:?}");
        assert_eq!(self.lost, 0, "{self:?}\n{log}");
    }

    /// `min_replicas = 0`: what was answered while the replica stalled is gone.
    fn assert_loss(&self) {
        assert!(self.stalled_answered > 0, "{self:?}");
        assert!(self.lost > 0, "{self:?}");
    }
}

/// The account `main` (plaintext) on the store `store_keys` names, and its one target `crm`,
/// which retries often enough to deliver within the test, and never gives up.
fn deployment(store_keys: &str, wx: &Wx, crm: &Target, min_replicas: u32) -> String {
    format!(
        "backend = \"redis\"\n[store.redis]\n{store_keys}key_prefix = \"it\"\nlease_ms = 1000\n\
         min_replicas = {min_replicas}\nmin_replicas_timeout_ms = 500\n{}{}",
        wx.account("main", ""),
        Wx::target(
            "crm",
            &crm.url("/crm"),
            "max_attempts = 1000\nbackoff_initial_ms = 100\nbackoff_max_ms = 400"
        ),
    )
}

/// Waits (bounded) until everything the store holds is delivered: no job pending or in flight.
async fn delivered(instance: &Instance) {
    instance.drained().await;
}

/// Issue 26's sequence behind a Sentinel, with `min_replicas`.
async fn sentinel_primary_dies_under_load(min_replicas: u32) -> Seen {
    let mut set = RedisSentinelSet::start();
    let crm = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let keys = format!(
        "urls = [\"{}\"]\nsentinel_master = \"{MASTER_NAME}\"\n",
        set.sentinel_url()
    );
    let a = Instance::start(&deployment(&keys, &wx, &crm, min_replicas)).await;
    let load = Load::start(a.listen, &wx);
    load.until_answered(Instant::now(), Duration::from_secs(10), &|| a.log())
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    crm.set_status(503);
    set.replica.send_signal("STOP");
    RedisSentinelSet::cut_replica_links(&set.primary);
    let stalled = Instant::now();
    tokio::time::sleep(STALLED).await;
    tokio::task::block_in_place(|| set.primary.signal("KILL"));
    let killed = Instant::now();
    set.replica.send_signal("CONT");
    let promoted = tokio::task::block_in_place(|| {
        let promoted = set.await_primary(set.replica.port, Duration::from_secs(20));
        set.primary.restart();
        promoted
    });
    crm.set_status(200);
    // With min_replicas = 1 the new primary needs a replica: the old one, once the Sentinel
    // has made it one (some seconds after it is back) and it has synced.
    let again = load
        .until_answered(killed, Duration::from_secs(45), &|| a.log())
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let posts = load.stop().await;
    delivered(&a).await;
    let seen = Seen::of(&posts, &crm, stalled, killed, again);
    eprintln!(
        "Sentinel, min_replicas = {min_replicas}: promoted {promoted:?} after the primary died; \
         {seen:?}"
    );
    if min_replicas > 0 {
        seen.assert_nothing_lost(&a.log());
    }
    seen
}

/// With `min_replicas = 1` nothing answered 200 is lost when the primary's machine dies, and
/// nothing is answered 200 while the only replica cannot acknowledge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_sentinel_with_min_replicas_the_primarys_death_under_load_loses_nothing() {
    sentinel_primary_dies_under_load(1).await;
}

/// Without it the same failover loses callbacks answered 200 (what the test above guards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_sentinel_without_min_replicas_the_primarys_death_under_load_loses_callbacks() {
    sentinel_primary_dies_under_load(0).await.assert_loss();
}

/// Issue 26's sequence on a Cluster of three shards with one replica each: the shard that
/// serves the account loses its primary, and the Cluster promotes its replica.
async fn cluster_primary_dies_under_load(min_replicas: u32) -> Seen {
    let mut cluster = RedisCluster::start_with_replicas(3, 1000);
    let crm = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let urls = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let keys = format!("urls = [{urls}]\ncluster = true\n");
    let a = Instance::start(&deployment(&keys, &wx, &crm, min_replicas)).await;
    let (primary, replica) = cluster.shard_of("it:{main}");
    let replica = replica.expect("the shard has a replica");
    let load = Load::start(a.listen, &wx);
    load.until_answered(Instant::now(), Duration::from_secs(10), &|| a.log())
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    crm.set_status(503);
    cluster.nodes[replica].send_signal("STOP");
    RedisSentinelSet::cut_replica_links(&cluster.nodes[primary]);
    let stalled = Instant::now();
    tokio::time::sleep(STALLED).await;
    tokio::task::block_in_place(|| cluster.nodes[primary].signal("KILL"));
    let killed = Instant::now();
    cluster.nodes[replica].send_signal("CONT");
    let promoted = tokio::task::block_in_place(|| {
        let promoted = await_role(&cluster.nodes[replica], "master", Duration::from_secs(20));
        cluster.nodes[primary].restart();
        promoted
    });
    crm.set_status(200);
    // With min_replicas = 1 the promoted replica needs a replica of its own: the old primary,
    // which rejoins as one.
    let again = load
        .until_answered(killed, Duration::from_secs(45), &|| a.log())
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let posts = load.stop().await;
    delivered(&a).await;
    let seen = Seen::of(&posts, &crm, stalled, killed, again);
    let rejoined = cluster.nodes[primary].info_field("role");
    eprintln!(
        "Cluster, min_replicas = {min_replicas}: promoted {promoted:?} after the primary died, \
         which is back as a {rejoined:?}; {seen:?}"
    );
    if min_replicas > 0 {
        seen.assert_nothing_lost(&a.log());
    }
    seen
}

/// Waits until `server` says it has `role` (`INFO`); how long that took. Panics after `within`.
fn await_role(server: &RedisServer, role: &str, within: Duration) -> Duration {
    let start = Instant::now();
    while server.info_field("role").as_deref() != Some(role) {
        assert!(
            start.elapsed() < within,
            "127.0.0.1:{} is not a {role}",
            server.port
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// On a Cluster with one replica per shard and `min_replicas = 1`: a shard's primary dies under
/// load, nothing answered 200 is lost, and the instance answers 200 again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_with_min_replicas_a_shard_primarys_death_under_load_loses_nothing() {
    cluster_primary_dies_under_load(1).await;
}

/// Without it the same Cluster failover loses callbacks answered 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_without_min_replicas_a_shard_primarys_death_under_load_loses_callbacks() {
    cluster_primary_dies_under_load(0).await.assert_loss();
}
