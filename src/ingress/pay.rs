//! WeChat Pay notifications (`kind = "wechat_pay"` accounts) on `/wechat/{id}`: POST only.
//!
//! The order is the trust boundary's: the `Wechatpay-*` headers are read and the serial must
//! name a configured key before the body is read; the signature over `timestamp\nnonce\nbody\n`
//! is checked, then the timestamp's window (the account's `max_timestamp_skew_secs`), and only
//! then is the body read as a notification (and its resource decrypted, with the APIv3 key).
//! A refusal is stored nowhere. What passes goes through the same accept as WeChat's callbacks
//! (dedupe on the notification's `id`, persist, dispatch) and is answered `204` once stored;
//! WeChat Pay wants no body. There is no passive reply: targets' answers decide only their own
//! delivery. Every refusal on such a path answers WeChat Pay's `{"code":"FAIL","message":…}`
//! ([`fail`]), so its logs say why.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;

use super::rejection::Rejection;
use super::{Ingress, Verified, check_freshness, replayable_content_type};
use crate::routing::{Account, OpenedNotification, PayAccount};
use crate::store::Replay;
use crate::wechat::pay_dedupe_key;
use crate::wechat::{
    NONCE_HEADER, PAY_HEADERS, PayError, PayHeaders, SERIAL_HEADER, SIGNATURE_HEADER,
    SIGNATURE_TYPE_HEADER, TIMESTAMP_HEADER, check_headers, verify_notification,
};

/// WeChat Pay's failure answer.
#[derive(Serialize)]
struct Fail<'a> {
    code: &'static str,
    message: &'a str,
}

/// `{"code":"FAIL","message":…}` with `status`: what every refusal on a pay path answers.
pub(super) fn fail(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    crate::http::json(
        status,
        &Fail {
            code: "FAIL",
            message,
        },
    )
}

impl Ingress {
    /// One notification for the pay account `account`: verified, stored, answered 204.
    pub(super) async fn pay_notification(
        self: &Arc<Self>,
        account: Arc<Account>,
        pay: &PayAccount,
        request: Request<Incoming>,
        started: Instant,
    ) -> Result<Response<Full<Bytes>>, Rejection> {
        let (parts, incoming) = request.into_parts();
        let content_type = replayable_content_type(&parts.headers)?;
        let received = pay_headers(&parts.headers)?;
        let lookup = |name: &str| {
            received
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let headers = PayHeaders {
            serial: lookup(SERIAL_HEADER),
            signature: lookup(SIGNATURE_HEADER),
            timestamp: lookup(TIMESTAMP_HEADER),
            nonce: lookup(NONCE_HEADER),
            signature_type: lookup(SIGNATURE_TYPE_HEADER),
        };
        // Refused before the body is read: no key, no signature, nothing to check it with.
        check_headers(&pay.keys, &headers)?;
        let body = self.read_body(&parts.headers, incoming).await?;
        let timestamp = verify_notification(&pay.keys, &headers, &body)?;
        check_freshness(Some(timestamp), pay.max_skew_secs)?;
        let OpenedNotification {
            notification,
            resource,
            envelope,
        } = pay.open(&body)?;
        let key = pay_dedupe_key(&account.id, &notification.id);
        // The console shows the decrypted resource where it can, the payer's ids hidden.
        let content = (self.shared.events.carries_content()).then(|| match &resource {
            Some(plain) => crate::privacy::hide_payer_ids(&String::from_utf8_lossy(plain)),
            None => String::from_utf8_lossy(&body).into_owned(),
        });
        let traced = self.shared.traces.callback(&account.id);
        let replay = Arc::new(Replay {
            query: parts.uri.query().unwrap_or("").to_owned(),
            content_type,
            body,
            authorizer: None,
            trace: traced.traceparent(),
            headers: received,
            lane: (account.lanes.as_ref()).map(|lanes| lanes.of(&envelope, None)),
        });
        let verified = Verified {
            account,
            envelope,
            authorizer: None,
            key,
            replay,
            content,
            traced,
        };
        // Stored (or a resend of what is stored): received. WeChat Pay wants no body.
        self.accept_in_task(verified, started).await?;
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        Ok(response)
    }
}

/// The `Wechatpay-*` headers of a request, names in lower case, values as sent; a header
/// that appears twice or is not visible ASCII is refused (it could not be replayed as sent).
fn pay_headers(headers: &HeaderMap) -> Result<Vec<(String, String)>, Rejection> {
    let mut kept = Vec::with_capacity(PAY_HEADERS.len());
    for name in PAY_HEADERS {
        let mut values = headers.get_all(name).iter();
        let Some(value) = values.next() else { continue };
        // Twice, or not visible ASCII: refused as if it were not there.
        let unusable = || Rejection::Pay(PayError::MissingHeader(display_name(name)));
        if values.next().is_some() {
            return Err(unusable());
        }
        let text = value.to_str().map_err(|_| unusable())?;
        kept.push((name.to_owned(), text.to_owned()));
    }
    Ok(kept)
}

/// A header's name as WeChat Pay's docs write it.
fn display_name(name: &str) -> &'static str {
    match name {
        SERIAL_HEADER => "Wechatpay-Serial",
        SIGNATURE_HEADER => "Wechatpay-Signature",
        TIMESTAMP_HEADER => "Wechatpay-Timestamp",
        NONCE_HEADER => "Wechatpay-Nonce",
        _ => "Wechatpay-Signature-Type",
    }
}
