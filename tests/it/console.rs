//! The live console (issue 11) in a real browser: headless Chromium, driven as an operator
//! would use it: sign in, watch callbacks arrive and their deliveries fail, retry, die, replay a
//! dead letter once the target is back, and keep watching across a restart of the proxy.
//!
//! Each view is saved as a PNG under `{CARGO_TARGET_TMPDIR}/console/` (target/tmp/console/).

use std::time::{Duration, Instant};

use serde_json::json;
use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use crate::support::browser::Browser;
use crate::support::{FAST, Proxy, Target, Wx, client, settle, text_xml};

const TOKEN: &str = "console-test-token-0123456789";
/// The sender of every test message: it must never be on screen unless content is shown.
const OPENID: &str = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";

/// The state of the `crm` cell of the newest callback row, or null.
const CRM_STATE: &str = "return document.querySelector('#live-table tbody tr.callback .job[data-target=crm]')?.dataset.state ?? null;";

/// `main` with a target `crm` at `target`, then `more` (other targets), and `admin` keys.
fn config(wx: &Wx, target: &Target, more: &str, admin: &str) -> String {
    format!(
        "{FAST}[admin]\ntoken = \"{TOKEN}\"\n{admin}\n{}{more}{}",
        wx.account("main", ""),
        Wx::target(
            "crm",
            &target.url("/crm"),
            // Long enough between the two attempts to see the cell say "retrying".
            "max_attempts = 2\nbackoff_initial_ms = 1500\nbackoff_max_ms = 1500"
        ),
    )
}

async fn sign_in(browser: &Browser, proxy: &Proxy, token: &str) {
    browser.goto(&format!("{}/", proxy.admin_url())).await;
    browser
        .wait_for(
            "the login form",
            "return !document.querySelector('#login').hidden;",
        )
        .await;
    browser.type_into("#token", token).await;
    browser.click("#login-button").await;
}

async fn wait_live(browser: &Browser) {
    browser
        .wait_for(
            "the live view with its stream connected",
            "return !document.querySelector('#view-live').hidden \
             && document.querySelector('#stream-status').textContent === 'live';",
        )
        .await;
}

/// A target that answers 500 turns the callback's cell from pending to retrying (attempt 1, the
/// next time shown) to dead; the targets view counts the dead job and shows the last error; the
/// dead letter, opened in full, hides the openid and the message; once the target answers 200
/// again, the letter's Replay button turns the same cell delivered, without a reload.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_target_goes_retrying_then_dead_and_its_replay_turns_delivered() {
    let target = Target::start(500).await;
    let audit = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let audit_table = Wx::target("audit", &audit.url("/audit"), "");
    let proxy = Proxy::start_with_admin(&config(&wx, &target, &audit_table, "")).await;
    let browser = Browser::start().await;

    browser.goto(&format!("{}/", proxy.admin_url())).await;
    browser
        .wait_for(
            "the login form",
            "return !document.querySelector('#login').hidden;",
        )
        .await;
    browser.screenshot("login").await;
    sign_in(&browser, &proxy, TOKEN).await;
    wait_live(&browser).await;

    let sealed = wx.seal(&text_xml("secret words for the console"));
    proxy.post("main", &sealed).await.assert_success();
    let sent = Instant::now();
    browser
        .wait_for(
            "the callback's row",
            "return document.querySelector('#live-table tbody tr.callback');",
        )
        .await;
    let shown_after = sent.elapsed();
    assert!(
        shown_after < Duration::from_secs(1),
        "the callback appeared {shown_after:?} after its answer"
    );
    browser
        .wait_for(
            "the crm cell retrying",
            &CRM_STATE.replace("?? null", "=== 'retrying'"),
        )
        .await;
    let cell = browser
        .run(
            "return document.querySelector('.job[data-target=crm]').textContent;",
            json!([]),
        )
        .await;
    assert!(
        cell.as_str().is_some_and(|c| c.contains("attempt 1, next")),
        "{cell}"
    );
    browser.screenshot("live-retrying").await;
    browser
        .wait_for(
            "the crm cell dead",
            &CRM_STATE.replace("?? null", "=== 'dead'"),
        )
        .await;
    // A forged callback shows as rejected, with its reason.
    let forged = proxy
        .post_raw(
            "main",
            "signature=0000&timestamp=1&nonce=2&openid=x",
            "text/xml",
            "<xml/>",
        )
        .await;
    assert_eq!(forged.status, 401, "{forged:?}");
    browser
        .wait_for(
            "the rejected row",
            "return document.querySelector('#live-table tbody tr.rejected')?.textContent.includes('rejected: ');",
        )
        .await;
    let text = browser.page_text().await;
    assert!(text.contains("text") && text.contains("success"), "{text}");
    assert!(text.contains("audit: delivered 200"), "{text}");
    browser.screenshot("live-dead").await;
    assert!(!text.contains(OPENID), "the openid is on screen: {text}");
    assert!(
        !text.contains("secret words"),
        "the message is on screen: {text}"
    );

    browser.click("#tabs button[data-view=targets]").await;
    browser
        .wait_for(
            "the targets view counting the dead job",
            "const row = document.querySelector('#targets-table tr[data-target=crm]'); \
             return row && row.querySelector('.dead').textContent === '1' && row.textContent.includes('target answered 500');",
        )
        .await;
    // Issue 25: how long the target's deliveries are retried (2 attempts, 1.5 s apart at most:
    // 750 ms at the earliest), nothing waiting any more, and which instance serves the page.
    let cells = browser
        .run(
            "const row = document.querySelector('#targets-table tr[data-target=crm]'); \
             return [row.querySelector('.window').textContent, row.querySelector('.oldest').textContent, \
                     document.querySelector('#instance').textContent];",
            json!([]),
        )
        .await;
    assert_eq!(cells[0], "750 ms (2 attempts)", "{cells}");
    assert_eq!(cells[1], "-", "{cells}");
    // The default name: the host's.
    let name = wechat_fanout::config::Config::load(None)
        .unwrap()
        .server
        .instance_name();
    assert_eq!(cells[2], format!("instance {name}"), "{cells}");
    browser.screenshot("targets").await;
    // Issue 29: a target's Backfill button, confirmed, queues what it never had: the audit
    // target had the callback, so nothing (the SIGHUP case is in operate::backfill).
    browser
        .click("#targets-table tr[data-target=audit] button.backfill")
        .await;
    browser.click("#confirm-yes").await;
    let said = browser
        .wait_for(
            "the backfill's result",
            "const p = document.querySelector('#backfill-result'); return !p.hidden && p.textContent;",
        )
        .await;
    assert_eq!(
        said.as_str().unwrap_or_default(),
        "Backfill of main/audit: queued 0; skipped 1 already queued, 0 not for it by its filters.",
        "{said}"
    );

    browser.click("#tabs button[data-view=dead]").await;
    browser
        .wait_for(
            "the dead letter listed",
            "return document.querySelector('#dead-table tr[data-letter]');",
        )
        .await;
    browser.click("#dead-table .open-letter").await;
    let request = browser
        .wait_for(
            "the dead letter in full",
            "return !document.querySelector('#letter').hidden && document.querySelector('#letter-request').textContent;",
        )
        .await;
    let request = request.as_str().unwrap_or_default().to_owned();
    assert!(request.contains("content hidden"), "{request}");
    assert!(request.contains("openid=%28hidden%29"), "{request}");
    assert!(
        !request.contains(OPENID) && !request.contains("secret words"),
        "{request}"
    );
    assert!(browser.page_text().await.contains("target answered 500"));
    browser.screenshot("dead-letter").await;

    target.set_status(200);
    browser.click("#letter-replay").await;
    browser
        .wait_for(
            "the replay's result",
            "return document.querySelector('#dead-result').textContent.startsWith('Replayed 1');",
        )
        .await;
    browser.click("#tabs button[data-view=live]").await;
    browser
        .wait_for(
            "the crm cell delivered",
            &CRM_STATE.replace("?? null", "=== 'delivered'"),
        )
        .await;
    browser.screenshot("live-delivered").await;
    target.wait_for(3).await;
    settle().await;
    let received = target.received();
    assert_eq!(received.len(), 3, "two failed attempts and the replay");
    assert!(received.iter().all(|r| r.body == sealed.body.as_bytes()));
    browser.quit().await;
}

/// A wrong token gets 401 and nothing else: the page stays on the login form, a callback sent
/// meanwhile is not shown, and the API, the stream and the targets answer 401 to the page.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_gets_401_and_no_data() {
    let target = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let proxy = Proxy::start_with_admin(&config(&wx, &target, "", "")).await;
    let browser = Browser::start().await;

    sign_in(&browser, &proxy, "console-test-token-012345678X").await;
    browser
        .wait_for(
            "the login error",
            "return document.querySelector('#login-error').textContent.includes('401');",
        )
        .await;
    proxy
        .post("main", &wx.seal(&text_xml("not for strangers")))
        .await
        .assert_success();
    target.wait_for(1).await;
    settle().await;
    browser.screenshot("wrong-token").await;
    let rows = browser
        .run(
            "return document.querySelectorAll('#live-table tbody tr').length;",
            json!([]),
        )
        .await;
    assert_eq!(rows, json!(0));
    let text = browser.page_text().await;
    assert!(!text.contains("crm") && !text.contains("Live"), "{text}");
    for path in [
        "/dead-letters",
        "/console/events",
        "/console/targets",
        "/console/session",
    ] {
        let answer = browser
            .run(
                "const x = new XMLHttpRequest(); x.open('GET', arguments[0], false); x.send(); \
                 return [x.status, x.responseText];",
                json!([path]),
            )
            .await;
        assert_eq!(answer[0], json!(401), "{path}: {answer}");
        assert!(
            !answer[1].as_str().unwrap_or_default().contains("crm"),
            "{path}: {answer}"
        );
    }
    browser.quit().await;
}

/// The stream reconnects by itself after the proxy restarts (the session survives it), and a
/// callback sent afterwards appears on the same page, without a reload. With
/// `admin.show_content`, the decrypted message of a safe-mode account and its sender are shown.
#[tokio::test(flavor = "multi_thread")]
async fn the_stream_reconnects_after_the_proxy_restarts() {
    let target = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let mut proxy = Proxy::start_with_admin(&config(&wx, &target, "", "show_content = true")).await;
    let browser = Browser::start().await;
    sign_in(&browser, &proxy, TOKEN).await;
    wait_live(&browser).await;

    proxy
        .post("main", &wx.seal(&text_xml("before the restart")))
        .await
        .assert_success();
    browser
        .wait_for(
            "the first callback delivered",
            &CRM_STATE.replace("?? null", "=== 'delivered'"),
        )
        .await;
    // Marks this page: a reload would lose it.
    browser.run("window.sameLoad = 42;", json!([])).await;

    proxy.restart().await;
    proxy
        .post("main", &wx.seal(&text_xml("after the restart")))
        .await
        .assert_success();
    // The callback above was sent before the stream could reconnect; only this one can show
    // that it did.
    wait_live(&browser).await;
    proxy
        .post("main", &wx.seal(&text_xml("seen live again")))
        .await
        .assert_success();
    browser
        .wait_for(
            "the callback sent after the reconnect",
            "return document.querySelector('#live-table').textContent.includes('seen live again');",
        )
        .await;
    assert_eq!(
        browser.run("return window.sameLoad;", json!([])).await,
        json!(42)
    );
    let text = browser.page_text().await;
    assert!(text.contains("before the restart"), "{text}");
    assert!(
        text.contains(OPENID),
        "show_content shows the sender: {text}"
    );
    browser.screenshot("live-after-restart").await;
    browser.quit().await;
}

/// The status of `GET base+path`, with `token` as a bearer token if given.
async fn status_of(base: &str, path: &str, token: Option<&str>) -> u16 {
    let mut request = client().get(format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the admin API answers");
    response.status().as_u16()
}

/// With `admin.token`, scripts and the CLI need it: health and readiness stay open, metrics
/// too unless `admin.protect_metrics`; the CLI sends the config's token by default, and a wrong
/// `--admin-token` says 401 and how to give the right one.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_asks_scripts_and_the_cli_for_the_token() {
    let target = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let proxy = Proxy::start_with_admin(&config(&wx, &target, "", "")).await;
    let base = proxy.admin_url();
    let get = |path: &'static str, token: Option<&'static str>| status_of(&base, path, token);
    for path in ["/healthz", "/readyz", "/metrics", "/", "/console.js"] {
        assert_eq!(get(path, None).await, 200, "{path}");
    }
    for path in [
        "/dead-letters",
        "/console/targets",
        "/console/session",
        "/console/events",
    ] {
        assert_eq!(get(path, None).await, 401, "{path}");
        assert_eq!(
            get(path, Some("not-the-token-at-all-000")).await,
            401,
            "{path}"
        );
    }
    // A wrong token more would be one guess too many (429): the callbacks are asked without.
    for path in ["/callbacks", "/callbacks/1"] {
        assert_eq!(get(path, None).await, 401, "{path}");
    }
    assert_eq!(get("/dead-letters", Some(TOKEN)).await, 200);
    assert_eq!(get("/callbacks", Some(TOKEN)).await, 200);
    assert_eq!(get("/console/targets", Some(TOKEN)).await, 200);

    let dir = tempfile::tempdir().unwrap();
    let path = proxy.write_config(dir.path());
    let path = path.to_string_lossy();
    let listed =
        crate::support::binary::run_async(&["--config", &path, "dead-letters", "list"]).await;
    assert!(listed.ok().contains("0 dead letters"), "{listed:?}");
    let refused = crate::support::binary::run_async(&[
        "--config",
        &path,
        "--admin-token",
        "not-the-token-at-all-000",
        "dead-letters",
        "list",
    ])
    .await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("401") && refused.stderr.contains("--admin-token"),
        "{refused:?}"
    );
    drop(proxy);

    let protected =
        Proxy::start_with_admin(&config(&wx, &target, "", "protect_metrics = true")).await;
    let base = protected.admin_url();
    assert_eq!(status_of(&base, "/metrics", None).await, 401);
    assert_eq!(status_of(&base, "/metrics", Some(TOKEN)).await, 200);
}

/// An open platform's callback about an authorizer (`/wechat/{id}/{appid}`: stored with the
/// authorizer in front of WeChat's query) opens in the console's dead letter like any other:
/// with `admin.show_content`, its decrypted message is shown.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_opens_an_authorizers_dead_letter() {
    let target = Target::start(400).await;
    let wx = Wx::new(Kind::OpenPlatform, Mode::Safe);
    let proxy = Proxy::start_with_admin(&format!(
        "{FAST}[admin]\ntoken = \"{TOKEN}\"\nshow_content = true\n{}{}",
        wx.account("op", ""),
        Wx::target("svc", &target.url("/svc"), "max_attempts = 1"),
    ))
    .await;
    let sealed = wx.seal(&text_xml("opened for the console"));
    proxy
        .post("op/wxaaaaaaaaaaaaaaa1", &sealed)
        .await
        .assert_success();
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client");
    let get = |path: String| {
        let request = client
            .get(format!("{}{path}", proxy.admin_url()))
            .bearer_auth(TOKEN);
        async move {
            let response = request.send().await.expect("the admin API answers");
            assert_eq!(response.status().as_u16(), 200, "{path}");
            let body = response.bytes().await.expect("an answer");
            serde_json::from_slice::<serde_json::Value>(&body).expect("JSON")
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let letters = get("/dead-letters".to_owned()).await;
        if let Some(id) = letters[0]["id"].as_i64() {
            break id;
        }
        assert!(Instant::now() < deadline, "no dead letter: {letters}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let letter = get(format!("/console/dead-letters/{id}")).await;
    let decrypted = letter["request"]["decrypted"].as_str().unwrap_or_default();
    assert!(decrypted.contains("opened for the console"), "{letter}");
    // Shown as it is delivered: WeChat's query, and the authorizer in its header.
    let request = &letter["request"];
    assert_eq!(request["query"], sealed.query.as_str(), "{letter}");
    let headers = request["headers"].as_array().cloned().unwrap_or_default();
    assert!(
        headers.contains(&serde_json::json!([
            "x-wechat-fanout-authorizer",
            "wxaaaaaaaaaaaaaaa1"
        ])),
        "{letter}"
    );
}
