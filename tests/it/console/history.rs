//! The console backed by the store (issue 30, point 1): callbacks sent before the page opened
//! are listed when it opens and after a reload, in the live view (each target's state) and in
//! the table below it, and a search by MsgId or by the sender's openid finds them, with the
//! callback's detail a click away; the openid is never on the page.

use serde_json::json;
use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use super::{OPENID, TOKEN, config, sign_in, wait_live};
use crate::support::browser::Browser;
use crate::support::{Proxy, Target, Wx, text_from, text_xml};

/// Rows of the stored callbacks' table.
const ROWS: &str = "return document.querySelectorAll('#history-table tbody tr').length;";

/// Rows of the live table listed from the store.
const STORED_ROWS: &str = "return document.querySelectorAll('#live-table tbody tr.stored').length;";

/// The MsgId of a test message.
fn msg_id(xml: &str) -> String {
    let start = xml.find("<MsgId>").expect("a MsgId") + "<MsgId>".len();
    let end = xml[start..].find("</MsgId>").expect("a closed MsgId") + start;
    xml[start..end].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn history_is_there_after_a_reload_and_a_search_by_msg_id_finds_an_earlier_callback() {
    let target = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let proxy = Proxy::start_with_admin(&config(&wx, &target, "", "")).await;
    // Sent before the page opens: the live stream never saw them.
    let first = text_xml("the first, searched by its MsgId");
    proxy.post("main", &wx.seal(&first)).await.assert_success();
    for n in 0..2 {
        let other = text_from("oSomebodyElse0000000000000000", &format!("other {n}"));
        proxy.post("main", &wx.seal(&other)).await.assert_success();
    }
    target.wait_for(3).await;

    let browser = Browser::start().await;
    sign_in(&browser, &proxy, TOKEN).await;
    wait_live(&browser).await;
    let three = ROWS.replace(".length;", ".length === 3;");
    browser.wait_for("the stored callbacks", &three).await;
    // A reload keeps the session and lists them again.
    browser.goto(&format!("{}/", proxy.admin_url())).await;
    wait_live(&browser).await;
    browser
        .wait_for("the stored callbacks after a reload", &three)
        .await;
    let routed = browser
        .run(
            "return document.querySelector('#history-table tbody tr td[data-label=\"h.routed\"]').textContent;",
            json!([]),
        )
        .await;
    assert_eq!(routed, json!("crm"));

    let wanted = msg_id(&first);
    browser.type_into("#history-msgid", &wanted).await;
    browser.click("#history-search").await;
    let found = browser
        .wait_for(
            "the search by MsgId",
            "const rows = document.querySelectorAll('#history-table tbody tr'); \
             return rows.length === 1 && rows[0].querySelector('td[data-label=\"col.msgid\"]').textContent;",
        )
        .await;
    assert_eq!(found, json!(wanted));
    browser.click("#history-table .open-callback").await;
    browser
        .wait_for(
            "the callback's detail",
            "return !document.querySelector('#stored').hidden \
             && document.querySelector('#stored-jobs tbody').textContent;",
        )
        .await;
    browser.screenshot("history-search").await;

    // By the sender: its openid typed, matched against the stored hash.
    browser.click("#history-reset").await;
    browser.wait_for("everything again", &three).await;
    browser.type_into("#history-user", OPENID).await;
    browser.click("#history-search").await;
    browser
        .wait_for(
            "the search by user",
            &ROWS.replace(".length;", ".length === 1;"),
        )
        .await;
    let text = browser.page_text().await;
    assert!(!text.contains(OPENID), "the openid is on the page: {text}");
    browser.quit().await;
}

/// The live view's stored rows: MsgId, the crm pill's state, the answer cell, newest first.
const LIVE_STORED: &str = "return [...document.querySelectorAll('#live-table tbody tr.stored')].map((tr) => [\
     tr.querySelector('td[data-label=\"col.msgid\"]').textContent, \
     tr.querySelector('.job[data-target=crm]')?.dataset.state ?? null, \
     tr.querySelector('td[data-label=\"col.answer\"]').textContent]);";

/// Callbacks sent before the page opens are rows of the live table, newest first, at sign-in
/// and after a reload, each with its target's pill (delivered) and a
/// "stored" marker that opens the callback's detail; one sent afterwards comes from the stream,
/// once; the words are in both languages, and a phone shows the rows as cards.
#[tokio::test(flavor = "multi_thread")]
async fn the_live_view_opens_with_the_stored_callbacks_after_a_reload_and_adds_new_ones_once() {
    let target = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let proxy = Proxy::start_with_admin(&config(&wx, &target, "", "")).await;
    let before: Vec<String> = (0..3)
        .map(|n| text_xml(&format!("before the page {n}")))
        .collect();
    for xml in &before {
        proxy.post("main", &wx.seal(xml)).await.assert_success();
    }
    target.wait_for(3).await;
    let newest_first: Vec<String> = before.iter().rev().map(|x| msg_id(x)).collect();

    let browser = Browser::start().await;
    sign_in(&browser, &proxy, TOKEN).await;
    wait_live(&browser).await;
    for when in ["at sign-in", "after a reload"] {
        if when == "after a reload" {
            browser.goto(&format!("{}/", proxy.admin_url())).await;
            wait_live(&browser).await;
        }
        let rows = browser
            .wait_for(
                &format!("the stored callbacks in the live view {when}"),
                &STORED_ROWS.replace(".length;", ".length === 3;"),
            )
            .await;
        assert_eq!(rows, json!(true));
        let shown = browser.run(LIVE_STORED, json!([])).await;
        let shown = shown.as_array().cloned().unwrap_or_default();
        let ids: Vec<&str> = shown.iter().filter_map(|r| r[0].as_str()).collect();
        assert_eq!(ids, newest_first, "{when}: {shown:?}");
        for row in &shown {
            assert_eq!(row[2], json!("stored"), "{when}: {row}");
            assert_eq!(row[1], json!("delivered"), "{when}: {row}");
        }
        let waiting = browser
            .run(
                "return document.querySelector('#live-empty').hidden;",
                json!([]),
            )
            .await;
        assert_eq!(
            waiting,
            json!(true),
            "{when}: 'waiting for callbacks' shown"
        );
    }
    browser.screenshot("live-after-reload").await;

    // The marker opens the stored callback's detail.
    browser
        .click("#live-table tbody tr.stored .open-stored")
        .await;
    let opened = browser
        .wait_for(
            "the stored callback's detail",
            "return !document.querySelector('#stored').hidden \
             && document.querySelector('#stored-id').textContent;",
        )
        .await;
    let first = browser
        .run(
            "return document.querySelector('#live-table tbody tr.stored').dataset.callback;",
            json!([]),
        )
        .await;
    assert_eq!(opened, first);

    // Sent now: from the stream, once, on top, delivered.
    let after = text_xml("after the page opened");
    proxy.post("main", &wx.seal(&after)).await.assert_success();
    let wanted = msg_id(&after);
    let check = format!(
        "const rows = [...document.querySelectorAll('#live-table tbody tr')]; \
         const mine = rows.filter((tr) => tr.querySelector('td[data-label=\"col.msgid\"]').textContent === '{wanted}'); \
         return mine.length === 1 && rows[0] === mine[0] \
            && mine[0].querySelector('.job[data-target=crm]').dataset.state === 'delivered' \
            && [rows.length, mine[0].className];"
    );
    let row = browser.wait_for("the new callback's row", &check).await;
    assert_eq!(row, json!([4, "callback"]));
    // Still once when the stored rows are listed again (the session starting over does so).
    let again = browser
        .run(
            "return openHistory().then(() => document.querySelectorAll('#live-table tbody tr').length);",
            json!([]),
        )
        .await;
    assert_eq!(again, json!(4));

    // Every word in both languages; the stored rows in Chinese.
    let missing = browser
        .run(
            "const [en, zh] = [Object.keys(WORDS.en), Object.keys(WORDS['zh-CN'])]; \
             return [en.filter((k) => !zh.includes(k)), zh.filter((k) => !en.includes(k))];",
            json!([]),
        )
        .await;
    assert_eq!(missing, json!([[], []]));
    browser
        .run(
            "const s = document.querySelector('#lang'); s.value = 'zh-CN'; s.dispatchEvent(new Event('change'));",
            json!([]),
        )
        .await;
    let zh = browser
        .run(
            "const tr = document.querySelector('#live-table tbody tr.stored'); \
             return [tr.querySelector('.open-stored').textContent, tr.querySelector('.job').textContent];",
            json!([]),
        )
        .await;
    assert_eq!(zh, json!(["已存储", "crm: 已投递"]));

    // A phone: the stored rows are cards, captioned, and nothing scrolls sideways.
    browser.set_window_size(420, 900).await;
    let card = browser
        .wait_for(
            "the narrow live view",
            "const page = document.documentElement; \
             const tr = document.querySelector('#live-table tbody tr.stored'); \
             const r = tr.getBoundingClientRect(); \
             return window.innerWidth <= 420 && page.scrollWidth <= page.clientWidth \
                && [r.right <= window.innerWidth, tr.querySelector('td[data-label=\"col.answer\"]').dataset.caption];",
        )
        .await;
    assert_eq!(card, json!([true, "给微信的应答"]));
    browser.screenshot("live-stored-narrow").await;
    browser.quit().await;
}

/// A stored callback still failing for a target shows it retrying; the stream's next attempt
/// turns the same pill delivered. An entry from a store that names only the targets
/// (`routed`, no `targets`) gets neutral pills.
#[tokio::test(flavor = "multi_thread")]
async fn a_stored_rows_failing_target_turns_delivered_from_the_stream() {
    let ok = Target::start(200).await;
    let failing = Target::start(500).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    // Retried every 3 s: the page opens between two attempts, whenever it does.
    let slow = Wx::target(
        "slow",
        &failing.url("/slow"),
        "max_attempts = 20\nbackoff_initial_ms = 3000\nbackoff_max_ms = 3000",
    );
    let proxy = Proxy::start_with_admin(&config(&wx, &ok, &slow, "")).await;
    proxy
        .post("main", &wx.seal(&text_xml("failing for slow")))
        .await
        .assert_success();
    failing.wait_for(1).await;
    ok.wait_for(1).await;

    let browser = Browser::start().await;
    sign_in(&browser, &proxy, TOKEN).await;
    wait_live(&browser).await;
    let pill = "return document.querySelector('#live-table tbody tr.stored .job[data-target=slow]')?.dataset.state ?? null;";
    let stored = browser
        .wait_for(
            "the stored row's pills",
            "const tr = document.querySelector('#live-table tbody tr.stored'); \
             return tr && [...tr.querySelectorAll('.job')].map((j) => [j.dataset.target, j.dataset.state, Boolean(j.dataset.job)]);",
        )
        .await;
    assert_eq!(
        stored,
        json!([["slow", "retrying", true], ["crm", "delivered", false]])
    );
    failing.set_status(200);
    browser
        .wait_for(
            "the slow pill delivered by the stream",
            &pill.replace("?? null", "=== 'delivered'"),
        )
        .await;
    let rows = browser
        .run(
            "return document.querySelectorAll('#live-table tbody tr').length;",
            json!([]),
        )
        .await;
    assert_eq!(rows, json!(1));

    // A store that lists only where a callback was queued.
    let old = browser
        .run(
            "addStoredRow({ id: 900000001, account: 'main', received_at_ms: 1, msg_type: 'text', event: null, msg_id: null, routed: ['crm'] }); \
             const tr = document.querySelector('#live-table tbody tr[data-callback=\"900000001\"]'); \
             const job = tr.querySelector('.job'); \
             return [document.querySelector('#live-table tbody').lastElementChild === tr, job.dataset.state, job.textContent];",
            json!([]),
        )
        .await;
    assert_eq!(old, json!([true, "unknown", "crm: queued"]));
    browser.screenshot("live-stored-states").await;
    browser.quit().await;
}
