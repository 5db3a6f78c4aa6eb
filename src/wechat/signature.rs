//! WeChat request signatures.
//!
//! `signature = sha1(sorted(token, timestamp, nonce))` authenticates the query (official accounts and
//! mini programs, all modes); `msg_signature = sha1(sorted(token, timestamp, nonce, Encrypt))` also
//! covers the ciphertext (compatible and safe modes, WeCom). Both are 40 lowercase hex characters.
//! The parts are sorted as byte strings, which is what every WeChat SDK's `sort()` does on ASCII.
//!
//! Pure functions only; comparison is constant-time so a forger learns nothing from timing.

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// A computed signature: 40 lowercase hex digits, kept on the stack.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 40]);

impl Signature {
    /// The hex text, as WeChat puts it in the query string.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written into the array.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Does `provided` (from the query string) equal this signature? Constant-time in the content;
    /// hex case is ignored because some tools upper-case it.
    pub fn matches(&self, provided: &str) -> bool {
        let provided = provided.as_bytes();
        if provided.len() != self.0.len() {
            return false;
        }
        let mut lowered = [0u8; 40];
        for (dst, src) in lowered.iter_mut().zip(provided) {
            *dst = src.to_ascii_lowercase();
        }
        self.0.ct_eq(&lowered).into()
    }
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `sha1(sorted(token, timestamp, nonce))`: the `signature` query parameter.
pub fn signature(token: &str, timestamp: &str, nonce: &str) -> Signature {
    sign_sorted(&mut [token.as_bytes(), timestamp.as_bytes(), nonce.as_bytes()])
}

/// `sha1(sorted(token, timestamp, nonce, encrypt))`: the `msg_signature` query parameter, where
/// `encrypt` is the base64 ciphertext exactly as it stands in the body (or the WeCom `echostr`).
pub fn msg_signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> Signature {
    sign_sorted(&mut [
        token.as_bytes(),
        timestamp.as_bytes(),
        nonce.as_bytes(),
        encrypt.as_bytes(),
    ])
}

fn sign_sorted(parts: &mut [&[u8]]) -> Signature {
    parts.sort_unstable();
    let mut sha = Sha1::new();
    for part in parts.iter() {
        sha.update(part);
    }
    let digest = sha.finalize();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 40];
    for (i, byte) in digest.iter().enumerate() {
        out[2 * i] = HEX[usize::from(byte >> 4)];
        out[2 * i + 1] = HEX[usize::from(byte & 0x0f)];
    }
    Signature(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mini_program_doc_worked_example() {
        // DOC-MP (message-push.html): sorted concat "15147114921714036504AAAAA".
        let sig = signature("AAAAA", "1714036504", "1514711492");
        assert_eq!(sig.as_str(), "f464b24fc39322e44b38aa78f5edd27bd1441696");
        assert!(sig.matches("f464b24fc39322e44b38aa78f5edd27bd1441696"));
        assert!(sig.matches("F464B24FC39322E44B38AA78F5EDD27BD1441696"));
    }

    #[test]
    fn rejects_wrong_length_and_near_misses() {
        let sig = signature("AAAAA", "1714036504", "1514711492");
        assert!(!sig.matches(""));
        assert!(!sig.matches("f464b24fc39322e44b38aa78f5edd27bd144169"));
        assert!(!sig.matches("f464b24fc39322e44b38aa78f5edd27bd14416960"));
        assert!(!sig.matches("f464b24fc39322e44b38aa78f5edd27bd1441697"));
    }

    #[test]
    fn order_of_arguments_does_not_matter() {
        // The parts are sorted, so swapping timestamp and nonce gives the same signature.
        assert_eq!(signature("t", "1", "2"), signature("t", "2", "1"));
        assert_eq!(
            msg_signature("t", "1", "2", "x"),
            msg_signature("x", "2", "1", "t")
        );
    }
}
