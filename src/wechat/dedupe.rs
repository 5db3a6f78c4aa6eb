//! The dedupe key: which callbacks are WeChat's resends of one another.
//!
//! WeChat resends a callback up to three times when it gets no answer in 5 s. Messages are
//! identified by `MsgId`, events by `FromUserName + CreateTime` (DOC-OA-REPLY). SDK reports add
//! two refinements: `MsgId` collided between users in one burst, so the sender is part of the key
//! (WxJava #333); WeCom sends events identical but for `AgentID`, and an event type plus its key
//! tell apart events of one second (chanjarster #66). A body with neither (platform notices,
//! cloud-hosting probes) is keyed by a hash of the message itself; open platform authorization
//! events (no sender, no MsgId) by `AppId + CreateTime + InfoType` (and `AuthorizerAppid`).
//!
//! Every part is length-prefixed, so no value can imitate a separator, and the account id comes
//! first: accounts never dedupe against each other.
//!
//! A message's `MsgId` comes before its sender. The embedded store keeps the keys in a unique
//! index: keyed by sender first, each callback dirtied a page of it that few others shared, and
//! each page went to the WAL at every commit (the store's largest cost per callback). The
//! `MsgId`s WeChat hands out grow over time (seen, not documented), so keys that lead with them
//! are added near one end of the index, several to a page. Where they come in any order, the
//! index is no worse off than keyed by sender.

use sha1::{Digest, Sha1};

use super::envelope::Envelope;

/// The dedupe key of one callback of `account`; `message` is the (decrypted) message bytes.
pub fn dedupe_key(account: &str, envelope: &Envelope, message: &[u8]) -> String {
    let mut key = String::with_capacity(96);
    push_part(&mut key, account);
    let from = envelope.from_user_name.as_deref().unwrap_or_default();
    if let Some(msg_id) = envelope.msg_id.as_deref() {
        key.push('m');
        push_part(&mut key, msg_id);
        push_part(&mut key, from);
    } else if let (Some(from), Some(time)) = (
        envelope.from_user_name.as_deref(),
        envelope.create_time.as_deref(),
    ) {
        key.push('e');
        push_part(&mut key, from);
        push_part(&mut key, time);
        // Event names differ in case on the wire but mean the same event.
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
    } else if let (Some(info_type), Some(time)) = (
        envelope.info_type.as_deref(),
        envelope.create_time.as_deref(),
    ) {
        // Open platform authorization events (a ticket every ten minutes) have no sender and
        // no MsgId: the component, the time and the type name one push; the authorizer tells
        // apart two authorizations in one second.
        key.push('i');
        push_part(&mut key, envelope.app_id.as_deref().unwrap_or_default());
        push_part(&mut key, time);
        push_part(&mut key, info_type);
        push_part(
            &mut key,
            envelope.authorizer_appid.as_deref().unwrap_or_default(),
        );
    } else {
        key.push('h');
        let digest = Sha1::digest(message);
        for byte in digest {
            key.push_str(&format!("{byte:02x}"));
        }
    }
    key
}

fn push_part(key: &mut String, value: &str) {
    key.push_str(&value.len().to_string());
    key.push(':');
    key.push_str(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(xml: &str) -> Envelope {
        Envelope::parse(xml.as_bytes()).unwrap()
    }

    #[test]
    fn message_key_includes_sender() {
        let a = env(
            "<xml><FromUserName>u1</FromUserName><CreateTime>1</CreateTime><MsgId>7</MsgId></xml>",
        );
        let b = env(
            "<xml><FromUserName>u2</FromUserName><CreateTime>1</CreateTime><MsgId>7</MsgId></xml>",
        );
        assert_eq!(dedupe_key("main", &a, b""), "4:mainm1:72:u1");
        assert_ne!(dedupe_key("main", &a, b""), dedupe_key("main", &b, b""));
        assert_ne!(dedupe_key("main", &a, b""), dedupe_key("other", &a, b""));
    }

    #[test]
    fn message_keys_sort_by_msg_id_whoever_sent_them() {
        let message = |from: &str, id: &str| {
            env(&format!(
                "<xml><FromUserName>{from}</FromUserName><CreateTime>1</CreateTime><MsgId>{id}</MsgId></xml>"
            ))
        };
        let earlier = dedupe_key("a", &message("ozzz", "24000000000000001"), b"");
        let later = dedupe_key("a", &message("oaaa", "24000000000000002"), b"");
        assert!(earlier < later, "{earlier} sorts after {later}");
    }

    #[test]
    fn events_differ_by_type_key_and_agent() {
        let base = "<xml><FromUserName>u1</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType>";
        let sub = env(&format!("{base}<Event>subscribe</Event></xml>"));
        let unsub = env(&format!("{base}<Event>unsubscribe</Event></xml>"));
        let unsub_agent = env(&format!(
            "{base}<Event>unsubscribe</Event><AgentID>2</AgentID></xml>"
        ));
        let sub_upper = env(&format!("{base}<Event>SUBSCRIBE</Event></xml>"));
        let keys = [&sub, &unsub, &unsub_agent].map(|e| dedupe_key("a", e, b""));
        assert!(keys[0] != keys[1] && keys[1] != keys[2] && keys[0] != keys[2]);
        assert_eq!(dedupe_key("a", &sub, b""), dedupe_key("a", &sub_upper, b""));
    }

    #[test]
    fn separators_cannot_be_forged() {
        let a = env(
            "<xml><FromUserName>u</FromUserName><CreateTime>1</CreateTime><EventKey>x</EventKey><AgentID>1:y</AgentID></xml>",
        );
        let b = env(
            "<xml><FromUserName>u</FromUserName><CreateTime>1</CreateTime><EventKey>x1:y</EventKey><AgentID></AgentID></xml>",
        );
        assert_ne!(dedupe_key("a", &a, b""), dedupe_key("a", &b, b""));
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
            first,
            "2:opi18:wx134c8103faa5a59e10:141319260523:component_verify_ticket0:"
        );
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
    }
}
