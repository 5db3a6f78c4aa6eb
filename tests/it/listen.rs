//! Issue 27: a target reached over a WebSocket its client opens (`listen = true`), with the real
//! binary and the real `wechat-fanout listen` client forwarding to a local service. The tester's
//! callbacks reach the local service byte-identical and its reply reaches WeChat in time;
//! nobody else's do; a client away and back gets what waited, once, in order, on its first
//! attempt; a wrong token gets 401 and the client exits saying so; a client gone silent is
//! noticed within seconds; two clients share the deliveries; and with two instances on Redis,
//! the reply of a client connected to one reaches WeChat calling the other.

use std::process::{Child, Stdio};

use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use crate::operate::{post_to_binary, write_binary_config};
use crate::support::binary::{Binary, admin_url, command, run_async_with_env};
use crate::support::scrape::Scrape;
use crate::support::{Target, Wx, eventually_async, free_addr, settle, text_xml};

const TESTER: &str = "oTester_0123456789abcdefghij";
const TOKEN: &str = "laptop-token-0123456789";
const OPENID: &str = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";

/// A `wechat-fanout listen` process, killed when dropped.
struct Client(Child);

impl Client {
    fn start(listen: std::net::SocketAddr, forward_to: &str, token: &str) -> Client {
        let url = format!("http://{listen}");
        let child = command(&[
            "listen",
            "--url",
            &url,
            "--account",
            "main",
            "--target",
            "laptop",
            "--forward-to",
            forward_to,
        ])
        .env("WECHAT_FANOUT_LISTEN_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the listen client");
        Client(child)
    }
}

impl Client {
    /// Sends `signal` ("STOP", "CONT") to the client.
    fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.0.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal}");
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the proxy counts `n` listen clients of main/laptop.
async fn connected(config: &std::path::Path, n: u32) {
    let url = admin_url(config, "/metrics");
    eventually_async(&format!("{n} listen clients"), || {
        let url = url.clone();
        async move {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            let family = Scrape::parse(&text).family("wechat_fanout_listeners");
            // Absent until the first client connects.
            let count = family
                .get("account=main,target=laptop")
                .copied()
                .unwrap_or(0.0);
            (count == f64::from(n)).then_some(())
        }
    })
    .await;
}

fn reply(name: &str) -> String {
    format!(
        "<xml><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[from {name}]]></Content></xml>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_testers_callbacks_reach_a_laptop_and_its_replies_reach_wechat() {
    let bot = Target::start(200).await;
    bot.set_reply("application/xml", &reply("bot"));
    let laptop = Target::start(200).await;
    laptop.set_reply("application/xml", &reply("laptop"));
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let accounts = format!(
        "{}{}\n[[accounts.targets]]\nname = \"laptop\"\nlisten = true\nlisten_token = \"{TOKEN}\"\n\
         users = [\"{TESTER}\"]\nreplies_to = [\"*\"]\nmax_concurrency = 1\n",
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", &bot.url("/bot"), ""),
    );
    let config = write_binary_config(dir.path(), listen, &accounts);
    let mut binary = Binary::serve(&config, listen, &dir.path().join("serve.log")).await;
    binary.wait_listening().await;

    // Refused before any upgrade: no token, a wrong one, a target that is not a listen target.
    let upgrade = |path: &str, token: Option<&str>| {
        let mut request = reqwest::Client::new()
            .get(format!("http://{listen}{path}"))
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    for (path, token) in [
        ("/listen/main/laptop", None),
        ("/listen/main/laptop", Some("laptop-token-0123456780")),
        ("/listen/main/bot", Some(TOKEN)),
        ("/listen/nobody/laptop", Some(TOKEN)),
    ] {
        let refused = upgrade(path, token).await.unwrap();
        assert_eq!(refused.status(), 401, "{path} {token:?}");
    }
    let wrong = run_async_with_env(
        &[
            "listen",
            "--url",
            &format!("http://{listen}"),
            "--account",
            "main",
            "--target",
            "laptop",
        ],
        &[("WECHAT_FANOUT_LISTEN_TOKEN", "not-the-token-0123456789")],
    )
    .await;
    assert_eq!(wrong.code, Some(1), "{wrong:#?}");
    assert!(
        wrong.stderr.contains("refused the listen token"),
        "{wrong:#?}"
    );

    let client = Client::start(listen, &laptop.url("/wx"), TOKEN);
    connected(&config, 1).await;

    // The tester: the laptop answers, in time, and gets WeChat's bytes as they came.
    let sealed = wx.seal(&text_xml("from the tester").replace(OPENID, TESTER));
    let (status, answer) = post_to_binary(listen, &sealed).await;
    assert_eq!((status, answer.as_str()), (200, reply("laptop").as_str()));
    let got = laptop.wait_for(1).await;
    assert_eq!(got[0].body, sealed.body.as_bytes());
    assert_eq!(got[0].path_and_query, format!("/wx?{}", sealed.query));
    assert_eq!(got[0].header("content-type"), Some(sealed.content_type));
    assert_eq!(got[0].header("x-wechat-fanout-account"), Some("main"));
    assert_eq!(got[0].attempt(), 1);

    // Someone else: the bot answers, and nothing reaches the laptop.
    let (status, answer) = post_to_binary(listen, &wx.seal(&text_xml("from someone"))).await;
    assert_eq!((status, answer.as_str()), (200, reply("bot").as_str()));
    settle().await;
    assert_eq!(laptop.count(), 1);

    // The laptop goes away: the tester's callbacks are answered `success` at once and wait,
    // their attempts untouched; back, it gets each once, in order, on its first attempt.
    drop(client);
    connected(&config, 0).await;
    let waiting: Vec<_> = (0..3)
        .map(|i| wx.seal(&text_xml(&format!("while away {i}")).replace(OPENID, TESTER)))
        .collect();
    for sealed in &waiting {
        let (status, answer) = post_to_binary(listen, sealed).await;
        assert_eq!((status, answer.as_str()), (200, "success"));
    }
    settle().await;
    assert_eq!(
        laptop.count(),
        1,
        "nothing is delivered while nobody listens"
    );
    let _back = Client::start(listen, &laptop.url("/wx"), TOKEN);
    let got = laptop.wait_for(4).await;
    let bodies: Vec<&[u8]> = got[1..].iter().map(|r| &r.body[..]).collect();
    let sent: Vec<&[u8]> = waiting.iter().map(|s| s.body.as_bytes()).collect();
    assert_eq!(
        bodies, sent,
        "one at a time (max_concurrency = 1), oldest first"
    );
    assert!(
        got[1..].iter().all(|r| r.attempt() == 1),
        "no attempt burnt while away"
    );
    settle().await;
    assert_eq!(laptop.count(), 4, "each once");
}

/// A client that dies with a delivery in flight (SIGKILL: its socket closes under it): the
/// delivery fails at once rather than at its timeout, and is delivered again, on a later attempt
/// of the same delivery, to the client that connects next. Plaintext mode, no `users`: every
/// callback goes to the laptop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_in_flight_on_a_client_that_dies_is_retried_on_the_next() {
    let laptop = Target::start(200).await;
    laptop.set_delay(std::time::Duration::from_secs(3));
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let accounts = format!(
        "{}\n[[accounts.targets]]\nname = \"laptop\"\nlisten = true\nlisten_token = \"{TOKEN}\"\n\
         timeout_ms = 10000\nbackoff_initial_ms = 100\nbackoff_max_ms = 100\n",
        wx.account("main", ""),
    );
    let config = write_binary_config(dir.path(), listen, &accounts);
    let mut binary = Binary::serve(&config, listen, &dir.path().join("serve.log")).await;
    binary.wait_listening().await;
    let first = Client::start(listen, &laptop.url("/wx"), TOKEN);
    connected(&config, 1).await;

    let sealed = wx.seal(&text_xml("in flight when the laptop dies"));
    let (status, _) = post_to_binary(listen, &sealed).await;
    assert_eq!(status, 200);
    // The local service has it, and takes 3 s to answer: the client dies meanwhile.
    laptop.wait_for(1).await;
    let died = std::time::Instant::now();
    drop(first);
    connected(&config, 0).await;
    laptop.set_delay(std::time::Duration::ZERO);
    let _next = Client::start(listen, &laptop.url("/wx"), TOKEN);
    let got = laptop.wait_for(2).await;
    assert!(
        died.elapsed() < std::time::Duration::from_secs(8),
        "retried without waiting for the 10 s timeout: {:?}",
        died.elapsed()
    );
    assert_eq!(got[1].body, sealed.body.as_bytes());
    assert_eq!(got[1].delivery(), got[0].delivery(), "the same delivery");
    assert_eq!(got[1].attempt(), 2);
    crate::support::no_jobs_left(
        &crate::support::StoreView::admin_of(&config),
        "the delivery recorded as delivered",
    )
    .await;
}

/// With nobody listening, callbacks wait `listen_backlog_secs`, then become dead letters that
/// say why (and can be replayed once a client is back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_nobody_listened_to_become_dead_letters_after_the_backlog() {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let accounts = format!(
        "{}\n[[accounts.targets]]\nname = \"laptop\"\nlisten = true\nlisten_token = \"{TOKEN}\"\n\
         listen_backlog_secs = 1\n",
        wx.account("main", ""),
    );
    let config = write_binary_config(dir.path(), listen, &accounts);
    let mut binary = Binary::serve(&config, listen, &dir.path().join("serve.log")).await;
    binary.wait_listening().await;
    let (status, answer) = post_to_binary(listen, &wx.seal(&text_xml("nobody listens"))).await;
    assert_eq!((status, answer.as_str()), (200, "success"));
    let letters = eventually_async("the dead letter", || {
        let config = config.clone();
        async move {
            let letters = crate::operate::listed_dead_letters(&config).await;
            (!letters.is_empty()).then_some(letters)
        }
    })
    .await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["target"], "laptop");
    assert_eq!(
        letters[0]["last_error"],
        "no listen client connected for listen_backlog_secs (1 s)"
    );
    assert_eq!(letters[0]["attempts"], 0, "never attempted");
}

/// A client that stops answering (SIGSTOP: its socket stays open, nothing comes back, not
/// even the pongs) is noticed within seconds, not at the delivery's timeout; the delivery in
/// flight on it is retried, and reaches the client once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_noticed_within_seconds_and_its_delivery_retried() {
    let laptop = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let accounts = format!(
        "{}\n[[accounts.targets]]\nname = \"laptop\"\nlisten = true\nlisten_token = \"{TOKEN}\"\n\
         timeout_ms = 60000\nbackoff_initial_ms = 100\nbackoff_max_ms = 100\n",
        wx.account("main", ""),
    );
    let config = write_binary_config(dir.path(), listen, &accounts);
    let mut binary = Binary::serve(&config, listen, &dir.path().join("serve.log")).await;
    binary.wait_listening().await;
    let client = Client::start(listen, &laptop.url("/wx"), TOKEN);
    connected(&config, 1).await;

    client.signal("STOP");
    let stopped = std::time::Instant::now();
    let sealed = wx.seal(&text_xml("sent to a silent laptop"));
    let (status, _) = post_to_binary(listen, &sealed).await;
    assert_eq!(status, 200);
    // Noticed by the missing pongs (3 s pings, 10 s of silence), long before the 60 s timeout.
    let url = admin_url(&config, "/metrics");
    loop {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let family = Scrape::parse(&text).family("wechat_fanout_listeners");
        if family.get("account=main,target=laptop").copied() == Some(0.0) {
            break;
        }
        assert!(
            stopped.elapsed() < std::time::Duration::from_secs(20),
            "the silent connection was not noticed:\n{}",
            binary.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(laptop.count(), 0);

    // Back, the client connects again and gets the delivery on a later attempt.
    client.signal("CONT");
    eventually_async(
        "the delivery retried on the client that came back",
        || async {
            let got = laptop.received();
            got.iter().any(|r| r.attempt() >= 2).then_some(())
        },
    )
    .await;
    let got = laptop.received();
    assert!(got.iter().all(|r| r.body == sealed.body.as_bytes()));
    crate::support::no_jobs_left(
        &crate::support::StoreView::admin_of(&config),
        "the delivery recorded as delivered",
    )
    .await;
}

/// Two clients with one token share the target's deliveries: each callback reaches one of
/// them, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_of_one_target_share_its_deliveries() {
    let (left, right) = (Target::start(200).await, Target::start(200).await);
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let accounts = format!(
        "{}\n[[accounts.targets]]\nname = \"laptop\"\nlisten = true\nlisten_token = \"{TOKEN}\"\n",
        wx.account("main", ""),
    );
    let config = write_binary_config(dir.path(), listen, &accounts);
    let mut binary = Binary::serve(&config, listen, &dir.path().join("serve.log")).await;
    binary.wait_listening().await;
    let _clients = (
        Client::start(listen, &left.url("/wx"), TOKEN),
        Client::start(listen, &right.url("/wx"), TOKEN),
    );
    connected(&config, 2).await;
    let sent: Vec<_> = (0..6)
        .map(|i| wx.seal(&text_xml(&format!("shared {i}"))))
        .collect();
    for sealed in &sent {
        assert_eq!(post_to_binary(listen, sealed).await.0, 200);
    }
    eventually_async("all six delivered", || async {
        (left.count() + right.count() == 6).then_some(())
    })
    .await;
    settle().await;
    let (left, right) = (left.received(), right.received());
    assert!(
        !left.is_empty() && !right.is_empty(),
        "both clients take deliveries: {} and {}",
        left.len(),
        right.len()
    );
    let mut bodies: Vec<&[u8]> = left.iter().chain(&right).map(|r| &r.body[..]).collect();
    bodies.sort();
    let mut expected: Vec<&[u8]> = sent.iter().map(|s| s.body.as_bytes()).collect();
    expected.sort();
    assert_eq!(bodies, expected, "each once");
}

/// Two instances on one Redis, the laptop's client connected to B and WeChat calling A: the
/// tester's callback is answered on A with the laptop's reply, asked of B through Redis, in
/// time; the laptop gets WeChat's bytes once; A's console counts B's client; everyone else
/// still gets the bot's reply. Plaintext mode (the first test is in safe mode).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_from_a_client_on_another_instance_reaches_wechat() {
    let redis = crate::support::redis::RedisServer::start(&[]);
    let bot = Target::start(200).await;
    bot.set_reply("application/xml", &reply("bot"));
    let laptop = Target::start(200).await;
    laptop.set_reply("application/xml", &reply("laptop"));
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let rest = format!(
        "{}{}{}\n[[accounts.targets]]\nname = \"laptop\"\nlisten = true\nlisten_token = \"{TOKEN}\"\n\
         users = [\"{TESTER}\"]\nreplies_to = [\"*\"]\n",
        crate::instances::on_redis(&redis),
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", &bot.url("/bot"), ""),
    );
    let (a, b) = tokio::join!(
        crate::instances::Instance::start(&rest),
        crate::instances::Instance::start(&rest)
    );
    let _client = Client::start(b.listen, &laptop.url("/wx"), TOKEN);
    connected(&b.config, 1).await;
    // A hears of B's client (at once: B says so when it connects), and its console shows it.
    eventually_async("A's console counting B's client", || async {
        let (status, text) = a.admin("/console/targets").await;
        let rows: serde_json::Value = serde_json::from_str(&text).ok()?;
        let laptop = rows.as_array()?.iter().find(|r| r["target"] == "laptop")?;
        (status == 200 && laptop["listeners"] == 1).then_some(())
    })
    .await;

    let sealed = wx.seal(&text_xml("from the tester").replace(OPENID, TESTER));
    let sent = std::time::Instant::now();
    let (status, answer) = a.post(&sealed).await;
    assert_eq!(
        (status, answer.as_str()),
        (200, reply("laptop").as_str()),
        "A:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    assert!(sent.elapsed() < std::time::Duration::from_secs(5));
    let got = laptop.wait_for(1).await;
    assert_eq!(got[0].body, sealed.body.as_bytes());
    assert_eq!(got[0].path_and_query, format!("/wx?{}", sealed.query));
    assert_eq!(got[0].attempt(), 1);

    let (status, answer) = a.post(&wx.seal(&text_xml("from someone"))).await;
    assert_eq!((status, answer.as_str()), (200, reply("bot").as_str()));
    a.drained().await;
    settle().await;
    assert_eq!(laptop.count(), 1, "once, and nobody else's");
}
