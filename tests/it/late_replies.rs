//! Late replies rescued (`late_replies = "customer_service"`): a slow bot's answer, which WeChat
//! never got (it got `success` at the deadline), reaches the user through the customer-service
//! API of a fake WeChat API server, converted, once each, retried on 5xx, -1 and an expired
//! token, and a dead letter with WeChat's errcode when the 48-hour window is closed.

use std::time::Duration;

use serde_json::json;
use wechat_fanout::config::Mode;
use wechat_fanout::store::JobState;
use wechat_fanout::wechat::{AesKey, Kind};

use crate::support::scrape::{Scrape, family};
use crate::support::wechat_api::{APP_SECRET, FakeWechatApi, Scripted};
use crate::support::wx::{AES_KEY, RECEIVE_ID};
use crate::support::{
    ANSWER_CAP, FAST, Proxy, Target, Wx, eventually, eventually_async, jobs, settle, text_reply_of,
    text_xml,
};

const USER: &str = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";

/// The bot's passive reply, sealed with the account's key as a safe-mode bot answers.
fn sealed(inner: &str) -> String {
    let key = AesKey::from_encoding_aes_key(AES_KEY).unwrap();
    format!(
        "<xml><Encrypt><![CDATA[{}]]></Encrypt><MsgSignature>s</MsgSignature>\
         <TimeStamp>1</TimeStamp><Nonce>n</Nonce></xml>",
        key.encrypt(inner.as_bytes(), RECEIVE_ID, rand::random())
    )
}

/// The account `main` of `wx` whose primary is `bot` (3 s timeout), its late replies sent
/// through `api`; also used on Redis.
pub(crate) fn bot_with_late_replies(wx: &Wx, api: &FakeWechatApi, bot: &Target) -> String {
    format!(
        "{}{}",
        wx.account(
            "main",
            &format!(
                "primary = \"bot\"\nlate_replies = \"customer_service\"\n{}",
                api.credential_lines()
            )
        ),
        Wx::target("bot", &bot.url("/bot"), "timeout_ms = 3000"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_bots_replies_reach_the_user_through_the_customer_service_api() {
    let api = FakeWechatApi::start(RECEIVE_ID, &[]).await;
    let bot = Target::start(200).await;
    bot.set_delay(Duration::from_millis(500));
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let toml = format!(
        "{FAST}[server]\nreply_deadline_ms = 150\n{}",
        bot_with_late_replies(&wx, &api, &bot)
    );
    let proxy = Proxy::start_with_admin(&toml).await;

    // A text reply, encrypted: the API answers 500, then -1 (system busy), then says the token
    // expired (42001, fetched again at once); the fourth try goes through.
    api.script_send(&[
        Scripted::Status(500),
        Scripted::Errcode(-1),
        Scripted::Errcode(42001),
    ]);
    bot.set_reply(
        "application/xml",
        &sealed(&format!(
            "<xml><ToUserName><![CDATA[{USER}]]></ToUserName><FromUserName>gh</FromUserName>\
             <CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType>\
             <Content><![CDATA[sorry, I was slow]]></Content></xml>"
        )),
    );
    let answer = proxy
        .post("main", &wx.seal(&text_xml("are you there?")))
        .await;
    answer.assert_success();
    let sent = eventually("the text sent", || {
        let sent = api.sent();
        (!sent.is_empty()).then_some(sent)
    })
    .await;
    assert_eq!(
        sent[0],
        json!({"touser": USER, "msgtype": "text", "text": {"content": "sorry, I was slow"}})
    );
    assert_eq!(api.calls("/cgi-bin/message/custom/send"), 4);
    assert_eq!(
        api.calls("/cgi-bin/stable_token"),
        2,
        "fetched again on 42001 only"
    );

    // A news reply in clear.
    bot.set_reply(
        "text/xml",
        "<xml><ToUserName>o</ToUserName><MsgType>news</MsgType><ArticleCount>2</ArticleCount>\
         <Articles><item><Title><![CDATA[Today]]></Title><Description>d1</Description>\
         <PicUrl>http://p/1</PicUrl><Url>http://u/1</Url></item>\
         <item><Title>Tomorrow</Title><Url>http://u/2</Url></item></Articles></xml>",
    );
    proxy
        .post("main", &wx.seal(&text_xml("news?")))
        .await
        .assert_success();
    let sent = eventually("the news sent", || {
        let sent = api.sent();
        (sent.len() == 2).then_some(sent)
    })
    .await;
    assert_eq!(
        sent[1]["news"]["articles"],
        json!([
            {"title": "Today", "description": "d1", "picurl": "http://p/1", "url": "http://u/1"},
            {"title": "Tomorrow", "url": "http://u/2"}
        ])
    );
    assert_eq!(sent[1]["touser"], USER);

    // An image reply after the user's 48-hour window closed: a dead letter with WeChat's words.
    api.script_send(&[Scripted::Errcode(45015)]);
    bot.set_reply(
        "text/xml",
        "<xml><MsgType>image</MsgType><Image><MediaId>MEDIA_1</MediaId></Image></xml>",
    );
    proxy
        .post("main", &wx.seal(&text_xml("picture?")))
        .await
        .assert_success();
    let dead = eventually_async("the image dead-lettered", || async {
        jobs(&proxy.store())
            .await
            .into_iter()
            .find(|j| j.target == "~late-replies" && j.state == JobState::Dead)
    })
    .await;
    let error = dead.last_error.unwrap_or_default();
    assert!(
        error.contains("45015") && error.contains("out of time limit"),
        "{error}"
    );
    assert_eq!(dead.attempts, 1, "45015 is not retried");

    // An answer in time goes to WeChat and is never sent again.
    bot.set_delay(Duration::ZERO);
    bot.set_reply(
        "text/xml",
        "<xml><MsgType>text</MsgType><Content>quick</Content></xml>",
    );
    let quick = proxy.post("main", &wx.seal(&text_xml("quick?"))).await;
    assert!(quick.text().contains("quick"), "{}", quick.text());

    settle().await;
    assert_eq!(
        api.sent().len(),
        2,
        "each late reply sent once: {:?}",
        api.sent()
    );
    let scrape = eventually_async("counted", || async {
        let scrape = Scrape::fetch(&proxy).await;
        let queued = scrape
            .family("wechat_fanout_late_replies_total")
            .get("account=main,outcome=queued")
            .copied();
        (queued == Some(3.0)).then_some(scrape)
    })
    .await;
    let attempts = scrape.family("wechat_fanout_delivery_attempts_total");
    let of = |result: &str| {
        attempts
            .iter()
            .filter(|(k, _)| k.contains("target=~late-replies") && k.contains(result))
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    assert_eq!(
        (of("delivered"), of("retry"), of("dead")),
        (2.0, 2.0, 1.0),
        "{attempts:?}"
    );
}

/// `late_replies` without the API's credentials, or for WeCom, is refused at start.
#[test]
fn late_replies_need_app_secret() {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let text = format!(
        "{}{}",
        wx.account("main", "late_replies = \"customer_service\""),
        Wx::target("bot", "http://127.0.0.1:9/a", "")
    );
    let error = crate::support::config_error(&text);
    assert!(error.starts_with("accounts[0].late_replies"), "{error}");
    assert!(error.contains("needs app_id and app_secret"), "{error}");

    let wecom = Wx::new(Kind::WeCom, Mode::Safe);
    let text = format!(
        "{}{}",
        wecom.account(
            "work",
            &format!("late_replies = \"customer_service\"\napp_secret = \"{APP_SECRET}\"")
        ),
        Wx::target("bot", "http://127.0.0.1:9/a", "")
    );
    let error = crate::support::config_error(&text);
    assert!(error.starts_with("accounts[0].late_replies"), "{error}");
    assert!(error.contains("WeCom has no customer-service"), "{error}");
}

/// A late answer over the 1 MiB cap is not rescued from the part of it that was read: nothing
/// reaches the API, and it is counted `too_large`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_over_1_mib_is_counted_too_large_and_not_sent() {
    let api = FakeWechatApi::start(RECEIVE_ID, &[]).await;
    let bot = Target::start(200).await;
    bot.set_delay(Duration::from_millis(300));
    bot.set_reply("text/xml", &text_reply_of(2 * ANSWER_CAP));
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let toml = format!(
        "{FAST}[server]\nreply_deadline_ms = 100\n{}",
        bot_with_late_replies(&wx, &api, &bot)
    );
    let proxy = Proxy::start_with_admin(&toml).await;

    proxy
        .post("main", &wx.seal(&text_xml("a long story?")))
        .await
        .assert_success();
    assert_eq!(
        Scrape::first_counted(&proxy, "wechat_fanout_late_replies_total").await,
        family(&[("account=main,outcome=too_large", 1.0)])
    );
    settle().await;
    assert_eq!(api.sent(), Vec::<serde_json::Value>::new());
}
