//! The answer WeChat gets: in time, the same for every resend, and the primary target's reply
//! when it has one ready before the deadline.

use std::time::Duration;

use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use crate::support::scrape::{Scrape, family};
use crate::support::{
    ANSWER_CAP, FAST, Proxy, Target, Wx, eventually_async, no_jobs_left, raw_post_head, settle,
    text_reply_of, text_xml,
};

/// WeChat resends a callback it got no answer for, possibly while the first copy is still being
/// handled. Three copies sent at once get the same answer, and each target gets it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_concurrent_resends_get_one_answer_and_one_delivery_per_target() {
    let a = Target::start(200).await;
    let b = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let toml = format!(
        "{FAST}{}{}{}",
        wx.account("main", ""),
        Wx::target("a", &a.url("/a"), ""),
        Wx::target("b", &b.url("/b"), ""),
    );
    let proxy = Proxy::start(&toml).await;

    let sealed = wx.seal(&text_xml("sent three times"));
    let (one, two, three) = tokio::join!(
        proxy.post("main", &sealed),
        proxy.post("main", &sealed),
        proxy.post("main", &sealed),
    );
    for answer in [&one, &two, &three] {
        answer.assert_success();
        assert_eq!(answer.header("content-type"), one.header("content-type"));
    }

    a.wait_for(1).await;
    b.wait_for(1).await;
    settle().await;
    for target in [&a, &b] {
        let got = target.received();
        assert_eq!(got.len(), 1, "exactly one delivery: {got:?}");
        assert_eq!(got[0].body, sealed.body.as_bytes());
    }
    assert_eq!(crate::support::callbacks(&proxy.store()).await, 1);
}

/// With a primary, the three copies all get the primary's reply, the primary is asked once, and
/// the other target gets one delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_concurrent_resends_all_get_the_primarys_reply() {
    let bot = Target::start(200).await;
    bot.set_reply("application/xml", "<xml><MsgType>text</MsgType></xml>");
    bot.set_delay(Duration::from_millis(100));
    let other = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}{}",
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", &bot.url("/bot"), ""),
        Wx::target("other", &other.url("/other"), ""),
    );
    let proxy = Proxy::start(&toml).await;

    let sealed = wx.seal(&text_xml("sent three times"));
    let (one, two, three) = tokio::join!(
        proxy.post("main", &sealed),
        proxy.post("main", &sealed),
        proxy.post("main", &sealed),
    );
    for answer in [&one, &two, &three] {
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.text(), "<xml><MsgType>text</MsgType></xml>");
        assert_eq!(answer.header("content-type"), Some("application/xml"));
    }

    // A late resend, after the first copy is fully handled, is answered the same way.
    no_jobs_left(&proxy.store(), "the primary's delivery recorded").await;
    let late = proxy.post("main", &sealed).await;
    assert_eq!((late.status, late.text()), (200, one.text()));
    assert_eq!(late.header("content-type"), Some("application/xml"));

    other.wait_for(1).await;
    settle().await;
    assert_eq!(
        bot.count(),
        1,
        "the primary is asked once: {:?}",
        bot.received()
    );
    assert_eq!(other.count(), 1, "{:?}", other.received());
}

/// The primary's 2xx answer is WeChat's answer: its body and its Content-Type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primarys_reply_is_relayed_as_the_answer() {
    let bot = Target::start(200).await;
    let reply =
        "<xml><ToUserName><![CDATA[o1]]></ToUserName><Content><![CDATA[嗨]]></Content></xml>";
    bot.set_reply("text/xml; charset=utf-8", reply);
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}",
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", &bot.url("/bot"), ""),
    );
    let proxy = Proxy::start(&toml).await;

    let sealed = wx.seal(&text_xml("hello bot"));
    let answer = proxy.post("main", &sealed).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, reply.as_bytes());
    assert_eq!(
        answer.header("content-type"),
        Some("text/xml; charset=utf-8")
    );

    let got = bot.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, sealed.body.as_bytes());
    assert_eq!(got[0].attempt(), 1);
    no_jobs_left(&proxy.store(), "the primary's delivery recorded").await;
    settle().await;
    assert_eq!(bot.count(), 1, "delivered once, not again by a worker");
}

/// A primary slower than `reply_deadline_ms`: WeChat gets `success` at the deadline, and the
/// primary still gets the callback, recorded as delivered when it finally answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_primary_gets_success_sent_at_the_deadline_and_is_still_delivered() {
    let bot = Target::start(200).await;
    bot.set_reply("text/xml", "<xml>too late</xml>");
    bot.set_delay(Duration::from_millis(1500));
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}[server]\nreply_deadline_ms = 300\n{}{}",
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", &bot.url("/bot"), "timeout_ms = 5000"),
    );
    let proxy = Proxy::start(&toml).await;

    let sealed = wx.seal(&text_xml("slow bot"));
    let answer = proxy.post("main", &sealed).await;
    answer.assert_success();
    assert!(
        answer.elapsed >= Duration::from_millis(250)
            && answer.elapsed < Duration::from_millis(1000),
        "answered after {:?}; the deadline is 300 ms",
        answer.elapsed
    );
    assert_eq!(bot.count(), 1, "the primary got it at once");

    no_jobs_left(&proxy.store(), "the slow primary's delivery recorded").await;
    settle().await;
    assert_eq!(bot.count(), 1, "delivered once: {:?}", bot.received());
}

/// A target that never answers (not the primary) does not hold up WeChat's answer, nor the
/// other targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_target_does_not_delay_the_answer() {
    let hanging = Target::start(200).await;
    hanging.hang();
    let fine = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}{}",
        wx.account("main", ""),
        Wx::target("hanging", &hanging.url("/h"), "timeout_ms = 5000"),
        Wx::target("fine", &fine.url("/f"), ""),
    );
    let proxy = Proxy::start(&toml).await;

    for n in 0..3 {
        let sealed = wx.seal(&text_xml(&format!("message {n}")));
        let answer = proxy.post("main", &sealed).await;
        answer.assert_success();
        assert!(
            answer.elapsed < Duration::from_millis(1000),
            "answered after {:?} with a target hanging for 5 s",
            answer.elapsed
        );
    }
    hanging.wait_for(3).await;
    fine.wait_for(3).await;
}

/// Regression: a resend that started reading before the first copy but finished after it used
/// its own, earlier deadline to wait for the first copy's answer, and got a 503 a moment before
/// the first copy answered `success` (seen with a primary slower than the deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_that_started_first_but_joined_second_gets_the_first_copys_answer() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let bot = Target::start(200).await;
    bot.hang();
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}[server]\nreply_deadline_ms = 600\n{}{}",
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", &bot.url("/bot"), "timeout_ms = 5000"),
    );
    let proxy = Proxy::start(&toml).await;
    let sealed = wx.seal(&text_xml("early but slow"));
    let body = sealed.body.as_bytes();

    // Copy A: its clock starts now, but its body arrives only after copy B has taken the lead.
    let mut early = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "Content-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    early
        .write_all(&raw_post_head(&sealed.query, &head))
        .await
        .unwrap();
    early.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let leader = {
        let proxy = &proxy;
        let sealed = &sealed;
        async move { proxy.post("main", sealed).await }
    };
    let follower = async {
        bot.wait_for(1).await; // copy B leads and is waiting for the primary
        early.write_all(&body[10..]).await.unwrap();
        let mut answer = Vec::new();
        early.read_to_end(&mut answer).await.unwrap();
        String::from_utf8(answer).unwrap()
    };
    let (leader, follower) = tokio::join!(leader, follower);
    leader.assert_success();
    assert!(
        follower.starts_with("HTTP/1.1 200") && follower.ends_with("success"),
        "the copy that joined second answers like the first: {follower}"
    );
    assert_eq!(bot.count(), 1, "one callback, one delivery");
}

/// A store that stalls (here: another connection holds SQLite's write lock) must not keep
/// WeChat waiting past its 5 s: the answer is 503 just before, and once the store is back the
/// resend is answered `success` and the target gets the callback once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_answers_503_before_wechat_gives_up_and_the_resend_succeeds() {
    let target = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}",
        wx.account("main", ""),
        Wx::target("t", &target.url("/t"), "")
    );
    let proxy = Proxy::start(&toml).await;
    let holder = rusqlite::Connection::open(&proxy.db).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();

    let sealed = wx.seal(&text_xml("while the disk stalls"));
    let answer = proxy.post("main", &sealed).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(
        answer.elapsed >= Duration::from_millis(4500) && answer.elapsed < Duration::from_secs(5),
        "answered after {:?}: before WeChat's 5 s, not before the reply deadline",
        answer.elapsed
    );

    holder.execute_batch("ROLLBACK").unwrap();
    // WeChat's resend, repeated (as WeChat would) until the proxy answers 200.
    let resend = eventually_async("a resend answered 200", || async {
        let answer = proxy.post("main", &sealed).await;
        (answer.status == 200).then_some(answer)
    })
    .await;
    resend.assert_success();
    let got = target.wait_for(1).await;
    assert_eq!(got[0].body, sealed.body.as_bytes());
    settle().await;
    assert_eq!(target.count(), 1, "one callback, one delivery");
}

/// A reply owner at `bot` (reached with `settings`) answers 2 MiB, with a Content-Length and
/// then chunked: WeChat gets exactly `200 success` (never the part that was read), the answer
/// is counted as `too_large`, and the owner's delivery is recorded as delivered, once. An answer
/// of exactly 1 MiB, both ways, is relayed whole.
async fn over_the_cap_gets_success_and_at_the_cap_is_relayed_whole(bot: &Target, settings: &str) {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}",
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", &bot.url("/bot"), settings),
    );
    let proxy = Proxy::start_with_admin(&toml).await;
    let (over, at) = (text_reply_of(2 * ANSWER_CAP), text_reply_of(ANSWER_CAP));
    for chunked in [false, true] {
        if chunked {
            bot.set_chunked();
        }
        bot.set_reply("text/xml", &over);
        let answer = proxy
            .post(
                "main",
                &wx.seal(&text_xml(&format!("over, chunked {chunked}"))),
            )
            .await;
        // Its length first: a failure then does not print a megabyte.
        assert_eq!(
            (answer.status, answer.body.len()),
            (200, "success".len()),
            "chunked {chunked}: WeChat gets success, not part of the answer"
        );
        answer.assert_success();
        bot.set_reply("text/xml", &at);
        let answer = proxy
            .post(
                "main",
                &wx.seal(&text_xml(&format!("at, chunked {chunked}"))),
            )
            .await;
        assert_eq!(answer.status, 200, "chunked {chunked}");
        assert!(
            answer.body == at.as_bytes(),
            "chunked {chunked}: {} bytes",
            answer.body.len()
        );
        assert_eq!(answer.header("content-type"), Some("text/xml"));
    }

    no_jobs_left(
        &proxy.store(),
        "every delivery to the owner recorded as delivered",
    )
    .await;
    settle().await;
    assert_eq!(bot.count(), 4, "each delivered once, none retried");
    assert_eq!(
        Scrape::fetch(&proxy)
            .await
            .family("wechat_fanout_primary_total"),
        family(&[
            ("account=main,outcome=relayed", 2.0),
            ("account=main,outcome=too_large", 2.0),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owners_answer_over_1_mib_is_not_relayed_cut_short() {
    let bot = Target::start(200).await;
    over_the_cap_gets_success_and_at_the_cap_is_relayed_whole(&bot, "").await;
}

/// Pipelined, the rest of each long answer is read and dropped on its connection, and the
/// answers after it are read there: one connection for all four.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_owners_answer_over_1_mib_is_not_relayed_cut_short() {
    let bot = Target::start(200).await;
    over_the_cap_gets_success_and_at_the_cap_is_relayed_whole(&bot, "pipelining = true").await;
    assert_eq!(bot.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_owners_answer_over_1_mib_is_not_relayed_cut_short() {
    let bot = Target::start_h2(200).await;
    over_the_cap_gets_success_and_at_the_cap_is_relayed_whole(&bot, "http2 = true").await;
}
