//! Tests of `simulate`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;
use crate::wechat::{
    CallbackQuery, Envelope, Format, Sealed, msg_signature, open_callback, verify_url,
};

const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const TOKEN: &str = "simulate-test-token";
const CORP_ID: &str = "ww5823bf96d3bd56c7";

fn config() -> Config {
    Config::from_toml(&format!(
        r#"
        [[accounts]]
        id = "oa"
        kind = "official_account"
        token = "{TOKEN}"
        app_id = "wx5823bf96d3bd56c7"
        encoding_aes_key = "{KEY}"
        mode = "safe"
        [[accounts]]
        id = "plain"
        kind = "official_account"
        token = "{TOKEN}"
        [[accounts]]
        id = "mp"
        kind = "mini_program"
        token = "{TOKEN}"
        app_id = "wx1111111111111111"
        encoding_aes_key = "{KEY}"
        mode = "compatible"
        [[accounts]]
        id = "wecom"
        kind = "wecom"
        token = "{TOKEN}"
        app_id = "{CORP_ID}"
        encoding_aes_key = "{KEY}"
        mode = "safe"
        "#
    ))
    .unwrap()
}

fn credentials(id: &str) -> Credentials {
    let config = config();
    let account = config.accounts.iter().find(|a| a.id == id).unwrap();
    crate::routing::credentials(account, "test").unwrap()
}

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: SimulateArgs,
}

fn args(flags: &[&str]) -> SimulateArgs {
    Cli::try_parse_from(std::iter::once("simulate").chain(flags.iter().copied()))
        .unwrap()
        .args
}

/// What the in-test server received.
#[derive(Debug, Clone)]
struct Seen {
    method: http::Method,
    query: String,
    content_type: Option<String>,
    body: Bytes,
}

type Answer = (u16, &'static str, String);

/// A tiny HTTP/1.1 server on 127.0.0.1:0 that answers every request with `handler`.
async fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let handler = handler.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let seen = Seen {
                        method: parts.method,
                        query: parts.uri.query().unwrap_or("").to_owned(),
                        content_type: parts
                            .headers
                            .get(CONTENT_TYPE)
                            .map(|v| v.to_str().unwrap().to_owned()),
                        body: body.collect().await.unwrap().to_bytes(),
                    };
                    let (status, content_type, answer) = handler(&seen);
                    let response = hyper::Response::builder()
                        .status(status)
                        .header(CONTENT_TYPE, content_type)
                        .body(Full::new(Bytes::from(answer)))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    addr
}

/// Opens the callback the way the proxy does; 403 with the reason if it does not verify.
fn open_or_reject(credentials: &Credentials, seen: &Seen) -> Result<Envelope, Answer> {
    let query = CallbackQuery::parse(&seen.query).unwrap();
    open_callback(credentials, &query, &seen.body)
        .map(|opened| opened.envelope)
        .map_err(|e| (403, "text/plain", e.to_string()))
}

async fn simulate(id: &str, addr: SocketAddr, extra: &[&str]) -> (bool, String) {
    let url = format!("http://{addr}/wechat/{id}");
    let mut flags = vec!["--account", id, "--url", &url];
    flags.extend_from_slice(extra);
    let mut out = Vec::new();
    let ok = run(&config(), &args(&flags), &mut out).await.unwrap();
    let printed = String::from_utf8(out).unwrap();
    assert!(
        !printed.contains(TOKEN) && !printed.contains(KEY),
        "{printed}"
    );
    (ok, printed)
}

/// A passive reply encrypted and signed the way a downstream SDK does it.
fn encrypted_reply_to(credentials: &Credentials, plain: &str, json: bool) -> String {
    let key = credentials.security.key().unwrap();
    let encrypt = key.encrypt(plain.as_bytes(), &credentials.receive_id, rand::random());
    let sig = msg_signature(&credentials.token, "1714037059", "415670741", &encrypt);
    let sealed = Sealed {
        encrypt: &encrypt,
        msg_signature: sig.as_str(),
        timestamp: "1714037059",
        nonce: "415670741",
    };
    if json {
        sealed.reply_json()
    } else {
        sealed.reply_xml()
    }
}

#[test]
fn messages_parse_back_for_every_kind_and_format() {
    let text = Action::Text {
        content: "hi ]]> there",
        msg_id: 42,
    };
    let click = Action::Event {
        name: "CLICK",
        key: Some("V1001_TODAY"),
    };
    let subscribe = Action::Event {
        name: "subscribe",
        key: None,
    };
    let cases = [
        (FAKE_ORIGINAL_ID, None, text, BodyFormat::Xml),
        (FAKE_ORIGINAL_ID, None, click, BodyFormat::Xml),
        (FAKE_ORIGINAL_ID, None, text, BodyFormat::Json),
        (FAKE_ORIGINAL_ID, None, click, BodyFormat::Json),
        (FAKE_ORIGINAL_ID, None, subscribe, BodyFormat::Json),
        (CORP_ID, Some("1000002"), text, BodyFormat::Xml),
        (CORP_ID, Some("1000002"), subscribe, BodyFormat::Xml),
    ];
    for (to, agent_id, action, format) in cases {
        let message = Message {
            to,
            from: FAKE_OPENID,
            create_time: 1714037059,
            action,
            agent_id,
        };
        let body = match format {
            BodyFormat::Xml => message.xml(),
            BodyFormat::Json => message.json(),
        };
        let env = Envelope::parse(body.as_bytes()).unwrap_or_else(|e| panic!("{e}: {body}"));
        let expected_format = match format {
            BodyFormat::Xml => Format::Xml,
            BodyFormat::Json => Format::Json,
        };
        assert_eq!(env.format, expected_format, "{body}");
        assert_eq!(env.to_user_name.as_deref(), Some(to));
        assert_eq!(env.from_user_name.as_deref(), Some(FAKE_OPENID));
        assert_eq!(env.create_time.as_deref(), Some("1714037059"));
        assert_eq!(env.agent_id.as_deref(), agent_id);
        assert!(env.encrypt.is_none());
        match action {
            Action::Text { .. } => {
                assert!(env.is_msg_type("text"));
                assert_eq!(env.msg_id.as_deref(), Some("42"));
                assert_eq!(env.event, None);
            }
            Action::Event { name, key } => {
                assert!(env.is_event(name), "{body}");
                assert_eq!(env.event_key.as_deref(), key);
                assert_eq!(env.msg_id, None, "events carry no MsgId");
            }
        }
    }
    let xml = Message {
        to: FAKE_ORIGINAL_ID,
        from: FAKE_OPENID,
        create_time: 1,
        action: text,
        agent_id: None,
    }
    .xml();
    assert!(xml.contains("<Content><![CDATA[hi ]]]]><![CDATA[> there]]></Content>"));
    assert!(xml.contains("<CreateTime>1</CreateTime>") && xml.contains("<MsgId>42</MsgId>"));
}

#[test]
fn flags_parse_and_conflict() {
    use clap::CommandFactory as _;
    Cli::command().debug_assert();
    let a = args(&["--account", "oa"]);
    assert_eq!(
        (a.format, a.agent_id, a.verify_url),
        (BodyFormat::Xml, 1000002, false)
    );
    let a = args(&[
        "--account",
        "mp",
        "--event",
        "CLICK",
        "--event-key",
        "k",
        "--format",
        "json",
    ]);
    assert_eq!(
        (a.event.as_deref(), a.event_key.as_deref()),
        (Some("CLICK"), Some("k"))
    );
    for bad in [
        &["--account", "oa", "--text", "x", "--event", "subscribe"][..],
        &["--account", "oa", "--event-key", "k"],
        &["--account", "oa", "--event", "CLICK", "--msg-id", "1"],
        &["--account", "oa", "--verify-url", "--text", "x"],
        &["--account", "oa", "--format", "yaml"],
        &["--text", "x"],
    ] {
        assert!(
            Cli::try_parse_from(std::iter::once("s").chain(bad.iter().copied())).is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn default_url_reaches_a_wildcard_listen_on_loopback() {
    let url = |listen: &str| {
        default_url(listen.parse().unwrap(), "main")
            .unwrap()
            .to_string()
    };
    assert_eq!(url("0.0.0.0:8080"), "http://127.0.0.1:8080/wechat/main");
    assert_eq!(url("[::]:80"), "http://[::1]/wechat/main");
    assert_eq!(url("10.1.2.3:9000"), "http://10.1.2.3:9000/wechat/main");
}

#[test]
fn printed_urls_leave_out_signature_values() {
    let url = Url::parse("http://h/wechat/a?x=1").unwrap();
    let full = with_query(
        &url,
        "signature=abc&timestamp=1&msg_signature=def&echostr=a%2Bb",
    )
    .unwrap();
    assert_eq!(
        shown(&full),
        "http://h/wechat/a?x=1&signature=…&timestamp=1&msg_signature=…&echostr=a%2Bb"
    );
}

#[test]
fn reply_fields_from_xml_and_json() {
    let sealed = Sealed {
        encrypt: "ab+/=",
        msg_signature: "sig",
        timestamp: "1713424427",
        nonce: "415670741",
    };
    let pairs = |fields: Vec<(String, String)>| {
        let mut fields: Vec<_> = (fields.into_iter())
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        fields.sort();
        fields
    };
    let expected = pairs(vec![
        ("Encrypt".into(), "ab+/=".into()),
        ("MsgSignature".into(), "sig".into()),
        ("Nonce".into(), "415670741".into()),
        ("TimeStamp".into(), "1713424427".into()),
    ]);
    let bot =
        br#"{"encrypt":"ab+/=","msgsignature":"sig","timestamp":1713424427,"nonce":"415670741"}"#;
    for body in [
        sealed.reply_xml(),
        sealed.reply_json(),
        String::from_utf8_lossy(bot).into(),
    ] {
        assert_eq!(
            encrypted_reply(body.as_bytes()).map(pairs),
            Some(expected.clone()),
            "{body}"
        );
    }
    for clear in [
        &b"success"[..],
        b"",
        b"<xml><Content>hi</Content></xml>",
        b"{\"a\":1}",
        b"<xml>",
    ] {
        assert_eq!(encrypted_reply(clear), None);
    }
    let partial: Vec<(String, String)> =
        [("Encrypt", "x"), ("MsgSignature", "s"), ("TimeStamp", "1")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
    let e = open_signed_reply(&credentials("oa"), &partial).unwrap_err();
    assert_eq!(e.to_string(), "the reply has Encrypt but no Nonce");
}

#[tokio::test]
async fn posts_a_callback_the_proxy_can_open_and_reads_success() {
    let creds = credentials("oa");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = start(move |seen| {
        let _ = tx.send(seen.clone());
        match open_or_reject(&creds, seen) {
            Ok(_) => (200, "text/plain", "success".into()),
            Err(rejected) => rejected,
        }
    })
    .await;
    let (ok, printed) = simulate("oa", addr, &["--text", "ping", "--msg-id", "7"]).await;
    assert!(ok, "{printed}");
    assert!(
        printed.contains("account   oa (official_account, safe mode)"),
        "{printed}"
    );
    assert!(
        printed.contains("message   text, MsgId 7\n<xml>"),
        "{printed}"
    );
    assert!(
        printed.contains("signature=…") && printed.contains("status    200 OK"),
        "{printed}"
    );
    assert!(
        printed.contains("\nsuccess\n") && printed.ends_with("result    OK\n"),
        "{printed}"
    );

    let seen = rx.recv().await.unwrap();
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(seen.content_type.as_deref(), Some("text/xml"));
    assert!(
        seen.query
            .contains("&openid=oSIMULATED-wechat-fanout-000&encrypt_type=aes&")
    );
    let opened = open_callback(
        &credentials("oa"),
        &CallbackQuery::parse(&seen.query).unwrap(),
        &seen.body,
    )
    .unwrap();
    assert_eq!(opened.envelope.msg_id.as_deref(), Some("7"));
    assert_eq!(
        opened.envelope.to_user_name.as_deref(),
        Some(FAKE_ORIGINAL_ID)
    );
}

#[tokio::test]
async fn decrypts_an_encrypted_xml_reply_from_wecom() {
    let creds = credentials("wecom");
    let addr = start(move |seen| match open_or_reject(&creds, seen) {
        Ok(env) if env.agent_id.as_deref() == Some("1000002") && env.is_event("CLICK") => {
            let reply =
                "<xml><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[pong]]></Content></xml>";
            (
                200,
                "application/xml",
                encrypted_reply_to(&creds, reply, false),
            )
        }
        Ok(env) => (400, "text/plain", format!("unexpected {env:?}")),
        Err(rejected) => rejected,
    })
    .await;
    let (ok, printed) = simulate("wecom", addr, &["--event", "CLICK", "--event-key", "menu"]).await;
    assert!(ok, "{printed}");
    assert!(printed.contains("message   event CLICK\n"), "{printed}");
    assert!(
        printed.contains("decrypted reply (MsgSignature verified):\n<xml><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[pong]]></Content></xml>\n"),
        "{printed}"
    );
}

#[tokio::test]
async fn decrypts_an_encrypted_json_reply_for_a_json_mini_program() {
    let creds = credentials("mp");
    let addr = start(move |seen| match open_or_reject(&creds, seen) {
        Ok(env) if env.format == Format::Json && env.is_msg_type("text") => (
            200,
            "application/json",
            encrypted_reply_to(&creds, r#"{"ok":true}"#, true),
        ),
        Ok(env) => (400, "text/plain", format!("unexpected {env:?}")),
        Err(rejected) => rejected,
    })
    .await;
    let (ok, printed) = simulate("mp", addr, &["--format", "json"]).await;
    assert!(ok, "{printed}");
    assert!(printed.contains("sent      application/json"), "{printed}");
    assert!(printed.contains(DEFAULT_TEXT), "{printed}");
    assert!(
        printed.contains("(MsgSignature verified):\n{\"ok\":true}\n"),
        "{printed}"
    );
}

#[tokio::test]
async fn a_reply_signed_with_another_token_fails() {
    let mut other = credentials("oa");
    other.token = "another-token".into();
    let addr = start(move |_| (200, "text/xml", encrypted_reply_to(&other, "<xml/>", false))).await;
    let (ok, printed) = simulate("oa", addr, &[]).await;
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("encrypted reply REJECTED: MsgSignature does not match"),
        "{printed}"
    );
    assert!(printed.ends_with("result    FAILED\n"), "{printed}");
}

#[tokio::test]
async fn a_rejection_is_reported_and_fails() {
    let addr = start(|_| (403, "text/plain", "signature does not match\n".into())).await;
    let (ok, printed) = simulate("plain", addr, &[]).await;
    assert!(!ok);
    assert!(
        printed.contains("status    403 Forbidden") && printed.contains("signature does not match")
    );
}

#[tokio::test]
async fn url_handshakes_for_an_official_account_and_wecom() {
    for id in ["oa", "wecom"] {
        let creds = credentials(id);
        let addr = start(move |seen| {
            assert_eq!(seen.method, http::Method::GET);
            match verify_url(&creds, &CallbackQuery::parse(&seen.query).unwrap()) {
                Ok(echo) => (200, "text/plain", String::from_utf8(echo).unwrap()),
                Err(e) => (403, "text/plain", e.to_string()),
            }
        })
        .await;
        let (ok, printed) = simulate(id, addr, &["--verify-url"]).await;
        assert!(ok, "{printed}");
        assert!(
            printed.contains("GET       http://") && printed.contains("signature=…"),
            "{printed}"
        );
        assert!(
            printed.ends_with("result    OK: the answer is the echostr plaintext\n"),
            "{printed}"
        );
    }
}

#[tokio::test]
async fn a_handshake_answer_that_is_not_exactly_the_echostr_fails() {
    let creds = credentials("oa");
    // The classic mistake: the framework JSON-encodes the string.
    let addr = start(move |seen| {
        let echo = verify_url(&creds, &CallbackQuery::parse(&seen.query).unwrap()).unwrap();
        (
            200,
            "application/json",
            format!("\"{}\"", String::from_utf8(echo).unwrap()),
        )
    })
    .await;
    let (ok, printed) = simulate("oa", addr, &["--verify-url"]).await;
    assert!(!ok);
    assert!(
        printed.contains("result    FAILED: expected 200 with exactly"),
        "{printed}"
    );
}

#[tokio::test]
async fn connection_refused_is_an_error_naming_the_url() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}/wechat/oa");
    let mut out = Vec::new();
    let e = run(
        &config(),
        &args(&["--account", "oa", "--url", &url]),
        &mut out,
    )
    .await
    .unwrap_err();
    let message = format!("{e:#}");
    assert!(
        message.starts_with(&format!("posting to {url}:")),
        "{message}"
    );
    assert!(!message.contains("signature"), "{message}");
}

#[tokio::test]
async fn unknown_accounts_and_misplaced_json_are_refused() {
    let mut out = Vec::new();
    let e = run(&config(), &args(&["--account", "nope"]), &mut out)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "no account \"nope\" in the config; configured: oa, plain, mp, wecom"
    );
    let e = run(
        &config(),
        &args(&["--account", "oa", "--format", "json"]),
        &mut out,
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("--format json: only mini programs"),
        "{e}"
    );
    assert!(out.is_empty());
}
