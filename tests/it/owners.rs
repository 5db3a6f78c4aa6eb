//! Reply owners per route (`replies_to`): the chatbot answers text, the menu service CLICK
//! events, the marketing service subscribe and SCAN; every target still gets its deliveries.

use std::time::Duration;

use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use crate::support::binary::run;
use crate::support::{FAST, Proxy, Target, Wx, event_xml, settle, text_xml};

fn reply(name: &str) -> String {
    format!(
        "<xml><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[from {name}]]></Content></xml>"
    )
}

/// Each callback gets the answer of the target that owns its route, resends the same one, and
/// the owner is asked once; a route nobody owns is answered `success`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_is_answered_by_its_owner() {
    let bot = Target::start(200).await;
    let menu = Target::start(200).await;
    let marketing = Target::start(200).await;
    for (target, name) in [(&bot, "bot"), (&menu, "menu"), (&marketing, "marketing")] {
        target.set_reply("application/xml", &reply(name));
        target.set_delay(Duration::from_millis(50));
    }
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}{}{}",
        wx.account("main", ""),
        Wx::target(
            "bot",
            &bot.url("/bot"),
            "replies_to = [\"text\", \"voice\"]"
        ),
        Wx::target("menu", &menu.url("/menu"), "replies_to = [\"event:CLICK\"]"),
        Wx::target(
            "marketing",
            &marketing.url("/marketing"),
            "replies_to = [\"event:subscribe\", \"event:SCAN\"]"
        ),
    );
    let proxy = Proxy::start(&toml).await;

    let cases = [
        (text_xml("hello"), "from bot"),
        (event_xml("CLICK", "V1001_TODAY_MUSIC"), "from menu"),
        (event_xml("subscribe", ""), "from marketing"),
        (event_xml("SCAN", "123"), "from marketing"),
    ];
    for (message, expected) in &cases {
        let sealed = wx.seal(message);
        let (first, resend) = tokio::join!(proxy.post("main", &sealed), async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            proxy.post("main", &sealed).await
        });
        for answer in [&first, &resend] {
            assert_eq!(answer.status, 200, "{answer:?}");
            assert!(
                answer.text().contains(expected),
                "{message}: {}",
                answer.text()
            );
        }
    }
    // Nobody claims images or VIEW events, and there is no catch-all: success.
    for message in [
        "<xml><MsgType>image</MsgType><MsgId>77</MsgId><FromUserName>o1</FromUserName></xml>"
            .to_owned(),
        event_xml("VIEW", "https://example.com/"),
    ] {
        let answer = proxy.post("main", &wx.seal(&message)).await;
        answer.assert_success();
    }

    settle().await;
    // Everyone still gets every callback once (no filters here), resends included once.
    for target in [&bot, &menu, &marketing] {
        assert_eq!(target.count(), 6, "{:?}", target.received());
    }
}

/// `primary = "bot"` is `replies_to = ["*"]` on bot: a more specific owner still wins its route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_is_the_catch_all_and_a_specific_route_beats_it() {
    let bot = Target::start(200).await;
    let menu = Target::start(200).await;
    bot.set_reply("application/xml", &reply("bot"));
    menu.set_reply("application/xml", &reply("menu"));
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let toml = format!(
        "{FAST}{}{}{}",
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", &bot.url("/bot"), ""),
        Wx::target("menu", &menu.url("/menu"), "replies_to = [\"event:CLICK\"]"),
    );
    let proxy = Proxy::start(&toml).await;

    let text = proxy.post("main", &wx.seal(&text_xml("hi"))).await;
    assert!(text.text().contains("from bot"), "{}", text.text());
    let click = proxy.post("main", &wx.seal(&event_xml("click", "K"))).await;
    assert!(click.text().contains("from menu"), "{}", click.text());
    let view = proxy.post("main", &wx.seal(&event_xml("VIEW", "K"))).await;
    assert!(view.text().contains("from bot"), "{}", view.text());
}

/// Issue 27: `users` limits a target to some senders, and with `replies_to` it owns their
/// replies before any owner without `users`, whatever that one's routes. The tester's messages
/// are answered by the tester's service (a menu click too, which the menu owns for everyone
/// else) and reach it; nobody else's do, and production's bot answers everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_testers_messages_are_answered_by_the_target_that_lists_the_tester() {
    const TESTER: &str = "oTester_0123456789abcdefghij";
    let bot = Target::start(200).await;
    let menu = Target::start(200).await;
    let laptop = Target::start(200).await;
    for (target, name) in [(&bot, "bot"), (&menu, "menu"), (&laptop, "laptop")] {
        target.set_reply("application/xml", &reply(name));
    }
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let toml = format!(
        "{FAST}{}{}{}{}",
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", &bot.url("/bot"), ""),
        Wx::target("menu", &menu.url("/menu"), "replies_to = [\"event:CLICK\"]"),
        Wx::target(
            "laptop",
            &laptop.url("/laptop"),
            &format!("users = [\"{TESTER}\"]\nreplies_to = [\"*\"]")
        ),
    );
    let proxy = Proxy::start(&toml).await;
    let tester_text = text_xml("from the tester").replace("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", TESTER);
    assert!(tester_text.contains(TESTER));
    let answer = proxy.post("main", &wx.seal(&tester_text)).await;
    assert!(answer.text().contains("from laptop"), "{}", answer.text());
    let click = format!(
        "<xml><ToUserName><![CDATA[gh_a6a3d5e8ae7e]]></ToUserName>\
         <FromUserName><![CDATA[{TESTER}]]></FromUserName><CreateTime>{}</CreateTime>\
         <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[CLICK]]></Event>\
         <EventKey><![CDATA[K]]></EventKey></xml>",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    );
    let answer = proxy.post("main", &wx.seal(&click)).await;
    assert!(answer.text().contains("from laptop"), "{}", answer.text());

    let someone = proxy
        .post("main", &wx.seal(&text_xml("from someone")))
        .await;
    assert!(someone.text().contains("from bot"), "{}", someone.text());
    let their_click = proxy.post("main", &wx.seal(&event_xml("CLICK", "K"))).await;
    assert!(
        their_click.text().contains("from menu"),
        "{}",
        their_click.text()
    );

    settle().await;
    // The laptop got the tester's two callbacks and nothing else; the bot got all four.
    let got = laptop.received();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(bot.count(), 4);
}

fn check(targets: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let text = format!("{}{targets}", wx.account("main", ""));
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let output = run(&["check-config", "--config", &path.to_string_lossy()]);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Two owners of one route, a route the owner's own filter excludes, and a primary that a
/// catch-all also claims are refused before anything starts, naming the targets and the route.
#[test]
fn conflicting_owners_are_refused_by_check_config() {
    let (code, stderr) = check(&format!(
        "{}{}",
        Wx::target(
            "menu",
            "http://127.0.0.1:9/a",
            "replies_to = [\"event:CLICK\"]"
        ),
        Wx::target(
            "menu2",
            "http://127.0.0.1:9/b",
            "replies_to = [\"text\", \"event:click\"]"
        ),
    ));
    assert_eq!(code, Some(64), "{stderr}");
    for needle in ["\"menu\"", "\"menu2\"", "event:click"] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }

    let (code, stderr) = check(&Wx::target(
        "bot",
        "http://127.0.0.1:9/a",
        "msg_types = [\"text\"]\nreplies_to = [\"voice\"]",
    ));
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("accounts[0].targets[0].replies_to[0]"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\"bot\"") && stderr.contains("voice"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let text = format!(
        "{}{}{}",
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", "http://127.0.0.1:9/a", ""),
        Wx::target("all", "http://127.0.0.1:9/b", "replies_to = [\"*\"]"),
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let output = run(&["check-config", "--config", &path.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("\"bot\"") && stderr.contains("\"all\"") && stderr.contains("route *"),
        "{stderr}"
    );

    let (code, stderr) = check(&Wx::target(
        "ok",
        "http://127.0.0.1:9/a",
        "replies_to = [\"text\", \"*\"]",
    ));
    assert_eq!(code, Some(0), "{stderr}");

    // Two owners listing one sender on one route (issue 27); apart, or on other routes, fine.
    let (code, stderr) = check(&format!(
        "{}{}",
        Wx::target(
            "laptop",
            "http://127.0.0.1:9/a",
            "users = [\"oTester\"]\nreplies_to = [\"text\"]"
        ),
        Wx::target(
            "agent",
            "http://127.0.0.1:9/b",
            "users = [\"oX\", \"oTester\"]\nreplies_to = [\"text\"]"
        ),
    ));
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("\"laptop\" and \"agent\"")
            && stderr.contains("route text for the sender \"oTester\""),
        "{stderr}"
    );
    let (code, stderr) = check(&Wx::target("nobody", "http://127.0.0.1:9/a", "users = []"));
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("accounts[0].targets[0].users"), "{stderr}");
}

/// `shadow_of` must name another target of the account that is not itself a shadow, and a shadow
/// neither owns replies nor filters on its own.
#[test]
fn bad_shadows_are_refused() {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let cases = [
        ("shadow_of = \"nobody\"", "", "names no target"),
        ("shadow_of = \"next\"", "", "is this target or a shadow"),
        (
            "shadow_of = \"bot\"\nreplies_to = [\"text\"]",
            "",
            "cannot own replies",
        ),
        (
            "shadow_of = \"bot\"\nmsg_types = [\"text\"]",
            "",
            "leave out msg_types",
        ),
        (
            "shadow_of = \"bot\"",
            "shadow_of = \"next\"",
            "is this target or a shadow",
        ),
    ];
    for (next, other, message) in cases {
        let text = format!(
            "{}{}{}{}",
            wx.account("main", ""),
            Wx::target("bot", "http://127.0.0.1:9/a", ""),
            Wx::target("next", "http://127.0.0.1:9/b", next),
            Wx::target("other", "http://127.0.0.1:9/c", other),
        );
        let error = crate::support::config_error(&text);
        assert!(error.contains(message), "{next} / {other}: {error}");
        assert!(error.starts_with("accounts[0].targets["), "{error}");
    }
}
