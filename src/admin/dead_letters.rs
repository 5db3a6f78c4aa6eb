//! The dead-letter endpoints of the admin API: list, show, replay, purge (see the admin module's
//! doc for the paths). The CLI's `dead-letters` command calls them; so does the console for
//! one letter, with its openid and body hidden unless `admin.show_content`.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use tracing::{info, warn};

use super::{Admin, Failure, ShownRequest, store_error};
use crate::clock::now_ms;
use crate::events::Event;
use crate::http::json;
use crate::store::{DeadLetter, DeadLetterFilter, FailedAttempt, JobId};

/// The dead letters, as the admin listener routes to them.
impl Admin {
    pub(super) async fn dead_letters(&self, query: &str) -> Result<Response<Full<Bytes>>, Failure> {
        let filter = parse_filter(query)?;
        let letters = self
            .shared
            .store
            .dead_letters(&filter)
            .await
            .map_err(store_error)?;
        Ok(json(StatusCode::OK, &letters))
    }

    /// One dead letter; for the console (`console`), without openid and body unless
    /// `admin.show_content`, and then with the decrypted message of a safe-mode account.
    pub(super) async fn dead_letter(
        &self,
        id: &str,
        console: bool,
    ) -> Result<Response<Full<Bytes>>, Failure> {
        let id = parse_id(id)?;
        let Some(detail) = self
            .shared
            .store
            .dead_letter(id)
            .await
            .map_err(store_error)?
        else {
            return Err(not_found(id));
        };
        #[derive(Serialize)]
        struct Shown<'a> {
            #[serde(flatten)]
            letter: &'a DeadLetter,
            request: ShownRequest,
            attempt_log: &'a [FailedAttempt],
        }
        let shown = Shown {
            letter: &detail.letter,
            request: self.shown_request(&detail.letter.account, &detail.request, console),
            attempt_log: &detail.attempts,
        };
        Ok(json(StatusCode::OK, &shown))
    }

    pub(super) async fn replay(
        &self,
        id: Option<&str>,
        query: &str,
    ) -> Result<Response<Full<Bytes>>, Failure> {
        let id = id.map(parse_id).transpose()?;
        let filter = parse_scope(query)?;
        let routes = self.shared.routes.load();
        let replayed = self
            .shared
            .store
            .replay_dead(id, &filter, routes.keys())
            .await
            .map_err(store_error)?;
        if let Some(id) = id
            && replayed.targets.is_empty()
            && replayed.not_routed == 0
        {
            return Err(not_found(id));
        }
        // Wake each affected target's worker so the replay starts now, not at the next poll.
        for target in routes.targets() {
            if replayed.targets.contains(&target.key) {
                target.plumbing.wake.notify_one();
            }
        }
        if replayed.not_routed > 0 {
            warn!(
                not_configured = replayed.not_routed,
                "dead letters of targets that are not configured were not replayed"
            );
        }
        info!(replayed = replayed.targets.len(), "dead letters replayed");
        self.console.publish(Event::Replayed {
            at_ms: now_ms(),
            job: id.filter(|_| !replayed.targets.is_empty()).map(|id| id.0),
            count: replayed.targets.len(),
        });
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({
                "replayed": replayed.targets.len(),
                "not_configured": replayed.not_routed,
            }),
        ))
    }

    pub(super) async fn purge(
        &self,
        id: Option<&str>,
        query: &str,
    ) -> Result<Response<Full<Bytes>>, Failure> {
        let id = id.map(parse_id).transpose()?;
        let all =
            url::form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == "all" && v == "true");
        let filter = parse_scope(query)?;
        if id.is_none() && filter == DeadLetterFilter::default() && !all {
            return Err((
                StatusCode::BAD_REQUEST,
                "purging every dead letter needs all=true (or a filter)".into(),
            ));
        }
        let purged = self
            .shared
            .store
            .purge_dead(id, &filter)
            .await
            .map_err(store_error)?;
        if let Some(id) = id
            && purged == 0
        {
            return Err(not_found(id));
        }
        info!(purged, "dead letters purged");
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "purged": purged }),
        ))
    }
}

fn parse_id(id: &str) -> Result<JobId, Failure> {
    id.parse().map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            format!("not a dead-letter id: {id:?}"),
        )
    })
}

fn not_found(id: JobId) -> Failure {
    (StatusCode::NOT_FOUND, format!("no dead letter {id}"))
}

fn parse_filter(query: &str) -> Result<DeadLetterFilter, Failure> {
    let mut filter = DeadLetterFilter::default();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let number = |name: &str| {
            value
                .parse::<i64>()
                .map_err(|_| (StatusCode::BAD_REQUEST, format!("{name} must be a number")))
        };
        match &*key {
            "account" => filter.account = Some(value.into_owned()),
            "target" => filter.target = Some(value.into_owned()),
            "since_ms" => filter.since_ms = Some(number("since_ms")?),
            "until_ms" => filter.until_ms = Some(number("until_ms")?),
            "limit" => filter.limit = Some(usize::try_from(number("limit")?).unwrap_or(0)),
            "all" => {}
            other => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {other:?}"),
                ));
            }
        }
    }
    Ok(filter)
}

/// The filter of a replay or purge: `limit` is refused, as neither honours it (a "limited"
/// purge would otherwise pass the all=true guard and delete every dead letter).
fn parse_scope(query: &str) -> Result<DeadLetterFilter, Failure> {
    let filter = parse_filter(query)?;
    if filter.limit.is_some() {
        return Err((
            StatusCode::BAD_REQUEST,
            "limit applies to listing only; replay or purge by id or filter".into(),
        ));
    }
    Ok(filter)
}
