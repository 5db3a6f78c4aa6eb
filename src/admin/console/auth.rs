//! Who may use the admin listener: the `admin.token` as a bearer token (scripts, the CLI,
//! Prometheus), or a session cookie the console's login form obtained with it.
//!
//! Sessions hold no server state: the cookie is its expiry time and an HMAC-SHA256 of it keyed
//! by the token, so sessions survive a restart (the console reconnects on its own) and changing
//! the token ends them all. Each session has a CSRF token derived the same way, which the page
//! sends in [`CSRF_HEADER`] on every state-changing request; a cookie alone never changes
//! anything. Every comparison of a secret is constant-time.

use std::time::Duration;

use base64::Engine as _;
use ring::{digest, hmac};
use subtle::ConstantTimeEq as _;

/// The session cookie's name.
pub(super) const COOKIE: &str = "wf_console";
/// The header that carries a session's CSRF token.
pub const CSRF_HEADER: &str = "x-console-csrf";
/// How long a login lasts.
pub(super) const SESSION: Duration = Duration::from_secs(12 * 3600);

/// The admin token, in the forms it is checked in.
pub struct Auth {
    /// SHA-256 of the token: compared with the digest of what a caller sends, so neither the
    /// comparison's time nor the digests' (fixed) length says anything about the token.
    digest: [u8; 32],
    /// Signs session cookies and derives their CSRF tokens.
    key: hmac::Key,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth(<redacted>)")
    }
}

/// A valid session: when it ends, and the CSRF token its page must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub expires_s: u64,
    pub csrf: String,
}

impl Auth {
    pub fn new(token: &str) -> Auth {
        Auth {
            digest: sha256(token.as_bytes()),
            key: hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes()),
        }
    }

    /// Whether `given` is the token.
    pub fn is_token(&self, given: &str) -> bool {
        bool::from(self.digest.ct_eq(&sha256(given.as_bytes())))
    }

    /// The value of an `Authorization` header holds the token as a bearer token.
    pub fn is_bearer(&self, header: &str) -> bool {
        let mut parts = header.splitn(2, ' ');
        let scheme = parts.next().unwrap_or("");
        let token = parts.next().unwrap_or("").trim();
        scheme.eq_ignore_ascii_case("bearer") && self.is_token(token)
    }

    /// A new session's cookie value and its session, from `now_s` (Unix seconds).
    pub fn open_session(&self, now_s: u64) -> (String, Session) {
        let expires_s = now_s.saturating_add(SESSION.as_secs());
        let tag = hmac::sign(&self.key, &session_message(expires_s));
        let value = format!("{expires_s}.{}", b64(tag.as_ref()));
        (value, self.session(expires_s))
    }

    /// The session of a `Cookie` header, if it holds one that is signed and not expired.
    pub fn session_of(&self, cookie_header: &str, now_s: u64) -> Option<Session> {
        let value = cookie_header
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == COOKIE)?
            .1;
        let (expires, tag) = value.split_once('.')?;
        let expires_s: u64 = expires.parse().ok()?;
        if expires_s <= now_s {
            return None;
        }
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tag)
            .ok()?;
        hmac::verify(&self.key, &session_message(expires_s), &tag).ok()?;
        Some(self.session(expires_s))
    }

    /// Whether `given` is the CSRF token of `session`.
    pub fn is_csrf(&self, session: &Session, given: &str) -> bool {
        bool::from(session.csrf.as_bytes().ct_eq(given.as_bytes()))
    }

    fn session(&self, expires_s: u64) -> Session {
        let tag = hmac::sign(&self.key, format!("csrf\n{expires_s}").as_bytes());
        Session {
            expires_s,
            csrf: b64(tag.as_ref()),
        }
    }
}

/// The `Set-Cookie` value that stores `value`; HttpOnly (scripts never read it), SameSite=Strict
/// (no other site's page sends it). Not `Secure`: the admin listener speaks plain HTTP; put a
/// TLS proxy in front of it to reach it over a network.
pub(super) fn set_cookie(value: &str, max_age: Duration) -> String {
    format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        max_age.as_secs()
    )
}

fn session_message(expires_s: u64) -> Vec<u8> {
    format!("session\n{expires_s}").into_bytes()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "correct horse battery staple";

    #[test]
    fn bearer_tokens() {
        let auth = Auth::new(TOKEN);
        assert!(auth.is_bearer(&format!("Bearer {TOKEN}")));
        assert!(auth.is_bearer(&format!("bearer {TOKEN}")));
        assert!(!auth.is_bearer(&format!("Basic {TOKEN}")));
        assert!(!auth.is_bearer("Bearer correct horse battery stapl"));
        assert!(!auth.is_bearer("Bearer"));
        assert!(!auth.is_bearer(""));
    }

    #[test]
    fn a_session_cookie_is_valid_until_it_expires_and_only_for_its_token() {
        let auth = Auth::new(TOKEN);
        let (value, session) = auth.open_session(1_000);
        let header = format!("other=1; {COOKIE}={value}");
        assert_eq!(auth.session_of(&header, 1_000), Some(session.clone()));
        assert_eq!(auth.session_of(&header, 1_000 + SESSION.as_secs()), None);
        assert_eq!(
            Auth::new("another token of enough length").session_of(&header, 1_000),
            None
        );
        assert!(auth.is_csrf(&session, &session.csrf));
        assert!(!auth.is_csrf(&session, ""));
    }

    #[test]
    fn a_cookie_with_a_later_expiry_but_the_old_signature_is_refused() {
        let auth = Auth::new(TOKEN);
        let (value, _) = auth.open_session(1_000);
        let (_, tag) = value.split_once('.').unwrap_or_default();
        let forged = format!("{COOKIE}={}.{tag}", 1_000 + 10 * SESSION.as_secs());
        assert_eq!(auth.session_of(&forged, 2_000), None);
        assert_eq!(auth.session_of(&format!("{COOKIE}=garbage"), 0), None);
        assert_eq!(auth.session_of(&format!("{COOKIE}=5.%%%"), 0), None);
    }
}
