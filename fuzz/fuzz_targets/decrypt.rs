//! `AesKey::decrypt` with the fixed non-canonical test key, on three kinds of input chosen by the
//! first byte: arbitrary text, base64 of arbitrary bytes, and arbitrary *plaintext* that the
//! harness encrypts first, so the fuzzer steers the padding, length and receive-id checks
//! directly (AES would otherwise turn every mutation into noise). Encrypt → decrypt must round
//! trip, and decryption of a crafted plaintext must agree with a model of the scheme.
#![no_main]

use aes::Aes256;
use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockEncryptMut, KeyIvInit};
use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::{DecodePaddingMode, general_purpose};
use libfuzzer_sys::fuzz_target;
use wechat_fanout::wechat::{AesKey, CryptoError};

/// Its 43rd character has non-zero discarded bits: strict base64 decoders refuse it.
const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const RECEIVE_IDS: [&str; 2] = ["wx5823bf96d3bd56c7", ""];

fn raw_key() -> [u8; 32] {
    let lenient = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireNone),
    );
    let mut raw = [0u8; 32];
    let written = lenient.decode_slice(KEY, &mut raw).expect("test key");
    assert_eq!(written, 32);
    raw
}

/// What `decrypt` must answer for this plaintext, written from the scheme (PKCS#7 to at most 32,
/// random(16) | len(4, BE) | message | receive id).
fn model(plain: &[u8], receive_id: &str) -> Result<Vec<u8>, CryptoError> {
    let pad = usize::from(*plain.last().ok_or(CryptoError::Padding)?);
    if pad == 0 || pad > 32 || pad > plain.len() {
        return Err(CryptoError::Padding);
    }
    let body = plain.len() - pad;
    if plain[body..].iter().any(|&b| usize::from(b) != pad) {
        return Err(CryptoError::Padding);
    }
    if body < 20 {
        return Err(CryptoError::Length);
    }
    let len = u32::from_be_bytes([plain[16], plain[17], plain[18], plain[19]]) as usize;
    if len > body - 20 {
        return Err(CryptoError::Length);
    }
    if &plain[20 + len..body] != receive_id.as_bytes() {
        return Err(CryptoError::ReceiveId);
    }
    Ok(plain[20..20 + len].to_vec())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = AesKey::from_encoding_aes_key(KEY).expect("test key");
    let receive_id = RECEIVE_IDS[usize::from(mode >> 7)];
    match mode % 4 {
        0 => {
            let text = String::from_utf8_lossy(rest);
            let _ = key.decrypt(&text, receive_id);
        }
        1 => {
            let result = key.decrypt(&general_purpose::STANDARD.encode(rest), receive_id);
            if rest.is_empty() || rest.len() % 16 != 0 {
                assert_eq!(result, Err(CryptoError::CiphertextLength(rest.len())));
            }
        }
        2 => {
            // `rest` is the plaintext, zero-filled to whole AES blocks.
            let mut plain = rest.to_vec();
            if plain.is_empty() {
                plain.push(0);
            }
            plain.resize(plain.len().div_ceil(16) * 16, 0);
            let raw = raw_key();
            let iv: [u8; 16] = raw[..16].try_into().expect("16 bytes");
            let mut buf = plain.clone();
            let len = buf.len();
            cbc::Encryptor::<Aes256>::new(&raw.into(), &iv.into())
                .encrypt_padded_mut::<NoPadding>(&mut buf, len)
                .expect("whole blocks");
            let encrypt = STANDARD.encode(&buf);
            assert_eq!(key.decrypt(&encrypt, receive_id), model(&plain, receive_id));
        }
        _ => {
            let sealed = key.encrypt(rest, receive_id, [mode; 16]);
            assert_eq!(key.decrypt(&sealed, receive_id).as_deref(), Ok(rest));
        }
    }
});
