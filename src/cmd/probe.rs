//! `probe`: would every target accept the callbacks it is about to get? Checked before WeChat's
//! console is pointed at the proxy, by the `probe` command and by `POST /targets/probe`.
//!
//! Each target gets the URL-verification GET exactly as WeChat would send it for its account
//! (signed; WeCom: with an encrypted `echostr`), with a fresh random `echostr`, at its configured
//! URL. A target whose SDK is set up with the same token (and key) answers the `echostr`
//! plaintext. Nothing message-shaped is ever sent: a target would act on a POST.
//!
//! A WeChat Pay account's targets are probed for reachability only: a notification is signed
//! with WeChat Pay's private key, which the proxy does not have, and WeChat Pay has no handshake;
//! the GET (no query) shows that the target answers HTTP at its URL, nothing more.

use std::time::Instant;

use serde::Serialize;

use clap::Args;

use crate::routing::{Account, Routes, Target};
use crate::wechat::seal_handshake;

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Only this account's targets.
    #[arg(long)]
    pub account: Option<String>,
    /// Only targets with this name.
    #[arg(long)]
    pub target: Option<String>,
    /// Print the results as JSON (as `POST /targets/probe` answers) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Marks a probe, so a target's logs can tell it from WeChat's own handshake.
pub const PROBE_HEADER: &str = "x-wechat-fanout-probe";
const USER_AGENT: &str = concat!("wechat-fanout/", env!("CARGO_PKG_VERSION"), " (probe)");
/// The authorizer a `{authorizer}` URL is probed for when the target lists none.
const PLACEHOLDER_APPID: &str = "wx0000000000000000";
/// An answer is read up to this size: an `echostr` is 20 bytes.
const MAX_ANSWER_BYTES: usize = 4096;

/// How one target answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 200 with exactly the `echostr` plaintext.
    Ok,
    /// 200, but not exactly the `echostr` (quotes, a newline, `success`, a page).
    WrongEcho,
    /// Any other status: the target's SDK refused the signature, or the path is wrong.
    Rejected,
    /// No answer: connection refused, DNS, TLS, timeout.
    Unreachable,
    /// A WeChat Pay account's target answered (any status): all that can be checked.
    Reachable,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::WrongEcho => "wrong echo",
            Outcome::Rejected => "rejected",
            Outcome::Unreachable => "unreachable",
            Outcome::Reachable => "reachable",
        }
    }

    /// Whether the target is ready for what it is about to get, as far as a probe can tell.
    pub fn passes(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::Reachable)
    }
}

/// One target's result.
#[derive(Debug, Clone, Serialize)]
pub struct Probed {
    pub account: String,
    pub target: String,
    /// The target's URL as configured (the query the probe added is left out: it is signed).
    pub url: String,
    pub outcome: Outcome,
    pub status: Option<u16>,
    pub elapsed_ms: u64,
    /// What went wrong, for a person: the answer's first bytes, or the connection error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Why no probe was sent: a filter that matches nothing configured, or no client.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no account {0:?} is configured")]
    UnknownAccount(String),
    #[error("no target {0:?} is configured{1}")]
    UnknownTarget(String, InAccount),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// ` in account "x"` when a probe was limited to one account.
#[derive(Debug)]
pub struct InAccount(Option<String>);

impl std::fmt::Display for InAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(account) => write!(f, " in account {account:?}"),
            None => Ok(()),
        }
    }
}

/// Probes every target of `routes` (only `account`'s, only those named `target`, when given),
/// all at once, each within its own timeout; results in account and target order.
pub async fn probe(
    routes: &Routes,
    account: Option<&str>,
    target: Option<&str>,
) -> Result<Vec<Probed>, ProbeError> {
    let mut accounts: Vec<&std::sync::Arc<Account>> = match account {
        Some(id) => vec![
            routes
                .account(id)
                .ok_or_else(|| ProbeError::UnknownAccount(id.to_owned()))?,
        ],
        None => routes.accounts().collect(),
    };
    accounts.sort_by(|a, b| a.id.cmp(&b.id));
    let chosen: Vec<(std::sync::Arc<Account>, std::sync::Arc<Target>)> = accounts
        .iter()
        .flat_map(|a| a.targets.iter().map(move |t| ((*a).clone(), t.clone())))
        .filter(|(_, t)| target.is_none_or(|name| &*t.key.target == name))
        // A listen target has no URL to probe: its client connects to the proxy.
        .filter(|(_, t)| t.listen.is_none())
        .collect();
    if let Some(name) = target
        && chosen.is_empty()
    {
        return Err(ProbeError::UnknownTarget(
            name.to_owned(),
            InAccount(account.map(str::to_owned)),
        ));
    }
    // A target with `http2 = true` is probed over HTTP/2 only, as its deliveries are sent.
    let client = |http2: bool| {
        let builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT);
        let builder = if http2 {
            builder.http2_prior_knowledge()
        } else {
            builder.http1_only()
        };
        builder
            .build()
            .map_err(|e| ProbeError::Client(crate::error::innermost(&e)))
    };
    let http1 = client(false)?;
    let http2 = if chosen.iter().any(|(_, t)| t.settings.http2) {
        Some(client(true)?)
    } else {
        None
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (account, target)) in chosen.into_iter().enumerate() {
        let client = match &http2 {
            Some(http2) if target.settings.http2 => http2.clone(),
            _ => http1.clone(),
        };
        tasks.spawn(async move { (i, probe_one(&client, &account, &target).await) });
    }
    let mut results = Vec::with_capacity(tasks.len());
    while let Some(done) = tasks.join_next().await {
        if let Ok(result) = done {
            results.push(result);
        }
    }
    results.sort_by_key(|(i, _)| *i);
    Ok(results.into_iter().map(|(_, probed)| probed).collect())
}

async fn probe_one(client: &reqwest::Client, account: &Account, target: &Target) -> Probed {
    // Numeric like WeChat's own (e.g. 4375120948345356249), fresh for every probe.
    let echo = rand::random::<u64>().to_string();
    let credentials = target.signing_credentials(&account.credentials);
    let query = seal_handshake(credentials, &echo, &crate::attempt::fresh());
    // A URL with `{authorizer}` is probed for the first authorizer it filters on, else for a
    // placeholder app id.
    let base = target.url_for(Some(target.probe_authorizer().unwrap_or(PLACEHOLDER_APPID)));
    let pay = account.pay.is_some();
    let url = if pay {
        base.into_owned()
    } else {
        crate::outbound::with_query(&base, &query)
    };
    let timeout = target.settings.timeout;
    let started = Instant::now();
    let answer = tokio::time::timeout(timeout, async {
        let response = client.get(&url).header(PROBE_HEADER, "1").send().await?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        let mut response = response;
        while let Some(chunk) = response.chunk().await? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_ANSWER_BYTES {
                break;
            }
        }
        Ok::<_, reqwest::Error>((status, body))
    })
    .await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let (outcome, status, detail) = match answer {
        Err(_) => (
            Outcome::Unreachable,
            None,
            Some(format!("no answer within {:?}", timeout)),
        ),
        Ok(Err(e)) => (
            Outcome::Unreachable,
            None,
            Some(crate::error::innermost(&e)),
        ),
        Ok(Ok((status, _))) if pay => (
            Outcome::Reachable,
            Some(status),
            Some(CANNOT_SIGN_AS_WECHAT_PAY.to_owned()),
        ),
        Ok(Ok((status, body))) => {
            let shown = || Some(excerpt(&body));
            match status {
                // Byte for byte: quotes, a BOM or a newline fail WeChat's check too.
                200 if body == echo.as_bytes() => (Outcome::Ok, Some(status), None),
                200 => (Outcome::WrongEcho, Some(status), shown()),
                _ => (Outcome::Rejected, Some(status), shown()),
            }
        }
    };
    Probed {
        account: account.id.to_string(),
        target: target.key.target.to_string(),
        url: target.url.clone(),
        outcome,
        status,
        elapsed_ms,
        detail,
    }
}

/// Why a WeChat Pay account's targets are only checked for an answer.
const CANNOT_SIGN_AS_WECHAT_PAY: &str = "reachability only: a notification is signed with WeChat \
     Pay's private key, which the proxy does not have; try a target's SDK with `simulate \
     --wechatpay-private-key` and a test key";

/// The first 80 characters of an answer, escaped, for the report.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    crate::escape::Excerpt::new(&text, 80).to_string()
}

/// The `probe` command: probes from this machine with the configuration's targets and prints a
/// table (or JSON); `Ok(true)` when every target answered `ok`.
pub async fn run(
    config: &crate::config::Config,
    args: &ProbeArgs,
    out: &mut impl std::io::Write,
) -> anyhow::Result<bool> {
    let routes = crate::routing::build(config)?;
    let results = probe(&routes, args.account.as_deref(), args.target.as_deref()).await?;
    let all_ok = results.iter().all(|r| r.outcome.passes());
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report(&results))?)?;
        return Ok(all_ok);
    }
    writeln!(
        out,
        "{:<16} {:<16} {:<12} {:>6} {:>8}  url / detail",
        "account", "target", "result", "status", "ms"
    )?;
    for r in &results {
        let status = r
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<16} {:<16} {:<12} {:>6} {:>8}  {}{}",
            r.account,
            r.target,
            r.outcome.name(),
            status,
            r.elapsed_ms,
            r.url,
            r.detail
                .as_deref()
                .map(|d| format!("  ({d})"))
                .unwrap_or_default()
        )?;
    }
    let ok = results.iter().filter(|r| r.outcome.passes()).count();
    writeln!(out, "{ok} of {} targets ok", results.len())?;
    Ok(all_ok)
}

/// The JSON both the command (`--json`) and the admin API answer.
pub fn report(results: &[Probed]) -> serde_json::Value {
    serde_json::json!({
        "ok": results.iter().all(|r| r.outcome.passes()),
        "targets": results,
    })
}
