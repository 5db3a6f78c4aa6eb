//! A simulated WeChat: one account's credentials, its `[[accounts]]` TOML, and callbacks sealed
//! with the crate's own `seal_callback` (signed and, in compatible/safe mode, encrypted exactly as
//! WeChat sends them). Messages get unique ids so that no two are resends of each other.

use std::sync::atomic::{AtomicU64, Ordering};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use wechat_fanout::config::Mode;
use wechat_fanout::wechat::{
    AesKey, Credentials, Kind, SealParams, SealedRequest, Security, msg_signature, seal_callback,
    signature,
};

/// The public test values of WeChat's own documentation.
pub(crate) const TOKEN: &str = "QDG6eK";
pub(crate) const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
pub(crate) const RECEIVE_ID: &str = "wx5823bf96d3bd56c7";
/// The WeCom app's `AgentID` in simulated WeCom callbacks.
pub(crate) const AGENT_ID: &str = "1000002";

/// A number never handed out before in this test binary: message ids, nonces, senders.
pub(crate) fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1_000_000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// WeChat, as seen by one account.
#[derive(Debug, Clone)]
pub(crate) struct Wx {
    pub(crate) kind: Kind,
    pub(crate) mode: Mode,
    pub(crate) credentials: Credentials,
}

impl Wx {
    pub(crate) fn new(kind: Kind, mode: Mode) -> Wx {
        let key = || AesKey::from_encoding_aes_key(AES_KEY).expect("the test key is valid");
        let security = match mode {
            Mode::Plaintext => Security::Plaintext,
            Mode::Compatible => Security::Compatible(key()),
            Mode::Safe => Security::Safe(key()),
        };
        Wx {
            kind,
            mode,
            credentials: Credentials {
                kind,
                token: TOKEN.to_owned(),
                receive_id: RECEIVE_ID.to_owned(),
                security,
            },
        }
    }

    /// The `[[accounts]]` table for this account; `extra` adds lines to it (`primary = …`).
    /// Its targets follow as [`Wx::target`] tables.
    pub(crate) fn account(&self, id: &str, extra: &str) -> String {
        let kind = match self.kind {
            Kind::OfficialAccount => "official_account",
            Kind::MiniProgram => "mini_program",
            Kind::WeCom => "wecom",
            Kind::OpenPlatform => "open_platform",
        };
        let mode = match self.mode {
            Mode::Plaintext => "plaintext",
            Mode::Compatible => "compatible",
            Mode::Safe => "safe",
        };
        format!(
            "\n[[accounts]]\nid = \"{id}\"\nkind = \"{kind}\"\ntoken = \"{TOKEN}\"\n\
             app_id = \"{RECEIVE_ID}\"\nencoding_aes_key = \"{AES_KEY}\"\nmode = \"{mode}\"\n{extra}\n"
        )
    }

    /// A `[[accounts.targets]]` table of the account above it.
    pub(crate) fn target(name: &str, url: &str, extra: &str) -> String {
        format!("\n[[accounts.targets]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n")
    }

    /// `message` as WeChat would POST it to this account now.
    pub(crate) fn seal(&self, message: &str) -> SealedRequest {
        let timestamp = now_secs().to_string();
        let nonce = unique().to_string();
        let wecom = self.kind == Kind::WeCom;
        seal_callback(
            &self.credentials,
            message,
            SealParams {
                timestamp: &timestamp,
                nonce: &nonce,
                random: rand::random(),
                openid: (!wecom).then_some("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
                to_user_name: if wecom { RECEIVE_ID } else { "gh_a6a3d5e8ae7e" },
                agent_id: wecom.then_some(AGENT_ID),
            },
        )
    }

    /// The query of a GET URL-verification handshake carrying `echo`: plain and signed with
    /// `signature` for official accounts and mini programs, encrypted and signed with
    /// `msg_signature` for WeCom. `good = false` spoils the signature.
    pub(crate) fn handshake(&self, echo: &str, good: bool) -> String {
        let timestamp = now_secs().to_string();
        let nonce = unique().to_string();
        let spoil = |s: &str| {
            if good {
                s.to_owned()
            } else {
                // Same length, last hex digit changed.
                let mut s = s.to_owned();
                let last = s.pop().expect("non-empty signature");
                s.push(if last == '0' { '1' } else { '0' });
                s
            }
        };
        match self.kind {
            Kind::OfficialAccount | Kind::MiniProgram | Kind::OpenPlatform => {
                let sig = signature(TOKEN, &timestamp, &nonce);
                format!(
                    "signature={}&timestamp={timestamp}&nonce={nonce}&echostr={echo}",
                    spoil(sig.as_str())
                )
            }
            Kind::WeCom => {
                let key = AesKey::from_encoding_aes_key(AES_KEY).expect("the test key is valid");
                let echostr = key.encrypt(echo.as_bytes(), RECEIVE_ID, rand::random());
                let sig = msg_signature(TOKEN, &timestamp, &nonce, &echostr);
                format!(
                    "msg_signature={}&timestamp={timestamp}&nonce={nonce}&echostr={}",
                    spoil(sig.as_str()),
                    utf8_percent_encode(&echostr, NON_ALPHANUMERIC)
                )
            }
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A text message with a fresh `MsgId`, in XML (official accounts, mini programs, WeCom).
pub(crate) fn text_xml(content: &str) -> String {
    let id = unique();
    format!(
        "<xml><ToUserName><![CDATA[gh_a6a3d5e8ae7e]]></ToUserName>\
         <FromUserName><![CDATA[oUpF8uMuAJO_M2pxb1Q9zNjWeS6o]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[{content}]]></Content><MsgId>{id}</MsgId></xml>",
        now_secs()
    )
}

/// A text message from `user` with a fresh `MsgId`, in XML.
pub(crate) fn text_from(user: &str, content: &str) -> String {
    text_xml(content).replace("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", user)
}

/// A mini program's text message in JSON format, with a fresh `MsgId`.
pub(crate) fn text_json(content: &str) -> String {
    serde_json::json!({
        "ToUserName": "gh_a6a3d5e8ae7e",
        "FromUserName": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
        "CreateTime": now_secs(),
        "MsgType": "text",
        "Content": content,
        "MsgId": unique(),
    })
    .to_string()
}

/// An event (`subscribe`, `CLICK`, …) from a sender never seen before, so never a resend.
pub(crate) fn event_xml(event: &str, event_key: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_a6a3d5e8ae7e]]></ToUserName>\
         <FromUserName><![CDATA[o{}]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[{event}]]></Event><EventKey><![CDATA[{event_key}]]></EventKey></xml>",
        unique(),
        now_secs()
    )
}
