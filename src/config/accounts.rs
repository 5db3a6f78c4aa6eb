//! The accounts and their targets as the user wrote them (`[[accounts]]`,
//! `[[accounts.targets]]`), and the rules of their fields that need no secret and build nothing.
//!
//! Everything that resolves a secret or builds a part of the routing table (credentials, reply
//! owners, shadows, allowed sources, WeChat API accounts) is `routing::build`'s: the client
//! commands load this file without an account's secrets.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::{
    ConfigError, MAX_URI_BYTES, Millis, TargetDefaults, TargetSettings, invalid, written_url_if_any,
};

/// `{authorizer}` in a target URL, as the URL parser writes it in a path and in a query.
pub const AUTHORIZER_IN_URL: [&str; 2] = ["%7Bauthorizer%7D", "{authorizer}"];

/// How many `{authorizer}` placeholders a target URL has.
pub fn authorizer_placeholders(url: &str) -> usize {
    AUTHORIZER_IN_URL
        .iter()
        .map(|p| url.matches(p).count())
        .sum()
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
    /// WeChat Pay (APIv3) notifications: signed JSON, checked with WeChat Pay's keys.
    WechatPay,
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
    /// WeChat Pay: the merchant number (商户号) the notifications are for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mchid: Option<String>,
    /// WeChat Pay: its public keys (微信支付公钥), each with the id that names it in
    /// `Wechatpay-Serial` (`PUB_KEY_ID_…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wechatpay_public_keys: Option<Vec<PayPublicKeyConfig>>,
    /// WeChat Pay: its platform certificates (PEM files); each one's serial is read from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wechatpay_platform_certificates: Option<Vec<PathBuf>>,
    /// WeChat Pay: the APIv3 key (32 characters), to read the encrypted resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apiv3_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apiv3_key_env: Option<String>,
    /// WeChat Pay: how far `Wechatpay-Timestamp` may be from the local clock (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_timestamp_skew_secs: Option<u64>,
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
}

/// One of WeChat Pay's public keys: the id it is named by, and its PEM file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayPublicKeyConfig {
    pub id: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    /// Where deliveries are POSTed; none for a `listen` target.
    #[serde(
        default,
        deserialize_with = "written_url_if_any",
        skip_serializing_if = "Option::is_none"
    )]
    pub url: Option<Url>,
    /// Reached over a WebSocket its client opens (`GET /listen/{account}/{target}` on
    /// `server.listen`), not at a URL.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub listen: bool,
    /// The token a `listen` client presents (`Authorization: Bearer …`), or the variable
    /// holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_token_env: Option<String>,
    /// How long a `listen` target's callbacks wait while no client is connected before they
    /// become dead letters (seconds; default a day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_backlog_secs: Option<u64>,
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
    /// At most this many deliveries a second (attempts, retries included), on every instance
    /// together; the rest wait in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_sec: Option<f64>,
    /// `per_user`: one sender's callbacks one at a time, in the order received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipelining: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<bool>,
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
    /// Only callbacks from these senders (`FromUserName`: an openid; WeCom: a UserID), exact.
    /// With `replies_to`, the target owns those senders' replies on its routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
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
    /// WeChat Pay: only notifications of these `event_type`s (`TRANSACTION.*` for a prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_types: Option<Vec<String>>,
    /// WeChat Pay, with the APIv3 key: only notifications whose decrypted resource's
    /// `out_trade_no` starts with one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_trade_no_prefixes: Option<Vec<String>>,
    /// The environment variable holding this target's Standard Webhooks secret
    /// (`whsec_<base64>`): its deliveries carry `webhook-id`, `webhook-timestamp` and
    /// `webhook-signature`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_env: Option<String>,
}

/// How long a listen target's callbacks wait for a client by default: a day.
pub const LISTEN_BACKLOG_SECS: u64 = 86_400;

/// The highest `rate_limit_per_sec`: a delivery every microsecond (the limiter's unit).
const MAX_RATE_PER_SEC: f64 = 1_000_000.0;

/// A shorter listen token is guessable: refused.
pub const MIN_LISTEN_TOKEN_BYTES: usize = 16;

/// `order`: whether a target gets one sender's callbacks one at a time, in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// In parallel, as they come (the default).
    #[default]
    None,
    /// One at a time per lane (a user, by the rule of the account's kind: `routing::lanes`),
    /// in the order received; other lanes are not held back.
    PerUser,
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

impl AccountConfig {
    /// The field rules of this account and its targets (`key`: `accounts[i]`); each problem is
    /// pushed to `errors`, so that one run reports them all.
    pub(super) fn check(
        &self,
        key: &str,
        defaults: &TargetDefaults,
        max_query_bytes: usize,
        errors: &mut Vec<ConfigError>,
    ) {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            errors.push(invalid(
                format!("{key}.id"),
                "must be 1 to 64 characters of A-Z, a-z, 0-9, '-' or '_' (it is a URL path segment)",
            ));
        }
        let mut names = HashSet::new();
        for (j, target) in self.targets.iter().enumerate() {
            let tkey = format!("{key}.targets[{j}]");
            if target.name.is_empty() || target.name.chars().any(char::is_control) {
                errors.push(invalid(format!("{tkey}.name"), "must be a non-empty name"));
            } else if !names.insert(target.name.as_str()) {
                errors.push(invalid(
                    format!("{tkey}.name"),
                    format!("duplicate target name {:?} in this account", target.name),
                ));
            }
            if let Err(e) = target.check(&tkey, self.kind, defaults, max_query_bytes) {
                errors.push(e);
            }
        }
        if names.contains(LATE_REPLIES_TARGET) {
            errors.push(invalid(
                format!("{key}.targets"),
                format!("the target name {LATE_REPLIES_TARGET:?} is reserved (late replies)"),
            ));
        }
        super::pay::check(self, key, errors);
        if let Some(primary) = &self.primary
            && !names.contains(primary.as_str())
        {
            errors.push(invalid(
                format!("{key}.primary"),
                format!("names no target of this account: {primary:?}"),
            ));
        }
        // The primary is a reply owner the account names: it cannot wait in a lane nor for its
        // turn, as `check_pace` and the order rule refuse for `replies_to`.
        let primary = (self.primary.as_deref())
            .and_then(|primary| (self.targets.iter()).position(|t| t.name == primary));
        if let Some(j) = primary {
            let target = &self.targets[j];
            if target.order == Some(Order::PerUser) {
                errors.push(invalid(
                    format!("{key}.targets[{j}].order"),
                    "the primary's deliveries are relayed while WeChat waits and cannot wait in \
                     a lane: order another target",
                ));
            }
            if target.rate_limit_per_sec.is_some() {
                errors.push(invalid(
                    format!("{key}.targets[{j}].rate_limit_per_sec"),
                    "the primary's deliveries are relayed while WeChat waits and cannot wait \
                     their turn: pace another target",
                ));
            }
        }
    }
}

impl TargetConfig {
    /// The rules of a `listen` target: a token (the secret itself is read when the routing
    /// table is built), and the settings; no URL-bound options.
    fn check_listen(&self, key: &str, defaults: &TargetDefaults) -> Result<(), ConfigError> {
        match (&self.listen_token, &self.listen_token_env) {
            (None, None) => Err(invalid(
                format!("{key}.listen_token"),
                "missing: a listen target needs listen_token or listen_token_env (16+ characters)",
            )),
            (Some(_), Some(_)) => Err(invalid(
                format!("{key}.listen_token"),
                "set either listen_token or listen_token_env, not both",
            )),
            (Some(token), None) if token.len() < MIN_LISTEN_TOKEN_BYTES => Err(invalid(
                format!("{key}.listen_token"),
                format!("must be at least {MIN_LISTEN_TOKEN_BYTES} characters"),
            )),
            _ if self.listen_backlog_secs == Some(0) => Err(invalid(
                format!("{key}.listen_backlog_secs"),
                "must be at least 1",
            )),
            _ if self.authorizers.is_some() || self.info_types.is_some() => Err(invalid(
                format!("{key}.listen"),
                "a listen target takes no open platform filters (info_types, authorizers)",
            )),
            _ => self.settings(defaults).check(key),
        }
    }

    /// `rate_limit_per_sec`: a positive rate, on a target whose deliveries may wait (a reply
    /// owner's and a shadow's are made while WeChat waits, at once).
    fn check_pace(&self, key: &str) -> Result<(), ConfigError> {
        let Some(rate) = self.rate_limit_per_sec else {
            return Ok(());
        };
        let key = format!("{key}.rate_limit_per_sec");
        if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE_PER_SEC) {
            return Err(invalid(
                key,
                format!("must be a number greater than 0 and at most {MAX_RATE_PER_SEC}"),
            ));
        }
        if self.replies_to.is_some() || self.shadow_of.is_some() {
            return Err(invalid(
                key,
                "a reply owner's (replies_to) and a shadow's (shadow_of) deliveries are made \
                 while WeChat waits and cannot wait their turn: pace another target",
            ));
        }
        Ok(())
    }

    /// `order = "per_user"`: not on a target whose deliveries are made while WeChat waits (a
    /// reply owner's is relayed at accept, a shadow's asked beside it): they cannot wait in a
    /// lane. `primary` is checked by the account, which names it.
    fn check_order(&self, key: &str) -> Result<(), ConfigError> {
        if self.order != Some(Order::PerUser) {
            return Ok(());
        }
        if self.replies_to.is_some() || self.shadow_of.is_some() {
            return Err(invalid(
                format!("{key}.order"),
                "a reply owner's (replies_to) and a shadow's (shadow_of) deliveries are made \
                 while WeChat waits and cannot wait in a lane: order another target",
            ));
        }
        Ok(())
    }

    /// The field rules of one target (`key`: `accounts[i].targets[j]`) of an account of `kind`.
    fn check(
        &self,
        key: &str,
        kind: AccountKind,
        defaults: &TargetDefaults,
        max_query_bytes: usize,
    ) -> Result<(), ConfigError> {
        self.check_pace(key)?;
        self.check_order(key)?;
        let url = match (&self.url, self.listen) {
            (Some(url), false) => url,
            (None, true) => return self.check_listen(key, defaults),
            (Some(_), true) => {
                return Err(invalid(
                    format!("{key}.url"),
                    "a listen target has no url: its client connects to \
                     /listen/{account}/{target} on server.listen",
                ));
            }
            (None, false) => {
                return Err(invalid(
                    format!("{key}.url"),
                    "missing: a target needs a url, or listen = true",
                ));
            }
        };
        if self.listen_token.is_some()
            || self.listen_token_env.is_some()
            || self.listen_backlog_secs.is_some()
        {
            return Err(invalid(
                format!("{key}.listen_token"),
                "listen_token, listen_token_env and listen_backlog_secs are for listen = true \
                 targets",
            ));
        }
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(
                format!("{key}.url"),
                "must be an http:// or https:// URL",
            ));
        }
        // The callback's query is appended: after a fragment it would not be sent at all.
        if url.fragment().is_some() {
            return Err(invalid(
                format!("{key}.url"),
                "must not have a #fragment (the callback's query is appended to the URL)",
            ));
        }
        // Every accepted query must fit, so that no accepted callback is undeliverable.
        // `{authorizer}` is replaced by an app id of up to 64 bytes.
        let templated = authorizer_placeholders(url.as_str());
        let longest = url.as_str().len() + 1 + max_query_bytes + templated * 48;
        if longest > MAX_URI_BYTES {
            return Err(invalid(
                format!("{key}.url"),
                format!(
                    "with a query of server.max_query_bytes ({max_query_bytes}) appended, \
                     the URL would be {longest} bytes, over the {MAX_URI_BYTES} a request can have"
                ),
            ));
        }
        let settings = self.settings(defaults);
        settings.check(key)?;
        // Pipelining is HTTP/1.1 over our own plain TCP connections.
        if settings.pipelining && (settings.http2 || url.scheme() != "http") {
            return Err(invalid(
                format!("{key}.pipelining"),
                "is for http:// targets without http2 (inherited from target_defaults \
                 unless the target sets pipelining = false)",
            ));
        }
        if let Some(users) = &self.users
            && (users.is_empty() || users.iter().any(|u| u.trim().is_empty() || u.trim() != u))
        {
            return Err(invalid(
                format!("{key}.users"),
                "must list at least one sender (FromUserName: an openid, or a WeCom UserID), \
                 none blank or with spaces around it",
            ));
        }
        if kind != AccountKind::OpenPlatform {
            for (name, set) in [
                ("info_types", self.info_types.is_some()),
                ("authorizers", self.authorizers.is_some()),
                ("url", templated > 0),
            ] {
                if set {
                    return Err(invalid(
                        format!("{key}.{name}"),
                        "info_types, authorizers and {authorizer} in the URL are for \
                         kind = \"open_platform\" accounts only",
                    ));
                }
            }
        }
        Ok(())
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
            traceparent: self.traceparent.unwrap_or(defaults.traceparent),
            pace: (self.rate_limit_per_sec)
                .filter(|rate| rate.is_finite() && *rate > 0.0)
                .map(|rate| Duration::from_secs_f64(1.0 / rate.min(MAX_RATE_PER_SEC))),
            order: self.order.unwrap_or_default(),
        }
    }
}
