//! One POSTed callback or GET handshake: the input is `mode byte | query | NUL | body`.
//!
//! Without help a fuzzer never gets past the SHA-1 signatures, so the mode byte says how much of
//! the request the harness makes valid:
//! * 0: nothing, query and body as given;
//! * 1: the harness signs what it was given: `signature` over the query's timestamp and nonce,
//!   `msg_signature` over the body's `Encrypt` (and over `echostr` for WeCom), so decryption of
//!   arbitrary ciphertext and everything after the signature checks are reached;
//! * 2: the body is a decrypted message: the harness encrypts it, wraps it as WeChat does and
//!   signs it, so the inner parse of `open_callback` sees fuzzer-controlled plaintext.
//!
//! Every input goes through `CallbackQuery::parse`, `open_callback` for a safe-mode, a plaintext,
//! a compatible-mode and a WeCom account, and `verify_url`; nothing may panic, and signed
//! requests must not fail their signature checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use wechat_fanout::wechat::{
    AesKey, CallbackQuery, Credentials, Envelope, Kind, Security, VerifyError, dedupe_key,
    msg_signature, open_callback, signature, verify_url,
};

const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const TOKEN: &str = "QDG6eK";
const RECEIVE_ID: &str = "wx5823bf96d3bd56c7";

fn credentials(kind: Kind, security: fn(AesKey) -> Security) -> Credentials {
    Credentials {
        kind,
        token: TOKEN.to_owned(),
        receive_id: RECEIVE_ID.to_owned(),
        security: security(AesKey::from_encoding_aes_key(KEY).expect("test key")),
    }
}

fn encode(value: &str) -> String {
    utf8_percent_encode(value, NON_ALPHANUMERIC).to_string()
}

/// A query with every signature a real WeChat request would carry for these values.
fn signed_query(
    timestamp: &str,
    nonce: &str,
    encrypt: Option<&str>,
    echostr: Option<&str>,
) -> String {
    let mut query = format!(
        "signature={}&timestamp={}&nonce={}",
        signature(TOKEN, timestamp, nonce),
        encode(timestamp),
        encode(nonce)
    );
    // WeCom signs `echostr` in the handshake, the ciphertext in callbacks.
    if let Some(signed) = encrypt.or(echostr) {
        query.push_str("&msg_signature=");
        query.push_str(msg_signature(TOKEN, timestamp, nonce, signed).as_str());
    }
    if let Some(echostr) = echostr {
        query.push_str("&echostr=");
        query.push_str(&encode(echostr));
    }
    query
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (raw_query, given_body) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let raw_query = String::from_utf8_lossy(raw_query);
    let safe = credentials(Kind::OfficialAccount, Security::Safe);
    let plain = credentials(Kind::OfficialAccount, |_| Security::Plaintext);
    let compatible = credentials(Kind::MiniProgram, Security::Compatible);
    let wecom = credentials(Kind::WeCom, Security::Safe);
    let accounts = [&safe, &plain, &compatible, &wecom];

    let Ok(given) = CallbackQuery::parse(&raw_query) else {
        return;
    };
    let timestamp = given.timestamp.as_deref().unwrap_or("1409659813");
    let nonce = given.nonce.as_deref().unwrap_or("1372623149");
    let (query, body): (String, Vec<u8>) = match mode % 3 {
        0 => (raw_query.to_string(), given_body.to_vec()),
        1 => {
            let outer = Envelope::parse(given_body).ok();
            let encrypt = outer.as_ref().and_then(|e| e.encrypt.as_deref());
            let echostr = given.echostr.as_deref();
            (
                signed_query(timestamp, nonce, encrypt, echostr),
                given_body.to_vec(),
            )
        }
        _ => {
            let key = AesKey::from_encoding_aes_key(KEY).expect("test key");
            let encrypt = key.encrypt(given_body, RECEIVE_ID, [mode; 16]);
            let wrapped = format!(
                "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
            );
            (
                signed_query(timestamp, nonce, Some(&encrypt), None),
                wrapped.into_bytes(),
            )
        }
    };
    let Ok(query) = CallbackQuery::parse(&query) else {
        assert_eq!(mode % 3, 0, "the harness built an unparsable query");
        return;
    };
    for account in accounts {
        let opened = open_callback(account, &query, &body);
        if let Ok(opened) = &opened {
            let _ = dedupe_key("fuzz", &opened.envelope, opened.message(&body));
        }
        if mode % 3 != 0 {
            assert!(
                !matches!(
                    opened,
                    Err(VerifyError::Signature
                        | VerifyError::MsgSignature
                        | VerifyError::MissingParameter(_))
                ),
                "{account:?}: a request the harness signed failed with {opened:?}"
            );
        }
        if mode % 3 == 2 && matches!(account.security, Security::Safe(_)) {
            // The harness sealed the given body: opening answers what parsing it does.
            assert_eq!(
                opened.map(|o| o.envelope),
                Envelope::parse(given_body).map_err(VerifyError::from)
            );
        }
        let handshake = verify_url(account, &query);
        if mode % 3 == 1 && given.echostr.is_some() && account.kind != Kind::WeCom {
            assert_eq!(
                handshake.ok().as_deref(),
                given.echostr.as_deref().map(str::as_bytes)
            );
        }
    }
});
