//! Shadow compare (`shadow_of`): a rewritten bot gets what the live one gets, with the same
//! deadline; WeChat only ever sees the live bot's answer, and the two are compared.

use std::time::Duration;

use wechat_fanout::config::Mode;
use wechat_fanout::wechat::{AesKey, Kind};

use crate::support::scrape::{Scrape, family};
use crate::support::wx::{AES_KEY, RECEIVE_ID};
use crate::support::{
    ANSWER_CAP, FAST, Proxy, Target, Wx, eventually_async, text_reply_of, text_xml,
};

/// The live bot answers encrypted (safe mode); the candidate answers in clear, with its own
/// CreateTime and element order: the same (compared after decryption). Then it answers other
/// words (different, listed with both answers), too slowly (late), and 500 (failed). WeChat gets
/// the live bot's answer every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_bot_is_compared_and_never_answers_wechat() {
    let inner = "<xml><ToUserName><![CDATA[o1]]></ToUserName><FromUserName><![CDATA[gh]]></FromUserName>\
                 <CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType>\
                 <Content><![CDATA[hello there]]></Content></xml>";
    let key = AesKey::from_encoding_aes_key(AES_KEY).unwrap();
    let sealed_reply = format!(
        "<xml><Encrypt><![CDATA[{}]]></Encrypt><MsgSignature><![CDATA[x]]></MsgSignature>\
         <TimeStamp>1700000000</TimeStamp><Nonce><![CDATA[n]]></Nonce></xml>",
        key.encrypt(inner.as_bytes(), RECEIVE_ID, rand::random())
    );
    let bot = Target::start(200).await;
    bot.set_reply("application/xml", &sealed_reply);
    let next = Target::start(200).await;
    let same = "<xml>\n <MsgType>text</MsgType>\n <CreateTime>1800000000</CreateTime>\n \
                <ToUserName>o1</ToUserName>\n <FromUserName>gh</FromUserName>\n \
                <Content>hello there</Content>\n</xml>";
    next.set_reply("text/xml", same);
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let toml = format!(
        "{FAST}[server]\nreply_deadline_ms = 400\n{}{}{}",
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", &bot.url("/bot"), ""),
        Wx::target(
            "next",
            &next.url("/next"),
            "shadow_of = \"bot\"\nmax_attempts = 1"
        ),
    );
    let proxy = Proxy::start_with_admin(&toml).await;

    let ask = |text: &'static str| {
        let sealed = wx.seal(&text_xml(text));
        let (proxy, sealed_reply) = (&proxy, &sealed_reply);
        async move {
            let answer = proxy.post("main", &sealed).await;
            assert_eq!(answer.status, 200);
            assert_eq!(
                &answer.text(),
                sealed_reply,
                "WeChat gets the live bot's answer"
            );
        }
    };
    // Each answer of the shadow is compared before the next one changes what it answers: under
    // load its answer can come after the owner's, and it must be the one it gave for that copy.
    let results = |n: f64| {
        let proxy = &proxy;
        async move {
            eventually_async(&format!("{n} shadow results"), || async {
                let scrape = Scrape::fetch(proxy).await;
                let total: f64 = scrape.family("wechat_fanout_shadow_total").values().sum();
                (total >= n).then_some(scrape)
            })
            .await
        }
    };
    ask("one").await;
    results(1.0).await;
    next.set_reply("text/xml", &same.replace("hello there", "hi!"));
    ask("two").await;
    results(2.0).await;
    next.set_delay(Duration::from_millis(900));
    ask("three").await;
    results(3.0).await;
    next.set_delay(Duration::ZERO);
    next.set_status(500);
    ask("four").await;

    let counted = |scrape: &Scrape, result: &str| {
        scrape
            .family("wechat_fanout_shadow_total")
            .get(&format!("account=main,result={result},target=next"))
            .copied()
    };
    let scrape = results(4.0).await;
    for result in ["same", "different", "late", "failed"] {
        assert_eq!(
            counted(&scrape, result),
            Some(1.0),
            "{result}: {}",
            scrape.text
        );
    }

    let listed = proxy
        .admin(reqwest::Method::GET, "/shadow/differences")
        .await;
    assert_eq!(listed.status, 200);
    let json: serde_json::Value = serde_json::from_str(&listed.text()).unwrap();
    let differences = json["differences"].as_array().unwrap();
    assert_eq!(differences.len(), 1, "{json}");
    let difference = &differences[0];
    assert_eq!(difference["target"], "next");
    assert_eq!(difference["owner"], "bot");
    assert_eq!(difference["owner_answer"], inner, "opened: {json}");
    assert!(
        difference["shadow_answer"]
            .as_str()
            .unwrap()
            .contains("hi!")
    );
    assert_eq!(bot.count(), 4);
}

/// A candidate whose answer is over the 1 MiB cap is counted `too_large`: not compared by the
/// part of it that was read, nor listed as a difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidates_answer_over_1_mib_is_counted_too_large_and_not_compared() {
    let bot = Target::start(200).await;
    let reply = text_reply_of(200);
    bot.set_reply("text/xml", &reply);
    let next = Target::start(200).await;
    next.set_reply("text/xml", &text_reply_of(2 * ANSWER_CAP));
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}{}",
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", &bot.url("/bot"), ""),
        Wx::target("next", &next.url("/next"), "shadow_of = \"bot\""),
    );
    let proxy = Proxy::start_with_admin(&toml).await;

    let answer = proxy.post("main", &wx.seal(&text_xml("big"))).await;
    assert_eq!((answer.status, answer.text()), (200, reply));
    assert_eq!(
        Scrape::first_counted(&proxy, "wechat_fanout_shadow_total").await,
        family(&[("account=main,result=too_large,target=next", 1.0)])
    );
    let listed = proxy
        .admin(reqwest::Method::GET, "/shadow/differences")
        .await;
    let json: serde_json::Value = serde_json::from_str(&listed.text()).unwrap();
    assert_eq!(json["differences"], serde_json::json!([]), "{json}");
}
