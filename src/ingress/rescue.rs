//! Late replies rescued (`late_replies = "customer_service"`): when the reply owner answers after
//! WeChat already got `success`, its passive reply is converted into a customer-service message
//! and stored as a job of the account's internal late-replies target, so it is sent like any
//! delivery (leased, retried with backoff, a dead letter with WeChat's errcode and errmsg).
//!
//! The job's "callback" is a record of its own, with the dedupe key `late-reply:{callback}`:
//! the store's insert-if-absent makes each late reply stored once, and the Store trait needs no
//! new operation. Only an answer the user never saw is rescued: the relay hands over the owner's
//! attempt only when its deadline passed and WeChat got `success`, and such an answer is never
//! saved as the callback's answer, so no resend can show it either.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::attempt::Attempt;
use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::routing::{Account, Target};
use crate::store::{Accepted, CallbackId, JobId, NewCallback, NewJob, Replay, Store};
use crate::wechat::{is_empty_reply, open_reply, reply_field as field, xml_fields};

/// Waits for the owner's late attempt; converts and stores its reply, if it has one.
pub async fn late_reply(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    account: Arc<Account>,
    sender: Arc<Target>,
    callback: CallbackId,
    user: Option<String>,
    late: oneshot::Receiver<Attempt>,
) {
    let Ok(attempt) = late.await else {
        return;
    };
    let outcome = match (&attempt.reply, attempt.withheld) {
        (Some(answer), _) => {
            let body = &answer.body;
            rescue(&*store, &account, &sender, callback, user.as_deref(), body).await
        }
        // An answer that is no reply (cut short) is not rescued from the part that was read.
        (None, Some(why)) => Err((why.label(), why.to_string())),
        // The owner failed (or the task ended): nothing the user would have seen.
        (None, None) => return,
    };
    match &outcome {
        Ok("queued") => {
            info!(
                outcome = "queued",
                "late reply stored for the customer-service API"
            );
            sender.plumbing.wake.notify_one();
        }
        Ok(outcome) => info!(outcome = *outcome, "late reply not rescued"),
        Err((outcome, reason)) => {
            warn!(outcome = *outcome, reason = %reason, "late reply not rescued")
        }
    }
    let label = match outcome {
        Ok(label) | Err((label, _)) => label,
    };
    metrics.late_reply(&account.id, label);
}

/// `Ok("queued" | "duplicate" | "empty")`, or why it cannot be rescued.
async fn rescue(
    store: &dyn Store,
    account: &Account,
    sender: &Target,
    callback: CallbackId,
    user: Option<&str>,
    body: &[u8],
) -> Result<&'static str, (&'static str, String)> {
    let plain = open_reply(body, &account.credentials).ok_or((
        "unreadable",
        "the encrypted reply does not open with the account's key".to_owned(),
    ))?;
    if is_empty_reply(&plain) {
        return Ok("empty");
    }
    let user = user.ok_or(("unconvertible", "the callback names no user".to_owned()))?;
    let (msg_type, message) =
        customer_service_message(user, &plain).map_err(|e| ("unconvertible", e))?;
    let ids = store
        .next_ids(2)
        .await
        .map_err(|e| ("store_failed", e.to_string()))?;
    let accepted = store
        .accept(NewCallback {
            id: CallbackId(ids[0]),
            account: account.id.clone(),
            dedupe_key: format!("late-reply:{callback}"),
            legacy_dedupe_key: None,
            received_at_ms: now_ms(),
            msg_type: Some(msg_type),
            event: None,
            msg_id: None,
            sender: None,
            // Made here, not accepted from WeChat.
            instance: None,
            request: Arc::new(Replay {
                query: String::new(),
                content_type: Some("application/json".to_owned()),
                body: Bytes::from(message.to_string()),
                authorizer: None,
                trace: None,
                headers: Vec::new(),
                lane: None,
            }),
            jobs: vec![NewJob {
                id: JobId(ids[1]),
                target: sender.key.target.clone(),
                lease: None,
                ordered: false,
            }],
            answer_pending_ms: None,
        })
        .await
        .map_err(|e| ("store_failed", e.to_string()))?;
    Ok(match accepted {
        Accepted::New { .. } => "queued",
        Accepted::Duplicate { .. } => "duplicate",
    })
}

/// A passive reply (plaintext XML) as the customer-service API's JSON for `user`, with its
/// `MsgType`: text, image, voice, video, music and news; anything else is refused with a reason.
pub fn customer_service_message(user: &str, reply: &[u8]) -> Result<(String, Value), String> {
    let fields = xml_fields(reply).ok_or("the reply is not XML")?;
    let get = |path: &str| field(&fields, path);
    let msg_type = get("MsgType")
        .ok_or("the reply has no MsgType")?
        .to_ascii_lowercase();
    let need = |path: &str| get(path).ok_or(format!("a {msg_type} reply without {path}"));
    let content = match msg_type.as_str() {
        "text" => json!({ "content": need("Content")? }),
        "image" => json!({ "media_id": need("Image/MediaId")? }),
        "voice" => json!({ "media_id": need("Voice/MediaId")? }),
        "video" => json!({
            "media_id": need("Video/MediaId")?,
            "title": get("Video/Title").unwrap_or_default(),
            "description": get("Video/Description").unwrap_or_default(),
        }),
        "music" => json!({
            "title": get("Music/Title").unwrap_or_default(),
            "description": get("Music/Description").unwrap_or_default(),
            "musicurl": get("Music/MusicUrl").unwrap_or_default(),
            "hqmusicurl": get("Music/HQMusicUrl").unwrap_or_default(),
            "thumb_media_id": need("Music/ThumbMediaId")?,
        }),
        "news" => json!({ "articles": articles(&fields) }),
        other => {
            return Err(format!(
                "a {other} reply has no customer-service equivalent"
            ));
        }
    };
    if msg_type == "news" && content["articles"].as_array().is_none_or(Vec::is_empty) {
        return Err("a news reply without articles".to_owned());
    }
    let mut message = json!({ "touser": user, "msgtype": msg_type });
    message[msg_type.as_str()] = content;
    Ok((msg_type, message))
}

/// `Articles/item/*` in document order; an item starts again where a field repeats.
fn articles(fields: &[(String, String)]) -> Vec<Value> {
    let mut articles: Vec<serde_json::Map<String, Value>> = Vec::new();
    for (path, value) in fields {
        let Some(field) = path.strip_prefix("Articles/item/") else {
            continue;
        };
        let key = match field.to_ascii_lowercase().as_str() {
            "title" => "title",
            "description" => "description",
            "url" => "url",
            "picurl" => "picurl",
            _ => continue,
        };
        match articles.last_mut() {
            Some(article) if !article.contains_key(key) => {
                article.insert(key.to_owned(), Value::from(value.as_str()));
            }
            _ => {
                let mut article = serde_json::Map::new();
                article.insert(key.to_owned(), Value::from(value.as_str()));
                articles.push(article);
            }
        }
    }
    articles.into_iter().map(Value::Object).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_each_reply_type() {
        let convert = |xml: &str| customer_service_message("o1", xml.as_bytes()).unwrap().1;
        assert_eq!(
            convert(
                "<xml><ToUserName>o1</ToUserName><CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi & bye]]></Content></xml>"
            ),
            json!({"touser": "o1", "msgtype": "text", "text": {"content": "hi & bye"}})
        );
        assert_eq!(
            convert("<xml><MsgType>image</MsgType><Image><MediaId>m1</MediaId></Image></xml>"),
            json!({"touser": "o1", "msgtype": "image", "image": {"media_id": "m1"}})
        );
        assert_eq!(
            convert("<xml><MsgType>voice</MsgType><Voice><MediaId>v</MediaId></Voice></xml>")["voice"],
            json!({"media_id": "v"})
        );
        assert_eq!(
            convert(
                "<xml><MsgType>video</MsgType><Video><MediaId>m</MediaId><Title>t</Title><Description>d</Description></Video></xml>"
            )["video"],
            json!({"media_id": "m", "title": "t", "description": "d"})
        );
        assert_eq!(
            convert(
                "<xml><MsgType>music</MsgType><Music><Title>t</Title><MusicUrl>u</MusicUrl><HQMusicUrl>h</HQMusicUrl><ThumbMediaId>th</ThumbMediaId></Music></xml>"
            )["music"],
            json!({"title": "t", "description": "", "musicurl": "u", "hqmusicurl": "h", "thumb_media_id": "th"})
        );
        let news = convert(
            "<xml><MsgType>news</MsgType><ArticleCount>2</ArticleCount><Articles>\
             <item><Title>a</Title><Description>da</Description><PicUrl>pa</PicUrl><Url>ua</Url></item>\
             <item><Title>b</Title><Url>ub</Url></item></Articles></xml>",
        );
        assert_eq!(
            news["news"]["articles"],
            json!([
                {"title": "a", "description": "da", "picurl": "pa", "url": "ua"},
                {"title": "b", "url": "ub"}
            ])
        );
    }

    #[test]
    fn refuses_what_has_no_equivalent() {
        for xml in [
            "<xml><MsgType>transfer_customer_service</MsgType></xml>",
            "<xml><MsgType>image</MsgType></xml>",
            "<xml><MsgType>news</MsgType><Articles></Articles></xml>",
            "not xml",
        ] {
            assert!(
                customer_service_message("o1", xml.as_bytes()).is_err(),
                "{xml}"
            );
        }
    }
}
