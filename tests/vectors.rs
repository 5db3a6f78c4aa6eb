//! Public WeChat / WeCom test vectors (`tests/fixtures/vectors.toml`) checked against the crate's
//! public protocol API.
//!
//! Two layers:
//! * table-driven tests walk EVERY entry of every kind in the fixture (`[[signature]]`,
//!   `[[msg_signature]]`, `[[decrypt]]`, `[[wecom_echostr]]`, `[[json_message]]`,
//!   `[[xml_message]]`); unknown kinds or fields make the fixture fail to load, so a new vector
//!   cannot be silently skipped; each table test collects all failures before asserting;
//! * named tests pin the cases that matter most, each named after its SOURCE (the `source` field
//!   of the fixture says exactly where the values were copied from).
//!
//! Besides the crate's API, a few checks use an independent oracle built from the crate's own
//! dependencies (a hand-written EncodingAESKey decoder plus raw AES-256-CBC without unpadding), so
//! that the fixture's recorded facts (`pad`, `random_hex`, `message_len`, `canonical_key`) are
//! verified too and not merely trusted.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, KeyIvInit};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use sha1::{Digest, Sha1};
use wechat_fanout::wechat::{
    AesKey, CallbackQuery, Credentials, CryptoError, Envelope, EnvelopeError, Format, Kind, Sealed,
    Security, Signature, VerifyError, dedupe_key, msg_signature, open_callback, signature,
    verify_url,
};

// ---------------------------------------------------------------------------------------------
// The fixture
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vectors {
    signature: Vec<SignatureVector>,
    msg_signature: Vec<MsgSignatureVector>,
    decrypt: Vec<DecryptVector>,
    wecom_echostr: Vec<EchostrVector>,
    json_message: Vec<JsonMessage>,
    xml_message: Vec<XmlMessage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureVector {
    name: String,
    source: String,
    #[allow(dead_code)]
    note: String,
    token: String,
    timestamp: String,
    nonce: String,
    expected: String,
    echostr: Option<String>,
    sorted_concat: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MsgSignatureVector {
    name: String,
    source: String,
    #[allow(dead_code)]
    note: String,
    token: String,
    timestamp: String,
    nonce: String,
    encrypt: String,
    expected: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecryptVector {
    name: String,
    source: String,
    #[allow(dead_code)]
    note: String,
    encoding_aes_key: String,
    receive_id: String,
    token: Option<String>,
    timestamp: Option<String>,
    nonce: Option<String>,
    msg_signature: Option<String>,
    encrypt: String,
    message: String,
    message_len: usize,
    pad: usize,
    ciphertext_len: usize,
    canonical_key: bool,
    random_hex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EchostrVector {
    name: String,
    source: String,
    #[allow(dead_code)]
    note: String,
    token: String,
    encoding_aes_key: String,
    receive_id: String,
    timestamp: String,
    nonce: String,
    msg_signature: String,
    echostr: String,
    echostr_raw: Option<String>,
    plaintext: String,
    pad: usize,
    canonical_key: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonMessage {
    name: String,
    source: String,
    #[allow(dead_code)]
    note: String,
    platform: String,
    mode: String,
    token: Option<String>,
    encoding_aes_key: Option<String>,
    receive_id: Option<String>,
    timestamp: Option<String>,
    nonce: Option<String>,
    signature: Option<String>,
    msg_signature: Option<String>,
    openid: Option<String>,
    encrypt_type: Option<String>,
    body: String,
    decrypted: Option<String>,
    decrypted_is_valid_json: Option<bool>,
    fields: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct XmlMessage {
    name: String,
    source: String,
    #[allow(dead_code)]
    note: String,
    platform: String,
    encrypted: bool,
    decrypt_vector: Option<String>,
    body: String,
    fields: BTreeMap<String, toml::Value>,
}

fn fixture() -> &'static Vectors {
    static VECTORS: OnceLock<Vectors> = OnceLock::new();
    VECTORS.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vectors.toml");
        let text = std::fs::read_to_string(path).unwrap();
        toml::from_str(&text).unwrap()
    })
}

/// What every fixture entry has: a name unique in its table, and where its values come from.
trait Entry {
    fn name(&self) -> &str;
    fn source(&self) -> &str;
}

macro_rules! entry {
    ($($vector:ty),*) => {
        $(impl Entry for $vector {
            fn name(&self) -> &str {
                &self.name
            }
            fn source(&self) -> &str {
                &self.source
            }
        })*
    };
}

entry!(
    SignatureVector,
    MsgSignatureVector,
    DecryptVector,
    EchostrVector,
    JsonMessage,
    XmlMessage
);

/// The entry of `[[table]]` called `name`.
fn named<T: Entry>(entries: &'static [T], table: &str, name: &str) -> &'static T {
    entries
        .iter()
        .find(|v| v.name() == name)
        .unwrap_or_else(|| panic!("no [[{table}]] named {name}"))
}

fn decrypt_named(name: &str) -> &'static DecryptVector {
    named(&fixture().decrypt, "decrypt", name)
}

fn echostr_named(name: &str) -> &'static EchostrVector {
    named(&fixture().wecom_echostr, "wecom_echostr", name)
}

fn json_named(name: &str) -> &'static JsonMessage {
    named(&fixture().json_message, "json_message", name)
}

fn xml_named(name: &str) -> &'static XmlMessage {
    named(&fixture().xml_message, "xml_message", name)
}

/// The independent origin of a vector, from the leading part of its `source`. The WeCom C# sample
/// in JeffreySu/WeiXinMPSDK and sbzhu/weworkapi_python are both Tencent's own WeCom samples.
fn source_family(source: &str) -> &'static str {
    const FAMILIES: &[(&str, &str)] = &[
        ("DOC-MP ", "wechat-doc-miniprogram"),
        ("DOC-OP ", "wechat-doc-open-platform"),
        ("DOC-OA-EVT ", "wechat-doc-official-account"),
        ("JeffreySu/WeiXinMPSDK ", "wecom-official-sample"),
        ("sbzhu/weworkapi_python ", "wecom-official-sample"),
        (
            "Official OA WXBizMsgCrypt Python sample",
            "oa-official-sample",
        ),
        ("wechatpy/wechatpy ", "wechatpy"),
        ("w7corp/easywechat ", "easywechat"),
        ("chanjarster/weixin-java-tools ", "wxjava"),
        ("tuke-code/WxJava ", "wxjava"),
        ("ArtisanCloud/PowerWeChat ", "powerwechat"),
    ];
    FAMILIES
        .iter()
        .find(|(prefix, _)| source.starts_with(prefix))
        .map(|(_, family)| *family)
        .unwrap_or_else(|| panic!("unclassified source: {source}"))
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Collects every failed check of a table so one bad vector does not hide the others.
#[derive(Debug, Default)]
struct Report {
    checks: usize,
    failures: Vec<String>,
}

impl Report {
    fn check(&mut self, name: &str, what: &str, ok: bool) {
        self.checks += 1;
        if !ok {
            self.failures.push(format!("{name}: {what}"));
        }
    }

    fn eq<T: PartialEq + Debug>(&mut self, name: &str, what: &str, actual: T, expected: T) {
        self.checks += 1;
        if actual != expected {
            self.failures.push(format!(
                "{name}: {what}: got {actual:?}, expected {expected:?}"
            ));
        }
    }

    fn eq_bytes(&mut self, name: &str, what: &str, actual: &[u8], expected: &[u8]) {
        self.checks += 1;
        if actual != expected {
            self.failures.push(format!(
                "{name}: {what}: got {:?}, expected {:?}",
                String::from_utf8_lossy(actual),
                String::from_utf8_lossy(expected)
            ));
        }
    }

    fn fail(&mut self, name: &str, what: String) {
        self.checks += 1;
        self.failures.push(format!("{name}: {what}"));
    }

    fn finish(self, kind: &str, entries: usize) {
        assert!(
            self.failures.is_empty(),
            "{} of {} checks failed over {entries} [[{kind}]] entries:\n  {}",
            self.failures.len(),
            self.checks,
            self.failures.join("\n  ")
        );
        println!(
            "[[{kind}]]: {entries} entries, {} checks passed",
            self.checks
        );
    }
}

/// Runs `check` on every entry of `[[table]]`, then fails once, listing every failed check.
fn check_every<T>(table: &str, entries: &[T], check: fn(&mut Report, &T)) {
    let mut r = Report::default();
    for v in entries {
        check(&mut r, v);
    }
    r.finish(table, entries.len());
}

/// PKCS#7 pad WeChat uses: to a 32-byte block, 1..=32 bytes.
fn pad_from_lengths(message_len: usize, receive_id_len: usize) -> usize {
    32 - (20 + message_len + receive_id_len) % 32
}

/// The same signature with one hex digit changed, at the start, middle and end.
fn one_digit_changes(sig: &str) -> Vec<String> {
    [0, sig.len() / 2, sig.len() - 1]
        .into_iter()
        .map(|at| {
            let mut chars: Vec<char> = sig.chars().collect();
            chars[at] = if chars[at] == '0' { '1' } else { '0' };
            chars.into_iter().collect()
        })
        .collect()
}

/// `computed` equals `expected`, `matches` accepts it (in either hex case) and rejects near misses.
fn check_signature(r: &mut Report, name: &str, what: &str, computed: Signature, expected: &str) {
    r.eq(name, what, computed.as_str(), expected);
    r.check(
        name,
        &format!("{what}: matches(expected)"),
        computed.matches(expected),
    );
    r.check(
        name,
        &format!("{what}: matches(upper-case expected)"),
        computed.matches(&expected.to_ascii_uppercase()),
    );
    for near in one_digit_changes(expected) {
        r.check(
            name,
            &format!("{what}: rejects one-digit change {near}"),
            !computed.matches(&near),
        );
    }
}

fn hex16(hex: &str) -> [u8; 16] {
    assert_eq!(hex.len(), 32, "random_hex must be 16 bytes: {hex}");
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

/// Hand-decodes a 43-character EncodingAESKey: 258 bits, the first 256 are the key; the key is
/// canonical when the 2 discarded bits are zero. Independent of any base64 engine configuration.
fn decode_key_by_hand(encoding_aes_key: &str) -> ([u8; 32], bool) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    assert_eq!(encoding_aes_key.len(), 43);
    let mut out = Vec::with_capacity(32);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in encoding_aes_key.bytes() {
        let value = ALPHABET.iter().position(|&a| a == c).unwrap();
        acc = (acc << 6) | u32::try_from(value).unwrap();
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from(acc >> bits).unwrap());
            acc &= (1 << bits) - 1;
        }
    }
    assert_eq!((out.len(), bits), (32, 2));
    (out.try_into().unwrap(), acc == 0)
}

/// Does a strict (canonical-only) base64 decoder accept `key + "="`?
fn strict_base64_accepts(encoding_aes_key: &str) -> bool {
    STANDARD.decode(format!("{encoding_aes_key}=")).is_ok()
}

/// The decrypted layout of a ciphertext, read without the crate: AES-256-CBC, IV = key[..16],
/// no unpadding.
#[derive(Debug)]
struct RawPlain {
    random: [u8; 16],
    length_field: usize,
    /// Value of the last byte (the PKCS#7 pad value).
    pad_value: usize,
    /// How many trailing bytes equal `pad_value`.
    pad_run: usize,
    body: Vec<u8>,
}

fn raw_decrypt(encoding_aes_key: &str, encrypt: &str) -> RawPlain {
    let (key, _) = decode_key_by_hand(encoding_aes_key);
    let mut buf = STANDARD.decode(encrypt).unwrap();
    cbc::Decryptor::<aes::Aes256>::new_from_slices(&key, &key[..16])
        .unwrap()
        .decrypt_padded_mut::<NoPadding>(&mut buf)
        .unwrap();
    let last = *buf.last().unwrap();
    RawPlain {
        random: buf[..16].try_into().unwrap(),
        length_field: usize::try_from(u32::from_be_bytes(buf[16..20].try_into().unwrap())).unwrap(),
        pad_value: usize::from(last),
        pad_run: buf.iter().rev().take_while(|&&b| b == last).count(),
        body: buf,
    }
}

fn credentials(kind: Kind, token: &str, receive_id: &str, security: Security) -> Credentials {
    Credentials {
        kind,
        token: token.to_owned(),
        receive_id: receive_id.to_owned(),
        security,
    }
}

fn safe(encoding_aes_key: &str) -> Security {
    Security::Safe(AesKey::from_encoding_aes_key(encoding_aes_key).unwrap())
}

fn kind_of(platform: &str) -> Kind {
    match platform {
        "oa" => Kind::OfficialAccount,
        "miniprogram" => Kind::MiniProgram,
        "wecom" => Kind::WeCom,
        "open_platform" => Kind::OpenPlatform,
        other => panic!("unknown platform {other}"),
    }
}

/// A raw query string as WeChat sends it: every value percent-encoded (so `+`, `/`, `=` travel
/// as `%2B`, `%2F`, `%3D`).
fn query(pairs: &[(&str, Option<&str>)]) -> String {
    pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC))))
        .collect::<Vec<_>>()
        .join("&")
}

/// The safe-mode request body WeChat would POST around `encrypt` (built by hand, not with the
/// crate's builders): JSON when the message is JSON, XML otherwise.
fn outer_body(message: &str, to_user_name: &str, encrypt: &str) -> String {
    if message.trim_start().starts_with('{') {
        serde_json::json!({ "ToUserName": to_user_name, "Encrypt": encrypt }).to_string()
    } else {
        format!(
            "<xml><ToUserName><![CDATA[{to_user_name}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        )
    }
}

fn scalar(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        other => panic!("field values must be strings or integers, got {other:?}"),
    }
}

/// The envelope slot for a field name, or `None` when `Envelope` does not model that field.
fn envelope_slot<'e>(envelope: &'e Envelope, field: &str) -> Option<Option<&'e str>> {
    let slot = match field {
        "ToUserName" | "tousername" => &envelope.to_user_name,
        "FromUserName" | "fromusername" => &envelope.from_user_name,
        "CreateTime" | "createtime" => &envelope.create_time,
        "MsgType" | "msgtype" => &envelope.msg_type,
        "Event" | "event" => &envelope.event,
        "EventKey" | "eventkey" => &envelope.event_key,
        "MsgId" | "MsgID" | "msgid" => &envelope.msg_id,
        "AgentID" | "AgentId" | "agentid" => &envelope.agent_id,
        "Encrypt" | "encrypt" => &envelope.encrypt,
        "AppId" => &envelope.app_id,
        "InfoType" => &envelope.info_type,
        "AuthorizerAppid" => &envelope.authorizer_appid,
        _ => return None,
    };
    Some(slot.as_deref())
}

/// Checks the recorded `fields` of `message`: the ones `Envelope` models through `envelope`, the
/// others (Content, Label, Status, debug_str, ...) against the message text itself, so that the
/// fixture stays honest.
fn check_fields(
    r: &mut Report,
    name: &str,
    envelope: &Envelope,
    message: &[u8],
    fields: &BTreeMap<String, toml::Value>,
) {
    let json: Option<serde_json::Value> = match envelope.format {
        Format::Json => serde_json::from_slice(message).ok(),
        Format::Xml => None,
    };
    let text = String::from_utf8_lossy(message);
    for (field, expected) in fields {
        let expected = scalar(expected);
        if let Some(actual) = envelope_slot(envelope, field) {
            r.eq(
                name,
                &format!("Envelope field {field}"),
                actual,
                Some(expected.as_str()),
            );
            continue;
        }
        match (&envelope.format, &json) {
            (Format::Json, Some(json)) => {
                let actual = match json.get(field) {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                };
                r.eq(
                    name,
                    &format!("JSON field {field} (not in Envelope)"),
                    actual,
                    Some(expected),
                );
            }
            (Format::Json, None) => r.fail(name, format!("field {field}: message is not JSON")),
            (Format::Xml, _) => {
                let cdata = format!("<{field}><![CDATA[{expected}]]></{field}>");
                let bare = format!("<{field}>{expected}</{field}>");
                r.check(
                    name,
                    &format!("XML field {field} = {expected:?} (not in Envelope)"),
                    text.contains(&cdata) || text.contains(&bare),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Table-driven checks: every entry of every kind
// ---------------------------------------------------------------------------------------------

#[test]
fn every_signature_vector() {
    let vectors = &fixture().signature;
    let mut r = Report::default();
    for v in vectors {
        let n = v.name.as_str();
        let computed = signature(&v.token, &v.timestamp, &v.nonce);
        check_signature(&mut r, n, "signature", computed, &v.expected);
        if let Some(sorted) = &v.sorted_concat {
            let mut parts = [v.token.as_str(), v.timestamp.as_str(), v.nonce.as_str()];
            parts.sort_unstable();
            r.eq(n, "sorted_concat", parts.concat(), sorted.clone());
            let digest: String = Sha1::digest(sorted.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            r.eq(n, "sha1(sorted_concat)", digest, v.expected.clone());
        }
        if let Some(echostr) = &v.echostr {
            // GET handshake of official accounts and mini programs: echo echostr verbatim.
            for kind in [Kind::MiniProgram, Kind::OfficialAccount] {
                let creds = credentials(kind, &v.token, "", Security::Plaintext);
                let raw = query(&[
                    ("signature", Some(&v.expected)),
                    ("timestamp", Some(&v.timestamp)),
                    ("nonce", Some(&v.nonce)),
                    ("echostr", Some(echostr)),
                ]);
                let q = CallbackQuery::parse(&raw).unwrap();
                match verify_url(&creds, &q) {
                    Ok(reply) => r.eq_bytes(n, "verify_url reply", &reply, echostr.as_bytes()),
                    Err(e) => r.fail(n, format!("verify_url {kind:?}: {e}")),
                }
                let forged = raw.replace(&v.expected, &one_digit_changes(&v.expected)[2]);
                r.eq(
                    n,
                    "verify_url with a one-digit-changed signature",
                    verify_url(&creds, &CallbackQuery::parse(&forged).unwrap()),
                    Err(VerifyError::Signature),
                );
            }
        }
    }
    r.finish("signature", vectors.len());
}

#[test]
fn every_msg_signature_vector() {
    let all = fixture();
    let vectors = &all.msg_signature;
    let mut r = Report::default();
    for v in vectors {
        let n = v.name.as_str();
        let computed = msg_signature(&v.token, &v.timestamp, &v.nonce, &v.encrypt);
        check_signature(&mut r, n, "msg_signature", computed, &v.expected);
        // Each entry names its twin ("Same vector as ..."); the twin must carry the same values.
        let decrypt_twin = all.decrypt.iter().find(|d| d.name == v.name);
        let echostr_twin = all.wecom_echostr.iter().find(|e| e.name == v.name);
        match (decrypt_twin, echostr_twin) {
            (Some(d), None) => {
                r.eq(n, "twin [[decrypt]] encrypt", &d.encrypt, &v.encrypt);
                r.eq(
                    n,
                    "twin [[decrypt]] msg_signature",
                    d.msg_signature.as_ref(),
                    Some(&v.expected),
                );
                r.eq(
                    n,
                    "twin [[decrypt]] token",
                    d.token.as_ref(),
                    Some(&v.token),
                );
            }
            (None, Some(e)) => {
                r.eq(n, "twin [[wecom_echostr]] echostr", &e.echostr, &v.encrypt);
                r.eq(
                    n,
                    "twin [[wecom_echostr]] msg_signature",
                    &e.msg_signature,
                    &v.expected,
                );
                r.eq(n, "twin [[wecom_echostr]] token", &e.token, &v.token);
            }
            _ => r.fail(n, "expected exactly one twin vector".into()),
        }
    }
    r.finish("msg_signature", vectors.len());
}

#[test]
fn every_decrypt_vector() {
    check_every("decrypt", &fixture().decrypt, check_decrypt);
}

fn check_decrypt(r: &mut Report, v: &DecryptVector) {
    let n = v.name.as_str();
    let key = match AesKey::from_encoding_aes_key(&v.encoding_aes_key) {
        Ok(key) => key,
        Err(e) => return r.fail(n, format!("AesKey::from_encoding_aes_key: {e}")),
    };

    // Recorded facts, against the lengths and against the independent oracle.
    r.eq(
        n,
        "canonical_key (strict base64)",
        strict_base64_accepts(&v.encoding_aes_key),
        v.canonical_key,
    );
    r.eq(
        n,
        "canonical_key (discarded bits)",
        decode_key_by_hand(&v.encoding_aes_key).1,
        v.canonical_key,
    );
    r.eq(n, "message_len", v.message.len(), v.message_len);
    let pad = pad_from_lengths(v.message.len(), v.receive_id.len());
    r.eq(n, "pad computed from lengths", pad, v.pad);
    r.eq(
        n,
        "ciphertext_len from lengths",
        20 + v.message_len + v.receive_id.len() + v.pad,
        v.ciphertext_len,
    );
    match STANDARD.decode(&v.encrypt) {
        Ok(bytes) => r.eq(
            n,
            "ciphertext_len (base64-decoded)",
            bytes.len(),
            v.ciphertext_len,
        ),
        Err(e) => r.fail(n, format!("encrypt is not base64: {e}")),
    }
    let raw = raw_decrypt(&v.encoding_aes_key, &v.encrypt);
    r.eq(n, "observed pad value (raw AES)", raw.pad_value, v.pad);
    r.check(
        n,
        "every pad byte equals the pad value (raw AES)",
        raw.pad_run >= v.pad,
    );
    r.eq(n, "length field (raw AES)", raw.length_field, v.message_len);
    if let Some(hex) = &v.random_hex {
        r.eq(n, "random prefix (raw AES)", raw.random, hex16(hex));
    }

    // The crate: right receive id gives exactly the message, wrong ones give ReceiveId.
    match key.decrypt(&v.encrypt, &v.receive_id) {
        Ok(message) => r.eq_bytes(n, "AesKey::decrypt", &message, v.message.as_bytes()),
        Err(e) => r.fail(n, format!("AesKey::decrypt: {e:?}")),
    }
    let mut changed = v.receive_id.clone();
    let last = changed.pop().unwrap_or('x');
    changed.push(if last == '0' { '1' } else { '0' });
    let wrong_ids = [
        changed,
        String::new(),
        v.receive_id[..v.receive_id.len().saturating_sub(1)].to_owned(),
        format!("{}0", v.receive_id),
    ];
    for wrong in wrong_ids.iter().filter(|w| **w != v.receive_id) {
        r.eq(
            n,
            &format!("AesKey::decrypt with wrong receive_id {wrong:?}"),
            key.decrypt(&v.encrypt, wrong),
            Err(CryptoError::ReceiveId),
        );
    }

    // Deterministic re-encryption.
    if let Some(hex) = &v.random_hex {
        r.eq(
            n,
            "encrypt_with_random reproduces encrypt",
            key.encrypt(v.message.as_bytes(), &v.receive_id, hex16(hex)),
            v.encrypt.clone(),
        );
    }

    // msg_signature over `encrypt`, then the whole POST path through open_callback.
    match (&v.token, &v.timestamp, &v.nonce, &v.msg_signature) {
        (Some(token), Some(timestamp), Some(nonce), Some(sig)) => {
            let computed = msg_signature(token, timestamp, nonce, &v.encrypt);
            check_signature(r, n, "msg_signature over encrypt", computed, sig);

            // The encrypted path is the same for every kind (msg_signature, decrypt, parse), so a
            // safe-mode WeCom account stands in for all of them; the body is built by hand.
            let creds = credentials(Kind::WeCom, token, &v.receive_id, safe(&v.encoding_aes_key));
            let body = outer_body(&v.message, "to_user", &v.encrypt);
            let raw_query = query(&[
                ("msg_signature", Some(sig)),
                ("timestamp", Some(timestamp)),
                ("nonce", Some(nonce)),
            ]);
            let q = CallbackQuery::parse(&raw_query).unwrap();
            let opened = open_callback(&creds, &q, body.as_bytes());
            match (Envelope::parse(v.message.as_bytes()), opened) {
                (Ok(expected), Ok(opened)) => {
                    r.eq(n, "open_callback envelope", &opened.envelope, &expected);
                    r.eq_bytes(
                        n,
                        "open_callback message",
                        opened.message(body.as_bytes()),
                        v.message.as_bytes(),
                    );
                }
                // A message that is not a valid body (wecom_sbzhu_json_post) is authenticated and
                // decrypted, then refused by the envelope parser.
                (Err(expected), Err(actual)) => {
                    r.eq(
                        n,
                        "open_callback error",
                        actual,
                        VerifyError::Envelope(expected),
                    );
                }
                (Ok(_), Err(e)) => r.fail(n, format!("open_callback: {e:?}")),
                (Err(e), Ok(_)) => r.fail(
                    n,
                    format!("open_callback accepted an unparsable message ({e})"),
                ),
            }
        }
        (None, None, None, None) => {}
        _ => r.fail(
            n,
            "token/timestamp/nonce/msg_signature must be given together".into(),
        ),
    }
}

#[test]
fn every_wecom_echostr_vector() {
    let vectors = &fixture().wecom_echostr;
    let mut r = Report::default();
    for v in vectors {
        let n = v.name.as_str();
        r.eq(
            n,
            "canonical_key (strict base64)",
            strict_base64_accepts(&v.encoding_aes_key),
            v.canonical_key,
        );
        r.eq(
            n,
            "pad computed from lengths",
            pad_from_lengths(v.plaintext.len(), v.receive_id.len()),
            v.pad,
        );
        let raw = raw_decrypt(&v.encoding_aes_key, &v.echostr);
        r.eq(n, "observed pad value (raw AES)", raw.pad_value, v.pad);
        r.eq(
            n,
            "length field (raw AES)",
            raw.length_field,
            v.plaintext.len(),
        );

        let encoded = utf8_percent_encode(&v.echostr, NON_ALPHANUMERIC).to_string();
        let echostr_wire = v.echostr_raw.clone().unwrap_or(encoded);
        let raw_query = format!(
            "msg_signature={}&timestamp={}&nonce={}&echostr={echostr_wire}",
            v.msg_signature, v.timestamp, v.nonce
        );
        let q = CallbackQuery::parse(&raw_query).unwrap();
        r.eq(
            n,
            "percent-decoded echostr",
            q.echostr.as_deref(),
            Some(v.echostr.as_str()),
        );
        let creds = credentials(
            Kind::WeCom,
            &v.token,
            &v.receive_id,
            safe(&v.encoding_aes_key),
        );
        match verify_url(&creds, &q) {
            // Exactly the plaintext: no quotes, no BOM, no trailing newline.
            Ok(reply) => r.eq_bytes(n, "verify_url reply", &reply, v.plaintext.as_bytes()),
            Err(e) => r.fail(n, format!("verify_url: {e:?}")),
        }
        let computed = msg_signature(&v.token, &v.timestamp, &v.nonce, &v.echostr);
        check_signature(
            &mut r,
            n,
            "msg_signature over echostr",
            computed,
            &v.msg_signature,
        );

        // Refusals: another nonce, another receive id.
        let other_nonce = raw_query.replace(
            &format!("nonce={}", v.nonce),
            &format!("nonce={}", one_digit_changes(&v.nonce)[2]),
        );
        r.eq(
            n,
            "verify_url with a changed nonce",
            verify_url(&creds, &CallbackQuery::parse(&other_nonce).unwrap()),
            Err(VerifyError::MsgSignature),
        );
        let other_corp = credentials(
            Kind::WeCom,
            &v.token,
            "ww0000000000000000",
            safe(&v.encoding_aes_key),
        );
        r.eq(
            n,
            "verify_url with another receive id",
            verify_url(&other_corp, &q),
            Err(VerifyError::Crypto(CryptoError::ReceiveId)),
        );
    }
    r.finish("wecom_echostr", vectors.len());
}

#[test]
fn every_json_message() {
    check_every("json_message", &fixture().json_message, check_json_message);
}

fn check_json_message(r: &mut Report, v: &JsonMessage) {
    let n = v.name.as_str();
    let outer = match Envelope::parse(v.body.as_bytes()) {
        Ok(outer) => outer,
        Err(e) => return r.fail(n, format!("Envelope::parse(body): {e:?}")),
    };
    r.eq(n, "body format", outer.format, Format::Json);
    let kind = kind_of(&v.platform);
    // `fields` describe the decrypted message when there is a valid one, else the body.
    let decrypted_valid = v.decrypted.is_some() && v.decrypted_is_valid_json != Some(false);
    if !decrypted_valid {
        check_fields(r, n, &outer, v.body.as_bytes(), &v.fields);
    }
    match v.mode.as_str() {
        "plain" => {
            let (Some(token), Some(timestamp), Some(nonce), Some(sig)) =
                (&v.token, &v.timestamp, &v.nonce, &v.signature)
            else {
                // Cloud-function / cloud-hosting pushes carry no signature: parsing is all.
                r.check(
                    n,
                    "unsigned push has no token",
                    v.token.is_none() && v.signature.is_none(),
                );
                return;
            };
            check_signature(r, n, "signature", signature(token, timestamp, nonce), sig);
            let creds = credentials(kind, token, "", Security::Plaintext);
            let raw_query = query(&[
                ("signature", Some(sig)),
                ("timestamp", Some(timestamp)),
                ("nonce", Some(nonce)),
                ("openid", v.openid.as_deref()),
            ]);
            match open_callback(
                &creds,
                &CallbackQuery::parse(&raw_query).unwrap(),
                v.body.as_bytes(),
            ) {
                Ok(opened) => {
                    r.eq(
                        n,
                        "open_callback decrypted",
                        opened.decrypted.as_deref(),
                        None,
                    );
                    r.eq(n, "open_callback envelope", &opened.envelope, &outer);
                }
                Err(e) => r.fail(n, format!("open_callback: {e:?}")),
            }
        }
        "aes" => {
            let (Some(token), Some(key), Some(receive_id), Some(timestamp), Some(nonce), Some(sig)) = (
                &v.token,
                &v.encoding_aes_key,
                &v.receive_id,
                &v.timestamp,
                &v.nonce,
                &v.msg_signature,
            ) else {
                return r.fail(
                    n,
                    "aes mode needs token, key, receive_id, timestamp, nonce, msg_signature".into(),
                );
            };
            let Some(encrypt) = outer.encrypt.as_deref() else {
                return r.fail(n, "aes body has no Encrypt".into());
            };
            check_signature(
                r,
                n,
                "msg_signature over Encrypt",
                msg_signature(token, timestamp, nonce, encrypt),
                sig,
            );
            if let Some(clear) = &v.signature {
                check_signature(r, n, "signature", signature(token, timestamp, nonce), clear);
            }
            let creds = credentials(kind, token, receive_id, safe(key));
            let raw_query = query(&[
                ("signature", v.signature.as_deref()),
                ("timestamp", Some(timestamp)),
                ("nonce", Some(nonce)),
                ("openid", v.openid.as_deref()),
                ("encrypt_type", v.encrypt_type.as_deref()),
                ("msg_signature", Some(sig)),
            ]);
            let q = CallbackQuery::parse(&raw_query).unwrap();
            let decrypted = v.decrypted.as_deref().unwrap_or_default();
            match open_callback(&creds, &q, v.body.as_bytes()) {
                Ok(opened) if decrypted_valid => {
                    r.eq_bytes(
                        n,
                        "open_callback message",
                        opened.message(v.body.as_bytes()),
                        decrypted.as_bytes(),
                    );
                    r.eq(n, "opened format", opened.envelope.format, Format::Json);
                    check_fields(r, n, &opened.envelope, decrypted.as_bytes(), &v.fields);
                }
                Ok(_) => r.fail(
                    n,
                    "open_callback accepted a malformed decrypted payload".into(),
                ),
                Err(VerifyError::Envelope(EnvelopeError::Json(_))) if !decrypted_valid => {
                    // Authenticated and decrypted, then refused as malformed JSON: correct.
                    let key = AesKey::from_encoding_aes_key(key).unwrap();
                    r.eq(
                        n,
                        "decrypt",
                        key.decrypt(encrypt, receive_id).ok(),
                        Some(decrypted.as_bytes().to_vec()),
                    );
                }
                Err(e) => r.fail(n, format!("open_callback: {e:?}")),
            }
        }
        "aes_reply" => {
            // An encrypted passive reply: {Encrypt, MsgSignature, TimeStamp (number), Nonce}.
            let (
                Some(token),
                Some(key),
                Some(receive_id),
                Some(timestamp),
                Some(nonce),
                Some(sig),
                Some(decrypted),
            ) = (
                &v.token,
                &v.encoding_aes_key,
                &v.receive_id,
                &v.timestamp,
                &v.nonce,
                &v.msg_signature,
                &v.decrypted,
            )
            else {
                return r.fail(n, "aes_reply needs token, key, receive_id, timestamp, nonce, msg_signature, decrypted".into());
            };
            let Some(encrypt) = outer.encrypt.as_deref() else {
                return r.fail(n, "reply has no Encrypt".into());
            };
            check_signature(
                r,
                n,
                "reply MsgSignature",
                msg_signature(token, timestamp, nonce, encrypt),
                sig,
            );
            let aes = AesKey::from_encoding_aes_key(key).unwrap();
            match aes.decrypt(encrypt, receive_id) {
                Ok(message) => {
                    r.eq_bytes(n, "reply decrypt", &message, decrypted.as_bytes());
                    match Envelope::parse(&message) {
                        Ok(inner) => check_fields(r, n, &inner, &message, &v.fields),
                        Err(e) => r.fail(n, format!("reply payload: {e:?}")),
                    }
                }
                Err(e) => r.fail(n, format!("reply decrypt: {e:?}")),
            }
            // The crate's reply builder yields the same JSON object (TimeStamp a number).
            let built = Sealed {
                encrypt,
                msg_signature: sig,
                timestamp,
                nonce,
            }
            .reply_json();
            let built: serde_json::Value = serde_json::from_str(&built).unwrap();
            let published: serde_json::Value = serde_json::from_str(&v.body).unwrap();
            r.eq(
                n,
                "Sealed::reply_json equals the published reply",
                built,
                published,
            );
        }
        other => r.fail(n, format!("unknown mode {other}")),
    }
}

#[test]
fn every_xml_message() {
    check_every("xml_message", &fixture().xml_message, check_xml_message);
}

fn check_xml_message(r: &mut Report, v: &XmlMessage) {
    let n = v.name.as_str();
    let envelope = match Envelope::parse(v.body.as_bytes()) {
        Ok(envelope) => envelope,
        Err(e) => return r.fail(n, format!("Envelope::parse(body): {e:?}")),
    };
    r.eq(n, "body format", envelope.format, Format::Xml);
    check_fields(r, n, &envelope, v.body.as_bytes(), &v.fields);
    r.eq(
        n,
        "encrypted <=> decrypt_vector",
        v.encrypted,
        v.decrypt_vector.is_some(),
    );
    let Some(d) = v.decrypt_vector.as_deref().map(decrypt_named) else {
        return;
    };
    let (Some(token), Some(timestamp), Some(nonce), Some(sig)) =
        (&d.token, &d.timestamp, &d.nonce, &d.msg_signature)
    else {
        return r.fail(n, format!("decrypt_vector {} has no signature", d.name));
    };
    let kind = kind_of(&v.platform);
    let raw_query = query(&[
        (
            "signature",
            Some(signature(token, timestamp, nonce).as_str()),
        ),
        ("timestamp", Some(timestamp)),
        ("nonce", Some(nonce)),
        ("msg_signature", Some(sig)),
    ]);
    let q = CallbackQuery::parse(&raw_query).unwrap();
    // The body is either the encrypted request itself or the plaintext of `decrypt_vector`; in the
    // latter case the request is rebuilt around the vector's ciphertext (msg_signature covers only
    // token, timestamp, nonce and Encrypt).
    let (body, modes): (String, Vec<Security>) = match envelope.encrypt.as_deref() {
        Some(encrypt) => {
            r.eq(
                n,
                "Encrypt equals the decrypt vector's",
                encrypt,
                d.encrypt.as_str(),
            );
            let mut modes = vec![safe(&d.encoding_aes_key)];
            if kind != Kind::WeCom && envelope.msg_type.is_some() {
                // Clear fields beside Encrypt: compatible mode.
                modes.push(Security::Compatible(
                    AesKey::from_encoding_aes_key(&d.encoding_aes_key).unwrap(),
                ));
            }
            (v.body.clone(), modes)
        }
        None => {
            r.eq(
                n,
                "body is the decrypt vector's message",
                v.body.as_str(),
                d.message.as_str(),
            );
            let to = envelope.to_user_name.clone().unwrap_or_default();
            (
                outer_body(&d.message, &to, &d.encrypt),
                vec![safe(&d.encoding_aes_key)],
            )
        }
    };
    let plain_envelope = Envelope::parse(d.message.as_bytes()).unwrap();
    for security in modes {
        let creds = credentials(kind, token, &d.receive_id, security);
        match open_callback(&creds, &q, body.as_bytes()) {
            Ok(opened) => {
                r.eq_bytes(
                    n,
                    "open_callback message",
                    opened.message(body.as_bytes()),
                    d.message.as_bytes(),
                );
                r.eq(
                    n,
                    "open_callback envelope",
                    &opened.envelope,
                    &plain_envelope,
                );
                if envelope.encrypt.is_none() {
                    check_fields(r, n, &opened.envelope, d.message.as_bytes(), &v.fields);
                }
                // A resend decrypts to the same message, so it must dedupe the same.
                r.eq(
                    n,
                    "dedupe_key of opened == of plaintext",
                    dedupe_key("acct", &opened.envelope, opened.message(body.as_bytes())),
                    dedupe_key("acct", &plain_envelope, d.message.as_bytes()),
                );
            }
            Err(e) => r.fail(n, format!("open_callback ({creds:?}): {e:?}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Coverage: per-kind, per-source counts
// ---------------------------------------------------------------------------------------------

#[test]
fn decrypt_vectors_cover_at_least_three_sources() {
    let all = fixture();
    fn names_and_sources<T: Entry>(entries: &[T]) -> Vec<(&str, &str)> {
        entries.iter().map(|v| (v.name(), v.source())).collect()
    }
    let kinds = [
        ("signature", names_and_sources(&all.signature)),
        ("msg_signature", names_and_sources(&all.msg_signature)),
        ("decrypt", names_and_sources(&all.decrypt)),
        ("wecom_echostr", names_and_sources(&all.wecom_echostr)),
        ("json_message", names_and_sources(&all.json_message)),
        ("xml_message", names_and_sources(&all.xml_message)),
    ];
    let mut total = 0;
    for (kind, entries) in &kinds {
        assert!(!entries.is_empty(), "no [[{kind}]] vectors");
        let names: BTreeSet<&str> = entries.iter().map(|(name, _)| *name).collect();
        assert_eq!(names.len(), entries.len(), "duplicate names in [[{kind}]]");
        let mut per_source: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, source) in entries {
            *per_source.entry(source_family(source)).or_default() += 1;
        }
        println!("[[{kind}]] {} vectors: {per_source:?}", entries.len());
        total += entries.len();
        if *kind == "decrypt" {
            assert!(
                per_source.len() >= 3,
                "decrypt vectors come from only {} sources: {per_source:?}",
                per_source.len()
            );
        }
    }
    println!("total: {total} vectors");
}

// ---------------------------------------------------------------------------------------------
// Named tests, each after its source
// ---------------------------------------------------------------------------------------------

/// SOURCE: official WeCom C# sample (copy in JeffreySu/WeiXinMPSDK Tencent/Sample.cs; the same
/// vector is in w7corp/easywechat tests). Pad 30 (> 16: a 16-byte-block unpadder fails) under a
/// non-canonical key.
#[test]
fn wecom_official_sample_pad_30_decrypts() {
    let v = decrypt_named("wecom_official_post");
    assert_eq!(v.pad, 30);
    assert!(!v.canonical_key && !strict_base64_accepts(&v.encoding_aes_key));
    let raw = raw_decrypt(&v.encoding_aes_key, &v.encrypt);
    assert_eq!((raw.pad_value, raw.pad_run), (30, 30));
    assert!(raw.body[raw.body.len() - 30..].iter().all(|&b| b == 30));

    let key = AesKey::from_encoding_aes_key(&v.encoding_aes_key).unwrap();
    let message = key.decrypt(&v.encrypt, &v.receive_id).unwrap();
    assert_eq!(message, v.message.as_bytes());
    let env = Envelope::parse(&message).unwrap();
    assert_eq!(env.msg_id.as_deref(), Some("4561255354251345929"));
    assert_eq!(env.agent_id.as_deref(), Some("218"));
    assert_eq!(env.from_user_name.as_deref(), Some("mycreate"));
}

/// SOURCE: official WeCom C# sample (JeffreySu/WeiXinMPSDK Tencent/Sample.cs sReqData and its
/// query): the verbatim encrypted POST body opens through `open_callback`.
#[test]
fn wecom_official_sample_encrypted_post_body_opens() {
    let outer = xml_named("wecom_official_encrypted_body");
    let v = decrypt_named("wecom_official_post");
    let creds = credentials(
        Kind::WeCom,
        "QDG6eK",
        &v.receive_id,
        safe(&v.encoding_aes_key),
    );
    let raw = "msg_signature=477715d11cdb4164915debcba66cb864d751f3e6&timestamp=1409659813&nonce=1372623149";
    let opened = open_callback(
        &creds,
        &CallbackQuery::parse(raw).unwrap(),
        outer.body.as_bytes(),
    )
    .unwrap();
    assert_eq!(opened.decrypted.as_deref(), Some(v.message.as_bytes()));
    assert_eq!(
        opened.envelope.to_user_name.as_deref(),
        Some("wx5823bf96d3bd56c7")
    );
    assert_eq!(opened.envelope.msg_type.as_deref(), Some("text"));
    // WeCom never takes a clear body, whatever the query says.
    let clear = xml_named("wecom_official_text");
    assert_eq!(
        open_callback(
            &creds,
            &CallbackQuery::parse(raw).unwrap(),
            clear.body.as_bytes()
        ),
        Err(VerifyError::NotEncrypted)
    );
}

/// SOURCE: WxJava (chanjarster/weixin-java-tools WxCryptUtilTest, key `...ABCDEFG`) and its
/// current fork (tuke-code/WxJava, canonical twin `...ABCDEFE`): one ciphertext, two spellings of
/// the same 32 key bytes; strict base64 accepts only the canonical one, the crate both.
#[test]
fn wxjava_non_canonical_key_and_canonical_twin_decrypt_the_same_ciphertext() {
    let old = decrypt_named("wxjava_chinese_short");
    let twin = decrypt_named("wxjava_chinese_short_canonical_key");
    assert_eq!(old.encrypt, twin.encrypt);
    assert!(!strict_base64_accepts(&old.encoding_aes_key));
    assert!(strict_base64_accepts(&twin.encoding_aes_key));
    assert_eq!(
        decode_key_by_hand(&old.encoding_aes_key).0,
        decode_key_by_hand(&twin.encoding_aes_key).0
    );
    let random = hex16(old.random_hex.as_deref().unwrap());
    for v in [old, twin] {
        let key = AesKey::from_encoding_aes_key(&v.encoding_aes_key).unwrap();
        assert_eq!(
            key.decrypt(&v.encrypt, &v.receive_id).unwrap(),
            "我是中文abcd123".as_bytes()
        );
        assert_eq!(
            key.encrypt(v.message.as_bytes(), &v.receive_id, random),
            v.encrypt
        );
    }
}

/// SOURCE: WxJava testAesEncrypt (chanjarster/weixin-java-tools): plain Chinese text, encrypted
/// with randomStr `aaaabbbbccccdddd`; message_len counts UTF-8 bytes (19 for 11 characters).
#[test]
fn wxjava_chinese_text_decrypts_and_reencrypts() {
    let v = decrypt_named("wxjava_chinese_short");
    assert_eq!(v.message, "我是中文abcd123");
    assert_eq!((v.message.chars().count(), v.message_len), (11, 19));
    let key = AesKey::from_encoding_aes_key(&v.encoding_aes_key).unwrap();
    assert_eq!(
        key.decrypt(&v.encrypt, &v.receive_id).unwrap(),
        v.message.as_bytes()
    );
    assert_eq!(
        key.encrypt(v.message.as_bytes(), &v.receive_id, *b"aaaabbbbccccdddd"),
        v.encrypt
    );
}

/// SOURCE: ArtisanCloud/PowerWeChat Encryptor_test.go: WeCom text with Chinese Content (密文测试),
/// pad 24, canonical key; the published test passes appId `1000005` but the receive id inside
/// the ciphertext is the corp id, which the crate checks.
#[test]
fn powerwechat_wecom_chinese_text_message_opens() {
    let v = decrypt_named("powerwechat_work_chinese");
    let key = AesKey::from_encoding_aes_key(&v.encoding_aes_key).unwrap();
    let message = key.decrypt(&v.encrypt, "wwedab3d5fc43636d8").unwrap();
    assert!(
        String::from_utf8(message)
            .unwrap()
            .contains("<Content><![CDATA[密文测试]]></Content>")
    );
    assert_eq!(
        key.decrypt(&v.encrypt, "1000005"),
        Err(CryptoError::ReceiveId)
    );

    let creds = credentials(
        Kind::WeCom,
        v.token.as_deref().unwrap(),
        &v.receive_id,
        safe(&v.encoding_aes_key),
    );
    let body = format!(
        "<xml><ToUserName><![CDATA[wwedab3d5fc43636d8]]></ToUserName><Encrypt><![CDATA[{}]]></Encrypt><AgentID><![CDATA[1000005]]></AgentID></xml>",
        v.encrypt
    );
    let raw = format!(
        "msg_signature={}&timestamp=1623301925&nonce=1624217036",
        v.msg_signature.as_deref().unwrap()
    );
    let opened = open_callback(
        &creds,
        &CallbackQuery::parse(&raw).unwrap(),
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(
        opened.envelope.from_user_name.as_deref(),
        Some("WangChaoYi")
    );
    assert_eq!(
        opened.envelope.msg_id.as_deref(),
        Some("6972028683187026694")
    );
    assert_eq!(opened.envelope.agent_id.as_deref(), Some("1000005"));
}

/// SOURCE: sbzhu/weworkapi_python callback/Sample.py (official WeCom Python sample): Chinese
/// Content (你好) without any CDATA, non-canonical key.
#[test]
fn wecom_official_python_sample_chinese_message_without_cdata() {
    let v = decrypt_named("wecom_sbzhu_post_chinese");
    let key = AesKey::from_encoding_aes_key(&v.encoding_aes_key).unwrap();
    let message = key.decrypt(&v.encrypt, &v.receive_id).unwrap();
    assert_eq!(message, v.message.as_bytes());
    assert_eq!(v.message.len(), 228);
    let env = Envelope::parse(&message).unwrap();
    assert_eq!(env.from_user_name.as_deref(), Some("ChenJiaShun"));
    assert_eq!(env.msg_type.as_deref(), Some("text"));
    assert_eq!(env.msg_id.as_deref(), Some("1456453720"));
}

/// SYNTHETIC (no public vector has pad 32): a message whose 20 + len + receive_id length is a
/// multiple of 32 gets a whole extra block of 32 bytes of 0x20.
#[test]
fn synthetic_pad_32_full_pad_block_round_trips() {
    let encoding_aes_key = &decrypt_named("wecom_official_post").encoding_aes_key;
    let key = AesKey::from_encoding_aes_key(encoding_aes_key).unwrap();
    let cases: [(&str, &str); 2] = [
        // corp/app id of 18 bytes + 26-byte message + 20 = 64
        ("pad-32 synthetic: 26 bytes", "wx5823bf96d3bd56c7"),
        // WeCom bot: empty receive id + 44-byte message (Chinese, 3 bytes a character) + 20 = 64
        ("<xml><Content>你好, 世界</Content></xml>", ""),
    ];
    for (message, receive_id) in cases {
        let aligned = 20 + message.len() + receive_id.len();
        assert_eq!(aligned % 32, 0, "{message}");
        assert_eq!(pad_from_lengths(message.len(), receive_id.len()), 32);
        let sealed = key.encrypt(message.as_bytes(), receive_id, *b"synthetic-pad-32");
        assert_eq!(STANDARD.decode(&sealed).unwrap().len(), aligned + 32);
        assert_eq!(
            key.decrypt(&sealed, receive_id).unwrap(),
            message.as_bytes()
        );
        // The independent raw AES oracle sees the 32 pad bytes of 0x20.
        let raw = raw_decrypt(encoding_aes_key, &sealed);
        assert_eq!((raw.pad_value, raw.pad_run), (32, 32));
        assert!(raw.body[aligned..].iter().all(|&b| b == 0x20));
        assert_eq!(raw.length_field, message.len());
        assert_eq!(&raw.random, b"synthetic-pad-32");
    }
}

/// SYNTHETIC (pad 32 as above): tampering with the final pad block is refused as Padding or
/// Length, never a panic and never a message.
#[test]
fn synthetic_pad_32_tampered_last_block_is_refused_without_panic() {
    let encoding_aes_key = &decrypt_named("wecom_official_post").encoding_aes_key;
    let key = AesKey::from_encoding_aes_key(encoding_aes_key).unwrap();
    let receive_id = "wx5823bf96d3bd56c7";
    let sealed = key.encrypt(
        b"pad-32 synthetic: 26 bytes",
        receive_id,
        *b"synthetic-pad-32",
    );
    let bytes = STANDARD.decode(&sealed).unwrap();
    assert_eq!(bytes.len(), 96);
    let refused = |tampered: &[u8]| key.decrypt(&STANDARD.encode(tampered), receive_id);

    // The whole last AES block garbled.
    let mut garbled = bytes.clone();
    for b in &mut garbled[80..] {
        *b ^= 0xff;
    }
    let err = refused(&garbled).unwrap_err();
    assert!(
        matches!(err, CryptoError::Padding | CryptoError::Length),
        "{err:?}"
    );

    // One byte of the last AES block changed at a time (garbles that plaintext block).
    for at in 80..96 {
        let mut t = bytes.clone();
        t[at] ^= 0x01;
        let err = refused(&t).unwrap_err();
        assert!(
            matches!(err, CryptoError::Padding | CryptoError::Length),
            "byte {at}: {err:?}"
        );
    }
    // One byte of the block before it changed: flips exactly one pad byte of the last block.
    for at in 64..80 {
        let mut t = bytes.clone();
        t[at] ^= 0x01;
        assert_eq!(refused(&t), Err(CryptoError::Padding), "byte {at}");
    }
    // The pad block dropped entirely, or truncated to one AES block: refused, no panic.
    assert!(matches!(
        refused(&bytes[..64]),
        Err(CryptoError::Padding | CryptoError::Length)
    ));
    assert!(refused(&bytes[..16]).is_err());
    assert!(refused(&bytes[..80]).is_err());
}

/// SOURCE: official WeCom C# sample VerifyURL (JeffreySu/WeiXinMPSDK Tencent/Sample.cs; raw
/// query also in sbzhu/weworkapi_python): the wire query with %2F/%2B/%3D, reply = plaintext.
#[test]
fn wecom_official_verify_url_echostr_returns_plaintext() {
    let v = echostr_named("wecom_official_verify_url");
    let raw = format!(
        "msg_signature=5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3&timestamp=1409659589&nonce=263014780&echostr={}",
        v.echostr_raw.as_deref().unwrap()
    );
    let creds = credentials(
        Kind::WeCom,
        "QDG6eK",
        "wx5823bf96d3bd56c7",
        safe(&v.encoding_aes_key),
    );
    let reply = verify_url(&creds, &CallbackQuery::parse(&raw).unwrap()).unwrap();
    assert_eq!(reply, b"1616140317555161061");
    // '+' left literal in the query (not %2B) still means '+', never a space.
    let literal = raw.replace("%2B", "+").replace("%2F", "/");
    assert_eq!(
        verify_url(&creds, &CallbackQuery::parse(&literal).unwrap()).unwrap(),
        b"1616140317555161061"
    );
}

/// SOURCE: wechatpy tests/test_crypto.py test_check_signature_should_fail: the same signature
/// with nonce 437374424 must be refused.
#[test]
fn wechatpy_work_check_signature_should_fail_twin_is_rejected() {
    let v = echostr_named("wechatpy_work_check_signature");
    let creds = credentials(
        Kind::WeCom,
        &v.token,
        &v.receive_id,
        safe(&v.encoding_aes_key),
    );
    let ok = query(&[
        ("msg_signature", Some(&v.msg_signature)),
        ("timestamp", Some(&v.timestamp)),
        ("nonce", Some("437374425")),
        ("echostr", Some(&v.echostr)),
    ]);
    assert_eq!(
        verify_url(&creds, &CallbackQuery::parse(&ok).unwrap()).unwrap(),
        b"5927782489442352469"
    );
    let bad = ok.replace("nonce=437374425", "nonce=437374424");
    assert_eq!(
        verify_url(&creds, &CallbackQuery::parse(&bad).unwrap()),
        Err(VerifyError::MsgSignature)
    );
}

/// SOURCE: wechatpy tests/test_crypto.py test_encrypt_message (random mocked to
/// `1234567890123456`): the crate reproduces the published ciphertext byte for byte.
#[test]
fn wechatpy_encrypt_message_reproduces_published_ciphertext() {
    let v = decrypt_named("wechatpy_work_reply");
    let key = AesKey::from_encoding_aes_key(&v.encoding_aes_key).unwrap();
    let sealed = key.encrypt(v.message.as_bytes(), &v.receive_id, *b"1234567890123456");
    assert_eq!(sealed, v.encrypt);
    assert_eq!(
        msg_signature("123456", "1411525903", "461056294", &sealed).as_str(),
        "407518b7649e86ef23978113f92d27afa9296533"
    );
}

/// SOURCE: w7corp/easywechat tests/Kernel/EncryptorTest.php: the fields that test asserts.
#[test]
fn easywechat_oa_decrypt_yields_the_asserted_fields() {
    let v = decrypt_named("easywechat_oa_post");
    let key = AesKey::from_encoding_aes_key(&v.encoding_aes_key).unwrap();
    let message = key.decrypt(&v.encrypt, &v.receive_id).unwrap();
    let env = Envelope::parse(&message).unwrap();
    assert_eq!(env.to_user_name.as_deref(), Some("asdasdasd"));
    assert_eq!(env.from_user_name.as_deref(), Some("asdasdasdsadasd"));
    assert_eq!(env.create_time.as_deref(), Some("1234567898"));
    assert!(
        String::from_utf8(message)
            .unwrap()
            .contains("<Content><![CDATA[hello]]></Content>")
    );
}

/// SOURCE: official OA WXBizMsgCrypt Python sample (cryptoDemo): a compatible-mode body (clear
/// fields and Encrypt side by side) opens in compatible and safe mode; its clear twin, signed
/// with `signature` only, opens in compatible mode but not in safe mode.
#[test]
fn oa_official_sample_compatible_mode_body_opens() {
    let outer = xml_named("oa_official_sample_compat_body");
    let v = decrypt_named("oa_official_sample_compat");
    let key = AesKey::from_encoding_aes_key(&v.encoding_aes_key).unwrap();
    let sig = signature("spamtest", "1409735669", "1320562132");
    let raw = format!(
        "signature={sig}&timestamp=1409735669&nonce=1320562132&openid=oyORnuP8q7ou2gfYjqLzSIWZf0rs&encrypt_type=aes&msg_signature=5d197aaffba7e9b25a30732f161a50dee96bd5fa"
    );
    let q = CallbackQuery::parse(&raw).unwrap();
    for security in [
        Security::Compatible(key.clone()),
        Security::Safe(key.clone()),
    ] {
        let creds = credentials(Kind::OfficialAccount, "spamtest", &v.receive_id, security);
        let opened = open_callback(&creds, &q, outer.body.as_bytes()).unwrap();
        assert_eq!(opened.decrypted.as_deref(), Some(v.message.as_bytes()));
        assert_eq!(
            opened.envelope.msg_id.as_deref(),
            Some("6054768590064713728")
        );
    }
    let clear = outer
        .body
        .replace(&format!("<Encrypt><![CDATA[{}]]></Encrypt>", v.encrypt), "");
    let compat = credentials(
        Kind::OfficialAccount,
        "spamtest",
        &v.receive_id,
        Security::Compatible(key.clone()),
    );
    let opened = open_callback(&compat, &q, clear.as_bytes()).unwrap();
    assert_eq!(opened.decrypted, None);
    assert_eq!(
        opened.envelope,
        Envelope::parse(v.message.as_bytes()).unwrap()
    );
    let safe_creds = credentials(
        Kind::OfficialAccount,
        "spamtest",
        &v.receive_id,
        Security::Safe(key),
    );
    assert_eq!(
        open_callback(&safe_creds, &q, clear.as_bytes()),
        Err(VerifyError::NotEncrypted)
    );
}

/// SOURCE: DOC-MP message-push.html, plaintext JSON example (debug_demo).
#[test]
fn mini_program_doc_plaintext_json_message_opens() {
    let v = json_named("mp_doc_plaintext_debug_demo");
    let creds = credentials(Kind::MiniProgram, "AAAAA", "", Security::Plaintext);
    let raw =
        "signature=899cf89e464efb63f54ddac96b0a0a235f53aa78&timestamp=1714037059&nonce=486452656";
    let opened = open_callback(
        &creds,
        &CallbackQuery::parse(raw).unwrap(),
        v.body.as_bytes(),
    )
    .unwrap();
    assert_eq!(opened.decrypted, None);
    assert_eq!(opened.envelope.format, Format::Json);
    assert_eq!(opened.envelope.create_time.as_deref(), Some("1714037059"));
    assert!(opened.envelope.is_event("debug_demo"));
    assert_eq!(
        opened.envelope.from_user_name.as_deref(),
        Some("o9AgO5Kd5ggOC-bXrbNODIiE3bGY")
    );
    let forged = raw.replace("nonce=486452656", "nonce=486452657");
    assert_eq!(
        open_callback(
            &creds,
            &CallbackQuery::parse(&forged).unwrap(),
            v.body.as_bytes()
        ),
        Err(VerifyError::Signature)
    );
}

/// SOURCE: DOC-MP message-push.html, safe-mode (encrypted) JSON example: all-'A' key, the
/// decrypted message is compact JSON with CreateTime 1714112445.
#[test]
fn mini_program_doc_safe_mode_json_message_opens() {
    let v = json_named("mp_doc_safe_mode_debug_demo");
    let creds = credentials(
        Kind::MiniProgram,
        "AAAAA",
        "wxba5fad812f8e6fb9",
        safe("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    );
    let raw = "signature=6c5c811b55cc85e0e1b54100749188c20beb3f5d&timestamp=1714112445&nonce=415670741&openid=o9AgO5Kd5ggOC-bXrbNODIiE3bGY&encrypt_type=aes&msg_signature=046e02f8204d34f8ba5fa3b1db94908f3df2e9b3";
    let opened = open_callback(
        &creds,
        &CallbackQuery::parse(raw).unwrap(),
        v.body.as_bytes(),
    )
    .unwrap();
    assert_eq!(
        opened.decrypted.as_deref(),
        v.decrypted.as_deref().map(str::as_bytes)
    );
    assert_eq!(opened.envelope.format, Format::Json);
    assert_eq!(opened.envelope.create_time.as_deref(), Some("1714112445"));
    assert_eq!(
        opened.envelope.to_user_name.as_deref(),
        Some("gh_97417a04a28d")
    );
    assert!(opened.envelope.is_event("debug_demo"));
    // The doc's decryption walk-through: random a8eedb185eb2fecf, msg_len 167, 224 bytes.
    let d = decrypt_named("mp_doc_json_request");
    let raw_plain = raw_decrypt(&d.encoding_aes_key, &d.encrypt);
    assert_eq!(&raw_plain.random, b"a8eedb185eb2fecf");
    assert_eq!((raw_plain.length_field, raw_plain.body.len()), (167, 224));
}

/// SOURCE: DOC-MP message-push.html, GET handshake example: echostr echoed verbatim.
#[test]
fn mini_program_doc_get_handshake_echoes_echostr() {
    let creds = credentials(Kind::MiniProgram, "AAAAA", "", Security::Plaintext);
    let raw = "signature=f464b24fc39322e44b38aa78f5edd27bd1441696&echostr=4375120948345356249&timestamp=1714036504&nonce=1514711492";
    assert_eq!(
        verify_url(&creds, &CallbackQuery::parse(raw).unwrap()).unwrap(),
        b"4375120948345356249"
    );
}

/// SOURCE: sbzhu/weworkapi_python callback_json/Sample.py: the published payload is malformed
/// JSON; it authenticates and decrypts, then is refused as a body rather than half-parsed.
#[test]
fn wecom_official_python_json_sample_malformed_payload_is_refused_after_authentication() {
    let v = json_named("wecom_sbzhu_json_callback");
    let creds = credentials(
        Kind::WeCom,
        v.token.as_deref().unwrap(),
        "ww1436e0e65a779aee",
        safe(v.encoding_aes_key.as_deref().unwrap()),
    );
    let raw = "msg_signature=e3647471e395139e2308c1fa963f2d648a00b90e&timestamp=1409659813&nonce=1372623149";
    let result = open_callback(
        &creds,
        &CallbackQuery::parse(raw).unwrap(),
        v.body.as_bytes(),
    );
    assert!(
        matches!(result, Err(VerifyError::Envelope(EnvelopeError::Json(_)))),
        "{result:?}"
    );
}

/// An open platform's two URLs with the doc's values: the message URL's request (the doc's
/// `$APPID$` is wxba5fad812f8e6fb9; the receive id inside is the platform's own app id) opens
/// with the platform's credentials and dedupes per authorizer; the ticket pushed to the
/// authorization-event URL, encrypted twice with different random prefixes (as two pushes of
/// the same ticket are), opens to the same dedupe key, keyed on AppId + CreateTime + InfoType.
#[test]
fn open_platform_doc_vectors_through_both_urls() {
    let d = decrypt_named("op_doc_xml_request");
    let (token, timestamp, nonce, sig) = (
        d.token.as_deref().unwrap(),
        d.timestamp.as_deref().unwrap(),
        d.nonce.as_deref().unwrap(),
        d.msg_signature.as_deref().unwrap(),
    );
    let creds = credentials(
        Kind::OpenPlatform,
        token,
        &d.receive_id,
        safe(&d.encoding_aes_key),
    );
    let raw_query = query(&[
        (
            "signature",
            Some("cc0c594499c1634947d5b502f158ee518947db27"),
        ),
        ("timestamp", Some(timestamp)),
        ("nonce", Some(nonce)),
        ("openid", Some("o9AgO5Kd5ggOC-bXrbNODIiE3bGY")),
        ("encrypt_type", Some("aes")),
        ("msg_signature", Some(sig)),
    ]);
    let q = CallbackQuery::parse(&raw_query).unwrap();
    let body = outer_body(&d.message, "gh_97417a04a28d", &d.encrypt);
    let opened = open_callback(&creds, &q, body.as_bytes()).unwrap();
    assert_eq!(opened.message(body.as_bytes()), d.message.as_bytes());
    let message = opened.message(body.as_bytes());
    assert_ne!(
        dedupe_key("op/wxba5fad812f8e6fb9", &opened.envelope, message),
        dedupe_key("op/wxother", &opened.envelope, message),
        "the same message at two authorizers is two callbacks"
    );
    // The authorizer's app id is not the receive id: decrypting for it fails.
    let as_authorizer = credentials(
        Kind::OpenPlatform,
        token,
        "wxba5fad812f8e6fb9",
        safe(&d.encoding_aes_key),
    );
    assert!(open_callback(&as_authorizer, &q, body.as_bytes()).is_err());
    // Open platforms are safe mode only: a clear body is refused even with a good signature.
    assert_eq!(
        open_callback(&creds, &q, d.message.as_bytes()).unwrap_err(),
        VerifyError::NotEncrypted
    );

    let ticket = xml_named("op_doc_component_verify_ticket");
    let key = AesKey::from_encoding_aes_key(&d.encoding_aes_key).unwrap();
    let keys: Vec<String> = [[1u8; 16], [2u8; 16]]
        .iter()
        .map(|random| {
            let encrypt = key.encrypt(ticket.body.as_bytes(), &d.receive_id, *random);
            let sig = msg_signature(token, "1413192605", "77", &encrypt);
            let raw_query = query(&[
                (
                    "signature",
                    Some(signature(token, "1413192605", "77").as_str()),
                ),
                ("timestamp", Some("1413192605")),
                ("nonce", Some("77")),
                ("encrypt_type", Some("aes")),
                ("msg_signature", Some(sig.as_str())),
            ]);
            let body = format!(
                "<xml><AppId><![CDATA[{}]]></AppId><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>",
                d.receive_id
            );
            let q = CallbackQuery::parse(&raw_query).unwrap();
            let opened = open_callback(&creds, &q, body.as_bytes()).unwrap();
            assert_eq!(
                opened.envelope.info_type.as_deref(),
                Some("component_verify_ticket")
            );
            dedupe_key("op", &opened.envelope, opened.message(body.as_bytes())).key
        })
        .collect();
    assert_eq!(keys[0], keys[1], "one ticket, however it is encrypted");
    assert_eq!(
        keys[0],
        "2:opi10:some_appid10:141319260523:component_verify_ticket0:"
    );
}
