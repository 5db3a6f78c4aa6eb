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

use crate::cmd::admin_client::reachable;
use crate::config::{AccountKind, Config};
use crate::wechat::envelope::{encrypted_reply, push_cdata_element as push_cdata};
use crate::wechat::reply::open_signed_reply;
use crate::wechat::{Credentials, Fresh, Kind, SealParams, seal_callback, seal_handshake};

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
        && !crate::wechat::authorizer::is_app_id(appid)
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
        let target = with_query(&url, &sealed.query);
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
    let target = with_query(&url, &sealed.query);
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
    let target = with_query(url, &query);
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
fn with_query(url: &Url, query: &str) -> Url {
    let mut url = url.clone();
    let joined = match url.query() {
        Some(existing) if !existing.is_empty() => format!("{existing}&{query}"),
        _ => query.to_owned(),
    };
    url.set_query(Some(&joined));
    url
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
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;

    use bytes::Bytes;
    use clap::Parser;
    use http_body_util::{BodyExt as _, Full};
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;
    use crate::wechat::{
        CallbackQuery, Envelope, Format, Sealed, msg_signature, open_callback, verify_url,
    };

    const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
    const TOKEN: &str = "simulate-test-token";
    const CORP_ID: &str = "ww5823bf96d3bd56c7";

    fn config() -> Config {
        Config::from_toml(&format!(
            r#"
            [[accounts]]
            id = "oa"
            kind = "official_account"
            token = "{TOKEN}"
            app_id = "wx5823bf96d3bd56c7"
            encoding_aes_key = "{KEY}"
            mode = "safe"
            [[accounts]]
            id = "plain"
            kind = "official_account"
            token = "{TOKEN}"
            [[accounts]]
            id = "mp"
            kind = "mini_program"
            token = "{TOKEN}"
            app_id = "wx1111111111111111"
            encoding_aes_key = "{KEY}"
            mode = "compatible"
            [[accounts]]
            id = "wecom"
            kind = "wecom"
            token = "{TOKEN}"
            app_id = "{CORP_ID}"
            encoding_aes_key = "{KEY}"
            mode = "safe"
            "#
        ))
        .unwrap()
    }

    fn credentials(id: &str) -> Credentials {
        let config = config();
        let account = config.accounts.iter().find(|a| a.id == id).unwrap();
        crate::routing::credentials(account, "test").unwrap()
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    fn args(flags: &[&str]) -> SimulateArgs {
        Cli::try_parse_from(std::iter::once("simulate").chain(flags.iter().copied()))
            .unwrap()
            .args
    }

    /// What the in-test server received.
    #[derive(Debug, Clone)]
    struct Seen {
        method: http::Method,
        query: String,
        content_type: Option<String>,
        body: Bytes,
    }

    type Answer = (u16, &'static str, String);

    /// A tiny HTTP/1.1 server on 127.0.0.1:0 that answers every request with `handler`.
    async fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = Arc::new(handler);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let handler = handler.clone();
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let seen = Seen {
                            method: parts.method,
                            query: parts.uri.query().unwrap_or("").to_owned(),
                            content_type: parts
                                .headers
                                .get(CONTENT_TYPE)
                                .map(|v| v.to_str().unwrap().to_owned()),
                            body: body.collect().await.unwrap().to_bytes(),
                        };
                        let (status, content_type, answer) = handler(&seen);
                        let response = hyper::Response::builder()
                            .status(status)
                            .header(CONTENT_TYPE, content_type)
                            .body(Full::new(Bytes::from(answer)))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        addr
    }

    /// Opens the callback the way the proxy does; 403 with the reason if it does not verify.
    fn open_or_reject(credentials: &Credentials, seen: &Seen) -> Result<Envelope, Answer> {
        let query = CallbackQuery::parse(&seen.query).unwrap();
        open_callback(credentials, &query, &seen.body)
            .map(|opened| opened.envelope)
            .map_err(|e| (403, "text/plain", e.to_string()))
    }

    async fn simulate(id: &str, addr: SocketAddr, extra: &[&str]) -> (bool, String) {
        let url = format!("http://{addr}/wechat/{id}");
        let mut flags = vec!["--account", id, "--url", &url];
        flags.extend_from_slice(extra);
        let mut out = Vec::new();
        let ok = run(&config(), &args(&flags), &mut out).await.unwrap();
        let printed = String::from_utf8(out).unwrap();
        assert!(
            !printed.contains(TOKEN) && !printed.contains(KEY),
            "{printed}"
        );
        (ok, printed)
    }

    /// A passive reply encrypted and signed the way a downstream SDK does it.
    fn encrypted_reply_to(credentials: &Credentials, plain: &str, json: bool) -> String {
        let key = credentials.security.key().unwrap();
        let encrypt = key.encrypt(plain.as_bytes(), &credentials.receive_id, rand::random());
        let sig = msg_signature(&credentials.token, "1714037059", "415670741", &encrypt);
        let sealed = Sealed {
            encrypt: &encrypt,
            msg_signature: sig.as_str(),
            timestamp: "1714037059",
            nonce: "415670741",
        };
        if json {
            sealed.reply_json()
        } else {
            sealed.reply_xml()
        }
    }

    #[test]
    fn messages_parse_back_for_every_kind_and_format() {
        let text = Action::Text {
            content: "hi ]]> there",
            msg_id: 42,
        };
        let click = Action::Event {
            name: "CLICK",
            key: Some("V1001_TODAY"),
        };
        let subscribe = Action::Event {
            name: "subscribe",
            key: None,
        };
        let cases = [
            (FAKE_ORIGINAL_ID, None, text, BodyFormat::Xml),
            (FAKE_ORIGINAL_ID, None, click, BodyFormat::Xml),
            (FAKE_ORIGINAL_ID, None, text, BodyFormat::Json),
            (FAKE_ORIGINAL_ID, None, click, BodyFormat::Json),
            (FAKE_ORIGINAL_ID, None, subscribe, BodyFormat::Json),
            (CORP_ID, Some("1000002"), text, BodyFormat::Xml),
            (CORP_ID, Some("1000002"), subscribe, BodyFormat::Xml),
        ];
        for (to, agent_id, action, format) in cases {
            let message = Message {
                to,
                from: FAKE_OPENID,
                create_time: 1714037059,
                action,
                agent_id,
            };
            let body = match format {
                BodyFormat::Xml => message.xml(),
                BodyFormat::Json => message.json(),
            };
            let env = Envelope::parse(body.as_bytes()).unwrap_or_else(|e| panic!("{e}: {body}"));
            let expected_format = match format {
                BodyFormat::Xml => Format::Xml,
                BodyFormat::Json => Format::Json,
            };
            assert_eq!(env.format, expected_format, "{body}");
            assert_eq!(env.to_user_name.as_deref(), Some(to));
            assert_eq!(env.from_user_name.as_deref(), Some(FAKE_OPENID));
            assert_eq!(env.create_time.as_deref(), Some("1714037059"));
            assert_eq!(env.agent_id.as_deref(), agent_id);
            assert!(env.encrypt.is_none());
            match action {
                Action::Text { .. } => {
                    assert!(env.is_msg_type("text"));
                    assert_eq!(env.msg_id.as_deref(), Some("42"));
                    assert_eq!(env.event, None);
                }
                Action::Event { name, key } => {
                    assert!(env.is_event(name), "{body}");
                    assert_eq!(env.event_key.as_deref(), key);
                    assert_eq!(env.msg_id, None, "events carry no MsgId");
                }
            }
        }
        let xml = Message {
            to: FAKE_ORIGINAL_ID,
            from: FAKE_OPENID,
            create_time: 1,
            action: text,
            agent_id: None,
        }
        .xml();
        assert!(xml.contains("<Content><![CDATA[hi ]]]]><![CDATA[> there]]></Content>"));
        assert!(xml.contains("<CreateTime>1</CreateTime>") && xml.contains("<MsgId>42</MsgId>"));
    }

    #[test]
    fn flags_parse_and_conflict() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let a = args(&["--account", "oa"]);
        assert_eq!(
            (a.format, a.agent_id, a.verify_url),
            (BodyFormat::Xml, 1000002, false)
        );
        let a = args(&[
            "--account",
            "mp",
            "--event",
            "CLICK",
            "--event-key",
            "k",
            "--format",
            "json",
        ]);
        assert_eq!(
            (a.event.as_deref(), a.event_key.as_deref()),
            (Some("CLICK"), Some("k"))
        );
        for bad in [
            &["--account", "oa", "--text", "x", "--event", "subscribe"][..],
            &["--account", "oa", "--event-key", "k"],
            &["--account", "oa", "--event", "CLICK", "--msg-id", "1"],
            &["--account", "oa", "--verify-url", "--text", "x"],
            &["--account", "oa", "--format", "yaml"],
            &["--text", "x"],
        ] {
            assert!(
                Cli::try_parse_from(std::iter::once("s").chain(bad.iter().copied())).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn default_url_reaches_a_wildcard_listen_on_loopback() {
        let url = |listen: &str| {
            default_url(listen.parse().unwrap(), "main")
                .unwrap()
                .to_string()
        };
        assert_eq!(url("0.0.0.0:8080"), "http://127.0.0.1:8080/wechat/main");
        assert_eq!(url("[::]:80"), "http://[::1]/wechat/main");
        assert_eq!(url("10.1.2.3:9000"), "http://10.1.2.3:9000/wechat/main");
    }

    #[test]
    fn printed_urls_leave_out_signature_values() {
        let url = Url::parse("http://h/wechat/a?x=1").unwrap();
        let full = with_query(
            &url,
            "signature=abc&timestamp=1&msg_signature=def&echostr=a%2Bb",
        );
        assert_eq!(
            shown(&full),
            "http://h/wechat/a?x=1&signature=…&timestamp=1&msg_signature=…&echostr=a%2Bb"
        );
    }

    #[test]
    fn reply_fields_from_xml_and_json() {
        let sealed = Sealed {
            encrypt: "ab+/=",
            msg_signature: "sig",
            timestamp: "1713424427",
            nonce: "415670741",
        };
        let pairs = |fields: Vec<(String, String)>| {
            let mut fields: Vec<_> = (fields.into_iter())
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            fields.sort();
            fields
        };
        let expected = pairs(vec![
            ("Encrypt".into(), "ab+/=".into()),
            ("MsgSignature".into(), "sig".into()),
            ("Nonce".into(), "415670741".into()),
            ("TimeStamp".into(), "1713424427".into()),
        ]);
        let bot = br#"{"encrypt":"ab+/=","msgsignature":"sig","timestamp":1713424427,"nonce":"415670741"}"#;
        for body in [
            sealed.reply_xml(),
            sealed.reply_json(),
            String::from_utf8_lossy(bot).into(),
        ] {
            assert_eq!(
                encrypted_reply(body.as_bytes()).map(pairs),
                Some(expected.clone()),
                "{body}"
            );
        }
        for clear in [
            &b"success"[..],
            b"",
            b"<xml><Content>hi</Content></xml>",
            b"{\"a\":1}",
            b"<xml>",
        ] {
            assert_eq!(encrypted_reply(clear), None);
        }
        let partial: Vec<(String, String)> =
            [("Encrypt", "x"), ("MsgSignature", "s"), ("TimeStamp", "1")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into();
        let e = open_signed_reply(&credentials("oa"), &partial).unwrap_err();
        assert_eq!(e.to_string(), "the reply has Encrypt but no Nonce");
    }

    #[tokio::test]
    async fn posts_a_callback_the_proxy_can_open_and_reads_success() {
        let creds = credentials("oa");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let addr = start(move |seen| {
            let _ = tx.send(seen.clone());
            match open_or_reject(&creds, seen) {
                Ok(_) => (200, "text/plain", "success".into()),
                Err(rejected) => rejected,
            }
        })
        .await;
        let (ok, printed) = simulate("oa", addr, &["--text", "ping", "--msg-id", "7"]).await;
        assert!(ok, "{printed}");
        assert!(
            printed.contains("account   oa (official_account, safe mode)"),
            "{printed}"
        );
        assert!(
            printed.contains("message   text, MsgId 7\n<xml>"),
            "{printed}"
        );
        assert!(
            printed.contains("signature=…") && printed.contains("status    200 OK"),
            "{printed}"
        );
        assert!(
            printed.contains("\nsuccess\n") && printed.ends_with("result    OK\n"),
            "{printed}"
        );

        let seen = rx.recv().await.unwrap();
        assert_eq!(seen.method, http::Method::POST);
        assert_eq!(seen.content_type.as_deref(), Some("text/xml"));
        assert!(
            seen.query
                .contains("&openid=oSIMULATED-wechat-fanout-000&encrypt_type=aes&")
        );
        let opened = open_callback(
            &credentials("oa"),
            &CallbackQuery::parse(&seen.query).unwrap(),
            &seen.body,
        )
        .unwrap();
        assert_eq!(opened.envelope.msg_id.as_deref(), Some("7"));
        assert_eq!(
            opened.envelope.to_user_name.as_deref(),
            Some(FAKE_ORIGINAL_ID)
        );
    }

    #[tokio::test]
    async fn decrypts_an_encrypted_xml_reply_from_wecom() {
        let creds = credentials("wecom");
        let addr = start(move |seen| match open_or_reject(&creds, seen) {
            Ok(env) if env.agent_id.as_deref() == Some("1000002") && env.is_event("CLICK") => {
                let reply = "<xml><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[pong]]></Content></xml>";
                (200, "application/xml", encrypted_reply_to(&creds, reply, false))
            }
            Ok(env) => (400, "text/plain", format!("unexpected {env:?}")),
            Err(rejected) => rejected,
        })
        .await;
        let (ok, printed) =
            simulate("wecom", addr, &["--event", "CLICK", "--event-key", "menu"]).await;
        assert!(ok, "{printed}");
        assert!(printed.contains("message   event CLICK\n"), "{printed}");
        assert!(
            printed.contains("decrypted reply (MsgSignature verified):\n<xml><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[pong]]></Content></xml>\n"),
            "{printed}"
        );
    }

    #[tokio::test]
    async fn decrypts_an_encrypted_json_reply_for_a_json_mini_program() {
        let creds = credentials("mp");
        let addr = start(move |seen| match open_or_reject(&creds, seen) {
            Ok(env) if env.format == Format::Json && env.is_msg_type("text") => (
                200,
                "application/json",
                encrypted_reply_to(&creds, r#"{"ok":true}"#, true),
            ),
            Ok(env) => (400, "text/plain", format!("unexpected {env:?}")),
            Err(rejected) => rejected,
        })
        .await;
        let (ok, printed) = simulate("mp", addr, &["--format", "json"]).await;
        assert!(ok, "{printed}");
        assert!(printed.contains("sent      application/json"), "{printed}");
        assert!(printed.contains(DEFAULT_TEXT), "{printed}");
        assert!(
            printed.contains("(MsgSignature verified):\n{\"ok\":true}\n"),
            "{printed}"
        );
    }

    #[tokio::test]
    async fn a_reply_signed_with_another_token_fails() {
        let mut other = credentials("oa");
        other.token = "another-token".into();
        let addr =
            start(move |_| (200, "text/xml", encrypted_reply_to(&other, "<xml/>", false))).await;
        let (ok, printed) = simulate("oa", addr, &[]).await;
        assert!(!ok, "{printed}");
        assert!(
            printed.contains("encrypted reply REJECTED: MsgSignature does not match"),
            "{printed}"
        );
        assert!(printed.ends_with("result    FAILED\n"), "{printed}");
    }

    #[tokio::test]
    async fn a_rejection_is_reported_and_fails() {
        let addr = start(|_| (403, "text/plain", "signature does not match\n".into())).await;
        let (ok, printed) = simulate("plain", addr, &[]).await;
        assert!(!ok);
        assert!(
            printed.contains("status    403 Forbidden")
                && printed.contains("signature does not match")
        );
    }

    #[tokio::test]
    async fn url_handshakes_for_an_official_account_and_wecom() {
        for id in ["oa", "wecom"] {
            let creds = credentials(id);
            let addr = start(move |seen| {
                assert_eq!(seen.method, http::Method::GET);
                match verify_url(&creds, &CallbackQuery::parse(&seen.query).unwrap()) {
                    Ok(echo) => (200, "text/plain", String::from_utf8(echo).unwrap()),
                    Err(e) => (403, "text/plain", e.to_string()),
                }
            })
            .await;
            let (ok, printed) = simulate(id, addr, &["--verify-url"]).await;
            assert!(ok, "{printed}");
            assert!(
                printed.contains("GET       http://") && printed.contains("signature=…"),
                "{printed}"
            );
            assert!(
                printed.ends_with("result    OK: the answer is the echostr plaintext\n"),
                "{printed}"
            );
        }
    }

    #[tokio::test]
    async fn a_handshake_answer_that_is_not_exactly_the_echostr_fails() {
        let creds = credentials("oa");
        // The classic mistake: the framework JSON-encodes the string.
        let addr = start(move |seen| {
            let echo = verify_url(&creds, &CallbackQuery::parse(&seen.query).unwrap()).unwrap();
            (
                200,
                "application/json",
                format!("\"{}\"", String::from_utf8(echo).unwrap()),
            )
        })
        .await;
        let (ok, printed) = simulate("oa", addr, &["--verify-url"]).await;
        assert!(!ok);
        assert!(
            printed.contains("result    FAILED: expected 200 with exactly"),
            "{printed}"
        );
    }

    #[tokio::test]
    async fn connection_refused_is_an_error_naming_the_url() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let url = format!("http://{addr}/wechat/oa");
        let mut out = Vec::new();
        let e = run(
            &config(),
            &args(&["--account", "oa", "--url", &url]),
            &mut out,
        )
        .await
        .unwrap_err();
        let message = format!("{e:#}");
        assert!(
            message.starts_with(&format!("posting to {url}:")),
            "{message}"
        );
        assert!(!message.contains("signature"), "{message}");
    }

    #[tokio::test]
    async fn unknown_accounts_and_misplaced_json_are_refused() {
        let mut out = Vec::new();
        let e = run(&config(), &args(&["--account", "nope"]), &mut out)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "no account \"nope\" in the config; configured: oa, plain, mp, wecom"
        );
        let e = run(
            &config(),
            &args(&["--account", "oa", "--format", "json"]),
            &mut out,
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--format json: only mini programs"),
            "{e}"
        );
        assert!(out.is_empty());
    }
}
