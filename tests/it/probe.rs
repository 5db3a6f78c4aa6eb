//! `probe`, before WeChat's console is pointed at the proxy: every target gets WeChat's own
//! URL-verification GET for its account, and the report says which would accept the callbacks
//! about to come. Targets here play a stock SDK ([`Target::start_sdk`]) set up right or wrong,
//! a service that answers something else, one that refuses, and one that is down.

use serde_json::Value;
use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use crate::operate::{run_command, write_binary_config};
use crate::support::{FAST, Proxy, Target, Wx, free_addr};

/// The report's line for `target`: its words, split on runs of spaces.
fn line_of<'a>(stdout: &'a str, target: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|words| words.get(1) == Some(&target))
        .unwrap_or_else(|| panic!("no line for {target}:\n{stdout}"))
}

/// The incident it prevents: the console is switched to the proxy, and the CRM, whose SDK has
/// an old token, refuses every callback for a day. `probe` says so first: the bot (same token)
/// echoes, the CRM's SDK rejects the signature, the analytics service answers `success`
/// instead of the echo, and the lake is down; exit 1. Each target got one GET and no POST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_names_each_target_that_would_refuse_before_the_console_is_switched() {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let bot = Target::start_sdk(wx.credentials.clone()).await;
    let mut stale = wx.credentials.clone();
    stale.token = "an-old-token".to_owned();
    let crm = Target::start_sdk(stale).await;
    let analytics = Target::start(200).await;
    analytics.set_reply("text/plain", "success");
    let lake = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let accounts = format!(
        "{}{}{}{}{}",
        wx.account("main", ""),
        Wx::target("bot", &bot.url("/wx"), ""),
        Wx::target("crm", &crm.url("/crm?tenant=7"), ""),
        Wx::target("analytics", &analytics.url("/a"), ""),
        Wx::target("lake", &format!("http://{lake}/ingest"), "timeout_ms = 500"),
    );
    let config = write_binary_config(dir.path(), free_addr(), &accounts);

    let ran = run_command(&config, "probe", &[]).await;
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    let out = &ran.stdout;
    assert_eq!(line_of(out, "bot")[2..4], ["ok", "200"], "{out}");
    assert_eq!(line_of(out, "crm")[2..4], ["rejected", "403"], "{out}");
    assert_eq!(
        line_of(out, "analytics")[2..5],
        ["wrong", "echo", "200"],
        "{out}"
    );
    assert_eq!(line_of(out, "lake")[2], "unreachable", "{out}");
    assert!(out.contains("1 of 4 targets ok"), "{out}");
    // The signature is not printed, only the target's URL.
    assert!(!out.contains("signature="), "{out}");

    for (target, path) in [
        (&bot, "/wx?"),
        (&crm, "/crm?tenant=7&"),
        (&analytics, "/a?"),
    ] {
        let got = target.received();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].method, "GET", "never a message-shaped POST");
        assert!(got[0].path_and_query.starts_with(path), "{got:?}");
        assert_eq!(got[0].header("x-wechat-fanout-probe"), Some("1"));
    }
    let echo = bot.received()[0].verified.clone().unwrap().unwrap();
    assert!(
        echo.len() >= 10 && echo.iter().all(u8::is_ascii_digit),
        "{echo:?}"
    );
    assert!(crm.received()[0].verified.clone().unwrap().is_err());

    // Only the bot: all ok, exit 0, and a fresh echostr.
    let ran = run_command(&config, "probe", &["--account", "main", "--target", "bot"]).await;
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    assert!(ran.stdout.contains("1 of 1 targets ok"), "{}", ran.stdout);
    let second = bot.received()[1].verified.clone().unwrap().unwrap();
    assert_ne!(second, echo, "every probe sends a fresh echostr");

    let ran = run_command(&config, "probe", &["--target", "nope"]).await;
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    assert!(ran.stderr.contains("no target \"nope\""), "{ran:#?}");
}

/// WeCom's handshake is encrypted: a target's SDK must decrypt `echostr` with the same key and
/// corp id and answer the plaintext. One with the right key passes, one with another key fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_sends_wecom_an_encrypted_echostr() {
    let wx = Wx::new(Kind::WeCom, Mode::Safe);
    let helpdesk = Target::start_sdk(wx.credentials.clone()).await;
    let mut other_key = wx.credentials.clone();
    other_key.security = wechat_fanout::wechat::Security::Safe(
        wechat_fanout::wechat::AesKey::from_encoding_aes_key(
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        )
        .unwrap(),
    );
    let hr = Target::start_sdk(other_key).await;
    let dir = tempfile::tempdir().unwrap();
    let accounts = format!(
        "{}{}{}",
        wx.account("work", ""),
        Wx::target("helpdesk", &helpdesk.url("/wecom"), ""),
        Wx::target("hr", &hr.url("/hr"), ""),
    );
    let config = write_binary_config(dir.path(), free_addr(), &accounts);
    let ran = run_command(&config, "probe", &["--json"]).await;
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    let report: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets[0]["target"], "helpdesk");
    assert_eq!(targets[0]["outcome"], "ok", "{report}");
    assert_eq!(targets[1]["outcome"], "rejected", "{report}");
    assert!(targets[0]["elapsed_ms"].is_u64());
    let query = &helpdesk.received()[0].path_and_query;
    assert!(
        query.contains("msg_signature=") && !query.contains("&signature="),
        "{query}"
    );
}

/// A target with `http2 = true` is probed over HTTP/2, as its callbacks will be sent: an
/// HTTP/2-only SDK echoes. The same server without `http2` is unreachable, as its deliveries
/// would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reaches_an_http2_target_over_http2() {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let bot = Target::start_sdk_h2(wx.credentials.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let accounts = format!(
        "{}{}{}",
        wx.account("main", ""),
        Wx::target("h2", &bot.url("/wx"), "http2 = true"),
        Wx::target("h1", &bot.url("/wx"), "timeout_ms = 1000"),
    );
    let config = write_binary_config(dir.path(), free_addr(), &accounts);
    let ran = run_command(&config, "probe", &["--json"]).await;
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    let report: Value = serde_json::from_str(&ran.stdout).unwrap();
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets[0]["target"], "h2");
    assert_eq!(targets[0]["outcome"], "ok", "{report}");
    assert_eq!(targets[1]["outcome"], "unreachable", "{report}");
    let got = bot.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].version, hyper::Version::HTTP_2);
    assert_eq!(got[0].method, "GET");
}

/// The same check from the running proxy's admin API, with its current targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_probe_checks_the_running_targets() {
    let wx = Wx::new(Kind::MiniProgram, Mode::Compatible);
    let bot = Target::start_sdk(wx.credentials.clone()).await;
    let crm = Target::start(404).await;
    let proxy = Proxy::start_with_admin(&format!(
        "{FAST}{}{}{}",
        wx.account("shop", ""),
        Wx::target("bot", &bot.url("/wx"), ""),
        Wx::target("crm", &crm.url("/crm"), ""),
    ))
    .await;
    let all = proxy.admin(reqwest::Method::POST, "/targets/probe").await;
    assert_eq!(all.status, 200, "{all:?}");
    let report: Value = serde_json::from_slice(&all.body).unwrap();
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["targets"][0]["outcome"], "ok", "{report}");
    assert_eq!(report["targets"][1]["outcome"], "rejected", "{report}");
    assert_eq!(report["targets"][1]["status"], 404, "{report}");

    let one = proxy
        .admin(
            reqwest::Method::POST,
            "/targets/probe?account=shop&target=bot",
        )
        .await;
    let report: Value = serde_json::from_slice(&one.body).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["targets"].as_array().unwrap().len(), 1);

    let unknown = proxy
        .admin(reqwest::Method::POST, "/targets/probe?account=nope")
        .await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert_eq!(bot.count(), 2, "GETs only: {:?}", bot.received());
    assert!(bot.received().iter().all(|r| r.method == "GET"));
}
