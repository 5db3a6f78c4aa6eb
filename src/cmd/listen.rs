//! `wechat-fanout listen`: a `listen` target's client, for a laptop or an agent. It opens a
//! WebSocket to the proxy (`/listen/{account}/{target}`, the listen token as a bearer token),
//! forwards each delivery to a local service byte-identical (query, body, `Content-Type`, the
//! `X-WeChat-Fanout-*` headers: a stock SDK there verifies it), sends the local answer back, and
//! prints one line per delivery. It reconnects with backoff; a refused token ends it (exit 1).
//! Without `--forward-to` it prints each delivery and answers `success`.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::outbound::listen::{AnswerFrame, DeliveryFrame};
use crate::wechat::Envelope;

#[derive(Debug, Args)]
pub struct ListenArgs {
    /// The proxy's public base URL, as WeChat reaches it (`https://your.domain`).
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// The account's `id` in the proxy's configuration.
    #[arg(long, value_name = "ID")]
    pub account: String,
    /// The listen target's `name` (a target with `listen = true`).
    #[arg(long, value_name = "NAME")]
    pub target: String,
    /// The target's listen token.
    #[arg(
        long,
        env = "WECHAT_FANOUT_LISTEN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: String,
    /// Forward each delivery to this local URL and send its answer back; without it, print
    /// each delivery and answer `success`.
    #[arg(long, value_name = "URL")]
    pub forward_to: Option<String>,
}

/// The longest wait between two tries to connect.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the local service may take to answer.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(30);
/// The proxy pings every 3 s: this long without a frame, its end is gone (a machine or a
/// network that vanished without closing the connection), and the client connects again.
const PROXY_SILENT: Duration = Duration::from_secs(12);

/// Runs until the token is refused (an error) or the process is stopped.
pub async fn run(args: &ListenArgs, out: &mut (impl Write + Send)) -> anyhow::Result<bool> {
    let address = socket_url(&args.url, &args.account, &args.target)?;
    let local = reqwest::Client::builder()
        .timeout(LOCAL_TIMEOUT)
        .no_proxy()
        .build()?;
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut request = address.as_str().into_client_request()?;
        let bearer = http::HeaderValue::from_str(&format!("Bearer {}", args.token))
            .context("the listen token is not a valid header value")?;
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, bearer);
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => {
                backoff = Duration::from_secs(1);
                writeln!(out, "connected to {address}")?;
                out.flush()?;
                let why = serve(socket, args, &local, out).await?;
                writeln!(out, "disconnected ({why}); reconnecting")?;
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response))
                if response.status() == http::StatusCode::UNAUTHORIZED =>
            {
                bail!(
                    "the proxy refused the listen token for {}/{} (401)",
                    args.account,
                    args.target
                );
            }
            Err(e) => {
                writeln!(
                    out,
                    "cannot connect to {address}: {e}; again in {backoff:?}"
                )?;
            }
        }
        out.flush()?;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// `https://host/base` → `wss://host/base/listen/{account}/{target}`.
fn socket_url(base: &str, account: &str, target: &str) -> anyhow::Result<url::Url> {
    let mut url = url::Url::parse(base).with_context(|| format!("--url {base:?} is not a URL"))?;
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => bail!("--url must be http(s):// or ws(s)://, not {other}://"),
    };
    url.set_scheme(scheme)
        .map_err(|()| anyhow::anyhow!("--url {base:?} cannot take the {scheme} scheme"))?;
    let path = format!(
        "{}/listen/{account}/{target}",
        url.path().trim_end_matches('/')
    );
    url.set_path(&path);
    url.set_query(None);
    Ok(url)
}

/// One connection: each delivery forwarded in a task of its own, answers written as they come.
async fn serve<S>(
    socket: tokio_tungstenite::WebSocketStream<S>,
    args: &ListenArgs,
    local: &reqwest::Client,
    out: &mut (impl Write + Send),
) -> anyhow::Result<&'static str>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = socket.split();
    let (answers, mut answered) = mpsc::channel::<(String, String)>(64);
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(heard + PROXY_SILENT) => {
                return Ok("the proxy went silent");
            }
            incoming = stream.next() => {
                heard = tokio::time::Instant::now();
                match incoming {
                Some(Ok(Message::Text(text))) => {
                    let frame: DeliveryFrame = match serde_json::from_str(text.as_str()) {
                        Ok(frame) => frame,
                        Err(e) => {
                            writeln!(out, "a frame that is no delivery: {e}")?;
                            continue;
                        }
                    };
                    let (local, forward, answers) =
                        (local.clone(), args.forward_to.clone(), answers.clone());
                    tokio::spawn(async move {
                        let (answer, line) = forward_one(&local, forward.as_deref(), frame).await;
                        let text = serde_json::to_string(&answer).unwrap_or_default();
                        let _ = answers.send((text, line)).await;
                    });
                }
                Some(Ok(Message::Close(_))) | None => return Ok("the proxy closed the connection"),
                Some(Ok(_)) => {}
                Some(Err(_)) => return Ok("the connection failed"),
                }
            }
            Some((text, line)) = answered.recv() => {
                writeln!(out, "{line}")?;
                out.flush()?;
                if sink.send(Message::text(text)).await.is_err() {
                    return Ok("the connection failed");
                }
            }
        }
    }
}

/// Forwards one delivery (or answers `success` without a local service); its answer frame and
/// the line to print.
async fn forward_one(
    local: &reqwest::Client,
    forward_to: Option<&str>,
    frame: DeliveryFrame,
) -> (AnswerFrame, String) {
    let started = Instant::now();
    let body = frame.body().unwrap_or_default();
    let what = describe(&body);
    let (status, headers, answer) = match forward_to {
        None => (
            200,
            vec![("content-type".to_owned(), "text/plain".to_owned())],
            b"success".to_vec(),
        ),
        Some(base) => match forward(local, base, &frame, body).await {
            Ok(answer) => answer,
            Err(e) => (
                502,
                Vec::new(),
                format!("the local service failed: {e}").into_bytes(),
            ),
        },
    };
    let replied = (200..300).contains(&status) && !answer.is_empty() && answer != b"success";
    let line = format!(
        "{} delivery {} attempt {} {what} -> {status} in {} ms{}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        frame.delivery,
        frame.attempt,
        started.elapsed().as_millis(),
        if replied { " replied" } else { "" }
    );
    (
        AnswerFrame::new(frame.delivery, status, headers, &answer),
        line,
    )
}

type LocalAnswer = (u16, Vec<(String, String)>, Vec<u8>);

/// POSTs the delivery to `base` with WeChat's query appended, as an HTTP target gets it.
async fn forward(
    local: &reqwest::Client,
    base: &str,
    frame: &DeliveryFrame,
    body: Vec<u8>,
) -> anyhow::Result<LocalAnswer> {
    let url = if frame.query.is_empty() {
        base.to_owned()
    } else if base.contains('?') {
        format!("{base}&{}", frame.query)
    } else {
        format!("{base}?{}", frame.query)
    };
    let mut request = local.post(url).body(body);
    for (name, value) in &frame.headers {
        request = request.header(name, value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| vec![("content-type".to_owned(), v.to_owned())])
        .unwrap_or_default();
    Ok((status, headers, response.bytes().await?.to_vec()))
}

/// `text MsgId=…`, `event/CLICK`, or `encrypted` for a body only the account's key opens.
fn describe(body: &[u8]) -> String {
    let Ok(envelope) = Envelope::parse(body) else {
        return "unreadable".to_owned();
    };
    if envelope.msg_type.is_none() && envelope.encrypt.is_some() {
        return "encrypted".to_owned();
    }
    let msg_type = envelope.msg_type.as_deref();
    let event = envelope
        .event
        .as_deref()
        .filter(|_| msg_type == Some("event"));
    let kind = super::letter::kind(msg_type, event);
    match &envelope.msg_id {
        Some(id) => format!("{kind} MsgId={id}"),
        None => kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_url_is_made_from_the_public_one() {
        let url = socket_url("https://example.com/base/", "main", "laptop").unwrap();
        assert_eq!(url.as_str(), "wss://example.com/base/listen/main/laptop");
        let url = socket_url("http://127.0.0.1:8080", "main", "laptop").unwrap();
        assert_eq!(url.as_str(), "ws://127.0.0.1:8080/listen/main/laptop");
        assert!(socket_url("ftp://x", "a", "b").is_err());
    }
}
