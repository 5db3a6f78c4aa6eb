//! The history of stored callbacks, as the console pages back through it and searches it.
//!
//! - `GET /console/history?account=&msg_id=&user=&type=&since_ms=&until_ms=&instance=&target=&state=&before=&limit=`: a
//!   page of stored callbacks, newest first (`limit`, 50 unless set, at most 500), and `next`,
//!   the cursor of the page after it (`before=<next>`; `null`: nothing older matches). Every
//!   filter is optional; an empty value is no filter. `type` matches the `MsgType` or the
//!   `Event`; `user` is an openid (or a WeCom UserID), matched against the keyed hash the store
//!   keeps of each callback's sender: it is hashed here with each account's key, and neither
//!   stored, logged nor shown. `instance` is the accepting instance's name; `target` a target
//!   the callback was queued for and `state` (`delivered`, `pending`, `failing` or `dead`, with
//!   `target` only) where it stands for it. Each entry lists where it stands for each target. A page may be short, even empty, and still have a `next` (on
//!   Redis a call examines a bounded number of callbacks per account: see `store::history`).
//!
//! A page shows no openid and no content (MsgId, type and event are neither): the detail of
//! one is `GET /callbacks/{id}` ([`super::callbacks`]), which hides them unless
//! `admin.show_content`.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use super::{Admin, Failure, store_error};
use crate::http::json;
use crate::store::{HistoryPage, HistoryQuery};

/// Callbacks per page when the request names no `limit`.
const DEFAULT_LIMIT: usize = 50;
/// The most a page holds, whatever `limit` says.
const MAX_LIMIT: usize = 500;

impl Admin {
    pub(super) async fn history(&self, query: &str) -> Result<Response<Full<Bytes>>, Failure> {
        let mut history = HistoryQuery {
            limit: DEFAULT_LIMIT,
            ..HistoryQuery::default()
        };
        let mut user = None;
        let bad = |what: &str| (StatusCode::BAD_REQUEST, format!("{what} must be a number"));
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            match &*key {
                "account" => history.account = Some(value.to_owned()),
                "msg_id" => history.msg_id = Some(value.to_owned()),
                "user" => user = Some(value.to_owned()),
                "type" => history.kind = Some(value.to_owned()),
                "instance" => history.instance = Some(value.to_owned()),
                "target" => history.target = Some(value.to_owned()),
                "state" => {
                    history.target_state = Some(
                        value
                            .parse()
                            .map_err(|e: &str| (StatusCode::BAD_REQUEST, format!("state: {e}")))?,
                    );
                }
                "since_ms" => history.since_ms = Some(value.parse().map_err(|_| bad("since_ms"))?),
                "until_ms" => history.until_ms = Some(value.parse().map_err(|_| bad("until_ms"))?),
                "limit" => {
                    let limit: usize = value.parse().map_err(|_| bad("limit"))?;
                    history.limit = limit.clamp(1, MAX_LIMIT);
                }
                "before" => {
                    history.before =
                        Some(value.parse().map_err(|e: &str| {
                            (StatusCode::BAD_REQUEST, format!("before: {e}"))
                        })?);
                }
                other => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        format!("unknown parameter {other:?}"),
                    ));
                }
            }
        }
        if history.target_state.is_some() && history.target.is_none() {
            return Err((
                StatusCode::BAD_REQUEST,
                "state needs a target: the state of the callback for which target?".to_owned(),
            ));
        }
        if let Some(user) = user {
            // The store keeps each account's own hash of a user: the typed user hashed for
            // each account searched.
            let routes = self.shared.routes.load();
            history.senders = (routes.accounts())
                .filter(|a| history.account.as_deref().is_none_or(|id| *a.id == *id))
                .map(|a| a.user_hash.hex(&user))
                .collect();
            if history.senders.is_empty() {
                // No account configured to hash it for: nobody's callbacks match.
                return Ok(json(StatusCode::OK, &HistoryPage::default()));
            }
        }
        let page = self
            .shared
            .store
            .history(&history)
            .await
            .map_err(store_error)?;
        Ok(json(StatusCode::OK, &page))
    }
}
