//! The real binary on the shared store: `store.backend = "redis"` against a real `redis-server`
//! that wants a password. Callbacks are accepted and delivered byte for byte, readiness and the
//! dead-letter commands work as on SQLite, and the password is never printed.

use std::time::Duration;

use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use super::{listed_dead_letters, post_to_binary, run_command, targets_of, write_binary_config};
use crate::support::binary::{Binary, run_async};
use crate::support::redis::RedisServer;
use crate::support::{Target, Wx, eventually, eventually_async, free_addr, settle, text_xml};

const PASSWORD: &str = "s3cret-redis-password";

/// The `[store]` keys that put the binary on `url`, with the password in the URL.
fn on_redis(server: &RedisServer) -> String {
    format!(
        "backend = \"redis\"\n[store.redis]\nurls = [\"redis://:{PASSWORD}@{}/0\"]\nkey_prefix = \"it-{}\"\nlease_ms = 2000\n",
        server.addr(),
        std::process::id()
    )
}

/// A team moves to Redis: the same config with `backend = "redis"` serves callbacks, delivers
/// them to every target with the same bytes, is ready, and its dead letters are listed by the
/// CLI. The password is in no log line and no output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_on_redis_delivers_reports_ready_and_lists_dead_letters() {
    let server = RedisServer::start(&["--requirepass", PASSWORD]);
    let crm = Target::start(200).await;
    let audit = Target::start(400).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let rest = format!(
        "{}{}{}{}",
        on_redis(&server),
        wx.account("main", ""),
        Wx::target("crm", &crm.url("/crm"), ""),
        Wx::target("audit", &audit.url("/audit"), ""),
    );
    let config = write_binary_config(dir.path(), listen, &rest);
    let log = dir.path().join("serve.log");
    let mut binary = Binary::serve(&config, listen, &log).await;

    let sealed = wx.seal(&text_xml("stored in redis"));
    assert_eq!(
        post_to_binary(listen, &sealed).await,
        (200, "success".to_owned())
    );
    let got = crm.wait_for(1).await;
    assert_eq!(got[0].body, sealed.body.as_bytes());
    assert_eq!(got[0].path_and_query, format!("/crm?{}", sealed.query));
    let refused = audit.wait_for(1).await;
    assert_eq!(refused[0].body, sealed.body.as_bytes());
    assert_ne!(got[0].delivery(), refused[0].delivery());

    let ready = run_command(&config, "healthcheck", &["--ready"]).await;
    assert_eq!(ready.ok(), "200 OK ready\n");
    // audit answered 400: a dead letter at once, listed from the store in Redis.
    let letters = eventually_async("audit's dead letter listed by the CLI", || async {
        let letters = listed_dead_letters(&config).await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(targets_of(&letters), ["audit"], "{letters:?}");

    let printed = run_command(&config, "check-config", &[]).await;
    assert!(!printed.ok().contains(PASSWORD), "{printed:#?}");
    assert!(printed.ok().contains("backend = \"redis\""), "{printed:#?}");
    binary.terminate();
    binary.wait_exit().await;
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("store: redis"), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
    // AOF always and noeviction: nothing to warn about.
    assert!(
        !log.lines()
            .any(|l| l.contains(" WARN ") && l.contains("store:")),
        "{log}"
    );
}

/// Redis is down when the proxy starts: `serve` ends with an error naming Redis (its URL
/// redacted) instead of serving callbacks it cannot store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_redis_fails_at_start_and_prints_no_password() {
    let dir = tempfile::tempdir().unwrap();
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let nobody = free_addr();
    let rest = format!(
        "backend = \"redis\"\n[store.redis]\nurls = [\"redis://:{PASSWORD}@{nobody}/0\"]\n{}{}",
        wx.account("main", ""),
        Wx::target("crm", "http://127.0.0.1:9/crm", ""),
    );
    let config = write_binary_config(dir.path(), free_addr(), &rest);
    let config = config.to_string_lossy();
    let ran = run_async(&["--config", &config, "serve"]).await;
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    assert!(
        ran.stderr.contains("opening the store on redis at"),
        "{ran:#?}"
    );
    assert!(ran.stderr.contains(&nobody.to_string()), "{ran:#?}");
    assert!(!ran.stderr.contains(PASSWORD), "{ran:#?}");
    assert!(!ran.stdout.contains(PASSWORD), "{ran:#?}");
}

/// Redis runs with `appendfsync everysec` and an eviction policy: at start, one WARN line says
/// what a crash can lose and that eviction can drop callbacks. With `always` and `noeviction`
/// (the other tests' servers), nothing is said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_can_lose_callbacks_is_named_in_one_warning_at_start() {
    let server = RedisServer::start(&[
        "--appendfsync",
        "everysec",
        "--maxmemory-policy",
        "allkeys-lru",
    ]);
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let rest = format!(
        "backend = \"redis\"\n[store.redis]\nurls = [\"{}\"]\n{}{}",
        server.url(),
        wx.account("main", ""),
        Wx::target("crm", "http://127.0.0.1:9/crm", ""),
    );
    let config = write_binary_config(dir.path(), listen, &rest);
    let log = dir.path().join("serve.log");
    let mut binary = Binary::serve(&config, listen, &log).await;
    let text = binary
        .wait_log("the persistence warning", |log| {
            log.contains("listening for WeChat callbacks")
        })
        .await;
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("store:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].contains("appendfsync everysec")
            && warnings[0].contains("up to about 1 s of accepted callbacks")
            && warnings[0].contains("maxmemory-policy allkeys-lru"),
        "{text}"
    );
    binary.terminate();
    binary.wait_exit().await;
}

/// Late replies on the shared store: the binary on Redis rescues a slow bot's answer through
/// the customer-service API of a fake WeChat API, once, and a closed 48-hour window (45015)
/// becomes a dead letter in Redis that the CLI lists with WeChat's errcode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_replies_on_redis_are_sent_once_and_dead_lettered_with_the_errcode() {
    use crate::late_replies::bot_with_late_replies;
    use crate::support::wechat_api::{FakeWechatApi, Scripted};
    use crate::support::wx::RECEIVE_ID;

    let server = RedisServer::start(&["--requirepass", PASSWORD]);
    let api = FakeWechatApi::start(RECEIVE_ID, &[]).await;
    let bot = Target::start(200).await;
    bot.set_delay(Duration::from_millis(600));
    bot.set_reply(
        "text/xml",
        "<xml><MsgType>text</MsgType><Content>late but here</Content></xml>",
    );
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let rest = format!(
        "{}{}",
        on_redis(&server),
        bot_with_late_replies(&wx, &api, &bot)
    );
    let config = write_binary_config(dir.path(), listen, &rest);
    let log = dir.path().join("serve.log");
    let deadline = [("WECHAT_FANOUT_SERVER__REPLY_DEADLINE_MS", "200")];
    let mut binary = Binary::serve_with(&config, listen, &log, &[], &deadline).await;

    let sealed = wx.seal(&text_xml("hello?"));
    assert_eq!(
        post_to_binary(listen, &sealed).await,
        (200, "success".to_owned())
    );
    let sent = eventually("the late reply sent", || {
        let sent = api.sent();
        (!sent.is_empty()).then_some(sent)
    })
    .await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["text"]["content"], "late but here");
    assert_eq!(sent[0]["touser"], "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");

    api.script_send(&[Scripted::Errcode(45015)]);
    assert_eq!(
        post_to_binary(listen, &wx.seal(&text_xml("again?"))).await,
        (200, "success".to_owned())
    );
    let letter = eventually_async("the late reply's dead letter listed by the CLI", || async {
        let letters = listed_dead_letters(&config).await;
        letters.into_iter().find(|l| l["target"] == "~late-replies")
    })
    .await;
    assert!(letter.to_string().contains("45015"), "{letter}");
    settle().await;
    assert_eq!(api.sent().len(), 1, "sent once: {:?}", api.sent());
    binary.terminate();
    binary.wait_exit().await;
}
