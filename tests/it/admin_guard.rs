//! The admin listener against what a hostile web page or a guesser can do (issue 23): a page
//! that rebinds its own name to 127.0.0.1 must not read or purge dead letters, a guesser must
//! not try the admin token at speed, and event streams are capped so that a flood of them cannot
//! slow the answers to WeChat.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use crate::support::scrape::Scrape;
use crate::support::{FAST, Proxy, Target, WAIT, Wx, client, eventually_async, raw_http, text_xml};

const TOKEN: &str = "admin-guard-token-0123456789";

/// A proxy with its admin listener and `admin` keys; `main` has one target, `crm`, that
/// answers `status`, with `target` keys.
async fn proxy(admin: &str, status: u16, target: &str) -> (Wx, Target, Proxy) {
    let crm = Target::start(status).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let proxy = Proxy::start_with_admin(&format!(
        "{FAST}[admin]\n{admin}\n{}{}",
        wx.account("main", ""),
        Wx::target("crm", &crm.url("/crm"), target),
    ))
    .await;
    (wx, crm, proxy)
}

/// `method path` with exactly this `Host` (and, if given, `Origin`) on a fresh connection.
async fn with_host(
    admin: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    origin: Option<&str>,
) -> (u16, String) {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{origin}Connection: close\r\n\r\n");
    raw_http(admin, request.as_bytes()).await
}

/// The JSON body of a raw answer.
fn body_of(text: &str) -> Value {
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// DNS rebinding: with no `admin.token` (loopback only), a page at `evil.example` that rebinds
/// its name to 127.0.0.1 sends `Host: evil.example:port` and an `Origin` equal to it. It gets
/// 403 on every admin endpoint, and the dead letter stays; an IP literal, `localhost` and a name
/// in `admin.hosts` are served as before.
#[tokio::test(flavor = "multi_thread")]
async fn a_page_that_rebinds_its_name_cannot_read_or_purge_dead_letters() {
    let (wx, _crm, proxy) = proxy("hosts = [\"fanout.internal\"]", 400, "max_attempts = 1").await;
    proxy
        .post("main", &wx.seal(&text_xml("a letter to keep")))
        .await
        .assert_success();
    let admin = proxy.admin.unwrap();
    let port = admin.port();
    let letters = |host: String| async move {
        let (status, text) = with_host(admin, "GET", "/dead-letters", &host, None).await;
        assert_eq!(status, 200, "{host}: {text}");
        body_of(&text).as_array().unwrap().len()
    };
    eventually_async("the dead letter", || async {
        (letters(format!("127.0.0.1:{port}")).await == 1).then_some(())
    })
    .await;

    let evil = format!("evil.example:{port}");
    let origin = format!("http://{evil}");
    for (method, path) in [
        ("GET", "/dead-letters"),
        ("DELETE", "/dead-letters?all=true"),
        ("DELETE", "/dead-letters?account=main"),
        ("GET", "/console/events"),
        ("GET", "/console/targets"),
        ("GET", "/metrics"),
        ("GET", "/healthz"),
        ("GET", "/"),
        ("POST", "/console/login"),
    ] {
        let (status, text) = with_host(admin, method, path, &evil, Some(&origin)).await;
        assert_eq!(status, 403, "{method} {path}: {text}");
        let error = body_of(&text)["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(error.contains("admin.hosts"), "{method} {path}: {text}");
        assert!(!text.contains("main"), "{method} {path}: {text}");
    }
    // A name that only looks like a listed one, or like localhost, is another name.
    for host in [
        "fanout.internal.evil.example",
        "localhost.evil.example",
        "127.0.0.1.evil.example",
    ] {
        let (status, text) = with_host(admin, "GET", "/dead-letters", host, None).await;
        assert_eq!(status, 403, "{host}: {text}");
    }

    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_owned(),
        format!("localhost:{port}"),
        "LocalHost.".to_owned(),
        format!("[::1]:{port}"),
        "[::ffff:127.0.0.1]".to_owned(),
        "10.1.2.3:9090".to_owned(),
        "fanout.internal".to_owned(),
        "Fanout.Internal.:8443".to_owned(),
    ] {
        assert_eq!(letters(host).await, 1, "the letter is still there");
    }
    let scrape = Scrape::fetch(&proxy).await;
    assert_eq!(
        scrape.value("wechat_fanout_admin_refusals_total", "reason=foreign_host"),
        12.0,
        "{}",
        scrape.text
    );
}

/// 32 guessers on one address try wrong tokens as fast as they can, half at the console's
/// login and half as a bearer token, for 2 s: only a handful of tries are checked (a burst of 5,
/// then 1 a second); the rest get 429 with `Retry-After`, unchecked. Meanwhile the right token
/// from another address gets in at once, and once the guessing stops the right token gets in
/// from the guessers' address too, after the wait it was told.
#[tokio::test(flavor = "multi_thread")]
async fn token_guesses_are_slowed_per_address_and_the_right_token_still_gets_in() {
    let (_wx, _crm, proxy) = proxy(&format!("token = \"{TOKEN}\""), 200, "").await;
    let base = proxy.admin_url();
    let checked = Arc::new(AtomicU64::new(0));
    let slowed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(2);
    let mut guessers = Vec::new();
    for n in 0..32 {
        let (base, checked, slowed) = (base.clone(), checked.clone(), slowed.clone());
        guessers.push(tokio::spawn(async move {
            let client = client();
            let mut retry_after = None;
            while Instant::now() < until {
                let guess = format!("wrong-token-{n:02}-0123456789");
                let request = if n % 2 == 0 {
                    client
                        .post(format!("{base}/console/login"))
                        .header("content-type", "application/json")
                        .body(serde_json::json!({ "token": guess }).to_string())
                } else {
                    client
                        .get(format!("{base}/dead-letters"))
                        .bearer_auth(guess)
                };
                let response = request.send().await.unwrap();
                match response.status().as_u16() {
                    401 => checked.fetch_add(1, Ordering::Relaxed),
                    429 => {
                        retry_after = response.headers().get("retry-after").cloned();
                        slowed.fetch_add(1, Ordering::Relaxed)
                    }
                    other => panic!("a guess got {other}"),
                };
            }
            retry_after
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let elsewhere = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .local_address(IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let started = Instant::now();
    let response = elsewhere
        .get(format!("{base}/dead-letters"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let login = elsewhere
        .post(format!("{base}/console/login"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "token": TOKEN }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(login.status().as_u16(), 200);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "the right token took {took:?}"
    );

    let mut waits = Vec::new();
    for guesser in guessers {
        waits.push(guesser.await.unwrap());
    }
    let (checked, slowed) = (
        checked.load(Ordering::Relaxed),
        slowed.load(Ordering::Relaxed),
    );
    // 5 at once, then one a second for 2 s; one more for a refill that lands as a guess starts.
    assert!(
        checked <= 8,
        "{checked} guesses were checked in 2 s ({slowed} slowed)"
    );
    assert!(slowed > 100, "{slowed} guesses slowed");
    let wait: u64 = waits
        .iter()
        .flatten()
        .map(|v| v.to_str().unwrap().parse().unwrap())
        .max()
        .expect("the slowed guesses say how long to wait");
    assert!((1..=5).contains(&wait), "Retry-After: {wait}");

    tokio::time::sleep(Duration::from_secs(wait)).await;
    let response = client()
        .get(format!("{base}/dead-letters"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let scrape = Scrape::fetch(&proxy).await;
    let refusals = scrape.family("wechat_fanout_admin_refusals_total");
    assert_eq!(
        refusals.get("reason=bad_token").copied(),
        Some(checked as f64),
        "{}",
        scrape.text
    );
    assert_eq!(
        refusals.get("reason=guessing").copied(),
        Some(slowed as f64),
        "{}",
        scrape.text
    );
}

/// `admin.max_event_streams` live streams at most: one more gets 503 with `Retry-After` and a
/// message naming the key (counted), and a stream whose browser hangs up frees its place.
#[tokio::test(flavor = "multi_thread")]
async fn event_streams_beyond_the_cap_get_503_until_one_hangs_up() {
    let (_wx, _crm, proxy) = proxy("max_event_streams = 2", 200, "").await;
    let url = format!("{}/console/events", proxy.admin_url());
    let open = || async {
        let response = client().get(&url).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response)
    };
    let (first, one) = open().await;
    let (second, _two) = open().await;
    assert_eq!((first, second), (200, 200));
    assert_eq!(
        one.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let (third, refused) = open().await;
    assert_eq!(third, 503);
    assert_eq!(refused.headers().get("retry-after").unwrap(), "5");
    let text = refused.text().await.unwrap();
    assert!(text.contains("admin.max_event_streams"), "{text}");
    let scrape = Scrape::fetch(&proxy).await;
    assert_eq!(
        scrape.value(
            "wechat_fanout_admin_refusals_total",
            "reason=event_streams_full"
        ),
        1.0
    );
    assert_eq!(scrape.value("wechat_fanout_console_event_streams", ""), 2.0);

    drop(one);
    let (status, _three) = eventually_async("the closed stream's place", || async {
        let (status, response) = open().await;
        (status == 200).then_some((status, response))
    })
    .await;
    assert_eq!(status, 200);
    let scrape = Scrape::fetch(&proxy).await;
    assert_eq!(scrape.value("wechat_fanout_console_event_streams", ""), 2.0);
    let _ = proxy.admin(Method::GET, "/healthz").await;
}
