//! The console backed by the store (issue 30, point 1): callbacks sent before the page opened
//! are listed when it opens and after a reload, and a search by MsgId or by the sender's openid
//! finds them, with the callback's detail a click away; the openid is never on the page.

use serde_json::json;
use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use super::{OPENID, TOKEN, config, sign_in, wait_live};
use crate::support::browser::Browser;
use crate::support::{Proxy, Target, Wx, text_from, text_xml};

/// Rows of the stored callbacks' table.
const ROWS: &str = "return document.querySelectorAll('#history-table tbody tr').length;";

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
