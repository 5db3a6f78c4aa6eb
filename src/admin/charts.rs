//! The console's charts, from the store's per-minute counts (`Store::minutes`), so they show the
//! whole deployment whichever instance serves the page.
//!
//! - `GET /console/charts?minutes=60`: the last `minutes` minutes (1 to 1,440, 60 unless set),
//!   the current one last and still filling. `minutes`: each minute's start (Unix ms);
//!   `callbacks`: per minute, callbacks `accepted`, `duplicate` and `rejected`, every account's;
//!   `targets`: per configured target (and any other the counts name), per minute, attempts
//!   `delivered` and `failed` (to be retried or given up on), `dead` (given up on), the attempts'
//!   `p50_ms` and `p99_ms` (from buckets, `null` without attempts), and the backlog as the store
//!   was read once a minute: `pending` (jobs not delivered yet) and `oldest_s` (the age of the
//!   oldest), `null` for a minute not read.

use std::collections::HashMap;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use super::{Admin, Failure, store_error};
use crate::http::json;
use crate::metrics::minutes::{LATENCY_NAMES, OLDEST_SECONDS, PENDING, minute_now, percentile_ms};

/// Minutes drawn when the request names none: the last hour.
const DEFAULT_MINUTES: i64 = 60;
/// The most a chart spans: what the store keeps.
const MAX_MINUTES: i64 = 24 * 60;

/// `GET /console/charts`'s answer.
#[derive(Debug, Default, Serialize)]
struct Charts {
    minutes: Vec<i64>,
    callbacks: CallbackSeries,
    targets: Vec<TargetSeries>,
}

#[derive(Debug, Default, Serialize)]
struct CallbackSeries {
    accepted: Vec<i64>,
    duplicate: Vec<i64>,
    rejected: Vec<i64>,
}

#[derive(Debug, Default, Serialize)]
struct TargetSeries {
    account: String,
    target: String,
    delivered: Vec<i64>,
    failed: Vec<i64>,
    dead: Vec<i64>,
    p50_ms: Vec<Option<f64>>,
    p99_ms: Vec<Option<f64>>,
    pending: Vec<Option<i64>>,
    oldest_s: Vec<Option<i64>>,
    /// Per minute, attempts per bucket of `LATENCY_NAMES`: read into the percentiles.
    #[serde(skip)]
    buckets: Vec<[i64; 13]>,
}

impl TargetSeries {
    fn new(account: &str, target: &str, n: usize) -> TargetSeries {
        TargetSeries {
            account: account.to_owned(),
            target: target.to_owned(),
            delivered: vec![0; n],
            failed: vec![0; n],
            dead: vec![0; n],
            p50_ms: vec![None; n],
            p99_ms: vec![None; n],
            pending: vec![None; n],
            oldest_s: vec![None; n],
            buckets: vec![[0; 13]; n],
        }
    }
}

impl Admin {
    pub(super) async fn charts(&self, query: &str) -> Result<Response<Full<Bytes>>, Failure> {
        let mut span = DEFAULT_MINUTES;
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "minutes" => {
                    span = (value.trim().parse::<i64>())
                        .map_err(|_| {
                            (
                                StatusCode::BAD_REQUEST,
                                "minutes must be a number".to_owned(),
                            )
                        })?
                        .clamp(1, MAX_MINUTES);
                }
                other => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        format!("unknown parameter {other:?}"),
                    ));
                }
            }
        }
        let last = minute_now();
        let first = last - span + 1;
        let counts = self
            .shared
            .store
            .minutes(first)
            .await
            .map_err(store_error)?;
        let n = usize::try_from(span).unwrap_or(0);
        let mut charts = Charts {
            minutes: (first..=last).map(|m| m * 60_000).collect(),
            callbacks: CallbackSeries {
                accepted: vec![0; n],
                duplicate: vec![0; n],
                rejected: vec![0; n],
            },
            targets: Vec::new(),
        };
        // Configured targets first, in their order, then any other the counts name; `place`
        // finds each one's series in `charts.targets`.
        let mut place: HashMap<(String, String), usize> = HashMap::new();
        for target in self.shared.routes.load().targets() {
            let (account, name) = (&*target.key.account, &*target.key.target);
            place.insert((account.to_owned(), name.to_owned()), charts.targets.len());
            charts.targets.push(TargetSeries::new(account, name, n));
        }
        for count in counts {
            let Some(at) = usize::try_from(count.minute - first)
                .ok()
                .filter(|at| *at < n)
            else {
                continue;
            };
            if count.target.is_empty() {
                let series = match &*count.name {
                    "accepted" => &mut charts.callbacks.accepted,
                    "duplicate" => &mut charts.callbacks.duplicate,
                    "rejected" => &mut charts.callbacks.rejected,
                    _ => continue,
                };
                series[at] += count.value;
                continue;
            }
            let at_target = *place
                .entry((count.account, count.target))
                .or_insert_with_key(|(account, target)| {
                    charts.targets.push(TargetSeries::new(account, target, n));
                    charts.targets.len() - 1
                });
            let series = &mut charts.targets[at_target];
            match &*count.name {
                "delivered" => series.delivered[at] += count.value,
                "retry" => series.failed[at] += count.value,
                "dead" => {
                    series.failed[at] += count.value;
                    series.dead[at] += count.value;
                }
                PENDING => series.pending[at] = Some(count.value),
                OLDEST_SECONDS => series.oldest_s[at] = Some(count.value),
                bucket => {
                    if let Some(b) = LATENCY_NAMES.iter().position(|name| *name == bucket) {
                        series.buckets[at][b] += count.value;
                    }
                }
            }
        }
        for series in &mut charts.targets {
            for (at, buckets) in series.buckets.iter().enumerate() {
                series.p50_ms[at] = percentile_ms(buckets, 0.5);
                series.p99_ms[at] = percentile_ms(buckets, 0.99);
            }
        }
        Ok(json(StatusCode::OK, &charts))
    }
}
