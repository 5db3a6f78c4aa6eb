//! One callback, from the on-call engineer's chair: which targets have it still, what each
//! answered, when the next attempt comes, what WeChat got back; through the admin API
//! (`GET /callbacks`, `GET /callbacks/{id}`), with the message itself shown only with
//! `admin.show_content`.

use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};
use wechat_fanout::clock::now_ms;
use wechat_fanout::config::Mode;
use wechat_fanout::wechat::{Kind, SealedRequest};

use crate::support::{FAST, Proxy, Target, Wx, eventually_async, free_addr, text_xml};

/// What the reply owner answers.
const REPLY: &str = "<xml><MsgType>text</MsgType><Content>on its way</Content></xml>";

/// `GET path` on the proxy's admin listener: the status and the JSON answered.
async fn get(proxy: &Proxy, path: &str) -> (u16, Value) {
    let answer = proxy.admin(Method::GET, path).await;
    let body = serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {answer:?}"));
    (answer.status, body)
}

/// A safe-mode account whose reply owner `bot` answers [`REPLY`], with `crm` (500, two
/// attempts), `lake` (200) and `down` (nothing listens; the next attempt a minute later) beside
/// it, and `admin` settings: one callback posted to it, and WeChat's answer checked. The proxy,
/// the callback, its id (from `GET /callbacks`) and the CRM.
async fn one_callback_at_rest(admin: &str) -> (Proxy, SealedRequest, i64, Target) {
    let bot = Target::start(200).await;
    bot.set_reply("application/xml", REPLY);
    let crm = Target::start(500).await;
    let lake = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let toml = format!(
        "{FAST}[admin]\n{admin}\n{}{}{}{}{}",
        wx.account("main", "primary = \"bot\""),
        Wx::target("bot", &bot.url("/bot"), ""),
        Wx::target("crm", &crm.url("/crm"), "max_attempts = 2"),
        Wx::target("lake", &lake.url("/lake"), ""),
        Wx::target(
            "down",
            &format!("http://{}/down", free_addr()),
            "max_attempts = 100\nbackoff_initial_ms = 60000\nbackoff_max_ms = 60000",
        ),
    );
    let proxy = Proxy::start_with_admin(&toml).await;
    let sealed = wx.seal(&text_xml("where did it go"));
    let answer = proxy.post("main", &sealed).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, REPLY));
    let (status, ids) = get(&proxy, "/callbacks").await;
    assert_eq!(status, 200, "{ids}");
    let id = ids[0]
        .as_i64()
        .unwrap_or_else(|| panic!("one callback: {ids}"));
    assert_eq!(ids.as_array().map(Vec::len), Some(1), "{ids}");
    // At rest: bot and lake delivered, crm dead after two attempts, down waiting a minute.
    eventually_async("the deliveries to come to rest", || async {
        let (_, shown) = get(&proxy, &format!("/callbacks/{id}")).await;
        let states: Vec<(&str, &str)> = (shown["jobs"].as_array()?.iter())
            .map(|j| Some((j["target"].as_str()?, j["state"].as_str()?)))
            .collect::<Option<_>>()?;
        let at_rest = states == [("crm", "dead"), ("down", "pending")]
            && !shown["answer"].is_null()
            && shown["jobs"][1]["attempts"] == 1;
        at_rest.then_some(())
    })
    .await;
    (proxy, sealed, id, crm)
}

/// The incident: a user says the shop never heard of their message. The engineer lists the
/// latest callbacks and opens one: its reply went back to WeChat, the bot and the lake have it
/// (no job left), the CRM answered 500 twice and gave up, and the warehouse (`down`) refused
/// the connection and is tried again within the minute. The message itself, its sender and the
/// reply stay hidden (`admin.show_content` is off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_is_traced_to_each_target_with_the_admin_api() {
    let (proxy, sealed, id, crm) = one_callback_at_rest("").await;

    for (query, expected) in [
        ("?account=main", json!([id])),
        ("?account=shop", json!([])),
        ("?limit=0", json!([])),
        ("?account=main&limit=5", json!([id])),
    ] {
        assert_eq!(
            get(&proxy, &format!("/callbacks{query}")).await,
            (200, expected)
        );
    }
    let (status, shown) = get(&proxy, &format!("/callbacks/{id}")).await;
    assert_eq!(status, 200, "{shown:#}");
    assert_eq!(
        (
            &shown["id"],
            &shown["account"],
            &shown["msg_type"],
            &shown["event"]
        ),
        (&json!(id), &json!("main"), &json!("text"), &Value::Null),
        "{shown:#}"
    );
    let received = shown["received_at_ms"].as_i64().unwrap();
    assert!(
        received > now_ms() - 60_000 && received <= now_ms(),
        "{shown:#}"
    );
    let request = &shown["request"];
    let hidden = "(message content hidden: admin.show_content is off)";
    assert_eq!(
        (
            &request["method"],
            &request["body"],
            &request["body_base64"]
        ),
        (&json!("POST"), &json!(hidden), &json!("")),
        "{shown:#}"
    );
    let query = request["query"].as_str().unwrap();
    assert!(query.contains("openid=%28hidden%29"), "{query}");
    assert!(!query.contains("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"), "{query}");
    assert_eq!(
        request["headers"],
        json!([
            ["content-type", sealed.content_type],
            ["x-wechat-fanout-account", "main"]
        ])
    );
    assert_eq!(
        shown["answer"],
        json!({ "content_type": "application/xml", "body": hidden, "body_base64": "" })
    );

    let crm_job = &shown["jobs"][0];
    let delivery = crm.received()[0].delivery();
    assert_eq!(
        (
            &crm_job["id"],
            &crm_job["attempts"],
            &crm_job["due_in_ms"],
            &crm_job["last_status"],
            &crm_job["last_error"]
        ),
        (
            &json!(delivery),
            &json!(2),
            &Value::Null,
            &json!(500),
            &json!("target answered 500")
        ),
        "{shown:#}"
    );
    let log: Vec<(i64, i64)> = (crm_job["attempt_log"].as_array().unwrap().iter())
        .map(|a| {
            (
                a["attempt"].as_i64().unwrap(),
                a["status"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(log, [(1, 500), (2, 500)], "{shown:#}");
    let down = &shown["jobs"][1];
    let due_in = down["due_in_ms"].as_i64().unwrap();
    assert!(due_in > 0 && due_in <= 60_000, "{shown:#}");
    assert_eq!(down["last_status"], Value::Null, "{shown:#}");
    let error = down["last_error"].as_str().unwrap();
    assert!(error.starts_with("connection failed"), "{shown:#}");
    assert_eq!(down["attempt_log"][0]["error"], error, "{shown:#}");

    for (path, status, error) in [
        ("/callbacks/abc", 400, "not a callback id: \"abc\""),
        ("/callbacks/999999", 404, "no callback 999999"),
        ("/callbacks?colour=red", 400, "unknown parameter \"colour\""),
        ("/callbacks?limit=some", 400, "limit must be a number"),
    ] {
        assert_eq!(
            get(&proxy, path).await,
            (status, json!({ "error": error })),
            "{path}"
        );
    }
}

/// With `admin.show_content`, the same view shows the message as WeChat sent it (the sender's
/// openid, the encrypted body, exactly) with the decrypted message, and the reply WeChat got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_show_content_a_callback_shows_the_message_and_the_reply() {
    let (proxy, sealed, id, _) = one_callback_at_rest("show_content = true").await;
    let (_, shown) = get(&proxy, &format!("/callbacks/{id}")).await;
    let request = &shown["request"];
    assert_eq!(request["query"], sealed.query.as_str(), "{shown:#}");
    assert_eq!(request["body"], sealed.body.as_str(), "{shown:#}");
    let exact = base64::engine::general_purpose::STANDARD
        .decode(request["body_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(exact, sealed.body.as_bytes());
    let decrypted = request["decrypted"].as_str().unwrap_or_default();
    assert!(decrypted.contains("where did it go"), "{shown:#}");
    let answer = &shown["answer"];
    assert_eq!(answer["body"], REPLY, "{shown:#}");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(answer["body_base64"].as_str().unwrap())
            .unwrap(),
        REPLY.as_bytes()
    );
}
