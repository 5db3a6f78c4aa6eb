//! The routing table: filters, reply owners and shadows as built from a config, and every rule
//! that building checks.

use super::*;
use crate::config::Config;
use crate::config::tests::MINIMAL;

#[test]
fn filters_by_type_and_event_ignoring_case() {
    let config = Config::from_toml(
        r#"
        [[accounts]]
        id = "a"
        kind = "official_account"
        token = "t"
        [[accounts.targets]]
        name = "all"
        url = "http://127.0.0.1:1/"
        [[accounts.targets]]
        name = "subs"
        url = "http://127.0.0.1:2/"
        msg_types = ["TEXT", "event"]
        events = ["subscribe", "SCAN"]
        "#,
    )
    .unwrap();
    let routes = crate::routing::build(&config).unwrap();
    let account = routes.account("a").unwrap();
    let env = |xml: &str| Envelope::parse(xml.as_bytes()).unwrap();
    let (all, subs) = (&account.targets[0], &account.targets[1]);
    let text = env("<xml><MsgType>text</MsgType></xml>");
    let scan = env("<xml><MsgType>event</MsgType><Event>scan</Event></xml>");
    let click = env("<xml><MsgType>event</MsgType><Event>CLICK</Event></xml>");
    let image = env("<xml><MsgType>image</MsgType></xml>");
    assert!(all.accepts(&click, None) && all.accepts(&image, None));
    assert!(subs.accepts(&text, None) && subs.accepts(&scan, None));
    assert!(!subs.accepts(&click, None) && !subs.accepts(&image, None));
    assert!(account.owner(&text, None).is_none() && account.owner(&click, None).is_none());
}

/// `{authorizer}` is replaced in the path (where the URL parser percent-encodes the braces)
/// and in the query (where it does not); without an authorizer such a target takes nothing.
#[test]
fn the_authorizer_fills_its_placeholders_in_path_and_query() {
    let config = Config::from_toml(
        r#"
        [[accounts]]
        id = "op"
        kind = "open_platform"
        token = "t"
        app_id = "wx1"
        encoding_aes_key = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
        [[accounts.targets]]
        name = "svc"
        url = "http://127.0.0.1:1/wx/{authorizer}?app={authorizer}"
        "#,
    )
    .unwrap();
    let routes = crate::routing::build(&config).unwrap();
    let svc = &routes.account("op").unwrap().targets[0];
    assert_eq!(
        svc.url_for(Some("wxA")),
        "http://127.0.0.1:1/wx/wxA?app=wxA"
    );
    let ticket =
        Envelope::parse(b"<xml><InfoType>component_verify_ticket</InfoType></xml>").unwrap();
    assert!(!svc.accepts(&ticket, None));
    assert!(svc.accepts(&ticket, Some("wxA")));
}

/// What building the routes of `text` says (loading it must succeed).
fn build_error_of(text: &str) -> String {
    let config = Config::from_toml(text).unwrap();
    build(&config).map(|_| ()).unwrap_err().to_string()
}

#[test]
fn building_names_the_key() {
    let bad_key = MINIMAL.replace(
        "token = \"tok\"",
        "token = \"tok\"\nencoding_aes_key = \"short\"\napp_id = \"wx1\"",
    );
    assert_eq!(
        build_error_of(&bad_key),
        "accounts[0].encoding_aes_key: must be 43 characters of base64 (A-Z, a-z, 0-9)"
    );
    let wecom_plain = MINIMAL.replace("official_account", "wecom");
    assert!(build_error_of(&wecom_plain).starts_with("accounts[0].mode:"));
    let resign = MINIMAL.replace(
        "url = \"http://127.0.0.1:9001/wx\"",
        "url = \"http://127.0.0.1:9001/wx\"\nresign = { token_env = \"WF_TEST_NEVER_SET_1\" }",
    );
    assert_eq!(
        build_error_of(&resign),
        "accounts[0].targets[0].resign.token_env: environment variable WF_TEST_NEVER_SET_1 is not set (or not UTF-8)"
    );
    let sources = |list: &str| {
        MINIMAL.replace(
            "token = \"tok\"",
            &format!("token = \"tok\"\nallowed_sources = {list}"),
        )
    };
    assert!(
        build_error_of(&sources("[\"10.0.0.0/33\"]"))
            .starts_with("accounts[0].allowed_sources[0]:")
    );
    assert!(build_error_of(&sources("[]")).starts_with("accounts[0].allowed_sources:"));
    assert!(build_error_of(&sources("[\"wechat\"]")).starts_with("accounts[0].app_id:"));
    let no_secret = sources("[\"wechat\"]").replace("kind", "app_id = \"wx1\"\nkind");
    assert!(build_error_of(&no_secret).starts_with("accounts[0].app_secret:"));
    build(&Config::from_toml(&sources("[\"10.0.0.0/8\", \"203.0.113.7\"]")).unwrap()).unwrap();
    let open_plain = MINIMAL.replace("official_account", "open_platform");
    assert!(build_error_of(&open_plain).starts_with("accounts[0].mode: open platform"));
    let open = MINIMAL
        .replace("/wx\"", "/wx/{authorizer}\"")
        .replace("official_account", "open_platform")
        .replace(
            "token = \"tok\"",
            "token = \"tok\"\napp_id = \"wx1\"\nencoding_aes_key = \"jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C\"",
        );
    build(&Config::from_toml(&open).unwrap()).unwrap();
}

/// Every account and target is built on its own: the problems of two accounts are reported
/// together.
#[test]
fn every_problem_of_the_accounts_is_reported_at_once() {
    let second = MINIMAL
        .replace("\"main\"", "\"second\"")
        .replace("token = \"tok\"", "token_env = \"WF_TEST_NEVER_SET_4\"");
    let text =
        MINIMAL.replace("token = \"tok\"", "token = \"tok\"\nallowed_sources = []") + &second;
    let error = build_error_of(&text);
    assert!(error.starts_with("2 problems:"), "{error}");
    assert!(
        error.contains("\n  accounts[0].allowed_sources:"),
        "{error}"
    );
    assert!(error.contains("\n  accounts[1].token_env:"), "{error}");
}

#[test]
fn an_empty_file_loads_but_builds_no_routes() {
    let config = Config::from_toml("").unwrap();
    assert_eq!(
        build(&config).map(|_| ()).unwrap_err().to_string(),
        "accounts: no account is configured"
    );
}
