//! `simulate`: play WeChat against a running proxy (or any callback endpoint), without WeChat.
//!
//! Builds one message the way WeChat writes it for the account's kind (XML with CDATA, or a mini
//! program's JSON), signs and encrypts it with the account's own credentials through
//! [`seal_callback`], POSTs it, and reads the answer the way WeChat would: an encrypted passive
//! reply must carry a matching `MsgSignature` and decrypt for the account's receive id.
//! `--verify-url` plays the GET handshake instead (plain `echostr` for official accounts and mini
//! programs, encrypted and signed for WeCom).
//!
//! Tokens and keys are used, never printed. Signature values are left out of the printed URL too:
//! a `signature` over a short token can be brute-forced offline. This module is a client only: it
//! uses the config and the protocol functions, nothing of the server.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use url::Url;

pub mod pay;

use crate::cmd::admin_client::reachable;
use crate::config::{AccountKind, Config};
use crate::wechat::{
    Credentials, Fresh, Kind, SealParams, encrypted_reply, open_signed_reply,
    push_cdata_element as push_cdata, seal_callback, seal_handshake,
};

const DEFAULT_TEXT: &str = "hello from wechat-fanout simulate";
/// Shaped like a real openid (28 characters, leading `o`), and plainly fake.
const FAKE_OPENID: &str = "oSIMULATED-wechat-fanout-000";
/// WeCom's `FromUserName` is the member's UserID, not an openid.
const FAKE_WECOM_USER: &str = "SimulatedUser";
/// Official accounts and mini programs address `ToUserName` to their original id (`gh_` + 12
/// hex), which the config does not hold; the proxy does not check it.
const FAKE_ORIGINAL_ID: &str = "gh_000000000000";
/// WeChat gives up after 5 s (WeCom's handshake after 1 s); wait longer so a slow answer is seen.
const TIMEOUT: Duration = Duration::from_secs(10);
const POST_PATIENCE: Duration = Duration::from_secs(5);
const WECOM_HANDSHAKE_PATIENCE: Duration = Duration::from_secs(1);

/// Send one simulated WeChat callback (or the URL handshake) and check the answer.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The account to play WeChat for: its `id` in the config.
    #[arg(long, value_name = "ID")]
    pub account: String,
    /// Where to send it [default: http://{server.listen}/wechat/{ID}, loopback for 0.0.0.0/[::]].
    #[arg(long, value_name = "URL")]
    pub url: Option<Url>,
    /// A text message [default: "hello from wechat-fanout simulate", unless --event is given].
    #[arg(long, value_name = "TEXT", conflicts_with = "event")]
    pub text: Option<String>,
    /// Send an event instead: subscribe, unsubscribe, SCAN, CLICK, VIEW, LOCATION, …
    #[arg(long, value_name = "NAME")]
    pub event: Option<String>,
    /// The event's EventKey (menu key, qrscene_…, URL).
    #[arg(long, value_name = "KEY", requires = "event")]
    pub event_key: Option<String>,
    /// FromUserName [default: a fixed fake openid; a fake UserID for WeCom].
    #[arg(long, value_name = "OPENID")]
    pub from: Option<String>,
    /// Body format; json only for mini programs whose data format is JSON.
    #[arg(long, value_enum, default_value_t = BodyFormat::Xml)]
    pub format: BodyFormat,
    /// MsgId of the text message [default: random, so every run is a new callback].
    #[arg(long, value_name = "N", conflicts_with = "event")]
    pub msg_id: Option<u64>,
    /// AgentID of the WeCom app (WeCom only).
    #[arg(long, value_name = "ID", default_value_t = 1000002)]
    pub agent_id: u64,
    /// Do the GET URL-verification handshake instead of a POST.
    #[arg(long, conflicts_with_all = ["text", "event", "msg_id"])]
    pub verify_url: bool,
    /// Open platform: the authorized account (its app id). Messages go to the message URL
    /// `/wechat/{ID}/{APPID}`; an authorization event names it as `AuthorizerAppid`.
    #[arg(long, value_name = "APPID")]
    pub authorizer: Option<String>,
    /// Open platform: send an authorization event to `/wechat/{ID}` instead of a message:
    /// component_verify_ticket, authorized, updateauthorized, unauthorized.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["text", "event", "msg_id", "verify_url"])]
    pub info_type: Option<String>,
    /// WeChat Pay: the test private key (PEM) to sign the notification with; the account must
    /// list its public key (or a certificate of it).
    #[arg(long, value_name = "PEM")]
    pub wechatpay_private_key: Option<std::path::PathBuf>,
    /// WeChat Pay: `Wechatpay-Serial` [default: the account's first public key id, else its
    /// first platform certificate's serial].
    #[arg(long, value_name = "SERIAL", requires = "wechatpay_private_key")]
    pub wechatpay_serial: Option<String>,
    /// WeChat Pay: the notification's event_type [default: TRANSACTION.SUCCESS].
    #[arg(long, value_name = "TYPE", requires = "wechatpay_private_key")]
    pub event_type: Option<String>,
    /// WeChat Pay: the order number in the resource [default: random, SIM…].
    #[arg(long, value_name = "NUMBER", requires = "wechatpay_private_key")]
    pub out_trade_no: Option<String>,
}

/// The data format of a simulated body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BodyFormat {
    Xml,
    Json,
}

/// Sends what `args` describe and reports to `out`. `Ok(true)` iff WeChat would accept the answer:
/// 200, and an encrypted reply verifies and decrypts (for `--verify-url`: 200 with exactly the
/// expected `echostr` plaintext). Network failures are errors.
pub async fn run(
    config: &Config,
    args: &SimulateArgs,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let Some((index, account)) =
        (config.accounts.iter().enumerate()).find(|(_, a)| a.id == args.account)
    else {
        let ids: Vec<&str> = config.accounts.iter().map(|a| a.id.as_str()).collect();
        bail!(
            "no account {:?} in the config; configured: {}",
            args.account,
            ids.join(", ")
        );
    };
    if account.kind == AccountKind::WechatPay {
        return pay::run(config, account, index, args, out).await;
    }
    if args.wechatpay_private_key.is_some() {
        bail!(
            "--wechatpay-private-key is for wechat_pay accounts; account {:?} is {}",
            account.id,
            kind_name(account.kind)
        );
    }
    let credentials = crate::routing::credentials(account, &format!("accounts[{index}]"))?;
    let (kind, wecom) = (kind_name(account.kind), credentials.kind == Kind::WeCom);
    if args.format == BodyFormat::Json && account.kind != AccountKind::MiniProgram {
        bail!(
            "--format json: only mini programs receive JSON; account {:?} is {kind}",
            account.id
        );
    }
    let open_platform = credentials.kind == Kind::OpenPlatform;
    if !open_platform && (args.authorizer.is_some() || args.info_type.is_some()) {
        bail!(
            "--authorizer and --info-type are for open_platform accounts; account {:?} is {kind}",
            account.id
        );
    }
    if let Some(appid) = &args.authorizer
        && !crate::wechat::is_app_id(appid)
    {
        bail!("--authorizer {appid:?}: not an app id (letters, digits, '-', '_')");
    }
    let path = match (&args.authorizer, &args.info_type) {
        // The message URL: what the console's `$APPID$` becomes.
        (Some(appid), None) => format!("{}/{appid}", account.id),
        _ => account.id.clone(),
    };
    if open_platform && !args.verify_url && path == account.id && args.info_type.is_none() {
        bail!(
            "account {:?} is an open platform: give --authorizer APPID for a message to an \
             authorized account, or --info-type for an authorization event",
            account.id
        );
    }
    let url = match &args.url {
        Some(url) => url.clone(),
        None => default_url(config.server.listen, &path)?,
    };
    let mode = credentials.security.name();
    writeln!(out, "account   {} ({kind}, {mode} mode)", account.id)?;
    if args.verify_url {
        return handshake(&credentials, &url, out).await;
    }

    let now = crate::clock::now_secs();
    if let Some(info_type) = &args.info_type {
        let text = authorization_xml(
            &credentials.receive_id,
            now,
            info_type,
            args.authorizer.as_deref(),
        )?;
        let fresh = Fresh::new(now, rand::random(), rand::random());
        let params = SealParams {
            timestamp: &fresh.timestamp,
            nonce: &fresh.nonce,
            random: fresh.random,
            openid: None,
            to_user_name: &credentials.receive_id,
            agent_id: None,
        };
        let mut sealed = seal_callback(&credentials, &text, params);
        // Authorization events carry the component's `AppId` beside `Encrypt`.
        sealed.body = sealed.body.replace("ToUserName>", "AppId>");
        let target = with_query(&url, &sealed.query)?;
        writeln!(
            out,
            "message   authorization event {info_type}\n{text}\nPOST      {}",
            shown(&target)
        )?;
        return post_sealed(&credentials, &url, target, sealed, out).await;
    }
    let action = match &args.event {
        Some(name) => Action::Event {
            name,
            key: args.event_key.as_deref(),
        },
        None => Action::Text {
            content: args.text.as_deref().unwrap_or(DEFAULT_TEXT),
            msg_id: args.msg_id.unwrap_or_else(random_msg_id),
        },
    };
    let default_from = if wecom { FAKE_WECOM_USER } else { FAKE_OPENID };
    let agent_id = wecom.then(|| args.agent_id.to_string());
    // OA/MP messages go to the original id; WeCom's to the corp id (the receive id).
    let to = if wecom {
        &credentials.receive_id
    } else {
        FAKE_ORIGINAL_ID
    };
    let message = Message {
        to,
        from: args.from.as_deref().unwrap_or(default_from),
        create_time: now,
        action,
        agent_id: agent_id.as_deref(),
    };
    let text = match args.format {
        BodyFormat::Xml => message.xml(),
        BodyFormat::Json => message.json(),
    };
    let fresh = Fresh::new(now, rand::random(), rand::random());
    let params = SealParams {
        timestamp: &fresh.timestamp,
        nonce: &fresh.nonce,
        random: fresh.random,
        openid: (!wecom).then_some(message.from),
        to_user_name: message.to,
        agent_id: agent_id.as_deref(),
    };
    let sealed = seal_callback(&credentials, &text, params);
    let target = with_query(&url, &sealed.query)?;
    let summary = match action {
        Action::Text { msg_id, .. } => format!("text, MsgId {msg_id}"),
        Action::Event { name, .. } => format!("event {name}"),
    };
    writeln!(
        out,
        "message   {summary}\n{text}\nPOST      {}",
        shown(&target)
    )?;
    post_sealed(&credentials, &url, target, sealed, out).await
}

/// POSTs a sealed callback to `target` (`url` with its query) and checks the answer as WeChat
/// would.
async fn post_sealed(
    credentials: &Credentials,
    url: &Url,
    target: Url,
    sealed: crate::wechat::SealedRequest,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let (ctype, size) = (sealed.content_type, sealed.body.len());
    writeln!(out, "sent      {ctype}, {size} bytes")?;
    let request = client()?
        .post(target)
        .header(CONTENT_TYPE, ctype)
        .body(sealed.body);
    let (status, answer) = exchange(request, "posting to", url, POST_PATIENCE, out).await?;

    let mut ok = status == StatusCode::OK;
    if let Some(reply) = encrypted_reply(&answer) {
        match open_signed_reply(credentials, &reply) {
            Ok(plain) => {
                let plain = String::from_utf8_lossy(&plain);
                writeln!(out, "decrypted reply (MsgSignature verified):\n{plain}")?;
            }
            Err(e) => {
                writeln!(out, "encrypted reply REJECTED: {e:#}")?;
                ok = false;
            }
        }
    }
    writeln!(out, "result    {}", if ok { "OK" } else { "FAILED" })?;
    Ok(ok)
}

/// The GET URL-verification handshake, as the WeChat console does it when the URL is saved.
async fn handshake(
    credentials: &Credentials,
    url: &Url,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    // Numeric like WeChat's own, e.g. 4375120948345356249.
    let expected = rand::random::<u64>().to_string();
    let query = seal_handshake(credentials, &expected, &crate::attempt::fresh());
    let patience = match credentials.kind {
        Kind::WeCom => WECOM_HANDSHAKE_PATIENCE,
        _ => POST_PATIENCE,
    };
    let target = with_query(url, &query)?;
    writeln!(out, "GET       {}", shown(&target))?;
    let request = client()?.get(target);
    let what = "sending the URL handshake to";
    let (status, answer) = exchange(request, what, url, patience, out).await?;
    // Byte for byte: quotes, a BOM or a trailing newline fail the console's check.
    let ok = status == StatusCode::OK && answer.as_ref() == expected.as_bytes();
    if ok {
        writeln!(out, "result    OK: the answer is the echostr plaintext")?;
    } else {
        let got = String::from_utf8_lossy(&answer);
        writeln!(
            out,
            "result    FAILED: expected 200 with exactly {expected:?}, got {status} with {got:?}"
        )?;
    }
    Ok(ok)
}

fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        // Like WeChat: no redirects followed, no proxy from the environment.
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .http1_only()
        .build()
        .context("building the HTTP client")
}

/// Sends `request`, prints the status, timing and answer, and returns the status and body.
async fn exchange(
    request: reqwest::RequestBuilder,
    what: &str,
    url: &Url,
    patience: Duration,
    out: &mut impl Write,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let started = Instant::now();
    // reqwest names the URL in its errors, signatures included: name it ourselves, without them.
    let response = request.send().await.map_err(reqwest::Error::without_url);
    let response = response.with_context(|| format!("{what} {url}"))?;
    let status = response.status();
    let ctype = response.headers().get(CONTENT_TYPE).cloned();
    let answer = response.bytes().await.map_err(reqwest::Error::without_url);
    let answer = answer.with_context(|| format!("reading the answer from {url}"))?;
    let elapsed = started.elapsed();
    writeln!(out, "status    {status} in {} ms", elapsed.as_millis())?;
    if elapsed > patience {
        writeln!(out, "warning   WeChat gives up after {patience:?}")?;
    }
    let ctype = ctype.map_or("no content type".into(), |v| {
        String::from_utf8_lossy(v.as_bytes()).into_owned()
    });
    writeln!(out, "answer    {ctype}, {} bytes", answer.len())?;
    if answer.is_empty() {
        writeln!(out, "(empty body: WeChat takes it like `success`)")?;
    } else {
        writeln!(out, "{}", String::from_utf8_lossy(&answer))?;
    }
    Ok((status, answer))
}

/// `http://{listen}/wechat/{id}`; a wildcard listen address is reached on loopback.
fn default_url(listen: SocketAddr, id: &str) -> anyhow::Result<Url> {
    let text = format!("http://{}/wechat/{id}", reachable(listen));
    Url::parse(&text).with_context(|| format!("building the callback URL {text}"))
}

/// `url` with `query` appended to whatever query it already has.
fn with_query(url: &Url, query: &str) -> anyhow::Result<Url> {
    let joined = crate::outbound::with_query(url.as_str(), query);
    Url::parse(&joined).with_context(|| format!("adding the query to {url}"))
}

/// The URL for printing: `signature` and `msg_signature` values replaced by `…`.
fn shown(url: &Url) -> String {
    let mut url = url.clone();
    if let Some(query) = url.query() {
        let elided: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.ends_with("signature") => format!("{key}=…"),
                _ => pair.to_owned(),
            })
            .collect();
        url.set_query(Some(&elided.join("&")));
    }
    // `…` is percent-encoded by set_query; put it back for reading.
    url.as_str().replace("%E2%80%A6", "…")
}

fn kind_name(kind: AccountKind) -> &'static str {
    match kind {
        AccountKind::OfficialAccount => "official_account",
        AccountKind::MiniProgram => "mini_program",
        AccountKind::Wecom => "wecom",
        AccountKind::OpenPlatform => "open_platform",
        AccountKind::WechatPay => "wechat_pay",
    }
}

/// A random id below 2^63: Java SDKs (WxJava) read `MsgId` into a signed `Long`.
fn random_msg_id() -> u64 {
    rand::random::<u64>() >> 1
}

/// An open platform's authorization event, as WeChat writes it (bare text, no CDATA).
fn authorization_xml(
    component: &str,
    create_time: u64,
    info_type: &str,
    authorizer: Option<&str>,
) -> anyhow::Result<String> {
    let mut out = format!(
        "<xml><AppId>{component}</AppId><CreateTime>{create_time}</CreateTime><InfoType>{info_type}</InfoType>"
    );
    match (info_type, authorizer) {
        ("component_verify_ticket", _) => {
            let ticket = rand::random::<u64>();
            let _ = write!(
                out,
                "<ComponentVerifyTicket>ticket@@@simulated-{ticket}</ComponentVerifyTicket>"
            );
        }
        ("authorized" | "updateauthorized", Some(appid)) => {
            let _ = write!(
                out,
                "<AuthorizerAppid>{appid}</AuthorizerAppid>\
                 <AuthorizationCode>queryauthcode@@@simulated</AuthorizationCode>\
                 <AuthorizationCodeExpiredTime>{}</AuthorizationCodeExpiredTime>\
                 <PreAuthCode>preauthcode@@@simulated</PreAuthCode>",
                create_time + 3600
            );
        }
        ("unauthorized", Some(appid)) => {
            let _ = write!(out, "<AuthorizerAppid>{appid}</AuthorizerAppid>");
        }
        ("authorized" | "updateauthorized" | "unauthorized", None) => {
            bail!("--info-type {info_type} needs --authorizer APPID (the account it concerns)")
        }
        (other, _) => bail!(
            "--info-type {other:?}: one of component_verify_ticket, authorized, \
             updateauthorized, unauthorized"
        ),
    }
    out.push_str("</xml>");
    Ok(out)
}

/// What the simulated user did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action<'a> {
    Text { content: &'a str, msg_id: u64 },
    Event { name: &'a str, key: Option<&'a str> },
}

/// One plaintext message, before signing and encryption.
#[derive(Debug, Clone, Copy)]
struct Message<'a> {
    to: &'a str,
    from: &'a str,
    create_time: u64,
    action: Action<'a>,
    /// WeCom only.
    agent_id: Option<&'a str>,
}

impl Message<'_> {
    /// WeChat's layout: strings in CDATA, numbers bare, `AgentID` last (WeCom).
    fn xml(&self) -> String {
        let mut out = String::from("<xml>");
        push_cdata(&mut out, "ToUserName", self.to);
        push_cdata(&mut out, "FromUserName", self.from);
        let _ = write!(out, "<CreateTime>{}</CreateTime>", self.create_time);
        match self.action {
            Action::Text { content, msg_id } => {
                push_cdata(&mut out, "MsgType", "text");
                push_cdata(&mut out, "Content", content);
                let _ = write!(out, "<MsgId>{msg_id}</MsgId>");
            }
            Action::Event { name, key } => {
                push_cdata(&mut out, "MsgType", "event");
                push_cdata(&mut out, "Event", name);
                if let Some(key) = key {
                    push_cdata(&mut out, "EventKey", key);
                }
            }
        }
        if let Some(agent_id) = self.agent_id {
            let _ = write!(out, "<AgentID>{agent_id}</AgentID>");
        }
        out.push_str("</xml>");
        out
    }

    /// A mini program's JSON push. Written by hand to keep WeChat's key order (a serde_json map
    /// would sort the keys); values are escaped by serde_json.
    fn json(&self) -> String {
        let string = |s: &str| serde_json::Value::from(s).to_string();
        let mut out = format!(
            "{{\"ToUserName\":{},\"FromUserName\":{},\"CreateTime\":{}",
            string(self.to),
            string(self.from),
            self.create_time
        );
        match self.action {
            Action::Text { content, msg_id } => {
                let _ = write!(
                    out,
                    ",\"MsgType\":\"text\",\"Content\":{},\"MsgId\":{msg_id}",
                    string(content)
                );
            }
            Action::Event { name, key } => {
                let _ = write!(out, ",\"MsgType\":\"event\",\"Event\":{}", string(name));
                if let Some(key) = key {
                    let _ = write!(out, ",\"EventKey\":{}", string(key));
                }
            }
        }
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests;
