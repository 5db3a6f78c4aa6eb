//! `simulate` for a WeChat Pay account: a notification as WeChat Pay writes it (a
//! `TRANSACTION.SUCCESS` by default, its resource encrypted with the account's APIv3 key, or a
//! throwaway key when the config has none), signed with a test private key given on the
//! command line (`--wechatpay-private-key`), the serial of the account's first WeChat Pay key
//! (or `--wechatpay-serial`). For trying targets and the proxy without WeChat Pay: only the
//! holder of WeChat Pay's real private key can make a notification a production proxy takes.
//!
//! The private key and the APIv3 key are used, never printed.

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::header::CONTENT_TYPE;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};

use super::{POST_PATIENCE, SimulateArgs, client, default_url, exchange};
use crate::config::{AccountConfig, Config, secret};
use crate::wechat::{
    ApiV3Key, NONCE_HEADER, SERIAL_HEADER, SIGNATURE_HEADER, SIGNATURE_TYPE, SIGNATURE_TYPE_HEADER,
    TIMESTAMP_HEADER, certificate_from_pem, signed_message,
};

/// Signs notifications as WeChat Pay does: SHA256withRSA over `timestamp\nnonce\nbody\n`.
pub struct PaySigner {
    key: RsaKeyPair,
    /// What `Wechatpay-Serial` says: the id or serial of the key that checks these signatures.
    pub serial: String,
}

impl std::fmt::Debug for PaySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaySigner")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl PaySigner {
    /// An RSA private key in PEM (PKCS#8 `PRIVATE KEY`, or PKCS#1 `RSA PRIVATE KEY`).
    pub fn from_pem(pem: &[u8], serial: &str) -> anyhow::Result<PaySigner> {
        let (label, der) = x509_cert::der::pem::decode_vec(pem)
            .map_err(|e| anyhow::anyhow!("not a PEM private key ({e})"))?;
        let key = match label {
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
            other => bail!("a PEM {other:?} is not an RSA private key"),
        }
        .map_err(|e| anyhow::anyhow!("not a usable RSA private key ({e})"))?;
        Ok(PaySigner {
            key,
            serial: serial.to_owned(),
        })
    }

    /// The base64 `Wechatpay-Signature` of `body` sent at `timestamp` with `nonce`.
    pub fn sign(&self, timestamp: u64, nonce: &str, body: &[u8]) -> anyhow::Result<String> {
        let mut signature = vec![0; self.key.public().modulus_len()];
        let message = signed_message(&timestamp.to_string(), nonce, body);
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                &message,
                &mut signature,
            )
            .map_err(|_| anyhow::anyhow!("signing failed"))?;
        Ok(BASE64.encode(signature))
    }

    /// The five `Wechatpay-*` headers of `body` sent now, as WeChat Pay sends them.
    pub fn headers(&self, now: u64, body: &[u8]) -> anyhow::Result<Vec<(&'static str, String)>> {
        let nonce = random_text(32);
        Ok(vec![
            (SERIAL_HEADER, self.serial.clone()),
            (SIGNATURE_HEADER, self.sign(now, &nonce, body)?),
            (TIMESTAMP_HEADER, now.to_string()),
            (NONCE_HEADER, nonce),
            (SIGNATURE_TYPE_HEADER, SIGNATURE_TYPE.to_owned()),
        ])
    }
}

/// A notification's body: `event_type` about the order `out_trade_no` paid by `openid`, its
/// resource sealed with `key` under a fresh nonce; `id` names the notification.
pub fn notification_body(
    key: &ApiV3Key,
    id: &str,
    event_type: &str,
    out_trade_no: &str,
    openid: &str,
) -> String {
    let refund = event_type.starts_with("REFUND.");
    let (original_type, summary) = if refund {
        ("refund", "退款成功")
    } else {
        ("transaction", "支付成功")
    };
    let resource = serde_json::json!({
        "mchid": "1900000100",
        "appid": "wxd678efh567hg6787",
        "out_trade_no": out_trade_no,
        "transaction_id": "4200000000000000000000000001",
        "trade_type": "JSAPI",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "OTHERS",
        "success_time": "2025-01-01T10:00:00+08:00",
        "payer": { "openid": openid },
        "amount": { "total": 1, "payer_total": 1, "currency": "CNY", "payer_currency": "CNY" },
    });
    let nonce: [u8; 12] = random_text(12)
        .into_bytes()
        .try_into()
        .unwrap_or([b'0'; 12]);
    let sealed = key
        .encrypt(&nonce, original_type, resource.to_string().as_bytes())
        .unwrap_or_default();
    serde_json::json!({
        "id": id,
        "create_time": "2025-01-01T10:00:01+08:00",
        "resource_type": "encrypt-resource",
        "event_type": event_type,
        "summary": summary,
        "resource": {
            "original_type": original_type,
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": sealed,
            "associated_data": original_type,
            "nonce": String::from_utf8_lossy(&nonce),
        },
    })
    .to_string()
}

/// `n` random letters and digits: nonces as WeChat Pay makes them.
fn random_text(n: usize) -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// The serial a simulated notification names: `--wechatpay-serial`, else the account's first
/// public key id, else its first platform certificate's serial.
fn serial(account: &AccountConfig, given: Option<&str>) -> anyhow::Result<String> {
    if let Some(serial) = given {
        return Ok(serial.to_owned());
    }
    if let Some(first) = account.wechatpay_public_keys.iter().flatten().next() {
        return Ok(first.id.clone());
    }
    if let Some(path) = account
        .wechatpay_platform_certificates
        .iter()
        .flatten()
        .next()
    {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (serial, _) = certificate_from_pem(&pem).with_context(|| path.display().to_string())?;
        return Ok(serial);
    }
    bail!(
        "account {:?} lists no WeChat Pay key; give --wechatpay-serial",
        account.id
    )
}

/// Sends one simulated notification for the pay account `account` (`index`: its place in the
/// config) and reports to `out`: `Ok(true)` iff it was taken (200 or 204).
pub(super) async fn run(
    config: &Config,
    account: &AccountConfig,
    index: usize,
    args: &SimulateArgs,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let Some(private_key) = &args.wechatpay_private_key else {
        bail!(
            "account {:?} is a WeChat Pay account: give --wechatpay-private-key PEM, the test \
             private key whose public key the account lists (a notification is signed with it)",
            account.id
        );
    };
    if args.verify_url || args.text.is_some() || args.event.is_some() || args.authorizer.is_some() {
        bail!(
            "account {:?} is a WeChat Pay account: it takes notifications only (--event-type, \
             --out-trade-no), no messages, events or handshake",
            account.id
        );
    }
    let signer = PaySigner::from_pem(
        &read(private_key)?,
        &serial(account, args.wechatpay_serial.as_deref())?,
    )
    .with_context(|| format!("--wechatpay-private-key {}", private_key.display()))?;
    let key = format!("accounts[{index}]");
    let apiv3 = secret(
        &key,
        "apiv3_key",
        account.apiv3_key.as_deref(),
        account.apiv3_key_env.as_deref(),
    )?;
    // Without the account's key, one nobody has: the proxy does not need to read it.
    let apiv3 = match apiv3 {
        Some(text) => ApiV3Key::new(&text).context("the account's APIv3 key is not 32 bytes")?,
        None => ApiV3Key::new(&random_text(32)).context("a throwaway APIv3 key")?,
    };
    let id = format!("SIMULATED-{}", random_text(24));
    let event_type = args.event_type.as_deref().unwrap_or("TRANSACTION.SUCCESS");
    let out_trade_no = match &args.out_trade_no {
        Some(number) => number.clone(),
        None => format!("SIM{}", random_text(16)),
    };
    let openid = args.from.as_deref().unwrap_or(super::FAKE_OPENID);
    let body = notification_body(&apiv3, &id, event_type, &out_trade_no, openid);
    let headers = signer.headers(crate::clock::now_secs(), body.as_bytes())?;
    let url = match &args.url {
        Some(url) => url.clone(),
        None => default_url(config.server.listen, &account.id)?,
    };
    writeln!(out, "account   {} (wechat_pay)", account.id)?;
    writeln!(out, "serial    {}", signer.serial)?;
    writeln!(
        out,
        "event     {event_type}, out_trade_no {out_trade_no}, id {id}"
    )?;
    writeln!(out, "POST      {url}")?;
    let mut request = client()?
        .post(url.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let (status, _) = exchange(request, "POST", &url, POST_PATIENCE, out).await?;
    let taken = matches!(status.as_u16(), 200 | 204);
    writeln!(
        out,
        "result    {}",
        if taken {
            "received (WeChat Pay takes 200 or 204 as received)"
        } else {
            "refused: WeChat Pay would send it again later"
        }
    )?;
    Ok(taken)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}
