//! The load benchmark's callbacks, as a deterministic function of a sequence number.
//!
//! Every callback carries its own `MsgId` (the proxy dedupes, so a fixed body would measure one
//! delivery), and its query string and body are rebuilt from that number alone. The load
//! generators (wrk's Lua, through the data file `load-gen wrk-data` writes, and `load-gen run`)
//! and the sink (which checks every delivery byte for byte) share this file, so a sink can tell a
//! faithful replay from an altered one without ever seeing what was sent.
//!
//! * **plain**: an official-account text message (~470 bytes, Chinese content, newlines between
//!   elements as WeChat writes them) with `MsgId = 24·10¹⁵ + n`. The query (`signature`,
//!   `timestamp`, `nonce`, `openid`) and the body up to `<MsgId>` depend on `n % VARIANTS` only, so
//!   wrk's Lua builds any callback by concatenation without computing a SHA-1.
//! * **event**: an official-account `CLICK` event (~400 bytes) with no `MsgId`, so the proxy keys
//!   it by a digest of its whole message: the number is its `EventKey`, and its sender is one of
//!   a million, scattered by the number ([`event_sender`]), as users are in real traffic. Runs of
//!   [`EVENT_RUN`] consecutive numbers share a variant, and variants go up with the number, so
//!   `CreateTime` grows with the number as a real account's events' do with the clock (the plain
//!   scheme's variant cycles with every callback instead). Lua builds one from three strings: the
//!   head up to the sender, then the variant's part up to the `EventKey`, then the suffix.
//! * **safe**: the same message for number `k`, encrypted with a 16-byte prefix derived from `k`,
//!   with `nonce = NONCE_BASE + k` and a `msg_signature` over its own `Encrypt`. Lua cannot encrypt,
//!   so the generator writes a pool of them beforehand and wrk cycles through it.
//!
//! Included with `#[path]` by each bench binary; not every binary uses every item.

use std::fmt::Write as _;

use wechat_fanout::wechat::envelope::encrypted_request_xml;
use wechat_fanout::wechat::{AesKey, msg_signature, signature};

/// The account id in the callback path `/wechat/{ACCOUNT}`.
pub(crate) const ACCOUNT: &str = "bench";
/// Bench-only credentials (the AES key is the public one of WeChat's documentation).
pub(crate) const TOKEN: &str = "fanoutLoadBench2024";
pub(crate) const APP_ID: &str = "wx5823bf96d3bd56c7";
pub(crate) const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
pub(crate) const CONTENT_TYPE: &str = "text/xml";

/// How many distinct (timestamp, nonce, openid) combinations plain callbacks cycle through. A
/// divisor of `MSG_ID_BASE`, so `MsgId % VARIANTS == n % VARIANTS` and Lua needs no 64-bit maths.
pub(crate) const VARIANTS: u64 = 1000;
/// WeChat's message ids are 17-digit numbers; ours are `MSG_ID_BASE + n` with `n < 10¹⁵`, always 17
/// digits. wrk's threads use `n` in `[10¹³, 10¹⁴)`, which Lua writes as `"240" .. tostring(n)`
/// (exact in a double, and in full with Lua's `%.14g`).
pub(crate) const MSG_ID_BASE: u64 = 24_000_000_000_000_000;
/// Largest sequence number (exclusive).
pub(crate) const MAX_N: u64 = 1_000_000_000_000_000;
/// Safe-mode nonces are `NONCE_BASE + k`: unique per pooled callback, and the sink's key to it.
pub(crate) const NONCE_BASE: u64 = 1_000_000_000;

const TO_USER: &str = "gh_3f5a8c2e9b1d";
const BASE_TIME: u64 = 1_714_037_059;
const CONTENTS: [&str; 4] = [
    "您好，我上周五在贵店下单的订单（尾号8372）还没有发货，请问大概什么时候能发出？我在上海浦东，谢谢！",
    "你好，请问会员积分可以兑换哪些礼品？我的积分显示有一千二百分，上次兑换的优惠券好像没有到账。",
    "麻烦帮我查一下退款进度，退货单号是尾号5160的那一笔，快递显示已经签收三天了，还没收到退款。",
    "请问周末门店几点开门？我想带孩子去体验新出的亲子活动，需要提前在公众号里预约吗？多谢回复！",
];
/// Everything after the message id, the same for every plain callback.
pub(crate) const BODY_SUFFIX: &str =
    "</MsgId>\n<MsgDataId><![CDATA[]]></MsgDataId>\n<Idx><![CDATA[]]></Idx>\n</xml>";

/// Consecutive event numbers that share a variant (so a `CreateTime`): about a second's events
/// at the bench's rates.
pub(crate) const EVENT_RUN: u64 = 10_000;
/// An event's body up to its sender's number, the same for every event.
pub(crate) const EVENT_HEAD: &str = "<xml>\n<ToUserName><![CDATA[gh_3f5a8c2e9b1d]]></ToUserName>\n\
     <FromUserName><![CDATA[oUpF8uMuAJO_M2pxb1Q9z";
/// Everything after an event's number, the same for every event.
pub(crate) const EVENT_SUFFIX: &str = "]]></EventKey>\n</xml>";
/// What comes just before an event's number.
const EVENT_KEY_OPEN: &str = "<EventKey><![CDATA[";
/// Senders of events: a prime, so that [`event_sender`] is a permutation of its residues.
const EVENT_SENDERS: u64 = 1_000_003;

/// The parts of a plain callback that depend on `n % VARIANTS`.
#[derive(Debug, Clone)]
pub(crate) struct Variant {
    /// The raw query string (without `?`).
    pub(crate) query: String,
    /// The body up to and including `<MsgId>`.
    pub(crate) prefix: String,
}

/// The variant `i` (`i < VARIANTS`).
pub(crate) fn variant(i: u64) -> Variant {
    let timestamp = (BASE_TIME + i).to_string();
    let nonce = (1_320_562_132 + i * 7_919).to_string();
    let openid = openid(i);
    let sig = signature(TOKEN, &timestamp, &nonce);
    let content = CONTENTS[(i % 4) as usize];
    Variant {
        query: format!("signature={sig}&timestamp={timestamp}&nonce={nonce}&openid={openid}"),
        prefix: format!(
            "<xml>\n<ToUserName><![CDATA[{TO_USER}]]></ToUserName>\n\
             <FromUserName><![CDATA[{openid}]]></FromUserName>\n\
             <CreateTime>{timestamp}</CreateTime>\n<MsgType><![CDATA[text]]></MsgType>\n\
             <Content><![CDATA[{content}]]></Content>\n<MsgId>"
        ),
    }
}

/// The event variant `i` (`i < VARIANTS`): the query of [`variant`]`(i)`, and in `prefix` the
/// part of an event's body between its sender's number and its own.
pub(crate) fn event_variant(i: u64) -> Variant {
    let plain = variant(i);
    let timestamp = (BASE_TIME + i).to_string();
    Variant {
        query: plain.query,
        prefix: format!(
            "]]></FromUserName>\n<CreateTime>{timestamp}</CreateTime>\n\
             <MsgType><![CDATA[event]]></MsgType>\n<Event><![CDATA[CLICK]]></Event>\n\
             {EVENT_KEY_OPEN}"
        ),
    }
}

/// The sender's number of event `n`, 7 digits: `(n mod p) * 7919 mod p` for the prime
/// [`EVENT_SENDERS`], which wrk's Lua computes exactly in doubles (both factors < 2^23).
pub(crate) fn event_sender(n: u64) -> String {
    format!("{:07}", (n % EVENT_SENDERS) * 7919 % EVENT_SENDERS)
}

/// Every event variant, indexed by [`event_variant_of`].
pub(crate) fn event_variants() -> Vec<Variant> {
    (0..VARIANTS).map(event_variant).collect()
}

/// The variant of event number `n`.
pub(crate) fn event_variant_of(n: u64) -> usize {
    ((n / EVENT_RUN) % VARIANTS) as usize
}

/// The event number `n`: (query, body).
pub(crate) fn event(variants: &[Variant], n: u64) -> (&str, String) {
    let v = &variants[event_variant_of(n)];
    let mut body = String::with_capacity(EVENT_HEAD.len() + 7 + v.prefix.len() + 17 + 32);
    body.push_str(EVENT_HEAD);
    body.push_str(&event_sender(n));
    body.push_str(&v.prefix);
    let _ = write!(body, "{}", MSG_ID_BASE + n);
    body.push_str(EVENT_SUFFIX);
    (&v.query, body)
}

/// Every variant, indexed by `n % VARIANTS`.
pub(crate) fn variants() -> Vec<Variant> {
    (0..VARIANTS).map(variant).collect()
}

fn openid(i: u64) -> String {
    format!("oUpF8uMuAJO_M2pxb1Q9zNj{:05}", i % 100_000)
}

/// The plain callback number `n`: (query, body).
pub(crate) fn plain(variants: &[Variant], n: u64) -> (&str, String) {
    let v = &variants[(n % VARIANTS) as usize];
    let mut body = String::with_capacity(v.prefix.len() + 17 + BODY_SUFFIX.len());
    body.push_str(&v.prefix);
    let _ = write!(body, "{}", MSG_ID_BASE + n);
    body.push_str(BODY_SUFFIX);
    (&v.query, body)
}

/// Builds safe-mode callbacks: the AES key is expanded once.
#[derive(Debug)]
pub(crate) struct Sealer {
    key: AesKey,
    variants: Vec<Variant>,
}

impl Sealer {
    pub(crate) fn new() -> Sealer {
        Sealer {
            key: AesKey::from_encoding_aes_key(AES_KEY).expect("the bench key is valid"),
            variants: variants(),
        }
    }

    /// The safe-mode callback number `k`: (query, body). Deterministic: the "random" prefix of the
    /// ciphertext is derived from `k`, so a sink can rebuild the exact bytes.
    pub(crate) fn safe(&self, k: u64) -> (String, String) {
        let (_, message) = plain(&self.variants, k);
        let i = k % VARIANTS;
        let timestamp = (BASE_TIME + i).to_string();
        let nonce = (NONCE_BASE + k).to_string();
        let mut random = [0u8; 16];
        random[..8].copy_from_slice(&mix(k).to_le_bytes());
        random[8..].copy_from_slice(&mix(!k).to_le_bytes());
        let encrypt = self.key.encrypt(message.as_bytes(), APP_ID, random);
        let sig = signature(TOKEN, &timestamp, &nonce);
        let msg_sig = msg_signature(TOKEN, &timestamp, &nonce, &encrypt);
        let query = format!(
            "signature={sig}&timestamp={timestamp}&nonce={nonce}&openid={}\
             &encrypt_type=aes&msg_signature={msg_sig}",
            openid(i)
        );
        (query, encrypted_request_xml(TO_USER, None, &encrypt))
    }
}

/// SplitMix64's finaliser: spreads a counter into random-looking bits.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The value of `name` in a raw query string, undecoded.
pub(crate) fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then_some(value)
    })
}

/// The digits between `<MsgId>` and `</MsgId>`, as a number.
pub(crate) fn msg_id(body: &[u8]) -> Option<u64> {
    number_after(body, b"<MsgId>")
}

/// The number of an event (its `EventKey`), [`MSG_ID_BASE`] added as to a message's id.
pub(crate) fn event_key(body: &[u8]) -> Option<u64> {
    number_after(body, EVENT_KEY_OPEN.as_bytes())
}

/// The digits right after the first `open` in `body`, as a number.
fn number_after(body: &[u8], open: &[u8]) -> Option<u64> {
    let start = body.windows(open.len()).position(|w| w == open)? + open.len();
    let digits = body[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&body[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wechat_fanout::wechat::{
        CallbackQuery, Credentials, Kind, Security, dedupe_key, open_callback,
    };

    fn credentials(security: Security) -> Credentials {
        Credentials {
            kind: Kind::OfficialAccount,
            token: TOKEN.into(),
            receive_id: APP_ID.into(),
            security,
        }
    }

    #[test]
    fn plain_callbacks_verify_and_have_distinct_dedupe_keys() {
        let variants = variants();
        let creds = credentials(Security::Plaintext);
        let mut keys = std::collections::HashSet::new();
        for n in [0, 1, 999, 1000, 123_456_789, MAX_N - 1] {
            let (query, body) = plain(&variants, n);
            let parsed = CallbackQuery::parse(query).expect("query parses");
            let opened = open_callback(&creds, &parsed, body.as_bytes()).expect("verifies");
            assert_eq!(msg_id(body.as_bytes()), Some(MSG_ID_BASE + n));
            assert!(keys.insert(dedupe_key(ACCOUNT, &opened.envelope, &[])));
        }
        let (_, body) = plain(&variants, 42);
        assert!((440..520).contains(&body.len()), "{}", body.len());
    }

    /// Events verify, each is a callback of its own, and their dedupe keys (led by the time)
    /// grow with the number from one run of [`EVENT_RUN`] to the next.
    #[test]
    fn events_verify_and_have_distinct_keys_that_grow_with_the_number() {
        let variants = event_variants();
        let creds = credentials(Security::Plaintext);
        let mut keys = Vec::new();
        for n in [
            0,
            1,
            EVENT_RUN - 1,
            EVENT_RUN,
            5 * EVENT_RUN,
            999 * EVENT_RUN + 3,
        ] {
            let (query, body) = event(&variants, n);
            let parsed = CallbackQuery::parse(query).expect("query parses");
            let opened = open_callback(&creds, &parsed, body.as_bytes()).expect("verifies");
            assert_eq!(opened.envelope.msg_id, None);
            assert_eq!(event_key(body.as_bytes()), Some(MSG_ID_BASE + n));
            keys.push(dedupe_key(ACCOUNT, &opened.envelope, body.as_bytes()).key);
        }
        assert!(keys.windows(2).all(|w| w[0] != w[1]), "{keys:?}");
        assert!(
            keys[2] < keys[3] && keys[3] < keys[4] && keys[4] < keys[5],
            "{keys:?}"
        );
    }

    #[test]
    fn safe_callbacks_verify_and_are_reproducible() {
        let sealer = Sealer::new();
        let key = AesKey::from_encoding_aes_key(AES_KEY).expect("valid");
        let creds = credentials(Security::Safe(key));
        for k in [0, 7, 99_999] {
            let (query, body) = sealer.safe(k);
            assert_eq!(sealer.safe(k), (query.clone(), body.clone()));
            let parsed = CallbackQuery::parse(&query).expect("query parses");
            let opened = open_callback(&creds, &parsed, body.as_bytes()).expect("verifies");
            assert_eq!(
                msg_id(opened.message(body.as_bytes())),
                Some(MSG_ID_BASE + k)
            );
            let nonce = query_param(&query, "nonce").expect("nonce");
            assert_eq!(nonce.parse::<u64>().ok(), Some(NONCE_BASE + k));
        }
    }
}
