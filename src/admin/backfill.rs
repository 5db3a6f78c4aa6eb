//! `POST /targets/{account}/{target}/backfill?since_ms=&until_ms=`: a target added today gets
//! the callbacks of a past window, as if it had been there.
//!
//! Every callback the account stored that arrived in the window (`until_ms`: now if absent) is
//! routed again for this target alone, by its filters as they are now (the stored request
//! opened with the account's credentials, as at accept), and queued as a new delivery, with the
//! usual retries, if the target was never queued for it. No other target is touched, and the
//! store checks and records "queued for this target" per callback in one step, so a second
//! backfill of the same window (or two at once) delivers nothing twice. How far back it reaches
//! is what the store keeps: callbacks are forgotten `store.delivered_retention_secs` after their
//! last delivery, so a window that starts before that is refused rather than half served. A
//! target with `order = "per_user"` is refused: its users' newer callbacks are in its lanes
//! already, and older ones would come after them.
//!
//! The answer counts what was seen: `queued`, `already` (queued for the target before, at
//! accept or by a backfill), `filtered` (its filters do not take it), `unknown` (stored by a
//! build that did not record its targets), `unreadable` (the account's token or key changed).

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use tracing::info;

use super::{Admin, Failure, store_error};
use crate::clock::now_ms;
use crate::config::Order;
use crate::http::json;
use crate::store::{CallbackId, JobId};

/// Callbacks read from the store per page.
const PAGE: usize = 200;

/// What a backfill did.
#[derive(Debug, Default, Serialize)]
struct Backfilled {
    account: String,
    target: String,
    since_ms: i64,
    until_ms: i64,
    queued: u64,
    already: u64,
    filtered: u64,
    unknown: u64,
    unreadable: u64,
}

impl Admin {
    pub(super) async fn backfill(
        &self,
        account: &str,
        target: &str,
        query: &str,
    ) -> Result<Response<Full<Bytes>>, Failure> {
        // Names as the client wrote them in the path (a name may hold any printable character).
        let decode = |segment: &str| {
            (percent_encoding::percent_decode_str(segment).decode_utf8())
                .map(|name| name.into_owned())
                .map_err(|_| {
                    (
                        StatusCode::BAD_REQUEST,
                        "a name in the path is not UTF-8".to_owned(),
                    )
                })
        };
        let (account, target) = (&*decode(account)?, &*decode(target)?);
        let bad = |message: String| (StatusCode::BAD_REQUEST, message);
        let now = now_ms();
        let (mut since_ms, mut until_ms) = (None, now);
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let number = || {
                (value.parse::<i64>()).map_err(|_| bad(format!("{key} must be Unix milliseconds")))
            };
            match &*key {
                "since_ms" => since_ms = Some(number()?),
                "until_ms" => until_ms = number()?,
                other => return Err(bad(format!("unknown parameter {other:?}"))),
            }
        }
        let since_ms = since_ms.ok_or_else(|| bad("since_ms is required".to_owned()))?;
        if since_ms >= until_ms {
            return Err(bad("since_ms must be before until_ms".to_owned()));
        }
        let kept = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        if since_ms < now.saturating_sub(kept) {
            return Err(bad(format!(
                "the window starts before what the store keeps: callbacks are forgotten \
                 store.delivered_retention_secs ({} s) after their last delivery; start at most \
                 {} ago",
                self.retention.as_secs(),
                humantime::format_duration(Duration::from_secs(self.retention.as_secs()))
            )));
        }
        let routes = self.shared.routes.load_full();
        let not_found = || {
            (
                StatusCode::NOT_FOUND,
                format!("no target {target:?} of account {account:?}"),
            )
        };
        let owner = routes.account(account).ok_or_else(not_found)?;
        let chosen = (owner.targets.iter())
            .find(|t| &*t.key.target == target)
            .ok_or_else(not_found)?;
        if chosen.settings.order == Order::PerUser {
            // Its lanes hold the users' newer callbacks already: older ones queued now would reach
            // it after them, out of the order the key promises.
            return Err(bad(format!(
                "{account}/{target} has order = \"per_user\": a backfill would deliver each \
                 user's older callbacks after the newer ones it has, so it is refused; backfill \
                 before setting order, or use a target without it"
            )));
        }
        let store = &self.shared.store;
        let mut done = Backfilled {
            account: account.to_owned(),
            target: target.to_owned(),
            since_ms,
            until_ms,
            ..Backfilled::default()
        };
        let mut after: Option<CallbackId> = None;
        loop {
            let page = (store.arrivals(account, since_ms, until_ms, after, PAGE))
                .await
                .map_err(store_error)?;
            let mut wanted = Vec::new();
            for arrival in &page {
                match &arrival.routed {
                    None => done.unknown += 1,
                    Some(routed) if routed.iter().any(|t| t == target) => done.already += 1,
                    Some(_) => match owner.would_route(chosen, &arrival.request) {
                        None => done.unreadable += 1,
                        Some(false) => done.filtered += 1,
                        Some(true) => wanted.push(arrival.id),
                    },
                }
            }
            if !wanted.is_empty() {
                let ids = store.next_ids(wanted.len()).await.map_err(store_error)?;
                let jobs: Vec<(CallbackId, JobId)> =
                    wanted.into_iter().zip(ids.into_iter().map(JobId)).collect();
                let asked = jobs.len() as u64;
                let queued = (store.backfill(&chosen.key, jobs).await).map_err(store_error)?;
                done.queued += queued;
                // Queued meanwhile by another backfill of the same window.
                done.already += asked - queued;
            }
            if page.len() < PAGE {
                break;
            }
            after = page.last().map(|a| a.id);
        }
        if done.queued > 0 {
            chosen.plumbing.wake.notify_one();
        }
        info!(
            account,
            target,
            since_ms,
            until_ms,
            queued = done.queued,
            already = done.already,
            filtered = done.filtered,
            unknown = done.unknown,
            unreadable = done.unreadable,
            "backfill"
        );
        Ok(json(StatusCode::OK, &done))
    }
}
