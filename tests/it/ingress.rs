//! The WeChat-facing side: which callbacks are accepted, what WeChat gets back, and that what a
//! target receives is the callback exactly as WeChat sent it.

use std::collections::HashSet;

use reqwest::Method;
use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use crate::support::{
    FAST, Proxy, Target, Wx, chunked, event_xml, no_jobs_left, raw_http, raw_post_head, settle,
    text_json, text_xml,
};

/// Every kind of account in every mode it can be configured in, and both body formats of mini
/// programs: each callback is answered `success`, and its target gets the same body bytes, the
/// same raw query string (so its own WeChat SDK can check the signatures), the original
/// Content-Type, and the headers that name the delivery, the attempt and the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_and_mode_reaches_its_target_byte_for_byte() {
    let target = Target::start(200).await;
    let accounts = [
        ("oa_plain", Wx::new(Kind::OfficialAccount, Mode::Plaintext)),
        (
            "oa_compat",
            Wx::new(Kind::OfficialAccount, Mode::Compatible),
        ),
        ("oa_safe", Wx::new(Kind::OfficialAccount, Mode::Safe)),
        ("mp_plain", Wx::new(Kind::MiniProgram, Mode::Plaintext)),
        ("mp_compat", Wx::new(Kind::MiniProgram, Mode::Compatible)),
        ("mp_safe", Wx::new(Kind::MiniProgram, Mode::Safe)),
        ("wecom", Wx::new(Kind::WeCom, Mode::Safe)),
    ];
    let mut toml = FAST.to_owned();
    for (id, wx) in &accounts {
        toml += &wx.account(id, "");
        toml += &Wx::target("t", &target.url(&format!("/hook/{id}")), "");
    }
    let proxy = Proxy::start(&toml).await;

    // (account, query as sent, content type as sent, body as sent)
    let mut sent = Vec::new();
    for (id, wx) in &accounts {
        let mut messages = vec![text_xml("你好, <b>&amp; ]] 世界")];
        if wx.kind == Kind::MiniProgram {
            messages.push(text_json("小程序 \"json\" \\u00e9"));
        }
        for message in messages {
            let sealed = wx.seal(&message);
            // A Content-Type with parameters and odd case, and a parameter the proxy does not
            // know with percent-escapes and a '+': all of it must reach the target unchanged.
            let content_type = if *id == "oa_plain" {
                "text/XML;Charset=UTF-8".to_owned()
            } else {
                sealed.content_type.to_owned()
            };
            let query = if *id == "oa_plain" {
                format!("{}&x=%E4%BD%A0+%2b%20", sealed.query)
            } else {
                sealed.query.clone()
            };
            let answer = proxy
                .post_raw(id, &query, &content_type, sealed.body.clone())
                .await;
            answer.assert_success();
            sent.push((*id, query, content_type, sealed.body));
        }
    }

    let received = target.wait_for(sent.len()).await;
    settle().await;
    assert_eq!(target.count(), sent.len(), "one delivery per callback");
    let mut deliveries = HashSet::new();
    for (id, query, content_type, body) in &sent {
        let got = received
            .iter()
            .find(|r| r.body == body.as_bytes())
            .unwrap_or_else(|| panic!("{id}: body never arrived byte for byte: {body}"));
        assert_eq!(got.method, "POST", "{id}");
        assert_eq!(got.path_and_query, format!("/hook/{id}?{query}"), "{id}");
        assert_eq!(
            got.header("content-type"),
            Some(content_type.as_str()),
            "{id}"
        );
        assert_eq!(got.header("x-wechat-fanout-account"), Some(*id), "{id}");
        assert_eq!(got.attempt(), 1, "{id}");
        assert!(
            deliveries.insert(got.delivery()),
            "{id}: delivery ids are distinct"
        );
    }
}

/// The GET handshake of official accounts and mini programs echoes `echostr` exactly, in every
/// mode, and only when `signature` is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_echoes_echostr_only_with_a_good_signature() {
    let accounts = [
        ("oa", Wx::new(Kind::OfficialAccount, Mode::Plaintext)),
        ("oa_safe", Wx::new(Kind::OfficialAccount, Mode::Safe)),
        ("mp", Wx::new(Kind::MiniProgram, Mode::Compatible)),
    ];
    let mut toml = FAST.to_owned();
    for (id, wx) in &accounts {
        toml += &wx.account(id, "");
    }
    let proxy = Proxy::start(&toml).await;
    for (id, wx) in &accounts {
        let answer = proxy
            .get(id, &wx.handshake("4375120948345356249", true))
            .await;
        assert_eq!(answer.status, 200, "{id}: {answer:?}");
        assert_eq!(&answer.body[..], b"4375120948345356249", "{id}");

        let forged = proxy
            .get(id, &wx.handshake("4375120948345356249", false))
            .await;
        assert_eq!(forged.status, 401, "{id}: {forged:?}");
        assert!(forged.text().contains("signature"), "{id}: {forged:?}");
        assert!(!forged.text().contains("4375120948345356249"), "{id}");
    }
}

/// WeCom encrypts `echostr` and wants the plaintext back: exactly those bytes, with no quotes,
/// no newline, nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wecom_handshake_answers_the_decrypted_echostr_exactly() {
    let wx = Wx::new(Kind::WeCom, Mode::Safe);
    let proxy = Proxy::start(&format!("{FAST}{}", wx.account("work", ""))).await;

    let answer = proxy
        .get("work", &wx.handshake("1616140317555161061", true))
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(&answer.body[..], b"1616140317555161061");

    let forged = proxy
        .get("work", &wx.handshake("1616140317555161061", false))
        .await;
    assert_eq!(forged.status, 401, "{forged:?}");
    assert!(forged.text().contains("msg_signature"), "{forged:?}");
}

/// A forged signature (plaintext) and a tampered `Encrypt` (safe mode) get 401 with the reason,
/// and nothing reaches any target: a valid callback sent afterwards is the only delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_tampered_callbacks_get_401_and_reach_no_target() {
    let target = Target::start(200).await;
    let plain = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let safe = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let toml = format!(
        "{FAST}{}{}{}{}",
        plain.account("plain", ""),
        Wx::target("t", &target.url("/plain"), ""),
        safe.account("safe", ""),
        Wx::target("t", &target.url("/safe"), ""),
    );
    let proxy = Proxy::start(&toml).await;

    let sealed = plain.seal(&text_xml("forged"));
    let forged_query = sealed.query.replacen("signature=", "signature=0", 1);
    let forged = proxy
        .post_raw("plain", &forged_query, "text/xml", sealed.body.clone())
        .await;
    assert_eq!(forged.status, 401, "{forged:?}");
    assert!(
        forged.text().contains("signature does not match"),
        "{forged:?}"
    );

    let sealed = safe.seal(&text_xml("tampered"));
    let start = sealed
        .body
        .find("<Encrypt><![CDATA[")
        .expect("an Encrypt element")
        + 30;
    let flipped = if &sealed.body[start..=start] == "A" {
        "B"
    } else {
        "A"
    };
    let tampered = format!(
        "{}{flipped}{}",
        &sealed.body[..start],
        &sealed.body[start + 1..]
    );
    let answer = proxy
        .post_raw("safe", &sealed.query, "text/xml", tampered)
        .await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(
        answer.text().contains("msg_signature does not match"),
        "{answer:?}"
    );

    // The pipeline is live: a valid callback arrives, and it is the only thing that does.
    let canary = safe.seal(&text_xml("canary"));
    proxy.post("safe", &canary).await.assert_success();
    target.wait_for(1).await;
    settle().await;
    let received = target.received();
    assert_eq!(received.len(), 1, "only the valid callback: {received:?}");
    assert_eq!(received[0].body, canary.body.as_bytes());
}

/// An unknown account is 404; a method other than GET/POST is 405 with `Allow`; XML that does
/// not parse is 400 even when its signature is good. None of them is stored or delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_account_wrong_method_and_malformed_xml_are_refused() {
    let target = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}",
        wx.account("main", ""),
        Wx::target("t", &target.url("/t"), "")
    );
    let proxy = Proxy::start(&toml).await;

    let sealed = wx.seal(&text_xml("to nobody"));
    let unknown = proxy.post("nobody", &sealed).await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert!(unknown.text().contains("no such account"), "{unknown:?}");

    let put = proxy
        .request(Method::PUT, &format!("/wechat/main?{}", sealed.query))
        .await;
    assert_eq!(put.status, 405, "{put:?}");
    let allow = put.header("allow").unwrap_or_default().to_owned();
    assert!(
        allow.contains("GET") && allow.contains("POST"),
        "Allow: {allow:?}"
    );

    // The plaintext signature covers token, timestamp and nonce only, so it is valid here.
    let malformed = wx.seal("<xml><MsgType><![CDATA[text]]></MsgType><MsgId>1</MsgId>");
    let answer = proxy.post("main", &malformed).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(answer.text().contains("XML"), "{answer:?}");

    settle().await;
    assert_eq!(target.count(), 0, "{:?}", target.received());
    assert_eq!(
        crate::support::callbacks(&proxy.store()).await,
        0,
        "nothing stored"
    );
}

/// A body over `server.max_body_bytes` is 413 whether its size is declared (Content-Length) or
/// only discovered while reading (chunked), and is not delivered; a chunked body under the limit
/// is accepted like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_get_413_with_content_length_and_chunked() {
    let target = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let toml = format!(
        "{FAST}[server]\nmax_body_bytes = 1024\n{}{}",
        wx.account("main", ""),
        Wx::target("t", &target.url("/t"), "")
    );
    let proxy = Proxy::start(&toml).await;
    let big = wx.seal(&text_xml(&"x".repeat(1500)));
    assert!(big.body.len() > 1024);

    let declared = proxy.post("main", &big).await;
    assert_eq!(declared.status, 413, "{declared:?}");
    assert!(declared.text().contains("1024"), "{declared:?}");

    let request = |sealed: &wechat_fanout::wechat::SealedRequest| {
        let mut bytes = raw_post_head(
            &sealed.query,
            "Content-Type: text/xml\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        );
        bytes.extend(chunked(sealed.body.as_bytes(), 300));
        bytes
    };
    let (status, text) = raw_http(proxy.addr, &request(&big)).await;
    assert_eq!(status, 413, "{text}");

    let small = wx.seal(&text_xml("small"));
    let (status, text) = raw_http(proxy.addr, &request(&small)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("success"), "{text}");

    target.wait_for(1).await;
    settle().await;
    let received = target.received();
    assert_eq!(received.len(), 1, "only the small body: {received:?}");
    assert_eq!(received[0].body, small.body.as_bytes());
}

/// Filters see inside encrypted bodies: in safe mode `MsgType` and `Event` exist only in the
/// ciphertext, yet a target that wants only `subscribe` events gets exactly those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_route_by_msg_type_and_event_inside_encrypted_bodies() {
    let everything = Target::start(200).await;
    let subscribers = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let toml = format!(
        "{FAST}{}{}{}",
        wx.account("main", ""),
        Wx::target("all", &everything.url("/all"), ""),
        Wx::target(
            "subs",
            &subscribers.url("/subs"),
            "msg_types = [\"event\"]\nevents = [\"subscribe\"]"
        ),
    );
    let proxy = Proxy::start(&toml).await;

    let subscribe = wx.seal(&event_xml("subscribe", ""));
    let text = wx.seal(&text_xml("subscribe"));
    let click = wx.seal(&event_xml("CLICK", "subscribe"));
    for sealed in [&subscribe, &text, &click] {
        assert!(!sealed.body.contains("MsgType"), "safe mode hides the type");
        proxy.post("main", sealed).await.assert_success();
    }

    everything.wait_for(3).await;
    subscribers.wait_for(1).await;
    settle().await;
    let got = subscribers.received();
    assert_eq!(got.len(), 1, "only the subscribe event: {got:?}");
    assert_eq!(got[0].body, subscribe.body.as_bytes());
    assert_eq!(everything.count(), 3);
    no_jobs_left(&proxy.store(), "all jobs delivered").await;
}

/// Slowloris: a client that sends its headers or its body a trickle at a time is cut off after
/// the configured read timeouts, and what it sent is never stored or delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_slow_bodies_are_cut_off_and_nothing_is_stored() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let target = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}[server]\nheader_read_timeout_ms = 300\nbody_read_timeout_ms = 300\n{}{}",
        wx.account("main", ""),
        Wx::target("t", &target.url("/t"), "")
    );
    let proxy = Proxy::start(&toml).await;
    let sealed = wx.seal(&text_xml("slow"));

    // Headers never finished: the connection is closed without an answer to act on.
    let started = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(&raw_post_head(&sealed.query, ""))
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        slow.read_to_end(&mut answer),
    )
    .await
    .expect("the proxy closes a connection whose headers never end")
    .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains(" 200 "), "{answer}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));

    // Headers complete, body declared but never finished: 408 with the reason.
    let mut partial = raw_post_head(
        &sealed.query,
        &format!(
            "Content-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
            sealed.body.len()
        ),
    );
    partial.extend_from_slice(&sealed.body.as_bytes()[..sealed.body.len() / 2]);
    let (status, text) = raw_http(proxy.addr, &partial).await;
    assert_eq!(status, 408, "{text}");

    // The same callback sent properly afterwards is accepted: nothing of the slow ones was kept.
    proxy.post("main", &sealed).await.assert_success();
    let got = target.wait_for(1).await;
    assert_eq!(got[0].body, sealed.body.as_bytes());
    settle().await;
    assert_eq!(target.count(), 1);
    assert_eq!(crate::support::callbacks(&proxy.store()).await, 1);
}
