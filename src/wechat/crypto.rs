//! WeChat message encryption (the WXBizMsgCrypt scheme), for compatible/safe mode and WeCom.
//!
//! * key: `base64(EncodingAESKey + "=")`, 32 bytes; WeChat issues keys whose last character has
//!   non-zero discarded bits, so the decoder must tolerate them;
//! * cipher: AES-256-CBC with IV = the first 16 key bytes;
//! * padding: PKCS#7 to a **32**-byte block (pad values 1..=32; an aligned text gets 32 bytes);
//! * plaintext: 16 random bytes, 4-byte big-endian message length, message, receive id (app id,
//!   corp id, suite id, or empty for WeCom bots).
//!
//! Decryption checks every pad byte, the length field and the receive id, and says which check
//! failed. Pure functions: no I/O, no logging, and the key never appears in `Debug` output.

use aes::Aes256;
use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, InnerIvInit, KeyInit};
use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::{DecodePaddingMode, general_purpose};

/// WeChat pads to the key length, not to the AES block size.
const PAD_BLOCK: usize = 32;
/// 16 random bytes + 4 length bytes precede the message.
const HEADER: usize = 20;

/// Why a key, a ciphertext or a decrypted text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("encoding_aes_key must be 43 base64 characters")]
    InvalidKey,
    #[error("ciphertext is not valid base64")]
    Base64,
    #[error("ciphertext length {0} is not a positive multiple of the AES block")]
    CiphertextLength(usize),
    #[error("invalid PKCS#7 padding")]
    Padding,
    #[error("message length field exceeds the decrypted data")]
    Length,
    #[error("receive id does not match the configured one")]
    ReceiveId,
}

impl CryptoError {
    /// A short, stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            CryptoError::InvalidKey => "aes_key",
            CryptoError::Base64 => "aes_base64",
            CryptoError::CiphertextLength(_) => "aes_ciphertext_length",
            CryptoError::Padding => "aes_padding",
            CryptoError::Length => "aes_length",
            CryptoError::ReceiveId => "aes_receive_id",
        }
    }
}

/// The 32-byte AES key derived from an account's EncodingAESKey, with its key schedule.
#[derive(Clone)]
pub struct AesKey {
    cipher: Aes256,
    iv: [u8; 16],
}

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey(<redacted>)")
    }
}

/// Accepts the non-canonical final characters WeChat really issues (pitfall 1 in the protocol
/// notes): strict decoders reject most published keys.
const LENIENT_KEY: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

impl AesKey {
    /// Derives the key from the 43-character EncodingAESKey of the WeChat console.
    pub fn from_encoding_aes_key(encoding_aes_key: &str) -> Result<AesKey, CryptoError> {
        if encoding_aes_key.len() != 43 {
            return Err(CryptoError::InvalidKey);
        }
        let mut key = [0u8; 32];
        let written = LENIENT_KEY
            .decode_slice(encoding_aes_key, &mut key)
            .map_err(|_| CryptoError::InvalidKey)?;
        if written != 32 {
            return Err(CryptoError::InvalidKey);
        }
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&key[..16]);
        Ok(AesKey {
            cipher: Aes256::new(&key.into()),
            iv,
        })
    }

    /// Encrypts `message` for `receive_id` behind the 16-byte prefix `random` (fresh random bytes
    /// for WeChat; chosen ones reproduce published vectors); returns the base64 text that goes
    /// into `<Encrypt>`. The caller draws the randomness: the protocol reads no source of it.
    pub fn encrypt(&self, message: &[u8], receive_id: &str, random: [u8; 16]) -> String {
        let message_len = u32::try_from(message.len()).unwrap_or(u32::MAX);
        let text_len = HEADER + message.len() + receive_id.len();
        let pad = PAD_BLOCK - text_len % PAD_BLOCK;
        let mut buf = Vec::with_capacity(text_len + pad);
        buf.extend_from_slice(&random);
        buf.extend_from_slice(&message_len.to_be_bytes());
        buf.extend_from_slice(message);
        buf.extend_from_slice(receive_id.as_bytes());
        // `pad` is 1..=32, so the cast cannot truncate.
        buf.resize(text_len + pad, pad as u8);
        let total = buf.len();
        let encryptor =
            cbc::Encryptor::<Aes256>::inner_iv_init(self.cipher.clone(), &self.iv.into());
        // The buffer is a whole number of blocks, so NoPadding cannot fail.
        let _ = encryptor.encrypt_padded_mut::<NoPadding>(&mut buf, total);
        STANDARD.encode(&buf)
    }

    /// Decrypts the base64 `encrypt` text and checks that it was made for `receive_id`.
    /// Returns the message bytes (XML or JSON, unchanged).
    pub fn decrypt(&self, encrypt: &str, receive_id: &str) -> Result<Vec<u8>, CryptoError> {
        let mut buf = general_purpose::STANDARD
            .decode(encrypt.as_bytes())
            .map_err(|_| CryptoError::Base64)?;
        if buf.is_empty() || buf.len() % 16 != 0 {
            return Err(CryptoError::CiphertextLength(buf.len()));
        }
        let cipher_len = buf.len();
        let decryptor =
            cbc::Decryptor::<Aes256>::inner_iv_init(self.cipher.clone(), &self.iv.into());
        let plain_len = decryptor
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map_err(|_| CryptoError::CiphertextLength(cipher_len))?
            .len();
        let unpadded = unpad(&buf[..plain_len])?;
        if unpadded < HEADER {
            return Err(CryptoError::Length);
        }
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(&buf[16..HEADER]);
        let message_len =
            usize::try_from(u32::from_be_bytes(len_bytes)).map_err(|_| CryptoError::Length)?;
        let message_end = HEADER
            .checked_add(message_len)
            .filter(|end| *end <= unpadded)
            .ok_or(CryptoError::Length)?;
        if &buf[message_end..unpadded] != receive_id.as_bytes() {
            return Err(CryptoError::ReceiveId);
        }
        buf.truncate(message_end);
        buf.drain(..HEADER);
        Ok(buf)
    }
}

/// Length of `text` without its PKCS#7 (block 32) padding; every pad byte is checked, because
/// lenient unpadding is how SDKs turned corrupt ciphertext into empty messages.
fn unpad(text: &[u8]) -> Result<usize, CryptoError> {
    let pad = usize::from(*text.last().ok_or(CryptoError::Padding)?);
    if pad == 0 || pad > PAD_BLOCK || pad > text.len() {
        return Err(CryptoError::Padding);
    }
    let body = text.len() - pad;
    if text[body..].iter().any(|&b| usize::from(b) != pad) {
        return Err(CryptoError::Padding);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A key whose 43rd character ('C') leaves non-zero discarded bits: strict base64 rejects it.
    const NON_CANONICAL: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

    #[test]
    fn accepts_non_canonical_key() {
        assert!(STANDARD.decode(format!("{NON_CANONICAL}=")).is_err());
        assert!(AesKey::from_encoding_aes_key(NON_CANONICAL).is_ok());
    }

    #[test]
    fn rejects_malformed_keys() {
        for key in [
            "",
            "short",
            &NON_CANONICAL[..42],
            &format!("{NON_CANONICAL}A"),
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
        ] {
            assert_eq!(
                AesKey::from_encoding_aes_key(key).unwrap_err(),
                CryptoError::InvalidKey,
                "{key}"
            );
        }
    }

    #[test]
    fn aligned_text_gets_a_full_pad_block_of_32() {
        let key = AesKey::from_encoding_aes_key(NON_CANONICAL).unwrap();
        // 20 header bytes + 12 message bytes + 0 receive-id bytes = 32: aligned.
        let sealed = key.encrypt(b"hello world!", "", [7; 16]);
        assert_eq!(STANDARD.decode(&sealed).unwrap().len(), 64);
        assert_eq!(key.decrypt(&sealed, "").unwrap(), b"hello world!");
    }

    #[test]
    fn says_which_check_failed() {
        let key = AesKey::from_encoding_aes_key(NON_CANONICAL).unwrap();
        let sealed = key.encrypt(b"<xml/>", "wx5823bf96d3bd56c7", rand::random());
        assert_eq!(
            key.decrypt(&sealed, "wx0000000000000000"),
            Err(CryptoError::ReceiveId)
        );
        assert_eq!(key.decrypt(&sealed, ""), Err(CryptoError::ReceiveId));
        assert_eq!(key.decrypt("not base64!", ""), Err(CryptoError::Base64));
        assert_eq!(key.decrypt("", ""), Err(CryptoError::CiphertextLength(0)));
        assert_eq!(
            key.decrypt("AAAA", ""),
            Err(CryptoError::CiphertextLength(3))
        );
        // A different key decrypts to garbage, which the padding or length check catches.
        let other =
            AesKey::from_encoding_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
        assert!(matches!(
            other.decrypt(&sealed, "wx5823bf96d3bd56c7"),
            Err(CryptoError::Padding | CryptoError::Length | CryptoError::ReceiveId)
        ));
    }

    #[test]
    fn unpad_checks_every_byte() {
        assert_eq!(unpad(&[1, 2, 3, 1]), Ok(3));
        assert_eq!(unpad(&[32; 32]), Ok(0));
        assert_eq!(unpad(&[9, 3, 2, 3]), Err(CryptoError::Padding));
        assert_eq!(unpad(&[0]), Err(CryptoError::Padding));
        assert_eq!(unpad(&[33; 64]), Err(CryptoError::Padding));
        assert_eq!(unpad(&[5, 5]), Err(CryptoError::Padding));
        assert_eq!(unpad(&[]), Err(CryptoError::Padding));
    }
}
