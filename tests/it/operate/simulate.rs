//! `wechat-fanout simulate` against the running proxy, for every kind of account in every mode:
//! what it prints, how it exits, and that what it sent is a callback WeChat could have sent —
//! the proxy accepts it and the target gets it byte for byte, signatures and ciphertext intact.

use std::path::Path;

use wechat_fanout::config::Mode;
use wechat_fanout::wechat::{
    AesKey, CallbackQuery, Envelope, Kind, Sealed, msg_signature, open_callback,
};

use super::run_command;
use crate::support::binary::Ran;
use crate::support::wx::{AES_KEY, RECEIVE_ID, TOKEN};
use crate::support::{FAST, Proxy, Target, Wx, callbacks, stored};

async fn simulate(config: &Path, args: &[&str]) -> Ran {
    run_command(config, "simulate", args).await
}

/// `reply` encrypted and signed for the test account, as a bot writes a passive reply.
fn encrypted_reply(reply: &str, json: bool) -> String {
    let key = AesKey::from_encoding_aes_key(AES_KEY).unwrap();
    let encrypt = key.encrypt(reply.as_bytes(), RECEIVE_ID, rand::random());
    let (timestamp, nonce) = ("1714037059", "415670741");
    let signature = msg_signature(TOKEN, timestamp, nonce, &encrypt);
    let sealed = Sealed {
        encrypt: &encrypt,
        msg_signature: signature.as_str(),
        timestamp,
        nonce,
    };
    if json {
        sealed.reply_json()
    } else {
        sealed.reply_xml()
    }
}

/// One account of the simulated fleet.
struct Account {
    id: &'static str,
    wx: Wx,
    /// How `simulate` names it: `({kind}, {mode} mode)`.
    shown: &'static str,
    /// Extra arguments for every message (`--format json`).
    format: &'static [&'static str],
    event: [&'static str; 2],
    /// The primary's answer (content type, body) and what simulate must print of it.
    reply: Option<(&'static str, String, String)>,
    target: Target,
}

/// The whole fleet: a plaintext, a compatible and a safe official account, a WeCom app and a
/// mini program pushing JSON. Each sends a text and an event through `simulate`, and plays the
/// console's URL handshake. Where the account's primary answers with a passive reply (plain, or
/// encrypted in XML or JSON), `simulate` prints it decrypted after checking its signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_sends_what_wechat_would_in_every_mode_and_reads_the_reply() {
    let text_reply =
        "<xml><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[收到]]></Content></xml>";
    let json_reply = r#"{"touser":"oSIMULATED","msgtype":"text","text":{"content":"收到"}}"#;
    let decrypted = |plain: &str| format!("decrypted reply (MsgSignature verified):\n{plain}\n");
    let accounts = vec![
        Account {
            id: "oa_plain",
            wx: Wx::new(Kind::OfficialAccount, Mode::Plaintext),
            shown: "(official_account, plaintext mode)",
            format: &[],
            event: ["subscribe", "qrscene_123"],
            reply: Some(("text/xml", text_reply.into(), format!("\n{text_reply}\n"))),
            target: Target::start(200).await,
        },
        Account {
            id: "oa_compat",
            wx: Wx::new(Kind::OfficialAccount, Mode::Compatible),
            shown: "(official_account, compatible mode)",
            format: &[],
            event: ["SCAN", "123"],
            reply: None,
            target: Target::start(200).await,
        },
        Account {
            id: "oa_safe",
            wx: Wx::new(Kind::OfficialAccount, Mode::Safe),
            shown: "(official_account, safe mode)",
            format: &[],
            event: ["CLICK", "V1001_TODAY"],
            reply: Some((
                "application/xml",
                encrypted_reply(text_reply, false),
                decrypted(text_reply),
            )),
            target: Target::start(200).await,
        },
        Account {
            id: "wecom",
            wx: Wx::new(Kind::WeCom, Mode::Safe),
            shown: "(wecom, safe mode)",
            format: &[],
            event: ["click", "menu_1"],
            reply: Some((
                "text/xml",
                encrypted_reply(text_reply, false),
                decrypted(text_reply),
            )),
            target: Target::start(200).await,
        },
        Account {
            id: "mp_json",
            wx: Wx::new(Kind::MiniProgram, Mode::Safe),
            shown: "(mini_program, safe mode)",
            format: &["--format", "json"],
            event: ["user_enter_tempsession", "scene_1"],
            reply: Some((
                "application/json",
                encrypted_reply(json_reply, true),
                decrypted(json_reply),
            )),
            target: Target::start(200).await,
        },
    ];
    let mut toml = FAST.to_owned();
    for account in &accounts {
        let primary = if account.reply.is_some() {
            "primary = \"t\""
        } else {
            ""
        };
        toml += &account.wx.account(account.id, primary);
        toml += &Wx::target("t", &account.target.url(&format!("/{}", account.id)), "");
        if let Some((content_type, body, _)) = &account.reply {
            account.target.set_reply(content_type, body);
        }
    }
    let proxy = Proxy::start(&toml).await;
    let dir = tempfile::tempdir().unwrap();
    let config = proxy.write_config(dir.path());

    for account in &accounts {
        let id = account.id;
        let text = format!("你好 from simulate to {id}");
        let [event, event_key] = account.event;
        let messages: [Vec<&str>; 2] = [
            vec!["--account", id, "--text", &text],
            vec!["--account", id, "--event", event, "--event-key", event_key],
        ];
        for (n, mut args) in messages.into_iter().enumerate() {
            args.extend(account.format);
            let ran = simulate(&config, &args).await;
            let out = ran.ok();
            let context = format!("{id} {args:?}:\n{out}");
            assert!(
                out.starts_with(&format!("account   {id} {}\n", account.shown)),
                "{context}"
            );
            assert!(out.contains("\nstatus    200 OK in "), "{context}");
            assert!(out.ends_with("\nresult    OK\n"), "{context}");
            match &account.reply {
                Some((_, _, printed)) => assert!(out.contains(printed.as_str()), "{context}"),
                None => assert!(out.contains("\nsuccess\n"), "{context}"),
            }
            assert!(!out.contains(TOKEN) && !out.contains(AES_KEY), "{context}");

            // What simulate says it sent, and the plaintext message it built.
            let lines: Vec<&str> = out.lines().collect();
            let at = lines
                .iter()
                .position(|l| l.starts_with("message   "))
                .unwrap();
            let message = lines[at + 1];
            let sent = lines
                .iter()
                .find_map(|l| l.strip_prefix("sent      "))
                .unwrap();

            // The proxy stored it, and the target got exactly what the proxy received.
            let got = account.target.wait_for(n + 1).await;
            let received = &got[n];
            let (query, body) = stored(&proxy.store(), id).await.pop().unwrap();
            assert_eq!(received.body, body, "{context}");
            assert_eq!(
                received.path_and_query,
                format!("/{id}?{query}"),
                "{context}"
            );
            let content_type = received.header("content-type").unwrap();
            assert_eq!(
                sent,
                format!("{content_type}, {} bytes", body.len()),
                "{context}"
            );

            // And it opens with the account's credentials, to the message simulate built.
            let opened = open_callback(
                &account.wx.credentials,
                &CallbackQuery::parse(&query).unwrap(),
                &body,
            )
            .unwrap_or_else(|e| panic!("{e}: {context}"));
            assert_eq!(opened.message(&body), message.as_bytes(), "{context}");
            assert_eq!(
                opened.decrypted.is_some(),
                account.wx.mode != Mode::Plaintext
            );
            let envelope: &Envelope = &opened.envelope;
            if n == 0 {
                assert!(envelope.is_msg_type("text"), "{context}");
                assert!(message.contains(&text), "{context}");
            } else {
                assert!(envelope.is_event(event), "{context}");
                assert_eq!(envelope.event_key.as_deref(), Some(event_key), "{context}");
            }
            if account.wx.kind == Kind::WeCom {
                assert_eq!(envelope.agent_id.as_deref(), Some("1000002"), "{context}");
            }
        }

        let ran = simulate(&config, &["--account", id, "--verify-url"]).await;
        let out = ran.ok();
        let signed = if account.wx.kind == Kind::WeCom {
            "msg_signature=…"
        } else {
            "signature=…"
        };
        let url = format!(
            "GET       http://{}/wechat/{id}?{signed}&timestamp=",
            proxy.addr
        );
        assert!(out.contains(&url), "{id}:\n{out}");
        assert!(
            out.ends_with("\nresult    OK: the answer is the echostr plaintext\n"),
            "{id}:\n{out}"
        );
    }

    // Simulating with the wrong token: the proxy refuses, and simulate says so and exits 1.
    let wrong = dir.path().join("wrong-token.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let replaced = text.replace(&format!("\"{TOKEN}\""), "\"not-the-token\"");
    assert_ne!(text, replaced);
    std::fs::write(&wrong, replaced).unwrap();
    let before = callbacks(&proxy.store()).await;
    let ran = simulate(&wrong, &["--account", "oa_safe"]).await;
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    assert!(
        ran.stdout.contains("\nstatus    401 Unauthorized in "),
        "{ran:#?}"
    );
    assert!(
        ran.stdout.contains("msg_signature does not match"),
        "{ran:#?}"
    );
    assert!(ran.stdout.ends_with("\nresult    FAILED\n"), "{ran:#?}");
    assert_eq!(
        callbacks(&proxy.store()).await,
        before,
        "nothing was stored"
    );
    let ran = simulate(&wrong, &["--account", "oa_plain", "--verify-url"]).await;
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    assert!(
        ran.stdout.contains("\nstatus    401 Unauthorized in "),
        "{ran:#?}"
    );
    assert!(
        ran.stdout
            .contains("result    FAILED: expected 200 with exactly"),
        "{ran:#?}"
    );
}
