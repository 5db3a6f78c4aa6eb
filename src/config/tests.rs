//! The configuration's field rules, defaults and redaction.

use super::*;

/// One account with one target: what the other tests of the configuration start from.
pub(crate) const MINIMAL: &str = r#"
    [[accounts]]
    id = "main"
    kind = "official_account"
    token = "tok"
    [[accounts.targets]]
    name = "bot"
    url = "http://127.0.0.1:9001/wx"
"#;

fn error_of(text: &str) -> String {
    Config::from_toml(text).unwrap_err().to_string()
}

#[test]
fn defaults_apply_and_targets_inherit_them() {
    let config = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(config.server.max_body_bytes, 65536);
    assert_eq!(config.server.max_query_bytes, 4096);
    assert_eq!(config.store.min_free_bytes, 33_554_432);
    assert_eq!(config.server.reply_deadline_ms, Millis(4000));
    let settings = config.accounts[0].targets[0].settings(&config.target_defaults);
    assert_eq!(settings.max_attempts, 110);
    assert_eq!(settings.backoff_max, Duration::from_secs(1800));
    assert_eq!(settings.timeout, Duration::from_secs(3));
    assert!(!settings.http2);
}

#[test]
fn http2_is_inherited_from_target_defaults_and_overridden_per_target() {
    let text = MINIMAL.replace(
        "url = \"http://127.0.0.1:9001/wx\"",
        "url = \"http://127.0.0.1:9001/wx\"\n[[accounts.targets]]\nname = \"h1\"\n\
         url = \"http://127.0.0.1:9002/wx\"\nhttp2 = false",
    ) + "\n[target_defaults]\nhttp2 = true\n";
    let config = Config::from_toml(&text).unwrap();
    let http2 = |j: usize| {
        config.accounts[0].targets[j]
            .settings(&config.target_defaults)
            .http2
    };
    assert!(http2(0), "inherited");
    assert!(!http2(1), "overridden");
}

#[test]
fn pipelining_is_for_plain_http_targets_without_http2() {
    let pipelined = |url: &str, extra: &str| {
        MINIMAL.replace(
            "url = \"http://127.0.0.1:9001/wx\"",
            &format!("url = \"{url}\"\npipelining = true\n{extra}"),
        )
    };
    let config = Config::from_toml(&pipelined("http://127.0.0.1:9001/wx", "")).unwrap();
    assert!(
        config.accounts[0].targets[0]
            .settings(&config.target_defaults)
            .pipelining
    );
    for (url, extra) in [
        ("https://bot.example/wx", ""),
        ("http://127.0.0.1:9001/wx", "http2 = true"),
    ] {
        let error = error_of(&pipelined(url, extra));
        assert!(error.contains("targets[0].pipelining"), "{error}");
        assert!(error.contains("http:// targets without http2"), "{error}");
    }
}

#[test]
fn errors_name_the_key() {
    let bad_primary = MINIMAL.replace("token = \"tok\"", "token = \"tok\"\nprimary = \"nope\"");
    assert!(error_of(&bad_primary).starts_with("accounts[0].primary:"));
    let typo = format!("{MINIMAL}\n[server]\nlisten_addr = \"x\"");
    assert!(
        error_of(&typo).contains("listen_addr"),
        "{}",
        error_of(&typo)
    );
    let deadline = format!("{MINIMAL}\n[server]\nreply_deadline_ms = 5000");
    assert!(error_of(&deadline).starts_with("server.reply_deadline_ms:"));
    let short = format!("{MINIMAL}\n[server]\nmax_query_bytes = 100");
    assert!(error_of(&short).starts_with("server.max_query_bytes: must be between 512"));
    let huge = format!("{MINIMAL}\n[store]\nmin_free_bytes = 2251799813685248");
    assert!(error_of(&huge).starts_with("store.min_free_bytes:"));
    let dup = MINIMAL.replace(
        "[[accounts.targets]]",
        "[[accounts.targets]]\nname = \"bot\"\nurl = \"http://a/\"\n[[accounts.targets]]",
    );
    assert!(error_of(&dup).starts_with("accounts[0].targets[1].name:"));
    let unknown = MINIMAL.replace(
        "url = \"http://127.0.0.1:9001/wx\"",
        "url = \"http://127.0.0.1:9001/wx\"\nresign = { token = \"inline\" }",
    );
    assert!(
        error_of(&unknown).contains("token"),
        "{}",
        error_of(&unknown)
    );
    let info = MINIMAL.replace(
        "url = \"http://127.0.0.1:9001/wx\"",
        "url = \"http://127.0.0.1:9001/wx\"\ninfo_types = [\"authorized\"]",
    );
    assert!(error_of(&info).starts_with("accounts[0].targets[0].info_types: "));
    let templated = MINIMAL.replace("/wx\"", "/wx/{authorizer}\"");
    assert!(error_of(&templated).starts_with("accounts[0].targets[0].url: "));
    let proxies = format!("{MINIMAL}\n[server]\ntrusted_proxies = [\"x\"]");
    assert!(error_of(&proxies).starts_with("server.trusted_proxies[0]:"));
}

/// One run names every problem of a file, each with its key, so a person fixes them all at
/// once instead of one per try.
#[test]
fn every_problem_of_a_file_is_reported_at_once() {
    let text = MINIMAL
        .replace("id = \"main\"", "id = \"m a i n\"\nprimary = \"nope\"")
        .replace("/wx\"", "/wx#part\"")
        + "\n[server]\nreply_deadline_ms = 5000\n";
    let error = error_of(&text);
    assert!(error.starts_with("4 problems:"), "{error}");
    for key in [
        "server.reply_deadline_ms:",
        "accounts[0].id:",
        "accounts[0].targets[0].url:",
        "accounts[0].primary:",
    ] {
        assert!(error.contains(&format!("\n  {key}")), "{key}: {error}");
    }
}

/// Loading needs no account's secret: only building the routes reads them.
#[test]
fn a_file_loads_without_the_accounts_secrets() {
    let text = MINIMAL.replace(
        "token = \"tok\"",
        "token_env = \"WF_TEST_NEVER_SET_2\"\nencoding_aes_key_env = \"WF_TEST_NEVER_SET_3\"\napp_id = \"wx1\"",
    );
    let config = Config::from_toml(&text).unwrap();
    assert_eq!(
        config.accounts[0].token_env.as_deref(),
        Some("WF_TEST_NEVER_SET_2")
    );
}

/// No accepted query may make a target's URL invalid: a fragment would swallow it, and the
/// URL plus the longest accepted query must stay a URI the client can send.
#[test]
fn every_target_url_has_room_for_the_longest_accepted_query() {
    let fragment = MINIMAL.replace("/wx\"", "/wx#part\"");
    assert!(
        error_of(&fragment).starts_with("accounts[0].targets[0].url: must not have a #fragment")
    );
    let path = "p".repeat(40_000);
    let long = MINIMAL.replace("/wx\"", &format!("/{path}\""));
    Config::from_toml(&long).expect("a long URL with the default 4096-byte queries fits");
    let longer = format!("{long}\n[server]\nmax_query_bytes = 30000");
    assert!(
        error_of(&longer).starts_with(
            "accounts[0].targets[0].url: with a query of server.max_query_bytes (30000)"
        ),
        "{}",
        error_of(&longer)
    );

    // At the limit, the URL a delivery builds (as `outbound` builds it) is a valid URI.
    let max = MAX_URI_BYTES / 2;
    let config =
        Config::from_toml(&format!("{MINIMAL}\n[server]\nmax_query_bytes = {max}")).unwrap();
    let base = "http://127.0.0.1:9001/".to_owned() + &"p".repeat(MAX_URI_BYTES - max - 23);
    let url = Url::parse(&base).unwrap();
    assert_eq!(url.as_str().len() + 1 + max, MAX_URI_BYTES);
    let query = "a=%E4%BD%A0+b".repeat(max / 13) + &"c".repeat(max % 13);
    assert_eq!(query.len(), config.server.max_query_bytes);
    let uri = format!("{url}?{query}");
    assert!(http::Uri::try_from(uri.as_str()).is_ok());
    assert!(
        http::Uri::try_from(format!("{uri}x").as_str()).is_err(),
        "one more byte is too long"
    );
}

#[test]
fn redaction_hides_secrets() {
    let text = MINIMAL.replace(
        "token = \"tok\"",
        "token = \"very-secret-token\"\napp_id = \"wx1\"\napp_secret = \"very-secret-app-secret\"\nencoding_aes_key = \"jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C\"",
    );
    let printed = Config::from_toml(&text).unwrap().redacted_toml();
    assert!(!printed.contains("very-secret-token"));
    assert!(!printed.contains("very-secret-app-secret"));
    assert!(!printed.contains("jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"));
    assert!(printed.contains("<redacted>"));
}

#[test]
fn redis_keys_are_validated_and_named() {
    let redis = |section: &str| {
        format!("{MINIMAL}\n[store]\nbackend = \"redis\"\n[store.redis]\n{section}")
    };
    let config = Config::from_toml(&redis("")).unwrap();
    assert_eq!(config.store.backend, Backend::Redis);
    assert_eq!(config.store.redis.urls, vec!["redis://127.0.0.1:6379/0"]);
    assert_eq!(config.store.redis.lease_ms, Millis(30_000));
    assert_eq!(config.store.redis.min_replicas, 0);
    assert_eq!(config.store.redis.min_replicas_timeout_ms, Millis(1000));
    assert_eq!(config.store.redis.accept_linger_ms, Millis(1));
    Config::from_toml(&redis("accept_linger_ms = 0")).unwrap();
    Config::from_toml(&redis("urls = [\"rediss://:pw@redis.internal:6380\"]")).unwrap();
    let cases = [
        ("urls = []", "store.redis.urls:"),
        ("urls = [\"http://127.0.0.1:6379\"]", "store.redis.urls[0]:"),
        (
            "urls = [\"redis://a:1\", \"redis://b:1\"]",
            "store.redis.urls:",
        ),
        ("key_prefix = \"a{b}\"", "store.redis.key_prefix:"),
        ("key_prefix = \"\"", "store.redis.key_prefix:"),
        ("lease_ms = 10", "store.redis.lease_ms:"),
        (
            "min_replicas_timeout_ms = 0",
            "store.redis.min_replicas_timeout_ms:",
        ),
        (
            "min_replicas_timeout_ms = 5000",
            "store.redis.min_replicas_timeout_ms:",
        ),
        ("accept_linger_ms = 21", "store.redis.accept_linger_ms:"),
        ("min_replicas = -1", "min_replicas"),
        (
            "password_env = \"WECHAT_FANOUT_TEST_NO_SUCH_VARIABLE\"",
            "store.redis.password_env:",
        ),
        ("cluster = \"yes\"", "cluster"),
        ("url = \"redis://x\"", "url"),
        (
            "cluster = true\nsentinel_master = \"mymaster\"",
            "store.redis.sentinel_master:",
        ),
        ("sentinel_master = \"\"", "store.redis.sentinel_master:"),
        (
            "sentinel_master = \"my master\"",
            "store.redis.sentinel_master:",
        ),
        (
            "sentinel_password_env = \"WECHAT_FANOUT_TEST_NO_SUCH_VARIABLE\"",
            "store.redis.sentinel_password_env:",
        ),
        (
            "sentinel_master = \"m\"\nsentinel_password_env = \"WECHAT_FANOUT_TEST_NO_SUCH_VARIABLE\"",
            "store.redis.sentinel_password_env:",
        ),
        (
            "sentinel_master = \"m\"\nurls = [\"redis://a:26379\", \"rediss://b:26379\"]",
            "store.redis.urls:",
        ),
    ];
    for (section, key) in cases {
        let error = error_of(&redis(section));
        assert!(
            error.starts_with(key) || error.contains(key),
            "{section}: {error}"
        );
    }
    let bad_url = error_of(&redis("urls = [\"redis//:s3cret@x\"]"));
    assert!(!bad_url.contains("s3cret"), "{bad_url}");
    let seeds = redis("cluster = true\nurls = [\"redis://a:7000\", \"redis://b:7001\"]");
    assert!(Config::from_toml(&seeds).unwrap().store.redis.cluster);
    let sentinels = redis(
        "sentinel_master = \"mymaster\"\nurls = [\"redis://a:26379\", \"redis://b:26379\", \"redis://c:26379\"]",
    );
    let sentinels = Config::from_toml(&sentinels).unwrap().store.redis;
    assert_eq!(sentinels.sentinel_master.as_deref(), Some("mymaster"));
    assert_eq!(sentinels.urls.len(), 3);
    let backend = format!("{MINIMAL}\n[store]\nbackend = \"mongo\"");
    assert!(
        error_of(&backend).contains("backend"),
        "{}",
        error_of(&backend)
    );
}

#[test]
fn redis_passwords_are_redacted_from_urls() {
    assert_eq!(
        redact_url("redis://:s3cret@127.0.0.1:6379/0"),
        "redis://:%3Credacted%3E@127.0.0.1:6379/0"
    );
    assert!(!redact_url("rediss://user:s3cret@host:6380").contains("s3cret"));
    assert_eq!(redact_url("redis://127.0.0.1"), "redis://127.0.0.1");
    assert_eq!(redact_url("not a url s3cret"), "<unparsable URL>");
    let text = format!(
        "{MINIMAL}\n[store]\nbackend = \"redis\"\n[store.redis]\nurls = [\"redis://:s3cret@10.0.0.1:6379/0\"]"
    );
    let printed = Config::from_toml(&text).unwrap().redacted_toml();
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(printed.contains("10.0.0.1:6379"), "{printed}");
}
