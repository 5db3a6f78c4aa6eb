//! WeChat Pay (APIv3) notifications (回调通知), as pure functions over bytes: WeChat Pay's keys
//! read from PEM, the signature checked, the notification's JSON read, its resource decrypted.
//!
//! WeChat Pay POSTs a JSON notification with five headers: `Wechatpay-Serial` names the key
//! (a 微信支付公钥's id, `PUB_KEY_ID_…`, or a platform certificate's serial in hex),
//! `Wechatpay-Signature` is the base64 SHA256withRSA (PKCS#1 v1.5) signature of
//! `timestamp\nnonce\nbody\n` over the raw body, with `Wechatpay-Timestamp` and
//! `Wechatpay-Nonce`, and `Wechatpay-Signature-Type` says `WECHATPAY2-SHA256-RSA2048`. The body
//! carries `id`, `create_time`, `event_type`, `resource_type`, `summary` and `resource`, which is
//! AEAD_AES_256_GCM with the merchant's 32-byte APIv3 key: a 12-byte nonce, `associated_data`
//! as the additional data, and the 16-byte tag at the end of the base64 `ciphertext`.
//!
//! No clock here: the timestamp's window is the caller's. Signing (for `simulate`) needs
//! randomness and lives with the command.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use serde::Deserialize;
use x509_cert::Certificate;
use x509_cert::der::DecodePem as _;
use x509_cert::spki::{ObjectIdentifier, SubjectPublicKeyInfoOwned};

use super::envelope::{Envelope, Format};
use crate::escape::Excerpt;

/// The `MsgType` the store, the console and the filters give every WeChat Pay notification;
/// its `event_type` is the event.
pub const PAY_MSG_TYPE: &str = "wechatpay";

/// The headers of a notification, lower-cased, in the order SDKs list them.
pub const SERIAL_HEADER: &str = "wechatpay-serial";
pub const SIGNATURE_HEADER: &str = "wechatpay-signature";
pub const TIMESTAMP_HEADER: &str = "wechatpay-timestamp";
pub const NONCE_HEADER: &str = "wechatpay-nonce";
pub const SIGNATURE_TYPE_HEADER: &str = "wechatpay-signature-type";
/// Every `Wechatpay-*` header a notification carries: what is kept and replayed.
pub const PAY_HEADERS: [&str; 5] = [
    SERIAL_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    NONCE_HEADER,
    SIGNATURE_TYPE_HEADER,
];
/// The only signature type there is.
pub const SIGNATURE_TYPE: &str = "WECHATPAY2-SHA256-RSA2048";

/// rsaEncryption (PKCS #1).
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// Why a notification is refused (or its resource not read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayError {
    #[error("header {0} is missing, repeated or not text")]
    MissingHeader(&'static str),
    #[error("Wechatpay-Signature-Type is not WECHATPAY2-SHA256-RSA2048")]
    SignatureType,
    #[error("Wechatpay-Serial names no configured WeChat Pay key or certificate")]
    UnknownSerial,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("not a WeChat Pay notification: {0}")]
    NotANotification(&'static str),
    #[error("the body is not JSON: {0}")]
    NotJson(Excerpt),
    #[error("the resource does not decrypt with the APIv3 key")]
    Decrypt,
}

impl PayError {
    /// A signature that is missing or wrong, or a key that is not known: 401.
    pub fn is_unauthorized(&self) -> bool {
        matches!(
            self,
            PayError::MissingHeader(_)
                | PayError::SignatureType
                | PayError::UnknownSerial
                | PayError::BadSignature
        )
    }

    /// A short, stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            PayError::MissingHeader(_) => "pay_unsigned",
            PayError::SignatureType => "pay_signature_type",
            PayError::UnknownSerial => "pay_unknown_serial",
            PayError::BadSignature => "pay_bad_signature",
            PayError::NotANotification(_) => "pay_not_a_notification",
            PayError::NotJson(_) => "pay_not_json",
            PayError::Decrypt => "pay_decrypt",
        }
    }
}

/// Why a configured key or certificate cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM public key (-----BEGIN PUBLIC KEY-----): {0}")]
    PublicKey(String),
    #[error("not a PEM X.509 certificate (-----BEGIN CERTIFICATE-----): {0}")]
    Certificate(String),
    #[error("not an RSA key")]
    NotRsa,
    #[error("an RSA key of {0} bits: WeChat Pay signs with RSA-2048 or longer")]
    TooShort(usize),
}

/// The size in bits of the modulus of an `RSAPublicKey` (DER); `None` if it is not one.
fn modulus_bits(der: &[u8]) -> Option<usize> {
    use x509_cert::der::asn1::UintRef;
    use x509_cert::der::{Decode as _, Reader as _, SliceReader};
    let mut reader = SliceReader::new(der).ok()?;
    let modulus = reader
        .sequence(|inner| {
            let modulus = UintRef::decode(inner)?;
            let _exponent = UintRef::decode(inner)?;
            Ok(modulus)
        })
        .ok()?;
    let bytes = modulus.as_bytes();
    let first = *bytes.first()?;
    Some(bytes.len() * 8 - first.leading_zeros() as usize)
}

/// One of WeChat Pay's RSA public keys, as `RSAPublicKey` DER (what ring verifies with).
#[derive(Clone, PartialEq, Eq)]
pub struct PayKey {
    der: Vec<u8>,
}

impl std::fmt::Debug for PayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayKey").finish_non_exhaustive()
    }
}

impl PayKey {
    /// A WeChat Pay public key (微信支付公钥) as its PEM file holds it (SPKI).
    pub fn from_public_key_pem(pem: &[u8]) -> Result<PayKey, KeyError> {
        let text = std::str::from_utf8(pem).map_err(|e| KeyError::PublicKey(e.to_string()))?;
        let spki = SubjectPublicKeyInfoOwned::from_pem(text.trim())
            .map_err(|e| KeyError::PublicKey(e.to_string()))?;
        PayKey::of(&spki)
    }

    fn of(spki: &SubjectPublicKeyInfoOwned) -> Result<PayKey, KeyError> {
        if spki.algorithm.oid != RSA_ENCRYPTION {
            return Err(KeyError::NotRsa);
        }
        let der = spki.subject_public_key.raw_bytes().to_vec();
        match modulus_bits(&der) {
            None => Err(KeyError::NotRsa),
            // Refused at load, not at the first notification it could never verify.
            Some(bits) if bits < 2048 => Err(KeyError::TooShort(bits)),
            Some(_) => Ok(PayKey { der }),
        }
    }

    /// Whether `signature` is this key's SHA256withRSA signature of `message`.
    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &self.der)
            .verify(message, signature)
            .is_ok()
    }
}

/// A platform certificate's serial (upper-case hex, as `Wechatpay-Serial` names it) and key.
pub fn certificate_from_pem(pem: &[u8]) -> Result<(String, PayKey), KeyError> {
    let text = std::str::from_utf8(pem).map_err(|e| KeyError::Certificate(e.to_string()))?;
    let certificate =
        Certificate::from_pem(text.trim()).map_err(|e| KeyError::Certificate(e.to_string()))?;
    let tbs = &certificate.tbs_certificate;
    let serial = serial_hex(tbs.serial_number.as_bytes());
    Ok((serial, PayKey::of(&tbs.subject_public_key_info)?))
}

/// A DER integer's bytes as upper-case hex, without the zero byte that keeps it positive.
fn serial_hex(bytes: &[u8]) -> String {
    let start = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    bytes[start..].iter().map(|b| format!("{b:02X}")).collect()
}

/// Every key an account checks notifications with, by the serial that names it.
#[derive(Debug, Clone, Default)]
pub struct PayKeys {
    keys: HashMap<String, PayKey>,
}

impl PayKeys {
    /// Adds `key` under `serial`; `false` (and nothing added) when the serial is taken.
    pub fn insert(&mut self, serial: &str, key: PayKey) -> bool {
        let serial = normalized(serial);
        if self.keys.contains_key(&serial) {
            return false;
        }
        self.keys.insert(serial, key);
        true
    }

    /// The serials, sorted: for messages.
    pub fn serials(&self) -> Vec<&str> {
        let mut serials: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        serials.sort_unstable();
        serials
    }

    fn get(&self, serial: &str) -> Option<&PayKey> {
        self.keys.get(&normalized(serial))
    }
}

/// A certificate serial is hex, compared without regard to case; a public key id as written.
fn normalized(serial: &str) -> String {
    if serial.starts_with("PUB_KEY_ID_") {
        serial.to_owned()
    } else {
        serial.to_ascii_uppercase()
    }
}

/// The `Wechatpay-*` headers of one request, as text.
#[derive(Debug, Clone, Copy, Default)]
pub struct PayHeaders<'a> {
    pub serial: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub signature_type: Option<&'a str>,
}

/// What WeChat Pay signs: `timestamp\nnonce\nbody\n`.
pub fn signed_message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(timestamp.len() + nonce.len() + body.len() + 3);
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(nonce.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(body);
    message.push(b'\n');
    message
}

/// Checks what can be checked before the body is read: every header is there, the signature
/// type is the one there is, and the serial names a key.
pub fn check_headers(keys: &PayKeys, headers: &PayHeaders<'_>) -> Result<(), PayError> {
    signed_parts(keys, headers).map(|_| ())
}

/// The key the serial names, the signature, the timestamp and the nonce.
fn signed_parts<'k, 'a>(
    keys: &'k PayKeys,
    headers: &PayHeaders<'a>,
) -> Result<(&'k PayKey, &'a str, &'a str, &'a str), PayError> {
    let serial = headers
        .serial
        .ok_or(PayError::MissingHeader("Wechatpay-Serial"))?;
    let signature = headers
        .signature
        .ok_or(PayError::MissingHeader("Wechatpay-Signature"))?;
    let timestamp = headers
        .timestamp
        .ok_or(PayError::MissingHeader("Wechatpay-Timestamp"))?;
    let nonce = headers
        .nonce
        .ok_or(PayError::MissingHeader("Wechatpay-Nonce"))?;
    if headers.signature_type.is_some_and(|t| t != SIGNATURE_TYPE) {
        return Err(PayError::SignatureType);
    }
    let key = keys.get(serial).ok_or(PayError::UnknownSerial)?;
    Ok((key, signature, timestamp, nonce))
}

/// Checks a notification's signature with the key its serial names. Returns its timestamp,
/// whose window the caller checks.
pub fn verify_notification<'a>(
    keys: &PayKeys,
    headers: &PayHeaders<'a>,
    body: &[u8],
) -> Result<&'a str, PayError> {
    let (key, signature, timestamp, nonce) = signed_parts(keys, headers)?;
    let signature = BASE64
        .decode(signature.trim())
        .map_err(|_| PayError::BadSignature)?;
    if !key.verifies(&signed_message(timestamp, nonce, body), &signature) {
        return Err(PayError::BadSignature);
    }
    Ok(timestamp)
}

/// The notification's fields, read once at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Unique per notification; WeChat Pay's resends carry the same one.
    pub id: String,
    pub create_time: Option<String>,
    /// `TRANSACTION.SUCCESS`, `REFUND.SUCCESS`, `REFUND.ABNORMAL`, …
    pub event_type: String,
    pub resource_type: Option<String>,
    pub summary: Option<String>,
    pub resource: Resource,
}

/// The encrypted resource of a notification.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Resource {
    #[serde(default)]
    pub algorithm: String,
    pub ciphertext: String,
    #[serde(default)]
    pub associated_data: Option<String>,
    pub nonce: String,
    #[serde(default)]
    pub original_type: Option<String>,
}

#[derive(Deserialize)]
struct Wire {
    id: Option<String>,
    create_time: Option<String>,
    event_type: Option<String>,
    resource_type: Option<String>,
    summary: Option<String>,
    resource: Option<Resource>,
}

/// The longest `id` taken: WeChat Pay's are 36 characters (a UUID).
const MAX_ID_CHARS: usize = 128;

impl Notification {
    /// Reads a notification's body; any JSON that is not one is refused, never guessed at.
    pub fn parse(body: &[u8]) -> Result<Notification, PayError> {
        let wire: Wire = serde_json::from_slice(body).map_err(|e| {
            if e.is_data() {
                PayError::NotANotification("its fields are not a notification's")
            } else {
                PayError::NotJson(Excerpt::new(&e.to_string(), 120))
            }
        })?;
        let id = wire
            .id
            .filter(|id| !id.is_empty() && id.len() <= MAX_ID_CHARS)
            .ok_or(PayError::NotANotification("no id"))?;
        if id.chars().any(char::is_control) {
            return Err(PayError::NotANotification("a control character in its id"));
        }
        let event_type = wire
            .event_type
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or(PayError::NotANotification("no event_type"))?;
        let resource = wire
            .resource
            .ok_or(PayError::NotANotification("no resource"))?;
        Ok(Notification {
            id,
            create_time: wire.create_time,
            event_type,
            resource_type: wire.resource_type,
            summary: wire.summary,
            resource,
        })
    }
}

impl Notification {
    /// What routing and the console know of it: its type as the event, its id as the message
    /// id, and the order number read from its resource, if any.
    pub fn envelope(&self, out_trade_no: Option<String>) -> Envelope {
        Envelope {
            format: Format::Json,
            create_time: self.create_time.clone(),
            msg_type: Some(PAY_MSG_TYPE.to_owned()),
            event: Some(self.event_type.clone()),
            msg_id: Some(self.id.clone()),
            out_trade_no,
            ..Envelope::default()
        }
    }
}

/// The merchant's APIv3 key: 32 bytes, used as they are as an AES-256 key.
#[derive(Clone)]
pub struct ApiV3Key([u8; 32]);

impl std::fmt::Debug for ApiV3Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiV3Key(<redacted>)")
    }
}

impl ApiV3Key {
    /// The key as the merchant platform shows it: 32 characters.
    pub fn new(text: &str) -> Option<ApiV3Key> {
        text.as_bytes().try_into().ok().map(ApiV3Key)
    }

    fn aead(&self) -> Option<LessSafeKey> {
        UnboundKey::new(&AES_256_GCM, &self.0)
            .ok()
            .map(LessSafeKey::new)
    }

    /// The resource's plaintext (JSON: the transaction or the refund).
    pub fn decrypt(&self, resource: &Resource) -> Result<Vec<u8>, PayError> {
        if resource.algorithm != "AEAD_AES_256_GCM" {
            return Err(PayError::Decrypt);
        }
        let nonce = Nonce::try_assume_unique_for_key(resource.nonce.as_bytes())
            .map_err(|_| PayError::Decrypt)?;
        let mut sealed = BASE64
            .decode(resource.ciphertext.trim())
            .map_err(|_| PayError::Decrypt)?;
        let aad = resource.associated_data.as_deref().unwrap_or_default();
        let key = self.aead().ok_or(PayError::Decrypt)?;
        let plain = key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut sealed)
            .map_err(|_| PayError::Decrypt)?;
        Ok(plain.to_vec())
    }

    /// `plaintext` sealed as WeChat Pay seals a resource (base64, the tag at the end), with a
    /// 12-byte `nonce` handed in: for simulated notifications.
    pub fn encrypt(&self, nonce: &[u8; 12], aad: &str, plaintext: &[u8]) -> Option<String> {
        let key = self.aead()?;
        let mut sealed = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad.as_bytes()),
            &mut sealed,
        )
        .ok()?;
        Some(BASE64.encode(sealed))
    }
}

/// The decrypted resource's `out_trade_no` (the merchant's order number), if it has one.
pub fn out_trade_no(resource: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Order {
        out_trade_no: Option<String>,
    }
    serde_json::from_slice::<Order>(resource)
        .ok()
        .and_then(|o| o.out_trade_no)
}

/// Whether `event_type` matches `pattern`: exactly (ignoring ASCII case), or by the prefix
/// before a trailing `*` (`TRANSACTION.*`; `*` alone matches all).
pub fn event_type_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix)),
        None => pattern.eq_ignore_ascii_case(event_type),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_shorter_than_rsa_2048_are_refused_and_their_size_said() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/wechatpay/");
        let read = |name: &str| std::fs::read(format!("{fixtures}{name}")).unwrap_or_default();
        let short = PayKey::from_public_key_pem(&read("short_public_key.pem"));
        assert_eq!(short, Err(KeyError::TooShort(1024)));
        assert!(PayKey::from_public_key_pem(&read("public_key.pem")).is_ok());
        let (_, certified) = certificate_from_pem(&read("platform_certificate.pem")).unwrap();
        assert_eq!(modulus_bits(&certified.der), Some(2048));
    }

    #[test]
    fn the_signed_message_has_three_lines_each_ended() {
        assert_eq!(
            signed_message("1722850421", "d824f2e0", b"{\"a\":1}"),
            b"1722850421\nd824f2e0\n{\"a\":1}\n"
        );
        assert_eq!(signed_message("1", "n", b""), b"1\nn\n\n");
    }

    #[test]
    fn serials_are_hex_without_the_sign_byte() {
        assert_eq!(serial_hex(&[0x00, 0x8a, 0x01]), "8A01");
        assert_eq!(serial_hex(&[0x21, 0xbc]), "21BC");
        assert_eq!(serial_hex(&[0x00]), "00");
    }

    #[test]
    fn event_type_patterns_match_by_prefix_or_exactly() {
        assert!(event_type_matches("TRANSACTION.*", "TRANSACTION.SUCCESS"));
        assert!(event_type_matches("*", "REFUND.CLOSED"));
        assert!(event_type_matches("refund.success", "REFUND.SUCCESS"));
        assert!(!event_type_matches("REFUND.SUCCESS", "REFUND.ABNORMAL"));
        assert!(!event_type_matches("TRANSACTION.*", "REFUND.SUCCESS"));
        assert!(!event_type_matches("TRANSACTION.*", "TRANS"));
        // A multi-byte event type never splits a character.
        assert!(!event_type_matches("AB*", "Aé"));
    }

    #[test]
    fn a_notification_needs_an_id_an_event_type_and_a_resource() {
        let body = br#"{"id":"EV-2018022511223320873","create_time":"2015-05-20T13:29:35+08:00",
            "resource_type":"encrypt-resource","event_type":"TRANSACTION.SUCCESS","summary":"ok",
            "resource":{"original_type":"transaction","algorithm":"AEAD_AES_256_GCM",
            "ciphertext":"","associated_data":"","nonce":""}}"#;
        let n = Notification::parse(body).unwrap();
        assert_eq!(n.id, "EV-2018022511223320873");
        assert_eq!(n.event_type, "TRANSACTION.SUCCESS");
        assert_eq!(
            Notification::parse(b"<xml/>").unwrap_err().reason(),
            "pay_not_json"
        );
        for not_one in [
            &b"{}"[..],
            b"[]",
            b"\"x\"",
            br#"{"id":"","event_type":"A","resource":{"ciphertext":"","nonce":""}}"#,
            br#"{"id":"1","resource":{"ciphertext":"","nonce":""}}"#,
            br#"{"id":"1","event_type":"A"}"#,
            br#"{"id":1,"event_type":"A","resource":{"ciphertext":"","nonce":""}}"#,
        ] {
            let e = Notification::parse(not_one).unwrap_err();
            assert_eq!(e.reason(), "pay_not_a_notification", "{not_one:?}: {e}");
        }
    }

    #[test]
    fn a_resource_round_trips_and_a_changed_byte_fails() {
        let key = ApiV3Key::new("0123456789abcdef0123456789abcdef").unwrap();
        assert!(ApiV3Key::new("short").is_none());
        let nonce = *b"fedcba987654";
        let plain = br#"{"out_trade_no":"shopA-1","payer":{"openid":"o1"}}"#;
        let ciphertext = key.encrypt(&nonce, "transaction", plain).unwrap();
        let mut resource = Resource {
            algorithm: "AEAD_AES_256_GCM".into(),
            ciphertext,
            associated_data: Some("transaction".into()),
            nonce: "fedcba987654".into(),
            original_type: Some("transaction".into()),
        };
        let opened = key.decrypt(&resource).unwrap();
        assert_eq!(opened, plain);
        assert_eq!(out_trade_no(&opened).as_deref(), Some("shopA-1"));
        resource.associated_data = Some("refund".into());
        assert_eq!(key.decrypt(&resource), Err(PayError::Decrypt));
        resource.associated_data = Some("transaction".into());
        resource.nonce = "short".into();
        assert_eq!(key.decrypt(&resource), Err(PayError::Decrypt));
        assert!(!format!("{key:?}").contains("0123"));
    }

    #[test]
    fn without_headers_nothing_verifies_and_each_missing_one_is_named() {
        let keys = PayKeys::default();
        let mut headers = PayHeaders::default();
        assert_eq!(
            verify_notification(&keys, &headers, b"{}"),
            Err(PayError::MissingHeader("Wechatpay-Serial"))
        );
        headers.serial = Some("PUB_KEY_ID_1");
        headers.signature = Some("AAAA");
        headers.timestamp = Some("1");
        headers.nonce = Some("n");
        assert_eq!(
            verify_notification(&keys, &headers, b"{}"),
            Err(PayError::UnknownSerial)
        );
        headers.signature_type = Some("HMAC-SHA256");
        assert_eq!(
            verify_notification(&keys, &headers, b"{}"),
            Err(PayError::SignatureType)
        );
    }
}
