//! WeChat Pay notifications (issue 28): a merchant points `notify_url` at the proxy and every
//! service gets each notification, byte for byte with WeChat Pay's headers, so its own SDK
//! verifies it. Keys are the test keys under `tests/fixtures/wechatpay/` (made with `openssl`);
//! what the targets receive is checked with `openssl` and the Standard Webhooks reference
//! library, never with the code under test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use wechat_fanout::cmd::simulate::pay::{PaySigner, notification_body};
use wechat_fanout::wechat::pay::ApiV3Key;

use crate::operate::write_binary_config;
use crate::support::{
    Binary, FAST, Proxy, Received, Target, callbacks, client, eventually, free_addr, settle,
};

const PUBLIC_KEY_ID: &str = "PUB_KEY_ID_0114232025031800111111111111";
const CERTIFICATE_SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
const APIV3_KEY: &str = "wechatfanoutTestApiV3Key32bytes!";
const PAY_HEADERS: [&str; 5] = [
    "wechatpay-serial",
    "wechatpay-signature",
    "wechatpay-timestamp",
    "wechatpay-nonce",
    "wechatpay-signature-type",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/wechatpay")
        .join(name)
}

fn signer(private_key: &str, serial: &str) -> PaySigner {
    PaySigner::from_pem(&std::fs::read(fixture(private_key)).unwrap(), serial).unwrap()
}

/// Signs with the private key of the configured WeChat Pay public key.
fn by_public_key() -> PaySigner {
    signer("public_key_private.pem", PUBLIC_KEY_ID)
}

/// Signs with the private key of the configured platform certificate.
fn by_certificate() -> PaySigner {
    signer("platform_private.pem", CERTIFICATE_SERIAL)
}

/// A pay account `id` with both key kinds and the APIv3 key, then `extra`.
fn pay_account(id: &str, extra: &str) -> String {
    format!(
        "\n[[accounts]]\nid = \"{id}\"\nkind = \"wechat_pay\"\nmchid = \"1900000100\"\n\
         wechatpay_public_keys = [{{ id = \"{PUBLIC_KEY_ID}\", path = \"{}\" }}]\n\
         wechatpay_platform_certificates = [\"{}\"]\napiv3_key = \"{APIV3_KEY}\"\n{extra}\n",
        fixture("public_key.pem").display(),
        fixture("platform_certificate.pem").display(),
    )
}

fn target(name: &str, url: &str, extra: &str) -> String {
    format!("\n[[accounts.targets]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n")
}

/// A notification `id` of `event_type` about order `out_trade_no`.
fn notification(id: &str, event_type: &str, out_trade_no: &str) -> String {
    let key = ApiV3Key::new(APIV3_KEY).unwrap();
    notification_body(
        &key,
        id,
        event_type,
        out_trade_no,
        "oPayer0000000000000000000001",
    )
}

/// The notification id of a received body.
fn id_of(received: &Received) -> String {
    let body: serde_json::Value = serde_json::from_slice(&received.body).unwrap();
    body["id"].as_str().unwrap().to_owned()
}

fn now() -> u64 {
    wechat_fanout::clock::now_secs()
}

/// What the proxy answered a POST.
struct Answered {
    status: u16,
    body: String,
    allow: Option<String>,
}

/// POSTs `body` to `/wechat/{account}` at `addr` with `headers`, as WeChat Pay does.
async fn post(
    addr: std::net::SocketAddr,
    account: &str,
    headers: &[(&str, String)],
    body: &str,
) -> Answered {
    let mut request = client()
        .post(format!("http://{addr}/wechat/{account}"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    answered(request.send().await.unwrap()).await
}

async fn answered(response: reqwest::Response) -> Answered {
    let status = response.status().as_u16();
    let allow = (response.headers().get("allow")).map(|v| v.to_str().unwrap().to_owned());
    let body = response.text().await.unwrap();
    Answered {
        status,
        body,
        allow,
    }
}

/// Signs `body` with `signer` at `timestamp` and POSTs it.
async fn send(proxy: &Proxy, signer: &PaySigner, timestamp: u64, body: &str) -> Answered {
    let headers = signer.headers(timestamp, body.as_bytes()).unwrap();
    post(proxy.addr, "pay", &headers, body).await
}

/// WeChat Pay's failure answer, with its message.
fn assert_fail(answer: &Answered, status: u16, says: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    let json: serde_json::Value = serde_json::from_str(&answer.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", answer.body));
    assert_eq!(json["code"], "FAIL", "{}", answer.body);
    let message = json["message"].as_str().unwrap();
    assert!(message.contains(says), "{message:?} should say {says:?}");
}

/// Verifies `received` as a WeChat Pay SDK would, but with `openssl` alone: the signature in
/// its `Wechatpay-Signature` over `timestamp\nnonce\nbody\n`, with the public key in `key_pem`.
fn openssl_verifies(received: &Received, key_pem: &Path) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let header = |n: &str| received.header(n).unwrap().to_owned();
    let mut message = format!(
        "{}\n{}\n",
        header("wechatpay-timestamp"),
        header("wechatpay-nonce")
    )
    .into_bytes();
    message.extend_from_slice(&received.body);
    message.push(b'\n');
    std::fs::write(dir.path().join("message"), message).unwrap();
    std::fs::write(
        dir.path().join("signature.b64"),
        header("wechatpay-signature"),
    )
    .unwrap();
    let decoded = Command::new("openssl")
        .args(["base64", "-d", "-A", "-in"])
        .arg(dir.path().join("signature.b64"))
        .arg("-out")
        .arg(dir.path().join("signature"))
        .status()
        .expect("openssl runs (scripts/test installs it)");
    assert!(decoded.success());
    let verified = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(key_pem)
        .arg("-signature")
        .arg(dir.path().join("signature"))
        .arg(dir.path().join("message"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&verified.stdout).contains("Verified OK")
}

/// The platform certificate's public key, as `openssl x509 -pubkey` reads it.
fn certificate_public_key(dir: &Path) -> PathBuf {
    let out = Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(fixture("platform_certificate.pem"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let path = dir.join("platform_public_key.pem");
    std::fs::write(&path, out.stdout).unwrap();
    path
}

/// Both key kinds at once (a merchant switching from certificates to the public key): each
/// notification is answered 204 with no body, and each service gets it byte for byte with the
/// five `Wechatpay-*` headers and the Content-Type as sent, which `openssl` verifies with
/// WeChat Pay's key, as the service's own SDK would. A target that filters refunds gets neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_key_kinds_reach_every_service_verifiable_by_an_independent_verifier() {
    let (orders, ledger, refunds) = (
        Target::start(200).await,
        Target::start(204).await,
        Target::start(200).await,
    );
    let toml = format!(
        "{FAST}{}{}{}{}",
        pay_account("pay", ""),
        target("orders", &orders.url("/pay/notify"), ""),
        target("ledger", &ledger.url("/ledger"), ""),
        target(
            "refunds",
            &refunds.url("/refunds"),
            "event_types = [\"REFUND.*\"]"
        ),
    );
    let proxy = Proxy::start(&toml).await;

    let first = notification("EV-1", "TRANSACTION.SUCCESS", "A-1001");
    let second = notification("EV-2", "TRANSACTION.SUCCESS", "A-1002");
    let mut sent = Vec::new();
    for (signer, body) in [(by_public_key(), &first), (by_certificate(), &second)] {
        let headers = signer.headers(now(), body.as_bytes()).unwrap();
        let answer = post(proxy.addr, "pay", &headers, body).await;
        assert_eq!((answer.status, answer.body.as_str()), (204, ""));
        sent.push((headers, body.clone()));
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = [
        fixture("public_key.pem"),
        certificate_public_key(dir.path()),
    ];
    for service in [&orders, &ledger] {
        let mut got = service.wait_for(2).await;
        got.sort_by_key(id_of);
        for ((received, (headers, body)), key) in got.iter().zip(&sent).zip(&keys) {
            assert_eq!(received.method, "POST");
            assert_eq!(received.body, body.as_bytes(), "byte for byte");
            for (name, value) in headers {
                assert_eq!(received.header(name), Some(value.as_str()), "{name}");
            }
            assert_eq!(received.header("content-type"), Some("application/json"));
            assert_eq!(received.header("x-wechat-fanout-account"), Some("pay"));
            assert_eq!(received.attempt(), 1);
            assert!(openssl_verifies(received, key), "openssl: {received:?}");
            // And not with the other kind's key: the check is real.
            let other = keys.iter().find(|k| *k != key).unwrap();
            assert!(!openssl_verifies(received, other));
        }
    }
    settle().await;
    assert_eq!((orders.count(), ledger.count(), refunds.count()), (2, 2, 0));
}

/// WeChat Pay sends some notifications with wrong signatures to see that merchants check:
/// a forged signature, an unknown serial, a stale timestamp, a missing header, another
/// signature type are each 401 with the FAIL JSON and a reason, and nothing is stored or
/// delivered; each is counted under its own label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_unknown_and_stale_notifications_are_refused_and_nothing_is_stored() {
    let orders = Target::start(200).await;
    let toml = format!(
        "{FAST}{}{}",
        pay_account("pay", "max_timestamp_skew_secs = 120"),
        target("orders", &orders.url("/n"), ""),
    );
    let proxy = Proxy::start_with_admin(&toml).await;
    let body = notification("EV-forged", "TRANSACTION.SUCCESS", "A-1");

    let forger = signer("forger_private.pem", PUBLIC_KEY_ID);
    let answer = send(&proxy, &forger, now(), &body).await;
    assert_fail(&answer, 401, "signature does not verify");
    let unknown = signer(
        "public_key_private.pem",
        "PUB_KEY_ID_0000000000000000000000000000",
    );
    let answer = send(&proxy, &unknown, now(), &body).await;
    assert_fail(&answer, 401, "names no configured WeChat Pay key");
    let answer = send(&proxy, &by_public_key(), now() - 600, &body).await;
    assert_fail(&answer, 401, "timestamp outside the allowed window");
    // Signed for another body: the body was changed on the way.
    let mut headers = by_public_key().headers(now(), body.as_bytes()).unwrap();
    let changed = body.replace("TRANSACTION.SUCCESS", "TRANSACTION.SUCCESZ");
    assert_fail(
        &post(proxy.addr, "pay", &headers, &changed).await,
        401,
        "signature",
    );
    headers[4].1 = "HMAC-SHA256".to_owned();
    assert_fail(
        &post(proxy.addr, "pay", &headers, &body).await,
        401,
        "Signature-Type",
    );
    headers.remove(1);
    assert_fail(
        &post(proxy.addr, "pay", &headers, &body).await,
        401,
        "Wechatpay-Signature",
    );

    settle().await;
    assert_eq!(callbacks(&proxy.store()).await, 0, "nothing stored");
    assert_eq!(orders.count(), 0, "nothing delivered");
    let metrics = proxy.admin(Method::GET, "/metrics").await.text();
    for reason in [
        "pay_bad_signature",
        "pay_unknown_serial",
        "stale_timestamp",
        "pay_signature_type",
        "pay_unsigned",
    ] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "{reason} counted:\n{metrics}"
        );
    }
}

/// WeChat Pay resends a notification it got no answer to, signed again (a new timestamp and
/// nonce), the body the same: the resend is answered 204 too, and no service gets it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_is_answered_204_and_delivered_to_nobody_again() {
    let orders = Target::start(200).await;
    let toml = format!(
        "{FAST}{}{}",
        pay_account("pay", ""),
        target("orders", &orders.url("/n"), ""),
    );
    let proxy = Proxy::start(&toml).await;
    let body = notification("EV-resent", "TRANSACTION.SUCCESS", "A-7");
    let first = send(&proxy, &by_public_key(), now(), &body).await;
    assert_eq!(first.status, 204, "{}", first.body);
    orders.wait_for(1).await;
    // Resent later, signed with the other key kind (a merchant mid-switch).
    let resend = send(&proxy, &by_certificate(), now(), &body).await;
    assert_eq!((resend.status, resend.body.as_str()), (204, ""));
    settle().await;
    assert_eq!(orders.count(), 1, "delivered once");
    assert_eq!(callbacks(&proxy.store()).await, 1, "stored once");
}

/// Routing: `event_types` (a prefix with `*`, or exact) and, with the APIv3 key,
/// `out_trade_no_prefixes` on the decrypted resource (two shops on one merchant number).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_routed_by_event_type_and_order_prefix() {
    let (transactions, refunds, shop_a) = (
        Target::start(200).await,
        Target::start(200).await,
        Target::start(200).await,
    );
    let toml = format!(
        "{FAST}{}{}{}{}",
        pay_account("pay", ""),
        target(
            "transactions",
            &transactions.url("/t"),
            "event_types = [\"TRANSACTION.*\"]"
        ),
        target(
            "refunds",
            &refunds.url("/r"),
            "event_types = [\"REFUND.SUCCESS\"]"
        ),
        target(
            "shop-a",
            &shop_a.url("/a"),
            "out_trade_no_prefixes = [\"A-\"]"
        ),
    );
    let proxy = Proxy::start(&toml).await;
    for (id, event_type, order) in [
        ("EV-a", "TRANSACTION.SUCCESS", "A-1"),
        ("EV-b", "REFUND.SUCCESS", "B-2"),
        ("EV-c", "REFUND.ABNORMAL", "A-3"),
    ] {
        let body = notification(id, event_type, order);
        let answer = send(&proxy, &by_public_key(), now(), &body).await;
        assert_eq!(answer.status, 204, "{}", answer.body);
    }
    let seen = |t: &Target| -> Vec<String> {
        let mut ids: Vec<String> = t.received().iter().map(id_of).collect();
        ids.sort();
        ids
    };
    eventually("each service got its notifications", || {
        (transactions.count() == 1 && refunds.count() == 1 && shop_a.count() == 2).then_some(())
    })
    .await;
    settle().await;
    assert_eq!(seen(&transactions), ["EV-a"]);
    assert_eq!(seen(&refunds), ["EV-b"]);
    assert_eq!(seen(&shop_a), ["EV-a", "EV-c"]);
}

/// Every refusal on a pay path is WeChat Pay's FAIL JSON: a GET (405, `Allow: POST`), a body
/// that is not JSON or not a notification (400, signed, so it passed the signature), a path
/// under the account (404), a body over the limit (413).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_on_a_pay_path_answer_fail_json() {
    let orders = Target::start(200).await;
    let toml = format!(
        "{FAST}[server]\nmax_body_bytes = 4096\n{}{}",
        pay_account("pay", ""),
        target("orders", &orders.url("/n"), ""),
    );
    let proxy = Proxy::start(&toml).await;
    let got = client()
        .get(format!("http://{}/wechat/pay", proxy.addr))
        .send()
        .await
        .unwrap();
    let get = answered(got).await;
    assert_fail(&get, 405, "method not allowed");
    assert_eq!(get.allow.as_deref(), Some("POST"));
    let answer = send(&proxy, &by_public_key(), now(), "<xml>not json</xml>").await;
    assert_fail(&answer, 400, "not JSON");
    let answer = send(&proxy, &by_public_key(), now(), r#"{"hello":"world"}"#).await;
    assert_fail(&answer, 400, "not a WeChat Pay notification");
    let headers = by_public_key().headers(now(), b"{}").unwrap();
    assert_fail(
        &post(proxy.addr, "pay/more", &headers, "{}").await,
        404,
        "no such account",
    );
    let big = format!("{{\"id\":\"{}\"}}", "x".repeat(5000));
    let headers = by_public_key().headers(now(), big.as_bytes()).unwrap();
    assert_fail(
        &post(proxy.addr, "pay", &headers, &big).await,
        413,
        "larger than",
    );
    settle().await;
    assert_eq!(callbacks(&proxy.store()).await, 0);
    assert_eq!(orders.count(), 0);
}

/// The store stalls (another connection holds SQLite's write lock): the answer is 503 FAIL
/// before WeChat Pay's 5 s, so WeChat Pay sends it again; once the store is back, the resend
/// is answered 204 and the service gets the notification once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_answers_503_fail_and_the_resend_is_taken() {
    let orders = Target::start(200).await;
    let toml = format!(
        "{FAST}{}{}",
        pay_account("pay", ""),
        target("orders", &orders.url("/n"), ""),
    );
    let proxy = Proxy::start(&toml).await;
    let holder = rusqlite::Connection::open(&proxy.db).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let body = notification("EV-stalled", "TRANSACTION.SUCCESS", "A-5");
    let answer = send(&proxy, &by_public_key(), now(), &body).await;
    assert_fail(&answer, 503, "store");
    holder.execute_batch("ROLLBACK").unwrap();
    let resend = send(&proxy, &by_public_key(), now(), &body).await;
    assert_eq!(resend.status, 204, "{}", resend.body);
    orders.wait_for(1).await;
    settle().await;
    assert_eq!(orders.count(), 1);
}

/// The Standard Webhooks reference library (Python `standardwebhooks`), as a service would run
/// it, verifies `received`'s `webhook-*` headers with `secret`.
fn standard_webhooks_verifies(received: &Received, secret: &str) -> Result<(), String> {
    let python = std::env::var("WECHAT_FANOUT_PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, &received.body).unwrap();
    let script = "import sys\n\
        from standardwebhooks.webhooks import Webhook\n\
        secret, body, wid, ts, sig = sys.argv[1:6]\n\
        payload = open(body, 'rb').read()\n\
        Webhook(secret).verify(payload, {'webhook-id': wid, 'webhook-timestamp': ts, 'webhook-signature': sig})\n\
        print('verified')\n";
    let header = |n: &str| received.header(n).unwrap_or_default().to_owned();
    let out = Command::new(&python)
        .args(["-c", script, secret])
        .arg(&body)
        .args([
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
        ])
        .output()
        .unwrap_or_else(|e| panic!("{python} runs: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "the standardwebhooks package is missing (scripts/test installs it): {stderr}"
    );
    if String::from_utf8_lossy(&out.stdout).contains("verified") {
        Ok(())
    } else {
        Err(stderr.into_owned())
    }
}

/// Issue 28, point 4: a target with `signing_secret_env` gets each attempt signed by the proxy
/// (Standard Webhooks), so it trusts a retry that WeChat Pay's timestamp no longer covers. The
/// reference library verifies the first attempt and the retry, with the same `webhook-id`; a
/// wrong secret does not verify. The Wechatpay-* headers travel unchanged beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_deliveries_verify_with_the_standard_webhooks_reference_library() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwd2VjaGF0LWZhbm91dA==";
    let orders = Target::start(503).await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let accounts = format!(
        "{}{}",
        pay_account("pay", ""),
        target(
            "orders",
            &orders.url("/n"),
            "signing_secret_env = \"ORDERS_SIGNING_SECRET\""
        ),
    );
    let config = write_binary_config(dir.path(), listen, &accounts);
    let log = dir.path().join("serve.log");
    let env = [("ORDERS_SIGNING_SECRET", secret)];
    let mut binary = Binary::serve_with(&config, listen, &log, &[], &env).await;

    let body = notification("EV-signed", "TRANSACTION.SUCCESS", "A-9");
    let headers = by_public_key().headers(now(), body.as_bytes()).unwrap();
    let answer = post(listen, "pay", &headers, &body).await;
    assert_eq!(answer.status, 204, "{}\n{}", answer.body, binary.log());
    orders.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    orders.set_status(200);
    let got = eventually("a retry after the 503", || {
        let got = orders.received();
        (got.len() >= 2).then_some(got)
    })
    .await;
    for received in &got[..2] {
        assert_eq!(received.body, body.as_bytes());
        standard_webhooks_verifies(received, secret).unwrap();
        for (name, value) in &headers {
            assert_eq!(received.header(name), Some(value.as_str()));
        }
        let wrong = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        assert!(standard_webhooks_verifies(received, wrong).is_err());
    }
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    for name in PAY_HEADERS {
        assert!(got[1].header(name).is_some(), "{name} on the retry");
    }
    binary.terminate();
    binary.wait_exit().await;
}

/// `simulate --account pay --wechatpay-private-key …` sends a notification the proxy takes (it
/// verifies with the configured public key), and a service gets it; `probe` on the pay account
/// says it checks reachability only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_signs_a_notification_the_proxy_takes_and_probe_checks_reachability() {
    let orders = Target::start(200).await;
    let toml = format!(
        "{FAST}{}{}",
        pay_account("pay", ""),
        target("orders", &orders.url("/n"), ""),
    );
    let proxy = Proxy::start(&toml).await;
    let dir = tempfile::tempdir().unwrap();
    let config = proxy.write_config(dir.path());
    let config = config.to_string_lossy();
    let key = fixture("public_key_private.pem");
    let ran = crate::support::binary::run_async(&[
        "--config",
        &config,
        "simulate",
        "--account",
        "pay",
        "--wechatpay-private-key",
        &key.to_string_lossy(),
        "--event-type",
        "REFUND.SUCCESS",
    ])
    .await;
    let out = ran.ok();
    assert!(out.contains("204"), "{out}");
    let got = orders.wait_for(1).await;
    assert_eq!(got[0].header("wechatpay-serial"), Some(PUBLIC_KEY_ID));
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["event_type"], "REFUND.SUCCESS");
    assert!(openssl_verifies(&got[0], &fixture("public_key.pem")));

    let probed = crate::support::binary::run_async(&["--config", &config, "probe"]).await;
    let out = probed.ok();
    assert!(
        out.contains("reachable") && out.contains("reachability only"),
        "{out}"
    );
    let methods: Vec<String> = orders.received().iter().map(|r| r.method.clone()).collect();
    assert_eq!(
        methods,
        ["POST", "GET"],
        "the probe is a GET, no notification"
    );
}

/// Keys that make no sense for WeChat Pay are refused when the configuration is loaded, all of
/// them at once and each named as written; `serve` exits 64 on them before binding a port.
#[test]
fn keys_that_make_no_sense_for_wechat_pay_are_refused_at_load() {
    let toml = format!(
        "{}\nprimary = \"orders\"\nlate_replies = \"customer_service\"\n\
         allowed_sources = [\"wechat\"]\nmax_timestamp_skew_secs = 0\n{}",
        pay_account("pay", "").trim_end(),
        target(
            "orders",
            "http://127.0.0.1:9/n",
            "replies_to = [\"*\"]\nshadow_of = \"x\"\nresign = { token_env = \"T\" }\n\
             event_types = [\"TRANS*ACTION\"]"
        ),
    );
    let message = crate::support::config_error(&toml);
    for key in [
        "accounts[0].primary",
        "accounts[0].late_replies",
        "accounts[0].allowed_sources",
        "accounts[0].max_timestamp_skew_secs",
        "accounts[0].targets[0].replies_to",
        "accounts[0].targets[0].shadow_of",
        "accounts[0].targets[0].resign",
        "accounts[0].targets[0].event_types",
    ] {
        assert!(
            message.contains(&format!("{key}: ")),
            "{key} in:\n{message}"
        );
    }
    // Unreadable key files and a short APIv3 key are caught when the table is built.
    let broken = format!(
        "{FAST}\n[[accounts]]\nid = \"pay\"\nkind = \"wechat_pay\"\nmchid = \"1900000100\"\n\
         wechatpay_public_keys = [{{ id = \"{PUBLIC_KEY_ID}\", path = \"/nonexistent.pem\" }}]\n\
         apiv3_key = \"short\"\n{}",
        target("t", "http://127.0.0.1:9/n", "")
    );
    let message = crate::support::config_error(&broken);
    assert!(
        message.contains("accounts[0].wechatpay_public_keys[0].path"),
        "{message}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pay.toml");
    std::fs::write(&path, &toml).unwrap();
    let output =
        crate::support::binary::run(&["check-config", "--config", &path.to_string_lossy()]);
    assert_eq!(output.status.code(), Some(64));
    assert!(!String::from_utf8_lossy(&output.stderr).contains(APIV3_KEY));
}
