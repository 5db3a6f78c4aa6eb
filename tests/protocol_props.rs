#![allow(clippy::unwrap_used)]
//! Property tests for `wechat::*`: nothing panics on any input, what is sealed opens back to the
//! same fields, tampering is caught, and resends share one dedupe key. Where a stronger property
//! exists than "does not panic", it is asserted: decryption, key derivation, query parsing and
//! signatures agree with models written from the scheme, and nothing is accepted without the
//! signature its account requires. Encrypt → decrypt round trips cover every message length
//! 0..=200 and every length within two bytes of a 32-byte edge up to 4 KiB.
//!
//! Coverage-guided fuzzing of the same functions lives in `fuzz/` and runs by hand or in a bounded
//! CI step (`fuzz/run.sh SECONDS`), never inside `cargo test`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use aes::Aes256;
use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use proptest::collection::vec;
use proptest::prelude::*;
use sha1::{Digest, Sha1};
use wechat_fanout::config::Mode;
use wechat_fanout::wechat::envelope::{
    Sealed, encrypted_request_json, encrypted_request_xml, push_cdata_element,
};
use wechat_fanout::wechat::{
    AesKey, CallbackQuery, Credentials, CryptoError, Envelope, EnvelopeError, Format, Kind, Opened,
    SealParams, Security, VerifyError, dedupe_key, msg_signature, open_callback, seal_callback,
    signature, verify_url,
};

/// The non-canonical key of the crypto unit tests: its 43rd character has non-zero discarded bits.
const FIXED_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const TOKEN: &str = "QDG6eK";
const RECEIVE_ID: &str = "wx5823bf96d3bd56c7";

fn fixed_key() -> AesKey {
    AesKey::from_encoding_aes_key(FIXED_KEY).unwrap()
}

/// A raw 32-byte key and its EncodingAESKey (canonical: the 43 characters of its base64).
fn raw_key() -> impl Strategy<Value = ([u8; 32], String)> {
    any::<[u8; 32]>().prop_map(|raw| {
        let mut encoding = STANDARD.encode(raw);
        encoding.truncate(43);
        (raw, encoding)
    })
}

/// Any 43 characters of the base64 alphabet, canonical or not.
fn encoding_aes_key() -> impl Strategy<Value = String> {
    "[A-Za-z0-9+/]{43}"
}

/// App ids, corp ids, and the empty receive id of WeCom bots; sometimes arbitrary text.
fn receive_id() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "wx[0-9a-f]{16}",
        "ww[0-9a-f]{16}",
        "\\PC{0,24}",
    ]
}

// ---------------------------------------------------------------------------------------------
// Encryption round trips.

/// Ciphertext length WeChat produces: PKCS#7 to 32, and an aligned text gets a full 32-byte pad.
fn expected_cipher_len(message_len: usize, receive_id_len: usize) -> usize {
    let text = 20 + message_len + receive_id_len;
    text - text % 32 + 32
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every message length 0..=200 covers every residue modulo 32, so every position around the
    /// pad edges (pad 1, pad 31, and the full pad of 32 for aligned texts) is exercised.
    #[test]
    fn encrypt_decrypt_round_trips_every_length(
        encoding in encoding_aes_key(),
        receive_id in receive_id(),
        random in any::<[u8; 16]>(),
        bytes in vec(any::<u8>(), 200),
    ) {
        let key = AesKey::from_encoding_aes_key(&encoding).unwrap();
        let mut full_pads = 0;
        for len in 0..=200 {
            let message = &bytes[..len];
            let sealed = key.encrypt(message, &receive_id, random);
            let cipher_len = STANDARD.decode(&sealed).unwrap().len();
            prop_assert_eq!(cipher_len, expected_cipher_len(len, receive_id.len()));
            if (20 + len + receive_id.len()) % 32 == 0 {
                full_pads += 1;
            }
            prop_assert_eq!(key.decrypt(&sealed, &receive_id).unwrap(), message);
        }
        prop_assert!(full_pads >= 6, "only {} aligned texts", full_pads);
    }

    #[test]
    fn encrypt_decrypt_round_trips_arbitrary_messages(
        encoding in encoding_aes_key(),
        receive_id in receive_id(),
        other_id in receive_id(),
        message in vec(any::<u8>(), 0..2048),
    ) {
        let key = AesKey::from_encoding_aes_key(&encoding).unwrap();
        let sealed = key.encrypt(&message, &receive_id, rand::random());
        prop_assert_eq!(key.decrypt(&sealed, &receive_id).unwrap(), message);
        // The length field fixes where the receive id starts, so any other id is refused.
        if other_id != receive_id {
            prop_assert_eq!(key.decrypt(&sealed, &other_id), Err(CryptoError::ReceiveId));
        }
    }
}

proptest! {
    // Each case seals and opens about 650 messages of up to 4 KiB.
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Past the first few blocks: every message length whose padded text is within two bytes of a
    /// 32-byte edge, up to 4 KiB, so pads of 30, 31, 32 (full block), 1 and 2 are all met there.
    #[test]
    fn encrypt_decrypt_round_trips_around_every_block_edge_up_to_4k(
        encoding in encoding_aes_key(),
        receive_id in receive_id(),
        random in any::<[u8; 16]>(),
        bytes in vec(any::<u8>(), 4096),
    ) {
        let key = AesKey::from_encoding_aes_key(&encoding).unwrap();
        let overhead = 20 + receive_id.len();
        let mut checked = 0;
        for edge in (32usize..=4096 + 32).step_by(32) {
            for text_len in edge - 2..=edge + 2 {
                let Some(len) = text_len.checked_sub(overhead).filter(|len| *len <= 4096) else {
                    continue;
                };
                let message = &bytes[..len];
                let sealed = key.encrypt(message, &receive_id, random);
                let cipher_len = STANDARD.decode(&sealed).unwrap().len();
                let expected = expected_cipher_len(len, receive_id.len());
                prop_assert_eq!(cipher_len, expected, "length {}", len);
                let opened = key.decrypt(&sealed, &receive_id);
                prop_assert_eq!(opened.as_deref(), Ok(message), "length {}", len);
                checked += 1;
            }
        }
        prop_assert!(checked >= 600, "only {} lengths", checked);
    }
}

// ---------------------------------------------------------------------------------------------
// Decryption of crafted plaintexts, checked against a model of every check `decrypt` makes.

/// What `decrypt` must answer for this plaintext (after AES), written from the scheme, not the code.
fn model_decrypt(plain: &[u8], receive_id: &str) -> Result<Vec<u8>, CryptoError> {
    let pad = usize::from(*plain.last().unwrap());
    if pad == 0 || pad > 32 || pad > plain.len() {
        return Err(CryptoError::Padding);
    }
    let body = &plain[..plain.len() - pad];
    if plain[body.len()..].iter().any(|&b| usize::from(b) != pad) {
        return Err(CryptoError::Padding);
    }
    if body.len() < 20 {
        return Err(CryptoError::Length);
    }
    let message_len = u32::from_be_bytes(body[16..20].try_into().unwrap()) as usize;
    let rest = &body[20..];
    if message_len > rest.len() {
        return Err(CryptoError::Length);
    }
    if &rest[message_len..] != receive_id.as_bytes() {
        return Err(CryptoError::ReceiveId);
    }
    Ok(rest[..message_len].to_vec())
}

/// AES-256-CBC without padding, IV = first 16 key bytes, as WeChat does; `plain` is whole blocks.
fn raw_encrypt(raw: &[u8; 32], plain: &[u8]) -> String {
    let mut buf = plain.to_vec();
    let len = buf.len();
    let iv: [u8; 16] = raw[..16].try_into().unwrap();
    cbc::Encryptor::<Aes256>::new(raw.into(), &iv.into())
        .encrypt_padded_mut::<NoPadding>(&mut buf, len)
        .unwrap();
    STANDARD.encode(buf)
}

/// The inverse of [`raw_encrypt`]: AES-256-CBC decryption of whole blocks, no unpadding.
fn raw_decrypt(raw: &[u8; 32], cipher: &[u8]) -> Vec<u8> {
    let mut buf = cipher.to_vec();
    let iv: [u8; 16] = raw[..16].try_into().unwrap();
    cbc::Decryptor::<Aes256>::new(raw.into(), &iv.into())
        .decrypt_padded_mut::<NoPadding>(&mut buf)
        .unwrap();
    buf
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The canonical spelling of a 43-character EncodingAESKey: its last character carries 4 key bits
/// and 2 discarded ones, which a canonical encoder leaves at zero.
fn canonical(encoding: &str) -> String {
    let last = encoding.as_bytes()[42];
    let value = BASE64_ALPHABET.iter().position(|&c| c == last).unwrap();
    let mut out = encoding[..42].to_owned();
    out.push(char::from(BASE64_ALPHABET[value & !0b11]));
    out
}

/// The 32 key bytes, decoded by a strict decoder from the canonical spelling.
fn raw_of(encoding: &str) -> [u8; 32] {
    STANDARD
        .decode(format!("{}=", canonical(encoding)))
        .unwrap()
        .try_into()
        .unwrap()
}

/// random(16) | len(4, BE) | message | receive id | PKCS#7 to 32: the text WeChat encrypts.
fn model_plaintext(random: [u8; 16], message: &[u8], receive_id: &str) -> Vec<u8> {
    let mut plain = random.to_vec();
    plain.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    plain.extend_from_slice(message);
    plain.extend_from_slice(receive_id.as_bytes());
    let pad = 32 - plain.len() % 32;
    plain.resize(plain.len() + pad, u8::try_from(pad).unwrap());
    plain
}

/// Plaintexts near the valid ones: a length field close to the real length (or anything), a tail
/// that may end in the receive id, a pad that may be valid, broken, or not to 32.
fn crafted_plaintext(receive_id: String) -> impl Strategy<Value = Vec<u8>> {
    let structured = (
        any::<[u8; 16]>(),
        vec(any::<u8>(), 0..80),
        // Mostly the true length, so that the receive-id check and success are reached often.
        prop_oneof![
            4 => Just(Some(0)),
            2 => (-3i64..=3).prop_map(Some),
            1 => Just(None),
        ],
        any::<u32>(),
        prop::bool::weighted(0.75),
        // None: WeChat's pad to 32; Some(16): PKCS#7 to the AES block, which `decrypt` accepts;
        // anything else: filler, then `pad` copies of `pad` (0, > 32 or a short pad are refused).
        prop_oneof![
            4 => Just(None),
            1 => Just(Some(16)),
            2 => (0u8..=40).prop_map(Some),
        ],
        prop::bool::weighted(0.25),
        any::<u8>(),
    )
        .prop_map(
            move |(random, message, delta, arbitrary_len, with_id, pad, corrupt, at)| {
                let len_field = match delta {
                    Some(d) => u32::try_from((message.len() as i64 + d).max(0)).unwrap(),
                    None => arbitrary_len,
                };
                let mut plain = random.to_vec();
                plain.extend_from_slice(&len_field.to_be_bytes());
                plain.extend_from_slice(&message);
                if with_id {
                    plain.extend_from_slice(receive_id.as_bytes());
                }
                let pad = match pad {
                    None => 32 - plain.len() % 32,
                    Some(16) => 16 - plain.len() % 16,
                    Some(pad) => usize::from(pad),
                };
                let total = (plain.len() + pad.max(1)).div_ceil(16) * 16;
                while plain.len() + pad < total {
                    plain.push(0xA5);
                }
                plain.resize(total, pad as u8);
                if corrupt {
                    let i = total - 1 - usize::from(at) % total.min(33);
                    plain[i] ^= 1 << (at % 8);
                }
                plain
            },
        );
    prop_oneof![
        3 => structured,
        1 => (1usize..12).prop_flat_map(|blocks| vec(any::<u8>(), blocks * 16)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decrypt_agrees_with_the_model_on_crafted_plaintexts(
        (key, receive_id, plain) in (raw_key(), receive_id()).prop_flat_map(|(key, id)| {
            (Just(key), Just(id.clone()), crafted_plaintext(id))
        }),
    ) {
        let (raw, encoding) = key;
        let aes = AesKey::from_encoding_aes_key(&encoding).unwrap();
        let encrypt = raw_encrypt(&raw, &plain);
        prop_assert_eq!(aes.decrypt(&encrypt, &receive_id), model_decrypt(&plain, &receive_id));
    }

    /// Arbitrary text: refused as base64 unless it is base64, then by length unless it is whole
    /// AES blocks, then exactly as the model says of its AES decryption.
    #[test]
    fn decrypt_of_arbitrary_text_answers_as_the_model(
        text in prop_oneof![any::<String>(), "[A-Za-z0-9+/]{0,64}={0,2}"],
        receive_id in receive_id(),
    ) {
        let result = fixed_key().decrypt(&text, &receive_id);
        match STANDARD.decode(&text) {
            Err(_) => prop_assert_eq!(result, Err(CryptoError::Base64)),
            Ok(bytes) if bytes.is_empty() || bytes.len() % 16 != 0 => {
                prop_assert_eq!(result, Err(CryptoError::CiphertextLength(bytes.len())));
            }
            Ok(bytes) => {
                let plain = raw_decrypt(&raw_of(FIXED_KEY), &bytes);
                prop_assert_eq!(result, model_decrypt(&plain, &receive_id));
            }
        }
    }

    /// Valid base64 of arbitrary bytes, so AES runs and the padding and length checks see garbage.
    #[test]
    fn decrypt_of_arbitrary_ciphertext_answers_as_the_model(
        (raw, encoding) in raw_key(),
        bytes in prop_oneof![
            vec(any::<u8>(), 0..300),
            (1usize..20).prop_flat_map(|blocks| vec(any::<u8>(), blocks * 16)),
        ],
        receive_id in receive_id(),
    ) {
        let key = AesKey::from_encoding_aes_key(&encoding).unwrap();
        let result = key.decrypt(&STANDARD.encode(&bytes), &receive_id);
        if bytes.is_empty() || bytes.len() % 16 != 0 {
            prop_assert_eq!(result, Err(CryptoError::CiphertextLength(bytes.len())));
        } else {
            prop_assert_eq!(result, model_decrypt(&raw_decrypt(&raw, &bytes), &receive_id));
        }
    }

    /// Keys are exactly the 43-character strings of the base64 alphabet, whatever the last one.
    #[test]
    fn keys_are_exactly_43_base64_characters(
        text in prop_oneof![
            any::<String>(),
            "[A-Za-z0-9+/=._ -]{41,45}",
            encoding_aes_key(),
        ],
    ) {
        let expected = text.len() == 43
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
        prop_assert_eq!(AesKey::from_encoding_aes_key(&text).is_ok(), expected, "{:?}", text);
    }

    /// A key with non-zero discarded bits is the key of its canonical spelling (what strict
    /// decoders get wrong), and `encrypt` produces exactly the scheme's ciphertext under it.
    #[test]
    fn encrypt_is_the_scheme_under_the_canonical_key(
        encoding in encoding_aes_key(),
        receive_id in receive_id(),
        random in any::<[u8; 16]>(),
        message in vec(any::<u8>(), 0..100),
    ) {
        let sealed = AesKey::from_encoding_aes_key(&encoding)
            .unwrap()
            .encrypt(&message, &receive_id, random);
        let expected = raw_encrypt(
            &raw_of(&encoding),
            &model_plaintext(random, &message, &receive_id),
        );
        prop_assert_eq!(&sealed, &expected);
        let canonical = AesKey::from_encoding_aes_key(&canonical(&encoding)).unwrap();
        prop_assert_eq!(canonical.encrypt(&message, &receive_id, random), expected);
    }
}

// ---------------------------------------------------------------------------------------------
// Parsers on arbitrary input.

/// Text made of the pieces WeChat bodies and queries are made of, so parsers get past their first
/// byte and into nesting, CDATA, entities, duplicates and JSON values.
fn xmlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("<xml>".to_owned()),
        Just("</xml>".to_owned()),
        Just("<xml/>".to_owned()),
        "</?(ToUserName|FromUserName|CreateTime|MsgType|Event|EventKey|MsgId|MsgID|AgentID|Encrypt|a)>",
        "<(MsgType|Encrypt|a)/>",
        Just("<![CDATA[".to_owned()),
        Just("]]>".to_owned()),
        "&(amp|lt|gt|apos|quot|xxe|);",
        "&#x?[0-9a-fA-F]{0,9};",
        Just("<!DOCTYPE xml>".to_owned()),
        Just("<?xml version=\"1.0\"?>".to_owned()),
        Just("<!-- c -->".to_owned()),
        Just("\u{FEFF}".to_owned()),
        "[ \t\r\n]{1,2}",
        "[a-z0-9+/=]{1,6}",
        "\\PC{1,3}",
        "[{}\\[\\],:]",
        "\"(ToUserName|tousername|MsgType|msgtype|Encrypt|encrypt|agentid|MsgId|x)\"",
        "-?[0-9]{1,22}(\\.[0-9]{1,3})?(e[+-]?[0-9]{1,3})?",
        "(true|false|null)",
    ];
    vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

/// One edit of a valid input: how fuzzers get past the first checks.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Delete(usize, usize),
    Insert(usize, String),
    Duplicate(usize, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Flip(at, b)),
        (any::<usize>(), 1usize..8).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<usize>(), xmlish()).prop_map(|(at, s)| Edit::Insert(at, s)),
        (any::<usize>(), 1usize..32).prop_map(|(at, n)| Edit::Duplicate(at, n)),
    ];
    vec(edit, 0..3)
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len();
        match edit {
            Edit::Flip(at, b) if len > 0 => bytes[at % len] = *b,
            Edit::Delete(at, n) if len > 0 => {
                let at = at % len;
                bytes.drain(at..(at + n).min(len));
            }
            Edit::Insert(at, s) => {
                let at = at % (len + 1);
                bytes.splice(at..at, s.bytes());
            }
            Edit::Duplicate(at, n) if len > 0 => {
                let at = at % len;
                let copy = bytes[at..(at + n).min(len)].to_vec();
                bytes.splice(at..at, copy);
            }
            _ => {}
        }
    }
    bytes
}

/// A valid XML or JSON message with a few edits.
fn mutated_message() -> impl Strategy<Value = Vec<u8>> {
    (message(), any::<bool>(), edits()).prop_map(|(message, json, edits)| {
        let text = if json { message.json() } else { message.xml() };
        apply(text.into_bytes(), &edits)
    })
}

/// Any body: arbitrary bytes, WeChat-flavoured fragments, or a valid message with a few edits.
fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..256),
        xmlish().prop_map(String::into_bytes),
        xmlish().prop_map(|s| format!("<xml>{s}</xml>").into_bytes()),
        mutated_message(),
    ]
}

/// A callback sealed with one of [`all_credentials`], then edited in its query and body.
fn mutated_request() -> impl Strategy<Value = (String, Vec<u8>)> {
    let creds = prop::sample::select(all_credentials());
    (message(), creds, any::<bool>(), edits(), edits()).prop_map(
        |(message, creds, json, query_edits, body_edits)| {
            let text = if json { message.json() } else { message.xml() };
            let sealed = seal_callback(&creds, &text, fixed_params());
            let query = apply(sealed.query.into_bytes(), &query_edits);
            let query = String::from_utf8_lossy(&query).into_owned();
            (query, apply(sealed.body.into_bytes(), &body_edits))
        },
    )
}

fn fixed_params() -> SealParams<'static> {
    SealParams {
        timestamp: "1409659813",
        nonce: "1372623149",
        random: rand::random(),
        openid: Some("o1"),
        to_user_name: "gh_1",
        agent_id: Some("1000002"),
    }
}

fn queryish() -> impl Strategy<Value = String> {
    let pair = (
        "(signature|msg_signature|timestamp|nonce|echostr|encrypt_type|openid|x|)",
        "(=([^&%]|%[0-9a-fA-F]{2}|%[^&]{0,2}|\\+){0,12})?",
    )
        .prop_map(|(k, v)| format!("{k}{v}"));
    vec(pair, 0..8).prop_map(|pairs| pairs.join("&"))
}

/// The query parameters `CallbackQuery` reads, in the order of its fields.
const PARAMETERS: [&str; 7] = [
    "signature",
    "msg_signature",
    "timestamp",
    "nonce",
    "echostr",
    "encrypt_type",
    "openid",
];

fn query_of(values: &[Option<String>; 7]) -> CallbackQuery<'static> {
    let v = |i: usize| values[i].clone().map(Cow::Owned);
    CallbackQuery {
        signature: v(0),
        msg_signature: v(1),
        timestamp: v(2),
        nonce: v(3),
        echostr: v(4),
        encrypt_type: v(5),
        openid: v(6),
    }
}

/// The checks `open_callback` must have made before it returned `opened`.
fn check_opened(
    creds: &Credentials,
    query: &CallbackQuery<'_>,
    body: &[u8],
    opened: &Opened,
) -> Result<(), TestCaseError> {
    let timestamp = query.timestamp.as_deref().unwrap();
    let nonce = query.nonce.as_deref().unwrap();
    match &opened.decrypted {
        Some(decrypted) => {
            let encrypt = Envelope::parse(body).unwrap().encrypt.unwrap();
            let expected = msg_signature(&creds.token, timestamp, nonce, &encrypt);
            prop_assert!(expected.matches(query.msg_signature.as_deref().unwrap()));
            let key = creds.security.key().unwrap();
            prop_assert_eq!(
                &key.decrypt(&encrypt, &creds.receive_id),
                &Ok(decrypted.clone())
            );
            prop_assert_eq!(&opened.envelope, &Envelope::parse(decrypted).unwrap());
        }
        None => {
            prop_assert!(creds.kind != Kind::WeCom && !matches!(creds.security, Security::Safe(_)));
            let expected = signature(&creds.token, timestamp, nonce);
            prop_assert!(expected.matches(query.signature.as_deref().unwrap()));
            prop_assert_eq!(&opened.envelope, &Envelope::parse(body).unwrap());
        }
    }
    Ok(())
}

/// The checks `verify_url` must have made before it answered `answer`.
fn check_handshake(
    creds: &Credentials,
    query: &CallbackQuery<'_>,
    answer: &[u8],
) -> Result<(), TestCaseError> {
    let timestamp = query.timestamp.as_deref().unwrap();
    let nonce = query.nonce.as_deref().unwrap();
    let echostr = query.echostr.as_deref().unwrap();
    if creds.kind == Kind::WeCom {
        let expected = msg_signature(&creds.token, timestamp, nonce, echostr);
        prop_assert!(expected.matches(query.msg_signature.as_deref().unwrap()));
        let key = creds.security.key().unwrap();
        prop_assert_eq!(key.decrypt(echostr, &creds.receive_id), Ok(answer.to_vec()));
    } else {
        let expected = signature(&creds.token, timestamp, nonce);
        prop_assert!(expected.matches(query.signature.as_deref().unwrap()));
        prop_assert_eq!(answer, echostr.as_bytes());
    }
    Ok(())
}

/// The encryption modes of the WeChat console.
const MODES: [Mode; 3] = [Mode::Plaintext, Mode::Compatible, Mode::Safe];

/// Every kind of account in every mode it has, with the fixed key.
fn all_credentials() -> Vec<Credentials> {
    let mut out = Vec::new();
    for kind in [Kind::OfficialAccount, Kind::MiniProgram, Kind::WeCom] {
        for mode in MODES {
            // WeCom has no plaintext mode, but a misconfigured one must not panic either.
            out.push(credentials(kind, mode, TOKEN, RECEIVE_ID, fixed_key()));
        }
    }
    out
}

fn credentials(kind: Kind, mode: Mode, token: &str, receive_id: &str, key: AesKey) -> Credentials {
    Credentials {
        kind,
        token: token.to_owned(),
        receive_id: receive_id.to_owned(),
        security: match mode {
            Mode::Plaintext => Security::Plaintext,
            Mode::Compatible => Security::Compatible(key),
            Mode::Safe => Security::Safe(key),
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn envelope_parse_picks_its_parser_by_the_first_byte(
        body in prop_oneof![any_body(), any::<String>().prop_map(String::into_bytes)],
    ) {
        // A leading UTF-8 BOM is skipped, then white space; `<` means XML, `{` JSON.
        let stripped = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&body);
        let expected = match stripped.iter().find(|b| !b.is_ascii_whitespace()) {
            None => Err(EnvelopeError::Empty),
            Some(b'<') => Envelope::parse_xml(stripped),
            Some(b'{') => Envelope::parse_json(stripped),
            Some(_) => Err(EnvelopeError::UnknownFormat),
        };
        prop_assert_eq!(Envelope::parse(&body), expected);
        if let Ok(envelope) = Envelope::parse_xml(&body) {
            prop_assert_eq!(envelope.format, Format::Xml);
        }
        if let Ok(envelope) = Envelope::parse_json(&body) {
            prop_assert_eq!(envelope.format, Format::Json);
        }
    }

    #[test]
    fn query_parser_never_panics(raw in prop_oneof![any::<String>(), queryish()]) {
        let _ = CallbackQuery::parse(&raw);
    }

    /// Nothing is accepted without its signature: whatever the query and body, an opened callback
    /// or an answered handshake carried the signature the scheme requires for this account, and
    /// what comes out is what the body (or `echostr`) says.
    #[test]
    fn only_authentic_requests_are_accepted(
        (raw_query, body) in prop_oneof![
            (prop_oneof![any::<String>(), queryish()], any_body()),
            mutated_request(),
        ],
    ) {
        let Ok(query) = CallbackQuery::parse(&raw_query) else {
            return Ok(());
        };
        for creds in all_credentials() {
            if let Ok(opened) = open_callback(&creds, &query, &body) {
                check_opened(&creds, &query, &body, &opened)?;
            }
            if let Ok(answer) = verify_url(&creds, &query) {
                check_handshake(&creds, &query, &answer)?;
            }
        }
    }

    /// A correctly signed body whose `Encrypt` is arbitrary text: decryption runs on it, and the
    /// outcome is exactly what `decrypt` says.
    #[test]
    fn signed_arbitrary_encrypt_opens_as_decrypt_says(
        encrypt in prop_oneof![
            any::<String>(),
            vec(any::<u8>(), 0..200).prop_map(|b| STANDARD.encode(b)),
        ],
        timestamp in "[0-9]{0,10}",
        nonce in "[0-9a-zA-Z]{0,10}",
    ) {
        let body = serde_json::json!({ "ToUserName": "gh_1", "Encrypt": encrypt }).to_string();
        let sig = msg_signature(TOKEN, &timestamp, &nonce, &encrypt);
        let raw = format!("timestamp={timestamp}&nonce={nonce}&msg_signature={sig}");
        let query = CallbackQuery::parse(&raw).unwrap();
        let creds = credentials(Kind::MiniProgram, Mode::Safe, TOKEN, RECEIVE_ID, fixed_key());
        let opened = open_callback(&creds, &query, body.as_bytes());
        match fixed_key().decrypt(&encrypt, RECEIVE_ID) {
            Err(e) => prop_assert_eq!(opened, Err(VerifyError::Crypto(e))),
            Ok(inner) => prop_assert_eq!(
                opened.map(|o| o.envelope),
                Envelope::parse(&inner).map_err(VerifyError::from)
            ),
        }
    }

    /// A correctly signed and encrypted body whose decrypted message is arbitrary: the inner parse
    /// runs on it and `open_callback` answers exactly what `Envelope::parse` does.
    #[test]
    fn signed_arbitrary_message_opens_as_parse_says(inner in any_body()) {
        let key = fixed_key();
        let encrypt = key.encrypt(&inner, RECEIVE_ID, rand::random());
        let body = format!("<xml><ToUserName>gh_1</ToUserName><Encrypt>{encrypt}</Encrypt></xml>");
        let sig = msg_signature(TOKEN, "1", "2", &encrypt);
        let raw = format!("timestamp=1&nonce=2&msg_signature={sig}");
        let query = CallbackQuery::parse(&raw).unwrap();
        for kind in [Kind::OfficialAccount, Kind::WeCom] {
            let creds = credentials(kind, Mode::Safe, TOKEN, RECEIVE_ID, fixed_key());
            let opened = open_callback(&creds, &query, body.as_bytes());
            match Envelope::parse(&inner) {
                Ok(envelope) => {
                    let opened = opened.unwrap();
                    prop_assert_eq!(opened.envelope, envelope);
                    prop_assert_eq!(opened.decrypted.as_deref(), Some(&inner[..]));
                }
                Err(e) => prop_assert_eq!(opened, Err(VerifyError::Envelope(e))),
            }
        }
    }

    /// The URL handshake with a valid signature: official accounts echo `echostr`, WeCom decrypts it.
    #[test]
    fn signed_handshakes_answer_as_expected(
        echostr in prop_oneof![
            "\\PC{0,40}",
            vec(any::<u8>(), 0..100).prop_map(|b| STANDARD.encode(b)),
            vec(any::<u8>(), 0..100).prop_map(|m| fixed_key().encrypt(&m, RECEIVE_ID, rand::random())),
        ],
        timestamp in "[0-9]{1,10}",
        nonce in "[0-9]{1,10}",
    ) {
        let encoded: String = utf8_percent_encode(&echostr, NON_ALPHANUMERIC).collect();
        let oa = credentials(Kind::OfficialAccount, Mode::Safe, TOKEN, RECEIVE_ID, fixed_key());
        let sig = signature(TOKEN, &timestamp, &nonce);
        let raw = format!("signature={sig}&timestamp={timestamp}&nonce={nonce}&echostr={encoded}");
        let query = CallbackQuery::parse(&raw).unwrap();
        prop_assert_eq!(verify_url(&oa, &query).unwrap(), echostr.as_bytes());

        let wecom = credentials(Kind::WeCom, Mode::Safe, TOKEN, RECEIVE_ID, fixed_key());
        let sig = msg_signature(TOKEN, &timestamp, &nonce, &echostr);
        let raw =
            format!("msg_signature={sig}&timestamp={timestamp}&nonce={nonce}&echostr={encoded}");
        let query = CallbackQuery::parse(&raw).unwrap();
        prop_assert_eq!(
            verify_url(&wecom, &query),
            fixed_key().decrypt(&echostr, RECEIVE_ID).map_err(VerifyError::Crypto)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Query strings, signatures and built bodies, against what they are documented to be.

/// A query value: anything, or the characters that need care in a query string.
fn query_value() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a-z0-9+/=%& ]{0,12}"]
}

/// One of WeChat's parameter names spelled so that some target's parser reads it as that name:
/// percent-encoded, upper case (ASP.NET), with PHP's mangling, or behind a `;`.
fn disguised(name: &str, how: usize) -> String {
    let (first, rest) = name.split_at(1);
    match how {
        0 => format!("%{:02X}{rest}", first.as_bytes()[0]),
        1 => name.to_ascii_uppercase(),
        2 => format!("+{name}"),
        3 => format!("{name}[]"),
        4 if name.contains('_') => name.replace('_', "."),
        4 => format!("%20{name}"),
        _ => format!("x=1;{name}"),
    }
}

/// `(raw query, the values it encodes, which parameter it repeats, whether it also carries a
/// disguised spelling of one)`: the known parameters percent-encoded (`+` sometimes left raw, an
/// empty value sometimes without `=`), unknown parameters (names nobody reads as WeChat's) and
/// empty pairs among them, all in any order.
fn encoded_query() -> impl Strategy<Value = (String, [Option<String>; 7], Option<usize>, bool)> {
    (
        proptest::array::uniform7(proptest::option::of(query_value())),
        vec(
            "(x|signatures|nonce-x|sign\\+ature|msg_signature_|)(=[a-z0-9%+]{0,6})?",
            0..4,
        ),
        any::<bool>(),
        proptest::option::of(0usize..7),
        proptest::option::of((0usize..7, 0usize..6)),
    )
        .prop_flat_map(|(values, mut pairs, raw_plus, repeated, disguise)| {
            if let Some((i, how)) = disguise {
                pairs.push(format!("{}=v", disguised(PARAMETERS[i], how)));
            }
            for (name, value) in PARAMETERS.iter().zip(&values) {
                let Some(value) = value else { continue };
                let mut encoded: String = utf8_percent_encode(value, NON_ALPHANUMERIC).collect();
                if raw_plus {
                    encoded = encoded.replace("%2B", "+");
                }
                pairs.push(if encoded.is_empty() && raw_plus {
                    (*name).to_owned()
                } else {
                    format!("{name}={encoded}")
                });
            }
            if let Some(i) = repeated {
                pairs.push(format!("{}=", PARAMETERS[i]));
                pairs.push(format!("{}=again", PARAMETERS[i]));
            }
            (
                Just(pairs).prop_shuffle(),
                Just(values),
                Just(repeated),
                Just(disguise.is_some()),
            )
        })
        .prop_map(|(pairs, values, repeated, disguised)| {
            (pairs.join("&"), values, repeated, disguised)
        })
}

fn sha1_hex_of_sorted(parts: &mut [&str]) -> String {
    parts.sort_unstable();
    Sha1::digest(parts.concat())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// What was percent-encoded is read back, whatever the order and the company; a known
    /// parameter given twice, or spelled in a way some parser reads as it, is refused.
    #[test]
    fn query_parser_reads_back_what_was_encoded(
        (raw, values, repeated, disguised) in encoded_query()
    ) {
        let parsed = CallbackQuery::parse(&raw);
        if disguised {
            prop_assert!(matches!(parsed, Err(VerifyError::BadQuery(_))), "{}", raw);
            return Ok(());
        }
        match repeated {
            Some(_) => {
                let refused = Err(VerifyError::BadQuery("a parameter appears twice"));
                prop_assert_eq!(parsed, refused, "{}", raw);
            }
            None => prop_assert_eq!(parsed, Ok(query_of(&values)), "{}", raw),
        }
    }

    /// `signature` and `msg_signature` are the SHA-1 hex of the sorted, concatenated parts, and a
    /// signature matches exactly the strings equal to it up to ASCII case.
    #[test]
    fn signatures_are_sha1_of_the_sorted_parts(
        token in "\\PC{0,16}",
        timestamp in "[0-9]{0,10}|\\PC{0,4}",
        nonce in "[0-9]{0,10}|\\PC{0,4}",
        encrypt in "[A-Za-z0-9+/=]{0,64}|\\PC{0,8}",
        (at, digit) in (0usize..40, "[0-9a-fA-F]"),
        other in "[0-9a-fA-F]{40}|\\PC{0,41}",
    ) {
        let sig = signature(&token, &timestamp, &nonce);
        let expected = sha1_hex_of_sorted(&mut [&token, &timestamp, &nonce]);
        prop_assert_eq!(sig.as_str(), &expected);
        let signed = msg_signature(&token, &timestamp, &nonce, &encrypt);
        prop_assert_eq!(
            signed.as_str(),
            sha1_hex_of_sorted(&mut [&token, &timestamp, &nonce, &encrypt])
        );
        prop_assert!(sig.matches(&expected) && sig.matches(&expected.to_ascii_uppercase()));
        let mut near = expected.clone();
        near.replace_range(at..=at, &digit);
        prop_assert_eq!(sig.matches(&near), near.eq_ignore_ascii_case(&expected));
        prop_assert_eq!(sig.matches(&other), other.eq_ignore_ascii_case(&expected));
    }

    /// The bodies the crate builds (encrypted requests for simulation, encrypted replies) read
    /// back to the values they were built from, whatever those contain (`]]>`, `<`, new lines).
    #[test]
    fn built_bodies_read_back(
        to in field_text(),
        agent_id in proptest::option::of(field_text()),
        encrypt in field_text(),
        signed in field_text(),
        timestamp in prop_oneof!["[0-9]{1,10}", field_text()],
        nonce in field_text(),
    ) {
        let xml = encrypted_request_xml(&to, agent_id.as_deref(), &encrypt);
        let expected = Envelope {
            to_user_name: Some(to.clone()),
            agent_id: agent_id.clone(),
            encrypt: Some(encrypt.clone()),
            ..Envelope::default()
        };
        prop_assert_eq!(Envelope::parse(xml.as_bytes()), Ok(expected), "{}", xml);
        let json = encrypted_request_json(&to, &encrypt);
        let expected = Envelope {
            format: Format::Json,
            to_user_name: Some(to.clone()),
            encrypt: Some(encrypt.clone()),
            ..Envelope::default()
        };
        prop_assert_eq!(Envelope::parse(json.as_bytes()), Ok(expected));

        let sealed = Sealed {
            encrypt: &encrypt,
            msg_signature: &signed,
            timestamp: &timestamp,
            nonce: &nonce,
        };
        let reply = Envelope::parse(sealed.reply_xml().as_bytes()).unwrap();
        prop_assert_eq!(reply.encrypt.as_deref(), Some(encrypt.as_str()));
        let reply: serde_json::Value = serde_json::from_str(&sealed.reply_json()).unwrap();
        prop_assert_eq!(reply["Encrypt"].as_str(), Some(encrypt.as_str()));
        prop_assert_eq!(reply["MsgSignature"].as_str(), Some(signed.as_str()));
        prop_assert_eq!(reply["Nonce"].as_str(), Some(nonce.as_str()));
        match timestamp.parse::<u64>() {
            Ok(n) => prop_assert_eq!(reply["TimeStamp"].as_u64(), Some(n)),
            Err(_) => prop_assert_eq!(reply["TimeStamp"].as_str(), Some(timestamp.as_str())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Seal → open round trips.

/// Field text: any printable Unicode plus new lines and tabs, with the XML-special characters
/// (and the CDATA terminator) over-represented.
fn field_text() -> impl Strategy<Value = String> {
    vec(
        prop_oneof![
            3 => "[\\PC\n\t]",
            1 => "(<|>|&|\"|'|]]>|]|</xml>| )",
        ],
        0..16,
    )
    .prop_map(|parts| parts.concat())
}

#[derive(Debug, Clone)]
enum Body {
    Text {
        content: String,
        msg_id: u64,
    },
    Event {
        event: String,
        event_key: Option<String>,
    },
    /// Neither `MsgId` nor `FromUserName` + `CreateTime`: dedupe falls back to a hash.
    Probe {
        action: String,
    },
}

#[derive(Debug, Clone)]
struct Message {
    to: String,
    from: String,
    create_time: u64,
    agent_id: Option<u32>,
    body: Body,
    /// Per field: write it as CDATA (true) or as escaped text (false).
    cdata: [bool; 8],
}

fn message() -> impl Strategy<Value = Message> {
    let body = prop_oneof![
        (field_text(), any::<u64>()).prop_map(|(content, msg_id)| Body::Text { content, msg_id }),
        (field_text(), proptest::option::of(field_text()))
            .prop_map(|(event, event_key)| Body::Event { event, event_key }),
        field_text().prop_map(|action| Body::Probe { action }),
    ];
    (
        field_text(),
        field_text(),
        any::<u64>(),
        proptest::option::of(any::<u32>()),
        body,
        any::<[bool; 8]>(),
    )
        .prop_map(|(to, from, create_time, agent_id, body, cdata)| Message {
            to,
            from,
            create_time,
            agent_id,
            body,
            cdata,
        })
}

impl Message {
    /// One field, as CDATA (WeChat's way) or as escaped text (what other senders may write).
    fn element(out: &mut String, name: &str, value: &str, cdata: bool) {
        if cdata {
            push_cdata_element(out, name, value);
            return;
        }
        out.push('<');
        out.push_str(name);
        out.push('>');
        for c in value.chars() {
            match c {
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '&' => out.push_str("&amp;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&#39;"),
                c => out.push(c),
            }
        }
        out.push_str("</");
        out.push_str(name);
        out.push('>');
    }

    fn xml(&self) -> String {
        let c = self.cdata;
        let mut out = String::from("<xml>");
        match &self.body {
            Body::Probe { action } => {
                Self::element(&mut out, "action", action, c[0]);
                Self::element(&mut out, "Nonce", &self.to, c[1]);
            }
            body => {
                Self::element(&mut out, "ToUserName", &self.to, c[0]);
                Self::element(&mut out, "FromUserName", &self.from, c[1]);
                Self::element(&mut out, "CreateTime", &self.create_time.to_string(), c[2]);
                match body {
                    Body::Text { content, msg_id } => {
                        Self::element(&mut out, "MsgType", "text", c[3]);
                        Self::element(&mut out, "Content", content, c[4]);
                        Self::element(&mut out, "MsgId", &msg_id.to_string(), c[5]);
                    }
                    Body::Event { event, event_key } => {
                        Self::element(&mut out, "MsgType", "event", c[3]);
                        Self::element(&mut out, "Event", event, c[4]);
                        if let Some(key) = event_key {
                            Self::element(&mut out, "EventKey", key, c[5]);
                        }
                        // Nested fields are not the envelope's.
                        out.push_str("<ScanCodeInfo>");
                        Self::element(&mut out, "MsgType", "nested", c[6]);
                        Self::element(&mut out, "Event", event, c[6]);
                        out.push_str("</ScanCodeInfo>");
                    }
                    Body::Probe { .. } => unreachable!(),
                }
            }
        }
        if let Some(agent_id) = self.agent_id {
            Self::element(&mut out, "AgentID", &agent_id.to_string(), c[7]);
        }
        out.push_str("</xml>");
        out
    }

    /// The mini-program JSON form: numbers as numbers, plus nested values that must be ignored.
    fn json(&self) -> String {
        let mut map = BTreeMap::new();
        match &self.body {
            Body::Probe { action } => {
                map.insert("action", serde_json::json!(action));
            }
            body => {
                map.insert("ToUserName", serde_json::json!(self.to));
                map.insert("FromUserName", serde_json::json!(self.from));
                map.insert("CreateTime", serde_json::json!(self.create_time));
                match body {
                    Body::Text { content, msg_id } => {
                        map.insert("MsgType", serde_json::json!("text"));
                        map.insert("Content", serde_json::json!(content));
                        map.insert("MsgId", serde_json::json!(msg_id));
                    }
                    Body::Event { event, event_key } => {
                        map.insert("MsgType", serde_json::json!("event"));
                        map.insert("Event", serde_json::json!(event));
                        if let Some(key) = event_key {
                            map.insert("EventKey", serde_json::json!(key));
                        }
                        map.insert(
                            "List",
                            serde_json::json!([{ "MsgType": "nested", "Event": event }]),
                        );
                    }
                    Body::Probe { .. } => unreachable!(),
                }
            }
        }
        if let Some(agent_id) = self.agent_id {
            map.insert("AgentID", serde_json::json!(agent_id));
        }
        map.insert("Flag", serde_json::json!(true));
        serde_json::to_string(&map).unwrap()
    }

    /// The envelope of this message, built from the fields rather than by parsing.
    fn envelope(&self, format: Format) -> Envelope {
        let mut envelope = Envelope {
            format,
            agent_id: self.agent_id.map(|a| a.to_string()),
            ..Envelope::default()
        };
        if matches!(self.body, Body::Probe { .. }) {
            return envelope;
        }
        envelope.to_user_name = Some(self.to.clone());
        envelope.from_user_name = Some(self.from.clone());
        envelope.create_time = Some(self.create_time.to_string());
        match &self.body {
            Body::Text { msg_id, .. } => {
                envelope.msg_type = Some("text".into());
                envelope.msg_id = Some(msg_id.to_string());
            }
            Body::Event { event, event_key } => {
                envelope.msg_type = Some("event".into());
                envelope.event = Some(event.clone());
                envelope.event_key = event_key.clone();
            }
            Body::Probe { .. } => unreachable!(),
        }
        envelope
    }
}

/// Everything besides the message that goes into a sealed callback.
#[derive(Debug, Clone)]
struct Setting {
    token: String,
    receive_id: String,
    encoding: String,
    timestamp: String,
    nonce: String,
    openid: Option<String>,
    agent_id: Option<String>,
}

fn setting() -> impl Strategy<Value = Setting> {
    (
        "\\PC{1,32}",
        receive_id(),
        encoding_aes_key(),
        prop_oneof!["[0-9]{10}", "\\PC{0,12}"],
        prop_oneof!["[0-9]{1,10}", "\\PC{0,12}"],
        proptest::option::of("[A-Za-z0-9_-]{28}|\\PC{0,12}"),
        proptest::option::of("[0-9]{1,7}"),
    )
        .prop_map(
            |(token, receive_id, encoding, timestamp, nonce, openid, agent_id)| Setting {
                token,
                receive_id,
                encoding,
                timestamp,
                nonce,
                openid,
                agent_id,
            },
        )
}

impl Setting {
    fn credentials(&self, kind: Kind, mode: Mode) -> Credentials {
        let key = AesKey::from_encoding_aes_key(&self.encoding).unwrap();
        credentials(kind, mode, &self.token, &self.receive_id, key)
    }

    fn params(&self) -> SealParams<'_> {
        SealParams {
            timestamp: &self.timestamp,
            nonce: &self.nonce,
            random: rand::random(),
            openid: self.openid.as_deref(),
            to_user_name: "gh_1",
            agent_id: self.agent_id.as_deref(),
        }
    }
}

/// Every (kind, mode, format) WeChat really sends: no plaintext WeCom, JSON only for mini programs.
fn combinations() -> Vec<(Kind, Mode, Format)> {
    let mut out = Vec::new();
    for kind in [Kind::OfficialAccount, Kind::MiniProgram, Kind::WeCom] {
        for mode in MODES {
            if kind == Kind::WeCom && mode == Mode::Plaintext {
                continue;
            }
            out.push((kind, mode, Format::Xml));
            if kind == Kind::MiniProgram {
                out.push((kind, mode, Format::Json));
            }
        }
    }
    out
}

fn text_of(message: &Message, format: Format) -> String {
    match format {
        Format::Xml => message.xml(),
        Format::Json => message.json(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn sealed_callbacks_open_to_the_same_fields(message in message(), setting in setting()) {
        for (kind, mode, format) in combinations() {
            let creds = setting.credentials(kind, mode);
            let text = text_of(&message, format);
            let sealed = seal_callback(&creds, &text, setting.params());
            let query = CallbackQuery::parse(&sealed.query).unwrap();
            prop_assert_eq!(query.openid.as_deref(), setting.openid.as_deref().filter(|_| kind != Kind::WeCom));
            let opened = open_callback(&creds, &query, sealed.body.as_bytes());
            let opened = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    return Err(TestCaseError::fail(format!(
                        "{kind:?} {mode:?} {format:?}: {e}\nquery {}\nbody {}",
                        sealed.query, sealed.body
                    )));
                }
            };
            prop_assert_eq!(&opened.envelope, &message.envelope(format), "{:?} {:?} {}", kind, mode, text);
            prop_assert_eq!(opened.message(sealed.body.as_bytes()), text.as_bytes());
            prop_assert_eq!(opened.decrypted.is_some(), mode != Mode::Plaintext);
            if mode == Mode::Safe {
                prop_assert!(!sealed.body.contains(&text));
            }
        }
    }

}

proptest! {
    // Each case opens every tampered variant of one body: a few hundred opens per case.
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Every single-byte change to the base64 `Encrypt` of a sealed safe-mode callback is caught by
    /// `msg_signature`, before any decryption.
    #[test]
    fn tampered_encrypt_is_refused(
        message in message(),
        kind in prop_oneof![Just(Kind::OfficialAccount), Just(Kind::MiniProgram), Just(Kind::WeCom)],
        json in any::<bool>(),
        shift in 1u8..65,
        any_byte in any::<u8>(),
    ) {
        const ALPHABET: &[u8; 65] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";
        let format = if json && kind == Kind::MiniProgram { Format::Json } else { Format::Xml };
        let creds = credentials(kind, Mode::Safe, TOKEN, RECEIVE_ID, fixed_key());
        let params = SealParams {
            agent_id: (kind == Kind::WeCom).then_some("1000002"),
            ..fixed_params()
        };
        let sealed = seal_callback(&creds, &text_of(&message, format), params);
        let query = CallbackQuery::parse(&sealed.query).unwrap();
        let encrypt = Envelope::parse(sealed.body.as_bytes()).unwrap().encrypt.unwrap();
        let start = sealed.body.find(&encrypt).unwrap();
        let body = sealed.body.as_bytes();
        prop_assert!(open_callback(&creds, &query, body).is_ok());
        for i in start..start + encrypt.len() {
            // Another character of the base64 alphabet: still a well-formed body.
            let at = ALPHABET.iter().position(|&b| b == body[i]).unwrap();
            let mut tampered = body.to_vec();
            tampered[i] = ALPHABET[(at + usize::from(shift)) % ALPHABET.len()];
            prop_assert_eq!(
                open_callback(&creds, &query, &tampered),
                Err(VerifyError::MsgSignature),
                "byte {} of {}", i - start, encrypt
            );
            // Any other byte at all: refused, for whatever reason.
            if any_byte != body[i] {
                tampered[i] = any_byte;
                prop_assert!(open_callback(&creds, &query, &tampered).is_err());
            }
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Resends are byte-identical; compatible and safe mode re-encrypt with fresh random bytes.
    /// Either way the dedupe key of one message is the same for every kind and mode, because it
    /// is computed from the opened message.
    #[test]
    fn resends_and_reencryptions_share_a_dedupe_key(message in message(), setting in setting()) {
        for format in [Format::Xml, Format::Json] {
            let text = text_of(&message, format);
            let mut keys = Vec::new();
            for (kind, mode, _) in combinations().into_iter().filter(|c| c.2 == format) {
                let creds = setting.credentials(kind, mode);
                let first = seal_callback(&creds, &text, setting.params());
                let again = seal_callback(&creds, &text, setting.params());
                if mode != Mode::Plaintext {
                    prop_assert_ne!(&first.body, &again.body);
                }
                for sealed in [&first, &first, &again] {
                    let query = CallbackQuery::parse(&sealed.query).unwrap();
                    let body = sealed.body.as_bytes();
                    let opened = open_callback(&creds, &query, body).unwrap();
                    keys.push(dedupe_key("main", &opened.envelope, opened.message(body)));
                }
            }
            prop_assert!(keys.windows(2).all(|w| w[0] == w[1]), "{:?}", keys);
            let branch = match message.body {
                Body::Text { .. } => 'm',
                Body::Event { .. } => 'd',
                Body::Probe { .. } => 'h',
            };
            prop_assert_eq!(keys[0].key.chars().nth("4:main".len()), Some(branch));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dedupe keys of arbitrary envelopes.

/// Short values over an alphabet that can imitate the `len:` separators.
fn part() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[0-9:a-cA-C]{0,4}")
}

fn arbitrary_envelope() -> impl Strategy<Value = Envelope> {
    (part(), part(), part(), part(), part(), part(), part()).prop_map(
        |(from_user_name, create_time, msg_id, event, event_key, agent_id, to_user_name)| {
            Envelope {
                from_user_name,
                create_time,
                msg_id,
                event,
                event_key,
                agent_id,
                to_user_name,
                ..Envelope::default()
            }
        },
    )
}

/// What the key is documented to identify a callback by: its `MsgId` and sender, or its whole
/// message (with its `CreateTime`, which leads the key).
fn identity(account: &str, e: &Envelope, message: &[u8]) -> String {
    let from = e.from_user_name.clone().unwrap_or_default();
    let parts: Vec<String> = if let Some(id) = &e.msg_id {
        vec!["m".into(), from, id.clone()]
    } else if let Some(time) = &e.create_time {
        vec!["d".into(), time.clone(), format!("{message:?}")]
    } else {
        vec!["h".into(), format!("{message:?}")]
    };
    format!("{account:?}{parts:?}")
}

/// What the build before identified a callback by (its key is the legacy key, where it differs).
fn previous_identity(account: &str, e: &Envelope, message: &[u8]) -> String {
    let from = e.from_user_name.clone().unwrap_or_default();
    let parts: Vec<String> = if let Some(id) = &e.msg_id {
        vec!["m".into(), from, id.clone()]
    } else if let (Some(from), Some(time)) = (&e.from_user_name, &e.create_time) {
        vec![
            "e".into(),
            from.clone(),
            time.clone(),
            e.event.clone().unwrap_or_default().to_ascii_lowercase(),
            e.event_key.clone().unwrap_or_default(),
            e.agent_id.clone().unwrap_or_default(),
        ]
    } else {
        vec!["h".into(), format!("{message:?}")]
    };
    format!("{account:?}{parts:?}")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Two keys are equal exactly when the documented identities are: no value forges a separator.
    #[test]
    fn dedupe_keys_are_equal_exactly_when_identities_are(
        a in ("[0-9:a]{0,3}", arbitrary_envelope(), vec(0u8..3, 0..3)),
        b in ("[0-9:a]{0,3}", arbitrary_envelope(), vec(0u8..3, 0..3)),
    ) {
        let key_a = dedupe_key(&a.0, &a.1, &a.2);
        let key_b = dedupe_key(&b.0, &b.1, &b.2);
        prop_assert_eq!(
            key_a.key == key_b.key,
            identity(&a.0, &a.1, &a.2) == identity(&b.0, &b.1, &b.2),
            "{} vs {}", key_a.key, key_b.key
        );
        // The legacy key (or the key, where they agree) is the build before's key.
        let before = |k: &wechat_fanout::wechat::DedupeKey| k.legacy.clone().unwrap_or_else(|| k.key.clone());
        prop_assert_eq!(
            before(&key_a) == before(&key_b),
            previous_identity(&a.0, &a.1, &a.2) == previous_identity(&b.0, &b.1, &b.2),
            "{:?} vs {:?}", key_a, key_b
        );
    }
}

/// A WeChat Pay notification shaped like the real ones around arbitrary field values.
fn pay_notification_json(id: &str, event_type: &str, ciphertext: &str, extra: &str) -> String {
    let s = |v: &str| serde_json::Value::from(v).to_string();
    format!(
        "{{\"id\":{},\"create_time\":\"2025-01-01T10:00:00+08:00\",\"resource_type\":\"encrypt-resource\",\
         \"event_type\":{},\"summary\":\"ok\",{extra}\"resource\":{{\"original_type\":\"transaction\",\
         \"algorithm\":\"AEAD_AES_256_GCM\",\"ciphertext\":{},\"associated_data\":\"transaction\",\
         \"nonce\":\"abcdefghijkl\"}}}}",
        s(id),
        s(event_type),
        s(ciphertext)
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The notification parser and the signature check take any bytes and any headers without
    /// panicking; with no key configured nothing ever verifies.
    #[test]
    fn pay_parsing_and_verifying_never_panic(
        body in vec(any::<u8>(), 0..512),
        serial in proptest::option::of(".{0,40}"),
        signature in proptest::option::of("[A-Za-z0-9+/=]{0,400}"),
        timestamp in proptest::option::of("[0-9]{0,12}"),
    ) {
        use wechat_fanout::wechat::pay::{Notification, PayHeaders, PayKeys, verify_notification};
        let _ = Notification::parse(&body);
        let headers = PayHeaders {
            serial: serial.as_deref(),
            signature: signature.as_deref(),
            timestamp: timestamp.as_deref(),
            nonce: Some("n"),
            signature_type: None,
        };
        prop_assert!(verify_notification(&PayKeys::default(), &headers, &body).is_err());
    }

    /// Every well-formed notification is read with its id and event type exactly as written,
    /// whatever other fields it has; its resource never decrypts under a wrong key.
    #[test]
    fn pay_notifications_are_read_field_for_field(
        id in "[A-Za-z0-9_-]{1,64}",
        event_type in "[A-Z]{1,12}\\.[A-Z_]{1,12}",
        ciphertext in "[A-Za-z0-9+/]{0,80}",
        extra in proptest::option::of("[a-z]{1,8}"),
    ) {
        use wechat_fanout::wechat::pay::{ApiV3Key, Notification};
        let extra = extra.map(|k| format!("\"{k}\":[1,{{\"x\":null}}],")).unwrap_or_default();
        let body = pay_notification_json(&id, &event_type, &ciphertext, &extra);
        let read = Notification::parse(body.as_bytes());
        prop_assert!(read.is_ok(), "{}: {:?}", body, read);
        let read = read.unwrap();
        prop_assert_eq!(&read.id, &id);
        prop_assert_eq!(&read.event_type, &event_type);
        prop_assert_eq!(&read.resource.ciphertext, &ciphertext);
        let key = ApiV3Key::new("0123456789abcdef0123456789abcdef").unwrap();
        prop_assert!(key.decrypt(&read.resource).is_err());
    }
}
