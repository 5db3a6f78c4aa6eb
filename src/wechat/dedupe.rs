//! The dedupe key: which callbacks are WeChat's resends of one another.
//!
//! The rule: two callbacks are the same callback only if WeChat meant the same one. WeChat
//! resends a callback (up to three times, when it gets no answer in 5 s) with the same
//! plaintext: in compatible and safe mode a fresh encryption of it, and always a fresh
//! `timestamp`/`nonce` in the query. Distinct callbacks differ somewhere in their plaintext,
//! even when they share the fields WeChat's docs suggest an app dedupe events on
//! (`FromUserName + CreateTime`): WeCom sends contact and customer events from `sys`, several in
//! one second; subscription-message events carry their `MsgID` nested under `<List>`; one user
//! gets several cards, or scans several codes, in one second. So:
//!
//! - a callback with a top-level `MsgId`/`MsgID` (messages, the `*JOBFINISH` events) is keyed by
//!   it and its sender: `MsgId`s collided between users in one burst (WxJava #333);
//! - an open platform authorization event (no sender, no `MsgId`) by its component, time, type
//!   and authorizer;
//! - every other callback by a digest of its whole plaintext (decrypted in compatible and safe
//!   mode), byte for byte: no field is known to vary between WeChat's resends of one callback,
//!   so none is normalised away. The digest key leads with `CreateTime`.
//!
//! Every part is length-prefixed, so no value can imitate a separator, and the account comes
//! first: accounts never dedupe against each other.
//!
//! What leads a key matters to the store: the embedded store keeps the keys in a unique index,
//! and each commit writes the index pages its keys touch. Keys that grow over time (`MsgId`s as
//! WeChat hands them out, seen though not documented; `CreateTime`) are added near one end of the
//! index, several to a page; a key led by the sender or a digest dirtied a page of its own.
//!
//! The build before this one keyed events by `FromUserName + CreateTime + Event + EventKey +
//! AgentID` (and bodies with neither a sender nor a `MsgId` by a digest without the time).
//! [`DedupeKey::legacy`] is that key where it differs, so that a resend whose first copy that
//! build stored is still known for what it is (a deploy across this change, old and new
//! instances on one Redis). To be dropped one release after this one.

use sha1::{Digest, Sha1};

use super::envelope::Envelope;

/// The key a callback is stored under, and the key the build before computed for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupeKey {
    pub key: String,
    /// The previous build's key for this callback, where it differs from [`DedupeKey::key`].
    pub legacy: Option<String>,
}

/// The dedupe key of one callback of `account`; `message` is the (decrypted) message bytes.
pub fn dedupe_key(account: &str, envelope: &Envelope, message: &[u8]) -> DedupeKey {
    let mut key = String::with_capacity(96);
    push_part(&mut key, account);
    if let Some(msg_id) = envelope.msg_id.as_deref() {
        key.push('m');
        push_part(&mut key, msg_id);
        push_part(
            &mut key,
            envelope.from_user_name.as_deref().unwrap_or_default(),
        );
        return DedupeKey { key, legacy: None };
    }
    if let Some(key) = authorization_key(&key, envelope) {
        return DedupeKey { key, legacy: None };
    }
    let digest = Sha1::digest(message);
    match envelope.create_time.as_deref() {
        Some(time) => {
            key.push('d');
            push_part(&mut key, time);
            push_hex(&mut key, &digest);
        }
        None => {
            key.push('h');
            push_hex(&mut key, &digest);
        }
    }
    let legacy = Some(legacy_key(account, envelope, &digest)).filter(|old| *old != key);
    DedupeKey { key, legacy }
}

/// The dedupe key of a WeChat Pay notification of `account`: its `id`, which WeChat Pay's
/// resends (signed again, the same body) carry unchanged.
pub fn pay_dedupe_key(account: &str, id: &str) -> DedupeKey {
    let mut key = String::with_capacity(64);
    push_part(&mut key, account);
    key.push('p');
    push_part(&mut key, id);
    DedupeKey { key, legacy: None }
}

/// Open platform authorization events (a ticket every ten minutes) have no sender and no
/// MsgId: the component, the time and the type name one push; the authorizer tells apart two
/// authorizations in one second. `prefix` is the account's part.
fn authorization_key(prefix: &str, envelope: &Envelope) -> Option<String> {
    if envelope.from_user_name.is_some() {
        return None;
    }
    let (info_type, time) = (
        envelope.info_type.as_deref()?,
        envelope.create_time.as_deref()?,
    );
    let mut key = prefix.to_owned();
    key.push('i');
    push_part(&mut key, envelope.app_id.as_deref().unwrap_or_default());
    push_part(&mut key, time);
    push_part(&mut key, info_type);
    push_part(
        &mut key,
        envelope.authorizer_appid.as_deref().unwrap_or_default(),
    );
    Some(key)
}

/// The key the build before this one gave a callback without a `MsgId` that is not an
/// authorization event: `FromUserName + CreateTime + Event + EventKey + AgentID`, or the digest
/// of the message alone.
fn legacy_key(account: &str, envelope: &Envelope, digest: &[u8]) -> String {
    let mut key = String::with_capacity(96);
    push_part(&mut key, account);
    match (
        envelope.from_user_name.as_deref(),
        envelope.create_time.as_deref(),
    ) {
        (Some(from), Some(time)) => {
            key.push('e');
            push_part(&mut key, from);
            push_part(&mut key, time);
            push_part(
                &mut key,
                &envelope
                    .event
                    .as_deref()
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
            );
            push_part(&mut key, envelope.event_key.as_deref().unwrap_or_default());
            push_part(&mut key, envelope.agent_id.as_deref().unwrap_or_default());
        }
        _ => {
            key.push('h');
            push_hex(&mut key, digest);
        }
    }
    key
}

fn push_part(key: &mut String, value: &str) {
    use std::fmt::Write as _;
    let _ = write!(key, "{}:", value.len());
    key.push_str(value);
}

fn push_hex(key: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        key.push(char::from(HEX[usize::from(byte >> 4)]));
        key.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(xml: &str) -> Envelope {
        Envelope::parse(xml.as_bytes()).unwrap()
    }

    /// The key of `xml`, as a plaintext callback of account `a`.
    fn key_of(xml: &str) -> DedupeKey {
        dedupe_key("a", &env(xml), xml.as_bytes())
    }

    #[test]
    fn message_key_includes_sender() {
        let a = env(
            "<xml><FromUserName>u1</FromUserName><CreateTime>1</CreateTime><MsgId>7</MsgId></xml>",
        );
        let b = env(
            "<xml><FromUserName>u2</FromUserName><CreateTime>1</CreateTime><MsgId>7</MsgId></xml>",
        );
        let key = dedupe_key("main", &a, b"");
        assert_eq!(key.key, "4:mainm1:72:u1");
        assert_eq!(key.legacy, None, "messages keep the key they had");
        assert_ne!(key, dedupe_key("main", &b, b""));
        assert_ne!(key, dedupe_key("other", &a, b""));
    }

    #[test]
    fn message_keys_sort_by_msg_id_whoever_sent_them() {
        let message = |from: &str, id: &str| {
            env(&format!(
                "<xml><FromUserName>{from}</FromUserName><CreateTime>1</CreateTime><MsgId>{id}</MsgId></xml>"
            ))
        };
        let earlier = dedupe_key("a", &message("ozzz", "24000000000000001"), b"").key;
        let later = dedupe_key("a", &message("oaaa", "24000000000000002"), b"").key;
        assert!(earlier < later, "{earlier} sorts after {later}");
    }

    /// Regression (data loss): three WeCom `create_user` events in one second, from `sys`, with
    /// one `Event` and no `EventKey`, were one key, and two of the three were dropped as resends.
    #[test]
    fn distinct_events_of_one_sender_and_second_get_distinct_keys() {
        let created = |user: &str| {
            format!(
                "<xml><ToUserName><![CDATA[ww1]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName>\
                 <CreateTime>1403610513</CreateTime><MsgType><![CDATA[event]]></MsgType>\
                 <Event><![CDATA[change_contact]]></Event><ChangeType>create_user</ChangeType>\
                 <UserID><![CDATA[{user}]]></UserID><AgentID>1</AgentID></xml>"
            )
        };
        let keys: Vec<DedupeKey> = ["zhangsan", "lisi", "wangwu"]
            .iter()
            .map(|user| key_of(&created(user)))
            .collect();
        assert!(keys[0].key != keys[1].key && keys[1].key != keys[2].key);
        assert!(keys[0].key != keys[2].key);
        // The build before gave all three one key: it is each one's legacy key.
        assert!(
            keys.iter()
                .all(|k| k.legacy == keys[0].legacy && k.legacy.is_some())
        );
        // A resend is the same plaintext: the same key.
        assert_eq!(key_of(&created("lisi")), keys[1]);
    }

    /// Subscription-message events carry their `MsgID` nested under `<List>`: it is not a
    /// top-level `MsgId`, and the plaintext tells two of them apart.
    #[test]
    fn nested_msg_ids_tell_events_apart() {
        let sent = |id: &str| {
            format!(
                "<xml><ToUserName>gh</ToUserName><FromUserName>o1</FromUserName><CreateTime>1620963428</CreateTime>\
                 <MsgType>event</MsgType><Event>subscribe_msg_sent_event</Event><SubscribeMsgSentEvent><List>\
                 <TemplateId>t</TemplateId><MsgID>{id}</MsgID><ErrorCode>0</ErrorCode><ErrorStatus>success</ErrorStatus>\
                 </List></SubscribeMsgSentEvent></xml>"
            )
        };
        let (a, b) = (
            key_of(&sent("1700827132819554304")),
            key_of(&sent("1700827132819554305")),
        );
        assert_ne!(a.key, b.key);
        assert!(a.key.starts_with("1:ad10:1620963428"), "{}", a.key);
    }

    /// The key the build before computed, exactly: a resend whose first copy it stored must
    /// find that copy under this key.
    #[test]
    fn the_legacy_key_is_the_previous_builds_key() {
        let xml = "<xml><FromUserName>u1</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType>\
                   <Event>SUBSCRIBE</Event><EventKey>qrscene_1</EventKey><AgentID>2</AgentID></xml>";
        let key = dedupe_key("main", &env(xml), xml.as_bytes());
        assert_eq!(
            key.legacy.as_deref(),
            Some("4:maine2:u11:19:subscribe9:qrscene_11:2")
        );
        // Without a sender the build before used the digest alone.
        let notice = "<xml><CreateTime>5</CreateTime><Event>notice</Event></xml>";
        let key = key_of(notice);
        let digest = key.key.strip_prefix("1:ad1:5").unwrap_or_default();
        assert_eq!(digest.len(), 40, "{}", key.key);
        assert_eq!(key.legacy, Some(format!("1:ah{digest}")));
    }

    #[test]
    fn legacy_separators_cannot_be_forged() {
        let a = "<xml><FromUserName>u</FromUserName><CreateTime>1</CreateTime><EventKey>x</EventKey><AgentID>1:y</AgentID></xml>";
        let b = "<xml><FromUserName>u</FromUserName><CreateTime>1</CreateTime><EventKey>x1:y</EventKey><AgentID></AgentID></xml>";
        assert_ne!(key_of(a).legacy, key_of(b).legacy);
    }

    /// The digest keys of one account sort by `CreateTime`, whoever sent them, so the store's
    /// index grows at one end.
    #[test]
    fn event_keys_sort_by_create_time() {
        let event = |from: &str, time: &str| {
            key_of(&format!(
                "<xml><FromUserName>{from}</FromUserName><CreateTime>{time}</CreateTime><Event>CLICK</Event></xml>"
            ))
            .key
        };
        let (earlier, later) = (event("ozzz", "1714037059"), event("oaaa", "1714037060"));
        assert!(earlier < later, "{earlier} sorts after {later}");
    }

    #[test]
    fn open_platform_pushes_are_keyed_by_app_time_and_info_type() {
        let ticket = |time: &str, ticket: &str| {
            env(&format!(
                "<xml><AppId>wx134c8103faa5a59e</AppId><CreateTime>{time}</CreateTime>\
                 <InfoType>component_verify_ticket</InfoType>\
                 <ComponentVerifyTicket>{ticket}</ComponentVerifyTicket></xml>"
            ))
        };
        let first = dedupe_key("op", &ticket("1413192605", "a"), b"one");
        assert_eq!(
            first.key,
            "2:opi18:wx134c8103faa5a59e10:141319260523:component_verify_ticket0:"
        );
        assert_eq!(first.legacy, None, "authorization events keep their key");
        // A resend is the same push, whatever its bytes (a fresh encryption differs).
        assert_eq!(first, dedupe_key("op", &ticket("1413192605", "a"), b"two"));
        assert_ne!(first, dedupe_key("op", &ticket("1413193205", "b"), b"one"));
        let authorized = |appid: &str| {
            env(&format!(
                "<xml><AppId>wx134c8103faa5a59e</AppId><CreateTime>1413192760</CreateTime>\
                 <InfoType>authorized</InfoType><AuthorizerAppid>{appid}</AuthorizerAppid></xml>"
            ))
        };
        assert_ne!(
            dedupe_key("op", &authorized("wxa"), b""),
            dedupe_key("op", &authorized("wxb"), b"")
        );
    }

    #[test]
    fn bodies_without_ids_use_a_hash_of_the_message() {
        let probe = env("<xml><action>CheckContainerPath</action></xml>");
        let k1 = dedupe_key("a", &probe, b"one");
        assert_eq!(k1, dedupe_key("a", &probe, b"one"));
        assert_ne!(k1, dedupe_key("a", &probe, b"two"));
        assert_eq!(k1.legacy, None, "keyed as before");
        assert_eq!(k1.key, format!("1:ah{}", hex(&Sha1::digest(b"one"))));
    }

    fn hex(bytes: &[u8]) -> String {
        let mut text = String::new();
        push_hex(&mut text, bytes);
        text
    }
}
