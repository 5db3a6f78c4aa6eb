//! The console's charts (issue 30, point 2), drawn from real traffic: callbacks per minute by
//! outcome, each target's deliveries and failures, its attempts' p50/p99 and its backlog, from
//! the store's per-minute counts (each instance adds its own every 10 s); in Chinese when asked,
//! and at 420 px wide without sideways scrolling.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use super::{TOKEN, config, sign_in, wait_live};
use crate::support::browser::Browser;
use crate::support::{Proxy, Target, Wx, text_xml};

/// Longer than the browser's usual wait: the counts reach the store within 10 s and the page
/// reads them again every 10 s.
const CHARTS_WAIT: Duration = Duration::from_secs(40);

/// The sum of a chart's bars or points of one series, per the page: an expression…
fn series_total(chart: &str, series: &str) -> String {
    format!(
        "[...document.querySelectorAll('svg[data-chart=\"{chart}\"] [data-series=\"{series}\"]')]\
         .reduce((sum, n) => sum + Number(n.dataset.value), 0)"
    )
}

/// …and a script that returns it.
fn series_sum(chart: &str, series: &str) -> String {
    format!("return {};", series_total(chart, series))
}

/// Polls `script` until `done` says yes of what it returns, for at most [`CHARTS_WAIT`].
async fn wait_until(browser: &Browser, what: &str, script: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + CHARTS_WAIT;
    loop {
        let value = browser.run(script, json!([])).await;
        if done(&value) {
            return;
        }
        if Instant::now() >= deadline {
            let shot = browser.screenshot("failed-charts").await;
            panic!(
                "gave up waiting for {what}: last {value} (screenshot {})",
                shot.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn charts_draw_the_deployments_traffic_per_minute() {
    let target = Target::start(200).await;
    let failing = Target::start(500).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let flaky = Wx::target("flaky", &failing.url("/flaky"), "max_attempts = 1");
    let proxy = Proxy::start_with_admin(&config(&wx, &target, &flaky, "")).await;
    let mut first = None;
    for n in 0..5 {
        let sealed = wx.seal(&text_xml(&format!("counted {n}")));
        proxy.post("main", &sealed).await.assert_success();
        first.get_or_insert(sealed);
    }
    // A resend of the first, and a callback whose signature is wrong.
    let first = first.expect("a callback sent");
    proxy.post("main", &first).await.assert_success();
    let forged = first.query.replace("signature=", "signature=0");
    let refused = proxy
        .post_raw("main", &forged, first.content_type, first.body.clone())
        .await;
    assert_eq!(refused.status, 401);
    target.wait_for(5).await;

    let browser = Browser::start().await;
    sign_in(&browser, &proxy, TOKEN).await;
    wait_live(&browser).await;
    browser.click("#tabs button[data-view=charts]").await;
    let outcomes = format!(
        "return [{}, {}, {}];",
        series_total("callbacks", "accepted"),
        series_total("callbacks", "duplicate"),
        series_total("callbacks", "rejected"),
    );
    wait_until(&browser, "the callbacks by outcome", &outcomes, |v| {
        *v == json!([5, 1, 1])
    })
    .await;
    let delivered = series_sum("deliveries:main/crm", "delivered");
    wait_until(&browser, "crm's deliveries", &delivered, |v| *v == json!(5)).await;
    let failed = series_sum("deliveries:main/flaky", "failed");
    wait_until(&browser, "flaky's failures", &failed, |v| *v == json!(5)).await;
    // Durations: a point for p50 and p99 in each minute with attempts, from the buckets.
    let p99 = "return document.querySelectorAll('svg[data-chart=\"latency:main/crm\"] circle[data-series=p99_ms]').length;";
    wait_until(&browser, "crm's p99", p99, |v| v.as_u64() >= Some(1)).await;
    // The backlog: read from the store once a minute; flaky's jobs all died, none pending.
    let backlog = "return document.querySelectorAll('svg[data-chart=\"backlog:main/flaky\"] circle[data-series=pending]').length;";
    wait_until(&browser, "flaky's backlog", backlog, |v| {
        v.as_u64() >= Some(1)
    })
    .await;
    browser.screenshot("charts").await;

    // In Chinese, and on a phone.
    browser
        .run(
            "const s = document.querySelector('#lang'); s.value = 'zh-CN'; \
             s.dispatchEvent(new Event('change'));",
            json!([]),
        )
        .await;
    let caption = browser
        .wait_for(
            "the Chinese captions",
            "return document.querySelector('#charts figcaption')?.textContent === '每分钟回调数' \
             && document.querySelector('#tabs button[data-view=charts]').textContent;",
        )
        .await;
    assert_eq!(caption, json!("图表"));
    browser.set_window_size(420, 900).await;
    browser
        .wait_for(
            "the charts drawn again at 420 px, without sideways scrolling",
            "const page = document.documentElement; \
             const chart = document.querySelector('svg[data-chart=callbacks]'); \
             return window.innerWidth <= 420 && page.scrollWidth <= page.clientWidth \
                && Number(chart.getAttribute('width')) <= 420;",
        )
        .await;
    browser.screenshot("zh-charts-narrow").await;
    browser.quit().await;
}
