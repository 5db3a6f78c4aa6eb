//! Reads a request body once into `Bytes`, bounded in size and time.
//!
//! A declared `Content-Length` over the limit is refused before reading; a chunked body is cut off
//! as soon as it passes the limit. Either way nothing of it is kept.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::escape::{Excerpt, MESSAGE_EXCERPT};
use crate::ingress::rejection::Rejection;

pub(super) async fn read(
    body: Incoming,
    declared: Option<u64>,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, Rejection> {
    if declared.is_some_and(|len| len > max as u64) {
        return Err(Rejection::TooLarge(max));
    }
    match tokio::time::timeout(timeout, Limited::new(body, max).collect()).await {
        Err(_) => Err(Rejection::BodyTimeout),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Rejection::TooLarge(max))
        }
        Ok(Err(e)) => Err(Rejection::Body(Excerpt::new(
            &e.to_string(),
            MESSAGE_EXCERPT,
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}
