//! Deliveries signed by the proxy itself, in the Standard Webhooks form (opt-in per target,
//! `signing_secret_env`): `webhook-id`, `webhook-timestamp` (Unix seconds of the attempt) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed with the bytes of a
//! `whsec_<base64>` secret.
//!
//! Why: a target that checks the original signer's own signature and timestamp (a WeChat Pay SDK
//! refuses a timestamp more than ~5 minutes old) cannot trust a copy the proxy retries later. With
//! a secret of its own, it trusts every copy by the proxy's signature instead. Pure: the time is
//! handed in.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderName;
use ring::hmac;

pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// What a Standard Webhooks secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";
/// The spec's bounds on the secret's bytes.
const MIN_SECRET_BYTES: usize = 24;
const MAX_SECRET_BYTES: usize = 64;

/// A target's signing key. Its bytes are never shown.
#[derive(Clone)]
pub struct WebhookSigner {
    key: hmac::Key,
}

impl std::fmt::Debug for WebhookSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSigner(<redacted>)")
    }
}

impl WebhookSigner {
    /// From `whsec_<base64>` (24 to 64 bytes once decoded); `None` for anything else.
    pub fn from_secret(secret: &str) -> Option<WebhookSigner> {
        let encoded = secret.trim().strip_prefix(SECRET_PREFIX)?;
        let bytes = BASE64.decode(encoded).ok()?;
        (MIN_SECRET_BYTES..=MAX_SECRET_BYTES)
            .contains(&bytes.len())
            .then(|| WebhookSigner {
                key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            })
    }

    /// The `webhook-signature` value of `body` sent as message `id` at `timestamp`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(id.as_bytes());
        context.update(b".");
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        format!("v1,{}", BASE64.encode(context.sign().as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (its secret, id, timestamp and body).
    #[test]
    fn the_specifications_example_signs_as_published() {
        let signer = WebhookSigner::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_secret_is_whsec_and_base64_of_24_to_64_bytes() {
        let of = |n: usize| format!("whsec_{}", BASE64.encode(vec![7u8; n]));
        assert!(WebhookSigner::from_secret(&of(24)).is_some());
        assert!(WebhookSigner::from_secret(&of(64)).is_some());
        assert!(WebhookSigner::from_secret(&of(23)).is_none());
        assert!(WebhookSigner::from_secret(&of(65)).is_none());
        assert!(WebhookSigner::from_secret(&BASE64.encode([7u8; 32])).is_none());
        assert!(WebhookSigner::from_secret("whsec_not base64!").is_none());
        let signer = WebhookSigner::from_secret(&of(32)).unwrap();
        assert!(!format!("{signer:?}").contains("Bw"));
    }
}
