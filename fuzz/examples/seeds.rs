//! Writes the seed inputs of the fuzz targets into `fuzz/seeds/<target>/`: realistic callbacks,
//! built with the crate's own sealing code so that their signatures and ciphertexts are valid.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds` (stable is fine). Ciphertexts use
//! fresh random bytes, so a rerun changes the encrypted seeds; commit them once, not every run.

use std::fs;
use std::path::{Path, PathBuf};

use wechat_fanout::wechat::envelope::{Sealed, encrypted_request_json, encrypted_request_xml};
use wechat_fanout::wechat::{
    AesKey, Credentials, Kind, SealParams, Security, msg_signature, seal_callback, signature,
};

/// The same key, token and receive id as the fuzz targets, so sealed seeds open there.
const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const TOKEN: &str = "QDG6eK";
const RECEIVE_ID: &str = "wx5823bf96d3bd56c7";

const OA_TEXT: &str = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[oUpF8uMuAJO_M2pxb1Q9zNjWeS6o]]></FromUserName><CreateTime>1714037059</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好]]></Content><MsgId>23456789012345678</MsgId></xml>";
const OA_SUBSCRIBE: &str = "<xml>\n  <ToUserName><![CDATA[gh_1]]></ToUserName>\n  <FromUserName><![CDATA[o1]]></FromUserName>\n  <CreateTime>1348831860</CreateTime>\n  <MsgType><![CDATA[event]]></MsgType>\n  <Event><![CDATA[subscribe]]></Event>\n  <EventKey><![CDATA[qrscene_123123]]></EventKey>\n</xml>";
const OA_SCANCODE: &str = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName><CreateTime>1408090502</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[scancode_push]]></Event><EventKey><![CDATA[6]]></EventKey><ScanCodeInfo><ScanType><![CDATA[qrcode]]></ScanType><ScanResult><![CDATA[1]]></ScanResult></ScanCodeInfo></xml>";
const OA_JOBFINISH: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><xml><ToUserName>gh_1</ToUserName><FromUserName>o1</FromUserName><CreateTime>1394524295</CreateTime><MsgType>event</MsgType><Event>MASSSENDJOBFINISH</Event><MsgID>1988</MsgID><Status>send success</Status><!-- a comment --></xml>";
const ENTITIES: &str = "\u{FEFF}<xml><ToUserName>a&amp;b&lt;&gt;&quot;&apos;&#x4E2D;&#25991;</ToUserName><MsgType>te<![CDATA[x]]]]><![CDATA[>t]]></MsgType><Event/></xml>";
const WECOM_TEXT: &str = "<xml><ToUserName><![CDATA[ww1]]></ToUserName><FromUserName><![CDATA[zhangsan]]></FromUserName><CreateTime>1348831860</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[this is a test]]></Content><MsgId>1234567890123456</MsgId><AgentID>1000002</AgentID></xml>";
const MP_JSON: &str = r#"{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY","CreateTime":1714037059,"MsgType":"event","Event":"debug_demo","debug_str":"hello world","List":[{"a":1.5e3}],"flag":true,"none":null}"#;
const MP_JSON_TEXT: &str = r#"{"ToUserName":"gh_1","FromUserName":"o1","CreateTime":1714037059,"MsgType":"text","Content":"\u4f60\u597d \"q\"","MsgId":23456789012345678}"#;
const WECOM_JSON: &str =
    r#"{"tousername":"ww1","encrypt":"RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo","agentid":1000002}"#;

fn key() -> AesKey {
    AesKey::from_encoding_aes_key(KEY).expect("test key")
}

fn credentials(kind: Kind, mode: usize) -> Credentials {
    Credentials {
        kind,
        token: TOKEN.to_owned(),
        receive_id: RECEIVE_ID.to_owned(),
        security: match mode {
            0 => Security::Plaintext,
            1 => Security::Compatible(key()),
            _ => Security::Safe(key()),
        },
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).expect("write seed");
}

/// `mode | query | NUL | body`, the layout of the `callback` target.
fn request(mode: u8, query: &str, body: &str) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend_from_slice(query.as_bytes());
    out.push(0);
    out.extend_from_slice(body.as_bytes());
    out
}

/// random(16) | len(4, BE) | message | receive id | PKCS#7 to 32: the decrypted form.
fn plaintext(message: &[u8], receive_id: &str) -> Vec<u8> {
    let mut out = vec![0x42; 16];
    out.extend_from_slice(&u32::try_from(message.len()).expect("short").to_be_bytes());
    out.extend_from_slice(message);
    out.extend_from_slice(receive_id.as_bytes());
    let pad = 32 - out.len() % 32;
    out.resize(out.len() + pad, u8::try_from(pad).expect("pad"));
    out
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let dirs = ["envelope", "decrypt", "callback", "answers"].map(|t| root.join(t));
    for dir in &dirs {
        fs::create_dir_all(dir).expect("seed dir");
    }
    let [envelope, decrypt, callback, answers] = &dirs;
    let key = key();

    // envelope: bodies as WeChat sends them, clear and encrypted, XML and JSON.
    let encrypt = key.encrypt(OA_TEXT.as_bytes(), RECEIVE_ID);
    let reply_signature = msg_signature(TOKEN, "1409659813", "1372623149", &encrypt);
    let reply = Sealed {
        encrypt: &encrypt,
        msg_signature: reply_signature.as_str(),
        timestamp: "1409659813",
        nonce: "1372623149",
    };
    for (name, body) in [
        ("oa_text.xml", OA_TEXT.to_owned()),
        ("oa_subscribe.xml", OA_SUBSCRIBE.to_owned()),
        ("oa_scancode_nested.xml", OA_SCANCODE.to_owned()),
        ("oa_jobfinish_decl_comment.xml", OA_JOBFINISH.to_owned()),
        ("bom_entities_cdata.xml", ENTITIES.to_owned()),
        ("wecom_text.xml", WECOM_TEXT.to_owned()),
        ("mp_event.json", MP_JSON.to_owned()),
        ("mp_text.json", MP_JSON_TEXT.to_owned()),
        ("wecom_lowercase.json", WECOM_JSON.to_owned()),
        (
            "safe_request.xml",
            encrypted_request_xml("gh_1", None, &encrypt),
        ),
        (
            "wecom_request.xml",
            encrypted_request_xml("ww1", Some("1000002"), &encrypt),
        ),
        (
            "mp_safe_request.json",
            encrypted_request_json("gh_1", &encrypt),
        ),
        ("encrypted_reply.xml", reply.reply_xml()),
        ("encrypted_reply.json", reply.reply_json()),
    ] {
        write(envelope, name, body.as_bytes());
    }

    // decrypt: mode byte (low two bits: text, base64 of bytes, plaintext, round trip; top bit:
    // empty receive id), then the input.
    let with_mode = |mode: u8, bytes: &[u8]| [&[mode][..], bytes].concat();
    let aligned = b"hello world!"; // 20 + 12 + 0 = 32: a full pad block of 32 for receive id "".
    write(
        decrypt,
        "text_ciphertext",
        &with_mode(0, encrypt.as_bytes()),
    );
    let bot = key.encrypt(aligned, "");
    write(
        decrypt,
        "text_ciphertext_bot_full_pad",
        &with_mode(0x80, bot.as_bytes()),
    );
    let raw = base64_decode(&encrypt);
    write(decrypt, "bytes_ciphertext", &with_mode(1, &raw));
    write(
        decrypt,
        "plaintext",
        &with_mode(2, &plaintext(OA_TEXT.as_bytes(), RECEIVE_ID)),
    );
    write(
        decrypt,
        "plaintext_bot_full_pad",
        &with_mode(0x82, &plaintext(aligned, "")),
    );
    write(decrypt, "round_trip", &with_mode(3, MP_JSON.as_bytes()));

    // callback: mode byte (0 as given, 1 harness signs, 2 harness seals the body), query, NUL,
    // body. Mode 0 seeds are complete valid requests for the target's accounts.
    for (kind, kind_name) in [
        (Kind::OfficialAccount, "oa"),
        (Kind::MiniProgram, "mp"),
        (Kind::WeCom, "wecom"),
    ] {
        for (mode, mode_name) in [(0, "plain"), (1, "compatible"), (2, "safe")] {
            if kind == Kind::WeCom && mode == 0 {
                continue;
            }
            let message = match kind {
                Kind::MiniProgram if mode == 2 => MP_JSON,
                Kind::WeCom => WECOM_TEXT,
                _ => OA_TEXT,
            };
            let params = SealParams {
                timestamp: "1409659813",
                nonce: "1372623149",
                random: rand::random(),
                openid: (kind != Kind::WeCom).then_some("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
                to_user_name: "gh_1",
                agent_id: (kind == Kind::WeCom).then_some("1000002"),
            };
            let sealed = seal_callback(&credentials(kind, mode), message, params);
            let name = format!("{kind_name}_{mode_name}");
            write(callback, &name, &request(0, &sealed.query, &sealed.body));
            write(
                callback,
                &format!("{name}_resigned"),
                &request(1, &sealed.query, &sealed.body),
            );
        }
    }
    let echostr = "4375120948345356249";
    let query = format!(
        "signature={}&timestamp=1&nonce=2&echostr={echostr}",
        signature(TOKEN, "1", "2")
    );
    write(callback, "oa_handshake", &request(0, &query, ""));
    let wecom_echostr = key.encrypt(b"1616140317555161061", RECEIVE_ID);
    let query = format!(
        "msg_signature={}&timestamp=1&nonce=2&echostr={}",
        msg_signature(TOKEN, "1", "2", &wecom_echostr),
        wecom_echostr
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D")
    );
    write(callback, "wecom_handshake", &request(0, &query, ""));
    write(
        callback,
        "handshake_resigned",
        &request(1, "timestamp=1&nonce=2&echostr=a+b%2F", ""),
    );
    for (name, body) in [
        ("sealed_oa_text", OA_TEXT),
        ("sealed_scancode", OA_SCANCODE),
        ("sealed_mp_json", MP_JSON),
        ("sealed_entities", ENTITIES),
    ] {
        write(
            callback,
            name,
            &request(2, "timestamp=1409659813&nonce=1372623149", body),
        );
    }

    // answers: what targets answer on a pipelined connection, several at once; the first byte
    // and the u16s after it say where the bytes are cut (`answers` target's layout).
    for (name, cuts, stream) in [
        ("success_twice", &[][..], "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsuccessHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsuccess"),
        (
            "passive_reply_chunked",
            &[20, 60],
            "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nTransfer-Encoding: chunked\r\n\r\n\
             5;ext=1\r\n<xml>\r\n6\r\n</xml>\r\n0\r\nX-Trailer: t\r\n\r\n",
        ),
        (
            "continue_then_busy",
            &[30],
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nRetry-After: 7\r\n\
             Content-Length: 0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        ),
        (
            "close_delimited",
            &[5],
            "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end",
        ),
    ] {
        let mut input = vec![u8::try_from(cuts.len()).expect("few cuts")];
        for cut in cuts {
            input.extend_from_slice(&u16::to_le_bytes(*cut));
        }
        input.extend_from_slice(stream.as_bytes());
        write(answers, name, &input);
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}
