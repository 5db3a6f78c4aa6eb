//! Dead letters, from the on-call engineer's chair: see what died and why, fix the target,
//! replay the same bytes, purge what is not worth keeping; with the CLI (the real binary against
//! the running proxy's admin port) and with the JSON admin API directly.

use std::path::Path;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};
use wechat_fanout::clock::now_ms;
use wechat_fanout::config::Mode;
use wechat_fanout::store::JobState;
use wechat_fanout::wechat::{Kind, SealedRequest};

use super::{jobs_become, run_command};
use crate::support::binary::Ran;
use crate::support::scrape::Scrape;
use crate::support::{FAST, JobRow, Proxy, Target, Wx, eventually, jobs, text_json, text_xml};

/// `wechat-fanout --config <config> dead-letters <args…>`.
async fn dead_letters(config: &Path, args: &[&str]) -> Ran {
    run_command(config, "dead-letters", args).await
}

/// The `nth` job of `target` in `rows` (ordered by id, so by arrival).
fn find<'a>(rows: &'a [JobRow], target: &str, nth: usize) -> &'a JobRow {
    rows.iter()
        .filter(|j| j.target == target)
        .nth(nth)
        .unwrap_or_else(|| panic!("no job #{nth} of {target}: {rows:?}"))
}

fn parse(ran: &Ran) -> Value {
    serde_json::from_str(ran.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {ran:#?}"))
}

/// What `show` must say about a letter: the exact request it replays, and every failed attempt.
fn assert_shows(shown: &Value, sealed: &SealedRequest, attempts: &[(u64, u64)]) {
    let request = &shown["request"];
    assert_eq!(request["method"], "POST", "{shown:#}");
    assert_eq!(request["query"], sealed.query.as_str(), "{shown:#}");
    assert_eq!(request["body"], sealed.body.as_str(), "{shown:#}");
    let exact = base64::engine::general_purpose::STANDARD
        .decode(request["body_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(exact, sealed.body.as_bytes());
    assert_eq!(
        request["headers"],
        json!([
            ["content-type", sealed.content_type],
            ["x-wechat-fanout-account", shown["account"]]
        ]),
        "{shown:#}"
    );
    let log: Vec<(u64, u64, String)> = shown["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap(),
                a["status"].as_u64().unwrap(),
                a["error"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(u64, u64, String)> = attempts
        .iter()
        .map(|(n, status)| (*n, *status, format!("target answered {status}")))
        .collect();
    assert_eq!(log, expected, "{shown:#}");
    for attempt in shown["attempt_log"].as_array().unwrap() {
        let at = attempt["at_ms"].as_i64().unwrap();
        assert!(at >= shown["received_at_ms"].as_i64().unwrap() && at <= now_ms());
    }
}

/// The incident: the CRM answered 500 all night and the audit service refused (400) a field it
/// did not know yet; the shop's data lake was down too. In the morning the engineer lists what
/// died, reads one letter in full, fixes the CRM and replays one letter, then the rest of the
/// CRM's, then everything; what arrives is byte for byte what WeChat sent, and a replay that
/// fails again is recorded as new attempts. What is left is purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_night_of_dead_letters_is_listed_replayed_and_purged_with_the_cli() {
    let crm = Target::start(500).await;
    let audit = Target::start(400).await;
    let lake = Target::start(500).await;
    let main = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let shop = Wx::new(Kind::MiniProgram, Mode::Safe);
    let toml = format!(
        "{FAST}{}{}{}{}{}",
        main.account("main", ""),
        Wx::target("crm", &crm.url("/crm"), "max_attempts = 3"),
        Wx::target("audit", &audit.url("/audit"), ""),
        shop.account("shop", ""),
        Wx::target("lake", &lake.url("/lake"), "max_attempts = 2"),
    );
    let proxy = Proxy::start_with_admin(&toml).await;
    let dir = tempfile::tempdir().unwrap();
    let config = proxy.write_config(dir.path());

    let first = main.seal(&text_xml("first"));
    let second = main.seal(&text_xml("second"));
    let order = shop.seal(&text_json("order 42"));
    for (account, sealed) in [("main", &first), ("main", &second), ("shop", &order)] {
        proxy.post(account, sealed).await.assert_success();
    }
    let rows = jobs_become(
        &proxy.store(),
        &[
            ("crm", JobState::Dead, 3),
            ("crm", JobState::Dead, 3),
            ("audit", JobState::Dead, 1),
            ("audit", JobState::Dead, 1),
            ("lake", JobState::Dead, 2),
        ],
    )
    .await;
    // Jobs are numbered in arrival order: the first callback's come first.
    let (crm_first, crm_second) = (find(&rows, "crm", 0).id, find(&rows, "crm", 1).id);
    let (audit_first, audit_second) = (find(&rows, "audit", 0).id, find(&rows, "audit", 1).id);
    let lake_order = find(&rows, "lake", 0).id;

    // The table a person reads: aligned columns, readable times.
    let listed = dead_letters(&config, &["list"]).await;
    let lines: Vec<&str> = listed.ok().lines().collect();
    assert_eq!(lines.len(), 7, "{listed:#?}");
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "ID",
            "ACCOUNT",
            "TARGET",
            "TYPE/EVENT",
            "DIED",
            "ATTEMPTS",
            "STATUS",
            "LAST",
            "ERROR"
        ],
        "{listed:#?}"
    );
    assert_eq!(lines[6], "5 dead letters");
    let mut table: Vec<Vec<&str>> = lines[1..6]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    for (row, line) in table.iter_mut().zip(&lines[1..6]) {
        // Each value starts where its column's title does.
        for (title, value) in [("ACCOUNT", row[1]), ("TARGET", row[2]), ("DIED", row[4])] {
            let column = lines[0].find(title).unwrap();
            assert!(line[column..].starts_with(value), "{title}: {listed:#?}");
        }
        let died = row.remove(4);
        assert!(
            died.len() == 20 && died.starts_with("20") && died.ends_with('Z'),
            "an RFC 3339 time in UTC: {died}"
        );
    }
    table.sort();
    let ids = [crm_first, crm_second, audit_first, audit_second, lake_order].map(|i| i.to_string());
    let mut expected: Vec<Vec<&str>> = vec![
        vec![
            &ids[0], "main", "crm", "text", "3", "500", "target", "answered", "500",
        ],
        vec![
            &ids[1], "main", "crm", "text", "3", "500", "target", "answered", "500",
        ],
        vec![
            &ids[2], "main", "audit", "text", "1", "400", "target", "answered", "400",
        ],
        vec![
            &ids[3], "main", "audit", "text", "1", "400", "target", "answered", "400",
        ],
        vec![
            &ids[4], "shop", "lake", "text", "2", "500", "target", "answered", "500",
        ],
    ];
    expected.sort();
    assert_eq!(table, expected, "{listed:#?}");
    // Times as people write them.
    let recent = dead_letters(&config, &["list", "--since", "1h"]).await;
    assert!(recent.ok().ends_with("5 dead letters\n"), "{recent:#?}");
    let older = dead_letters(&config, &["list", "--until", "2000-01-01T00:00:00Z"]).await;
    assert_eq!(
        older.ok().lines().last(),
        Some("0 dead letters"),
        "{older:#?}"
    );
    let wrong = dead_letters(&config, &["list", "--since", "yesterday"]).await;
    assert_eq!(wrong.code, Some(2), "{wrong:#?}");
    assert!(wrong.stderr.contains("neither a time ago"), "{wrong:#?}");

    // One letter as a person reads it: the decrypted message (the config has the key), user
    // ids hidden, every attempt with its time.
    let readable = dead_letters(&config, &["show", &crm_first.to_string()]).await;
    let text = readable.ok();
    assert!(
        text.starts_with(&format!("dead letter {crm_first} (callback ")),
        "{text}"
    );
    assert!(text.contains("message (decrypted):\n  <xml>"), "{text}");
    assert!(
        text.contains("<FromUserName>(hidden)</FromUserName>"),
        "{text}"
    );
    assert!(text.contains("first"), "{text}");
    assert!(text.contains("openid=%28hidden%29"), "{text}");
    assert!(!text.contains("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"), "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("target answered 500"))
            .count(),
        3,
        "{text}"
    );

    // The JSON, filtered to the CRM.
    let crm_letters = parse(&dead_letters(&config, &["list", "--json", "--target", "crm"]).await);
    let crm_letters = crm_letters.as_array().unwrap();
    assert_eq!(crm_letters.len(), 2, "{crm_letters:#?}");
    for letter in crm_letters {
        assert_eq!(
            (&letter["account"], &letter["target"], &letter["msg_type"]),
            (&json!("main"), &json!("crm"), &json!("text"))
        );
        assert_eq!(
            (
                &letter["attempts"],
                &letter["last_status"],
                &letter["last_error"]
            ),
            (&json!(3), &json!(500), &json!("target answered 500"))
        );
    }
    // Newest death first.
    assert!(crm_letters[0]["died_at_ms"].as_i64() >= crm_letters[1]["died_at_ms"].as_i64());

    // One letter in full, by the config's admin address and by an explicit one.
    let shown = parse(&dead_letters(&config, &["show", &crm_first.to_string(), "--json"]).await);
    assert_eq!(shown["id"], crm_first);
    assert_shows(&shown, &first, &[(1, 500), (2, 500), (3, 500)]);
    let url = proxy.admin_url();
    let again = dead_letters(
        &config,
        &[
            "show",
            &lake_order.to_string(),
            "--json",
            "--admin-url",
            &url,
        ],
    )
    .await;
    assert_shows(&parse(&again), &order, &[(1, 500), (2, 500)]);
    let missing = dead_letters(&config, &["show", "999999"]).await;
    assert_eq!(missing.code, Some(1), "{missing:#?}");
    assert!(
        missing
            .stderr
            .contains("admin API answered 404 Not Found: no dead letter 999999"),
        "{missing:#?}"
    );

    // The CRM is fixed: replay one letter. The same bytes and query arrive, as attempt 4 of the
    // same delivery, and the delivery is done.
    crm.set_status(200);
    let replayed = dead_letters(&config, &["replay", &crm_first.to_string()]).await;
    assert_eq!(replayed.ok(), "replayed 1\n");
    let got = crm.wait_for(7).await;
    let redelivered = &got[6];
    assert_eq!(redelivered.body, first.body.as_bytes());
    assert_eq!(redelivered.path_and_query, format!("/crm?{}", first.query));
    assert_eq!(redelivered.header("content-type"), Some("text/xml"));
    assert_eq!(
        (redelivered.delivery(), redelivered.attempt()),
        (crm_first, 4)
    );
    jobs_become(
        &proxy.store(),
        &[
            ("crm", JobState::Dead, 3),
            ("audit", JobState::Dead, 1),
            ("audit", JobState::Dead, 1),
            ("lake", JobState::Dead, 2),
        ],
    )
    .await;
    let m = Scrape::fetch(&proxy).await;
    assert_eq!(
        m.value(
            "wechat_fanout_delivery_attempts_total",
            "account=main,result=delivered,target=crm"
        ),
        1.0
    );

    // The audit service still refuses: its replay is a new attempt, recorded, and dead again.
    let replayed = dead_letters(&config, &["replay", &audit_first.to_string()]).await;
    assert_eq!(replayed.ok(), "replayed 1\n");
    let got = audit.wait_for(3).await;
    assert_eq!(got[2].body, first.body.as_bytes());
    assert_eq!((got[2].delivery(), got[2].attempt()), (audit_first, 2));
    jobs_become(
        &proxy.store(),
        &[
            ("crm", JobState::Dead, 3),
            ("audit", JobState::Dead, 2),
            ("audit", JobState::Dead, 1),
            ("lake", JobState::Dead, 2),
        ],
    )
    .await;
    let shown = parse(&dead_letters(&config, &["show", &audit_first.to_string(), "--json"]).await);
    assert_shows(&shown, &first, &[(1, 400), (2, 400)]);

    // The rest of the CRM's letters.
    let replayed = dead_letters(&config, &["replay", "--target", "crm"]).await;
    assert_eq!(replayed.ok(), "replayed 1\n");
    let got = crm.wait_for(8).await;
    assert_eq!(got[7].body, second.body.as_bytes());
    assert_eq!(got[7].path_and_query, format!("/crm?{}", second.query));
    assert_eq!((got[7].delivery(), got[7].attempt()), (crm_second, 4));
    jobs_become(
        &proxy.store(),
        &[
            ("audit", JobState::Dead, 2),
            ("audit", JobState::Dead, 1),
            ("lake", JobState::Dead, 2),
        ],
    )
    .await;

    // Replaying everything needs saying so; then the lake (fixed) gets the shop's JSON.
    let refused = dead_letters(&config, &["replay"]).await;
    assert_eq!(refused.code, Some(1), "{refused:#?}");
    assert!(
        refused.stderr.contains(
            "name a dead letter id, a filter (--account, --target, --since, --until), or --all to replay every one"
        ),
        "{refused:#?}"
    );
    assert_eq!(audit.count(), 3, "a refused replay sends nothing");
    lake.set_status(200);
    let replayed = dead_letters(&config, &["replay", "--all"]).await;
    assert_eq!(replayed.ok(), "replayed 3\n");
    let got = lake.wait_for(3).await;
    assert_eq!(got[2].body, order.body.as_bytes());
    assert_eq!(got[2].path_and_query, format!("/lake?{}", order.query));
    assert_eq!(got[2].header("content-type"), Some("application/json"));
    let rows = jobs_become(
        &proxy.store(),
        &[("audit", JobState::Dead, 3), ("audit", JobState::Dead, 2)],
    )
    .await;
    assert_eq!(
        rows.iter().map(|j| j.id).collect::<Vec<_>>(),
        [audit_first, audit_second]
    );

    // Purge: one, then the rest, which needs --all.
    let refused = dead_letters(&config, &["purge"]).await;
    assert_eq!(refused.code, Some(1), "{refused:#?}");
    assert!(
        refused.stderr.contains("or --all to purge every one"),
        "{refused:#?}"
    );
    assert_eq!(
        jobs(&proxy.store()).await.len(),
        2,
        "a refused purge deletes nothing"
    );
    let purged = dead_letters(&config, &["purge", &audit_second.to_string()]).await;
    assert_eq!(purged.ok(), "purged 1\n");
    let missing = dead_letters(&config, &["purge", &audit_second.to_string()]).await;
    assert_eq!(missing.code, Some(1), "{missing:#?}");
    assert!(missing.stderr.contains("404 Not Found"), "{missing:#?}");
    let purged = dead_letters(&config, &["purge", "--all"]).await;
    assert_eq!(purged.ok(), "purged 1\n");
    assert!(jobs(&proxy.store()).await.is_empty());
    let listed = dead_letters(&config, &["list"]).await;
    assert!(listed.ok().ends_with("\n0 dead letters\n"), "{listed:#?}");
}

/// The same operations through the JSON API, as a script or a dashboard would use it: filters
/// by account, target and time of death, and the guards against replaying or purging more than
/// was asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_api_filters_by_account_target_and_time() {
    let crm = Target::start(400).await;
    let lake = Target::start(400).await;
    let main = Wx::new(Kind::OfficialAccount, Mode::Compatible);
    let shop = Wx::new(Kind::MiniProgram, Mode::Plaintext);
    let toml = format!(
        "{FAST}{}{}{}{}",
        main.account("main", ""),
        Wx::target("crm", &crm.url("/crm"), ""),
        shop.account("shop", ""),
        Wx::target("lake", &lake.url("/lake"), ""),
    );
    let proxy = Proxy::start_with_admin(&toml).await;
    let get = |path: String| {
        let proxy = &proxy;
        async move {
            let answer = proxy.admin(Method::GET, &path).await;
            let body: Value = serde_json::from_slice(&answer.body)
                .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {answer:?}"));
            (answer.status, body)
        }
    };
    let ids = |letters: &Value| -> Vec<i64> {
        letters
            .as_array()
            .unwrap_or_else(|| panic!("not a list: {letters:#}"))
            .iter()
            .map(|l| l["id"].as_i64().unwrap())
            .collect()
    };

    // The shop's letter dies first; the main account's two strictly later.
    let order = shop.seal(&text_json("order 7"));
    proxy.post("shop", &order).await.assert_success();
    let rows = jobs_become(&proxy.store(), &[("lake", JobState::Dead, 1)]).await;
    let lake_id = rows[0].id;
    let (_, all) = get("/dead-letters".into()).await;
    let shop_died = all[0]["died_at_ms"].as_i64().unwrap();
    eventually("the clock to pass the shop's death", || {
        (now_ms() > shop_died).then_some(())
    })
    .await;
    for n in 0..2 {
        let sealed = main.seal(&text_xml(&format!("main {n}")));
        proxy.post("main", &sealed).await.assert_success();
    }
    let rows = jobs_become(
        &proxy.store(),
        &[
            ("lake", JobState::Dead, 1),
            ("crm", JobState::Dead, 1),
            ("crm", JobState::Dead, 1),
        ],
    )
    .await;
    let (crm_a, crm_b) = (find(&rows, "crm", 0).id, find(&rows, "crm", 1).id);

    let (status, all) = get("/dead-letters".into()).await;
    assert_eq!(status, 200);
    let mut listed = ids(&all);
    listed.sort();
    assert_eq!(listed, [lake_id, crm_a, crm_b]);
    assert_eq!(
        ids(&all).last(),
        Some(&lake_id),
        "newest death first: {all:#}"
    );
    let cases = [
        ("account=shop".to_owned(), vec![lake_id]),
        ("account=main".to_owned(), vec![crm_a, crm_b]),
        ("target=crm".to_owned(), vec![crm_a, crm_b]),
        ("account=main&target=lake".to_owned(), vec![]),
        (format!("until_ms={}", shop_died + 1), vec![lake_id]),
        (format!("since_ms={}", shop_died + 1), vec![crm_a, crm_b]),
        (format!("since_ms={shop_died}&account=shop"), vec![lake_id]),
    ];
    for (query, expected) in cases {
        let (status, letters) = get(format!("/dead-letters?{query}")).await;
        assert_eq!(status, 200, "{query}: {letters:#}");
        let mut got = ids(&letters);
        got.sort();
        assert_eq!(got, expected, "{query}: {letters:#}");
    }
    let (_, one) = get("/dead-letters?limit=1".into()).await;
    assert_eq!(ids(&one), ids(&all)[..1]);

    let (status, shown) = get(format!("/dead-letters/{lake_id}")).await;
    assert_eq!(status, 200);
    assert_shows(&shown, &order, &[(1, 400)]);
    assert_eq!(shown["account"], "shop");

    for (method, path, status, error) in [
        (
            Method::GET,
            "/dead-letters?colour=red",
            400,
            "unknown parameter \"colour\"",
        ),
        (
            Method::GET,
            "/dead-letters?since_ms=yesterday",
            400,
            "since_ms must be a number",
        ),
        (
            Method::GET,
            "/dead-letters/abc",
            400,
            "not a dead-letter id: \"abc\"",
        ),
        (
            Method::GET,
            "/dead-letters/999999",
            404,
            "no dead letter 999999",
        ),
        (
            Method::POST,
            "/dead-letters/999999/replay",
            404,
            "no dead letter 999999",
        ),
        (
            Method::DELETE,
            "/dead-letters/999999",
            404,
            "no dead letter 999999",
        ),
        (
            Method::DELETE,
            "/dead-letters",
            400,
            "purging every dead letter needs all=true (or a filter)",
        ),
    ] {
        let answer = proxy.admin(method.clone(), path).await;
        let body: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(
            (answer.status, body["error"].as_str()),
            (status, Some(error)),
            "{method} {path}"
        );
    }
    assert_eq!(
        jobs(&proxy.store()).await.len(),
        3,
        "refused requests change nothing"
    );

    // `limit` is for listing: a replay or purge "limited" to one must not touch all of them.
    for method in [Method::POST, Method::DELETE] {
        let path = match method {
            Method::POST => "/dead-letters/replay?limit=1",
            _ => "/dead-letters?limit=1",
        };
        let answer = proxy.admin(method.clone(), path).await;
        assert_eq!(answer.status, 400, "{method} {path}: {answer:?}");
        let rows = jobs(&proxy.store()).await;
        assert_eq!(rows.len(), 3, "{method} {path}: {rows:?}");
        assert!(
            rows.iter()
                .all(|j| j.state == JobState::Dead && j.attempts == 1),
            "{rows:?}"
        );
    }

    // Replay the shop's (the lake still refuses: dead again, attempt 2), purge the CRM's.
    let answer = proxy
        .admin(Method::POST, "/dead-letters/replay?account=shop")
        .await;
    assert_eq!(
        (answer.status, answer.text().replace([' ', '\n'], "")),
        (200, "{\"not_configured\":0,\"replayed\":1}".into())
    );
    let got = lake.wait_for(2).await;
    assert_eq!(got[1].body, order.body.as_bytes());
    assert_eq!(got[1].path_and_query, format!("/lake?{}", order.query));
    jobs_become(
        &proxy.store(),
        &[
            ("lake", JobState::Dead, 2),
            ("crm", JobState::Dead, 1),
            ("crm", JobState::Dead, 1),
        ],
    )
    .await;
    let answer = proxy
        .admin(Method::DELETE, "/dead-letters?target=crm")
        .await;
    assert_eq!(
        (answer.status, answer.text().replace([' ', '\n'], "")),
        (200, "{\"purged\":2}".into())
    );
    let answer = proxy.admin(Method::DELETE, "/dead-letters?all=true").await;
    assert_eq!(
        (answer.status, answer.text().replace([' ', '\n'], "")),
        (200, "{\"purged\":1}".into())
    );
    let (_, none) = get("/dead-letters".into()).await;
    assert_eq!(none, json!([]));
    assert!(jobs(&proxy.store()).await.is_empty());
    assert_eq!(crm.count(), 2, "purged letters are not delivered");
}
