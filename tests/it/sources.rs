//! Only WeChat's addresses (`allowed_sources`): an account that lists `"wechat"` takes callbacks
//! only from WeChat's callback IP list, fetched from a fake WeChat API with the account's access
//! token, and from the CIDR blocks it lists. Behind a trusted proxy the client is read from
//! `X-Forwarded-For` / `X-Real-IP`; from any other peer those headers are ignored. Refused
//! requests get 403 with the reason, are counted, and are never stored.

use std::net::SocketAddr;

use wechat_fanout::config::{Mode, Synchronous};
use wechat_fanout::outbound::wechat_api::{ApiAccount, WechatApi};
use wechat_fanout::store::{SqliteStore, Store as _};
use wechat_fanout::wechat::{Kind, SealedRequest};

use crate::operate::{post_to_binary, write_binary_config};
use crate::support::scrape::Scrape;
use crate::support::wechat_api::{APP_SECRET, FakeWechatApi};
use crate::support::wx::RECEIVE_ID;
use crate::support::{
    Binary, FAST, Proxy, Target, Wx, callbacks, client, eventually_async, free_addr, text_xml,
};

/// WeChat's callback IPs as the fake API lists them: a block and a single address.
const WECHAT_IPS: [&str; 2] = ["101.226.103.0/25", "203.0.113.7"];

/// POSTs `sealed` to `/wechat/{account}` with these extra headers: the status and body.
async fn post_with(
    addr: SocketAddr,
    account: &str,
    sealed: &SealedRequest,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut request = client()
        .post(format!("http://{addr}/wechat/{account}?{}", sealed.query))
        .header("content-type", sealed.content_type)
        .body(sealed.body.clone());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let answer = request.send().await.expect("the proxy answers");
    (answer.status().as_u16(), answer.text().await.unwrap())
}

/// The proxy behind a load balancer on 127.0.0.1 (trusted): a callback forwarded for one of
/// WeChat's addresses, or for the office block, is taken; one forwarded for anyone else, one
/// whose forged left-most entry names WeChat, and one straight from the balancer are refused
/// with 403 and the reason, never stored, and counted by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_wechats_addresses_and_listed_blocks_reach_the_account() {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let api = FakeWechatApi::start(RECEIVE_ID, &WECHAT_IPS).await;
    let target = Target::start(200).await;
    let proxy = Proxy::start_with_admin(&format!(
        "{FAST}[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n{}{}",
        wx.account(
            "main",
            &api.account_lines(r#"["wechat", "198.51.100.0/24"]"#)
        ),
        Wx::target("t", &target.url("/t"), ""),
    ))
    .await;
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    // The list arrives in the background, fetched at start.
    eventually_async("WeChat's list is fetched", || async {
        let sealed = wx.seal(&text_xml("first"));
        (post_with(proxy.addr, "main", &sealed, &from("203.0.113.7"))
            .await
            .0
            == 200)
            .then_some(())
    })
    .await;
    let tokens = api.requests("/cgi-bin/stable_token");
    assert!(
        tokens[0].contains(RECEIVE_ID) && tokens[0].contains(APP_SECRET),
        "{tokens:?}"
    );
    assert!(api.requests("/cgi-bin/getcallbackip")[0].contains("access_token=ACCESS_TOKEN_1"));

    let stored_before = callbacks(&proxy.store()).await;
    let mut taken = 0;
    for (headers, expected) in [
        (vec![("x-forwarded-for", "101.226.103.5")], 200),
        (vec![("x-forwarded-for", "10.9.9.9, 101.226.103.77")], 200),
        (vec![("x-real-ip", "101.226.103.9")], 200),
        (vec![("x-forwarded-for", "198.51.100.20")], 200),
        (vec![("x-forwarded-for", "101.226.103.200")], 403),
        (vec![("x-forwarded-for", "101.226.103.5, 192.0.2.1")], 403),
        (vec![], 403),
        (vec![("x-forwarded-for", "not-an-address")], 403),
    ] {
        let sealed = wx.seal(&text_xml("hello"));
        let (status, body) = post_with(proxy.addr, "main", &sealed, &headers).await;
        assert_eq!(status, expected, "{headers:?}: {body}");
        if status == 200 {
            taken += 1;
        } else {
            assert!(
                body.contains("source") || body.contains("X-Forwarded-For"),
                "{body}"
            );
        }
    }
    let (_, refused) = post_with(
        proxy.addr,
        "main",
        &wx.seal(&text_xml("x")),
        &[("x-forwarded-for", "192.0.2.1")],
    )
    .await;
    assert_eq!(
        refused,
        "source 192.0.2.1 is not in the account's allowed_sources\n"
    );
    assert_eq!(
        callbacks(&proxy.store()).await,
        stored_before + taken,
        "refused ones are not stored"
    );
    target.wait_for(1 + taken).await;

    let m = Scrape::fetch(&proxy).await;
    let rejected = |reason: &str| {
        m.value(
            "wechat_fanout_callbacks_total",
            &format!("account=main,outcome=rejected,reason={reason}"),
        )
    };
    assert_eq!(rejected("source_not_allowed"), 4.0);
    assert_eq!(rejected("bad_forwarded_header"), 1.0);
}

/// From a peer that is not a trusted proxy, `X-Forwarded-For` and `X-Real-IP` naming WeChat's
/// addresses are ignored: the peer itself (127.0.0.1, not on WeChat's list) is refused; an
/// account that lists the peer takes it whatever the headers say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarding_headers_from_an_untrusted_peer_change_nothing() {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let api = FakeWechatApi::start(RECEIVE_ID, &WECHAT_IPS).await;
    let target = Target::start(200).await;
    let proxy = Proxy::start(&format!(
        "{FAST}[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\n{}{}{}{}",
        wx.account("main", &api.account_lines(r#"["wechat"]"#)),
        Wx::target("t", &target.url("/t"), ""),
        wx.account("local", "allowed_sources = [\"127.0.0.1\"]"),
        Wx::target("t", &target.url("/local"), ""),
    ))
    .await;
    // Fetched is not yet known: until the proxy has the list, a refusal says so instead.
    eventually_async("WeChat's list known to the proxy", || async {
        let (status, body) = post_with(proxy.addr, "main", &wx.seal(&text_xml("f")), &[]).await;
        (status == 403 && !body.contains("not known yet")).then_some(())
    })
    .await;
    assert!(api.calls("/cgi-bin/getcallbackip") > 0);
    for headers in [
        vec![("x-forwarded-for", "101.226.103.5")],
        vec![("x-real-ip", "203.0.113.7")],
        vec![
            ("x-forwarded-for", "203.0.113.7"),
            ("x-real-ip", "203.0.113.7"),
        ],
    ] {
        let (status, body) =
            post_with(proxy.addr, "main", &wx.seal(&text_xml("f")), &headers).await;
        assert_eq!(
            (status, body.as_str()),
            (
                403,
                "source 127.0.0.1 is not in the account's allowed_sources\n"
            ),
            "{headers:?}"
        );
    }
    let (status, _) = post_with(
        proxy.addr,
        "local",
        &wx.seal(&text_xml("f")),
        &[("x-forwarded-for", "192.0.2.1")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(callbacks(&proxy.store()).await, 1);
}

/// The token cache: one token serves many calls; when WeChat says it is no longer valid
/// (40001), it is fetched again once and the call succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_token_is_cached_and_fetched_again_when_wechat_revokes_it() {
    let fake = FakeWechatApi::start(RECEIVE_ID, &WECHAT_IPS).await;
    let api = WechatApi::new();
    let account = ApiAccount {
        id: "main".into(),
        kind: Kind::OfficialAccount,
        base: fake.base().parse().unwrap(),
        app_id: fake.app_id().to_owned(),
        app_secret: APP_SECRET.into(),
    };
    for _ in 0..3 {
        assert_eq!(api.callback_ips(&account).await.unwrap(), WECHAT_IPS);
    }
    assert_eq!(
        fake.calls("/cgi-bin/stable_token"),
        1,
        "one token for three calls"
    );
    fake.rotate_token();
    assert_eq!(api.callback_ips(&account).await.unwrap(), WECHAT_IPS);
    assert_eq!(fake.calls("/cgi-bin/stable_token"), 2);
    assert_eq!(fake.calls("/cgi-bin/getcallbackip"), 5);

    let wrong = ApiAccount {
        app_secret: "wrong".into(),
        id: "other".into(),
        ..account.clone()
    };
    let error = api.callback_ips(&wrong).await.unwrap_err().to_string();
    assert_eq!(error, "WeChat API error 40125: invalid appsecret");
    assert!(!error.contains("wrong"));

    let wecom = ApiAccount {
        id: "work".into(),
        kind: Kind::WeCom,
        ..account
    };
    assert_eq!(api.callback_ips(&wecom).await.unwrap(), WECHAT_IPS);
    assert_eq!(fake.calls("/cgi-bin/gettoken"), 1);
}

/// A restart while WeChat's API is unreachable keeps taking callbacks from WeChat's addresses:
/// the last list is kept in the store. With a store that has none and without the API, nobody
/// is let in (fail closed) and the 403 says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_the_api_unreachable_keeps_the_last_list() {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    // This test's own address is on "WeChat's" list, so the binary can be called directly.
    let api = FakeWechatApi::start(RECEIVE_ID, &["127.0.0.1", "101.226.103.0/25"]).await;
    let target = Target::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let write = |dir: &std::path::Path, base: &str| {
        let lines = format!(
            "allowed_sources = [\"wechat\"]\napp_secret = \"{APP_SECRET}\"\nwechat_api_base = \"{base}\""
        );
        write_binary_config(
            dir,
            listen,
            &format!(
                "{}{}",
                wx.account("main", &lines),
                Wx::target("t", &target.url("/t"), "")
            ),
        )
    };
    let config = write(dir.path(), &api.base());
    let log = dir.path().join("serve.log");
    let mut binary = Binary::serve(&config, listen, &log).await;
    eventually_async("WeChat's list is fetched", || async {
        (post_to_binary(listen, &wx.seal(&text_xml("a"))).await.0 == 200).then_some(())
    })
    .await;
    binary.terminate();
    binary.wait_exit().await;
    // What the stopped binary left in its store (no API shows kept values), read as the next
    // start reads it: through the `Store` trait.
    let store = SqliteStore::open(&dir.path().join("fanout.db"), Synchronous::Full).unwrap();
    let kept = store.kept_value("wechat-callback-ips:main").await.unwrap();
    assert!(String::from_utf8_lossy(&kept.unwrap()).contains("101.226.103.0/25"));
    drop(store);

    // WeChat's API is gone.
    let down = format!("http://{}", free_addr());
    drop(api);
    let config = write(dir.path(), &down);
    let mut binary = Binary::serve(&config, listen, &log).await;
    let (status, body) = post_to_binary(listen, &wx.seal(&text_xml("b"))).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "success"),
        "{}",
        binary.log()
    );
    binary
        .wait_log("the fetch failed", |l| {
            l.contains("could not fetch WeChat's callback IP list")
                && l.contains("loaded from the last fetch")
        })
        .await;
    binary.terminate();
    binary.wait_exit().await;

    // A store that has kept no list.
    let fresh = tempfile::tempdir().unwrap();
    let config = write(fresh.path(), &down);
    let mut binary = Binary::serve(&config, listen, &log).await;
    let (status, body) = post_to_binary(listen, &wx.seal(&text_xml("c"))).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("WeChat's callback IP list is not known yet"),
        "{body}"
    );
    binary.terminate();
    binary.wait_exit().await;
}
