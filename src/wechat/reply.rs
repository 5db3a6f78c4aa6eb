//! Passive replies as data: opened (decrypted with the account's key) and flattened into
//! `(path, text)` fields, so two answers can be compared and a late one converted for the
//! customer-service API. Pure functions over bytes; nothing here sends anything.

use quick_xml::Reader;
use quick_xml::events::Event;

use super::envelope::{encrypted_reply, resolve_reference};
use super::{Credentials, CryptoError, msg_signature};

/// The reply's plaintext: an encrypted reply (`Encrypt`) opened with the account's key, any
/// other body as it is; `None` when it is encrypted and cannot be opened.
pub fn open_reply(body: &[u8], account: &Credentials) -> Option<Vec<u8>> {
    let Some(fields) = encrypted_reply(body) else {
        return Some(body.to_vec());
    };
    account
        .security
        .key()?
        .decrypt(field(&fields, "Encrypt")?, &account.receive_id)
        .ok()
}

/// Why an encrypted reply does not open as WeChat would open it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("the reply has Encrypt but no {0}")]
    Missing(&'static str),
    #[error("MsgSignature does not match the token, TimeStamp, Nonce and Encrypt")]
    MsgSignature,
    #[error("the reply is encrypted but the account has no encoding_aes_key")]
    NoKey,
    #[error("cannot decrypt Encrypt: {0}")]
    Decrypt(CryptoError),
}

/// The plaintext of an encrypted reply's fields (from [`encrypted_reply`]) as WeChat opens it:
/// `MsgSignature` checked with the credentials' token, then `Encrypt` decrypted with their key.
pub fn open_signed_reply(
    credentials: &Credentials,
    fields: &[(String, String)],
) -> Result<Vec<u8>, ReplyError> {
    let get = |name: &'static str| field(fields, name).ok_or(ReplyError::Missing(name));
    let (encrypt, sig) = (get("Encrypt")?, get("MsgSignature")?);
    let (timestamp, nonce) = (get("TimeStamp")?, get("Nonce")?);
    if !msg_signature(&credentials.token, timestamp, nonce, encrypt).matches(sig) {
        return Err(ReplyError::MsgSignature);
    }
    let key = credentials.security.key().ok_or(ReplyError::NoKey)?;
    key.decrypt(encrypt, &credentials.receive_id)
        .map_err(ReplyError::Decrypt)
}

/// A field's value by name or path, ignoring ASCII case (WeCom bots write `msgsignature`,
/// `timestamp`, … in lower case).
pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Does the body say nothing to the user (`""` or `success`, as WeChat reads them)?
pub fn is_empty_reply(body: &[u8]) -> bool {
    let trimmed = body.trim_ascii();
    trimmed.is_empty() || trimmed.eq_ignore_ascii_case(b"success")
}

/// Every element with text under the root, by its path below the root
/// (`Articles/item/Title`), in document order; `None` unless the body is one XML element.
pub fn xml_fields(body: &[u8]) -> Option<Vec<(String, String)>> {
    let mut reader = Reader::from_reader(body);
    let mut path: Vec<String> = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    // The text of the innermost open element, if it has any.
    let mut text: Option<String> = None;
    let mut roots = 0;
    loop {
        match reader.read_event().ok()? {
            Event::Start(start) => {
                if path.is_empty() {
                    roots += 1;
                }
                path.push(String::from_utf8_lossy(start.name().as_ref()).into_owned());
                text = None;
            }
            Event::Empty(empty) if !path.is_empty() => {
                let name = String::from_utf8_lossy(empty.name().as_ref()).into_owned();
                fields.push((join(&path[1..], &name), String::new()));
            }
            Event::End(_) => {
                let name = path.pop()?;
                if let Some(value) = text.take()
                    && !path.is_empty()
                {
                    fields.push((join(&path[1..], &name), value));
                }
            }
            Event::Text(t) if !path.is_empty() => {
                let t = t.xml10_content().ok()?;
                if !t.trim().is_empty() || text.is_some() {
                    text.get_or_insert_default().push_str(&t);
                }
            }
            Event::CData(c) if !path.is_empty() => {
                text.get_or_insert_default()
                    .push_str(std::str::from_utf8(&c).ok()?);
            }
            Event::GeneralRef(r) if !path.is_empty() => {
                text.get_or_insert_default()
                    .push(resolve_reference(&r).ok()?);
            }
            Event::DocType(_) => return None,
            Event::Eof => break,
            _ => {}
        }
    }
    (roots == 1 && path.is_empty()).then_some(fields)
}

fn join(parents: &[String], name: &str) -> String {
    let mut out = String::new();
    for p in parents {
        out.push_str(p);
        out.push('/');
    }
    out.push_str(name);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::{AesKey, Kind, Security};

    #[test]
    fn flattens_nested_replies_in_order() {
        let news = "<xml><ToUserName><![CDATA[o1]]></ToUserName><CreateTime>12</CreateTime>\
            <MsgType><![CDATA[news]]></MsgType><ArticleCount>2</ArticleCount><Articles>\
            <item><Title><![CDATA[a &amp; b]]></Title><Url>u1</Url></item>\
            <item><Title>c &amp; d</Title><Url>u2</Url></item></Articles></xml>";
        let fields = xml_fields(news.as_bytes()).unwrap();
        let get = |p: &str| -> Vec<&str> {
            fields
                .iter()
                .filter(|(k, _)| k == p)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(get("MsgType"), ["news"]);
        assert_eq!(get("Articles/item/Title"), ["a &amp; b", "c & d"]);
        assert_eq!(get("Articles/item/Url"), ["u1", "u2"]);
        assert_eq!(get("ToUserName"), ["o1"]);
        assert!(xml_fields(b"success").is_none());
        assert!(xml_fields(b"<a/><b/>").is_none());
    }

    #[test]
    fn opens_an_encrypted_reply_with_the_accounts_key() {
        let key =
            AesKey::from_encoding_aes_key("jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C").unwrap();
        let inner = "<xml><MsgType>text</MsgType><Content>hi</Content></xml>";
        let sealed = key.encrypt(inner.as_bytes(), "wx1", rand::random());
        let body = format!(
            "<xml><Encrypt><![CDATA[{sealed}]]></Encrypt><MsgSignature>s</MsgSignature>\
             <TimeStamp>1</TimeStamp><Nonce>n</Nonce></xml>"
        );
        let account = Credentials {
            kind: Kind::OfficialAccount,
            token: "t".into(),
            receive_id: "wx1".into(),
            security: Security::Safe(key),
        };
        assert_eq!(
            open_reply(body.as_bytes(), &account).unwrap(),
            inner.as_bytes()
        );
        assert_eq!(open_reply(b"success", &account).unwrap(), b"success");
        assert!(is_empty_reply(b" success\n") && is_empty_reply(b""));
    }
}
