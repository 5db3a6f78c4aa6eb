//! The frames of a `listen` connection, as JSON: a delivery down, its answer up (the protocol
//! for clients in any language is docs/listen.md), and why a delivery got no answer.

use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Frames that may wait for one connection's socket before a delivery is refused as busy.
pub(super) const QUEUE: usize = 256;

/// A delivery as its frame carries it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliveryFrame {
    /// Always `"delivery"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `X-WeChat-Fanout-Delivery`: the same on every attempt of one delivery.
    pub delivery: i64,
    /// From 1.
    pub attempt: u32,
    /// WeChat's query string, as an HTTP target gets it appended to its URL (without `?`).
    pub query: String,
    /// The headers an HTTP target gets: `content-type` and the `x-wechat-fanout-*` ones.
    pub headers: Vec<(String, String)>,
    /// The body, base64 (standard, padded): byte for byte what WeChat sent.
    pub body: String,
}

/// An answer as its frame carries it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnswerFrame {
    /// Always `"answer"`.
    #[serde(rename = "type")]
    pub kind: String,
    pub delivery: i64,
    pub status: u16,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Base64, as in the delivery.
    #[serde(default)]
    pub body: String,
}

impl DeliveryFrame {
    pub fn new(
        delivery: i64,
        attempt: u32,
        query: &str,
        headers: Vec<(String, String)>,
        body: &[u8],
    ) -> DeliveryFrame {
        DeliveryFrame {
            kind: "delivery".to_owned(),
            delivery,
            attempt,
            query: query.to_owned(),
            headers,
            body: base64::engine::general_purpose::STANDARD.encode(body),
        }
    }

    /// The body's bytes.
    pub fn body(&self) -> Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD.decode(&self.body)
    }
}

impl AnswerFrame {
    pub fn new(delivery: i64, status: u16, headers: Vec<(String, String)>, body: &[u8]) -> Self {
        AnswerFrame {
            kind: "answer".to_owned(),
            delivery,
            status,
            headers,
            body: base64::engine::general_purpose::STANDARD.encode(body),
        }
    }

    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a delivery over a connection got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenError {
    #[error("no listen client is connected")]
    NotConnected,
    #[error("the listen client's connection is busy ({QUEUE} frames queued)")]
    Busy,
    #[error("the listen client's connection closed before it answered")]
    Closed,
    #[error("the listen client did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the listen client's answer is not valid: {0}")]
    BadAnswer(String),
}
