//! Small answers both listeners send: plain text, JSON, and a JSON error.
//!
//! [`guesses`]: the per-address budget of token tries, for both listeners.

pub mod guesses;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

/// The content type of every plain-text answer (`success` included).
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// A plain-text answer.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    with_type(status, body.into(), TEXT_PLAIN)
}

/// `value` as (indented) JSON: the admin API is read by people with curl as much as by scripts.
pub fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    // Serialising plain structs and `serde_json::Value`s into a Vec cannot fail.
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    with_type(status, Bytes::from(body), "application/json")
}

/// `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

fn with_type(status: StatusCode, body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
