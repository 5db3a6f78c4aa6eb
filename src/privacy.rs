//! Who a log line names: WeChat users only as a keyed hash, unless `log.show_user_ids` is set.
//!
//! An openid (`FromUserName`) is personal data, and so is the dedupe key, which embeds it for
//! events and messages. Lines that need to name a user or a callback's key carry
//! `HMAC-SHA1(account key, value)` cut to 16 hex digits instead: the same user gets the same
//! value on every line and every instance of one deployment, so lines can still be matched, but
//! the value means nothing outside it. The key is derived from the account's token, a secret
//! every instance shares and no log shows; a changed token changes the hashes.
//!
//! Message content is never logged at all: nothing here shows it.

use std::fmt;

use ring::hmac;
use sha1::{Digest, Sha1};

/// Hex digits kept of a hash: 64 bits, plenty to tell users apart in a log.
const SHOWN_HEX: usize = 16;

/// How one account names users in logs.
#[derive(Clone)]
pub struct UserIds {
    /// HMAC-SHA1 keyed by a hash of the token; `None`: show values as they are
    /// (`log.show_user_ids = true`).
    key: Option<hmac::Key>,
}

impl fmt::Debug for UserIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserIds")
            .field("hashed", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

impl UserIds {
    /// Hashes with a key derived from `secret` (the account's token), or shows values as they
    /// are when `show` is set.
    pub fn new(secret: &str, show: bool) -> UserIds {
        let key = (!show).then(|| user_key(secret));
        UserIds { key }
    }

    /// `value` as a log line may show it.
    pub fn show<'a>(&self, value: &'a str) -> Shown<'a> {
        match &self.key {
            None => Shown::Plain(value),
            Some(key) => Shown::Hashed(hmac_sha1(key, value.as_bytes())),
        }
    }
}

/// The key of an account's hashes of users, derived from `secret` (the account's token).
fn user_key(secret: &str) -> hmac::Key {
    let derived = Sha1::new()
        .chain_update(b"wechat-fanout user ids\0")
        .chain_update(secret.as_bytes())
        .finalize();
    hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &derived)
}

/// A keyed hash of a user that is always a hash, whatever `log.show_user_ids` says: what the
/// store keeps where it must tell users apart (a callback's lane), never the user. Keyed as
/// [`UserIds`] is, so a user's hash here is the one its log lines show (after `h:`).
#[derive(Clone)]
pub struct UserHash {
    key: hmac::Key,
}

impl fmt::Debug for UserHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserHash").finish_non_exhaustive()
    }
}

impl UserHash {
    /// Keyed by a hash of `secret` (the account's token).
    pub fn new(secret: &str) -> UserHash {
        UserHash {
            key: user_key(secret),
        }
    }

    /// `value`'s hash: 16 hex digits.
    pub fn hex(&self, value: &str) -> String {
        let digest = hmac_sha1(&self.key, value.as_bytes());
        let shown = Shown::Hashed(digest).to_string();
        shown.trim_start_matches("h:").to_owned()
    }
}

/// `query` with its `openid` shown as `(hidden)`: the console and the CLI show requests so.
pub fn without_openid(query: &str) -> String {
    let mut shown = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if key == "openid" {
            shown.append_pair(&key, "(hidden)");
        } else {
            shown.append_pair(&key, &value);
        }
    }
    shown.finish()
}

/// Fields of a message that name a WeChat user.
const USER_FIELDS: [&str; 3] = ["FromUserName", "OpenID", "UserID"];

/// A message (XML or JSON) with the values of the fields that name a user shown as `(hidden)`.
pub fn hide_user_ids(message: &str) -> String {
    let mut shown = message.to_owned();
    for field in USER_FIELDS {
        shown = hide_between(&shown, &format!("<{field}>"), &format!("</{field}>"));
        shown = hide_json_string(&shown, &format!("\"{field}\""));
    }
    shown
}

/// The fields of a WeChat Pay resource that name the payer (`payer.openid`, and a service
/// provider's `sp_openid`/`sub_openid`).
const PAYER_FIELDS: [&str; 3] = ["openid", "sp_openid", "sub_openid"];

/// A decrypted WeChat Pay resource (JSON) with the payer's openids shown as `(hidden)`.
pub fn hide_payer_ids(resource: &str) -> String {
    let mut shown = resource.to_owned();
    for field in PAYER_FIELDS {
        shown = hide_json_string(&shown, &format!("\"{field}\""));
    }
    shown
}

/// Every `open … close` with what is between them replaced.
fn hide_between(text: &str, open: &str, close: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(open) {
        let inner = &rest[start + open.len()..];
        let Some(end) = inner.find(close) else { break };
        out.push_str(&rest[..start + open.len()]);
        out.push_str("(hidden)");
        rest = &inner[end..];
    }
    out.push_str(rest);
    out
}

/// Every `"name": "value"` with its value replaced.
fn hide_json_string(text: &str, name: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(name) {
        let after = &rest[start + name.len()..];
        let colon = after.len() - after.trim_start().len();
        let value = after[colon..].strip_prefix(':').map(str::trim_start);
        let Some(value) = value.and_then(|v| v.strip_prefix('"')) else {
            out.push_str(&rest[..start + name.len()]);
            rest = after;
            continue;
        };
        // The closing quote: the first one not escaped.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in value.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(end) = end else { break };
        let value_start = rest.len() - value.len();
        out.push_str(&rest[..value_start]);
        out.push_str("(hidden)");
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// A value for a log field: as it is, or its keyed hash (`h:` and 16 hex digits).
#[derive(Debug, Clone, Copy)]
pub enum Shown<'a> {
    Plain(&'a str),
    Hashed([u8; 20]),
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shown::Plain(value) => f.write_str(value),
            Shown::Hashed(digest) => {
                f.write_str("h:")?;
                for byte in &digest[..SHOWN_HEX / 2] {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// HMAC-SHA1 (RFC 2104) of `message`, by ring (which rustls already builds).
fn hmac_sha1(key: &hmac::Key, message: &[u8]) -> [u8; 20] {
    let mut digest = [0u8; 20];
    digest.copy_from_slice(hmac::sign(key, message).as_ref());
    digest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pay_resource_shows_no_payer_openid() {
        let resource = r#"{"out_trade_no":"A-1","payer":{"openid":"oUser","sub_openid":"oSub"},"amount":{"total":1}}"#;
        assert_eq!(
            hide_payer_ids(resource),
            r#"{"out_trade_no":"A-1","payer":{"openid":"(hidden)","sub_openid":"(hidden)"},"amount":{"total":1}}"#
        );
    }

    #[test]
    fn user_ids_are_hidden_in_xml_json_and_queries() {
        let xml = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName><Content>hi</Content></xml>";
        assert_eq!(
            hide_user_ids(xml),
            "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName>(hidden)</FromUserName><Content>hi</Content></xml>"
        );
        let json = r#"{"ToUserName":"gh_1","FromUserName" : "o\"User","MsgType":"event"}"#;
        assert_eq!(
            hide_user_ids(json),
            r#"{"ToUserName":"gh_1","FromUserName" : "(hidden)","MsgType":"event"}"#
        );
        assert_eq!(
            hide_user_ids("<FromUserName>unclosed"),
            "<FromUserName>unclosed"
        );
        assert_eq!(
            without_openid("signature=s&openid=oUser&nonce=1"),
            "signature=s&openid=%28hidden%29&nonce=1"
        );
    }

    #[test]
    fn hmac_matches_rfc_2202_test_case_1() {
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &[0x0b; 20]);
        let digest = hmac_sha1(&key, b"Hi There");
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "b617318655057264e28bc0b6fb378c8ef146be00");
    }

    #[test]
    fn hashes_are_stable_per_secret_and_hide_the_value() {
        let a = UserIds::new("token-a", false);
        let shown = a.show("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o").to_string();
        assert_eq!(shown.len(), 2 + SHOWN_HEX);
        assert!(shown.starts_with("h:") && !shown.contains("oUpF8"));
        // Pinned: the hashes in existing logs stay comparable with new ones.
        assert_eq!(shown, "h:0b0823f3f8f5f9ad");
        assert_eq!(
            shown,
            UserIds::new("token-a", false)
                .show("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")
                .to_string()
        );
        assert_ne!(shown, a.show("oOther").to_string());
        let b = UserIds::new("token-b", false);
        assert_ne!(shown, b.show("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o").to_string());
        let shown_plain = UserIds::new("token-a", true).show("o1").to_string();
        assert_eq!(shown_plain, "o1");
    }
}
