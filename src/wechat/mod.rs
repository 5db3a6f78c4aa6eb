//! The WeChat callback protocol, as pure functions over bytes: no I/O, no clocks, no logging.
//!
//! `signature` and `crypto` are the primitives; `envelope` reads and builds bodies; `callback`
//! combines them per account kind and mode (verify, open, handshake, seal); `dedupe` says which
//! callbacks are resends of one another; `pay` reads and checks WeChat Pay's notifications. The server uses this to verify and route callbacks; the
//! CLI uses it to sign and encrypt simulated ones. Facts and sources:
//! `shared/docs/wechat-protocol.md`.

pub mod authorizer;
pub mod callback;
pub mod crypto;
pub mod dedupe;
pub mod envelope;
pub mod pay;
pub mod reply;
pub mod resign;
pub mod signature;

pub use authorizer::{AUTHORIZER_HEADER, is_app_id};
pub use callback::{
    CallbackQuery, Credentials, Fresh, Kind, Opened, SealParams, SealedRequest, Security,
    VerifyError, open_callback, seal_callback, seal_handshake, verify_url,
};
pub use crypto::{AesKey, CryptoError};
pub use dedupe::{DedupeKey, dedupe_key, pay_dedupe_key};
pub use envelope::{Envelope, EnvelopeError, Format, Sealed, encrypted_reply, push_cdata_element};
pub use pay::{
    ApiV3Key, KeyError, NONCE_HEADER, Notification, PAY_HEADERS, PAY_MSG_TYPE, PayError,
    PayHeaders, PayKey, PayKeys, Resource, SERIAL_HEADER, SIGNATURE_HEADER, SIGNATURE_TYPE,
    SIGNATURE_TYPE_HEADER, TIMESTAMP_HEADER, certificate_from_pem, check_headers,
    event_type_matches, out_trade_no, signed_message, verify_notification,
};
pub use reply::{field as reply_field, is_empty_reply, open_reply, open_signed_reply, xml_fields};
pub use resign::{Resign, ResignError};
pub use signature::{Signature, msg_signature, signature};
