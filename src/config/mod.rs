//! Configuration as the user wrote it: compiled-in defaults (`config/default.toml`) → the TOML
//! file → environment (`WECHAT_FANOUT_<SECTION>__<KEY>`), extracted with figment into these
//! sections, then [`Config::check`]ed: the rules of each field and across fields that need no
//! account's secret. What the proxy runs on is built from it once, by `routing::build`, which
//! resolves the accounts' secrets and is where every other rule is checked ("validation is
//! building"); the client commands load the file without building, so they never need an
//! account's secrets.
//!
//! Every error names the offending key (`accounts[1].encoding_aes_key: …`), and every error of a
//! file is reported at once, so `check-config` and `serve` can say exactly what to fix; the
//! binary exits 64 on any of them before binding a port. Secrets are never printed:
//! [`Config::redacted_toml`] replaces them.

mod accounts;
mod load;
mod pay;

pub use accounts::{
    AUTHORIZER_IN_URL, AccountConfig, AccountKind, LATE_REPLIES_TARGET, LISTEN_BACKLOG_SECS,
    LateReplies, MIN_LISTEN_TOKEN_BYTES, Mode, Order, PayPublicKeyConfig, ResignConfig,
    TargetConfig, authorizer_placeholders,
};
pub use pay::{PAY_TIMESTAMP_SKEW_SECS, PUBLIC_KEY_ID_PREFIX};

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::cidr::Cidr;
use crate::telemetry::LogFormat;

/// The documented defaults, compiled in so the binary needs no file to know them.
pub const DEFAULTS: &str = include_str!("../../config/default.toml");

const REDACTED: &str = "<redacted>";
/// `wechat_api_base`'s default (as `Url` writes it), and where WeCom's API is instead.
pub const DEFAULT_API_BASE: &str = "https://api.weixin.qq.com/";
pub const WECOM_API_BASE: &str = "https://qyapi.weixin.qq.com/";

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0}: not found")]
    NotFound(PathBuf),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    /// Several of the above, in the order of the file: everything to fix, in one run.
    #[error("{}", Several(.0))]
    Several(Vec<ConfigError>),
}

/// A key with the rule it breaks.
pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// `Ok` when nothing was found, else the one error or all of them.
pub fn all_of(mut errors: Vec<ConfigError>) -> Result<(), ConfigError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(ConfigError::Several(errors)),
    }
}

/// Several errors, one a line.
struct Several<'a>(&'a [ConfigError]);

impl fmt::Display for Several<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} problems:", self.0.len())?;
        for error in self.0 {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}

/// A URL key's value, checked as written before it is parsed: the `url` crate drops tabs, CR and
/// LF anywhere and blanks at either end (as browsers do), so `"http://a/x\r\nHost: b"` would
/// load as a URL other than the one written. No URL needs a control character or whitespace.
fn written_url<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Url, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_written_url(&text).map_err(serde::de::Error::custom)
}

/// [`written_url`] for an optional key.
fn written_url_if_any<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Url>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_written_url(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn parse_written_url(text: &str) -> Result<Url, String> {
    check_url_text(text)?;
    Url::parse(text).map_err(|e| format!("not a URL ({e})"))
}

/// Refuses a control character or whitespace in a URL as written; says where, without echoing
/// the URL (a Redis URL may hold a password).
fn check_url_text(text: &str) -> Result<(), String> {
    match text
        .char_indices()
        .find(|(_, c)| c.is_control() || c.is_whitespace())
    {
        Some((at, c)) => Err(format!(
            "has {} at byte {at}: a URL may hold no control character or whitespace \
             (the URL parser would drop it and use another URL than the one written)",
            if c.is_control() {
                format!("the control character {:?}", c)
            } else {
                format!("the whitespace {:?}", c)
            }
        )),
        None => Ok(()),
    }
}

/// The longest URI the HTTP client can send (the `http` crate's limit): a target's URL, `?` and
/// the callback's query must fit in it, or no attempt could ever be made.
pub const MAX_URI_BYTES: usize = u16::MAX as usize - 1;
/// WeChat's own queries (signature, timestamp, nonce, openid, encrypt_type, msg_signature) take
/// about 250 bytes: a smaller `server.max_query_bytes` would refuse real callbacks.
const MIN_QUERY_BYTES: usize = 512;
/// Far beyond any disk: a larger `store.min_free_bytes` is a typo that would never be ready.
const MAX_MIN_FREE_BYTES: u64 = 1 << 50;

/// The longest an accept may wait for its replicas: within the store's response timeout (3 s)
/// and WeChat's 5 s.
const MAX_MIN_REPLICAS_TIMEOUT_MS: u64 = 2000;
/// The most `store.redis.accept_linger_ms` may be: a wait before WeChat's answer, which only
/// pays while it stays small against the round trip it saves.
const MAX_ACCEPT_LINGER_MS: u64 = 20;

/// A shorter admin token is guessable: refuse it rather than protect the admin API with it.
const MIN_ADMIN_TOKEN_BYTES: usize = 16;

/// Far more event streams than operators: each one costs the proxy work for every event.
const MAX_EVENT_STREAMS: usize = 10_000;

/// A DNS name as `admin.hosts` lists it: labels of letters, digits, `-` and `_`, a trailing dot
/// allowed, no port.
fn is_host_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A duration written in milliseconds in TOML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    pub fn duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub traces: TracesConfig,
    pub store: StoreConfig,
    pub delivery: DeliveryConfig,
    pub target_defaults: TargetDefaults,
    /// WeChat's API (access tokens, callback IPs); an account may override it.
    #[serde(deserialize_with = "written_url")]
    pub wechat_api_base: Url,
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// Longest query string accepted: every target gets it appended to its URL.
    pub max_query_bytes: usize,
    pub reply_deadline_ms: Millis,
    pub max_timestamp_skew_secs: u64,
    pub header_read_timeout_ms: Millis,
    pub body_read_timeout_ms: Millis,
    pub shutdown_grace_ms: Millis,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` name the client (CIDRs).
    pub trusted_proxies: Vec<String>,
    /// This instance's stable name in metrics, logs and the console; default: the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_name: Option<String>,
}

impl ServerConfig {
    /// `instance_name`, or the host name where it is not set (`unknown` if that is empty).
    pub fn instance_name(&self) -> String {
        match &self.instance_name {
            Some(name) => name.clone(),
            None => {
                let host = rustix::system::uname()
                    .nodename()
                    .to_string_lossy()
                    .into_owned();
                if is_instance_name(&host) {
                    host
                } else {
                    "unknown".to_owned()
                }
            }
        }
    }
}

/// A name fit for a metric label and a log field: 1 to 64 letters, digits, `.`, `_` or `-`.
fn is_instance_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The token the console and the admin API ask for (`Authorization: Bearer`, or the console's
    /// session cookie); none: the admin API is open, which only a loopback `listen` allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The name of an environment variable that holds the token, instead of `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// `/metrics` asks for the token too (scrapers send it as a bearer token).
    pub protect_metrics: bool,
    /// The console shows openids and message content (decrypted, for safe-mode accounts).
    pub show_content: bool,
    /// Host names (besides `localhost` and IP literals) that requests may name in `Host`: a web
    /// page that rebinds its own name to this address names itself, and is refused.
    pub hosts: Vec<String>,
    /// The console's event streams open at once; one more is answered 503.
    pub max_event_streams: usize,
}

impl AdminConfig {
    /// The admin token, read from the environment where so configured.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        let token = secret(
            "admin",
            "token",
            self.token.as_deref(),
            self.token_env.as_deref(),
        )?;
        let Some(token) = token else {
            return Ok(None);
        };
        // Named where the token came from; the message never quotes it.
        let key = if self.token_env.is_some() {
            "admin.token_env"
        } else {
            "admin.token"
        };
        if token.trim().is_empty() {
            return Err(invalid(key, "the admin token is empty or blank"));
        }
        // A bearer token is read trimmed, so a token with blanks around it could never be
        // given; a control character is a paste or quoting mistake, not part of a secret.
        if token.trim() != token || token.chars().any(char::is_control) {
            return Err(invalid(
                key,
                "the admin token has blanks at either end or a control character (a line \
                 break?); remove them",
            ));
        }
        if token.len() < MIN_ADMIN_TOKEN_BYTES {
            return Err(invalid(
                "admin.token",
                format!("must be at least {MIN_ADMIN_TOKEN_BYTES} characters"),
            ));
        }
        Ok(Some(token))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
    /// Log openids and dedupe keys as they are, instead of their keyed hash (for debugging).
    pub show_user_ids: bool,
}

/// `[traces]`: OpenTelemetry traces over OTLP/HTTP, off without an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracesConfig {
    /// The collector's OTLP/HTTP base URL (`…/v1/traces` is appended); none: no traces.
    #[serde(
        default,
        deserialize_with = "written_url_if_any",
        skip_serializing_if = "Option::is_none"
    )]
    pub otlp_endpoint: Option<Url>,
    /// How often queued spans are sent.
    pub export_interval_ms: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Which store: the embedded SQLite file (one instance) or Redis (several instances).
    pub backend: Backend,
    pub path: PathBuf,
    pub synchronous: Synchronous,
    pub delivered_retention_secs: u64,
    /// Below this many free bytes on the store's file system, `/readyz` says 503 (0: no check).
    pub min_free_bytes: u64,
    pub redis: RedisConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Redis,
}

impl StoreConfig {
    /// Where the store is, for messages: the file, or the Redis URLs with passwords redacted.
    pub fn location(&self) -> String {
        match self.backend {
            Backend::Sqlite => format!("at {}", self.path.display()),
            Backend::Redis => {
                let urls: Vec<String> = self.redis.urls.iter().map(|u| redact_url(u)).collect();
                format!("on redis at {}", urls.join(", "))
            }
        }
    }
}

/// `[store.redis]`: read only with `store.backend = "redis"`, validated always.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// One URL (standalone), a Cluster's seed nodes with `cluster = true`, or the Sentinels
    /// with `sentinel_master`. May hold a password: printed only redacted ([`redact_url`]).
    pub urls: Vec<String>,
    pub cluster: bool,
    pub key_prefix: String,
    pub lease_ms: Millis,
    /// `/readyz` answers 503 once Redis uses this much of its `maxmemory` (percent).
    pub max_memory_used_percent: u8,
    /// A callback is answered 200 only once this many replicas acknowledged its write (`WAIT`);
    /// 0: at once (asynchronous replication).
    pub min_replicas: u8,
    /// How long an accept waits for `min_replicas` before it is answered 503.
    pub min_replicas_timeout_ms: Millis,
    /// The most an accept waits for others to share its script call with, while callbacks
    /// come often (less than half this apart); 0: never.
    pub accept_linger_ms: Millis,
    /// The environment variable holding the password (overrides one in the URLs). With
    /// Sentinels: the data nodes' password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// The primary's name in the Sentinels' configuration (`sentinel monitor <name> …`): with
    /// it, `urls` are the Sentinels, asked where the primary is, and a failover is followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel_master: Option<String>,
    /// The environment variable holding the Sentinels' password (overrides one in the URLs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel_password_env: Option<String>,
}

impl RedisConfig {
    /// The password from `password_env`, if set.
    pub fn password(&self) -> Result<Option<String>, ConfigError> {
        secret(
            "store.redis",
            "password",
            None,
            self.password_env.as_deref(),
        )
    }

    /// The Sentinels' password from `sentinel_password_env`, if set.
    pub fn sentinel_password(&self) -> Result<Option<String>, ConfigError> {
        secret(
            "store.redis",
            "sentinel_password",
            None,
            self.sentinel_password_env.as_deref(),
        )
    }

    fn validate(&self, backend: Backend) -> Result<(), ConfigError> {
        if self.urls.is_empty() {
            return Err(invalid("store.redis.urls", "needs at least one URL"));
        }
        for (i, url) in self.urls.iter().enumerate() {
            // Never echo the URL: it may carry a password.
            check_url_text(url).map_err(|e| invalid(format!("store.redis.urls[{i}]"), e))?;
            let parsed = Url::parse(url).map_err(|e| {
                invalid(format!("store.redis.urls[{i}]"), format!("not a URL ({e})"))
            })?;
            if !matches!(parsed.scheme(), "redis" | "rediss") {
                return Err(invalid(
                    format!("store.redis.urls[{i}]"),
                    "must start with redis:// or rediss:// (TLS)",
                ));
            }
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(invalid(format!("store.redis.urls[{i}]"), "has no host"));
            }
        }
        if let Some(master) = &self.sentinel_master {
            if master.is_empty() || master.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    "store.redis.sentinel_master",
                    "must be the primary's name in the Sentinels' configuration (not empty, no spaces)",
                ));
            }
            if self.cluster {
                return Err(invalid(
                    "store.redis.sentinel_master",
                    "not with store.redis.cluster = true: a Cluster fails over by itself, and its URLs are seed nodes",
                ));
            }
            let tls = |url: &String| url.starts_with("rediss:");
            if self.urls.iter().any(tls) && !self.urls.iter().all(tls) {
                return Err(invalid(
                    "store.redis.urls",
                    "the Sentinels' URLs all start with redis://, or all with rediss:// (TLS to the Sentinels and the data nodes)",
                ));
            }
        } else if self.sentinel_password_env.is_some() {
            return Err(invalid(
                "store.redis.sentinel_password_env",
                "only with store.redis.sentinel_master",
            ));
        }
        if !self.cluster && self.sentinel_master.is_none() && self.urls.len() > 1 {
            return Err(invalid(
                "store.redis.urls",
                "a standalone server takes one URL (set store.redis.cluster = true for a Cluster's seed nodes, or store.redis.sentinel_master for Sentinels)",
            ));
        }
        if self.key_prefix.is_empty()
            || self
                .key_prefix
                .chars()
                .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "store.redis.key_prefix",
                "must be non-empty, without braces (the hash tags are the accounts') or spaces",
            ));
        }
        if self.lease_ms.0 < 100 {
            return Err(invalid("store.redis.lease_ms", "must be at least 100"));
        }
        if !(1..=100).contains(&self.max_memory_used_percent) {
            return Err(invalid(
                "store.redis.max_memory_used_percent",
                "must be from 1 to 100",
            ));
        }
        if !(1..=MAX_MIN_REPLICAS_TIMEOUT_MS).contains(&self.min_replicas_timeout_ms.0) {
            return Err(invalid(
                "store.redis.min_replicas_timeout_ms",
                format!(
                    "must be from 1 to {MAX_MIN_REPLICAS_TIMEOUT_MS}: WeChat waits 5 s for its answer, \
                     which also has to be stored and relayed"
                ),
            ));
        }
        if self.accept_linger_ms.0 > MAX_ACCEPT_LINGER_MS {
            return Err(invalid(
                "store.redis.accept_linger_ms",
                format!("must be from 0 to {MAX_ACCEPT_LINGER_MS}"),
            ));
        }
        if backend == Backend::Redis {
            self.password()?;
            self.sentinel_password()?;
        }
        Ok(())
    }
}

/// `url` with its password replaced, for logs and `check-config`; nothing of a string that does
/// not parse as a URL (it might still hold a secret).
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some(REDACTED));
            }
            parsed.to_string()
        }
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

/// How hard SQLite pushes a commit to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Full,
    Normal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    pub poll_interval_ms: Millis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetDefaults {
    pub timeout_ms: Millis,
    pub max_attempts: u32,
    pub backoff_initial_ms: Millis,
    pub backoff_max_ms: Millis,
    pub max_concurrency: usize,
    /// Send over HTTP/2 only (h2c with prior knowledge for `http`, ALPN `h2` for `https`).
    pub http2: bool,
    /// Pipeline the requests to a plain `http` target over one HTTP/1.1 connection.
    pub pipelining: bool,
    /// Send the attempt's W3C `traceparent` header (with `traces.otlp_endpoint` set).
    pub traceparent: bool,
}

/// A target's settings with the defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSettings {
    pub timeout: Duration,
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub max_concurrency: usize,
    /// Deliveries go over HTTP/2 only: one connection multiplexes the requests in flight.
    pub http2: bool,
    /// Deliveries to a plain `http` target are pipelined over one HTTP/1.1 connection.
    pub pipelining: bool,
    /// Deliveries carry the attempt's `traceparent` header (when traces are on).
    pub traceparent: bool,
    /// `rate_limit_per_sec` as the time between two deliveries' starts.
    pub pace: Option<Duration>,
    /// `order`: per lane, one at a time, or in parallel.
    pub order: Order,
}

impl Config {
    /// Loads defaults, then `path` (which must exist), then the environment, and checks;
    /// every error found is reported at once.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) if !path.is_file() => return Err(ConfigError::NotFound(path.to_path_buf())),
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                invalid(path.display().to_string(), format!("cannot be read ({e})"))
            })?,
            None => String::new(),
        };
        let mut config = load::load(&text, true)?;
        // A pay account's PEM files are found beside the file that names them.
        if let Some(dir) = path.and_then(Path::parent) {
            pay::resolve_paths(&mut config.accounts, dir);
        }
        Ok(config)
    }

    /// Parses a TOML text layered over the defaults (no file, no environment): for tests and tools.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        load::load(text, false)
    }

    /// The rules serde cannot express that need no account's secret; every problem is
    /// reported. Resolves nothing permanently, so it can run again on reload.
    pub fn check(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if let Err(e) = self.check_sections() {
            errors.push(e);
        }
        let mut ids = HashSet::new();
        for (i, account) in self.accounts.iter().enumerate() {
            let key = format!("accounts[{i}]");
            if !ids.insert(account.id.as_str()) {
                errors.push(invalid(
                    format!("{key}.id"),
                    format!("duplicate account id {:?}", account.id),
                ));
            }
            account.check(
                &key,
                &self.target_defaults,
                self.server.max_query_bytes,
                &mut errors,
            );
        }
        all_of(errors)
    }

    /// The rules of the sections but the accounts.
    fn check_sections(&self) -> Result<(), ConfigError> {
        let server = &self.server;
        if let Some(name) = &server.instance_name
            && !is_instance_name(name)
        {
            return Err(invalid(
                "server.instance_name",
                "must be 1 to 64 letters, digits, '.', '_' or '-'",
            ));
        }
        if server.max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes", "must be greater than 0"));
        }
        if server.max_query_bytes < MIN_QUERY_BYTES || server.max_query_bytes > MAX_URI_BYTES / 2 {
            return Err(invalid(
                "server.max_query_bytes",
                format!(
                    "must be between {MIN_QUERY_BYTES} (WeChat's queries take ~250 bytes) and {}",
                    MAX_URI_BYTES / 2
                ),
            ));
        }
        if server.reply_deadline_ms.0 == 0 || server.reply_deadline_ms.0 >= 5000 {
            return Err(invalid(
                "server.reply_deadline_ms",
                "must be between 1 and 4999 (WeChat gives up at 5000 ms)",
            ));
        }
        for (key, value) in [
            (
                "server.header_read_timeout_ms",
                server.header_read_timeout_ms,
            ),
            ("server.body_read_timeout_ms", server.body_read_timeout_ms),
            ("delivery.poll_interval_ms", self.delivery.poll_interval_ms),
        ] {
            if value.0 == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            return Err(invalid("log.filter", format!("not a valid filter: {e}")));
        }
        if self.admin.listen == self.server.listen {
            return Err(invalid(
                "admin.listen",
                "must differ from server.listen: WeChat's port must not serve the admin API",
            ));
        }
        let admin_token = self.admin.token()?;
        if admin_token.is_none() && !self.admin.listen.ip().is_loopback() {
            return Err(invalid(
                "admin.token",
                format!(
                    "must be set (or admin.token_env) when admin.listen ({}) is not a loopback \
                     address: the console and the dead-letter API would be open to the network",
                    self.admin.listen
                ),
            ));
        }
        for (i, host) in self.admin.hosts.iter().enumerate() {
            if !is_host_name(host) {
                return Err(invalid(
                    format!("admin.hosts[{i}]"),
                    format!(
                        "{host:?} is not a host name (letters, digits, '-', '_' and dots, \
                         without a port: \"admin.example.com\")"
                    ),
                ));
            }
        }
        if self.admin.max_event_streams == 0 || self.admin.max_event_streams > MAX_EVENT_STREAMS {
            return Err(invalid(
                "admin.max_event_streams",
                format!("must be between 1 and {MAX_EVENT_STREAMS}"),
            ));
        }
        if self.store.path.as_os_str().is_empty() {
            return Err(invalid("store.path", "must not be empty"));
        }
        self.store.redis.validate(self.store.backend)?;
        if self.store.delivered_retention_secs < 60 {
            return Err(invalid(
                "store.delivered_retention_secs",
                "must be at least 60 (it is also the dedupe window for WeChat's resends)",
            ));
        }
        if self.store.min_free_bytes > MAX_MIN_FREE_BYTES {
            return Err(invalid(
                "store.min_free_bytes",
                format!("must be at most {MAX_MIN_FREE_BYTES} (1 PiB); 0 turns the check off"),
            ));
        }
        self.target_defaults.check("target_defaults")?;
        for (i, proxy) in server.trusted_proxies.iter().enumerate() {
            if Cidr::parse(proxy).is_none() {
                return Err(invalid(
                    format!("server.trusted_proxies[{i}]"),
                    format!("{proxy:?} is not an address or CIDR block (\"10.0.0.0/8\")"),
                ));
            }
        }
        if !matches!(self.wechat_api_base.scheme(), "http" | "https") {
            return Err(invalid(
                "wechat_api_base",
                "must be an http:// or https:// URL",
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML, with tokens, keys and URL passwords replaced by
    /// `<redacted>`.
    pub fn redacted_toml(&self) -> String {
        let mut copy = self.clone();
        for url in &mut copy.store.redis.urls {
            *url = redact_url(url);
        }
        if copy.admin.token.is_some() {
            copy.admin.token = Some(REDACTED.to_owned());
        }
        for account in &mut copy.accounts {
            for secret in [
                &mut account.token,
                &mut account.encoding_aes_key,
                &mut account.app_secret,
                &mut account.apiv3_key,
            ] {
                if secret.is_some() {
                    *secret = Some(REDACTED.to_owned());
                }
            }
        }
        toml::to_string_pretty(&copy)
            .unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }
}

impl TargetDefaults {
    /// The settings of a target that sets none of its own.
    pub fn settings(&self) -> TargetSettings {
        TargetSettings {
            timeout: self.timeout_ms.duration(),
            max_attempts: self.max_attempts,
            backoff_initial: self.backoff_initial_ms.duration(),
            backoff_max: self.backoff_max_ms.duration(),
            max_concurrency: self.max_concurrency,
            http2: self.http2,
            pipelining: self.pipelining,
            traceparent: self.traceparent,
            pace: None,
            order: Order::None,
        }
    }

    fn check(&self, key: &str) -> Result<(), ConfigError> {
        self.settings().check(key)
    }
}

impl TargetSettings {
    /// The rules of a target's settings (`key`: the table they were written in).
    pub fn check(&self, key: &str) -> Result<(), ConfigError> {
        if self.timeout.is_zero() {
            return Err(invalid(
                format!("{key}.timeout_ms"),
                "must be greater than 0",
            ));
        }
        if self.max_attempts == 0 {
            return Err(invalid(format!("{key}.max_attempts"), "must be at least 1"));
        }
        if self.backoff_initial.is_zero() {
            return Err(invalid(
                format!("{key}.backoff_initial_ms"),
                "must be greater than 0",
            ));
        }
        if self.backoff_max < self.backoff_initial {
            return Err(invalid(
                format!("{key}.backoff_max_ms"),
                "must not be less than backoff_initial_ms",
            ));
        }
        if self.max_concurrency == 0 {
            return Err(invalid(
                format!("{key}.max_concurrency"),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// A secret given inline or by the name of an environment variable, never both (`key.name`:
/// where it is written).
pub fn secret(
    key: &str,
    name: &str,
    inline: Option<&str>,
    env: Option<&str>,
) -> Result<Option<String>, ConfigError> {
    match (inline, env) {
        (Some(_), Some(_)) => Err(invalid(
            format!("{key}.{name}"),
            format!("set either {name} or {name}_env, not both"),
        )),
        (Some(value), None) => Ok(Some(value.to_owned())),
        (None, Some(var)) => match std::env::var(var) {
            Ok(value) => Ok(Some(value)),
            Err(_) => Err(invalid(
                format!("{key}.{name}_env"),
                format!("environment variable {var} is not set (or not UTF-8)"),
            )),
        },
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
pub(crate) mod tests;
