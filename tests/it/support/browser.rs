//! A real browser for the console tests: the system's headless Chromium, driven through the
//! system's chromedriver over the W3C WebDriver protocol (a few JSON calls over HTTP, made with
//! the reqwest the tests already use). Nothing is downloaded; without `/usr/bin/chromium` and
//! `/usr/bin/chromedriver` (`.ci/run` installs them) the test fails, it is never skipped.
//!
//! Dropping the [`Browser`] ends chromedriver and the Chromium it started (the processes using
//! this browser's fresh profile folder), even when the test failed halfway and never quit the
//! session.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use super::{WAIT, eventually_async, free_addr};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C name of an element reference in WebDriver's JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub(crate) struct Browser {
    driver: Child,
    /// `http://127.0.0.1:{port}/session/{id}`.
    session: String,
    client: reqwest::Client,
    /// Chromium's profile, fresh for each browser.
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium session whose
    /// visitor reads English.
    pub(crate) async fn start() -> Browser {
        Browser::start_in("en-US").await
    }

    /// The same, for a visitor whose browser asks for `lang` (`zh-CN`): Chromium's own language
    /// and the `Accept-Language` it sends (`navigator.languages`).
    pub(crate) async fn start_in(lang: &str) -> Browser {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: install Debian's chromium and chromium-driver (.ci/run does)"
            );
        }
        let port = free_addr().port();
        let mut command = Command::new(CHROMEDRIVER);
        command
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let driver = command.spawn().expect("start chromedriver");
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(WAIT * 3)
            .build()
            .expect("HTTP client");
        let base = format!("http://127.0.0.1:{port}");
        eventually_async("chromedriver to start", || async {
            let response = client.get(format!("{base}/status")).send().await.ok()?;
            let status: Value = serde_json::from_slice(&response.bytes().await.ok()?).ok()?;
            (status["value"]["ready"] == json!(true)).then_some(())
        })
        .await;
        let profile = tempfile::tempdir().expect("a profile folder");
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1400,900".to_owned(),
            format!("--lang={lang}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": args,
                    "prefs": { "intl.accept_languages": lang },
                },
            }}
        });
        let mut browser = Browser {
            driver,
            session: String::new(),
            client,
            profile,
        };
        let created = browser
            .call(
                reqwest::Method::POST,
                &format!("{base}/session"),
                capabilities,
            )
            .await;
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"));
        browser.session = format!("{base}/session/{id}");
        browser
    }

    async fn call(&self, method: reqwest::Method, url: &str, body: Value) -> Value {
        let mut request = self.client.request(method.clone(), url);
        if method != reqwest::Method::GET {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("chromedriver: {e}"));
        let status = response.status();
        let bytes = response.bytes().await.expect("chromedriver's answer");
        let answer: Value = serde_json::from_slice(&bytes).expect("chromedriver answers JSON");
        assert!(
            status.is_success(),
            "chromedriver {method} {url}: {status} {answer}"
        );
        answer["value"].clone()
    }

    async fn session_call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        self.call(method, &format!("{}{path}", self.session), body)
            .await
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.session_call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its return value.
    pub(crate) async fn run(&self, script: &str, args: Value) -> Value {
        self.session_call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// Waits (bounded by [`WAIT`]) until `script` returns something other than null, false
    /// or ""; returns it. Fails with `what` and a screenshot path otherwise.
    pub(crate) async fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.run(script, json!([])).await;
            if !(value.is_null() || value == json!(false) || value == json!("")) {
                return value;
            }
            if Instant::now() >= deadline {
                let shot = self.screenshot(&format!("failed-{}", slug(what))).await;
                panic!(
                    "gave up after {WAIT:?} waiting for: {what} (screenshot {})",
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn find(&self, css: &str) -> String {
        let found = self
            .session_call(
                reqwest::Method::POST,
                "/element",
                json!({ "using": "css selector", "value": css }),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    pub(crate) async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.session_call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            json!({}),
        )
        .await;
    }

    pub(crate) async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.session_call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// The text of the whole page as shown (hidden elements excluded).
    pub(crate) async fn page_text(&self) -> String {
        let text = self.run("return document.body.innerText;", json!([])).await;
        text.as_str().unwrap_or_default().to_owned()
    }

    /// Resizes the window (its outer size, in CSS pixels): what a phone's screen would be.
    pub(crate) async fn set_window_size(&self, width: u32, height: u32) {
        self.session_call(
            reqwest::Method::POST,
            "/window/rect",
            json!({ "width": width, "height": height }),
        )
        .await;
    }

    /// Saves a PNG of the window as `{CARGO_TARGET_TMPDIR}/console/{name}.png`; its path.
    pub(crate) async fn screenshot(&self, name: &str) -> PathBuf {
        let data = self
            .session_call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
        std::fs::create_dir_all(&dir).expect("the screenshot folder");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// Ends the session (Chromium quits), then chromedriver.
    pub(crate) async fn quit(mut self) {
        let session = std::mem::take(&mut self.session);
        let _ = self.client.delete(session).send().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Chromium outlives a killed chromedriver: find it by its profile folder, unique to us.
        let profile = format!("--user-data-dir={}", self.profile.path().display());
        let Ok(processes) = std::fs::read_dir("/proc") else {
            return;
        };
        for process in processes.flatten() {
            let Ok(pid) = process.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(process.path().join("cmdline")) else {
                continue;
            };
            if cmdline
                .split(|&b| b == 0)
                .any(|arg| arg == profile.as_bytes())
            {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

fn slug(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(60)
        .collect()
}
