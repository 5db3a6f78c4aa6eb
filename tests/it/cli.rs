//! The command line as an operator meets it: `check-config` and `serve` with good and bad files.

use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use crate::support::binary::run;
use crate::support::{Wx, free_addr};

/// A config file in `dir` with one safe-mode official account; `listen` and `store` set.
fn config(dir: &std::path::Path, listen: std::net::SocketAddr, account_extra: &str) -> String {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    format!(
        "[server]\nlisten = \"{listen}\"\n[store]\npath = \"{}\"\n{}{}",
        dir.join("data").join("fanout.db").display(),
        wx.account("main", account_extra),
        Wx::target("bot", "http://127.0.0.1:9/wx", ""),
    )
}

fn write(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// A bad key exits 64 and the message names it, for a wrong value and for a typo alike.
#[test]
fn check_config_on_a_bad_config_exits_64_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(dir.path(), free_addr(), "");
    let cases = [
        (
            good.replace(wx_key(), "tooShort"),
            "accounts[0].encoding_aes_key",
        ),
        (
            format!("{good}\n[delivery]\npoll_interval_ms = 0\n"),
            "delivery.poll_interval_ms",
        ),
        (
            good.replace("[server]\n", "[server]\nreply_deadline_ms = 6000\n"),
            "server.reply_deadline_ms",
        ),
        (
            good.replace("[server]\n", "[server]\nlisten_addr = \"x\"\n"),
            "listen_addr",
        ),
        (
            format!("{good}\n[store.redis]\nurls = [\"redis://a:1\", \"redis://b:1\"]\n"),
            "store.redis.urls",
        ),
        (
            format!("{good}\n[store.redis]\nurls = [\"http://:pw@a:1\"]\n"),
            "store.redis.urls[0]",
        ),
        (
            good.replace("[store]\n", "[store]\nbackend = \"redis\"\n")
                + "\n[store.redis]\npassword_env = \"WECHAT_FANOUT_IT_NO_SUCH_VARIABLE\"\n",
            "store.redis.password_env",
        ),
        (
            good.replace(
                "url = \"http://127.0.0.1:9/wx\"\n",
                "url = \"http://127.0.0.1:9/wx\"\nhttp2 = \"yes\"\n",
            ),
            "accounts[0].targets[0].http2",
        ),
        (
            format!("{good}\n[target_defaults]\nhttp2 = 1\n"),
            "target_defaults.http2",
        ),
    ];
    assert_each_refused(dir.path(), &cases);
}

/// `check-config` exits 64 on each config text, naming its key.
fn assert_each_refused(dir: &std::path::Path, cases: &[(String, &str)]) {
    for (text, key) in cases {
        let path = write(dir, text);
        let output = run(&["check-config", "--config", &path]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{key}: {stderr}");
        assert!(stderr.contains(key), "stderr does not name {key}: {stderr}");
    }
}

fn wx_key() -> &'static str {
    crate::support::wx::AES_KEY
}

/// A good config is printed in full, the token and the AES key replaced by `<redacted>`.
#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &config(dir.path(), free_addr(), ""));
    let output = run(&["check-config", "--config", &path]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("token = \"<redacted>\""), "{stdout}");
    assert!(
        stdout.contains("encoding_aes_key = \"<redacted>\""),
        "{stdout}"
    );
    assert!(!stdout.contains(crate::support::wx::TOKEN), "{stdout}");
    assert!(!stdout.contains(wx_key()), "{stdout}");
    // The effective config: the file's values and the defaults it did not set.
    assert!(stdout.contains("id = \"main\""), "{stdout}");
    assert!(stdout.contains("max_attempts = 110"), "{stdout}");
    // Issue 25: each target's retry window, after the TOML, as comments (still valid TOML).
    assert!(
        stdout.contains(
            "\n# main/bot: gives up after 110 attempts, 24 h 47 min after the first at the \
             earliest (49 h 34 min at the latest)\n"
        ),
        "{stdout}"
    );
    stdout
        .parse::<toml::Table>()
        .expect("check-config prints TOML");
    assert!(
        !dir.path().join("data").exists(),
        "check-config opens no store"
    );
}

/// `http2` is accepted per target and in `[target_defaults]`, and `check-config` shows both: the
/// default where it is set, and the target that overrides it.
#[test]
fn check_config_shows_http2_in_target_defaults_and_on_the_target_that_sets_it() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(dir.path(), free_addr(), "");
    let text = format!(
        "{}\n[target_defaults]\nhttp2 = true\n",
        good.replace(
            "url = \"http://127.0.0.1:9/wx\"\n",
            "url = \"http://127.0.0.1:9/wx\"\nhttp2 = false\n",
        )
    );
    let path = write(dir.path(), &text);
    let output = run(&["check-config", "--config", &path]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let section = |name: &str| {
        let start = stdout
            .find(name)
            .unwrap_or_else(|| panic!("no {name}: {stdout}"));
        let rest = &stdout[start + name.len()..];
        rest[..rest.find("\n[").unwrap_or(rest.len())].to_owned()
    };
    assert!(
        section("[target_defaults]\n").contains("http2 = true"),
        "{stdout}"
    );
    assert!(
        section("[[accounts.targets]]\n").contains("http2 = false"),
        "{stdout}"
    );
}

/// `serve` with a bad config exits 64 before binding its port or opening its store. Even with
/// the port taken by someone else it says 64 (the config is checked first), not a bind error.
#[test]
fn serve_with_a_bad_config_exits_64_without_binding() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let bad = config(dir.path(), listen, "primary = \"nobody\"");
    let path = write(dir.path(), &bad);

    let output = run(&["serve", "--config", &path]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("accounts[0].primary"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "no store was opened");
    std::net::TcpListener::bind(listen).expect("the port stayed free");

    let taken = std::net::TcpListener::bind(listen).unwrap();
    let output = run(&["serve", "--config", &path]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(!stderr.contains("binding"), "{stderr}");
    drop(taken);
}

/// Every configuration shipped in `config/` is one a newcomer can start from: `check-config`
/// accepts each (the Redis example names no password variable, so it needs none set; the safe
/// mode example reads its secrets from `MAIN_TOKEN` and `MAIN_AES_KEY`, the listen example
/// its token from `LAPTOP_LISTEN_TOKEN`). The defaults file is
/// not one: it has no account, and is compiled in under every other.
#[test]
fn every_shipped_config_passes_check_config() {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") || path.ends_with("default.toml") {
            continue;
        }
        let output =
            crate::support::binary::command(&["check-config", "--config", &path.to_string_lossy()])
                .env("MAIN_TOKEN", crate::support::wx::TOKEN)
                .env("MAIN_AES_KEY", wx_key())
                .env("LAPTOP_LISTEN_TOKEN", "a-listen-token-0123456789")
                .output()
                .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "example.toml",
            "listen.toml",
            "pay.toml",
            "redis.toml",
            "replies.toml",
            "safe.toml"
        ]
    );
}

/// Issue 11: an admin listener on a public address without `admin.token` would open the console
/// and the dead-letter API to the network: `serve` refuses it (64, naming the key) before binding
/// anything. A token too short to resist guessing is refused the same way.
#[test]
fn serve_refuses_a_public_admin_address_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(dir.path(), free_addr(), "");
    let public = format!(
        "{good}\n[admin]\nlisten = \"0.0.0.0:{}\"\n",
        free_addr().port()
    );
    let short = format!("{good}\n[admin]\ntoken = \"short\"\n");
    for (text, key, says) in [
        (&public, "admin.token", "not a loopback address"),
        (&short, "admin.token", "at least 16 characters"),
    ] {
        let path = write(dir.path(), text);
        let output = run(&["serve", "--config", &path]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains(key) && stderr.contains(says), "{stderr}");
        assert!(!stderr.contains("listening"), "{stderr}");
        assert!(!dir.path().join("data").exists(), "no store was opened");
    }
    // The token may come from the environment; check-config prints it redacted.
    let path = write(
        dir.path(),
        &public.replace("[admin]\n", "[admin]\ntoken_env = \"CONSOLE_TEST_TOKEN\"\n"),
    );
    let output = crate::support::binary::command(&["check-config", "--config", &path])
        .env("CONSOLE_TEST_TOKEN", "0123456789abcdef0123")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(!stdout.contains("0123456789abcdef0123"), "{stdout}");
    // An inline token is printed redacted.
    let path = write(
        dir.path(),
        &public.replace(
            "[admin]\n",
            "[admin]\ntoken = \"inline-admin-token-0123\"\n",
        ),
    );
    let output = run(&["check-config", "--config", &path]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(!stdout.contains("inline-admin-token"), "{stdout}");
    assert!(stdout.contains("token = \"<redacted>\""), "{stdout}");
}

/// Issue 23: the `url` crate drops tabs, CR and LF while it parses, so a URL written with a line
/// break in it used to pass `check-config` as some other URL. Every URL-valued key with a control
/// character or whitespace in it is refused (64, naming the key), and so is an admin token that
/// is blank or has blanks or control characters around it, inline or from the environment.
#[test]
fn check_config_refuses_urls_with_line_breaks_and_a_blank_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(dir.path(), free_addr(), "");
    let target = "url = \"http://127.0.0.1:9/wx\"\n";
    let with_api_base = config(
        dir.path(),
        free_addr(),
        "wechat_api_base = \"https://api.weixin.qq.com/\\r\"",
    );
    let cases = [
        (
            good.replace(
                target,
                "url = \"http://127.0.0.1:9/wx\\r\\nX-Injected: 1\"\n",
            ),
            "accounts[0].targets[0].url",
        ),
        (
            good.replace(target, "url = \"http://127.0.0.1:9/w\\tx\"\n"),
            "accounts[0].targets[0].url",
        ),
        (
            good.replace(target, "url = \"http://127.0.0.1:9/w x\"\n"),
            "accounts[0].targets[0].url",
        ),
        (
            format!("wechat_api_base = \"https://api.weixin.qq.com/\\n\"\n{good}"),
            "wechat_api_base",
        ),
        (with_api_base, "accounts[0].wechat_api_base"),
        (
            format!("{good}\n[store.redis]\nurls = [\"redis://127.0.0.1:6379/0\\r\\n\"]\n"),
            "store.redis.urls[0]",
        ),
        (
            format!("{good}\n[admin]\ntoken = \"                    \"\n"),
            "admin.token",
        ),
        (
            format!("{good}\n[admin]\ntoken = \" admin-token-0123456789\"\n"),
            "admin.token",
        ),
        (
            format!("{good}\n[admin]\ntoken = \"admin-token-0123456789\\n\"\n"),
            "admin.token",
        ),
    ];
    assert_each_refused(dir.path(), &cases);
    // From the environment: a variable of blanks is no token.
    let path = write(
        dir.path(),
        &format!("{good}\n[admin]\ntoken_env = \"CONSOLE_TEST_BLANK_TOKEN\"\n"),
    );
    for value in ["                    ", "admin-token-0123456789\r\n"] {
        let output = crate::support::binary::command(&["check-config", "--config", &path])
            .env("CONSOLE_TEST_BLANK_TOKEN", value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{value:?}: {stderr}");
        assert!(stderr.contains("admin.token_env:"), "{value:?}: {stderr}");
    }
}

/// One run names every problem of a file, those found loading it and those found building what
/// `serve` runs on, each by its key: `check-config` and `serve` alike, before any port is bound.
#[test]
fn check_config_and_serve_name_every_problem_of_a_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let fields = config(dir.path(), listen, "primary = \"nobody\"")
        .replace("[server]\n", "[server]\nreply_deadline_ms = 6000\n");
    let building = config(dir.path(), listen, "allowed_sources = []").replace(wx_key(), "tooShort");
    for (text, keys) in [
        (
            &fields,
            &["server.reply_deadline_ms", "accounts[0].primary"],
        ),
        (
            &building,
            &[
                "accounts[0].encoding_aes_key",
                "accounts[0].allowed_sources",
            ],
        ),
    ] {
        let path = write(dir.path(), text);
        for command in ["check-config", "serve"] {
            let output = run(&[command, "--config", &path]);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(64), "{command}: {stderr}");
            assert!(stderr.contains("2 problems:"), "{command}: {stderr}");
            for key in keys {
                assert!(
                    stderr.contains(key),
                    "{command} does not name {key}: {stderr}"
                );
            }
        }
        std::net::TcpListener::bind(listen).expect("the port stayed free");
    }
    // Mistakes serde stops at, all in one run too, by the key as written, with what was meant.
    let misspelt = config(dir.path(), listen, "")
        .replace("[server]\n", "[server]\nlistn = \"127.0.0.1:1\"\n")
        .replace("kind = \"official_account\"", "kind = \"official_acount\"")
        .replace(
            "[[accounts.targets]]\n",
            "[[accounts.targets]]\ntimout_ms = 5\n",
        );
    let path = write(dir.path(), &misspelt);
    let output = run(&["check-config", "--config", &path]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    for line in [
        "3 problems:",
        "  server.listn: unknown key; did you mean listen?",
        "  accounts[0].kind: unknown value \"official_acount\"; did you mean \"official_account\"?",
        "  accounts[0].targets[0].timout_ms: unknown key; did you mean timeout_ms?",
    ] {
        assert!(stderr.contains(line), "{line}: {stderr}");
    }
    assert!(
        !stderr.contains("default.") && !stderr.contains('`'),
        "{stderr}"
    );
}

/// A running proxy with its admin port: one plaintext account, a target nobody listens at.
async fn plaintext_proxy() -> crate::support::Proxy {
    crate::support::Proxy::start_with_admin(&format!(
        "{}{}{}",
        crate::support::FAST,
        Wx::new(Kind::OfficialAccount, Mode::Plaintext).account("main", ""),
        Wx::target("bot", "http://127.0.0.1:9/wx", ""),
    ))
    .await
}

/// The client commands read what they use: `healthcheck` and `dead-letters` run with a config
/// whose account secrets come from variables that are not set (an operator's laptop), while
/// `check-config` on the same file says which are missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_need_no_account_secret() {
    let proxy = plaintext_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let written = std::fs::read_to_string(proxy.write_config(dir.path())).unwrap();
    let secretless = written
        .replace(
            &format!("token = \"{}\"", crate::support::wx::TOKEN),
            "token_env = \"WF_TEST_NEVER_SET_TOKEN\"",
        )
        .replace(
            &format!("encoding_aes_key = \"{}\"", wx_key()),
            "encoding_aes_key_env = \"WF_TEST_NEVER_SET_KEY\"",
        );
    assert!(
        secretless.contains("WF_TEST_NEVER_SET_TOKEN"),
        "{secretless}"
    );
    let path = write(dir.path(), &secretless);
    let health = crate::support::binary::run_async(&["healthcheck", "--config", &path]).await;
    assert_eq!(health.code, Some(0), "{health:#?}");
    let letters =
        crate::support::binary::run_async(&["dead-letters", "list", "--config", &path]).await;
    assert_eq!(letters.code, Some(0), "{letters:#?}");
    let check = crate::support::binary::run_async(&["check-config", "--config", &path]).await;
    assert_eq!(check.code, Some(64), "{check:#?}");
    assert!(
        check.stderr.contains("WF_TEST_NEVER_SET_TOKEN"),
        "{check:#?}"
    );
}

/// Issue 25: the client commands need only the admin URL. Without any configuration file,
/// `healthcheck --admin-url` exits 0 while the proxy is up and 1 when nothing listens there,
/// and `dead-letters list --admin-url` lists; the admin token's old variable name is refused
/// with the one name to use instead of being silently ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_run_on_the_admin_url_alone() {
    let proxy = plaintext_proxy().await;
    let url = proxy.admin_url();
    let up = crate::support::binary::run_async(&["healthcheck", "--admin-url", &url]).await;
    assert_eq!(up.code, Some(0), "{up:#?}");
    assert_eq!(up.stdout, "200 OK ok\n", "{up:#?}");
    let ready =
        crate::support::binary::run_async(&["healthcheck", "--ready", "--admin-url", &url]).await;
    assert_eq!(ready.code, Some(0), "{ready:#?}");
    let listed =
        crate::support::binary::run_async(&["dead-letters", "list", "--admin-url", &url]).await;
    assert_eq!(
        listed.ok(),
        "ID  ACCOUNT  TARGET  TYPE/EVENT  DIED  ATTEMPTS  STATUS  LAST ERROR\n0 dead letters\n"
    );

    let nobody = format!("http://{}", crate::support::free_addr());
    let down = crate::support::binary::run_async(&["healthcheck", "--admin-url", &nobody]).await;
    assert_eq!(down.code, Some(1), "{down:#?}");
    assert!(down.stderr.contains("cannot reach"), "{down:#?}");

    let old = crate::support::binary::run_async_with_env(
        &["dead-letters", "list", "--admin-url", &url],
        &[("WECHAT_FANOUT_ADMIN_TOKEN", "a-token-of-twenty-chars")],
    )
    .await;
    assert_eq!(old.code, Some(64), "{old:#?}");
    assert!(
        old.stderr.contains("WECHAT_FANOUT_ADMIN_TOKEN is not read")
            && old.stderr.contains("WECHAT_FANOUT_ADMIN__TOKEN"),
        "{old:#?}"
    );
}
