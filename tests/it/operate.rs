//! Operating the proxy in production, as an on-call engineer meets it: the admin listener
//! (health, readiness, metrics, dead letters), the commands besides `serve` (`dead-letters`,
//! `simulate`, `healthcheck`), the logs, and configuration reload on SIGHUP.
//!
//! The CLI commands are always the real binary, run against a proxy that is really serving:
//! in-process ([`Proxy::start_with_admin`](crate::support::Proxy::start_with_admin), its
//! effective config written to a file the CLI reads) or the binary itself for logs and signals.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use wechat_fanout::store::JobState;
use wechat_fanout::wechat::SealedRequest;

pub(crate) use crate::support::binary::admin_url;
use crate::support::binary::{Ran, run_async};
use crate::support::{FAST, JobRow, StoreView, client, eventually_async, free_addr, jobs};

mod backfill;
mod callbacks;
mod dead_letters;
mod health;
mod logs;
mod metrics;
mod redis;
mod reload;
mod simulate;

/// Writes `dir/config.toml` for the real binary: the WeChat port `listen`, the admin port on a
/// free port of its own (never the shared default), the store in `dir`, fast delivery, then
/// `rest` (accounts and targets). Also used by the restart tests.
pub(crate) fn write_binary_config(dir: &Path, listen: SocketAddr, rest: &str) -> PathBuf {
    let text = format!(
        "{FAST}[server]\nlisten = \"{listen}\"\nshutdown_grace_ms = 1000\n\
         [admin]\nlisten = \"{}\"\n[store]\npath = \"{}\"\n{rest}",
        free_addr(),
        dir.join("fanout.db").display(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write the config");
    path
}

/// POSTs `sealed` to `/wechat/main` of the binary listening on `listen`, as WeChat would: the
/// answer's status and body.
pub(crate) async fn post_to_binary(listen: SocketAddr, sealed: &SealedRequest) -> (u16, String) {
    post_to_binary_account(listen, "main", sealed).await
}

/// The same to `/wechat/{account}`.
pub(crate) async fn post_to_binary_account(
    listen: SocketAddr,
    account: &str,
    sealed: &SealedRequest,
) -> (u16, String) {
    let request = client()
        .post(format!("http://{listen}/wechat/{account}?{}", sealed.query))
        .header("content-type", sealed.content_type)
        .body(sealed.body.clone());
    status_and_text(request).await
}

/// `GET path` on the admin listener of the binary started with `config` (written by
/// [`write_binary_config`]): the answer's status and body.
pub(crate) async fn get_admin_of_binary(config: &Path, path: &str) -> (u16, String) {
    status_and_text(client().get(admin_url(config, path))).await
}

async fn status_and_text(request: reqwest::RequestBuilder) -> (u16, String) {
    let answer = request.send().await.expect("the binary answers");
    let status = answer.status().as_u16();
    (status, answer.text().await.expect("the answer's body"))
}

/// `wechat-fanout --config <config> <command> <args…>`, run to completion as an operator would.
pub(crate) async fn run_command(config: &Path, command: &str, args: &[&str]) -> Ran {
    let config = config.to_string_lossy();
    let mut all = vec!["--config", &config, command];
    all.extend(args);
    run_async(&all).await
}

/// The dead letters that `dead-letters list --json` prints for the binary started with `config`.
pub(crate) async fn listed_dead_letters(config: &Path) -> Vec<serde_json::Value> {
    let ran = run_command(config, "dead-letters", &["list", "--json"]).await;
    match serde_json::from_str(ran.ok()) {
        Ok(serde_json::Value::Array(letters)) => letters,
        other => panic!("not a JSON list ({other:?}): {ran:#?}"),
    }
}

/// The target of each of `letters`, in order.
pub(crate) fn targets_of(letters: &[serde_json::Value]) -> Vec<&str> {
    letters
        .iter()
        .map(|l| l["target"].as_str().expect("a letter's target"))
        .collect()
}

/// Waits until the jobs in the store are exactly `expected` (target, state, attempts), in any
/// order; returns them ordered by id.
async fn jobs_become(view: &StoreView, expected: &[(&str, JobState, u32)]) -> Vec<JobRow> {
    let key = |(target, state, attempts): (&str, JobState, u32)| {
        (target.to_owned(), format!("{state:?}"), attempts)
    };
    let mut expected: Vec<_> = expected.iter().copied().map(key).collect();
    expected.sort();
    eventually_async(&format!("the jobs to be {expected:?}"), || async {
        let rows = jobs(view).await;
        let mut seen: Vec<_> = (rows.iter())
            .map(|j| key((&j.target, j.state, j.attempts)))
            .collect();
        seen.sort();
        (seen == expected).then_some(rows)
    })
    .await
}
