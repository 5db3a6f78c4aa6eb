//! What `deploy/` ships works with the real tools an operator runs it with, not only in our
//! heads: the alert rules pass `promtool check rules` and their unit tests (`promtool test
//! rules`), the example Prometheus configuration passes `promtool check config`, the systemd unit
//! passes `systemd-analyze verify` with nothing to say, and every query of the Grafana dashboard
//! and every alert rule runs on Debian's real `prometheus` (2.42) scraping the real binary while
//! it takes signed callbacks, delivers them to a target that answers and to one that always
//! answers 503 (retries, dead letters, a backlog). The queries of what that traffic made return
//! data.
//!
//! Needs `promtool` and `prometheus` (Debian's `prometheus` package) and `systemd-analyze`
//! (`systemd`): `scripts/test` installs them when missing. Without them these tests fail; none
//! is skipped. Its own test binary, so that the Prometheus it starts shares the machine with as
//! little else as possible. Every process it starts listens on loopback only and is killed when
//! the test ends, passed or failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code, unused_imports)]
#[path = "it/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use support::binary::EXE;
use support::{Binary, Target, Wx, client, free_addr, raw_http, text_xml};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a tool the deployment files are checked with; fails the test if it is not installed.
fn tool(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {program} ({e}): install it (Debian: apt-get install prometheus \
                 systemd), or run scripts/test, which does"
            )
        })
}

/// Asserts exit 0 and returns stdout and stderr together, for the checks on what was said.
fn succeeds(program: &str, args: &[&str]) -> String {
    let output = tool(program, args);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "`{program} {}` failed with {}:\n{said}",
        args.join(" "),
        output.status
    );
    said
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let said = succeeds(
        "promtool",
        &["check", "rules", "deploy/prometheus/alerts.yml"],
    );
    let rules = alert_names().len();
    assert!(
        said.contains(&format!("SUCCESS: {rules} rules found")),
        "{said}"
    );
    succeeds(
        "promtool",
        &["test", "rules", "deploy/prometheus/alerts.test.yml"],
    );
}

#[test]
fn every_alert_has_a_unit_test_and_a_section_in_the_docs() {
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(root().join("deploy/prometheus/alerts.test.yml")).unwrap();
    let docs = std::fs::read_to_string(root().join("docs/monitoring.md")).unwrap();
    for name in alert_names() {
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "{name} has no test in alerts.test.yml"
        );
        assert!(
            docs.contains(&format!("### {name}\n")),
            "{name} has no section in docs/monitoring.md"
        );
    }
    // The links the alerts send (tests/docs.rs checks the pages' own).
    let anchors: BTreeSet<String> = (docs.lines())
        .filter_map(|line| line.strip_prefix("## ").or(line.strip_prefix("### ")))
        .map(|heading| {
            (heading.to_lowercase().chars())
                .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    let links: Vec<&str> = (rules.split("docs/monitoring.md#").skip(1))
        .map(|rest| {
            let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_'));
            &rest[..end.unwrap_or(rest.len())]
        })
        .collect();
    assert!(links.len() >= alert_names().len(), "{links:?}");
    for link in links {
        assert!(
            anchors.contains(link),
            "docs/monitoring.md#{link}: no such heading"
        );
    }
}

#[test]
fn the_example_prometheus_configuration_passes_promtool() {
    let said = succeeds(
        "promtool",
        &["check", "config", "deploy/prometheus/prometheus.yml"],
    );
    // The rule file it names resolved and was checked too.
    assert!(said.contains("SUCCESS: 1 rule files found"), "{said}");
    assert!(said.contains("alerts.yml"), "{said}");
}

/// The unit as shipped, but for the binary's path: `systemd-analyze verify` checks that
/// ExecStart names an executable, and the binary cargo built for this run stands in for
/// `/usr/local/bin/wechat-fanout` (the test does not install into the system). Nothing else
/// changes: a unit that verifies only once weakened would fail here.
#[test]
fn the_systemd_unit_verifies_clean_with_the_binary_at_its_exec_start_path() {
    const INSTALLED: &str = "/usr/local/bin/wechat-fanout";
    let unit =
        std::fs::read_to_string(root().join("deploy/systemd/wechat-fanout.service")).unwrap();
    let exec_start =
        format!("ExecStart={INSTALLED} serve --config /etc/wechat-fanout/config.toml\n");
    assert_eq!(unit.matches(&exec_start).count(), 1, "{unit}");
    assert_eq!(unit.matches(INSTALLED).count(), 1, "{unit}");
    assert!(
        !EXE.contains(char::is_whitespace),
        "systemd would split the path {EXE:?}"
    );
    for setting in [
        "DynamicUser=yes",
        "StateDirectory=wechat-fanout",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "Restart=on-failure",
        "EnvironmentFile=-/etc/wechat-fanout/env",
    ] {
        assert!(unit.contains(setting), "the unit lost `{setting}`");
    }
    // Past the default server.shutdown_grace_ms (10 s), or systemd kills a draining process.
    let stop = unit
        .lines()
        .find_map(|line| line.strip_prefix("TimeoutStopSec="))
        .and_then(|value| value.strip_suffix('s'))
        .and_then(|secs| secs.parse::<u64>().ok())
        .expect("TimeoutStopSec=<n>s");
    assert!(stop >= 15, "TimeoutStopSec={stop}s");

    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("wechat-fanout.service");
    std::fs::write(&copy, unit.replace(INSTALLED, EXE)).unwrap();
    let copy = copy.to_str().unwrap();
    let said = succeeds("systemd-analyze", &["verify", copy]);
    assert_eq!(said, "", "systemd-analyze verify had something to say");

    // The hardening, as systemd scores it (0 is a sealed box, 10 a process with every right):
    // the unit's directives above, and no new right given back unnoticed.
    let said = succeeds("systemd-analyze", &["security", "--offline=yes", copy]);
    let exposure: f64 = said
        .lines()
        .find_map(|line| line.split("wechat-fanout.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level:\n{said}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{said}");
}

/// The alert name of each rule in alerts.yml, in order (the warning and the critical of the
/// oldest pending delivery share one).
fn alert_names() -> Vec<String> {
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    let mut names: Vec<String> = Vec::new();
    for line in rules.lines() {
        if let Some(name) = line.trim_start().strip_prefix("- alert: ") {
            names.push(name.trim().to_owned());
        }
    }
    names
}

/// The account's targets: `bot` answers 200 (and owns the replies), `crm` always answers 503.
/// Two attempts each, 50 ms apart at first: `crm`'s callbacks become dead letters within a
/// second, and its circuit breaker keeps some pending meanwhile.
const SETTINGS: &str = r#"
[delivery]
poll_interval_ms = 20

[target_defaults]
timeout_ms = 2000
max_attempts = 2
backoff_initial_ms = 50
backoff_max_ms = 200
"#;

/// Callbacks a second, one in ten of them with a signature that does not match.
const RATE: u32 = 20;

/// What the dashboard's template variables stand for in the first pass: every value, as
/// Grafana sends "All" (`allValue`).
const ALL: &str = ".*";

/// The dashboard's panels whose queries the traffic must have given data to (the others,
/// shadow targets and late replies, need features this proxy does not use).
const WITH_DATA: &[&str] = &[
    "Callbacks per second, by outcome",
    "Rejected callbacks per second, by reason",
    "Time to answer WeChat (p50, p99)",
    "Reply owner's answers, by outcome",
    "Delivery attempts per second, by target and result",
    "Delivery latency p99, by target",
    "Pending and in-flight deliveries, by target",
    "Dead letters, by target",
    "Oldest pending delivery, by target",
    "Store ready",
    "Store usage",
    "Admin requests refused, by reason",
    "Console event streams",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alert_rule_runs_on_prometheus_scraping_the_proxy() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (bot, crm) = (Target::start(200).await, Target::start(503).await);
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let (listen, admin) = (free_addr(), free_addr());
    let config = format!(
        "{SETTINGS}[server]\nlisten = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\n\
         [store]\npath = \"{}\"\nsynchronous = \"normal\"\n{}{}{}",
        dir.path().join("fanout.db").display(),
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", &bot.url("/wx"), ""),
        Wx::target("crm", &crm.url("/wechat"), ""),
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let mut binary = Binary::serve(&path, listen, &dir.path().join("proxy.log")).await;
    binary.wait_listening().await;
    binary.wait_for_port(admin, Duration::from_millis(20)).await;

    let traffic = tokio::spawn(callbacks(listen, wx));
    // An admin request under a name the listener does not answer to: a refusal to count.
    let (status, _) = raw_http(
        admin,
        b"GET /dead-letters HTTP/1.1\r\nHost: fanout.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 403);

    let prometheus = Prometheus::start(dir.path(), admin).await;
    // Several scrapes with traffic in them (rates need two samples in their window), and what
    // the failing target is for: dead letters, and deliveries pending.
    for (what, expr) in [
        (
            "5 successful scrapes",
            "sum_over_time(up{job=\"wechat-fanout\"}[1m]) >= 5",
        ),
        (
            "dead letters of crm",
            "wechat_fanout_queue_jobs{target=\"crm\", state=\"dead\"} > 0",
        ),
        (
            "pending deliveries to crm",
            "max_over_time(wechat_fanout_queue_jobs{target=\"crm\", state=\"pending\"}[1m]) > 0",
        ),
    ] {
        prometheus.wait_for(what, expr, &binary).await;
    }

    // The rules, as Prometheus loaded them from alerts.yml: all of them, each evaluated without
    // an error on these series.
    let rules = prometheus.rules_evaluated(alert_names().len()).await;
    for (name, query) in &rules {
        prometheus.query_ok(query).await;
        let firing_now = prometheus.series(query, &["target"]).await;
        let crm = BTreeSet::from([vec!["crm".to_owned()]]);
        match name.as_str() {
            // crm fails every attempt and makes dead letters; bot delivers.
            "WechatFanoutTargetDown" | "WechatFanoutDeadLetters" => {
                assert_eq!(firing_now, crm, "{name}: {query}");
            }
            // crm's circuit breaker may hold more than the floor back by now.
            "WechatFanoutBacklogGrowing" => {
                assert!(firing_now.is_subset(&crm), "{name}: {firing_now:?}");
            }
            // The store's file system may be nearly full on this machine: not ours to say.
            "WechatFanoutStoreNearlyFull" => {}
            _ => assert!(firing_now.is_empty(), "{name}: {firing_now:?}"),
        }
    }

    // The dashboard: every panel's every query, first as with "All" chosen in each variable,
    // then with the first value each variable's own query offers, as Grafana shows it opened.
    let dashboard = Dashboard::load();
    let all: Vec<(&str, String)> = dashboard
        .variables
        .iter()
        .map(|(name, _)| (name.as_str(), ALL.to_owned()))
        .collect();
    let mut chosen: Vec<(&str, String)> = Vec::new();
    for (name, query) in &dashboard.variables {
        let values = prometheus.label_values(&substitute(query, &chosen)).await;
        let first = values
            .first()
            .unwrap_or_else(|| panic!("variable {name}: `{query}` offers nothing"));
        chosen.push((name.as_str(), regex_escape(first)));
    }
    for values in [&all, &chosen] {
        for (title, expr) in &dashboard.queries {
            let query = substitute(expr, values);
            let result = prometheus.query_ok(&query).await;
            if WITH_DATA.contains(&title.as_str()) {
                assert!(
                    result
                        .iter()
                        .any(|sample| sample["value"][1].as_str() != Some("NaN")),
                    "panel {title:?}: no data from `{query}`: {result:?}"
                );
            }
        }
    }

    traffic.abort();
    assert!(binary.is_running(), "{}", binary.log());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

/// Signed callbacks to account `main` at [`RATE`] a second until aborted; one in ten has a
/// `msg_signature` that does not match its body (rejected: `bad_msg_signature`).
async fn callbacks(listen: SocketAddr, wx: Wx) {
    let client = client();
    let every = Duration::from_secs(1) / RATE;
    for n in 0u64.. {
        let sealed = wx.seal(&text_xml(&format!("callback {n}")));
        let body = if n % 10 == 9 {
            wx.seal(&text_xml("another body")).body
        } else {
            sealed.body
        };
        // What the proxy answered shows in its metrics, which the test reads.
        let _ = (client.post(format!("http://{listen}/wechat/main?{}", sealed.query)))
            .header("content-type", sealed.content_type)
            .body(body)
            .send()
            .await;
        tokio::time::sleep(every).await;
    }
}

/// The dashboard's template variables and queries.
struct Dashboard {
    /// Each query variable and its `label_values(selector, label)` query, in order (a later one
    /// may use an earlier one).
    variables: Vec<(String, String)>,
    /// Each panel's title and each of its queries' `expr`.
    queries: Vec<(String, String)>,
}

impl Dashboard {
    fn load() -> Dashboard {
        let path = root().join("deploy/grafana/wechat-fanout.json");
        let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let schema = json["schemaVersion"].as_u64().unwrap();
        assert!((36..=41).contains(&schema), "schemaVersion {schema}");
        let datasource = Value::from("${DS_PROMETHEUS}");
        let mut variables = Vec::new();
        let mut kinds = BTreeMap::new();
        for variable in json["templating"]["list"].as_array().unwrap() {
            let name = variable["name"].as_str().unwrap().to_owned();
            kinds.insert(name.clone(), variable["type"].as_str().unwrap().to_owned());
            if variable["type"] == "query" {
                assert_eq!(variable["datasource"]["uid"], datasource, "{name}");
                assert_eq!(variable["allValue"], ALL, "{name}");
                let query = variable["query"]["query"].as_str().unwrap().to_owned();
                variables.push((name, query));
            }
        }
        assert_eq!(
            kinds,
            BTreeMap::from(
                [
                    ("DS_PROMETHEUS", "datasource"),
                    ("account", "query"),
                    ("target", "query"),
                    ("instance_name", "query"),
                ]
                .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
            )
        );
        let mut queries = Vec::new();
        let mut titles = BTreeSet::new();
        let mut panels: Vec<&Value> = json["panels"].as_array().unwrap().iter().collect();
        while let Some(panel) = panels.pop() {
            // A collapsed row holds its panels.
            panels.extend(panel["panels"].as_array().into_iter().flatten());
            if panel["type"] == "row" {
                continue;
            }
            let title = panel["title"].as_str().unwrap().to_owned();
            assert!(titles.insert(title.clone()), "two panels named {title:?}");
            assert_eq!(panel["datasource"]["uid"], datasource, "{title}");
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "panel {title:?} has no query");
            for target in targets {
                assert_eq!(target["datasource"]["uid"], datasource, "{title}");
                let expr = target["expr"].as_str().unwrap().to_owned();
                queries.push((title.clone(), expr));
            }
        }
        for title in WITH_DATA {
            assert!(titles.contains(*title), "no panel {title:?}");
        }
        queries.reverse();
        Dashboard { variables, queries }
    }
}

/// `expr` as Grafana sends it to Prometheus: each `$name` or `${name}` replaced by its value,
/// `$__rate_interval` by 1m (four scrape intervals of a 15 s scrape). Fails on a variable the
/// dashboard does not define.
fn substitute(expr: &str, values: &[(&str, String)]) -> String {
    let mut out = expr.replace("$__rate_interval", "1m");
    let mut values = values.to_vec();
    // `$target` before `$t`, were there one.
    values.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    for (name, value) in &values {
        out = out.replace(&format!("${{{name}}}"), value);
        out = out.replace(&format!("${name}"), value);
    }
    out
}

/// A label value as a regex matching only itself, as Grafana formats a chosen value for `=~`.
fn regex_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Debian's `prometheus`, on a loopback port, with its data in a temporary folder, scraping one
/// admin listener every second and evaluating deploy/prometheus/alerts.yml every second.
/// Dropping it kills it.
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl Prometheus {
    async fn start(dir: &Path, admin: SocketAddr) -> Prometheus {
        let listen = free_addr();
        let config = dir.join("prometheus.yml");
        let rules = root().join("deploy/prometheus/alerts.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: wechat-fanout\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: [\"{admin}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run prometheus ({e}): install it (Debian: apt-get install \
                     prometheus), or run scripts/test, which does"
                )
            });
        let mut prometheus = Prometheus {
            child,
            url: format!("http://{listen}"),
            log,
            http: client(),
        };
        let ready = format!("{}/-/ready", prometheus.url);
        let deadline = Instant::now() + support::WAIT;
        loop {
            if let Some(status) = prometheus.child.try_wait().unwrap() {
                panic!("prometheus exited with {status}:\n{}", prometheus.log());
            }
            let answer = prometheus.http.get(&ready).send().await;
            if answer.is_ok_and(|a| a.status().is_success()) {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus was not ready within {:?}:\n{}",
                support::WAIT,
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/{path}` with `params`: the answer's JSON, whatever its status.
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let answer = self
            .http
            .get(format!("{}/api/v1/{path}", self.url))
            .query(params)
            .send()
            .await
            .expect("prometheus answers");
        let body = answer.bytes().await.expect("prometheus's answer");
        serde_json::from_slice(&body).expect("prometheus answers JSON")
    }

    /// Evaluates `expr` now: asserts that Prometheus took it (`status: success`, an instant
    /// vector) and returns its samples.
    async fn query_ok(&self, expr: &str) -> Vec<Value> {
        let answer = self.api("query", &[("query", expr)]).await;
        assert_eq!(answer["status"], "success", "`{expr}`: {answer}");
        assert_eq!(answer["data"]["resultType"], "vector", "`{expr}`: {answer}");
        answer["data"]["result"].as_array().unwrap().clone()
    }

    /// The values of `labels` of each series `expr` gives now.
    async fn series(&self, expr: &str, labels: &[&str]) -> BTreeSet<Vec<String>> {
        (self.query_ok(expr).await)
            .iter()
            .map(|sample| {
                (labels.iter())
                    .map(|label| sample["metric"][label].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .collect()
    }

    /// What a template variable's `label_values(selector, label)` offers, sorted as the
    /// dashboard sorts it (alphabetically).
    async fn label_values(&self, query: &str) -> Vec<String> {
        let inner = (query.strip_prefix("label_values("))
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("not label_values(selector, label): {query}"));
        let (selector, label) = inner
            .rsplit_once(',')
            .unwrap_or_else(|| panic!("not label_values(selector, label): {query}"));
        let answer = (self.api(
            &format!("label/{}/values", label.trim()),
            &[("match[]", selector.trim())],
        ))
        .await;
        assert_eq!(answer["status"], "success", "`{query}`: {answer}");
        let mut values: Vec<String> = (answer["data"].as_array().unwrap().iter())
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        values.sort();
        values
    }

    /// Waits (bounded) until `expr` gives a series; fails with both logs otherwise.
    async fn wait_for(&self, what: &str, expr: &str, proxy: &Binary) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.query_ok(expr).await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "Prometheus never saw {what} (`{expr}`).\nprometheus:\n{}\nproxy:\n{}",
                self.log(),
                proxy.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits (bounded) until Prometheus has evaluated its `count` alerting rules; asserts each
    /// evaluated without an error. Each rule's alert name and query.
    async fn rules_evaluated(&self, count: usize) -> Vec<(String, String)> {
        let deadline = Instant::now() + support::WAIT;
        loop {
            let answer = self.api("rules", &[("type", "alert")]).await;
            assert_eq!(answer["status"], "success", "{answer}");
            let rules: Vec<&Value> = (answer["data"]["groups"].as_array().unwrap().iter())
                .flat_map(|group| group["rules"].as_array().unwrap())
                .collect();
            assert_eq!(rules.len(), count, "{answer}");
            let evaluated = rules
                .iter()
                .all(|rule| rule["lastEvaluation"].as_str() != Some("0001-01-01T00:00:00Z"));
            if evaluated {
                return rules
                    .iter()
                    .map(|rule| {
                        let name = rule["name"].as_str().unwrap().to_owned();
                        assert_eq!(rule["health"], "ok", "{name}: {rule}");
                        (name, rule["query"].as_str().unwrap().to_owned())
                    })
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "rules not evaluated within {:?}: {answer}",
                support::WAIT
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
