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

mod charts;
mod history;

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

/// The dead letters view, and its first letter opened.
async fn open_first_dead_letter(browser: &Browser) {
    browser.click("#tabs button[data-view=dead]").await;
    browser
        .wait_for(
            "the dead letter listed",
            "return document.querySelector('#dead-table tr[data-letter]');",
        )
        .await;
    browser.click("#dead-table .open-letter").await;
}

async fn wait_live(browser: &Browser) {
    browser
        .wait_for(
            "the live view with its stream connected",
            "return !document.querySelector('#view-live').hidden \
             && document.querySelector('#stream-status').classList.contains('live');",
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
    // Limited to the test's sender: the targets view counts it, and shows no openid.
    let audit_table = Wx::target(
        "audit",
        &audit.url("/audit"),
        &format!("users = [\"{OPENID}\"]"),
    );
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
    // Issue 30: as configured, the sender it is limited to counted and hashed, never in clear.
    let users = browser
        .wait_for(
            "the audit target's users filter",
            "return document.querySelector('#config-table tr[data-target=audit] [data-filter=users]')?.textContent;",
        )
        .await;
    let users = users.as_str().unwrap_or_default();
    assert!(
        users.starts_with("users: 1 user; ") && users.contains("h:"),
        "{users}"
    );
    assert!(!browser.page_text().await.contains(OPENID));
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

    open_first_dead_letter(&browser).await;
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
    for path in ["/callbacks", "/callbacks/1", "/console/routes"] {
        assert_eq!(get(path, None).await, 401, "{path}");
    }
    assert_eq!(get("/dead-letters", Some(TOKEN)).await, 200);
    assert_eq!(get("/callbacks", Some(TOKEN)).await, 200);
    assert_eq!(get("/console/targets", Some(TOKEN)).await, 200);
    assert_eq!(get("/console/routes", Some(TOKEN)).await, 200);

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

/// Issue 30, in Chinese: a browser that asks for `zh-CN` gets the console in Chinese; the
/// targets view shows each target as configured (URL without its password or query values,
/// filters, pace, shadow) and the account's routing table, an owner per route; with
/// `admin.show_content` a message reads as fields with its XML one click away, in the live view
/// and in a dead letter; at 420 px wide the page never scrolls sideways and the dead letter and
/// the live rows stay readable; English picked on the page is remembered after a reload.
#[tokio::test(flavor = "multi_thread")]
async fn a_chinese_browser_gets_a_chinese_dashboard_that_reads_messages_and_fits_a_phone() {
    let ok = Target::start(200).await;
    let failing = Target::start(500).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let secret_url = format!(
        "{}?key=s3cret-key",
        ok.url("/bot").replace("http://", "http://bot:pa55word@")
    );
    let targets = [
        Wx::target("bot", &secret_url, "replies_to = [\"*\"]"),
        Wx::target(
            "menu",
            &ok.url("/menu"),
            "msg_types = [\"event\"]\nevents = [\"CLICK\"]\nreplies_to = [\"event:CLICK\"]",
        ),
        Wx::target(
            "tester",
            &ok.url("/tester"),
            &format!("users = [\"{OPENID}\"]\nreplies_to = [\"text\"]"),
        ),
        Wx::target(
            "crm",
            &failing.url("/crm"),
            "msg_types = [\"text\"]\nrate_limit_per_sec = 5\nmax_attempts = 1",
        ),
        Wx::target("candidate", &ok.url("/candidate"), "shadow_of = \"bot\""),
    ]
    .concat();
    let proxy = Proxy::start_with_admin(&format!(
        "{FAST}[admin]\ntoken = \"{TOKEN}\"\nshow_content = true\n{}{targets}",
        wx.account("main", ""),
    ))
    .await;
    let browser = Browser::start_in("zh-CN").await;
    sign_in(&browser, &proxy, TOKEN).await;
    wait_live(&browser).await;
    let words = browser
        .run(
            "return [document.documentElement.lang, \
             ...[...document.querySelectorAll('#tabs button')].map((b) => b.textContent), \
             document.querySelector('#stream-status').textContent];",
            json!([]),
        )
        .await;
    assert_eq!(
        words,
        json!(["zh-CN", "实时", "图表", "目标", "死信", "已连接"])
    );

    // A message as fields, its XML one click away.
    // The tester's target owns the reply: WeChat gets its (empty) answer.
    let answer = proxy
        .post("main", &wx.seal(&text_xml("看得懂的消息")))
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let fields = browser
        .wait_for(
            "the message's fields",
            "const row = document.querySelector('#live-table tbody tr.callback'); \
             const content = row?.querySelector('dd[data-field=Content]'); \
             return content && [content.textContent, row.querySelector('dt[data-field=Content]').textContent, \
                    row.querySelector('dd[data-field=FromUserName]').textContent, \
                    row.querySelector('dd[data-field=MsgType]').textContent, row.querySelector('details.raw').open];",
        )
        .await;
    assert_eq!(
        fields,
        json!(["看得懂的消息", "内容", OPENID, "text", false])
    );
    browser
        .click("#live-table tbody tr.callback details.raw summary")
        .await;
    let raw = browser
        .wait_for(
            "the message's XML",
            "const pre = document.querySelector('#live-table tbody tr.callback details.raw pre'); \
             return pre.offsetHeight > 0 && pre.textContent;",
        )
        .await;
    assert!(
        raw.as_str()
            .unwrap_or_default()
            .contains("<Content><![CDATA[看得懂的消息]]></Content>"),
        "{raw}"
    );
    browser.screenshot("zh-live-message").await;

    // The targets as configured, and who answers WeChat for which route.
    browser.click("#tabs button[data-view=targets]").await;
    let shown = browser
        .wait_for(
            "the targets as configured",
            "const cfg = (t, sel) => document.querySelector(`#config-table tr[data-target=${t}] ${sel}`)?.textContent; \
             const owner = (r) => document.querySelector(`#routes-table tr[data-route='${r}'] .owner`)?.textContent; \
             const rows = document.querySelectorAll('#routes-table tr[data-route]').length; \
             return rows === 3 && [cfg('bot', '.url'), cfg('menu', '[data-filter=msg_types]'), cfg('menu', '[data-filter=events]'), \
                    cfg('tester', '[data-filter=users]'), cfg('menu', '.replies'), cfg('tester', '.replies'), cfg('crm', '.also'), \
                    cfg('candidate', '.also'), owner('event:click'), owner('text'), owner('*')];",
        )
        .await;
    let bot_url = secret_url
        .replace("pa55word", "<redacted>")
        .replace("s3cret-key", "<redacted>");
    assert_eq!(
        shown,
        json!([
            bot_url,
            "msg_types: event",
            "events: click",
            format!("users: 1 个用户: {OPENID}"),
            "event:click",
            "text（仅限所列用户）",
            "每秒最多投递 5 次",
            "bot 的影子目标：其应答只用于比较，不会发给微信",
            "menu",
            "tester",
            "bot"
        ])
    );
    let text = browser.page_text().await;
    assert!(
        !text.contains("pa55word") && !text.contains("s3cret"),
        "{text}"
    );
    assert!(
        text.contains("路由：由谁回复微信") && text.contains("放弃时限"),
        "{text}"
    );
    browser.screenshot("zh-targets").await;

    // The dead letter reads as a message too; the request is one click away.
    open_first_dead_letter(&browser).await;
    let letter = browser
        .wait_for(
            "the dead letter's message",
            "const m = document.querySelector('#letter-message'); \
             return !document.querySelector('#letter').hidden && !m.hidden \
                && [m.querySelector('dd[data-field=Content]').textContent, document.querySelector('#letter-raw').open];",
        )
        .await;
    assert_eq!(letter, json!(["看得懂的消息", false]));

    // A phone: nothing scrolls sideways; the letter and the live rows stay readable.
    browser.set_window_size(420, 900).await;
    let fits = "const page = document.documentElement; \
                return window.innerWidth <= 420 && page.scrollWidth <= page.clientWidth;";
    browser
        .wait_for("the narrow dead letter without sideways scrolling", fits)
        .await;
    let letter_box = browser
        .run(
            "const r = document.querySelector('#letter').getBoundingClientRect(); \
             return [r.left >= 0, r.right <= window.innerWidth, r.width > 300];",
            json!([]),
        )
        .await;
    assert_eq!(letter_box, json!([true, true, true]));
    browser.screenshot("zh-dead-letter-narrow").await;
    browser.click("#tabs button[data-view=live]").await;
    browser
        .wait_for("the narrow live view without sideways scrolling", fits)
        .await;
    let card = browser
        .run(
            "const row = document.querySelector('#live-table tbody tr.callback'); \
             const r = row.getBoundingClientRect(); \
             const content = row.querySelector('dd[data-field=Content]').getBoundingClientRect(); \
             return [getComputedStyle(document.querySelector('#live-table thead')).display, \
                     r.right <= window.innerWidth, content.right <= window.innerWidth, content.width > 0];",
            json!([]),
        )
        .await;
    assert_eq!(card, json!(["none", true, true, true]));
    browser.screenshot("zh-live-narrow").await;

    // English, picked on the page, is kept after a reload though the browser asks for Chinese.
    browser.set_window_size(1400, 900).await;
    browser
        .run(
            "const s = document.querySelector('#lang'); s.value = 'en'; s.dispatchEvent(new Event('change'));",
            json!([]),
        )
        .await;
    let english = "return document.documentElement.lang === 'en' \
                   && document.querySelector('#tabs button[data-view=targets]').textContent === 'Targets' \
                   && document.querySelector('#live-table dd[data-field=Content]') !== null \
                   && document.querySelector('#live-table td[data-label=\"col.answer\"]').dataset.caption === 'Answer';";
    browser.wait_for("the page in English", english).await;
    browser.goto(&format!("{}/", proxy.admin_url())).await;
    wait_live(&browser).await;
    let after = browser
        .run(
            "return [document.documentElement.lang, document.querySelector('#lang').value, \
             document.querySelector('#tabs button[data-view=dead]').textContent];",
            json!([]),
        )
        .await;
    assert_eq!(after, json!(["en", "en", "Dead letters"]));
    browser.quit().await;
}
