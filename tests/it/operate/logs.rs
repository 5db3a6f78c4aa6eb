//! The logs of the real binary, as whoever greps them at 3 a.m. needs them: one callback's story
//! (its answer, its resends, every delivery attempt) found by one id, JSON on request, filtered
//! like `RUST_LOG` says, and never a token, an AES key or a decrypted message in them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use super::{post_to_binary as post, write_binary_config};
use crate::support::wx::unique;
use crate::support::wx::{AES_KEY, TOKEN};
use crate::support::{Binary, StoreView, Target, Wx, event_xml, free_addr, no_jobs_left, text_xml};

/// The callback id a JSON line carries: in its `callback` span, or as a field.
fn callback_of(line: &Value) -> Option<i64> {
    line["span"]["callback"]
        .as_i64()
        .or_else(|| line["fields"]["callback"].as_i64())
}

/// The incident: a user says the bot answered twice. With `--log-format json`, every line about
/// that callback — accepted, the resend WeChat sent while the slow bot thought (answered like the
/// first copy), the late resend (answered from the store), each delivery attempt to the bot and
/// to the flaky CRM, retries included — carries the same callback id, so one filter finds the
/// whole story. No line holds the token, the AES key or what the user wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_tell_one_callbacks_story_under_one_id_without_secrets() {
    let bot = Target::start(200).await;
    bot.set_reply("text/plain", "success");
    bot.set_delay(Duration::from_millis(1500));
    let crm = Target::start(500).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let accounts = format!(
        "{}{}{}",
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", &bot.url("/bot"), "timeout_ms = 5000"),
        Wx::target("crm", &crm.url("/crm"), "max_attempts = 1000"),
    );
    let config = write_binary_config(dir.path(), listen, &accounts);
    let log = dir.path().join("serve.log");
    // The instance's name from the environment, as a container would set it.
    let name = [("WECHAT_FANOUT_SERVER__INSTANCE_NAME", "fanout-logs-1")];
    let mut binary =
        Binary::serve_with(&config, listen, &log, &["--log-format", "json"], &name).await;
    binary.wait_listening().await;

    let private = "my secret diary, page 42";
    let sealed = wx.seal(&text_xml(private));
    let first = tokio::spawn({
        let sealed = sealed.clone();
        async move { post(listen, &sealed).await }
    });
    bot.wait_for(1).await;
    // WeChat's resend while the bot is still thinking.
    assert_eq!(post(listen, &sealed).await, (200, "success".to_owned()));
    assert_eq!(first.await.unwrap(), (200, "success".to_owned()));
    crm.wait_for(1).await;
    crm.set_status(200);
    no_jobs_left(&StoreView::admin_of(&config), "every delivery recorded").await;
    // A late resend, answered from the store.
    assert_eq!(post(listen, &sealed).await, (200, "success".to_owned()));

    let text = binary
        .wait_log("the late resend", |log| {
            log.contains("resend of a stored callback")
        })
        .await;
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // Every line names the instance that wrote it (issue 25), first of its fields.
    for (line, raw) in lines.iter().zip(text.lines()) {
        assert_eq!(line["instance_name"], "fanout-logs-1", "{line}");
        assert!(
            raw.starts_with("{\"instance_name\":\"fanout-logs-1\","),
            "{raw}"
        );
    }
    let accepted: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "callback")
        .collect();
    assert_eq!(accepted.len(), 1, "{text}");
    let id = callback_of(accepted[0]).unwrap_or_else(|| panic!("no id: {text}"));

    // Which lines are about a callback: those in its span, deliveries, and resends.
    let mut story: BTreeMap<String, usize> = BTreeMap::new();
    for line in &lines {
        let message = line["fields"]["message"].as_str().unwrap_or_default();
        let about = line["span"]["name"] == "callback"
            || message == "delivery"
            || line["fields"]["dedupe_key"].is_string();
        if about {
            assert_eq!(
                callback_of(line),
                Some(id),
                "a line without the id {id}: {line}"
            );
            *story.entry(message.to_owned()).or_default() += 1;
        }
    }
    let resends = story
        .iter()
        .filter(|(m, _)| m.starts_with("resend"))
        .map(|(_, n)| n)
        .sum::<usize>();
    assert_eq!(resends, 2, "{story:?}\n{text}");
    assert_eq!(story.get("callback"), Some(&1), "{story:?}");
    let deliveries = story.get("delivery").copied().unwrap_or_default();
    assert_eq!(deliveries, bot.count() + crm.count(), "{story:?}\n{text}");
    assert!(crm.count() >= 2, "the CRM's retry is in the story");

    for secret in [TOKEN, AES_KEY, private] {
        assert!(!text.contains(secret), "{secret:?} is in the log:\n{text}");
    }
    binary.terminate();
    binary.wait_exit().await;
}

/// `RUST_LOG` decides what is written, with per-module directives, and the default format is
/// text a person reads, not JSON. Here: warnings everywhere, plus info from ingress only. The
/// callback's info line and the CRM's failed attempt (a warning) are written; the startup lines
/// and the delivered attempt (info, from elsewhere) are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_filters_by_level_and_module_and_text_is_the_default() {
    let crm = Target::start(500).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let accounts = format!(
        "{}{}",
        wx.account("main", ""),
        Wx::target("crm", &crm.url("/crm"), "max_attempts = 1000"),
    );
    let config = write_binary_config(dir.path(), listen, &accounts);
    let log = dir.path().join("serve.log");
    let filter = [("RUST_LOG", "warn,wechat_fanout::ingress=info")];
    let mut binary = Binary::serve_with(&config, listen, &log, &[], &filter).await;

    let sealed = wx.seal(&text_xml("filtered"));
    assert_eq!(post(listen, &sealed).await, (200, "success".to_owned()));
    crm.wait_for(1).await;
    crm.set_status(200);
    no_jobs_left(&StoreView::admin_of(&config), "the delivery recorded").await;
    let text = binary
        .wait_log("the accepted callback and the retry", |log| {
            log.contains(" INFO ") && log.contains(" WARN ")
        })
        .await;

    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().all(|l| !l.starts_with('{')), "{text}");
    let info: Vec<&&str> = lines.iter().filter(|l| l.contains(" INFO ")).collect();
    assert_eq!(info.len(), 1, "{text}");
    // The callback's id, as the span names it; the retry's line carries the same.
    let id = info[0]
        .split_once("callback{account=\"main\" callback=")
        .and_then(|(_, rest)| rest.split_once("}: callback"))
        .map(|(id, _)| id.to_owned())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(id.parse::<i64>().is_ok(), "{text}");
    assert!(info[0].contains("outcome=\"accepted\""), "{text}");
    let warn: Vec<&&str> = lines.iter().filter(|l| l.contains(" WARN ")).collect();
    assert!(!warn.is_empty(), "{text}");
    for line in &warn {
        assert!(
            line.contains("delivery")
                && line.contains(&format!("callback={id} "))
                && line.contains("status=500"),
            "{text}"
        );
    }
    assert!(!text.contains("listening"), "{text}");
    assert!(!text.contains("outcome=\"delivered\""), "{text}");
    binary.terminate();
    binary.wait_exit().await;
}

/// Regression: a resend's line named its callback twice (`callback{account="main"
/// callback=7 callback=7}`), as the id was recorded into its span twice. Whether the resend
/// waits for its first copy here or finds it in the store, its line names the callback once,
/// the same as the first copy's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resends_line_names_its_callback_once() {
    let bot = Target::start(200).await;
    bot.set_reply("text/plain", "success");
    bot.set_delay(Duration::from_millis(800));
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let accounts = format!(
        "{}{}",
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", &bot.url("/bot"), "timeout_ms = 5000"),
    );
    let config = write_binary_config(dir.path(), listen, &accounts);
    let log = dir.path().join("serve.log");
    let mut binary = Binary::serve(&config, listen, &log).await;

    let sealed = wx.seal(&text_xml("twice"));
    let first = tokio::spawn({
        let sealed = sealed.clone();
        async move { post(listen, &sealed).await }
    });
    bot.wait_for(1).await;
    // While the first copy waits for the bot, and once it is answered.
    assert_eq!(post(listen, &sealed).await.0, 200);
    assert_eq!(first.await.unwrap().0, 200);
    // Once the first copy's answer is saved (just after it was sent), a resend finds it stored.
    no_jobs_left(&StoreView::admin_of(&config), "the delivery recorded").await;
    crate::support::settle().await;
    assert_eq!(post(listen, &sealed).await.0, 200);
    let text = binary
        .wait_log("both resends", |log| {
            log.contains("resend answered like its first copy")
                && log.contains("resend of a stored callback")
        })
        .await;
    let named = |line: &str| line.matches("callback=").count();
    let accepted = text
        .lines()
        .find(|l| l.contains("outcome=\"accepted\""))
        .unwrap_or_else(|| panic!("{text}"));
    let id = accepted
        .split_once("callback=")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(id, _)| id)
        .unwrap_or_else(|| panic!("{text}"));
    let resends: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("outcome=\"duplicate\""))
        .collect();
    assert_eq!(resends.len(), 2, "{text}");
    for line in resends.iter().chain([&accepted]) {
        assert_eq!(named(line), 1, "{line}");
        assert!(line.contains(&format!("callback={id}}}")), "{line}");
    }
    binary.terminate();
    binary.wait_exit().await;
}

/// A message from `openid` saying `content`, sealed as WeChat sends it to `wx`'s account (the
/// openid also in the query, as official accounts send it).
fn from_user(wx: &Wx, openid: &str, content: &str) -> wechat_fanout::wechat::SealedRequest {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let message = format!(
        "<xml><ToUserName><![CDATA[gh_a6a3d5e8ae7e]]></ToUserName>\
         <FromUserName><![CDATA[{openid}]]></FromUserName><CreateTime>{now}</CreateTime>\
         <MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content>\
         <MsgId>{}</MsgId></xml>",
        unique()
    );
    let nonce = unique().to_string();
    wechat_fanout::wechat::seal_callback(
        &wx.credentials,
        &message,
        wechat_fanout::wechat::SealParams {
            timestamp: &now,
            nonce: &nonce,
            random: rand::random(),
            openid: Some(openid),
            to_user_name: "gh_a6a3d5e8ae7e",
            agent_id: None,
        },
    )
}

/// Runs the binary with JSON logs (`extra` added to `[log]`), sends callbacks from three users
/// (messages, a subscribe event, a resend, one with a bad signature, deliveries that fail and
/// are retried) and returns every log line, parsed.
async fn run_with_users(log_extra: &str, users: &[(&str, &str)]) -> Vec<Value> {
    let crm = Target::start(500).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Compatible);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let accounts = format!(
        "[log]\nformat = \"json\"\n{log_extra}\n{}{}",
        wx.account("main", ""),
        Wx::target("crm", &crm.url("/crm"), "max_attempts = 1000"),
    );
    let config = write_binary_config(dir.path(), listen, &accounts);
    let log = dir.path().join("serve.log");
    let mut binary = Binary::serve_with(&config, listen, &log, &[], &[]).await;
    binary.wait_listening().await;

    let mut sent = 0;
    for (openid, content) in users {
        let sealed = from_user(&wx, openid, content);
        assert_eq!(post(listen, &sealed).await, (200, "success".to_owned()));
        sent += 1;
        // WeChat's resend of the same message.
        assert_eq!(post(listen, &sealed).await, (200, "success".to_owned()));
        // A forged copy: the openid in the query and the body, a spoilt signature.
        let mut forged = from_user(&wx, openid, content);
        forged.query = forged.query.replacen("signature=", "signature=0", 1);
        assert_eq!(post(listen, &forged).await.0, 401);
    }
    let subscribe = event_from(&wx, users[0].0);
    assert_eq!(post(listen, &subscribe).await, (200, "success".to_owned()));
    sent += 1;
    crm.wait_for(sent + 1).await;
    crm.set_status(200);
    no_jobs_left(&StoreView::admin_of(&config), "every delivery recorded").await;
    let text = binary
        .wait_log("every delivery logged", |log| {
            log.matches("\"outcome\":\"delivered\"").count() >= sent
        })
        .await;
    binary.terminate();
    binary.wait_exit().await;
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// A subscribe event from `openid`: its dedupe key embeds the openid.
fn event_from(wx: &Wx, openid: &str) -> wechat_fanout::wechat::SealedRequest {
    let xml = event_xml("subscribe", "qrscene_1").replacen(
        "<![CDATA[o",
        &format!("<![CDATA[{openid}-"),
        1,
    );
    let mut sealed = wx.seal(&xml);
    sealed.query = sealed.query.replace("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", openid);
    sealed
}

/// The privacy incident: a support engineer forwards a log excerpt to a vendor, and with it
/// every subscriber's openid and what they wrote. By default no line at info or warn — accepted
/// callbacks, resends, refused forgeries, failed and retried deliveries — holds an openid, a
/// message's content or a dedupe key; a user is named by a keyed hash that is the same on each
/// of their lines. With `log.show_user_ids = true` the openids are back, which also shows that
/// the scan finds them when they are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_name_users_only_by_a_keyed_hash_unless_asked() {
    let users = [
        ("oAliceOpenid0000000000000001", "my bank pin is 4321"),
        ("oBobOpenid000000000000000002", "call me at 555-0199"),
        ("oAliceOpenid0000000000000001", "second message from alice"),
    ];
    let lines = run_with_users("", &users).await;
    assert!(lines.len() > 10, "{lines:?}");
    for line in &lines {
        let text = line.to_string();
        for (openid, content) in &users {
            assert!(!text.contains(openid), "{openid} in a log line: {text}");
            assert!(!text.contains(content), "{content:?} in a log line: {text}");
        }
        assert!(
            !text.contains("AliceOpenid") && !text.contains("BobOpenid"),
            "{text}"
        );
    }
    let accepted: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "callback")
        .collect();
    assert_eq!(accepted.len(), 4, "three messages and one event");
    let user = |l: &Value| l["fields"]["user"].as_str().unwrap_or_default().to_owned();
    for line in &accepted {
        assert!(
            user(line).starts_with("h:") && user(line).len() == 18,
            "{line}"
        );
        let key = line["fields"]["dedupe_key"].as_str().unwrap_or_default();
        assert!(key.starts_with("h:"), "{line}");
    }
    assert_eq!(user(accepted[0]), user(accepted[2]), "alice, twice");
    assert_ne!(user(accepted[0]), user(accepted[1]), "alice is not bob");
    let resends = lines
        .iter()
        .filter(|l| l["fields"]["outcome"] == "duplicate")
        .count();
    assert_eq!(resends, 3, "{lines:?}");

    let shown = run_with_users("show_user_ids = true", &users).await;
    let alice = shown
        .iter()
        .filter(|l| l["fields"]["user"] == users[0].0)
        .count();
    assert_eq!(alice, 2, "alice's two messages name her when asked to");
    assert!(
        shown.iter().any(|l| l["fields"]["dedupe_key"]
            .as_str()
            .is_some_and(|k| k.contains(users[0].0))),
        "the event's dedupe key shows the openid when asked to"
    );
}
