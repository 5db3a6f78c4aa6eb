//! Per-target credentials (`resign = { token_env, encoding_aes_key_env }`): for a target that
//! cannot share the account's token and key, each delivery is re-signed (and, when the target has
//! its own key, re-encrypted) so that a stock SDK set up with the target's own token and key
//! verifies and decrypts it.
//!
//! What changes: `timestamp` and `nonce` (fresh for every attempt), `signature` (when the query
//! has one), `msg_signature` and the body's `Encrypt` (re-encrypted with the target's key for
//! the account's receive id, which the target's SDK checks). Every other query parameter and
//! every other body byte stays as WeChat sent it. Such a delivery is not byte-identical, by
//! design. A passive reply the target encrypts with its own key is opened and sealed again with
//! the account's, so WeChat can read it.
//!
//! Pure functions of their inputs: the time, nonce and random prefix of each attempt are handed
//! in ([`Fresh`]) by the attempt that calls them.

use bytes::Bytes;
use percent_encoding::utf8_percent_encode;

use crate::wechat::callback::QUERY_VALUE;
use crate::wechat::envelope::encrypted_reply;
use crate::wechat::reply::{field, open_signed_reply};
use crate::wechat::{Credentials, Envelope, Fresh, Sealed, msg_signature, signature};

/// The account's credentials (to open what WeChat sent) and the target's (to seal it again).
#[derive(Debug, Clone)]
pub struct Resign {
    pub account: Credentials,
    /// The target's token; its key when it has one, else the account's; the account's kind,
    /// mode and receive id.
    pub target: Credentials,
    /// Whether the target has a key of its own (else bodies keep the account's encryption).
    pub own_key: bool,
}

/// Why a request could not be re-signed; the delivery becomes a dead letter (it would fail the
/// same way on every attempt).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResignError {
    #[error("cannot re-sign: the stored body is not a callback envelope")]
    Envelope,
    #[error("cannot re-sign: the stored body does not decrypt with the account's key")]
    Decrypt,
    #[error("cannot re-sign: Encrypt is not written verbatim in the body")]
    EncryptNotFound,
}

impl Resign {
    /// The query and body to send for this attempt, signed and encrypted with `fresh`.
    pub fn request(
        &self,
        query: &str,
        body: &Bytes,
        fresh: &Fresh,
    ) -> Result<(String, Bytes), ResignError> {
        let (timestamp, nonce) = (fresh.timestamp.as_str(), fresh.nonce.as_str());
        let token = &self.target.token;
        let encrypt = match self.account.security.key() {
            None => None,
            // Plaintext accounts have no Encrypt; compatible mode may carry a clear body.
            Some(_) => {
                Envelope::parse(body)
                    .map_err(|_| ResignError::Envelope)?
                    .encrypt
            }
        };
        let (body, encrypt) = match encrypt {
            None => (body.clone(), None),
            Some(old) => {
                let new = self.reencrypt(&old, fresh.random)?;
                (replace_encrypt(body, &old, &new)?, Some(new))
            }
        };
        let mut out = String::with_capacity(query.len() + 8);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            let value = match name {
                "timestamp" => timestamp.to_owned(),
                "nonce" => nonce.to_owned(),
                "signature" => signature(token, timestamp, nonce).to_string(),
                "msg_signature" => match &encrypt {
                    Some(encrypt) => msg_signature(token, timestamp, nonce, encrypt).to_string(),
                    // A clear body in compatible mode: nothing for msg_signature to cover.
                    None => {
                        push_pair(&mut out, pair);
                        continue;
                    }
                },
                _ => {
                    push_pair(&mut out, pair);
                    continue;
                }
            };
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(name);
            out.push('=');
            out.extend(utf8_percent_encode(&value, QUERY_VALUE));
        }
        Ok((out, body))
    }

    /// The target's `Encrypt` for the account's: the same message under the target's key.
    fn reencrypt(&self, encrypt: &str, random: [u8; 16]) -> Result<String, ResignError> {
        let (Some(from), Some(to)) = (self.account.security.key(), self.target.security.key())
        else {
            return Ok(encrypt.to_owned());
        };
        if !self.own_key {
            return Ok(encrypt.to_owned());
        }
        let message = from
            .decrypt(encrypt, &self.account.receive_id)
            .map_err(|_| ResignError::Decrypt)?;
        Ok(to.encrypt(&message, &self.account.receive_id, random))
    }

    /// A passive reply from the target as WeChat must get it: an encrypted reply signed with
    /// the target's token and key is opened and sealed again with the account's; anything else
    /// (`success`, a clear reply) is passed on unchanged. `None` when an encrypted reply does not
    /// verify with the target's credentials (WeChat then gets `success`). `random`: the prefix of
    /// the new encryption.
    pub fn reply(&self, body: &Bytes, random: [u8; 16]) -> Option<Bytes> {
        let Some(fields) = encrypted_reply(body) else {
            return Some(body.clone());
        };
        // The target's credentials carry the account's receive id, which the reply was sealed for.
        let message = open_signed_reply(&self.target, &fields).ok()?;
        let (timestamp, nonce) = (field(&fields, "TimeStamp")?, field(&fields, "Nonce")?);
        let sealed =
            self.account
                .security
                .key()?
                .encrypt(&message, &self.account.receive_id, random);
        let signed = msg_signature(&self.account.token, timestamp, nonce, &sealed);
        let reply = Sealed {
            encrypt: &sealed,
            msg_signature: signed.as_str(),
            timestamp,
            nonce,
        };
        let json = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        Some(Bytes::from(if json {
            reply.reply_json()
        } else {
            reply.reply_xml()
        }))
    }
}

fn push_pair(out: &mut String, pair: &str) {
    if !out.is_empty() {
        out.push('&');
    }
    out.push_str(pair);
}

/// `body` with its one `Encrypt` value `old` replaced by `new`. Base64 holds no XML special
/// character, so XML writes it verbatim; JSON may write `/` as `\/`.
fn replace_encrypt(body: &[u8], old: &str, new: &str) -> Result<Bytes, ResignError> {
    let escaped = old.replace('/', "\\/");
    for (find, put) in [
        (old.to_owned(), new.to_owned()),
        (escaped, new.replace('/', "\\/")),
    ] {
        if let Some(at) = find_bytes(body, find.as_bytes()) {
            let mut out = Vec::with_capacity(body.len() + put.len());
            out.extend_from_slice(&body[..at]);
            out.extend_from_slice(put.as_bytes());
            out.extend_from_slice(&body[at + find.len()..]);
            return Ok(Bytes::from(out));
        }
    }
    Err(ResignError::EncryptNotFound)
}

fn find_bytes(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::{AesKey, CallbackQuery, Kind, SealParams, Security, open_callback};
    use crate::wechat::{seal_callback, verify_url};

    const ACCOUNT_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
    const TARGET_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const MESSAGE: &str = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName><CreateTime>1714037059</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]></Content><MsgId>42</MsgId></xml>";

    fn key(text: &str) -> AesKey {
        AesKey::from_encoding_aes_key(text).unwrap()
    }

    fn pair(kind: Kind, mode: fn(AesKey) -> Security, own_key: bool) -> Resign {
        let account = Credentials {
            kind,
            token: "account-token".into(),
            receive_id: "wx5823bf96d3bd56c7".into(),
            security: mode(key(ACCOUNT_KEY)),
        };
        let target = Credentials {
            token: "target-token".into(),
            security: if own_key {
                mode(key(TARGET_KEY))
            } else {
                account.security.clone()
            },
            ..account.clone()
        };
        Resign {
            account,
            target,
            own_key,
        }
    }

    /// For every mode and kind: what WeChat sent verifies only with the account's credentials,
    /// and the re-signed copy only with the target's (as a stock SDK checks it: `signature`,
    /// `msg_signature`, decryption for the account's receive id), with the same message inside
    /// and every other parameter kept.
    #[test]
    fn a_resigned_request_verifies_with_the_targets_credentials_only() {
        let plain = |_| Security::Plaintext;
        for (kind, mode, own_key) in [
            (
                Kind::OfficialAccount,
                plain as fn(AesKey) -> Security,
                false,
            ),
            (Kind::OfficialAccount, Security::Compatible, true),
            (Kind::OfficialAccount, Security::Safe, true),
            (Kind::OfficialAccount, Security::Safe, false),
            (Kind::MiniProgram, Security::Safe, true),
            (Kind::WeCom, Security::Safe, true),
        ] {
            let resign = pair(kind, mode, own_key);
            let message = if kind == Kind::MiniProgram {
                r#"{"ToUserName":"gh_1","FromUserName":"o1","CreateTime":1,"MsgType":"text","MsgId":7}"#
            } else {
                MESSAGE
            };
            let sealed = seal_callback(
                &resign.account,
                message,
                SealParams {
                    timestamp: "1714037059",
                    nonce: "415670741",
                    random: rand::random(),
                    openid: (kind != Kind::WeCom).then_some("o1"),
                    to_user_name: "gh_1",
                    agent_id: None,
                },
            );
            let query = format!("{}&tenant=a%2Bb", sealed.query);
            let body = Bytes::from(sealed.body.clone());
            let (new_query, new_body) = resign
                .request(
                    &query,
                    &body,
                    &Fresh::new(1_800_000_000, 23_456_789, rand::random()),
                )
                .unwrap();
            let parsed = CallbackQuery::parse(&new_query).unwrap();
            let opened = open_callback(&resign.target, &parsed, &new_body)
                .unwrap_or_else(|e| panic!("{kind:?} {own_key}: {e}\n{new_query}"));
            assert_eq!(opened.message(&new_body), message.as_bytes());
            assert_eq!(parsed.timestamp.as_deref(), Some("1800000000"));
            assert_eq!(parsed.nonce.as_deref(), Some("123456789"));
            assert!(new_query.ends_with("&tenant=a%2Bb"), "{new_query}");
            assert_eq!(
                new_query.contains("openid=o1"),
                query.contains("openid=o1"),
                "{new_query}"
            );
            assert_eq!(
                parsed.signature.is_some(),
                CallbackQuery::parse(&query).unwrap().signature.is_some()
            );
            let old = CallbackQuery::parse(&query).unwrap();
            assert!(open_callback(&resign.target, &old, &body).is_err());
            if own_key {
                // Encrypted for the target's key: the account's key cannot open it.
                let with_account_token = Credentials {
                    token: resign.target.token.clone(),
                    ..resign.account.clone()
                };
                assert!(open_callback(&with_account_token, &parsed, &new_body).is_err());
            }
        }
    }

    #[test]
    fn a_handshake_for_the_target_uses_its_credentials() {
        let resign = pair(Kind::WeCom, Security::Safe, true);
        let query =
            crate::wechat::seal_handshake(&resign.target, "12345", &Fresh::new(1, 2, [0; 16]));
        let parsed = CallbackQuery::parse(&query).unwrap();
        assert_eq!(verify_url(&resign.target, &parsed).unwrap(), b"12345");
        assert!(verify_url(&resign.account, &parsed).is_err());
    }

    /// The target seals its passive reply with its own token and key; WeChat gets it sealed with
    /// the account's, same message. `success` passes unchanged; a forged reply is dropped.
    #[test]
    fn a_targets_encrypted_reply_is_sealed_again_for_wechat() {
        let resign = pair(Kind::OfficialAccount, Security::Safe, true);
        let reply = "<xml><ToUserName><![CDATA[o1]]></ToUserName><Content><![CDATA[hello]]></Content></xml>";
        let encrypt =
            key(TARGET_KEY).encrypt(reply.as_bytes(), "wx5823bf96d3bd56c7", rand::random());
        let sig = msg_signature("target-token", "1714037059", "99", &encrypt);
        let sealed = Sealed {
            encrypt: &encrypt,
            msg_signature: sig.as_str(),
            timestamp: "1714037059",
            nonce: "99",
        };
        for json in [false, true] {
            let body = if json {
                sealed.reply_json()
            } else {
                sealed.reply_xml()
            };
            let out = resign.reply(&Bytes::from(body), rand::random()).unwrap();
            let fields = encrypted_reply(&out).unwrap();
            let get = |n: &str| fields.iter().find(|(k, _)| k == n).unwrap().1.clone();
            let (encrypt, timestamp, nonce) = (get("Encrypt"), get("TimeStamp"), get("Nonce"));
            assert!(
                msg_signature("account-token", &timestamp, &nonce, &encrypt)
                    .matches(&get("MsgSignature"))
            );
            let opened = key(ACCOUNT_KEY)
                .decrypt(&encrypt, "wx5823bf96d3bd56c7")
                .unwrap();
            assert_eq!(opened, reply.as_bytes());
            assert_eq!(out.first() == Some(&b'{'), json);
        }
        let success = Bytes::from_static(b"success");
        assert_eq!(resign.reply(&success, rand::random()), Some(success));
        let forged = sealed.reply_xml().replace(sig.as_str(), &"0".repeat(40));
        assert_eq!(resign.reply(&Bytes::from(forged), rand::random()), None);
    }
}
