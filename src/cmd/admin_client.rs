//! The CLI side of the admin API: `healthcheck`, `dead-letters` and `backfill`.
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
    /// List dead letters, newest first, as a table.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter: its callback, every failed attempt, and its message (decrypted
    /// where the configuration has the account's key; user ids hidden).
    Show {
        /// The dead letter's id, as `list` shows it.
        id: i64,
        /// Print the admin API's JSON (everything, openids included) instead.
        #[arg(long)]
        json: bool,
    },
    /// Deliver dead letters again (same bytes, fresh attempts): one by id, or all that match.
    /// Exits 1 when any letter asked for was not replayed.
    Replay {
        /// The dead letter's id; or give a filter, or --all.
        id: Option<i64>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Replay every dead letter (needed when no id and no filter is given).
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters: one by id, or all that match.
    Purge {
        /// The dead letter's id; or give a filter, or --all.
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
    /// Only dead letters of this account (its `id` in the configuration).
    #[arg(long)]
    pub account: Option<String>,
    /// Only dead letters of this target (its `name`).
    #[arg(long)]
    pub target: Option<String>,
    /// Only those that died at or after WHEN: a time ago (`90s`, `30m`, `1h`, `2d`) or an
    /// RFC 3339 time (`2026-12-07T08:00:00Z`).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    pub since: Option<i64>,
    /// Only those that died before WHEN (same forms as --since).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    pub until: Option<i64>,
}

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// The account (its `id` in the configuration).
    #[arg(long)]
    pub account: String,
    /// The target (its `name`) to fill; no other target gets anything.
    #[arg(long)]
    pub target: String,
    /// From WHEN: a time ago (`90s`, `30m`, `6h`, `2d`) or an RFC 3339 time
    /// (`2026-12-07T08:00:00Z`). At most `store.delivered_retention_secs` ago.
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    pub since: i64,
    /// Until WHEN (same forms; default now).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    pub until: Option<i64>,
}

/// `--since`/`--until`: a time ago or an RFC 3339 time, as Unix milliseconds.
fn parse_when(text: &str) -> Result<i64, String> {
    let at = match humantime::parse_rfc3339_weak(text) {
        Ok(at) => at,
        Err(_) => {
            let ago = humantime::parse_duration(text).map_err(|_| {
                format!(
                    "{text:?} is neither a time ago (90s, 30m, 1h, 2d) nor an RFC 3339 time \
                     (2026-12-07T08:00:00Z)"
                )
            })?;
            std::time::SystemTime::now()
                .checked_sub(ago)
                .ok_or_else(|| format!("{text:?} reaches before 1970"))?
        }
    };
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before 1970"))?
        .as_millis();
    i64::try_from(ms).map_err(|_| format!("{text:?} is too far away"))
}

const TIMEOUT: Duration = Duration::from_secs(5);
const BACKFILL_TIMEOUT: Duration = Duration::from_secs(600);

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

/// Runs a `dead-letters` subcommand against the admin API at `base` and prints its result;
/// `Ok(false)` when the command ran but did not do all it was asked (exit 1). `config` opens
/// the messages `show` prints, for the accounts whose key it has.
pub async fn dead_letters(
    base: &str,
    token: Option<&str>,
    command: &DeadLettersCommand,
    config: &Config,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
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
            } else {
                let rows = letters.as_array().map(Vec::as_slice).unwrap_or_default();
                write!(out, "{}", letters_table(rows))?;
            }
        }
        DeadLettersCommand::Show { id, json } => {
            let letter = call(client.get(format!("{base}/dead-letters/{id}"))).await?;
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&letter)?)?;
            } else {
                write!(out, "{}", super::letter::show(&letter, config))?;
            }
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
                return Ok(false);
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
    Ok(true)
}

/// Queues for one target, through the admin API at `base`, the stored callbacks of a window
/// it never had; prints how many.
pub async fn backfill(
    base: &str,
    token: Option<&str>,
    args: &BackfillArgs,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let segment = |name: &str| {
        percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let url = format!(
        "{base}/targets/{}/{}/backfill",
        segment(&args.account),
        segment(&args.target)
    );
    let mut query = vec![("since_ms", args.since.to_string())];
    if let Some(until) = args.until {
        query.push(("until_ms", until.to_string()));
    }
    // A long window is read page by page from the store: more than the usual few seconds.
    let request = client(token)?
        .post(url)
        .query(&query)
        .timeout(BACKFILL_TIMEOUT);
    let done = call(request).await?;
    let count = |key: &str| done[key].as_u64().unwrap_or(0);
    writeln!(
        out,
        "queued {} for {}/{}",
        count("queued"),
        args.account,
        args.target
    )?;
    for (key, what) in [
        ("already", "already queued for it"),
        ("filtered", "not for it by its filters"),
        (
            "unknown",
            "stored by an older build that did not record their targets",
        ),
        (
            "unreadable",
            "no longer readable with the account's token or key",
        ),
    ] {
        if count(key) > 0 {
            writeln!(out, "skipped {} {what}", count(key))?;
        }
    }
    Ok(true)
}

/// The list as an aligned table, each column as wide as its widest cell, and a count.
fn letters_table(rows: &[Value]) -> String {
    let text = |v: &Value| v.as_str().map_or_else(|| "-".to_owned(), str::to_owned);
    let mut table = vec![
        [
            "ID",
            "ACCOUNT",
            "TARGET",
            "TYPE/EVENT",
            "DIED",
            "ATTEMPTS",
            "STATUS",
            "LAST ERROR",
        ]
        .map(str::to_owned),
    ];
    for letter in rows {
        let kind = super::letter::kind(letter["msg_type"].as_str(), letter["event"].as_str());
        table.push([
            letter["id"].to_string(),
            text(&letter["account"]),
            text(&letter["target"]),
            kind,
            letter["died_at_ms"]
                .as_i64()
                .map_or("-".into(), super::letter::time),
            letter["attempts"].to_string(),
            letter["last_status"]
                .as_u64()
                .map_or("-".into(), |s| s.to_string()),
            // One line per letter, whatever the target answered.
            text(&letter["last_error"]).replace(['\n', '\r', '\t'], " "),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &table {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &table {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            let pad = width - cell.chars().count();
            // Numbers right-aligned, text left; the last column is not padded.
            match i {
                0 | 5 | 6 => line.push_str(&format!("{}{cell}  ", " ".repeat(pad))),
                7 => line.push_str(cell),
                _ => line.push_str(&format!("{cell}{}  ", " ".repeat(pad))),
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&format!(
        "{} dead letter{}\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    ));
    out
}

fn require_scope(filter: &FilterArgs, all: bool, verb: &str) -> anyhow::Result<()> {
    if filter_query(filter).is_empty() && !all {
        bail!(
            "name a dead letter id, a filter (--account, --target, --since, --until), or --all to {verb} every one"
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
    if let Some(since) = filter.since {
        query.push(("since_ms".into(), since.to_string()));
    }
    if let Some(until) = filter.until {
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
            "admin API answered {status}: give the admin token (--admin-token, or admin.token / WECHAT_FANOUT_ADMIN__TOKEN)"
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
