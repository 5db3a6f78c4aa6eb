//! A third-party platform (第三方平台, `kind = "open_platform"`): its authorization-event URL
//! (`/wechat/{id}`: a `component_verify_ticket` every ten minutes, `authorized`, …) and its
//! message URL for the accounts that authorized it (`/wechat/{id}/{authorizer_appid}`, what the
//! console's `$APPID$` becomes), both decrypted with the component's key and app id, deduped,
//! and fanned out byte-identical to targets filtered by `info_types` and `authorizers`, which
//! get the authorizer in their URL (`{authorizer}`) and in a header.

use wechat_fanout::config::Mode;
use wechat_fanout::wechat::{Kind, SealedRequest, msg_signature, signature};

use crate::support::wx::{RECEIVE_ID, TOKEN, unique};
use crate::support::{FAST, Proxy, Target, Wx, callbacks, settle, text_xml};

const AUTHORIZER_A: &str = "wxaaaaaaaaaaaaaaa1";
const AUTHORIZER_B: &str = "wxbbbbbbbbbbbbbbb2";

/// An authorization event as WeChat pushes it to the component: `<AppId>` and `<Encrypt>`
/// outside, signed with `signature` and `msg_signature`; encrypted afresh on every call.
fn authorization_event(wx: &Wx, inner: &str) -> SealedRequest {
    let key = wx.credentials.security.key().unwrap();
    let encrypt = key.encrypt(inner.as_bytes(), RECEIVE_ID, rand::random());
    let (timestamp, nonce) = (now().to_string(), unique().to_string());
    let query = format!(
        "signature={}&timestamp={timestamp}&nonce={nonce}&encrypt_type=aes&msg_signature={}",
        signature(TOKEN, &timestamp, &nonce),
        msg_signature(TOKEN, &timestamp, &nonce, &encrypt)
    );
    SealedRequest {
        query,
        body: format!(
            "<xml><AppId><![CDATA[{RECEIVE_ID}]]></AppId><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        ),
        content_type: "text/xml",
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn ticket(create_time: u64) -> String {
    format!(
        "<xml><AppId>{RECEIVE_ID}</AppId><CreateTime>{create_time}</CreateTime>\
         <InfoType>component_verify_ticket</InfoType>\
         <ComponentVerifyTicket>ticket@@@{create_time}</ComponentVerifyTicket></xml>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_platforms_two_urls_reach_the_targets_that_want_them() {
    let wx = Wx::new(Kind::OpenPlatform, Mode::Safe);
    let tickets = Target::start(200).await;
    let auth = Target::start(200).await;
    let svc = Target::start(200).await;
    let all = Target::start_sdk(wx.credentials.clone()).await;
    let proxy = Proxy::start(&format!(
        "{FAST}{}{}{}{}{}",
        wx.account("op", ""),
        Wx::target(
            "tickets",
            &tickets.url("/ticket"),
            "info_types = [\"component_verify_ticket\"]"
        ),
        Wx::target(
            "auth",
            &auth.url("/auth"),
            "info_types = [\"authorized\", \"updateauthorized\", \"unauthorized\"]"
        ),
        Wx::target(
            "svc",
            &svc.url("/wx/{authorizer}"),
            &format!("authorizers = [\"{AUTHORIZER_A}\"]")
        ),
        Wx::target("all", &all.url("/all"), ""),
    ))
    .await;

    // The ticket, WeChat's resend of it, and the same push encrypted afresh: one callback.
    let created = now();
    let push = authorization_event(&wx, &ticket(created));
    proxy.post("op", &push).await.assert_success();
    proxy.post("op", &push).await.assert_success();
    proxy
        .post("op", &authorization_event(&wx, &ticket(created)))
        .await
        .assert_success();
    // A's authorization.
    let authorized = format!(
        "<xml><AppId>{RECEIVE_ID}</AppId><CreateTime>{created}</CreateTime>\
         <InfoType>authorized</InfoType><AuthorizerAppid>{AUTHORIZER_A}</AuthorizerAppid>\
         <AuthorizationCode>code@@@1</AuthorizationCode></xml>"
    );
    let authorized = authorization_event(&wx, &authorized);
    proxy.post("op", &authorized).await.assert_success();
    // A user writes to A, and (the same sender, the same MsgId) to B: two callbacks.
    let message = text_xml("hello A and B");
    let to_a = wx.seal(&message);
    let to_b = wx.seal(&message);
    proxy
        .post(&format!("op/{AUTHORIZER_A}"), &to_a)
        .await
        .assert_success();
    proxy
        .post(&format!("op/{AUTHORIZER_A}"), &to_a)
        .await
        .assert_success();
    proxy
        .post(&format!("op/{AUTHORIZER_B}"), &to_b)
        .await
        .assert_success();
    assert_eq!(
        callbacks(&proxy.store()).await,
        4,
        "ticket, authorized, A's and B's message"
    );

    let got = tickets.wait_for(1).await;
    assert_eq!(got[0].body, push.body.as_bytes(), "byte-identical");
    assert_eq!(got[0].path_and_query, format!("/ticket?{}", push.query));
    assert_eq!(got[0].header("x-wechat-fanout-authorizer"), None);
    let got = auth.wait_for(1).await;
    assert_eq!(got[0].body, authorized.body.as_bytes());
    assert_eq!(
        got[0].header("x-wechat-fanout-authorizer"),
        Some(AUTHORIZER_A)
    );

    // svc: A's authorization and A's message, at A's path; never B's.
    let got = svc.wait_for(2).await;
    let mut paths: Vec<(String, Option<String>)> = got
        .iter()
        .map(|r| {
            (
                r.path_and_query.clone(),
                r.header("x-wechat-fanout-authorizer").map(str::to_owned),
            )
        })
        .collect();
    paths.sort();
    let mut expected = vec![
        (
            format!("/wx/{AUTHORIZER_A}?{}", authorized.query),
            Some(AUTHORIZER_A.to_owned()),
        ),
        (
            format!("/wx/{AUTHORIZER_A}?{}", to_a.query),
            Some(AUTHORIZER_A.to_owned()),
        ),
    ];
    expected.sort();
    assert_eq!(paths, expected);

    // all: everything once, each verified and decrypted by a stock SDK with the component's
    // credentials (the receive id is the component's app id).
    let got = all.wait_for(4).await;
    settle().await;
    assert_eq!(all.count(), 4);
    for received in &got {
        assert!(matches!(received.verified, Some(Ok(_))), "{received:?}");
    }
    let to_b_copy = got
        .iter()
        .find(|r| r.header("x-wechat-fanout-authorizer") == Some(AUTHORIZER_B))
        .expect("B's message");
    assert_eq!(to_b_copy.body, to_b.body.as_bytes());
    assert_eq!(to_b_copy.path_and_query, format!("/all?{}", to_b.query));
    assert_eq!(svc.count(), 2);
    assert_eq!(tickets.count(), 1);

    // The message URL exists only for open platforms, and only for an app id.
    let plain = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let other = Proxy::start(&format!(
        "{FAST}{}{}",
        plain.account("main", ""),
        Wx::target("t", &tickets.url("/t"), "")
    ))
    .await;
    let answer = other
        .post(&format!("main/{AUTHORIZER_A}"), &plain.seal(&text_xml("x")))
        .await;
    assert_eq!(answer.status, 404);
}

/// `simulate` plays both of an open platform's URLs: a ticket and an authorization at the
/// authorization-event URL, a message at the message URL; the proxy takes each, and the
/// targets get what they filter for, with the authorizer. Without `--authorizer` or
/// `--info-type` it says which is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_plays_both_urls_of_an_open_platform() {
    let wx = Wx::new(Kind::OpenPlatform, Mode::Safe);
    let tickets = Target::start(200).await;
    let svc = Target::start(200).await;
    let proxy = Proxy::start(&format!(
        "{FAST}{}{}{}",
        wx.account("op", ""),
        Wx::target(
            "tickets",
            &tickets.url("/ticket"),
            "info_types = [\"component_verify_ticket\"]"
        ),
        Wx::target("svc", &svc.url("/wx/{authorizer}"), ""),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = proxy.write_config(dir.path());
    let simulate = |args: &'static [&'static str]| {
        let config = config.clone();
        async move { crate::operate::run_command(&config, "simulate", args).await }
    };

    let ran = simulate(&["--account", "op", "--info-type", "component_verify_ticket"]).await;
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    assert!(
        ran.stdout
            .contains("authorization event component_verify_ticket"),
        "{ran:#?}"
    );
    assert!(ran.stdout.contains("/wechat/op?"), "{ran:#?}");
    let got = tickets.wait_for(1).await;
    assert!(String::from_utf8_lossy(&got[0].body).starts_with("<xml><AppId>"));

    let ran = simulate(&[
        "--account",
        "op",
        "--authorizer",
        AUTHORIZER_A,
        "--text",
        "hi",
    ])
    .await;
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    assert!(
        ran.stdout.contains(&format!("/wechat/op/{AUTHORIZER_A}?")),
        "{ran:#?}"
    );
    let ran = simulate(&[
        "--account",
        "op",
        "--info-type",
        "unauthorized",
        "--authorizer",
        AUTHORIZER_B,
    ])
    .await;
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    let got = svc.wait_for(2).await;
    let mut paths: Vec<&str> = got
        .iter()
        .map(|r| r.path_and_query.split('?').next().unwrap())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [format!("/wx/{AUTHORIZER_A}"), format!("/wx/{AUTHORIZER_B}")]
    );
    assert_eq!(callbacks(&proxy.store()).await, 3);
    settle().await;
    assert_eq!(
        tickets.count(),
        1,
        "the ticket only: {:?}",
        tickets.received()
    );
    assert_eq!(svc.count(), 2, "{:?}", svc.received());

    let ran = simulate(&["--account", "op"]).await;
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    assert!(ran.stderr.contains("--authorizer APPID"), "{ran:#?}");
    let ran = simulate(&["--account", "op", "--info-type", "authorized"]).await;
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    assert!(ran.stderr.contains("needs --authorizer"), "{ran:#?}");
    assert_eq!(
        callbacks(&proxy.store()).await,
        3,
        "nothing sent without what is needed"
    );
}
