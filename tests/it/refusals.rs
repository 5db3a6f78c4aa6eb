//! What the proxy refuses to protect its log and its targets, as an attacker probing it meets
//! it: caller bytes that try to forge log lines, parameter names spelled so that a target's
//! parser reads a second `signature`, stale timestamps (callbacks and the handshake), headers
//! that could not be forwarded as sent, and ambiguous JSON. Each refusal has its reason in the
//! answer, in the log and in a metric label; nothing refused is stored or delivered.

use std::net::SocketAddr;

use wechat_fanout::config::Mode;
use wechat_fanout::wechat::{Kind, SealParams, SealedRequest, seal_callback, signature};

use crate::operate::{post_to_binary, post_to_binary_account, write_binary_config};
use crate::support::scrape::Scrape;
use crate::support::wx::TOKEN;
use crate::support::{
    Binary, FAST, Proxy, Target, Wx, callbacks, client, free_addr, raw_http, settle, text_json,
    text_xml,
};

/// The probe's body: an undeclared entity whose name carries a newline and then a line that
/// looks exactly like one of the proxy's own.
const FORGED_LINE: &str = "2026-01-01T00:00:00.000000Z ERROR FORGED log line account=\"admin\";";

fn forged_body() -> String {
    format!("<xml><a>&x\n{FORGED_LINE}</a></xml>")
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// `message` signed for `wx` (plaintext) with this timestamp, as a captured request would be.
fn sealed_at(wx: &Wx, message: &str, timestamp: &str) -> SealedRequest {
    seal_callback(
        &wx.credentials,
        message,
        SealParams {
            timestamp,
            nonce: "415670741",
            random: rand::random(),
            openid: Some("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
            to_user_name: "gh_a6a3d5e8ae7e",
            agent_id: None,
        },
    )
}

/// A plaintext official account `main` delivering to `target`, served by the real binary with
/// the default settings (and `args`, e.g. `--log-format json`); the folder holds its config,
/// store and log.
async fn plaintext_binary(
    target: &Target,
    more_accounts: &str,
    args: &[&str],
) -> (tempfile::TempDir, SocketAddr, Binary) {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let accounts = format!(
        "{}{}{more_accounts}",
        wx.account("main", ""),
        Wx::target("t", &target.url("/t"), "")
    );
    let config = write_binary_config(dir.path(), listen, &accounts);
    let log = dir.path().join("serve.log");
    // The dedupe key carries caller bytes (a `MsgId`): shown as it is, so that the escaping of
    // what a caller sends is what these tests see (by default it is a keyed hash).
    let show = [("WECHAT_FANOUT_LOG__SHOW_USER_IDS", "true")];
    let mut binary = Binary::serve_with(&config, listen, &log, args, &show).await;
    binary.wait_listening().await;
    (dir, listen, binary)
}

/// `sealed` with another query or body, for the probes.
fn with(sealed: &SealedRequest, query: Option<String>, body: Option<String>) -> SealedRequest {
    SealedRequest {
        query: query.unwrap_or_else(|| sealed.query.clone()),
        body: body.unwrap_or_else(|| sealed.body.clone()),
        content_type: sealed.content_type,
    }
}

/// The probe, against the real binary in both log formats. A bad signature on a plaintext account
/// is refused before the body is parsed; a safe-mode account must parse the body to find its
/// `Encrypt`, and quotes a short, escaped excerpt of what it could not parse; a validly signed
/// plaintext callback (its signature does not cover the body) carries the forged line in its
/// `MsgId`, which the callback's log line escapes; an unknown account's path carries a NEL and a
/// bidi override; a query that does not parse and a method of the caller's own are refused
/// without quoting either. No line of the log is the forged one, every line is the proxy's own, and each
/// answer quotes at most a short excerpt with its newline escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_bytes_never_forge_a_log_line_in_either_log_format() {
    let target = Target::start(200).await;
    let plain = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let safe = Wx::new(Kind::OfficialAccount, Mode::Safe);
    for format in ["text", "json"] {
        let (_dir, listen, mut binary) = plaintext_binary(
            &target,
            &safe.account("safe", ""),
            &["--log-format", format],
        )
        .await;

        // A bad signature: 401, and the body was never parsed (its entity would be a 400).
        let sealed = plain.seal(&text_xml("probe"));
        let forged_query = sealed.query.replacen("signature=", "signature=0", 1);
        let probe = with(&sealed, Some(forged_query), Some(forged_body()));
        let (status, text) = post_to_binary(listen, &probe).await;
        assert_eq!(
            (status, text.as_str()),
            (401, "signature does not match\n"),
            "{format}"
        );

        // Safe mode reads the body to find `Encrypt`: a 400 quoting a short, escaped excerpt.
        let sealed = safe.seal(&text_xml("probe"));
        let probe = with(&sealed, None, Some(forged_body()));
        let (status, text) = post_to_binary_account(listen, "safe", &probe).await;
        assert_eq!(status, 400, "{format}: {text}");
        assert_eq!(text.lines().count(), 1, "{format}: one line: {text:?}");
        assert!(
            text.contains("&x\\n2026"),
            "{format}: the newline is escaped: {text:?}"
        );
        assert!(text.len() < 120, "{format}: a short excerpt: {text:?}");
        assert!(!text.contains("admin"), "{format}: cut short: {text:?}");

        // A valid plaintext signature does not cover the body: the forged line in `MsgId`.
        let injected = format!(
            "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName>\
             <MsgType><![CDATA[text]]></MsgType>\
             <MsgId>1\n{FORGED_LINE}\r\u{2028}\u{85}\u{1b}[2J</MsgId></xml>"
        );
        let (status, text) = post_to_binary(listen, &plain.seal(&injected)).await;
        assert_eq!((status, text.as_str()), (200, "success"), "{format}");

        // An unknown account whose path holds a NEL, a line separator and a bidi override.
        let request = "POST /wechat/x\u{85}FORGED\u{2028}y\u{202e} HTTP/1.1\r\nHost: wx\r\n\
                       Content-Length: 0\r\nConnection: close\r\n\r\n";
        let (status, _) = raw_http(listen, request.as_bytes()).await;
        assert_eq!(status, 404, "{format}");

        // A query that does not parse, with the forged line percent-encoded in a value, and a
        // method of the caller's choosing: the answers and log lines quote neither.
        let encoded = FORGED_LINE.replace(' ', "%20").replace('"', "%22");
        let query = format!("signature=%0A{encoded}&signature=x");
        let (status, text) = post_to_binary(listen, &with(&sealed, Some(query), None)).await;
        assert_eq!(
            (status, text.as_str()),
            (400, "malformed query string: a parameter appears twice\n"),
            "{format}"
        );
        let request = "FORGED /wechat/main HTTP/1.1\r\nHost: wx\r\nConnection: close\r\n\r\n";
        let (status, _) = raw_http(listen, request.as_bytes()).await;
        assert_eq!(status, 405, "{format}");

        let text = binary
            .wait_log("the six probes", |log| {
                log.matches("rejected").count() >= 5 && log.contains("outcome")
            })
            .await;
        for line in text.lines() {
            assert!(
                !line.starts_with("2026-01-01"),
                "{format}: a forged line:\n{text}"
            );
            for c in ['\r', '\u{85}', '\u{2028}', '\u{202e}', '\u{1b}'] {
                assert!(!line.contains(c), "{format}: {c:?} unescaped in {line:?}");
            }
            if format == "json" {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            } else {
                let stamped = line
                    .get(..4)
                    .is_some_and(|year| year.bytes().all(|b| b.is_ascii_digit()));
                let level = [" INFO ", " WARN ", "ERROR ", "DEBUG "]
                    .iter()
                    .any(|level| line.contains(level));
                assert!(
                    stamped && level,
                    "not one of the proxy's lines: {line:?}\n{text}"
                );
            }
        }
        // The callback line names the injected MsgId, escaped, on one line.
        assert!(
            text.lines()
                .any(|l| l.contains("FORGED") && l.contains("outcome") && l.contains("accepted")),
            "{format}:\n{text}"
        );
        binary.terminate();
        binary.wait_exit().await;
    }
}

/// `signature=<valid>&%73ignature=ffff…`: a target's form parser decodes the second name to
/// `signature` and reads two values (or the last one). Every spelling of one of WeChat's
/// parameter names other than the plain one is refused with 400 before anything is stored,
/// against the real binary; the plain callback then goes through alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoded_parameter_names_cannot_smuggle_a_second_value() {
    let target = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let (_dir, listen, _binary) = plaintext_binary(&target, "", &[]).await;

    let ffff = "f".repeat(40);
    for smuggled in [
        format!("%73ignature={ffff}"),
        format!("%74imestamp={}", now_secs()),
        format!("Signature={ffff}"),
        format!("signature%5B%5D={ffff}"),
    ] {
        let sealed = wx.seal(&text_xml("smuggled"));
        let query = format!("{}&{smuggled}", sealed.query);
        let (status, text) = post_to_binary(listen, &with(&sealed, Some(query), None)).await;
        assert_eq!(status, 400, "{smuggled}: {text}");
        assert!(
            text.contains("malformed query string"),
            "{smuggled}: {text}"
        );
    }
    let sealed = wx.seal(&text_xml("plain"));
    assert_eq!(post_to_binary(listen, &sealed).await.0, 200);
    let received = target.wait_for(1).await;
    settle().await;
    assert_eq!(target.count(), 1, "only the plain callback: {received:?}");
    assert_eq!(received[0].body, sealed.body.as_bytes());
}

/// With the default configuration, a callback signed five minutes or more ago is refused: a
/// captured plaintext request (whose signature does not cover its body) cannot be replayed with
/// a body of the attacker's choosing, nor can a forged copy claim a MsgId, once its window has
/// passed. The same holds for the GET handshake. A fresh callback is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_stale_timestamp_is_refused_for_callbacks_and_the_handshake() {
    let target = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let (_dir, listen, mut binary) = plaintext_binary(&target, "", &[]).await;

    let stale = (now_secs() - 301).to_string();
    let replayed = sealed_at(&wx, &text_xml("replayed"), &stale);
    assert_eq!(
        post_to_binary(listen, &replayed).await,
        (401, "timestamp outside the allowed window\n".to_owned())
    );

    let sig = signature(TOKEN, &stale, "1");
    let handshake = client()
        .get(format!(
            "http://{listen}/wechat/main?signature={sig}&timestamp={stale}&nonce=1&echostr=42"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(handshake.status().as_u16(), 401);

    let fresh = sealed_at(&wx, &text_xml("fresh"), &now_secs().to_string());
    assert_eq!(post_to_binary(listen, &fresh).await.0, 200);
    let received = target.wait_for(1).await;
    settle().await;
    assert_eq!(target.count(), 1, "{received:?}");
    binary
        .wait_log("two stale timestamps logged", |log| {
            log.matches("reason=\"stale_timestamp\"").count() == 2
        })
        .await;
}

/// With `max_timestamp_skew_secs` set, the GET handshake applies the same window as callbacks:
/// an hour-old signed handshake is 401, a fresh one is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_applies_the_configured_timestamp_window() {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}[server]\nmax_timestamp_skew_secs = 60\n{}",
        wx.account("main", "")
    );
    let proxy = Proxy::start(&toml).await;
    let handshake = |timestamp: u64| {
        let timestamp = timestamp.to_string();
        let sig = signature(TOKEN, &timestamp, "7");
        format!("signature={sig}&timestamp={timestamp}&nonce=7&echostr=4375120948345356249")
    };
    let old = proxy.get("main", &handshake(now_secs() - 3600)).await;
    assert_eq!(old.status, 401, "{old:?}");
    assert!(old.text().contains("timestamp"), "{old:?}");
    let ahead = proxy.get("main", &handshake(now_secs() + 3600)).await;
    assert_eq!(ahead.status, 401, "{ahead:?}");
    let fresh = proxy.get("main", &handshake(now_secs())).await;
    assert_eq!(fresh.status, 200, "{fresh:?}");
    assert_eq!(&fresh.body[..], b"4375120948345356249");
}

/// WeChat sends one ASCII `Content-Type` (`text/xml`, `application/json`). One with a byte above
/// 0x7F, or two of them, could not be forwarded as received (a header value is replayed as
/// text, and one value per name): refused at ingress with 400 `bad_content_type`, counted under
/// that label, nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_type_that_cannot_be_forwarded_as_sent_is_refused() {
    let target = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}",
        wx.account("main", ""),
        Wx::target("t", &target.url("/t"), "")
    );
    let proxy = Proxy::start_with_admin(&toml).await;
    for headers in [
        &b"Content-Type: text/xml; charset=\xe4\xbd\xa0\r\n"[..],
        b"Content-Type: text/xml\r\nContent-Type: application/json\r\n",
    ] {
        let sealed = wx.seal(&text_xml("odd header"));
        let mut request = format!(
            "POST /wechat/main?{} HTTP/1.1\r\nHost: wx\r\n",
            sealed.query
        )
        .into_bytes();
        request.extend_from_slice(headers);
        request.extend_from_slice(
            format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n{}",
                sealed.body.len(),
                sealed.body
            )
            .as_bytes(),
        );
        let (status, answer) = raw_http(proxy.addr, &request).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer.contains("Content-Type"), "{answer}");
    }
    settle().await;
    assert_eq!(callbacks(&proxy.store()).await, 0, "nothing stored");
    assert_eq!(target.count(), 0);
    let scrape = Scrape::fetch(&proxy).await;
    assert_eq!(
        scrape.value(
            "wechat_fanout_callbacks_total",
            "account=main,outcome=rejected,reason=bad_content_type"
        ),
        2.0
    );
}

/// A mini program's JSON body with a routing key twice (`MsgType`, then more keys) is refused
/// for what it is, a duplicate field, not as a `trailing comma`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_body_with_a_duplicate_key_is_refused_as_a_duplicate() {
    let wx = Wx::new(Kind::MiniProgram, Mode::Plaintext);
    let toml = format!("{FAST}{}", wx.account("main", ""));
    let proxy = Proxy::start(&toml).await;
    let body = text_json("twice").replacen(
        "\"MsgType\":\"text\"",
        "\"MsgType\":\"text\",\"MsgType\":\"event\"",
        1,
    );
    assert!(
        body.contains("\"MsgType\":\"event\",\""),
        "a key follows the duplicate: {body}"
    );
    let sealed = wx.seal(&body);
    let answer = proxy.post("main", &sealed).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.text(), "element MsgType appears twice\n");
}

/// A start-up failure prints its cause once: the store's folder cannot be created because a file
/// stands in its way.
#[test]
fn a_start_up_error_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "not a folder").unwrap();
    let config = format!(
        "[server]\nlisten = \"{}\"\n[admin]\nlisten = \"{}\"\n[store]\npath = \"{}\"\n{}",
        free_addr(),
        free_addr(),
        dir.path().join("file").join("fanout.db").display(),
        Wx::new(Kind::OfficialAccount, Mode::Plaintext).account("main", ""),
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let output = crate::support::binary::run(&["serve", "--config", &path.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("wechat-fanout: opening the store at"),
        "{stderr}"
    );
    let cause = last.rsplit(": ").next().unwrap_or_default();
    assert!(cause.contains("os error"), "{stderr}");
    assert_eq!(last.matches(cause).count(), 1, "the cause twice: {last}");
}
