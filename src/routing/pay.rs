//! The parts of the routing table that are read from files and secrets for WeChat Pay accounts
//! (their keys, certificates and APIv3 key) and for signing targets (their Standard Webhooks
//! secret): read once here, when the table is built, so a missing file or a wrong key is a
//! configuration error (exit 64) and never a refusal of WeChat Pay's notifications.

use std::path::Path;

use super::PayAccount;
use crate::config::invalid;
use crate::config::{AccountConfig, ConfigError, PAY_TIMESTAMP_SKEW_SECS, TargetConfig, secret};
use crate::outbound::signing::{SECRET_PREFIX, WebhookSigner};
use crate::wechat::{ApiV3Key, PayKey, PayKeys, certificate_from_pem};
use crate::wechat::{Credentials, Kind, Security};

/// The keys of a `kind = "wechat_pay"` account (`key`: `accounts[i]`).
pub(super) fn pay_account(account: &AccountConfig, key: &str) -> Result<PayAccount, ConfigError> {
    let mut keys = PayKeys::default();
    for (k, public) in account.wechatpay_public_keys.iter().flatten().enumerate() {
        let at = format!("{key}.wechatpay_public_keys[{k}].path");
        let pem = read(&public.path, &at)?;
        let read = PayKey::from_public_key_pem(&pem)
            .map_err(|e| invalid(&at, format!("{}: {e}", public.path.display())))?;
        if !keys.insert(&public.id, read) {
            return Err(invalid(
                at,
                format!("the id {:?} is listed twice", public.id),
            ));
        }
    }
    let certificates = account.wechatpay_platform_certificates.iter().flatten();
    for (k, path) in certificates.enumerate() {
        let at = format!("{key}.wechatpay_platform_certificates[{k}]");
        let pem = read(path, &at)?;
        let (serial, read) = certificate_from_pem(&pem)
            .map_err(|e| invalid(&at, format!("{}: {e}", path.display())))?;
        if !keys.insert(&serial, read) {
            return Err(invalid(
                at,
                format!("a certificate with serial {serial} is listed already"),
            ));
        }
    }
    let apiv3 = secret(
        key,
        "apiv3_key",
        account.apiv3_key.as_deref(),
        account.apiv3_key_env.as_deref(),
    )?;
    let apiv3_key = match apiv3 {
        None => None,
        // Named where it came from; the message never quotes it.
        Some(text) => Some(ApiV3Key::new(&text).ok_or_else(|| {
            let name = if account.apiv3_key_env.is_some() {
                "apiv3_key_env"
            } else {
                "apiv3_key"
            };
            invalid(
                format!("{key}.{name}"),
                "the APIv3 key must be exactly 32 characters (as the merchant platform sets it)",
            )
        })?),
    };
    for (j, target) in account.targets.iter().enumerate() {
        if target.out_trade_no_prefixes.is_some() && apiv3_key.is_none() {
            return Err(invalid(
                format!("{key}.targets[{j}].out_trade_no_prefixes"),
                "needs the account's apiv3_key (or apiv3_key_env): the order number is in the \
                 encrypted resource",
            ));
        }
    }
    Ok(PayAccount {
        keys,
        apiv3_key,
        max_skew_secs: account
            .max_timestamp_skew_secs
            .unwrap_or(PAY_TIMESTAMP_SKEW_SECS),
    })
}

/// A PEM file's bytes, or the error that names the key it was given by.
fn read(path: &Path, key: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| invalid(key, format!("{} cannot be read ({e})", path.display())))
}

/// What a pay account has in place of WeChat's credentials: nothing anyone verifies with. Its
/// "token" keys the hash that log lines name users by.
pub(super) fn placeholder_credentials(account: &AccountConfig, pay: &PayAccount) -> Credentials {
    let mchid = account.mchid.clone().unwrap_or_default();
    Credentials {
        kind: Kind::OfficialAccount,
        token: format!("wechat_pay\0{mchid}\0{}", pay.keys.serials().join(",")),
        receive_id: mchid,
        security: Security::Plaintext,
    }
}

/// A target's Standard Webhooks signer, from `signing_secret_env` (`key`: the target's).
pub(super) fn signer(
    target: &TargetConfig,
    key: &str,
) -> Result<Option<WebhookSigner>, ConfigError> {
    let Some(var) = &target.signing_secret_env else {
        return Ok(None);
    };
    let text = secret(key, "signing_secret", None, Some(var))?.unwrap_or_default();
    WebhookSigner::from_secret(&text).map(Some).ok_or_else(|| {
        invalid(
            format!("{key}.signing_secret_env"),
            format!(
                "{var} must hold a Standard Webhooks secret: {SECRET_PREFIX} and the base64 of \
                 24 to 64 random bytes"
            ),
        )
    })
}
