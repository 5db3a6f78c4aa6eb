//! Verifying and opening one callback, and sealing simulated ones: signatures, crypto and
//! envelopes put together the way each kind of account and each mode requires.
//!
//! The rules (protocol notes §1, §2, §6, §11):
//! * the account's configured mode decides, never the request's `encrypt_type` (no downgrade);
//! * an encrypted body is authenticated by `msg_signature` over its `Encrypt`; a clear body by
//!   `signature` (which covers only token, timestamp and nonce);
//! * safe mode and WeCom accept encrypted bodies only; compatible mode takes either;
//! * GET handshake: official accounts and mini programs echo the plain `echostr` after checking
//!   `signature`; WeCom signs and encrypts `echostr` and wants its plaintext back.
//!
//! Query values are percent-decoded but `+` stays `+`: base64 travels in the query, and turning
//! `+` into a space breaks it (pitfall 5). The proxy replays the raw query string, not this parse,
//! so a parameter name that a target's parser could read as one of WeChat's is refused unless it
//! is spelled plainly (see [`CallbackQuery::parse`]).
//!
//! Where the mode allows it (plaintext, and compatible mode, which may carry a clear body), the
//! query's `signature` is checked before the body is parsed: an unsigned request never gets its
//! body looked at. Safe mode and WeCom must read `Encrypt` out of the body before `msg_signature`
//! can be checked.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use super::crypto::{AesKey, CryptoError};
use super::envelope::{
    Envelope, EnvelopeError, Format, encrypted_request_json, encrypted_request_xml,
};
use super::signature::{msg_signature, signature};

/// Which WeChat product sends the callbacks: decides the handshake and whether encryption is implied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    OfficialAccount,
    MiniProgram,
    WeCom,
    /// A third-party platform (第三方平台): safe mode only, the component's key and app id for
    /// its authorization events and for the messages of every account it is authorized for.
    OpenPlatform,
}

/// The message encryption mode set in the WeChat console (WeCom is always encrypted).
#[derive(Debug, Clone)]
pub enum Security {
    Plaintext,
    /// Bodies carry clear fields and `Encrypt`; clear bodies are still accepted.
    Compatible(AesKey),
    /// Bodies carry `Encrypt` only.
    Safe(AesKey),
}

impl Security {
    /// The mode's name in the configuration: `plaintext`, `compatible` or `safe`.
    pub fn name(&self) -> &'static str {
        match self {
            Security::Plaintext => "plaintext",
            Security::Compatible(_) => "compatible",
            Security::Safe(_) => "safe",
        }
    }

    /// The key, when the mode has one.
    pub fn key(&self) -> Option<&AesKey> {
        match self {
            Security::Plaintext => None,
            Security::Compatible(key) | Security::Safe(key) => Some(key),
        }
    }
}

/// What it takes to verify one account's callbacks. `Debug` never shows the token or key.
#[derive(Clone)]
pub struct Credentials {
    pub kind: Kind,
    pub token: String,
    /// App id (official account, mini program), corp id or suite id (WeCom), `""` for WeCom bots:
    /// the id that WeChat appends to every encrypted message.
    pub receive_id: String,
    pub security: Security,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("kind", &self.kind)
            .field("receive_id", &self.receive_id)
            .field("security", &self.security.name())
            .finish_non_exhaustive()
    }
}

/// The query parameters WeChat sends, percent-decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallbackQuery<'a> {
    pub signature: Option<Cow<'a, str>>,
    pub msg_signature: Option<Cow<'a, str>>,
    pub timestamp: Option<Cow<'a, str>>,
    pub nonce: Option<Cow<'a, str>>,
    pub echostr: Option<Cow<'a, str>>,
    pub encrypt_type: Option<Cow<'a, str>>,
    pub openid: Option<Cow<'a, str>>,
}

impl<'a> CallbackQuery<'a> {
    /// Parses a raw query string (without `?`). A parameter given twice is refused: the proxy and a
    /// downstream SDK could otherwise read different values. So is any other spelling of one of
    /// WeChat's parameter names (WeChat writes them plainly), because the proxy replays the raw
    /// query and a target's parser reads names its own way: see [`reads_as_wechat_parameter`].
    pub fn parse(raw: &'a str) -> Result<CallbackQuery<'a>, VerifyError> {
        let mut query = CallbackQuery::default();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            // Some parsers also split on `;` (older Python and Go): `x=1;signature=…` would
            // give them a second signature.
            if pair.split(';').skip(1).any(|piece| {
                let name = piece.split_once('=').map_or(piece, |(name, _)| name);
                reads_as_wechat_parameter(name)
            }) {
                return Err(VerifyError::BadQuery(
                    "a WeChat parameter follows a `;` (some parsers split there)",
                ));
            }
            let slot = match key {
                "signature" => &mut query.signature,
                "msg_signature" => &mut query.msg_signature,
                "timestamp" => &mut query.timestamp,
                "nonce" => &mut query.nonce,
                "echostr" => &mut query.echostr,
                "encrypt_type" => &mut query.encrypt_type,
                "openid" => &mut query.openid,
                _ if reads_as_wechat_parameter(key) => {
                    return Err(VerifyError::BadQuery(
                        "a WeChat parameter name is encoded or spelled differently",
                    ));
                }
                _ => continue,
            };
            if slot.is_some() {
                return Err(VerifyError::BadQuery("a parameter appears twice"));
            }
            let decoded = percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| VerifyError::BadQuery("a parameter is not UTF-8"))?;
            *slot = Some(decoded);
        }
        Ok(query)
    }

    fn require<'q>(
        field: &'q Option<Cow<'a, str>>,
        name: &'static str,
    ) -> Result<&'q str, VerifyError> {
        field.as_deref().ok_or(VerifyError::MissingParameter(name))
    }
}

/// The query parameters WeChat sends, spelled as it spells them.
const WECHAT_PARAMETERS: [&str; 7] = [
    "signature",
    "msg_signature",
    "timestamp",
    "nonce",
    "echostr",
    "encrypt_type",
    "openid",
];

/// Could a target's query parser take `name` (as written in the query) for one of WeChat's
/// parameters? Names are read as form parsers read them: `+` is a space (as in
/// `application/x-www-form-urlencoded`; unlike values, where the proxy keeps `+` for base64),
/// then `%XX` is decoded; ASP.NET compares names ignoring case; PHP drops leading spaces, turns
/// spaces, dots and an unmatched `[` into `_`, and files `name[…]` under `name`. So
/// `%73ignature`, `Signature`, `+signature`, `msg.signature` and `signature[]` all count, while
/// `sign+ature` (`sign ature`) names nothing of WeChat's.
fn reads_as_wechat_parameter(name: &str) -> bool {
    // The common case, an ordinary name: lower-case letters, digits, `_`, `-` are read as such.
    if name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return WECHAT_PARAMETERS.contains(&name);
    }
    let spaced = name.replace('+', " ");
    let decoded = percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .to_ascii_lowercase();
    let trimmed = decoded.trim_start_matches(' ');
    let array = trimmed.split('[').next().unwrap_or_default();
    let mangled: String = trimmed
        .chars()
        .map(|c| if matches!(c, ' ' | '.' | '[') { '_' } else { c })
        .collect();
    [trimmed, array, mangled.as_str()]
        .iter()
        .any(|candidate| WECHAT_PARAMETERS.contains(candidate))
}

/// Why a callback or handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed query string: {0}")]
    BadQuery(&'static str),
    #[error("missing query parameter {0}")]
    MissingParameter(&'static str),
    #[error("signature does not match")]
    Signature,
    #[error("msg_signature does not match")]
    MsgSignature,
    #[error("the account is in safe mode but the body is not encrypted")]
    NotEncrypted,
    // The message names the cause, so the cause is not also the source (a chain printer would
    // print it twice).
    #[error("decryption failed: {0}")]
    Crypto(CryptoError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}

impl From<CryptoError> for VerifyError {
    fn from(e: CryptoError) -> VerifyError {
        VerifyError::Crypto(e)
    }
}

impl VerifyError {
    /// A short, stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::BadQuery(_) => "bad_query",
            VerifyError::MissingParameter(_) => "missing_parameter",
            VerifyError::Signature => "bad_signature",
            VerifyError::MsgSignature => "bad_msg_signature",
            VerifyError::NotEncrypted => "not_encrypted",
            VerifyError::Crypto(e) => e.reason(),
            VerifyError::Envelope(e) => e.reason(),
        }
    }

    /// Did the request fail authentication (as opposed to being malformed)?
    pub fn is_unauthorized(&self) -> bool {
        matches!(
            self,
            VerifyError::MissingParameter(_)
                | VerifyError::Signature
                | VerifyError::MsgSignature
                | VerifyError::Crypto(_)
        )
    }
}

/// A callback that passed verification: what the proxy routes and dedupes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Fields of the message itself: the decrypted one when the body was encrypted.
    pub envelope: Envelope,
    /// The decrypted message, when the body was encrypted.
    pub decrypted: Option<Vec<u8>>,
}

impl Opened {
    /// The message as WeChat wrote it: decrypted, or the body itself.
    pub fn message<'b>(&'b self, body: &'b [u8]) -> &'b [u8] {
        self.decrypted.as_deref().unwrap_or(body)
    }
}

/// Answers the GET URL-verification handshake: the bytes to send back with 200.
pub fn verify_url(
    credentials: &Credentials,
    query: &CallbackQuery<'_>,
) -> Result<Vec<u8>, VerifyError> {
    let timestamp = CallbackQuery::require(&query.timestamp, "timestamp")?;
    let nonce = CallbackQuery::require(&query.nonce, "nonce")?;
    let echostr = CallbackQuery::require(&query.echostr, "echostr")?;
    match credentials.kind {
        Kind::OfficialAccount | Kind::MiniProgram | Kind::OpenPlatform => {
            // echostr is plain and unsigned in all three modes.
            check_signature(credentials, query)?;
            Ok(echostr.as_bytes().to_vec())
        }
        Kind::WeCom => {
            let provided = CallbackQuery::require(&query.msg_signature, "msg_signature")?;
            if !msg_signature(&credentials.token, timestamp, nonce, echostr).matches(provided) {
                return Err(VerifyError::MsgSignature);
            }
            let key = credentials
                .security
                .key()
                .ok_or(VerifyError::NotEncrypted)?;
            Ok(key.decrypt(echostr, &credentials.receive_id)?)
        }
    }
}

/// Checks the query's `signature`: `sha1(sorted(token, timestamp, nonce))`.
fn check_signature(
    credentials: &Credentials,
    query: &CallbackQuery<'_>,
) -> Result<(), VerifyError> {
    let timestamp = CallbackQuery::require(&query.timestamp, "timestamp")?;
    let nonce = CallbackQuery::require(&query.nonce, "nonce")?;
    let provided = CallbackQuery::require(&query.signature, "signature")?;
    if !signature(&credentials.token, timestamp, nonce).matches(provided) {
        return Err(VerifyError::Signature);
    }
    Ok(())
}

/// Verifies a POSTed callback and reads its routing fields, decrypting when the body is encrypted.
pub fn open_callback(
    credentials: &Credentials,
    query: &CallbackQuery<'_>,
    body: &[u8],
) -> Result<Opened, VerifyError> {
    let encrypted_only = matches!(credentials.security, Security::Safe(_))
        || matches!(credentials.kind, Kind::WeCom | Kind::OpenPlatform);
    // Plaintext, or compatible mode (whose body may be clear): `signature` covers only the query,
    // so it is checked before the body is parsed. WeChat sends it in both modes.
    if !encrypted_only {
        check_signature(credentials, query)?;
    }
    let outer = Envelope::parse(body)?;
    let (key, encrypt) = match (credentials.security.key(), outer.encrypt.as_deref()) {
        (Some(key), Some(encrypt)) => (key, encrypt),
        (Some(_), None) if encrypted_only => return Err(VerifyError::NotEncrypted),
        (None, _) if credentials.kind == Kind::WeCom => return Err(VerifyError::NotEncrypted),
        // Plaintext mode, or a clear body in compatible mode: `signature` (checked above) is all
        // there is.
        _ => {
            return Ok(Opened {
                envelope: outer,
                decrypted: None,
            });
        }
    };
    let timestamp = CallbackQuery::require(&query.timestamp, "timestamp")?;
    let nonce = CallbackQuery::require(&query.nonce, "nonce")?;
    let provided = CallbackQuery::require(&query.msg_signature, "msg_signature")?;
    if !msg_signature(&credentials.token, timestamp, nonce, encrypt).matches(provided) {
        return Err(VerifyError::MsgSignature);
    }
    let decrypted = key.decrypt(encrypt, &credentials.receive_id)?;
    let envelope = Envelope::parse(&decrypted)?;
    Ok(Opened {
        envelope,
        decrypted: Some(decrypted),
    })
}

/// A callback built as WeChat would send it: the query string (without `?`) and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRequest {
    pub query: String,
    pub body: String,
    pub content_type: &'static str,
}

/// What goes into a simulated callback besides the message.
#[derive(Debug, Clone, Copy)]
pub struct SealParams<'a> {
    pub timestamp: &'a str,
    pub nonce: &'a str,
    /// The 16 random bytes in front of an encrypted message (the caller draws them).
    pub random: [u8; 16],
    /// Official accounts and mini programs add the sender's openid to the query.
    pub openid: Option<&'a str>,
    /// `ToUserName` of the encrypted envelope (the account's original id, or the corp id).
    pub to_user_name: &'a str,
    /// WeCom puts the app's `AgentID` beside `Encrypt`.
    pub agent_id: Option<&'a str>,
}

/// What a request the proxy signs itself takes from outside the protocol, handed in so that the
/// protocol reads no clock and no source of randomness: the time it is signed at, a nonce, and
/// the random prefix of anything it encrypts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fresh {
    /// Unix seconds, as text.
    pub timestamp: String,
    /// Nine or ten digits, like WeChat's.
    pub nonce: String,
    pub random: [u8; 16],
}

impl Fresh {
    /// Signed at `unix_secs`, with a nonce made of `nonce_seed` and the prefix `random`.
    pub fn new(unix_secs: u64, nonce_seed: u64, random: [u8; 16]) -> Fresh {
        Fresh {
            timestamp: unix_secs.to_string(),
            nonce: (100_000_000 + nonce_seed % 9_900_000_000).to_string(),
            random,
        }
    }
}

/// Query values are digits, letters, `-`, `_` in practice; encode anything else (base64's `+`,
/// `/` and `=` above all).
pub const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// Signs (and, in compatible/safe mode, encrypts) `message` exactly as WeChat would deliver it to
/// this account: the basis of `simulate` and of the tests.
pub fn seal_callback(
    credentials: &Credentials,
    message: &str,
    params: SealParams<'_>,
) -> SealedRequest {
    let format = match message.trim_start().as_bytes().first() {
        Some(b'{') => Format::Json,
        _ => Format::Xml,
    };
    let content_type = match format {
        Format::Json => "application/json",
        Format::Xml => "text/xml",
    };
    let mut query = String::new();
    let mut push = |key: &str, value: &str| {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(key);
        query.push('=');
        query.extend(utf8_percent_encode(value, QUERY_VALUE));
    };
    let (timestamp, nonce) = (params.timestamp, params.nonce);
    let clear_signature = signature(&credentials.token, timestamp, nonce);
    let key = match (&credentials.security, credentials.kind) {
        (Security::Plaintext, _) => {
            push("signature", clear_signature.as_str());
            push("timestamp", timestamp);
            push("nonce", nonce);
            if let Some(openid) = params.openid {
                push("openid", openid);
            }
            return SealedRequest {
                query,
                body: message.to_owned(),
                content_type,
            };
        }
        (Security::Compatible(key) | Security::Safe(key), _) => key,
    };
    let encrypt = key.encrypt(message.as_bytes(), &credentials.receive_id, params.random);
    let sealed_signature = msg_signature(&credentials.token, timestamp, nonce, &encrypt);
    let body = match (&credentials.security, format) {
        (Security::Compatible(_), Format::Xml) => with_encrypt_element(message, &encrypt),
        (_, Format::Json) => encrypted_request_json(params.to_user_name, &encrypt),
        (_, Format::Xml) => encrypted_request_xml(params.to_user_name, params.agent_id, &encrypt),
    };
    if credentials.kind == Kind::WeCom {
        push("msg_signature", sealed_signature.as_str());
        push("timestamp", timestamp);
        push("nonce", nonce);
    } else {
        push("signature", clear_signature.as_str());
        push("timestamp", timestamp);
        push("nonce", nonce);
        if let Some(openid) = params.openid {
            push("openid", openid);
        }
        push("encrypt_type", "aes");
        push("msg_signature", sealed_signature.as_str());
    }
    SealedRequest {
        query,
        body,
        content_type,
    }
}

/// The query (without `?`) of the GET URL-verification handshake WeChat sends this account when
/// its URL is saved, carrying `echo`: official accounts and mini programs sign with `signature`
/// and send `echo` plainly; WeCom encrypts it for the receive id and signs with `msg_signature`.
/// The right answer is `echo` itself, byte for byte.
pub fn seal_handshake(credentials: &Credentials, echo: &str, fresh: &Fresh) -> String {
    let (timestamp, nonce) = (fresh.timestamp.as_str(), fresh.nonce.as_str());
    let token = credentials.token.as_str();
    match credentials.security.key() {
        Some(key) if credentials.kind == Kind::WeCom => {
            let echostr = key.encrypt(echo.as_bytes(), &credentials.receive_id, fresh.random);
            let sig = msg_signature(token, timestamp, nonce, &echostr);
            let echostr = utf8_percent_encode(&echostr, QUERY_VALUE);
            format!("msg_signature={sig}&timestamp={timestamp}&nonce={nonce}&echostr={echostr}")
        }
        // Official accounts and mini programs: echostr is plain and unsigned in every mode.
        _ => {
            let sig = signature(token, timestamp, nonce);
            let echo = utf8_percent_encode(echo, QUERY_VALUE);
            format!("signature={sig}&timestamp={timestamp}&nonce={nonce}&echostr={echo}")
        }
    }
}

/// Compatible mode: the clear message with `<Encrypt>` added as the root's last child.
fn with_encrypt_element(message: &str, encrypt: &str) -> String {
    let element = format!("<Encrypt><![CDATA[{encrypt}]]></Encrypt>");
    match message.rfind("</") {
        Some(at) => format!("{}{element}{}", &message[..at], &message[at..]),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
    const TEXT: &str = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName><CreateTime>1714037059</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好]]></Content><MsgId>42</MsgId></xml>";

    fn creds(kind: Kind, security: fn(AesKey) -> Security) -> Credentials {
        Credentials {
            kind,
            token: "QDG6eK".into(),
            receive_id: "wx5823bf96d3bd56c7".into(),
            security: security(AesKey::from_encoding_aes_key(KEY).unwrap()),
        }
    }

    fn params() -> SealParams<'static> {
        SealParams {
            timestamp: "1409659813",
            nonce: "1372623149",
            random: *b"0123456789abcdef",
            openid: Some("o1"),
            to_user_name: "gh_1",
            agent_id: None,
        }
    }

    #[test]
    fn every_kind_and_mode_round_trips() {
        let modes: [fn(AesKey) -> Security; 3] = [
            |_| Security::Plaintext,
            Security::Compatible,
            Security::Safe,
        ];
        for kind in [Kind::OfficialAccount, Kind::MiniProgram, Kind::WeCom] {
            for (i, mode) in modes.iter().enumerate() {
                if kind == Kind::WeCom && i == 0 {
                    continue;
                }
                let c = creds(kind, *mode);
                let sealed = seal_callback(&c, TEXT, params());
                let query = CallbackQuery::parse(&sealed.query).unwrap();
                let opened = open_callback(&c, &query, sealed.body.as_bytes()).unwrap();
                assert_eq!(
                    opened.envelope.msg_id.as_deref(),
                    Some("42"),
                    "{kind:?} {i}"
                );
                assert_eq!(opened.message(sealed.body.as_bytes()), TEXT.as_bytes());
            }
        }
    }

    #[test]
    fn the_request_cannot_downgrade_safe_mode() {
        let c = creds(Kind::OfficialAccount, Security::Safe);
        let plain = seal_callback(
            &creds(Kind::OfficialAccount, |_| Security::Plaintext),
            TEXT,
            params(),
        );
        let query = CallbackQuery::parse(&plain.query).unwrap();
        assert_eq!(
            open_callback(&c, &query, plain.body.as_bytes()),
            Err(VerifyError::NotEncrypted)
        );
    }

    #[test]
    fn tampered_encrypt_fails_msg_signature() {
        let c = creds(Kind::OfficialAccount, Security::Safe);
        let sealed = seal_callback(&c, TEXT, params());
        let query = CallbackQuery::parse(&sealed.query).unwrap();
        let tampered = sealed
            .body
            .replacen("<Encrypt><![CDATA[", "<Encrypt><![CDATA[A", 1);
        assert_eq!(
            open_callback(&c, &query, tampered.as_bytes()),
            Err(VerifyError::MsgSignature)
        );
    }

    #[test]
    fn query_keeps_plus_and_refuses_repeats() {
        let q = CallbackQuery::parse("echostr=a+b%2Bc%3D&nonce=1").unwrap();
        assert_eq!(q.echostr.as_deref(), Some("a+b+c="));
        assert!(CallbackQuery::parse("nonce=1&nonce=2").is_err());
    }

    #[test]
    fn other_spellings_of_wechat_parameter_names_are_refused() {
        let sig = "c0ffee0000000000000000000000000000000000";
        let ffff = "ffffffffffffffffffffffffffffffffffffffff";
        for smuggled in [
            // Percent-encoded, whole or in part, in either case of hex digit.
            format!("%73ignature={ffff}"),
            format!("sign%61ture={ffff}"),
            format!("%73%69%67%6E%61%74%75%72%65={ffff}"),
            "%74imestamp=1".to_owned(),
            "msg_signatur%65=1".to_owned(),
            // Case (ASP.NET), a leading `+` or space (PHP drops it), PHP's arrays and mangling.
            format!("Signature={ffff}"),
            "TIMESTAMP=1".to_owned(),
            format!("+signature={ffff}"),
            format!("%20signature={ffff}"),
            "nonce[]=x".to_owned(),
            "nonce%5B%5D=x".to_owned(),
            "nonce[a]=x".to_owned(),
            "msg.signature=1".to_owned(),
            "msg+signature=1".to_owned(),
            "msg[signature=1".to_owned(),
            // Behind a `;`, which some parsers treat as `&`.
            format!("x=1;signature={ffff}"),
            "openid=o1;%74imestamp=2".to_owned(),
        ] {
            let raw = format!("signature={sig}&timestamp=1&nonce=2&{smuggled}");
            assert!(
                matches!(CallbackQuery::parse(&raw), Err(VerifyError::BadQuery(_))),
                "{smuggled} was accepted"
            );
        }
    }

    #[test]
    fn other_parameters_are_left_alone() {
        // Names no parser reads as WeChat's: kept in the raw query, ignored here.
        let raw = "signature=abc&timestamp=1&nonce=2&x=%E4%BD%A0+%2b%20&sign+ature=1&signatures=1\
                   &my_signature=1&a.b=1&x=1;y=2&%7A=1&timestamp_ms=5";
        let q = CallbackQuery::parse(raw).unwrap();
        assert_eq!(
            (q.signature.as_deref(), q.timestamp.as_deref()),
            (Some("abc"), Some("1"))
        );
    }

    #[test]
    fn a_bad_signature_is_refused_before_the_body_is_parsed() {
        let query = CallbackQuery::parse(
            "signature=0000000000000000000000000000000000000000&timestamp=1&nonce=2",
        )
        .unwrap();
        let body = b"<xml><a>&x\n2026-01-01 ERROR forged</a></xml>";
        let modes: [fn(AesKey) -> Security; 2] = [|_| Security::Plaintext, Security::Compatible];
        for security in modes {
            let c = creds(Kind::OfficialAccount, security);
            assert_eq!(
                open_callback(&c, &query, body),
                Err(VerifyError::Signature),
                "{}",
                c.security.name()
            );
        }
        // Without a signature, nothing is parsed either.
        let bare = CallbackQuery::parse("timestamp=1&nonce=2").unwrap();
        let plain = creds(Kind::OfficialAccount, |_| Security::Plaintext);
        assert_eq!(
            open_callback(&plain, &bare, body),
            Err(VerifyError::MissingParameter("signature"))
        );
    }

    #[test]
    fn handshakes() {
        let oa = creds(Kind::OfficialAccount, |_| Security::Plaintext);
        let sig = signature("QDG6eK", "1", "2");
        let raw = format!("signature={sig}&timestamp=1&nonce=2&echostr=4375120948345356249");
        assert_eq!(
            verify_url(&oa, &CallbackQuery::parse(&raw).unwrap()).unwrap(),
            b"4375120948345356249"
        );
        let bad =
            "signature=0000000000000000000000000000000000000000&timestamp=1&nonce=2&echostr=x";
        assert_eq!(
            verify_url(&oa, &CallbackQuery::parse(bad).unwrap()),
            Err(VerifyError::Signature)
        );

        let wecom = creds(Kind::WeCom, Security::Safe);
        let echostr = wecom.security.key().unwrap().encrypt(
            b"1616140317555161061",
            "wx5823bf96d3bd56c7",
            rand::random(),
        );
        let sig = msg_signature("QDG6eK", "1", "2", &echostr);
        let raw = format!(
            "msg_signature={sig}&timestamp=1&nonce=2&echostr={}",
            utf8_percent_encode(&echostr, QUERY_VALUE)
        );
        assert_eq!(
            verify_url(&wecom, &CallbackQuery::parse(&raw).unwrap()).unwrap(),
            b"1616140317555161061"
        );
    }
}
