//! The routing table built from the configuration: the only place it is built, and so the only
//! place its rules are checked ("validation is building"). `serve`, `check-config` and a reload
//! all come here; a failure to build is the configuration error (exit 64 before any port is
//! bound), and every problem of a file is reported at once: each account, each target, each
//! part of them is built on its own, and what fails is reported without stopping the rest.
//!
//! Secrets given by environment variable name (`token_env`, `encoding_aes_key_env`,
//! `app_secret_env`, a target's `resign`) are read here, so loading a file needs none of them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::replies::{Claim, Owners, Route};
use super::{Account, Allowed, Filter, Lanes, Listen, Plumbing, Routes, Target};
use crate::cidr::Cidr;
use crate::config::{
    AccountConfig, AccountKind, Config, ConfigError, DEFAULT_API_BASE, LATE_REPLIES_TARGET,
    LISTEN_BACKLOG_SECS, MIN_LISTEN_TOKEN_BYTES, Mode, Order, TargetConfig, TargetSettings,
    WECOM_API_BASE, all_of, authorizer_placeholders, invalid, secret,
};
use crate::outbound::Origin;
use crate::outbound::wechat_api::ApiAccount;
use crate::privacy::{UserHash, UserIds};
use crate::store::TargetKey;
use crate::wechat::{AesKey, Credentials, Kind, Resign, Security};

/// `result`'s value, or `None` with its error pushed to `errors`.
fn kept<T>(errors: &mut Vec<ConfigError>, result: Result<T, ConfigError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(e) => {
            errors.push(e);
            None
        }
    }
}

/// Builds the routing table of `config`, or says everything that stops it.
pub fn build(config: &Config) -> Result<Routes, ConfigError> {
    let mut errors = Vec::new();
    if config.accounts.is_empty() {
        errors.push(invalid("accounts", "no account is configured"));
    }
    let mut accounts = HashMap::with_capacity(config.accounts.len());
    for (i, account) in config.accounts.iter().enumerate() {
        if let Some(built) = build_account(config, account, &format!("accounts[{i}]"), &mut errors)
        {
            accounts.insert(account.id.clone(), Arc::new(built));
        }
    }
    all_of(errors)?;
    Ok(Routes { accounts })
}

/// One account (`key`: `accounts[i]`), or `None` with its problems pushed to `errors`.
fn build_account(
    config: &Config,
    account: &AccountConfig,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Account> {
    let before = errors.len();
    let pay = match account.kind {
        AccountKind::WechatPay => kept(errors, super::pay::pay_account(account, key)).map(Some),
        _ => Some(None),
    };
    let credentials = match &pay {
        Some(Some(pay)) => Some(super::pay::placeholder_credentials(account, pay)),
        Some(None) => kept(errors, credentials(account, key)),
        None => None,
    };
    let allowed = kept(errors, allowed_sources(account, key));
    // WeChat's callback IP list is fetched with the account's access token.
    let sources_api = match &allowed {
        Some(Some(allowed)) if allowed.wechat => kept(
            errors,
            build_api_account(account, key, &config.wechat_api_base),
        )
        .map(Some),
        Some(_) => Some(None),
        None => None,
    };
    let late_api = kept(
        errors,
        late_replies_api(account, key, &config.wechat_api_base),
    );
    let owners = kept(errors, owners(account, key));
    let shadow_of = kept(errors, shadows(account, key));
    let id: Arc<str> = Arc::from(account.id.as_str());
    let lower = |list: &Option<Vec<String>>| {
        list.as_ref()
            .map(|l| l.iter().map(|s| s.to_ascii_lowercase()).collect())
    };
    let mut targets = Vec::with_capacity(account.targets.len());
    for (j, t) in account.targets.iter().enumerate() {
        let tkey = format!("{key}.targets[{j}]");
        let resign = match &credentials {
            Some(credentials) => {
                kept(errors, target_credentials(t, &tkey, credentials)).map(|own| {
                    own.map(|(target, own_key)| Resign {
                        account: credentials.clone(),
                        target,
                        own_key,
                    })
                })
            }
            None => None,
        };
        // A shadow gets what its target gets.
        let filtered = shadow_of
            .as_ref()
            .and_then(|of| of[j])
            .map_or(t, |k| &account.targets[k]);
        let settings = t.settings(&config.target_defaults);
        let signing = kept(errors, super::pay::signer(t, &tkey)).flatten();
        let listen = if t.listen {
            let token = secret(
                &tkey,
                "listen_token",
                t.listen_token.as_deref(),
                t.listen_token_env.as_deref(),
            );
            match kept(errors, token) {
                Some(Some(token)) if token.len() >= MIN_LISTEN_TOKEN_BYTES => {
                    let backlog = t.listen_backlog_secs.unwrap_or(LISTEN_BACKLOG_SECS);
                    Some(Listen::new(token, Duration::from_secs(backlog)))
                }
                Some(_) => {
                    errors.push(invalid(
                        format!("{tkey}.listen_token_env"),
                        format!("the token must be at least {MIN_LISTEN_TOKEN_BYTES} characters"),
                    ));
                    None
                }
                None => None,
            }
        } else {
            None
        };
        // A listen target's "URL" names where its client connects, for people.
        let url = match &t.url {
            Some(url) => url.to_string(),
            None => format!("/listen/{}/{}", account.id, t.name),
        };
        let needs_authorizer = authorizer_placeholders(&url) > 0;
        let origin = (!needs_authorizer && t.url.is_some())
            .then(|| Origin::parse(&url))
            .flatten();
        targets.push(Arc::new(Target {
            key: TargetKey {
                account: id.clone(),
                target: Arc::from(t.name.as_str()),
            },
            url,
            plumbing: Plumbing::new(settings.max_concurrency, None),
            settings,
            filter: Filter {
                msg_types: lower(&filtered.msg_types),
                events: lower(&filtered.events),
                info_types: lower(&filtered.info_types),
                authorizers: filtered.authorizers.clone(),
                needs_authorizer,
                users: filtered.users.clone(),
                event_types: filtered.event_types.clone(),
                out_trade_no_prefixes: filtered.out_trade_no_prefixes.clone(),
            },
            resign: resign.flatten(),
            shadow_of: t.shadow_of.as_deref().map(Arc::from),
            api: None,
            origin,
            listen,
            signing,
        }));
    }
    if errors.len() > before {
        return None;
    }
    let (credentials, owners, shadow_of) = (credentials?, owners?, shadow_of?);
    let late_replies = late_api.flatten().map(|api| {
        // Sent by the WeChat API client, which picks its own protocol.
        let settings = TargetSettings {
            http2: false,
            pipelining: false,
            traceparent: false,
            ..config.target_defaults.settings()
        };
        Arc::new(Target {
            key: TargetKey {
                account: id.clone(),
                target: Arc::from(LATE_REPLIES_TARGET),
            },
            url: api.base.to_string(),
            // Its jobs are made one at a time by the late-reply rescue.
            plumbing: Plumbing::new(settings.max_concurrency, Some(1)),
            settings,
            // Matched by no callback: its jobs are made by the late-reply rescue.
            filter: Filter {
                msg_types: Some(Vec::new()),
                ..Filter::default()
            },
            resign: None,
            shadow_of: None,
            api: Some(Arc::new(api)),
            // Its calls go through the WeChat API client, never a target's connection.
            origin: None,
            listen: None,
            signing: None,
        })
    });
    let mut shadows = vec![Vec::new(); targets.len()];
    for (j, of) in shadow_of.iter().enumerate() {
        if let Some(k) = of {
            shadows[*k].push(j);
        }
    }
    let ordered = (targets.iter()).any(|t| t.settings.order == Order::PerUser);
    Some(Account {
        user_ids: UserIds::new(&credentials.token, config.log.show_user_ids),
        user_hash: UserHash::new(&credentials.token),
        lanes: ordered.then(|| Lanes::new(account.kind, &credentials.token)),
        id,
        allowed: allowed?,
        sources_api: sources_api?,
        credentials,
        targets,
        owners,
        shadows,
        late_replies,
        pay: pay?.map(Arc::new),
    })
}

/// The reply owners of this account's routes: each target's `replies_to`, and `primary`
/// as `replies_to = ["*"]`. Refuses a route claimed by two targets, and a route that the
/// claiming target's own `msg_types`/`events` filter excludes (its answer could never come).
fn owners(account: &AccountConfig, key: &str) -> Result<Owners, ConfigError> {
    let lower = |list: &Option<Vec<String>>| {
        list.as_ref()
            .map(|l| l.iter().map(|s| s.to_ascii_lowercase()).collect::<Vec<_>>())
    };
    let mut claims = Vec::with_capacity(account.targets.len());
    for (j, target) in account.targets.iter().enumerate() {
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
        if account.primary.as_deref() == Some(target.name.as_str()) {
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
        claims.push(Claim {
            index: j,
            name: target.name.as_str(),
            routes,
            users: target.users.as_deref(),
        });
    }
    Owners::build(claims).map_err(|c| {
        let whose = match &c.user {
            Some(user) => format!(" for the sender {user:?} (both list it in users)"),
            None => String::new(),
        };
        invalid(
            format!("{key}.targets"),
            format!(
                "targets {:?} and {:?} both claim the replies to route {}{whose} \
                 (replies_to, or primary = \"*\"); give it to one of them",
                c.first, c.second, c.route
            ),
        )
    })
}

/// For each target, the index of the target it shadows (`shadow_of`), checked: another
/// target of this account, itself no shadow.
fn shadows(account: &AccountConfig, key: &str) -> Result<Vec<Option<usize>>, ConfigError> {
    account
        .targets
        .iter()
        .enumerate()
        .map(|(j, target)| {
            let Some(of) = &target.shadow_of else {
                return Ok(None);
            };
            let tkey = format!("{key}.targets[{j}].shadow_of");
            let index = account
                .targets
                .iter()
                .position(|t| &t.name == of)
                .ok_or_else(|| {
                    invalid(&tkey, format!("names no target of this account: {of:?}"))
                })?;
            if index == j || account.targets[index].shadow_of.is_some() {
                return Err(invalid(
                    tkey,
                    format!("{of:?} is this target or a shadow; shadow the target that answers"),
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
fn allowed_sources(account: &AccountConfig, key: &str) -> Result<Option<Allowed>, ConfigError> {
    let Some(list) = &account.allowed_sources else {
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
        let app_id = account.app_id.as_deref().unwrap_or_default();
        if app_id.is_empty() {
            return Err(invalid(
                format!("{key}.app_id"),
                "is required for allowed_sources = [\"wechat\"] (WeChat's API needs it)",
            ));
        }
        if app_secret(account, key)?.is_none_or(|s| s.is_empty()) {
            return Err(invalid(
                format!("{key}.app_secret"),
                "is required for allowed_sources = [\"wechat\"] (or app_secret_env)",
            ));
        }
    }
    Ok(Some(allowed))
}

/// What the customer-service API needs, when `late_replies = "customer_service"`: an
/// official account or mini program with `app_id` and `app_secret`.
fn late_replies_api(
    account: &AccountConfig,
    key: &str,
    default_base: &Url,
) -> Result<Option<ApiAccount>, ConfigError> {
    if account.late_replies.is_none() {
        return Ok(None);
    }
    if kind(account) == Kind::WeCom {
        return Err(invalid(
            format!("{key}.late_replies"),
            "WeCom has no customer-service message API; leave it out",
        ));
    }
    let secret = app_secret(account, key)?;
    if account.app_id.as_deref().is_none_or(str::is_empty) || secret.is_none_or(|s| s.is_empty()) {
        return Err(invalid(
            format!("{key}.late_replies"),
            "needs app_id and app_secret (or app_secret_env) for the access token",
        ));
    }
    build_api_account(account, key, default_base).map(Some)
}

fn build_api_account(
    account: &AccountConfig,
    key: &str,
    default_base: &Url,
) -> Result<ApiAccount, ConfigError> {
    let app_secret = app_secret(account, key)?.unwrap_or_default();
    let kind = kind(account);
    let base = match (&account.wechat_api_base, kind) {
        (Some(base), _) => base.clone(),
        (None, Kind::WeCom) if default_base.as_str() == DEFAULT_API_BASE => {
            Url::parse(WECOM_API_BASE).map_err(|e| invalid("wechat_api_base", e.to_string()))?
        }
        (None, _) => default_base.clone(),
    };
    Ok(ApiAccount {
        id: account.id.clone(),
        kind,
        base,
        app_id: account.app_id.clone().unwrap_or_default(),
        app_secret,
    })
}

/// `app_secret`, inline or from `app_secret_env`.
fn app_secret(account: &AccountConfig, key: &str) -> Result<Option<String>, ConfigError> {
    secret(
        key,
        "app_secret",
        account.app_secret.as_deref(),
        account.app_secret_env.as_deref(),
    )
}

/// The protocol's kind of this account.
fn kind(account: &AccountConfig) -> Kind {
    match account.kind {
        AccountKind::OfficialAccount => Kind::OfficialAccount,
        AccountKind::MiniProgram => Kind::MiniProgram,
        AccountKind::Wecom => Kind::WeCom,
        AccountKind::OpenPlatform => Kind::OpenPlatform,
        // Never asked of a pay account: it has no credentials of WeChat's.
        AccountKind::WechatPay => Kind::OfficialAccount,
    }
}

/// The account's credentials, with secrets read from the environment where so configured.
pub fn credentials(account: &AccountConfig, key: &str) -> Result<Credentials, ConfigError> {
    let token = secret(
        key,
        "token",
        account.token.as_deref(),
        account.token_env.as_deref(),
    )?
    .ok_or_else(|| invalid(format!("{key}.token"), "is required (or token_env)"))?;
    if token.is_empty() {
        return Err(invalid(format!("{key}.token"), "must not be empty"));
    }
    let aes = secret(
        key,
        "encoding_aes_key",
        account.encoding_aes_key.as_deref(),
        account.encoding_aes_key_env.as_deref(),
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
    let mode = match (account.mode, &aes_key) {
        (Some(mode), _) => mode,
        (None, Some(_)) => Mode::Safe,
        (None, None) => Mode::Plaintext,
    };
    let kind = kind(account);
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
    let receive_id = match (&security, &account.app_id) {
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

/// With `resign`: the credentials this target verifies with (its token; its key, else the
/// account's; the account's kind, mode and receive id) and whether the key is its own.
fn target_credentials(
    target: &TargetConfig,
    key: &str,
    account: &Credentials,
) -> Result<Option<(Credentials, bool)>, ConfigError> {
    let Some(resign) = &target.resign else {
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
