//! The CLI side of the admin API: `healthcheck` and `dead-letters`.
//!
//! The CLI never opens the store itself: the running proxy owns it, and going through its API
//! keeps one writer, wakes the right workers on replay, and works with any store backend.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

use clap::{Args, Subcommand};

use crate::config::Config;

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Check readiness (the store commits writes) instead of liveness.
    #[arg(long)]
    pub ready: bool,
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List dead letters, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter: its request, headers, body and every failed attempt.
    Show { id: i64 },
    /// Deliver dead letters again (same bytes, fresh attempts): one by id, or all that match.
    Replay {
        id: Option<i64>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Replay every dead letter (needed when no id and no filter is given).
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters: one by id, or all that match.
    Purge {
        id: Option<i64>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Purge every dead letter (needed when no id and no filter is given).
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Args, Default)]
pub struct FilterArgs {
    #[arg(long)]
    pub account: Option<String>,
    #[arg(long)]
    pub target: Option<String>,
    /// Died at or after this time (Unix milliseconds).
    #[arg(long)]
    pub since_ms: Option<i64>,
    /// Died before this time (Unix milliseconds).
    #[arg(long)]
    pub until_ms: Option<i64>,
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// `http://host:port` of the admin API: an unspecified listen address means this machine.
pub fn base_url(config: &Config, explicit: Option<&str>) -> String {
    if let Some(url) = explicit {
        return url.trim_end_matches('/').to_owned();
    }
    format!("http://{}", reachable(config.admin.listen))
}

/// Where a client on this machine reaches a server listening on `listen`: a wildcard address
/// (`0.0.0.0`, `[::]`) is reached on loopback of the same family.
pub(crate) fn reachable(listen: SocketAddr) -> SocketAddr {
    let mut address = listen;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    address
}

/// An HTTP client that sends `token` as a bearer token with every request, if there is one.
fn client(token: Option<&str>) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the admin token is not a valid header value")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(reqwest::Client::builder()
        .timeout(TIMEOUT)
        .no_proxy()
        .default_headers(headers)
        .http1_only()
        .build()?)
}

/// Liveness (or readiness) of the running proxy: Ok(true) when it answered 200.
pub async fn healthcheck(base: &str, ready: bool, out: &mut impl Write) -> anyhow::Result<bool> {
    let url = format!("{base}/{}", if ready { "readyz" } else { "healthz" });
    let response = client(None)?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    writeln!(out, "{status} {}", body.trim())?;
    Ok(status.is_success())
}

/// Runs a `dead-letters` subcommand against the admin API at `base` and prints its result.
pub async fn dead_letters(
    base: &str,
    token: Option<&str>,
    command: &DeadLettersCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let client = client(token)?;
    match command {
        DeadLettersCommand::List {
            filter,
            limit,
            json,
        } => {
            let mut query = filter_query(filter);
            query.push(("limit".into(), limit.to_string()));
            let letters = call(client.get(format!("{base}/dead-letters")).query(&query)).await?;
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&letters)?)?;
                return Ok(());
            }
            let rows = letters.as_array().map(Vec::as_slice).unwrap_or_default();
            writeln!(
                out,
                "{:>8}  {:<12} {:<12} {:<22} {:>8} {:>6}  last error",
                "id", "account", "target", "type/event", "attempts", "status"
            )?;
            for letter in rows {
                let kind = match (letter["msg_type"].as_str(), letter["event"].as_str()) {
                    (Some(t), Some(e)) => format!("{t}/{e}"),
                    (Some(t), None) => t.to_owned(),
                    _ => "-".into(),
                };
                writeln!(
                    out,
                    "{:>8}  {:<12} {:<12} {:<22} {:>8} {:>6}  {}",
                    letter["id"],
                    letter["account"].as_str().unwrap_or("-"),
                    letter["target"].as_str().unwrap_or("-"),
                    kind,
                    letter["attempts"],
                    letter["last_status"]
                        .as_u64()
                        .map_or("-".into(), |s| s.to_string()),
                    letter["last_error"].as_str().unwrap_or("-"),
                )?;
            }
            writeln!(out, "{} dead letter(s)", rows.len())?;
        }
        DeadLettersCommand::Show { id } => {
            let letter = call(client.get(format!("{base}/dead-letters/{id}"))).await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&letter)?)?;
        }
        DeadLettersCommand::Replay { id, filter, all } => {
            let request = match id {
                Some(id) => client.post(format!("{base}/dead-letters/{id}/replay")),
                None => {
                    require_scope(filter, *all, "replay")?;
                    client
                        .post(format!("{base}/dead-letters/replay"))
                        .query(&filter_query(filter))
                }
            };
            let result = call(request).await?;
            writeln!(out, "replayed {}", result["replayed"])?;
            let not_configured = result["not_configured"].as_u64().unwrap_or(0);
            if not_configured > 0 {
                writeln!(
                    out,
                    "not replayed {not_configured}: their targets are not configured"
                )?;
            }
        }
        DeadLettersCommand::Purge { id, filter, all } => {
            let request = match id {
                Some(id) => client.delete(format!("{base}/dead-letters/{id}")),
                None => {
                    require_scope(filter, *all, "purge")?;
                    let mut query = filter_query(filter);
                    if *all {
                        query.push(("all".into(), "true".into()));
                    }
                    client.delete(format!("{base}/dead-letters")).query(&query)
                }
            };
            let result = call(request).await?;
            writeln!(out, "purged {}", result["purged"])?;
        }
    }
    Ok(())
}

fn require_scope(filter: &FilterArgs, all: bool, verb: &str) -> anyhow::Result<()> {
    if filter_query(filter).is_empty() && !all {
        bail!(
            "name a dead letter id, a filter (--account, --target, --since-ms, --until-ms), or --all to {verb} every one"
        );
    }
    Ok(())
}

fn filter_query(filter: &FilterArgs) -> Vec<(String, String)> {
    let mut query = Vec::new();
    if let Some(account) = &filter.account {
        query.push(("account".into(), account.clone()));
    }
    if let Some(target) = &filter.target {
        query.push(("target".into(), target.clone()));
    }
    if let Some(since) = filter.since_ms {
        query.push(("since_ms".into(), since.to_string()));
    }
    if let Some(until) = filter.until_ms {
        query.push(("until_ms".into(), until.to_string()));
    }
    query
}

async fn call(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let response = request
        .send()
        .await
        .context("cannot reach the admin API (is `wechat-fanout serve` running?)")?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .context("reading the admin API's answer")?;
    let body: Value = serde_json::from_slice(&bytes)
        .context("the admin API answered something other than JSON")?;
    if status == reqwest::StatusCode::UNAUTHORIZED {
        bail!(
            "admin API answered {status}: give the admin token (--admin-token or WECHAT_FANOUT_ADMIN_TOKEN)"
        );
    }
    if !status.is_success() {
        bail!(
            "admin API answered {status}: {}",
            body["error"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(body)
}
