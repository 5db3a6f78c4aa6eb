//! Shadow compare (`shadow_of`): a candidate target gets the callbacks its owner answers, with
//! the same deadline, and its answer is compared with the one WeChat got, never sent anywhere.
//!
//! Answers are compared as WeChat's client would read them: encrypted replies opened with the
//! account's key, XML flattened into fields, and the fields that differ on every call
//! (`CreateTime`, and the envelope's `TimeStamp`, `Nonce`, `MsgSignature`) left out; an empty
//! body and `success` are the same non-reply. Each result is counted in
//! `wechat_fanout_shadow_total{account,target,result}`; the last [`KEEP`] differences are kept in
//! memory (per process) for the admin API's `GET /shadow/differences`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::debug;

use crate::attempt::Attempt;
use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::routing::{Account, Target};
use crate::store::{Answer, CallbackId};
use crate::wechat::Credentials;
use crate::wechat::{is_empty_reply, open_reply, xml_fields};

/// How many differences are kept for the admin API.
pub const KEEP: usize = 100;
/// Fields that differ on every call, compared by their last path segment, ignoring case.
const PER_CALL: [&str; 5] = ["CreateTime", "TimeStamp", "Nonce", "MsgSignature", "MsgId"];

/// How one shadow answer compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Same,
    Different,
    /// No answer by the deadline the owner had.
    Late,
    /// Answered non-2xx, or could not be reached.
    Failed,
    /// Answered 2xx over the 1 MiB cap: not compared by the part that was read.
    TooLarge,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Same => "same",
            Outcome::Different => "different",
            Outcome::Late => "late",
            Outcome::Failed => "failed",
            Outcome::TooLarge => "too_large",
        }
    }
}

/// One difference, both answers side by side (opened, as text).
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub at_ms: i64,
    pub account: String,
    pub target: String,
    /// The target it shadows.
    pub owner: String,
    pub callback: CallbackId,
    /// The answer WeChat got (`success` when the owner had none in time).
    pub owner_answer: String,
    pub shadow_answer: String,
}

/// The recent differences and the counter; shared by ingress (writes) and admin (reads).
#[derive(Debug)]
pub struct ShadowLog {
    recent: Mutex<VecDeque<Difference>>,
    metrics: Arc<Metrics>,
}

impl ShadowLog {
    pub fn new(metrics: Arc<Metrics>) -> ShadowLog {
        ShadowLog {
            recent: Mutex::new(VecDeque::with_capacity(KEEP)),
            metrics,
        }
    }

    /// Counts `outcome`; keeps `difference` when it is one.
    pub fn record(&self, outcome: Outcome, difference: Difference) {
        self.metrics
            .shadow(&difference.account, &difference.target, outcome.label());
        if outcome != Outcome::Different {
            return;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == KEEP {
            recent.pop_front();
        }
        recent.push_back(difference);
    }

    /// The kept differences, newest first.
    pub fn differences(&self) -> Vec<Difference> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().rev().cloned().collect()
    }
}

/// Waits for each shadow's answer until `deadline` (the owner's) and records how it compares
/// with `answered`, what WeChat got for callback `callback`.
pub async fn compare(
    log: Arc<ShadowLog>,
    account: Arc<Account>,
    owner: Arc<str>,
    callback: CallbackId,
    answered: Bytes,
    shadows: Vec<(Arc<Target>, oneshot::Receiver<Attempt>)>,
    deadline: Instant,
) {
    // The owner's answer is opened and read once, not once per shadow.
    let owner_said = said(&answered, &account.credentials);
    let mut owner_answer = None;
    for (target, answer) in shadows {
        let (outcome, body) = match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(Attempt {
                reply: Some(Answer { body, .. }),
                ..
            })) => {
                let outcome = if said(&body, &account.credentials) == owner_said {
                    Outcome::Same
                } else {
                    Outcome::Different
                };
                (outcome, body)
            }
            Ok(Ok(Attempt {
                withheld: Some(_), ..
            })) => (Outcome::TooLarge, Bytes::new()),
            Ok(_) => (Outcome::Failed, Bytes::new()),
            Err(_) => (Outcome::Late, Bytes::new()),
        };
        debug!(target = %target.key.target, result = outcome.label(), "shadow compared");
        // Only a difference is kept with its answers; the other outcomes are only counted.
        let (owner_answer, shadow_answer) = if outcome == Outcome::Different {
            let owner = owner_answer
                .get_or_insert_with(|| shown(&answered, &account.credentials))
                .clone();
            (owner, shown(&body, &account.credentials))
        } else {
            (String::new(), String::new())
        };
        log.record(
            outcome,
            Difference {
                at_ms: now_ms(),
                account: account.id.to_string(),
                target: target.key.target.to_string(),
                owner: owner.to_string(),
                callback,
                owner_answer,
                shadow_answer,
            },
        );
    }
}

/// What a reply says to the user, in a form two SDKs' spellings of it compare equal in.
#[derive(Debug, PartialEq, Eq)]
enum Said {
    Nothing,
    /// Fields by path, stably sorted by path (siblings' order kept), per-call fields left out.
    Fields(Vec<(String, String)>),
    /// Neither XML nor empty (JSON, or an encrypted reply that cannot be opened): the bytes.
    Bytes(Vec<u8>),
}

fn said(body: &[u8], account: &Credentials) -> Said {
    let Some(plain) = open_reply(body, account) else {
        return Said::Bytes(body.trim_ascii().to_vec());
    };
    if is_empty_reply(&plain) {
        return Said::Nothing;
    }
    match xml_fields(&plain) {
        Some(mut fields) => {
            fields.retain(|(path, _)| {
                let last = path.rsplit('/').next().unwrap_or(path);
                !PER_CALL.iter().any(|f| f.eq_ignore_ascii_case(last))
            });
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Said::Fields(fields)
        }
        None => Said::Bytes(plain.trim_ascii().to_vec()),
    }
}

/// Do the two answers say the same to the user?
pub fn same(owner: &[u8], shadow: &[u8], account: &Credentials) -> bool {
    said(owner, account) == said(shadow, account)
}

/// The answer as text for the admin API: opened when encrypted.
pub fn shown(body: &[u8], account: &Credentials) -> String {
    let plain = open_reply(body, account).unwrap_or_else(|| body.to_vec());
    String::from_utf8_lossy(&plain).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::{AesKey, Kind, Security};

    fn account() -> Credentials {
        let key =
            AesKey::from_encoding_aes_key("jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C").unwrap();
        Credentials {
            kind: Kind::OfficialAccount,
            token: "t".into(),
            receive_id: "wx1".into(),
            security: Security::Safe(key),
        }
    }

    #[test]
    fn ignores_create_time_order_and_cdata_but_not_content() {
        let a = "<xml><ToUserName><![CDATA[o1]]></ToUserName><CreateTime>1</CreateTime>\
                 <MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]></Content></xml>";
        let b = "<xml>\n  <MsgType>text</MsgType>\n  <ToUserName>o1</ToUserName>\n  \
                 <CreateTime>99</CreateTime>\n  <Content>hi</Content>\n</xml>";
        let c = a.replace("hi", "hello");
        let account = account();
        assert!(same(a.as_bytes(), b.as_bytes(), &account));
        assert!(!same(a.as_bytes(), c.as_bytes(), &account));
        assert!(same(b"success", b"", &account));
        assert!(!same(b"success", a.as_bytes(), &account));
    }

    #[test]
    fn compares_an_encrypted_answer_with_a_clear_one() {
        let account = account();
        let inner =
            "<xml><MsgType>text</MsgType><Content>hi</Content><CreateTime>5</CreateTime></xml>";
        let Security::Safe(key) = &account.security else {
            unreachable!()
        };
        let sealed = key.encrypt(inner.as_bytes(), "wx1", rand::random());
        let body = format!(
            "<xml><Encrypt>{sealed}</Encrypt><MsgSignature>s</MsgSignature>\
             <TimeStamp>1</TimeStamp><Nonce>n</Nonce></xml>"
        );
        let clear =
            "<xml><MsgType>text</MsgType><Content>hi</Content><CreateTime>7</CreateTime></xml>";
        assert!(same(body.as_bytes(), clear.as_bytes(), &account));
        assert_eq!(shown(body.as_bytes(), &account), inner);
    }

    #[test]
    fn keeps_the_last_differences_newest_first() {
        let mut registry = prometheus_client::registry::Registry::default();
        let log = ShadowLog::new(Arc::new(Metrics::register(&mut registry, "test")));
        let difference = |callback| Difference {
            at_ms: 0,
            account: "a".into(),
            target: "next".into(),
            owner: "bot".into(),
            callback,
            owner_answer: "x".into(),
            shadow_answer: "y".into(),
        };
        for i in 0..(KEEP as i64 + 5) {
            log.record(Outcome::Different, difference(CallbackId(i)));
        }
        log.record(Outcome::Same, difference(CallbackId(-1)));
        let kept = log.differences();
        assert_eq!(kept.len(), KEEP);
        assert_eq!(kept[0].callback, CallbackId(KEEP as i64 + 4));
        assert_eq!(kept[KEEP - 1].callback, CallbackId(5));
    }
}
