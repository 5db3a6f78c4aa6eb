//! Issue 29, order per user: a target with `order = "per_user"` gets one user's callbacks one at
//! a time, in the order received, while that user's first is retried; another user's flow on.
//! On SQLite, and on two instances sharing Redis. A reply owner cannot wait in a lane.

use std::time::Duration;

use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use crate::instances::{Instance, on_redis};
use crate::support::redis::RedisServer;
use crate::support::{FAST, Proxy, Received, Target, Wx, eventually, text_from};

/// Each user's callbacks.
const EACH: usize = 5;

/// The target's settings: ordered, with retries slow enough that the other user's callbacks
/// are all delivered while the first user's first waits for its retry.
const ORDERED: &str = "order = \"per_user\"\nbackoff_initial_ms = 400\nbackoff_max_ms = 800";

/// The content of message `i` of `user`.
fn content(user: &str, i: usize) -> String {
    format!("{user} message {i}")
}

/// The index of the received request holding `needle`, and each one's.
fn positions(got: &[Received], needle: &str) -> Vec<usize> {
    got.iter()
        .enumerate()
        .filter(|(_, r)| String::from_utf8_lossy(&r.body).contains(needle))
        .map(|(i, _)| i)
        .collect()
}

/// What `got` must show: alice's first three times (two 503s, then delivered) before any other
/// of hers, hers in order, bob's in order, and bob's all delivered while hers waited.
fn in_order_per_user(got: &[Received]) {
    let first = positions(got, &content("alice", 0));
    assert_eq!(first.len(), 3, "alice's first: twice 503, then delivered");
    for user in ["alice", "bob"] {
        let at: Vec<usize> = (0..EACH)
            .map(|i| {
                let seen = positions(got, &content(user, i));
                *seen
                    .last()
                    .unwrap_or_else(|| panic!("{user} {i} never delivered"))
            })
            .collect();
        assert!(
            at.windows(2).all(|w| w[0] < w[1]),
            "{user}'s out of order: {at:?}"
        );
    }
    let alice_next = positions(got, &content("alice", 1))[0];
    assert!(
        alice_next > first[2],
        "alice's second went while her first was retried"
    );
    let bob_last = positions(got, &content("bob", EACH - 1))[0];
    assert!(bob_last < first[1], "bob's waited for alice's retries");
}

/// On SQLite: alice's first callback fails twice; her later ones wait behind it and arrive in
/// order; bob's, sent meanwhile, are not held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_callbacks_wait_behind_a_retried_one_while_another_user_flows() {
    let crm = Target::start(200).await;
    crm.fail_times(&content("alice", 0), 2);
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}",
        wx.account("main", ""),
        Wx::target("crm", &crm.url("/crm"), ORDERED),
    );
    let proxy = Proxy::start(&toml).await;
    for i in 0..EACH {
        for user in ["alice", "bob"] {
            let sealed = wx.seal(&text_from(&format!("o{user}"), &content(user, i)));
            proxy.post("main", &sealed).await.assert_success();
        }
    }
    let got = eventually("every callback delivered", || {
        (crm.count() >= 2 * EACH + 2).then(|| crm.received())
    })
    .await;
    in_order_per_user(&got);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(crm.count(), 2 * EACH + 2, "nothing twice");
}

/// The same on two instances sharing one Redis, the callbacks spread over both: one instance at
/// a time delivers a lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_redis_keep_each_users_order() {
    let redis = RedisServer::start(&[]);
    let crm = Target::start(200).await;
    crm.fail_times(&content("alice", 0), 2);
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let rest = format!(
        "{}{}{}",
        on_redis(&redis),
        wx.account("main", ""),
        Wx::target("crm", &crm.url("/crm"), ORDERED),
    );
    let (a, b) = tokio::join!(Instance::start(&rest), Instance::start(&rest));
    for i in 0..EACH {
        for (n, user) in ["alice", "bob"].into_iter().enumerate() {
            let sealed = wx.seal(&text_from(&format!("o{user}"), &content(user, i)));
            let instance = if (i + n) % 2 == 0 { &a } else { &b };
            assert_eq!(instance.post(&sealed).await.0, 200);
        }
    }
    let got = eventually("every callback delivered", || {
        (crm.count() >= 2 * EACH + 2).then(|| crm.received())
    })
    .await;
    in_order_per_user(&got);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(crm.count(), 2 * EACH + 2, "nothing twice");
    a.drained().await;
}

/// A reply owner's answer is relayed while WeChat waits, and a shadow's is asked beside it:
/// neither can wait in a lane (refused at load, exit 64, naming the key); nor can the primary.
/// A listen target may be ordered.
#[test]
fn order_on_a_reply_owner_a_shadow_or_the_primary_is_refused() {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    for (account_extra, extra, needle) in [
        (
            "",
            "order = \"per_user\"\nreplies_to = [\"*\"]",
            "replies_to",
        ),
        (
            "",
            "order = \"per_user\"\nshadow_of = \"other\"",
            "shadow_of",
        ),
        ("primary = \"bot\"", "order = \"per_user\"", "primary"),
        ("", "order = \"sometimes\"", "order"),
    ] {
        let error = crate::support::config_error(&format!(
            "{}{}{}",
            wx.account("main", account_extra),
            Wx::target("bot", "http://127.0.0.1:9/a", extra),
            Wx::target("other", "http://127.0.0.1:9/b", ""),
        ));
        assert!(
            error.contains("accounts[0].targets[0]") && error.contains(needle),
            "{error}"
        );
    }
    let listen = format!(
        "{}\n[[accounts.targets]]\nname = \"laptop\"\nlisten = true\n\
         listen_token = \"0123456789abcdef0123\"\norder = \"per_user\"\n",
        wx.account("main", "")
    );
    let config = wechat_fanout::config::Config::from_toml(&listen).unwrap();
    wechat_fanout::routing::build(&config).unwrap();
}
