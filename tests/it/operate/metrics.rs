//! `/metrics` after real traffic: every counter, histogram count and queue gauge is the number
//! the traffic implies, with exactly the label sets an operator's dashboards and alerts use.

use std::time::Duration;

use wechat_fanout::config::Mode;
use wechat_fanout::store::JobState;
use wechat_fanout::wechat::Kind;

use super::jobs_become;
use crate::support::scrape::{Scrape, family};
use crate::support::{FAST, Proxy, Target, Wx, free_addr, text_xml};

/// The main account's targets, in the order of the config.
const TARGETS: [&str; 5] = ["bot", "ok", "flaky", "bad", "down"];

/// A busy hour in one scrape. The account `main` (safe mode) answers with its primary `bot`,
/// and fans out to `ok` (always 200), `flaky` (always 500, 3 attempts), `bad` (400: dead at
/// once) and `down` (nothing listens; the retry is a minute away). WeChat sends three callbacks:
/// the first is relayed (the bot replies), the second fails at the primary (400), the third
/// times out there (the bot answers a second after the 2 s reply deadline). One callback is
/// resent, one arrives with a forged signature, one for an account nobody configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_busy_hour_count_exactly_what_happened() {
    let bot = Target::start(200).await;
    let reply = "<xml><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]></Content></xml>";
    bot.set_reply("text/xml", reply);
    let ok = Target::start(200).await;
    let flaky = Target::start(500).await;
    let bad = Target::start(400).await;
    let down = free_addr();
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let toml = format!(
        "{FAST}[server]\nreply_deadline_ms = 2000\ninstance_name = \"fanout-a.1\"\n{}{}{}{}{}{}",
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", &bot.url("/bot"), "timeout_ms = 5000"),
        Wx::target("ok", &ok.url("/ok"), ""),
        Wx::target("flaky", &flaky.url("/flaky"), "max_attempts = 3"),
        Wx::target("bad", &bad.url("/bad"), ""),
        Wx::target(
            "down",
            &format!("http://{down}/down"),
            "max_attempts = 1000\nbackoff_initial_ms = 60000\nbackoff_max_ms = 60000",
        ),
    );
    let proxy = Proxy::start_with_admin(&toml).await;

    // Before any traffic, every configured target already has its queue gauges, at 0.
    let idle = Scrape::fetch(&proxy).await;
    for target in TARGETS {
        for state in ["dead", "in_flight", "pending"] {
            let labels = format!("account=main,state={state},target={target}");
            assert_eq!(idle.value("wechat_fanout_queue_jobs", &labels), 0.0);
        }
    }

    let relayed = wx.seal(&text_xml("relayed"));
    let answer = proxy.post("main", &relayed).await;
    assert_eq!((answer.status, answer.text()), (200, reply.to_owned()));
    let resent = proxy.post("main", &relayed).await;
    assert_eq!((resent.status, resent.text()), (200, reply.to_owned()));

    bot.set_status(400);
    proxy
        .post("main", &wx.seal(&text_xml("primary fails")))
        .await
        .assert_success();

    bot.set_status(200);
    bot.set_delay(Duration::from_millis(3000));
    let slow = proxy
        .post("main", &wx.seal(&text_xml("primary too slow")))
        .await;
    slow.assert_success();
    assert!(slow.elapsed >= Duration::from_millis(2000), "{slow:?}");

    let forged = wx.seal(&text_xml("forged"));
    let query = forged
        .query
        .replacen("msg_signature=", "msg_signature=0", 1);
    let answer = proxy
        .post_raw("main", &query, forged.content_type, forged.body.clone())
        .await;
    assert_eq!(answer.status, 401, "{answer:?}");
    let stranger = wx.seal(&text_xml("for nobody"));
    assert_eq!(proxy.post("nobody", &stranger).await.status, 404);

    // Every delivery has come to rest: the slow bot answered, flaky used its three attempts,
    // `down` failed once per callback and waits a minute for the next attempt.
    let at_rest: Vec<(&str, JobState, u32)> = [("bot", JobState::Dead, 1)]
        .into_iter()
        .chain([("flaky", JobState::Dead, 3); 3])
        .chain([("bad", JobState::Dead, 1); 3])
        .chain([("down", JobState::Pending, 1); 3])
        .collect();
    jobs_become(&proxy.store(), &at_rest).await;

    let m = Scrape::fetch(&proxy).await;
    assert_eq!(
        m.family("wechat_fanout_callbacks_total"),
        family(&[
            ("account=,outcome=rejected,reason=unknown_account", 1.0),
            ("account=main,outcome=accepted,reason=", 3.0),
            ("account=main,outcome=duplicate,reason=", 1.0),
            (
                "account=main,outcome=rejected,reason=bad_msg_signature",
                1.0
            ),
        ]),
        "{}",
        m.text
    );
    assert_eq!(
        m.family("wechat_fanout_primary_total"),
        family(&[
            ("account=main,outcome=failed", 1.0),
            ("account=main,outcome=relayed", 1.0),
            ("account=main,outcome=timed_out", 1.0),
        ]),
        "{}",
        m.text
    );

    // Answers: three accepted callbacks and the resend. Only the one that waited for the reply
    // deadline took two seconds or more.
    let answered = "account=main";
    assert_eq!(
        m.value("wechat_fanout_answer_duration_seconds_count", answered),
        4.0
    );
    assert!(m.value("wechat_fanout_answer_duration_seconds_sum", answered) >= 2.0);
    let buckets = m.buckets("wechat_fanout_answer_duration_seconds", answered);
    let below_the_deadline = buckets.iter().rev().find(|(le, _)| *le < 2.0).unwrap();
    assert!(below_the_deadline.1 <= 3.0, "{buckets:?}");
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 4.0));

    assert_eq!(
        m.family("wechat_fanout_delivery_attempts_total"),
        family(&[
            ("account=main,result=dead,target=bad", 3.0),
            ("account=main,result=dead,target=bot", 1.0),
            ("account=main,result=delivered,target=bot", 2.0),
            ("account=main,result=dead,target=flaky", 3.0),
            ("account=main,result=retry,target=flaky", 6.0),
            ("account=main,result=retry,target=down", 3.0),
            ("account=main,result=delivered,target=ok", 3.0),
        ]),
        "{}",
        m.text
    );
    assert_eq!(
        m.family("wechat_fanout_delivery_duration_seconds_count"),
        family(&[
            ("account=main,target=bad", 3.0),
            ("account=main,target=bot", 3.0),
            ("account=main,target=down", 3.0),
            ("account=main,target=flaky", 9.0),
            ("account=main,target=ok", 3.0),
        ]),
        "{}",
        m.text
    );
    // The bot's slow answer is in its latency: 3 s of it.
    let bot_seconds = "account=main,target=bot";
    assert!(m.value("wechat_fanout_delivery_duration_seconds_sum", bot_seconds) >= 3.0);

    let mut queue = Vec::new();
    for (target, pending, dead) in [
        ("bad", 0, 3),
        ("bot", 0, 1),
        ("down", 3, 0),
        ("flaky", 0, 3),
        ("ok", 0, 0),
    ] {
        for (state, n) in [("dead", dead), ("in_flight", 0), ("pending", pending)] {
            queue.push((
                format!("account=main,state={state},target={target}"),
                f64::from(n),
            ));
        }
    }
    assert_eq!(
        m.family("wechat_fanout_queue_jobs"),
        queue.into_iter().collect(),
        "{}",
        m.text
    );

    // How long each target's oldest open job has waited: only `down` has any (it waits for its
    // retry a minute away), since the first callback arrived, seconds ago.
    let oldest = m.family("wechat_fanout_oldest_pending_age_seconds");
    assert_eq!(oldest.len(), TARGETS.len(), "{}", m.text);
    for target in TARGETS {
        let age = oldest[&format!("account=main,target={target}")];
        if target == "down" {
            assert!(age > 1.0 && age < 60.0, "{age}\n{}", m.text);
        } else {
            assert_eq!(age, 0.0, "{target}\n{}", m.text);
        }
    }
    assert_eq!(m.value("wechat_fanout_store_ready", ""), 1.0);
    let usage = m.value("wechat_fanout_store_usage_ratio", "");
    assert!(usage > 0.0 && usage < 1.0, "{usage}");
    // Bounds between 3 and 5 s, for an alert on answers near WeChat's deadline.
    let bounds: Vec<f64> = buckets.iter().map(|(le, _)| *le).collect();
    for bound in [3.0, 3.5, 4.0, 4.5, 5.0] {
        assert!(bounds.contains(&bound), "{bounds:?}");
    }

    // What this instance did carries its name; what the store holds is the deployment's.
    let this = std::collections::BTreeSet::from([Some("fanout-a.1".to_owned())]);
    for name in [
        "wechat_fanout_callbacks_total",
        "wechat_fanout_primary_total",
        "wechat_fanout_answer_duration_seconds_count",
        "wechat_fanout_delivery_attempts_total",
        "wechat_fanout_delivery_duration_seconds_count",
        "wechat_fanout_store_ready",
        "wechat_fanout_console_event_streams",
    ] {
        assert_eq!(m.instance_names(name), this, "{name}\n{}", m.text);
    }
    for name in [
        "wechat_fanout_queue_jobs",
        "wechat_fanout_oldest_pending_age_seconds",
        "wechat_fanout_store_usage_ratio",
    ] {
        assert_eq!(
            m.instance_names(name),
            std::collections::BTreeSet::from([None]),
            "{name}\n{}",
            m.text
        );
    }
}
