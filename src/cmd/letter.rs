//! `dead-letters show` for a person: one dead letter as the admin API answers it, with readable
//! times, every failed attempt, the request with its openid hidden, and the message: decrypted
//! where the configuration has the account's key, with the fields that name a user hidden (as
//! the console shows them). `--json` prints the API's answer as it is instead.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use crate::config::Config;
use crate::privacy::{hide_user_ids, without_openid};
use crate::wechat::{CallbackQuery, open_callback};

/// A callback's kind as the CLI prints it: `text`, `event/CLICK`, or `-`.
pub(super) fn kind(msg_type: Option<&str>, event: Option<&str>) -> String {
    match (msg_type, event) {
        (Some(t), Some(e)) => format!("{t}/{e}"),
        (Some(t), None) => t.to_owned(),
        _ => "-".into(),
    }
}

/// A Unix time in ms as RFC 3339 in UTC, to the second: `2026-12-07T11:20:03Z`.
pub(super) fn time(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        Err(_) => ms.to_string(),
    }
}

/// The letter as lines of text.
pub(super) fn show(letter: &Value, config: &Config) -> String {
    let text = |v: &Value| v.as_str().map_or_else(|| "-".to_owned(), str::to_owned);
    let account = text(&letter["account"]);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "dead letter {} (callback {})",
        letter["id"], letter["callback"]
    );
    let kind = kind(letter["msg_type"].as_str(), letter["event"].as_str());
    let at = |field: &str| letter[field].as_i64().map_or("-".into(), time);
    let rows = [
        ("account", account.clone()),
        ("target", text(&letter["target"])),
        ("type", kind),
        ("received", at("received_at_ms")),
        (
            "died",
            format!("{} after {} attempts", at("died_at_ms"), letter["attempts"]),
        ),
    ];
    for (name, value) in rows {
        let _ = writeln!(out, "  {name:<9} {value}");
    }
    let _ = writeln!(out, "\nfailed attempts:");
    for attempt in letter["attempt_log"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {:>3}  {}  {:>3}  {}",
            attempt["attempt"],
            attempt["at_ms"].as_i64().map_or("-".into(), time),
            attempt["status"]
                .as_u64()
                .map_or("-".into(), |s| s.to_string()),
            text(&attempt["error"]).replace(['\n', '\r'], " "),
        );
    }
    let request = &letter["request"];
    let query = request["query"].as_str().unwrap_or_default();
    let _ = writeln!(out, "\nrequest:\n  POST ?{}", without_openid(query));
    for header in request["headers"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  {}: {}", text(&header[0]), text(&header[1]));
    }
    let body = request["body"].as_str().unwrap_or_default();
    let (title, message) = message(config, &account, query, body);
    let _ = writeln!(out, "\n{title}:\n{}", indent(&hide_user_ids(&message)));
    out
}

/// What to print of the body: the decrypted message where the configuration opens it, else
/// the body, and why it is not decrypted.
fn message(config: &Config, account: &str, query: &str, body: &str) -> (String, String) {
    let encrypted = body.contains("<Encrypt>") || body.contains("\"Encrypt\"");
    if !encrypted {
        return ("message".into(), body.to_owned());
    }
    let Some((i, found)) = (config.accounts.iter().enumerate()).find(|(_, a)| a.id == account)
    else {
        return (
            format!("message (encrypted: the configuration has no account {account:?})"),
            body.to_owned(),
        );
    };
    let credentials = match crate::routing::credentials(found, &format!("accounts[{i}]")) {
        Ok(credentials) => credentials,
        Err(e) => {
            return (format!("message (encrypted: {e})"), body.to_owned());
        }
    };
    let opened = CallbackQuery::parse(query)
        .map_err(|e| e.to_string())
        .and_then(|q| open_callback(&credentials, &q, body.as_bytes()).map_err(|e| e.to_string()));
    match opened {
        Ok(opened) => match opened.decrypted {
            Some(message) => (
                "message (decrypted)".into(),
                String::from_utf8_lossy(&message).into_owned(),
            ),
            None => ("message".into(), body.to_owned()),
        },
        Err(e) => (
            format!("message (encrypted: the account's key does not open it: {e})"),
            body.to_owned(),
        ),
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}
