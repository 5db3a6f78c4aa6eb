//! Issue 29, backfill: a target added by SIGHUP gets the stored callbacks of a past window
//! that its filters take, each once, by `wechat-fanout backfill`; the other targets get
//! nothing again, a second run queues nothing, and a window older than what the store keeps
//! is refused.

use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use super::{post_to_binary, run_command, write_binary_config};
use crate::support::{
    Binary, StoreView, Target, Wx, event_xml, free_addr, no_jobs_left, settle, text_xml,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_added_by_sighup_is_backfilled_once_and_others_are_untouched() {
    let (crm, lake) = (Target::start(200).await, Target::start(200).await);
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let config = write_binary_config(
        dir.path(),
        listen,
        &format!(
            "{}{}",
            wx.account("main", ""),
            Wx::target("crm", &crm.url("/crm"), "")
        ),
    );
    let mut binary = Binary::serve(&config, listen, &dir.path().join("serve.log")).await;
    binary.wait_listening().await;

    let sent = [
        wx.seal(&text_xml("before the lake 1")),
        wx.seal(&event_xml("subscribe", "")),
        wx.seal(&text_xml("before the lake 2")),
    ];
    for sealed in &sent {
        assert_eq!(post_to_binary(listen, sealed).await.0, 200);
    }
    crm.wait_for(3).await;
    let stored = StoreView::admin_of(&config);
    no_jobs_left(&stored, "the crm's deliveries recorded").await;

    // The data lake is added (text only), and filled from the last hour.
    let text = std::fs::read_to_string(&config).unwrap();
    let with_lake = format!(
        "{text}{}",
        Wx::target("lake", &lake.url("/lake"), "msg_types = [\"text\"]")
    );
    std::fs::write(&config, with_lake).unwrap();
    binary.hangup();
    binary
        .wait_log("the reload", |log| log.contains("configuration reloaded"))
        .await;
    let args = ["--account", "main", "--target", "lake", "--since", "1h"];
    let filled = run_command(&config, "backfill", &args).await;
    let out = filled.ok();
    assert!(out.contains("queued 2 for main/lake"), "{out}");
    assert!(out.contains("skipped 1 not for it by its filters"), "{out}");
    let got = lake.wait_for(2).await;
    let mut bodies: Vec<&[u8]> = got.iter().map(|r| &r.body[..]).collect();
    bodies.sort();
    let mut texts: Vec<&[u8]> = [&sent[0], &sent[2]]
        .iter()
        .map(|s| s.body.as_bytes())
        .collect();
    texts.sort();
    assert_eq!(bodies, texts, "the text callbacks, byte-identical");
    assert!(got.iter().all(|r| r.attempt() == 1));
    assert!(got.iter().all(|r| r.path_and_query.starts_with("/lake?")
        && r.header("x-wechat-fanout-delivery").is_some()));
    no_jobs_left(&stored, "the backfilled deliveries recorded").await;

    // Again: nothing is queued twice, and nobody else got anything again.
    let again = run_command(&config, "backfill", &args).await;
    let out = again.ok();
    assert!(out.contains("queued 0 for main/lake"), "{out}");
    assert!(out.contains("skipped 2 already queued for it"), "{out}");
    settle().await;
    assert_eq!((lake.count(), crm.count()), (2, 3));

    // Older than what the store keeps (a day by default): refused, saying why.
    let old = ["--account", "main", "--target", "lake", "--since", "30d"];
    let refused = run_command(&config, "backfill", &old).await;
    assert_eq!(refused.code, Some(1), "{refused:#?}");
    assert!(
        refused.stderr.contains("store.delivered_retention_secs"),
        "{refused:#?}"
    );
    let unknown = ["--account", "main", "--target", "nobody", "--since", "1h"];
    let refused = run_command(&config, "backfill", &unknown).await;
    assert_eq!(refused.code, Some(1), "{refused:#?}");
    assert!(refused.stderr.contains("404"), "{refused:#?}");
}

/// A target with `order = "per_user"` is not backfilled: its users' newer callbacks are in its
/// lanes already. The admin API says why (400), as it does for an unknown target (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_target_is_not_backfilled() {
    let crm = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let toml = format!(
        "{}{}",
        wx.account("main", ""),
        Wx::target("crm", &crm.url("/crm"), "order = \"per_user\"")
    );
    let proxy = crate::support::Proxy::start_with_admin(&toml).await;
    let since = wechat_fanout::clock::now_ms() - 60_000;
    let refused = proxy
        .admin(
            reqwest::Method::POST,
            &format!("/targets/main/crm/backfill?since_ms={since}"),
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(refused.text().contains("per_user"), "{}", refused.text());
    let unknown = proxy
        .admin(
            reqwest::Method::POST,
            &format!("/targets/main/nobody/backfill?since_ms={since}"),
        )
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
}
