//! Liveness and readiness, as a container runtime and a load balancer ask for them: the
//! `healthcheck` command (exit 0 or 1, no curl in the image) and `/readyz`, which must say 503
//! while the store cannot commit and 200 again once it can.

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use rusqlite::Connection;
use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use super::run_command;
use crate::support::binary::Ran;
use crate::support::{FAST, Proxy, Target, Wx, eventually_async, free_addr, text_xml};

async fn healthcheck(config: &Path, args: &[&str]) -> Ran {
    run_command(config, "healthcheck", args).await
}

async fn proxy() -> (Proxy, Target, Wx) {
    let target = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let toml = format!(
        "{FAST}{}{}",
        wx.account("main", ""),
        Wx::target("t", &target.url("/t"), ""),
    );
    (Proxy::start_with_admin(&toml).await, target, wx)
}

/// `HEALTHCHECK CMD wechat-fanout healthcheck`: 0 against a live proxy (liveness and, with
/// `--ready`, readiness), 1 when nothing listens, saying what it could not reach. The admin API
/// and the WeChat port are separate: neither answers the other's paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_against_a_live_proxy_and_1_when_nothing_listens() {
    let (proxy, _target, _wx) = proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let config = proxy.write_config(dir.path());

    assert_eq!(healthcheck(&config, &[]).await.ok(), "200 OK ok\n");
    assert_eq!(
        healthcheck(&config, &["--ready"]).await.ok(),
        "200 OK ready\n"
    );
    let explicit = proxy.admin_url();
    let ran = healthcheck(&config, &["--ready", "--admin-url", &explicit]).await;
    assert_eq!(ran.ok(), "200 OK ready\n");

    let nobody = format!("http://{}", free_addr());
    for args in [
        vec!["--admin-url", &nobody],
        vec!["--ready", "--admin-url", &nobody],
    ] {
        let ran = healthcheck(&config, &args).await;
        assert_eq!(ran.code, Some(1), "{ran:#?}");
        let path = if args[0] == "--ready" {
            "readyz"
        } else {
            "healthz"
        };
        assert!(
            ran.stderr
                .contains(&format!("cannot reach {nobody}/{path}")),
            "{ran:#?}"
        );
        assert_eq!(ran.stdout, "", "{ran:#?}");
    }

    assert_eq!(proxy.request(Method::GET, "/healthz").await.status, 404);
    assert_eq!(proxy.request(Method::GET, "/metrics").await.status, 404);
    let answer = proxy.admin(Method::GET, "/wechat/main").await;
    assert_eq!(answer.status, 404, "{answer:?}");
}

/// The incident: a backup job opens the SQLite file and holds its write lock. The proxy cannot
/// commit anything, so it must stop claiming to be ready (a load balancer then sends WeChat's
/// retries elsewhere), while staying alive (no restart would help). When the lock is released it
/// is ready again on its own and callbacks are stored and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_while_the_store_cannot_commit_and_recovers() {
    let (proxy, target, wx) = proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let config = proxy.write_config(dir.path());
    let ready = proxy.admin(Method::GET, "/readyz").await;
    assert_eq!((ready.status, ready.text().as_str()), (200, "ready\n"));

    let backup = Connection::open(&proxy.db).unwrap();
    backup.busy_timeout(Duration::from_secs(5)).unwrap();
    backup.execute_batch("BEGIN IMMEDIATE").unwrap();

    let stuck = proxy.admin(Method::GET, "/readyz").await;
    assert_eq!(
        (stuck.status, stuck.text().as_str()),
        (503, "not ready: the store did not commit within 2 s\n"),
        "{stuck:?}"
    );
    let ran = healthcheck(&config, &["--ready"]).await;
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    assert_eq!(
        ran.stdout,
        "503 Service Unavailable not ready: the store did not commit within 2 s\n"
    );
    let live = proxy.admin(Method::GET, "/healthz").await;
    assert_eq!((live.status, live.text().as_str()), (200, "ok\n"));
    assert_eq!(healthcheck(&config, &[]).await.ok(), "200 OK ok\n");

    backup.execute_batch("COMMIT").unwrap();
    drop(backup);
    eventually_async("/readyz to say 200 again", || async {
        let answer = proxy.admin(Method::GET, "/readyz").await;
        (answer.status == 200).then_some(())
    })
    .await;
    assert_eq!(
        healthcheck(&config, &["--ready"]).await.ok(),
        "200 OK ready\n"
    );
    let sealed = wx.seal(&text_xml("after the backup"));
    proxy.post("main", &sealed).await.assert_success();
    let got = target.wait_for(1).await;
    assert_eq!(got[0].body, sealed.body.as_bytes());
}
