//! Several instances of the real binary on one real Redis, as a deployment behind a load
//! balancer sees them: a resend that reaches another instance gets the answer the first copy
//! got, an attempt that outlasts its lease is not sent twice, and any instance shows the whole
//! deployment. The faults (Redis restarted, an instance killed, a rolling restart) are in
//! [`faults`]; a failover of Redis behind a Sentinel is in [`failover`], and the primary's
//! machine dying under load (behind a Sentinel, and on a Cluster) in [`primary_lost`]. A
//! rolling deploy from the build before (a pinned earlier commit) to the build now, and back, is
//! in [`rolling`].
//!
//! Each test starts its own `redis-server` (AOF `always`) and its own instances, with small
//! leases (1 s) and fast polls so that expiry and renewal happen within a test's seconds.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wechat_fanout::config::Mode;
use wechat_fanout::wechat::{Kind, SealedRequest};

use crate::operate::{
    admin_url, get_admin_of_binary, listed_dead_letters, post_to_binary, targets_of,
    write_binary_config,
};
use crate::support::binary::{Binary, EXE};
use crate::support::redis::RedisServer;
use crate::support::scrape::Scrape;
use crate::support::{Received, Target, Wx, eventually_async, free_addr, settle, text_xml};

mod failover;
mod faults;
mod primary_lost;
mod rolling;

/// The lease of the tests' instances: renewed every third of it.
const LEASE_MS: u64 = 1000;

/// The `[store]` keys that put an instance on `redis` (they continue the `[store]` table that
/// [`write_binary_config`] opens).
pub(crate) fn on_redis(redis: &RedisServer) -> String {
    on_redis_with_lease(redis, LEASE_MS)
}

/// The same with leases of `lease_ms`.
fn on_redis_with_lease(redis: &RedisServer, lease_ms: u64) -> String {
    format!(
        "backend = \"redis\"\n[store.redis]\nurls = [\"{}\"]\nkey_prefix = \"it\"\nlease_ms = {lease_ms}\n",
        redis.url()
    )
}

/// One instance: the real binary with WeChat and admin ports of its own, and the Redis and the
/// accounts of the whole deployment. Every start logs to a file of its own.
pub(crate) struct Instance {
    pub(crate) listen: SocketAddr,
    pub(crate) config: PathBuf,
    dir: tempfile::TempDir,
    binary: Option<Binary>,
    starts: u32,
    /// The build each start ran, in order.
    programs: Vec<PathBuf>,
}

impl Instance {
    /// Starts an instance with `rest` (the Redis keys, accounts and targets) and waits until it
    /// serves.
    pub(crate) async fn start(rest: &str) -> Instance {
        Instance::start_of(Path::new(EXE), None, rest).await
    }

    /// Starts the build at `program` with `rest`, named `name` (`server.instance_name`) when
    /// given, and waits until it serves.
    pub(crate) async fn start_of(program: &Path, name: Option<&str>, rest: &str) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let listen = free_addr();
        let config = write_binary_config(dir.path(), listen, rest);
        if let Some(name) = name {
            let text = std::fs::read_to_string(&config).unwrap();
            let named = text.replacen(
                "[server]\n",
                &format!("[server]\ninstance_name = \"{name}\"\n"),
                1,
            );
            assert_ne!(named, text, "the config has a [server] table");
            std::fs::write(&config, named).unwrap();
        }
        let mut instance = Instance {
            listen,
            config,
            dir,
            binary: None,
            starts: 0,
            programs: Vec::new(),
        };
        instance.start_again_as(program).await;
        instance
    }

    /// Starts the binary again (after [`Instance::stop`] or [`Instance::kill`]) on the same
    /// ports and config, and waits until it serves.
    pub(crate) async fn start_again(&mut self) {
        self.start_again_as(Path::new(EXE)).await;
    }

    /// The same with the build at `program`: a deploy of another version.
    pub(crate) async fn start_again_as(&mut self, program: &Path) {
        assert!(self.binary.is_none(), "the instance is still running");
        self.starts += 1;
        self.programs.push(program.to_path_buf());
        let log = self.dir.path().join(format!("serve-{}.log", self.starts));
        let mut binary = Binary::spawn_of(program, &self.config, &log, &[], &[]);
        binary
            .wait_for_port(self.listen, Duration::from_millis(10))
            .await;
        binary.wait_listening().await;
        self.binary = Some(binary);
    }

    /// SIGTERM, and waits for the exit (bounded): a deploy stopping it.
    pub(crate) async fn stop(&mut self) {
        let mut binary = self.binary.take().expect("the instance is running");
        binary.terminate();
        let (status, _) = binary.wait_exit().await;
        assert!(status.success(), "SIGTERM: {status}\n{}", binary.log());
    }

    /// SIGKILL: no shutdown code runs.
    pub(crate) fn kill(&mut self) {
        let mut binary = self.binary.take().expect("the instance is running");
        binary.kill_9();
    }

    /// Everything every start of it logged, for failure messages.
    pub(crate) fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                let path = self.dir.path().join(format!("serve-{n}.log"));
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let program = self.programs[n as usize - 1].display();
                format!("--- start {n} ({program}) ---\n{text}")
            })
            .collect()
    }

    pub(crate) async fn post(&self, sealed: &SealedRequest) -> (u16, String) {
        post_to_binary(self.listen, sealed).await
    }

    /// `GET path` on its admin listener.
    pub(crate) async fn admin(&self, path: &str) -> (u16, String) {
        get_admin_of_binary(&self.config, path).await
    }

    /// The `queue_jobs` gauges it serves on `/metrics`, keyed `account=…,state=…,target=…`.
    pub(crate) async fn queue(&self) -> HashMap<String, f64> {
        let (status, text) = self.admin("/metrics").await;
        assert_eq!(status, 200, "{text}");
        Scrape::parse(&text)
            .family("wechat_fanout_queue_jobs")
            .into_iter()
            .collect()
    }

    /// Waits (bounded) until it shows no job pending or in flight in the whole deployment (and
    /// shows the gauges at all: no series would pass the check without saying anything).
    pub(crate) async fn drained(&self) {
        eventually_async("no job pending or in flight in the deployment", || async {
            let queue = self.queue().await;
            let idle = queue
                .iter()
                .all(|(labels, n)| labels.contains("state=dead") || *n == 0.0);
            (idle && queue.keys().any(|l| l.contains("state=pending"))).then_some(())
        })
        .await;
    }
}

/// The requests `target` got, grouped by body: who got what how many times.
pub(crate) fn by_body(target: &Target) -> HashMap<Vec<u8>, Vec<Received>> {
    let mut grouped: HashMap<Vec<u8>, Vec<Received>> = HashMap::new();
    for received in target.received() {
        grouped
            .entry(received.body.to_vec())
            .or_default()
            .push(received);
    }
    grouped
}

/// POSTs every callback at once to the instance on `listen`: the answers, in order.
pub(crate) async fn post_all(listen: SocketAddr, sealed: &[SealedRequest]) -> Vec<(u16, String)> {
    let posts: Vec<_> = sealed
        .iter()
        .cloned()
        .map(|s| tokio::spawn(async move { post_to_binary(listen, &s).await }))
        .collect();
    let mut answers = Vec::with_capacity(posts.len());
    for post in posts {
        answers.push(post.await.expect("the POST's task"));
    }
    answers
}

/// The account `main` on `redis`, with the primary `bot` and the second target `crm` (and
/// `crm_extra` keys for it).
fn primary_and_crm(
    redis: &RedisServer,
    wx: &Wx,
    bot: &Target,
    crm: &Target,
    crm_extra: &str,
) -> String {
    format!(
        "{}{}{}{}",
        on_redis(redis),
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", &bot.url("/bot"), "timeout_ms = 3000"),
        Wx::target("crm", &crm.url("/crm"), crm_extra),
    )
}

const PASSIVE_REPLY: &str =
    "<xml><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]></Content></xml>";

/// WeChat resends a callback whose answer is slow (the primary takes 1 s), and the load balancer
/// sends the resend to the other instance: that copy waits for the answer the first instance
/// relays and answers the same bytes, as soon as it is saved, not `success` at once. The primary
/// is asked once and the other target gets one delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_on_another_instance_gets_the_primarys_answer_the_first_copy_got() {
    let redis = RedisServer::start(&[]);
    let bot = Target::start(200).await;
    bot.set_reply("text/xml", PASSIVE_REPLY);
    bot.set_delay(Duration::from_millis(1000));
    let crm = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let rest = primary_and_crm(&redis, &wx, &bot, &crm, "");
    let (a, b) = tokio::join!(Instance::start(&rest), Instance::start(&rest));

    let sealed = wx.seal(&text_xml("resent to the other instance"));
    let first = {
        let sealed = sealed.clone();
        let listen = a.listen;
        tokio::spawn(async move { post_to_binary(listen, &sealed).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let second = b.post(&sealed).await;
    let waited = started.elapsed();
    let first = first.await.unwrap();
    assert_eq!(first, (200, PASSIVE_REPLY.to_owned()), "{}", a.log());
    assert_eq!(second, first, "{}", b.log());
    // It stopped when the answer was saved (about 0.8 s), not at its own deadline (4 s).
    assert!(waited < Duration::from_millis(2500), "{waited:?}");

    crm.wait_for(1).await;
    settle().await;
    assert_eq!(bot.count(), 1, "the primary is asked once");
    let got = crm.received();
    assert_eq!(got.len(), 1, "one delivery to crm: {got:?}");
    assert_eq!(got[0].body, sealed.body.as_bytes());
    a.drained().await;
}

/// The primary takes 1.5 s and every crm attempt 1.2 s, longer than the 1 s lease, and crm
/// takes one request at a time, so jobs also wait in the handoff for several leases. Meanwhile
/// the other instance polls for due and expired jobs every 20 ms, and is even restarted (a
/// start must not take over jobs another instance holds). Renewed leases keep every job with
/// the instance that holds it: each target gets each callback once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_and_handoffs_longer_than_the_lease_are_sent_once() {
    let redis = RedisServer::start(&[]);
    let bot = Target::start(200).await;
    bot.set_reply("text/xml", PASSIVE_REPLY);
    bot.set_delay(Duration::from_millis(1500));
    let crm = Target::start(200).await;
    crm.set_delay(Duration::from_millis(1200));
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let rest = primary_and_crm(
        &redis,
        &wx,
        &bot,
        &crm,
        "max_concurrency = 1\ntimeout_ms = 3000",
    );
    let (a, mut b) = tokio::join!(Instance::start(&rest), Instance::start(&rest));

    // Six callbacks at once: one crm attempt running, four in the handoff, one stored due.
    let sealed: Vec<SealedRequest> = (0..6)
        .map(|n| wx.seal(&text_xml(&format!("slow {n}"))))
        .collect();
    for answer in &post_all(a.listen, &sealed).await {
        assert_eq!(answer, &(200, PASSIVE_REPLY.to_owned()), "{}", a.log());
    }
    b.stop().await;
    b.start_again().await;

    let deadline = Instant::now() + Duration::from_secs(15);
    while crm.count() < 6 || bot.count() < 6 {
        assert!(
            Instant::now() < deadline,
            "crm got {}, bot {}",
            crm.count(),
            bot.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.drained().await;
    // Two more leases: an expired lease would have been taken by now.
    tokio::time::sleep(Duration::from_millis(2 * LEASE_MS)).await;
    for (name, target) in [("bot", &bot), ("crm", &crm)] {
        let got = target.received();
        let ids: HashSet<i64> = got.iter().map(Received::delivery).collect();
        assert_eq!(
            (got.len(), ids.len()),
            (6, 6),
            "{name}: each callback once\n{}\n{}",
            a.log(),
            b.log()
        );
        let bodies: HashSet<&[u8]> = got.iter().map(|r| &r.body[..]).collect();
        let sent: HashSet<&[u8]> = sealed.iter().map(|s| s.body.as_bytes()).collect();
        assert_eq!(bodies, sent, "{name}");
    }
    assert!(
        !a.log().contains("lease of a job in flight was lost"),
        "{}",
        a.log()
    );
}

/// An operator asks either instance: both show the whole deployment. A callback accepted by one
/// instance whose target refuses it (400) is a dead letter listed by the other's `/dead-letters`
/// and `dead-letters` CLI, and counted in the other's `/metrics` queue gauges; each instance's
/// console charts count the callbacks both accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_shows_the_whole_deployments_queue_and_dead_letters() {
    let redis = RedisServer::start(&[]);
    let crm = Target::start(200).await;
    let audit = Target::start(400).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let rest = format!(
        "{}{}{}{}",
        on_redis(&redis),
        wx.account("main", ""),
        Wx::target("crm", &crm.url("/crm"), ""),
        Wx::target("audit", &audit.url("/audit"), ""),
    );
    let (a, b) = tokio::join!(Instance::start(&rest), Instance::start(&rest));
    let sealed = wx.seal(&text_xml("refused by audit"));
    assert_eq!(a.post(&sealed).await, (200, "success".to_owned()));
    crm.wait_for(1).await;
    audit.wait_for(1).await;

    for instance in [&a, &b] {
        let queue = eventually_async("the dead letter in the gauges", || async {
            let queue = instance.queue().await;
            (queue.get("account=main,state=dead,target=audit") == Some(&1.0)).then_some(queue)
        })
        .await;
        assert_eq!(
            queue.get("account=main,state=pending,target=crm"),
            Some(&0.0),
            "{queue:?}"
        );
        let (status, listed) = instance.admin("/dead-letters").await;
        assert_eq!(status, 200, "{listed}");
        assert!(listed.contains("\"audit\""), "{listed}");
        let letters = listed_dead_letters(&instance.config).await;
        assert_eq!(targets_of(&letters), ["audit"], "{letters:?}");
    }

    // The console's charts: a callback accepted by each instance, counted by each and added up
    // in Redis, so either instance's charts show both (each adds its counts every 10 s).
    let other = wx.seal(&text_xml("accepted by the other instance"));
    assert_eq!(b.post(&other).await, (200, "success".to_owned()));
    for instance in [&b, &a] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, text) = instance.admin("/console/charts?minutes=5").await;
            assert_eq!(status, 200, "{text}");
            let charts: serde_json::Value = serde_json::from_str(&text).unwrap();
            let sum = |series: &serde_json::Value| -> i64 {
                series
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|v| v.as_i64())
                    .sum()
            };
            let accepted = sum(&charts["callbacks"]["accepted"]);
            let audit = (charts["targets"].as_array().unwrap().iter())
                .find(|t| t["target"] == "audit")
                .map(|t| sum(&t["dead"]));
            if (accepted, audit) == (2, Some(2)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the charts never showed both instances' callbacks: {text}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// What a console page reads from `/console/events`, as it arrives.
struct EventStream {
    response: reqwest::Response,
    /// Everything read so far.
    seen: String,
}

impl EventStream {
    async fn open(instance: &Instance) -> EventStream {
        let response = reqwest::Client::new()
            .get(admin_url(&instance.config, "/console/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        EventStream {
            response,
            seen: String::new(),
        }
    }

    /// Reads until a line satisfies `found` (bounded), and returns that line.
    async fn until(&mut self, what: &str, found: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.seen.lines().find(|l| found(l)) {
                return line.to_owned();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
                _ => panic!("gave up waiting for {what} in the stream:\n{}", self.seen),
            }
        }
    }

    /// Reads what comes within `within`.
    async fn read_for(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while let Ok(Ok(Some(chunk))) =
            tokio::time::timeout_at(deadline.into(), self.response.chunk()).await
        {
            self.seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    fn count(&self, matches: impl Fn(&str) -> bool) -> usize {
        self.seen.lines().filter(|l| matches(l)).count()
    }
}

fn is_callback(line: &str) -> bool {
    line.contains("\"kind\":\"callback\"")
}

/// The live console of any instance shows every instance's callbacks: a callback that instance A
/// accepts, and its delivery, appear in the event stream that B's page reads (through Redis), and
/// B's own callbacks appear there once, not again when they come back from the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_of_any_instance_streams_every_instances_callbacks() {
    let redis = RedisServer::start(&[]);
    let crm = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let rest = format!(
        "{}{}{}",
        on_redis(&redis),
        wx.account("main", ""),
        Wx::target("crm", &crm.url("/crm"), ""),
    );
    let (a, b) = tokio::join!(Instance::start(&rest), Instance::start(&rest));
    let mut stream = EventStream::open(&b).await;

    let sealed = wx.seal(&text_xml("accepted by A"));
    assert_eq!(a.post(&sealed).await, (200, "success".to_owned()));
    let line = stream.until("A's callback", is_callback).await;
    let callback = line
        .split("\"callback\":")
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next())
        .unwrap()
        .to_owned();
    assert!(line.contains("\"target\":\"crm\""), "{line}");
    stream
        .until("A's delivery", |l| {
            l.contains("\"kind\":\"attempt\"")
                && l.contains(&format!("\"callback\":{callback},"))
                && l.contains("\"outcome\":\"delivered\"")
        })
        .await;
    crm.wait_for(1).await;

    // B's own callback is shown once: what comes back from the channel is not shown again.
    let sealed = wx.seal(&text_xml("accepted by B"));
    assert_eq!(b.post(&sealed).await, (200, "success".to_owned()));
    stream
        .until("B's callback", |l| {
            is_callback(l) && !l.contains(&format!("\"callback\":{callback},"))
        })
        .await;
    stream.read_for(Duration::from_millis(500)).await;
    assert_eq!(stream.count(is_callback), 2, "{}", stream.seen);
    crm.wait_for(2).await;
    settle().await;
    assert_eq!(
        crm.count(),
        2,
        "each callback delivered once: {:?}",
        crm.received()
    );
}
