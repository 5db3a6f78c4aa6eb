//! The rules of WeChat Pay accounts (`kind = "wechat_pay"`) and of the keys only they take, as
//! written: what needs no file and no secret. Reading the keys, certificates and the APIv3 key
//! is `routing::build`'s.
//!
//! A pay account has no passive reply, no token and no encryption mode: WeChat Pay signs each
//! notification with its own RSA key and answers only "received" or "failed". So the keys of
//! those features are refused on it, and its own keys are refused on other kinds, each with a
//! message that says why (all at once, like every other rule of a file).

use std::path::Path;

use super::{AccountConfig, AccountKind, ConfigError, TargetConfig, invalid};

/// What `Wechatpay-Serial` starts with for a WeChat Pay public key (微信支付公钥).
pub const PUBLIC_KEY_ID_PREFIX: &str = "PUB_KEY_ID_";

/// `max_timestamp_skew_secs` of a pay account that sets none: WeChat Pay's SDKs allow 5 minutes.
pub const PAY_TIMESTAMP_SKEW_SECS: u64 = 300;

/// The rules of the WeChat Pay keys of `account` (`key`: `accounts[i]`), pushed to `errors`.
pub(super) fn check(account: &AccountConfig, key: &str, errors: &mut Vec<ConfigError>) {
    if account.kind == AccountKind::WechatPay {
        check_pay_account(account, key, errors);
    } else {
        check_other_account(account, key, errors);
    }
}

fn check_pay_account(account: &AccountConfig, key: &str, errors: &mut Vec<ConfigError>) {
    match account.mchid.as_deref() {
        None => errors.push(invalid(
            format!("{key}.mchid"),
            "missing: a wechat_pay account needs its merchant number (商户号)",
        )),
        Some(mchid)
            if mchid.is_empty()
                || mchid.len() > 32
                || !mchid.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            errors.push(invalid(
                format!("{key}.mchid"),
                "must be the merchant number: 1 to 32 letters or digits",
            ))
        }
        Some(_) => {}
    }
    let keys = account.wechatpay_public_keys.as_deref().unwrap_or_default();
    let certificates = (account.wechatpay_platform_certificates.as_deref()).unwrap_or_default();
    if keys.is_empty() && certificates.is_empty() {
        errors.push(invalid(
            format!("{key}.wechatpay_public_keys"),
            "a wechat_pay account needs WeChat Pay's public key (wechatpay_public_keys = \
             [{ id = \"PUB_KEY_ID_…\", path = \"…pem\" }]) and/or its platform certificates \
             (wechatpay_platform_certificates = [\"…pem\"])",
        ));
    }
    let mut ids = std::collections::HashSet::new();
    for (k, public) in keys.iter().enumerate() {
        let at = format!("{key}.wechatpay_public_keys[{k}]");
        let id_ok = public.id.len() > PUBLIC_KEY_ID_PREFIX.len()
            && public.id.starts_with(PUBLIC_KEY_ID_PREFIX)
            && public.id.bytes().all(|b| b.is_ascii_graphic());
        if !id_ok {
            errors.push(invalid(
                format!("{at}.id"),
                format!(
                    "must be the key's id as WeChat Pay shows it: {PUBLIC_KEY_ID_PREFIX} and \
                     digits, no spaces"
                ),
            ));
        } else if !ids.insert(public.id.as_str()) {
            errors.push(invalid(format!("{at}.id"), "the same id is listed twice"));
        }
        if public.path.as_os_str().is_empty() {
            errors.push(invalid(format!("{at}.path"), "must name a PEM file"));
        }
    }
    for (k, path) in certificates.iter().enumerate() {
        if path.as_os_str().is_empty() {
            errors.push(invalid(
                format!("{key}.wechatpay_platform_certificates[{k}]"),
                "must name a PEM file",
            ));
        }
    }
    if account.max_timestamp_skew_secs == Some(0) {
        errors.push(invalid(
            format!("{key}.max_timestamp_skew_secs"),
            "must be at least 1: without a window a captured notification could be replayed \
             forever (leave it out for WeChat Pay's 300)",
        ));
    }
    let refused = [
        (
            "primary",
            account.primary.is_some(),
            "there is no passive reply",
        ),
        (
            "late_replies",
            account.late_replies.is_some(),
            "there is no passive reply",
        ),
        (
            "allowed_sources",
            account
                .allowed_sources
                .as_ref()
                .is_some_and(|list| list.iter().any(|s| s == "wechat")),
            "\"wechat\" is WeChat's callback IP list, not WeChat Pay's; list WeChat Pay's \
             addresses as CIDR blocks",
        ),
        (
            "token",
            account.token.is_some() || account.token_env.is_some(),
            "WeChat Pay signs with its own RSA key",
        ),
        (
            "encoding_aes_key",
            account.encoding_aes_key.is_some() || account.encoding_aes_key_env.is_some(),
            "WeChat Pay encrypts the resource with the APIv3 key (apiv3_key)",
        ),
        (
            "mode",
            account.mode.is_some(),
            "there is no encryption mode",
        ),
        (
            "app_id",
            account.app_id.is_some(),
            "the account is named by mchid",
        ),
        (
            "app_secret",
            account.app_secret.is_some() || account.app_secret_env.is_some(),
            "WeChat's API is not called for it",
        ),
        (
            "wechat_api_base",
            account.wechat_api_base.is_some(),
            "WeChat's API is not called for it",
        ),
    ];
    for (name, set, why) in refused {
        if set {
            errors.push(invalid(
                format!("{key}.{name}"),
                format!("not for kind = \"wechat_pay\" accounts: {why}"),
            ));
        }
    }
    for (j, target) in account.targets.iter().enumerate() {
        check_pay_target(target, &format!("{key}.targets[{j}]"), errors);
    }
}

fn check_pay_target(target: &TargetConfig, key: &str, errors: &mut Vec<ConfigError>) {
    let refused = [
        ("replies_to", target.replies_to.is_some()),
        ("shadow_of", target.shadow_of.is_some()),
        ("resign", target.resign.is_some()),
        ("msg_types", target.msg_types.is_some()),
        ("events", target.events.is_some()),
        ("users", target.users.is_some()),
    ];
    for (name, set) in refused {
        if set {
            errors.push(invalid(
                format!("{key}.{name}"),
                "not for targets of a wechat_pay account: a notification has no passive reply \
                 and no WeChat signature (filter with event_types and out_trade_no_prefixes; \
                 sign with signing_secret_env)",
            ));
        }
    }
    if let Some(types) = &target.event_types
        && (types.is_empty() || types.iter().any(|t| !is_event_type_pattern(t)))
    {
        errors.push(invalid(
            format!("{key}.event_types"),
            "must list event types (\"TRANSACTION.SUCCESS\", or \"TRANSACTION.*\" for every \
             one that starts so, \"*\" for all): letters, digits, '.', '_', '*' only at the end",
        ));
    }
    if let Some(prefixes) = &target.out_trade_no_prefixes
        && (prefixes.is_empty() || prefixes.iter().any(|p| p.is_empty() || p.trim() != p))
    {
        errors.push(invalid(
            format!("{key}.out_trade_no_prefixes"),
            "must list at least one prefix, none empty or with spaces around it",
        ));
    }
}

/// `TRANSACTION.SUCCESS`, `TRANSACTION.*`, `*`.
fn is_event_type_pattern(pattern: &str) -> bool {
    let stem = pattern.strip_suffix('*').unwrap_or(pattern);
    (!stem.is_empty() || pattern == "*")
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
}

fn check_other_account(account: &AccountConfig, key: &str, errors: &mut Vec<ConfigError>) {
    let pay_keys = [
        ("mchid", account.mchid.is_some()),
        (
            "wechatpay_public_keys",
            account.wechatpay_public_keys.is_some(),
        ),
        (
            "wechatpay_platform_certificates",
            account.wechatpay_platform_certificates.is_some(),
        ),
        (
            "apiv3_key",
            account.apiv3_key.is_some() || account.apiv3_key_env.is_some(),
        ),
        (
            "max_timestamp_skew_secs",
            account.max_timestamp_skew_secs.is_some(),
        ),
    ];
    for (name, set) in pay_keys {
        if set {
            errors.push(invalid(
                format!("{key}.{name}"),
                "only for kind = \"wechat_pay\" accounts (WeChat's own callbacks use \
                 server.max_timestamp_skew_secs)",
            ));
        }
    }
    for (j, target) in account.targets.iter().enumerate() {
        for (name, set) in [
            ("event_types", target.event_types.is_some()),
            (
                "out_trade_no_prefixes",
                target.out_trade_no_prefixes.is_some(),
            ),
        ] {
            if set {
                errors.push(invalid(
                    format!("{key}.targets[{j}].{name}"),
                    "only for targets of kind = \"wechat_pay\" accounts (filter WeChat's \
                     callbacks with msg_types and events)",
                ));
            }
        }
    }
}

/// Makes the PEM paths of pay accounts that are relative to the config file's folder `dir`
/// absolute, so that the proxy finds them wherever it was started.
pub(super) fn resolve_paths(accounts: &mut [AccountConfig], dir: &Path) {
    for account in accounts {
        for public in account.wechatpay_public_keys.iter_mut().flatten() {
            if public.path.is_relative() {
                public.path = dir.join(&public.path);
            }
        }
        for path in account.wechatpay_platform_certificates.iter_mut().flatten() {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_patterns() {
        for good in [
            "TRANSACTION.SUCCESS",
            "TRANSACTION.*",
            "*",
            "REFUND.ABNORMAL",
        ] {
            assert!(is_event_type_pattern(good), "{good}");
        }
        for bad in ["", "TRANS*ACTION", "REFUND SUCCESS", "**"] {
            assert!(!is_event_type_pattern(bad), "{bad}");
        }
    }
}
