//! Why a request to the WeChat port was refused, and the one place that maps each reason to an
//! HTTP status, a log level and a metric label.
//!
//! A refused callback was neither stored nor delivered; WeChat resends on anything but 200, so a
//! status that invites a resend (503) is used only when the fault is ours.

use http::StatusCode;
use tracing::Level;

use crate::escape::Excerpt;
use crate::ingress::sources::Denied;
use crate::store::StoreError;
use crate::wechat::PayError;
use crate::wechat::VerifyError;

#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("no such account")]
    UnknownAccount,
    #[error("method not allowed")]
    Method,
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    /// Every target gets the query appended to its URL: a longer one could never be delivered.
    #[error("query longer than {0} bytes")]
    QueryTooLong(usize),
    #[error("body not received in time")]
    BodyTimeout,
    #[error("reading the body failed: {0}")]
    Body(Excerpt),
    /// A header that could not be forwarded exactly as received.
    #[error("{0}")]
    ContentType(&'static str),
    #[error("timestamp outside the allowed window")]
    StaleTimestamp,
    /// Not one of the account's `allowed_sources`.
    #[error(transparent)]
    Source(#[from] Denied),
    // Transparent: the message is the inner one, and so is the source, so a chain printer
    // (`{:#}`) does not print the cause twice.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// A WeChat Pay notification that is not signed by a configured key, or not one.
    #[error(transparent)]
    Pay(#[from] PayError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A resend that came while its first copy was being handled here, and that copy was not
    /// stored: WeChat must try again rather than hear success for nothing.
    #[error("the first copy of this callback was not stored")]
    FirstCopyNotStored,
    /// The store did not answer before WeChat would give up; the callback may still be stored
    /// (its resend then gets the stored answer).
    #[error("the store did not answer in time")]
    StoreTooSlow,
    #[error("internal error")]
    Internal,
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::UnknownAccount => StatusCode::NOT_FOUND,
            Rejection::Method => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::QueryTooLong(_) => StatusCode::URI_TOO_LONG,
            Rejection::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::Body(_) | Rejection::ContentType(_) => StatusCode::BAD_REQUEST,
            Rejection::StaleTimestamp => StatusCode::UNAUTHORIZED,
            Rejection::Source(_) => StatusCode::FORBIDDEN,
            Rejection::Verify(e) if e.is_unauthorized() => StatusCode::UNAUTHORIZED,
            Rejection::Verify(_) => StatusCode::BAD_REQUEST,
            Rejection::Pay(e) if e.is_unauthorized() => StatusCode::UNAUTHORIZED,
            // Our APIv3 key does not open what WeChat Pay signed: ours to fix; it retries.
            Rejection::Pay(PayError::Decrypt) => StatusCode::INTERNAL_SERVER_ERROR,
            Rejection::Pay(_) => StatusCode::BAD_REQUEST,
            Rejection::Store(_) | Rejection::StoreTooSlow | Rejection::FirstCopyNotStored => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Rejection::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// How loudly to log a rejection: client mistakes are routine, our faults are not.
    pub fn level(&self) -> Level {
        match self {
            Rejection::Store(_) | Rejection::StoreTooSlow | Rejection::Internal => Level::ERROR,
            Rejection::Pay(PayError::Decrypt) => Level::ERROR,
            Rejection::Verify(e) if e.is_unauthorized() => Level::WARN,
            Rejection::Pay(e) if e.is_unauthorized() => Level::WARN,
            // The first copy's failure was logged as an error already.
            Rejection::StaleTimestamp | Rejection::Source(_) | Rejection::FirstCopyNotStored => {
                Level::WARN
            }
            _ => Level::INFO,
        }
    }

    /// A short, stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::UnknownAccount => "unknown_account",
            Rejection::Method => "method",
            Rejection::TooLarge(_) => "too_large",
            Rejection::QueryTooLong(_) => "query_too_long",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::Body(_) => "body",
            Rejection::ContentType(_) => "bad_content_type",
            Rejection::StaleTimestamp => "stale_timestamp",
            Rejection::Source(Denied::NotAllowed(_)) => "source_not_allowed",
            Rejection::Source(Denied::ListUnknown(_)) => "source_list_unknown",
            Rejection::Source(Denied::BadHeader(_)) => "bad_forwarded_header",
            Rejection::Verify(e) => e.reason(),
            Rejection::Pay(e) => e.reason(),
            // Its own label: an alert on it says the replicas are behind, not Redis down.
            Rejection::Store(StoreError::NotReplicated(_)) => "store_not_replicated",
            Rejection::Store(_) => "store",
            Rejection::StoreTooSlow => "store_too_slow",
            Rejection::FirstCopyNotStored => "first_copy_not_stored",
            Rejection::Internal => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::{CryptoError, Envelope};

    /// Each cause appears once when the whole chain is printed, as `main` prints errors.
    #[test]
    fn a_printed_chain_names_each_cause_once() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let envelope = Envelope::parse(b"<xml><a>&x;</a></xml>").unwrap_err();
        for (rejection, cause) in [
            (
                Rejection::Store(StoreError::from(denied)),
                "permission denied",
            ),
            (
                Rejection::Verify(VerifyError::Crypto(CryptoError::Padding)),
                "invalid PKCS#7 padding",
            ),
            (
                Rejection::Verify(VerifyError::Envelope(envelope)),
                "unknown XML entity &x;",
            ),
        ] {
            let chain = format!("{:#}", anyhow::Error::from(rejection));
            assert_eq!(chain.matches(cause).count(), 1, "{chain}");
        }
    }

    /// A write the replicas did not acknowledge in time is our fault (503, ERROR) under a label
    /// of its own, so an alert can tell lagging replicas from a Redis that is down.
    #[test]
    fn a_write_not_replicated_is_503_under_its_own_label() {
        let rejection = Rejection::Store(StoreError::NotReplicated("0 of 1".into()));
        assert_eq!(rejection.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(rejection.level(), Level::ERROR);
        assert_eq!(rejection.reason(), "store_not_replicated");
        let other = Rejection::Store(StoreError::Unavailable("down".into()));
        assert_eq!(other.reason(), "store");
    }
}
