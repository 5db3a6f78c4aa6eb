//! Configuration: compiled-in defaults (`config/default.toml`) → the TOML file → environment
//! (`WECHAT_FANOUT_<SECTION>__<KEY>`), extracted with figment, then [`Config::validate`] checks the
//! rules that span fields and resolves secrets given by environment variable name.
//!
//! Every error names the offending key (`accounts[1].encoding_aes_key: …`) so `check-config` and
//! `serve` can say exactly what to fix; the binary exits 64 on any of them before binding a port.
//! Secrets are never printed: [`Config::redacted_toml`] replaces them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format as _, Toml};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::cidr::Cidr;
use crate::outbound::wechat_api::ApiAccount;
use crate::routing::Allowed;
use crate::routing::replies::{Owners, Route};
use crate::wechat::{AesKey, Credentials, Kind, Security};

/// The documented defaults, compiled in so the binary needs no file to know them.
pub const DEFAULTS: &str = include_str!("../../config/default.toml");

const REDACTED: &str = "<redacted>";
/// `wechat_api_base`'s default (as `Url` writes it), and where WeCom's API is instead.
const DEFAULT_API_BASE: &str = "https://api.weixin.qq.com/";
const WECOM_API_BASE: &str = "https://qyapi.weixin.qq.com/";

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0}: not found")]
    NotFound(PathBuf),
    #[error("{0}")]
    Load(Box<figment::Error>),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
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

/// `{authorizer}` in a target URL, as the URL parser writes it in a path and in a query.
pub const AUTHORIZER_IN_URL: [&str; 2] = ["%7Bauthorizer%7D", "{authorizer}"];

/// How many `{authorizer}` placeholders a target URL has.
pub fn authorizer_placeholders(url: &str) -> usize {
    AUTHORIZER_IN_URL
        .iter()
        .map(|p| url.matches(p).count())
        .sum()
}

/// The longest URI the HTTP client can send (the `http` crate's limit): a target's URL, `?` and
/// the callback's query must fit in it, or no attempt could ever be made.
pub const MAX_URI_BYTES: usize = u16::MAX as usize - 1;
/// WeChat's own queries (signature, timestamp, nonce, openid, encrypt_type, msg_signature) take
/// about 250 bytes: a smaller `server.max_query_bytes` would refuse real callbacks.
const MIN_QUERY_BYTES: usize = 512;
/// Far beyond any disk: a larger `store.min_free_bytes` is a typo that would never be ready.
const MAX_MIN_FREE_BYTES: u64 = 1 << 50;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
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
    /// One URL (standalone), or a Cluster's seed nodes with `cluster = true`. May hold a
    /// password: printed only redacted ([`redact_url`]).
    pub urls: Vec<String>,
    pub cluster: bool,
    pub key_prefix: String,
    pub lease_ms: Millis,
    /// The environment variable holding the password (overrides one in the URLs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
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
        if !self.cluster && self.urls.len() > 1 {
            return Err(invalid(
                "store.redis.urls",
                "a standalone server takes one URL (set store.redis.cluster = true for a Cluster's seed nodes)",
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
        if backend == Backend::Redis {
            self.password()?;
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
}

/// The WeChat console's encryption mode for an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Plaintext,
    Compatible,
    Safe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    OfficialAccount,
    MiniProgram,
    Wecom,
    OpenPlatform,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The callback URL path segment: `/wechat/{id}`.
    pub id: String,
    pub kind: AccountKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// The receive id: app id, corp id or suite id; `""` for WeCom bots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_aes_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_aes_key_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Only these sources (CIDRs, and/or `"wechat"`: WeChat's callback IP list) may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_sources: Option<Vec<String>>,
    /// For WeChat's API (the callback IP list): the AppSecret (WeCom: the app's secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret_env: Option<String>,
    /// Overrides the top-level `wechat_api_base` for this account.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "written_url_if_any"
    )]
    pub wechat_api_base: Option<Url>,
    /// What to do with a reply owner's answer that comes after WeChat got `success`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_replies: Option<LateReplies>,
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    #[serde(deserialize_with = "written_url")]
    pub url: Url,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_initial_ms: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_max_ms: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipelining: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// Open platform: only authorization events of these `InfoType`s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info_types: Option<Vec<String>>,
    /// Open platform: only callbacks of these authorizer app ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorizers: Option<Vec<String>>,
    /// The target's own token (and key): its deliveries are re-signed (and re-encrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resign: Option<ResignConfig>,
    /// The routes whose passive reply this target owns (`text`, `event:CLICK`, `*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replies_to: Option<Vec<String>>,
    /// This target is a candidate for that one's replies: it gets what that one gets, with the
    /// same deadline, and its answer is only compared, never sent to WeChat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_of: Option<String>,
}

/// `late_replies`: how an answer that missed the deadline still reaches the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LateReplies {
    /// Sent through the customer-service message API (needs app_id and app_secret).
    CustomerService,
}

/// The reserved name of the internal target that sends an account's rescued late replies.
pub const LATE_REPLIES_TARGET: &str = "~late-replies";

/// A target's own credentials, by the names of the environment variables that hold them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResignConfig {
    pub token_env: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_aes_key_env: Option<String>,
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
}

impl Config {
    /// Loads defaults, then `path` (which must exist), then the environment, and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new().merge(Toml::string(DEFAULTS));
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ConfigError::NotFound(path.to_path_buf()));
            }
            figment = figment.merge(Toml::file(path));
        }
        // Only SECTION__KEY variables are configuration; other WECHAT_FANOUT_* variables (the
        // config path, secrets named by token_env) are not.
        figment = figment.merge(
            Env::prefixed("WECHAT_FANOUT_")
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        );
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML text layered over the defaults (no file, no environment): for tests and tools.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::new()
            .merge(Toml::string(DEFAULTS))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// The rules serde cannot express; resolves nothing permanently, so it can run again on reload.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let server = &self.server;
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
        if self.accounts.is_empty() {
            return Err(invalid("accounts", "no account is configured"));
        }
        let mut ids = HashSet::new();
        for (i, account) in self.accounts.iter().enumerate() {
            let key = format!("accounts[{i}]");
            if !ids.insert(account.id.as_str()) {
                return Err(invalid(
                    format!("{key}.id"),
                    format!("duplicate account id {:?}", account.id),
                ));
            }
            account.validate(&key, &self.target_defaults, server.max_query_bytes)?;
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
        }
    }

    fn check(&self, key: &str) -> Result<(), ConfigError> {
        self.settings().check(key)
    }
}

impl TargetSettings {
    fn check(&self, key: &str) -> Result<(), ConfigError> {
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

impl AccountConfig {
    fn validate(
        &self,
        key: &str,
        defaults: &TargetDefaults,
        max_query_bytes: usize,
    ) -> Result<(), ConfigError> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(invalid(
                format!("{key}.id"),
                "must be 1 to 64 characters of A-Z, a-z, 0-9, '-' or '_' (it is a URL path segment)",
            ));
        }
        let credentials = self.credentials(key)?;
        self.allowed_sources(key)?;
        let mut names = HashSet::new();
        for (j, target) in self.targets.iter().enumerate() {
            let tkey = format!("{key}.targets[{j}]");
            if target.name.is_empty() || target.name.chars().any(char::is_control) {
                return Err(invalid(format!("{tkey}.name"), "must be a non-empty name"));
            }
            if !names.insert(target.name.as_str()) {
                return Err(invalid(
                    format!("{tkey}.name"),
                    format!("duplicate target name {:?} in this account", target.name),
                ));
            }
            if !matches!(target.url.scheme(), "http" | "https") {
                return Err(invalid(
                    format!("{tkey}.url"),
                    "must be an http:// or https:// URL",
                ));
            }
            // The callback's query is appended: after a fragment it would not be sent at all.
            if target.url.fragment().is_some() {
                return Err(invalid(
                    format!("{tkey}.url"),
                    "must not have a #fragment (the callback's query is appended to the URL)",
                ));
            }
            // Every accepted query must fit, so that no accepted callback is undeliverable.
            // `{authorizer}` is replaced by an app id of up to 64 bytes.
            let templated = authorizer_placeholders(target.url.as_str());
            let longest = target.url.as_str().len() + 1 + max_query_bytes + templated * 48;
            if longest > MAX_URI_BYTES {
                return Err(invalid(
                    format!("{tkey}.url"),
                    format!(
                        "with a query of server.max_query_bytes ({max_query_bytes}) appended, \
                         the URL would be {longest} bytes, over the {MAX_URI_BYTES} a request can have"
                    ),
                ));
            }
            let settings = target.settings(defaults);
            settings.check(&tkey)?;
            // Pipelining is HTTP/1.1 over our own plain TCP connections.
            if settings.pipelining && (settings.http2 || target.url.scheme() != "http") {
                return Err(invalid(
                    format!("{tkey}.pipelining"),
                    "is for http:// targets without http2 (inherited from target_defaults \
                     unless the target sets pipelining = false)",
                ));
            }
            target.credentials(&tkey, &credentials)?;
            if self.kind != AccountKind::OpenPlatform {
                let templated = authorizer_placeholders(target.url.as_str()) > 0;
                for (name, set) in [
                    ("info_types", target.info_types.is_some()),
                    ("authorizers", target.authorizers.is_some()),
                    ("url", templated),
                ] {
                    if set {
                        return Err(invalid(
                            format!("{tkey}.{name}"),
                            "info_types, authorizers and {authorizer} in the URL are for \
                             kind = \"open_platform\" accounts only",
                        ));
                    }
                }
            }
        }
        if names.contains(LATE_REPLIES_TARGET) {
            return Err(invalid(
                format!("{key}.targets"),
                format!("the target name {LATE_REPLIES_TARGET:?} is reserved (late replies)"),
            ));
        }
        self.late_replies_api(key, &Url::parse(DEFAULT_API_BASE).expect("a valid URL"))?;
        if let Some(primary) = &self.primary
            && !names.contains(primary.as_str())
        {
            return Err(invalid(
                format!("{key}.primary"),
                format!("names no target of this account: {primary:?}"),
            ));
        }
        self.owners(key)?;
        self.shadows(key)?;
        Ok(())
    }

    /// The reply owners of this account's routes: each target's `replies_to`, and `primary`
    /// as `replies_to = ["*"]`. Refuses a route claimed by two targets, and a route that the
    /// claiming target's own `msg_types`/`events` filter excludes (its answer could never come).
    pub fn owners(&self, key: &str) -> Result<Owners, ConfigError> {
        let lower = |list: &Option<Vec<String>>| {
            list.as_ref()
                .map(|l| l.iter().map(|s| s.to_ascii_lowercase()).collect::<Vec<_>>())
        };
        let mut claims = Vec::with_capacity(self.targets.len());
        for (j, target) in self.targets.iter().enumerate() {
            let tkey = format!("{key}.targets[{j}].replies_to");
            let mut routes = Vec::new();
            for (k, text) in target.replies_to.iter().flatten().enumerate() {
                let route = Route::parse(text).ok_or_else(|| {
                    invalid(
                        format!("{tkey}[{k}]"),
                        format!("{text:?} is not a MsgType, \"event:\" and an Event, or \"*\""),
                    )
                })?;
                let (types, events) = (lower(&target.msg_types), lower(&target.events));
                if !route.passes(types.as_deref(), events.as_deref()) {
                    return Err(invalid(
                        format!("{tkey}[{k}]"),
                        format!(
                            "target {:?} claims route {route} but its own msg_types/events \
                             filter never lets such a callback through",
                            target.name
                        ),
                    ));
                }
                routes.push(route);
            }
            if self.primary.as_deref() == Some(target.name.as_str()) {
                routes.push(Route::Any);
            }
            if target.shadow_of.is_some() && !routes.is_empty() {
                return Err(invalid(
                    tkey,
                    format!(
                        "target {:?} is a shadow (shadow_of): its answers never reach WeChat, so \
                         it cannot own replies",
                        target.name
                    ),
                ));
            }
            claims.push((j, target.name.as_str(), routes));
        }
        Owners::build(claims).map_err(|c| {
            invalid(
                format!("{key}.targets"),
                format!(
                    "targets {:?} and {:?} both claim the replies to route {} \
                     (replies_to, or primary = \"*\"); give it to one of them",
                    c.first, c.second, c.route
                ),
            )
        })
    }

    /// For each target, the index of the target it shadows (`shadow_of`), checked: another
    /// target of this account, itself no shadow.
    pub fn shadows(&self, key: &str) -> Result<Vec<Option<usize>>, ConfigError> {
        self.targets
            .iter()
            .enumerate()
            .map(|(j, target)| {
                let Some(of) = &target.shadow_of else {
                    return Ok(None);
                };
                let tkey = format!("{key}.targets[{j}].shadow_of");
                let index = self
                    .targets
                    .iter()
                    .position(|t| &t.name == of)
                    .ok_or_else(|| {
                        invalid(&tkey, format!("names no target of this account: {of:?}"))
                    })?;
                if index == j || self.targets[index].shadow_of.is_some() {
                    return Err(invalid(
                        tkey,
                        format!(
                            "{of:?} is this target or a shadow; shadow the target that answers"
                        ),
                    ));
                }
                if target.msg_types.is_some() || target.events.is_some() {
                    return Err(invalid(
                        tkey,
                        "a shadow gets what its target gets: leave out msg_types and events",
                    ));
                }
                Ok(Some(index))
            })
            .collect()
    }

    /// `allowed_sources`, parsed: `None` when the account takes requests from anywhere.
    pub fn allowed_sources(&self, key: &str) -> Result<Option<Allowed>, ConfigError> {
        let Some(list) = &self.allowed_sources else {
            return Ok(None);
        };
        let mut allowed = Allowed::default();
        for (k, entry) in list.iter().enumerate() {
            if entry == "wechat" {
                allowed.wechat = true;
            } else {
                allowed.blocks.push(Cidr::parse(entry).ok_or_else(|| {
                    invalid(
                        format!("{key}.allowed_sources[{k}]"),
                        format!("{entry:?} is neither \"wechat\" nor an address or CIDR block"),
                    )
                })?);
            }
        }
        if list.is_empty() {
            return Err(invalid(
                format!("{key}.allowed_sources"),
                "is empty, which would refuse every request; leave it out to allow all",
            ));
        }
        if allowed.wechat {
            let app_id = self.app_id.as_deref().unwrap_or_default();
            if app_id.is_empty() {
                return Err(invalid(
                    format!("{key}.app_id"),
                    "is required for allowed_sources = [\"wechat\"] (WeChat's API needs it)",
                ));
            }
            if self.app_secret(key)?.is_none_or(|s| s.is_empty()) {
                return Err(invalid(
                    format!("{key}.app_secret"),
                    "is required for allowed_sources = [\"wechat\"] (or app_secret_env)",
                ));
            }
        }
        Ok(Some(allowed))
    }

    /// What WeChat's API needs for this account, when its `allowed_sources` lists `"wechat"`.
    /// WeCom's API lives elsewhere: without an account-level `wechat_api_base`, WeCom accounts
    /// call `https://qyapi.weixin.qq.com` when the top-level one is the default.
    pub fn api_account(
        &self,
        key: &str,
        default_base: &Url,
    ) -> Result<Option<ApiAccount>, ConfigError> {
        if !self.allowed_sources(key)?.is_some_and(|a| a.wechat) {
            return Ok(None);
        }
        self.build_api_account(key, default_base).map(Some)
    }

    /// What the customer-service API needs, when `late_replies = "customer_service"`: an
    /// official account or mini program with `app_id` and `app_secret`.
    pub fn late_replies_api(
        &self,
        key: &str,
        default_base: &Url,
    ) -> Result<Option<ApiAccount>, ConfigError> {
        if self.late_replies.is_none() {
            return Ok(None);
        }
        if self.kind() == Kind::WeCom {
            return Err(invalid(
                format!("{key}.late_replies"),
                "WeCom has no customer-service message API; leave it out",
            ));
        }
        let secret = self.app_secret(key)?;
        if self.app_id.as_deref().is_none_or(str::is_empty) || secret.is_none_or(|s| s.is_empty()) {
            return Err(invalid(
                format!("{key}.late_replies"),
                "needs app_id and app_secret (or app_secret_env) for the access token",
            ));
        }
        self.build_api_account(key, default_base).map(Some)
    }

    fn build_api_account(&self, key: &str, default_base: &Url) -> Result<ApiAccount, ConfigError> {
        let app_secret = self.app_secret(key)?.unwrap_or_default();
        let kind = self.kind();
        let base = match (&self.wechat_api_base, kind) {
            (Some(base), _) => base.clone(),
            (None, Kind::WeCom) if default_base.as_str() == DEFAULT_API_BASE => {
                Url::parse(WECOM_API_BASE).map_err(|e| invalid("wechat_api_base", e.to_string()))?
            }
            (None, _) => default_base.clone(),
        };
        Ok(ApiAccount {
            id: self.id.clone(),
            kind,
            base,
            app_id: self.app_id.clone().unwrap_or_default(),
            app_secret,
        })
    }

    /// `app_secret`, inline or from `app_secret_env`.
    fn app_secret(&self, key: &str) -> Result<Option<String>, ConfigError> {
        secret(
            key,
            "app_secret",
            self.app_secret.as_deref(),
            self.app_secret_env.as_deref(),
        )
    }

    /// The protocol's kind of this account.
    fn kind(&self) -> Kind {
        match self.kind {
            AccountKind::OfficialAccount => Kind::OfficialAccount,
            AccountKind::MiniProgram => Kind::MiniProgram,
            AccountKind::Wecom => Kind::WeCom,
            AccountKind::OpenPlatform => Kind::OpenPlatform,
        }
    }

    /// The account's credentials, with secrets read from the environment where so configured.
    pub fn credentials(&self, key: &str) -> Result<Credentials, ConfigError> {
        let token = secret(
            key,
            "token",
            self.token.as_deref(),
            self.token_env.as_deref(),
        )?
        .ok_or_else(|| invalid(format!("{key}.token"), "is required (or token_env)"))?;
        if token.is_empty() {
            return Err(invalid(format!("{key}.token"), "must not be empty"));
        }
        let aes = secret(
            key,
            "encoding_aes_key",
            self.encoding_aes_key.as_deref(),
            self.encoding_aes_key_env.as_deref(),
        )?;
        let aes_key = aes
            .map(|k| AesKey::from_encoding_aes_key(&k))
            .transpose()
            .map_err(|_| {
                invalid(
                    format!("{key}.encoding_aes_key"),
                    "must be 43 characters of base64 (A-Z, a-z, 0-9)",
                )
            })?;
        let mode = match (self.mode, &aes_key) {
            (Some(mode), _) => mode,
            (None, Some(_)) => Mode::Safe,
            (None, None) => Mode::Plaintext,
        };
        let kind = self.kind();
        if kind == Kind::OpenPlatform && mode != Mode::Safe {
            return Err(invalid(
                format!("{key}.mode"),
                "open platform callbacks are always encrypted: use mode = \"safe\" with the \
                 component's encoding_aes_key",
            ));
        }
        if kind == Kind::WeCom && mode != Mode::Safe {
            return Err(invalid(
                format!("{key}.mode"),
                "WeCom callbacks are always encrypted: use mode = \"safe\" with encoding_aes_key",
            ));
        }
        let security = match (mode, aes_key) {
            (Mode::Plaintext, _) => Security::Plaintext,
            (Mode::Compatible, Some(k)) => Security::Compatible(k),
            (Mode::Safe, Some(k)) => Security::Safe(k),
            (_, None) => {
                return Err(invalid(
                    format!("{key}.encoding_aes_key"),
                    "is required in compatible and safe mode (or encoding_aes_key_env)",
                ));
            }
        };
        let receive_id = match (&security, &self.app_id) {
            (Security::Plaintext, id) => id.clone().unwrap_or_default(),
            (_, Some(id)) => id.clone(),
            (_, None) => {
                return Err(invalid(
                    format!("{key}.app_id"),
                    "is required with encryption: the app id, corp id or suite id (\"\" for WeCom bots)",
                ));
            }
        };
        Ok(Credentials {
            kind,
            token,
            receive_id,
            security,
        })
    }
}

/// A secret given inline or by the name of an environment variable, never both.
fn secret(
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

impl TargetConfig {
    /// With `resign`: the credentials this target verifies with (its token; its key, else the
    /// account's; the account's kind, mode and receive id) and whether the key is its own.
    pub fn credentials(
        &self,
        key: &str,
        account: &Credentials,
    ) -> Result<Option<(Credentials, bool)>, ConfigError> {
        let Some(resign) = &self.resign else {
            return Ok(None);
        };
        let key = format!("{key}.resign");
        let token = secret(&key, "token", None, Some(&resign.token_env))?.unwrap_or_default();
        if token.is_empty() {
            return Err(invalid(
                format!("{key}.token_env"),
                "names an empty environment variable",
            ));
        }
        let aes = secret(
            &key,
            "encoding_aes_key",
            None,
            resign.encoding_aes_key_env.as_deref(),
        )?;
        let own_key = aes.is_some();
        let security = match (aes, &account.security) {
            (None, security) => security.clone(),
            (Some(_), Security::Plaintext) => {
                return Err(invalid(
                    format!("{key}.encoding_aes_key_env"),
                    "the account is in plaintext mode: there is nothing to encrypt",
                ));
            }
            (Some(text), security) => {
                let aes_key = AesKey::from_encoding_aes_key(&text).map_err(|_| {
                    invalid(
                        format!("{key}.encoding_aes_key_env"),
                        "must hold 43 characters of base64 (A-Z, a-z, 0-9)",
                    )
                })?;
                match security {
                    Security::Compatible(_) => Security::Compatible(aes_key),
                    _ => Security::Safe(aes_key),
                }
            }
        };
        Ok(Some((
            Credentials {
                kind: account.kind,
                token,
                receive_id: account.receive_id.clone(),
                security,
            },
            own_key,
        )))
    }

    /// The settings of this target, unset keys taken from `[target_defaults]`.
    pub fn settings(&self, defaults: &TargetDefaults) -> TargetSettings {
        TargetSettings {
            timeout: self.timeout_ms.unwrap_or(defaults.timeout_ms).duration(),
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts),
            backoff_initial: self
                .backoff_initial_ms
                .unwrap_or(defaults.backoff_initial_ms)
                .duration(),
            backoff_max: self
                .backoff_max_ms
                .unwrap_or(defaults.backoff_max_ms)
                .duration(),
            max_concurrency: self.max_concurrency.unwrap_or(defaults.max_concurrency),
            http2: self.http2.unwrap_or(defaults.http2),
            pipelining: self.pipelining.unwrap_or(defaults.pipelining),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
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
        assert_eq!(settings.max_attempts, 8);
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
        let bad_key = MINIMAL.replace(
            "token = \"tok\"",
            "token = \"tok\"\nencoding_aes_key = \"short\"\napp_id = \"wx1\"",
        );
        assert_eq!(
            error_of(&bad_key),
            "accounts[0].encoding_aes_key: must be 43 characters of base64 (A-Z, a-z, 0-9)"
        );
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
        let wecom_plain = MINIMAL.replace("official_account", "wecom");
        assert!(error_of(&wecom_plain).starts_with("accounts[0].mode:"));
        let short = format!("{MINIMAL}\n[server]\nmax_query_bytes = 100");
        assert!(error_of(&short).starts_with("server.max_query_bytes: must be between 512"));
        let huge = format!("{MINIMAL}\n[store]\nmin_free_bytes = 2251799813685248");
        assert!(error_of(&huge).starts_with("store.min_free_bytes:"));
        let dup = MINIMAL.replace(
            "[[accounts.targets]]",
            "[[accounts.targets]]\nname = \"bot\"\nurl = \"http://a/\"\n[[accounts.targets]]",
        );
        assert!(error_of(&dup).starts_with("accounts[0].targets[1].name:"));
        let resign = MINIMAL.replace(
            "url = \"http://127.0.0.1:9001/wx\"",
            "url = \"http://127.0.0.1:9001/wx\"\nresign = { token_env = \"WF_TEST_NEVER_SET_1\" }",
        );
        assert_eq!(
            error_of(&resign),
            "accounts[0].targets[0].resign.token_env: environment variable WF_TEST_NEVER_SET_1 is not set (or not UTF-8)"
        );
        let unknown = MINIMAL.replace(
            "url = \"http://127.0.0.1:9001/wx\"",
            "url = \"http://127.0.0.1:9001/wx\"\nresign = { token = \"inline\" }",
        );
        assert!(
            error_of(&unknown).contains("token"),
            "{}",
            error_of(&unknown)
        );
        let sources = |list: &str| {
            MINIMAL.replace(
                "token = \"tok\"",
                &format!("token = \"tok\"\nallowed_sources = {list}"),
            )
        };
        assert!(
            error_of(&sources("[\"10.0.0.0/33\"]")).starts_with("accounts[0].allowed_sources[0]:")
        );
        assert!(error_of(&sources("[]")).starts_with("accounts[0].allowed_sources:"));
        assert!(error_of(&sources("[\"wechat\"]")).starts_with("accounts[0].app_id:"));
        let no_secret = sources("[\"wechat\"]").replace("kind", "app_id = \"wx1\"\nkind");
        assert!(error_of(&no_secret).starts_with("accounts[0].app_secret:"));
        Config::from_toml(&sources("[\"10.0.0.0/8\", \"203.0.113.7\"]")).unwrap();
        let info = MINIMAL.replace(
            "url = \"http://127.0.0.1:9001/wx\"",
            "url = \"http://127.0.0.1:9001/wx\"\ninfo_types = [\"authorized\"]",
        );
        assert!(error_of(&info).starts_with("accounts[0].targets[0].info_types: "));
        let templated = MINIMAL.replace("/wx\"", "/wx/{authorizer}\"");
        assert!(error_of(&templated).starts_with("accounts[0].targets[0].url: "));
        let open_plain = MINIMAL.replace("official_account", "open_platform");
        assert!(error_of(&open_plain).starts_with("accounts[0].mode: open platform"));
        let open = templated.replace("official_account", "open_platform").replace(
            "token = \"tok\"",
            "token = \"tok\"\napp_id = \"wx1\"\nencoding_aes_key = \"jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C\"",
        );
        Config::from_toml(&open).unwrap();
        let proxies = format!("{MINIMAL}\n[server]\ntrusted_proxies = [\"x\"]");
        assert!(error_of(&proxies).starts_with("server.trusted_proxies[0]:"));
    }

    /// No accepted query may make a target's URL invalid: a fragment would swallow it, and the
    /// URL plus the longest accepted query must stay a URI the client can send.
    #[test]
    fn every_target_url_has_room_for_the_longest_accepted_query() {
        let fragment = MINIMAL.replace("/wx\"", "/wx#part\"");
        assert!(
            error_of(&fragment)
                .starts_with("accounts[0].targets[0].url: must not have a #fragment")
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

        // At the limit, the URL a delivery builds (as `downstream` builds it) is a valid URI.
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
                "password_env = \"WECHAT_FANOUT_TEST_NO_SUCH_VARIABLE\"",
                "store.redis.password_env:",
            ),
            ("cluster = \"yes\"", "cluster"),
            ("url = \"redis://x\"", "url"),
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
}
