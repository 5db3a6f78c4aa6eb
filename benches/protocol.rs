//! Throughput of the pure protocol core, one callback at a time, on a typical 477-byte text
//! message with Chinese content.
//!
//! The issue's figures are `callback/plaintext` (a: verify `signature` + parse) and
//! `callback/safe` (b: verify `msg_signature` + decrypt + parse); the target is ≥ 200,000
//! safe-mode callbacks per second per core, i.e. `callback/safe` ≤ 5 µs. `ingress/*` add what the
//! server does around that per POST (parse the raw query, compute the dedupe key). The other
//! groups time the pieces, so a regression can be pinned to one of them. Every benchmark counts
//! one element per iteration, so criterion reports callbacks (or operations) per second.
//!
//! Run with `cargo bench --bench protocol`; the short warm-up and measurement times below keep a
//! full run near a minute (override on the command line with `-- --measurement-time N`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wechat_fanout::wechat::{
    AesKey, CallbackQuery, Credentials, Envelope, Kind, SealParams, SealedRequest, Security,
    VerifyError, dedupe_key, msg_signature, open_callback, seal_callback, signature,
};

/// A typical text message as an official account receives it (477 bytes), Chinese `Content`,
/// newlines between elements as WeChat writes them.
const TEXT_XML: &str = "<xml>\n<ToUserName><![CDATA[gh_3f5a8c2e9b1d]]></ToUserName>\n\
<FromUserName><![CDATA[oUpF8uMuAJO_M2pxb1Q9zNjWeS6o]]></FromUserName>\n\
<CreateTime>1714037059</CreateTime>\n<MsgType><![CDATA[text]]></MsgType>\n\
<Content><![CDATA[您好，我上周五在贵店下单的订单（尾号8372）还没有发货，请问大概什么时候能发出？我在上海浦东，谢谢！]]></Content>\n\
<MsgId>24572838563291837</MsgId>\n<MsgDataId><![CDATA[]]></MsgDataId>\n<Idx><![CDATA[]]></Idx>\n</xml>";

/// The same message as a mini program in JSON data format receives it.
const TEXT_JSON: &str = r#"{"ToUserName":"gh_3f5a8c2e9b1d","FromUserName":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o","CreateTime":1714037059,"MsgType":"text","Content":"您好，我上周五在贵店下单的订单（尾号8372）还没有发货，请问大概什么时候能发出？我在上海浦东，谢谢！","MsgId":24572838563291837}"#;

const TOKEN: &str = "pamtest2024Token";
const APP_ID: &str = "wx5823bf96d3bd56c7";
const ENCODING_AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const TIMESTAMP: &str = "1714037059";
const NONCE: &str = "1320562132";
const OPENID: &str = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";

fn credentials(security: Security) -> Credentials {
    Credentials {
        kind: Kind::OfficialAccount,
        token: TOKEN.into(),
        receive_id: APP_ID.into(),
        security,
    }
}

fn key() -> AesKey {
    AesKey::from_encoding_aes_key(ENCODING_AES_KEY).expect("the bench key is valid")
}

fn params() -> SealParams<'static> {
    SealParams {
        timestamp: TIMESTAMP,
        nonce: NONCE,
        random: rand::random(),
        openid: Some(OPENID),
        to_user_name: "gh_3f5a8c2e9b1d",
        agent_id: None,
    }
}

/// The issue's two figures: (a) `callback/plaintext`, verify `signature` + parse the body;
/// (b) `callback/safe`, verify `msg_signature` + decrypt + parse the decrypted message. Both are
/// one `open_callback` on a query parsed beforehand.
fn callback(c: &mut Criterion) {
    let mut group = c.benchmark_group("callback");
    group.throughput(Throughput::Elements(1));
    for (name, creds, sealed) in plaintext_and_safe() {
        let query = CallbackQuery::parse(&sealed.query).expect("sealed query parses");
        group.bench_function(name, |b| {
            b.iter(|| open_callback(&creds, black_box(&query), black_box(sealed.body.as_bytes())))
        });
    }
    group.finish();
}

/// Everything the ingress does with one POST besides HTTP and the store: parse the raw query,
/// verify and open the body, compute the dedupe key.
fn ingress(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingress");
    group.throughput(Throughput::Elements(1));
    for (name, creds, sealed) in plaintext_and_safe() {
        group.bench_function(name, |b| {
            b.iter(|| {
                let query = CallbackQuery::parse(black_box(&sealed.query))?;
                let body = black_box(sealed.body.as_bytes());
                let opened = open_callback(&creds, &query, body)?;
                let key = dedupe_key("main", &opened.envelope, opened.message(body));
                Ok::<_, VerifyError>((opened, key))
            })
        });
    }
    group.finish();
}

/// The two cases of `callback` and `ingress`: a plaintext and a safe-mode account, each with the
/// text message sealed for it.
fn plaintext_and_safe() -> [(&'static str, Credentials, SealedRequest); 2] {
    [
        ("plaintext", Security::Plaintext),
        ("safe", Security::Safe(key())),
    ]
    .map(|(name, security)| {
        let creds = credentials(security);
        let sealed = sealed(&creds);
        (name, creds, sealed)
    })
}

/// The text message sealed for `creds`, checked to open, so no benchmark times an error path.
fn sealed(creds: &Credentials) -> SealedRequest {
    let sealed = seal_callback(creds, TEXT_XML, params());
    let query = CallbackQuery::parse(&sealed.query).expect("sealed query parses");
    let opened = open_callback(creds, &query, sealed.body.as_bytes()).expect("sealed body opens");
    assert_eq!(opened.message(sealed.body.as_bytes()), TEXT_XML.as_bytes());
    assert_eq!(opened.envelope.msg_id.as_deref(), Some("24572838563291837"));
    sealed
}

fn signatures(c: &mut Criterion) {
    let encrypt = key().encrypt(TEXT_XML.as_bytes(), APP_ID, rand::random());
    let mut group = c.benchmark_group("signature");
    group.throughput(Throughput::Elements(1));
    group.bench_function("signature", |b| {
        b.iter(|| signature(black_box(TOKEN), black_box(TIMESTAMP), black_box(NONCE)))
    });
    group.bench_function("msg_signature", |b| {
        b.iter(|| {
            msg_signature(
                black_box(TOKEN),
                black_box(TIMESTAMP),
                black_box(NONCE),
                black_box(&encrypt),
            )
        })
    });
    group.finish();
}

fn crypto(c: &mut Criterion) {
    let key = key();
    let encrypt = key.encrypt(TEXT_XML.as_bytes(), APP_ID, rand::random());
    let mut group = c.benchmark_group("crypto");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decrypt", |b| {
        b.iter(|| key.decrypt(black_box(&encrypt), black_box(APP_ID)))
    });
    // `encrypt` draws 16 random bytes per call, as the real one does; that is part of its cost.
    group.bench_function("encrypt", |b| {
        b.iter(|| {
            key.encrypt(
                black_box(TEXT_XML.as_bytes()),
                black_box(APP_ID),
                rand::random(),
            )
        })
    });
    group.finish();
}

fn envelope(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_xml", |b| {
        b.iter(|| Envelope::parse(black_box(TEXT_XML.as_bytes())))
    });
    group.bench_function("parse_json", |b| {
        b.iter(|| Envelope::parse(black_box(TEXT_JSON.as_bytes())))
    });
    // The outer body of safe mode: `ToUserName` and the 728-character `Encrypt` of the message.
    let safe = sealed(&credentials(Security::Safe(key())));
    group.bench_function("parse_xml_encrypted", |b| {
        b.iter(|| Envelope::parse(black_box(safe.body.as_bytes())))
    });
    group.finish();
}

/// The two small steps of the ingress path around `open_callback`.
fn pieces(c: &mut Criterion) {
    let safe = sealed(&credentials(Security::Safe(key())));
    let envelope = Envelope::parse(TEXT_XML.as_bytes()).expect("the bench message parses");
    let mut group = c.benchmark_group("pieces");
    group.throughput(Throughput::Elements(1));
    group.bench_function("query_parse", |b| {
        b.iter(|| CallbackQuery::parse(black_box(&safe.query)))
    });
    group.bench_function("dedupe_key", |b| {
        b.iter(|| dedupe_key("main", black_box(&envelope), black_box(TEXT_XML.as_bytes())))
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = callback, ingress, signatures, crypto, envelope, pieces
}
criterion_main!(benches);
