//! The console's targets view: what each target is doing (queues, recent outcomes, circuit
//! breaker) and how it is configured (URL, filters, reply routes, pace), and each account's
//! routing table: which target's answer WeChat gets, per route.
//!
//! - `GET /console/targets`: one row per configured target.
//! - `GET /console/routes`: per account, its reply routes and their owners.
//!
//! What it shows is the routing table as built, never the secrets it holds: a URL's password
//! and its query's values are `<redacted>`, and the senders a target is limited to (`users`)
//! are shown only as a count and their keyed hashes (the ones log lines carry) unless
//! `admin.show_content`.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use url::Url;

use super::{Admin, Failure, READY_TIMEOUT, store_error};
use crate::clock::now_ms;
use crate::config::{AUTHORIZER_IN_URL, redact_url};
use crate::http::json;
use crate::privacy::Shown;
use crate::routing::replies::Route;
use crate::routing::{Account, Target};

/// How many of a target's listed senders are shown; the count says how many there are.
const SHOWN_USERS: usize = 20;

impl Admin {
    /// `GET /console/targets`: per configured target, its jobs by state, recent outcomes,
    /// circuit breaker and last error, and its configuration.
    pub(super) async fn targets(&self) -> Result<Response<Full<Bytes>>, Failure> {
        let depths = tokio::time::timeout(READY_TIMEOUT, self.shared.store.queue_depths())
            .await
            .map_err(|_| {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the store did not answer within 2 s".to_owned(),
                )
            })?
            .map_err(store_error)?;
        let now = now_ms();
        let routes = self.shared.routes.load();
        let rows: Vec<Value> = (routes.targets())
            .map(|target| {
                let (account, name) = (&*target.key.account, &*target.key.target);
                let depth = depths
                    .iter()
                    .find(|d| d.account == account && d.target == name);
                let count = |pick: fn(&crate::store::QueueDepth) -> i64| depth.map_or(0, pick);
                let open_for = target.plumbing.breaker.open_for(now);
                let window = crate::routing::retry::window(&target.settings);
                let mut row = json!({
                    "account": account,
                    "target": name,
                    "pending": count(|d| d.pending),
                    "in_flight": count(|d| d.in_flight),
                    "dead": count(|d| d.dead),
                    "oldest_pending_ms": depth.and_then(|d| d.oldest_pending_ms),
                    "retry_window": {
                        "attempts": window.attempts,
                        "earliest_ms": window.earliest.as_millis() as u64,
                        "latest_ms": window.latest.as_millis() as u64,
                        "text": window.to_string(),
                    },
                    // A listen target's clients, on every instance.
                    "listeners": target.listen.as_ref().map(|_| {
                        self.shared.listeners.connections_everywhere(account, name)
                    }),
                    "breaker": if open_for.is_some() { "open" } else { "closed" },
                    "breaker_open_ms": open_for.map(|d| d.as_millis() as u64),
                    "recent": self.console.recent(account, name),
                });
                if let (Some(row), Some(account)) = (row.as_object_mut(), routes.account(account)) {
                    row.extend(self.configured(account, target));
                }
                row
            })
            .collect();
        Ok(json(StatusCode::OK, &rows))
    }

    /// How `target` of `account` is configured, as the targets view shows it.
    fn configured(&self, account: &Account, target: &Target) -> serde_json::Map<String, Value> {
        let kind = if target.api.is_some() {
            "late_replies"
        } else if target.listen.is_some() {
            "listen"
        } else {
            "url"
        };
        let filters: Vec<Value> = (target.filters())
            .map(|(key, values)| match key {
                "users" => json!({ "key": key, "users": self.users(account, values) }),
                _ => json!({ "key": key, "values": values }),
            })
            .collect();
        // The routes it owns: for everyone, or for the senders it lists (one claim per sender).
        let mut owned: BTreeMap<Sorted, bool> = BTreeMap::new();
        for (route, owner, user) in account.reply_routes() {
            if owner.key == target.key {
                *owned.entry(order(route)).or_default() |= user.is_some();
            }
        }
        let replies_to: Vec<Value> = (owned.into_iter())
            .map(|((_, route), listed)| json!({ "route": route, "listed_users_only": listed }))
            .collect();
        let rate = (target.settings.pace)
            .map(|pace| (1000.0 / pace.as_secs_f64()).round() / 1000.0)
            .filter(|rate| rate.is_finite());
        let mut shown = serde_json::Map::new();
        shown.insert("kind".into(), json!(kind));
        shown.insert("url".into(), json!(shown_url(&target.url, kind == "url")));
        shown.insert("filters".into(), json!(filters));
        shown.insert("replies_to".into(), json!(replies_to));
        shown.insert("shadow_of".into(), json!(target.shadow_of.as_deref()));
        shown.insert("rate_limit_per_sec".into(), json!(rate));
        shown.insert(
            "listen_backlog_s".into(),
            json!(target.listen.as_ref().map(|l| l.backlog.as_secs())),
        );
        shown
    }

    /// `GET /console/routes`: per account, each reply route and the target that owns it, for
    /// everyone or for the senders an owner lists; whether a route is left to nobody (`*`
    /// unclaimed: WeChat gets `success`).
    pub(super) fn routes(&self) -> Response<Full<Bytes>> {
        let routes = self.shared.routes.load();
        let mut accounts: Vec<&Account> = routes.accounts().map(|a| &**a).collect();
        accounts.sort_by(|a, b| a.id.cmp(&b.id));
        let shown: Vec<Value> = (accounts.into_iter())
            .map(|account| {
                // (everyone first, route, owner) → the senders it is limited to.
                let mut table: BTreeMap<(bool, Sorted, &str), Vec<String>> = BTreeMap::new();
                for (route, owner, user) in account.reply_routes() {
                    let users = table
                        .entry((user.is_some(), order(route), &owner.key.target))
                        .or_default();
                    users.extend(user.map(str::to_owned));
                }
                let everything_claimed = table
                    .keys()
                    .any(|(listed, (_, route), _)| !listed && route == "*");
                let rows: Vec<Value> = (table.into_iter())
                    .map(|((listed, (_, route), owner), users)| {
                        json!({
                            "route": route,
                            "owner": owner,
                            "users": listed.then(|| self.users(account, &users)),
                        })
                    })
                    .collect();
                json!({
                    "account": &*account.id,
                    "pay": account.pay.is_some(),
                    "routes": rows,
                    "unclaimed_success": !everything_claimed && account.pay.is_none(),
                })
            })
            .collect();
        json(StatusCode::OK, &shown)
    }

    /// Senders (openids, WeCom UserIDs) as the console may show them: all, with
    /// `admin.show_content`; else how many, and the keyed hashes the logs name them by (none
    /// when `log.show_user_ids` shows them in clear there).
    fn users(&self, account: &Account, users: &[String]) -> Value {
        let ids: Vec<String> = if self.console.show_content() {
            users.iter().take(SHOWN_USERS).cloned().collect()
        } else {
            (users.iter().take(SHOWN_USERS))
                .filter_map(|user| match account.user_ids.show(user) {
                    hashed @ Shown::Hashed(_) => Some(hashed.to_string()),
                    Shown::Plain(_) => None,
                })
                .collect()
        };
        json!({ "count": users.len(), "ids": ids, "in_clear": self.console.show_content() })
    }
}

/// A route as the console sorts and shows it: its rank, its text.
type Sorted = (u8, String);

/// A route as the console sorts and shows it: the most specific first (an event, a `MsgType`,
/// then `*`).
fn order(route: &Route) -> Sorted {
    let rank = match route {
        Route::Event(_) => 0,
        Route::MsgType(_) => 1,
        Route::Any => 2,
    };
    (rank, route.to_string())
}

/// A target's URL as the console shows it: its password and the values of its query
/// `<redacted>` (either may be a credential of the target's), `{authorizer}` as written. Not a
/// URL (a listen target's path, the WeChat API's base): as it is.
fn shown_url(url: &str, redact: bool) -> String {
    if !redact {
        return url.to_owned();
    }
    let redacted = redact_url(url);
    let Ok(mut parsed) = Url::parse(&redacted) else {
        return redacted;
    };
    let keys: Vec<String> = parsed.query_pairs().map(|(k, _)| k.into_owned()).collect();
    if !keys.is_empty() {
        let mut query = parsed.query_pairs_mut();
        query.clear();
        for key in &keys {
            query.append_pair(key, "<redacted>");
        }
    }
    let mut shown = parsed.to_string();
    for (encoded, plain) in [
        ("%3Credacted%3E", "<redacted>"),
        (AUTHORIZER_IN_URL[0], AUTHORIZER_IN_URL[1]),
    ] {
        shown = shown.replace(encoded, plain);
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::shown_url;

    #[test]
    fn a_targets_url_is_shown_without_its_password_or_query_values() {
        assert_eq!(
            shown_url("https://bot:s3cret@hooks.example/wx?key=abc&v=2", true),
            "https://bot:<redacted>@hooks.example/wx?key=<redacted>&v=<redacted>"
        );
        assert_eq!(
            shown_url("http://127.0.0.1:9001/op/{authorizer}/wx", true),
            "http://127.0.0.1:9001/op/{authorizer}/wx"
        );
        assert_eq!(
            shown_url("http://127.0.0.1:9001/wx", true),
            "http://127.0.0.1:9001/wx"
        );
        assert_eq!(shown_url("not a url s3cret", true), "<unparsable URL>");
        assert_eq!(
            shown_url("/listen/main/laptop", false),
            "/listen/main/laptop"
        );
    }
}
