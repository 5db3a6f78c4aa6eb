//! WeChat's server API, as far as the proxy calls it: access tokens, cached per account, and the
//! callback IP list. One cache for the whole process, so every feature that calls the API (the
//! source allowlist, customer-service messages for late replies) shares each account's token: WeChat
//! invalidates the previous token when a new one is fetched with `/cgi-bin/token`, and limits
//! how often tokens may be fetched.
//!
//! Official accounts, mini programs: `POST {base}/cgi-bin/stable_token` (a token that fetching
//! again does not invalidate). WeCom: `GET {base}/cgi-bin/gettoken?corpid&corpsecret`. A token
//! is reused until 5 minutes before it expires; an API answer that says the token is invalid or
//! expired (40001, 40014, 42001) drops it and the call is made once more with a fresh one. The
//! base URL is `wechat_api_base` (per account, or the top-level default) so tests run against a
//! fake WeChat API. Secrets never appear in errors or logs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use url::Url;

use crate::wechat::Kind;

/// A token is renewed this long before WeChat says it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(300);
const TIMEOUT: Duration = Duration::from_secs(10);
/// errcodes that mean "this access token is no good": fetch another one and try once more.
const TOKEN_ERRORS: [i64; 3] = [40001, 40014, 42001];

/// What it takes to call the API for one account.
#[derive(Clone)]
pub struct ApiAccount {
    /// The account's id in the config: the cache key.
    pub id: String,
    pub kind: Kind,
    pub base: Url,
    /// App id (corp id for WeCom).
    pub app_id: String,
    /// AppSecret (WeCom: the app's secret).
    pub app_secret: String,
}

impl std::fmt::Debug for ApiAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAccount")
            .field("id", &self.id)
            .field("base", &self.base.as_str())
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

/// Why an API call failed; never contains the secret or the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("WeChat API unreachable: {0}")]
    Unreachable(String),
    #[error("WeChat API answered HTTP {0}")]
    Status(u16),
    #[error("WeChat API error {code}: {message}")]
    WeChat { code: i64, message: String },
    #[error("WeChat API answer not understood: {0}")]
    Malformed(String),
}

#[derive(Debug, Clone)]
struct Cached {
    token: String,
    renew_at: Instant,
}

/// The process's one client and token cache.
#[derive(Debug)]
pub struct WechatApi {
    client: reqwest::Client,
    tokens: Mutex<HashMap<String, Cached>>,
}

#[derive(Debug, Deserialize)]
struct ApiResponse {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    access_token: Option<String>,
    expires_in: Option<u64>,
    ip_list: Option<Vec<String>>,
}

impl WechatApi {
    pub fn new() -> WechatApi {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .http1_only()
            .build()
            .unwrap_or_default();
        WechatApi {
            client,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The account's access token, from the cache while it is fresh.
    pub async fn access_token(&self, account: &ApiAccount) -> Result<String, ApiError> {
        if let Some(cached) = self.cached(&account.id) {
            return Ok(cached);
        }
        let answer = match account.kind {
            Kind::WeCom => {
                let url = endpoint(&account.base, "cgi-bin/gettoken")?;
                let query = [
                    ("corpid", account.app_id.as_str()),
                    ("corpsecret", account.app_secret.as_str()),
                ];
                self.call(self.client.get(url).query(&query)).await?
            }
            _ => {
                let url = endpoint(&account.base, "cgi-bin/stable_token")?;
                let body = serde_json::json!({
                    "grant_type": "client_credential",
                    "appid": account.app_id,
                    "secret": account.app_secret,
                });
                let request = self
                    .client
                    .post(url)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(body.to_string());
                self.call(request).await?
            }
        };
        let token = answer
            .access_token
            .ok_or_else(|| ApiError::Malformed("no access_token".into()))?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(7200));
        let renew_at = Instant::now() + lifetime.saturating_sub(RENEW_BEFORE);
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(
                account.id.clone(),
                Cached {
                    token: token.clone(),
                    renew_at,
                },
            );
        }
        Ok(token)
    }

    /// Drops the account's cached token (WeChat said it is invalid).
    pub fn invalidate(&self, account_id: &str) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.remove(account_id);
        }
    }

    /// WeChat's callback IP list for the account: addresses and CIDR blocks, as WeChat writes them.
    pub async fn callback_ips(&self, account: &ApiAccount) -> Result<Vec<String>, ApiError> {
        let url = endpoint(&account.base, "cgi-bin/getcallbackip")?;
        let answer = self
            .with_token(account, |token| {
                self.client
                    .get(url.clone())
                    .query(&[("access_token", token)])
            })
            .await?;
        answer
            .ip_list
            .ok_or_else(|| ApiError::Malformed("no ip_list".into()))
    }

    /// Sends one customer-service message (`body`: the API's JSON) to a user, within WeChat's
    /// 48-hour window after the user's last message.
    pub async fn send_custom(&self, account: &ApiAccount, body: &[u8]) -> Result<(), ApiError> {
        let url = endpoint(&account.base, "cgi-bin/message/custom/send")?;
        self.with_token(account, |token| {
            self.client
                .post(url.clone())
                .query(&[("access_token", token)])
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec())
        })
        .await
        .map(drop)
    }

    /// Calls the API with the account's token; when WeChat says the token is no good, fetches
    /// another one and calls once more.
    async fn with_token(
        &self,
        account: &ApiAccount,
        request: impl Fn(String) -> reqwest::RequestBuilder,
    ) -> Result<ApiResponse, ApiError> {
        let mut retried = false;
        loop {
            let token = self.access_token(account).await?;
            match self.call(request(token)).await {
                Err(ApiError::WeChat { code, .. }) if TOKEN_ERRORS.contains(&code) && !retried => {
                    self.invalidate(&account.id);
                    retried = true;
                }
                result => return result,
            }
        }
    }

    fn cached(&self, account_id: &str) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        let cached = tokens.get(account_id)?;
        (Instant::now() < cached.renew_at).then(|| cached.token.clone())
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<ApiResponse, ApiError> {
        // The URL of a failed request may hold the secret or the token: never quoted.
        let response = request
            .send()
            .await
            .map_err(|e| ApiError::Unreachable(crate::error::innermost(&e.without_url())))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(ApiError::Status(status));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ApiError::Unreachable(crate::error::innermost(&e.without_url())))?;
        let answer: ApiResponse =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::Malformed(e.to_string()))?;
        if answer.errcode != 0 {
            return Err(ApiError::WeChat {
                code: answer.errcode,
                message: crate::escape::Excerpt::new(&answer.errmsg, 80).to_string(),
            });
        }
        Ok(answer)
    }
}

impl ApiError {
    /// Is another attempt later worth it? Unreachable, 5xx, WeChat's "system busy" (-1) and an
    /// invalid token (already fetched again once) are passing; any other errcode (45015: out of
    /// the 48-hour window, 45047: too many messages, 40003: not a follower) will not change.
    pub fn is_passing(&self) -> bool {
        match self {
            ApiError::Unreachable(_) => true,
            ApiError::Status(status) => *status >= 500 || *status == 429,
            ApiError::WeChat { code, .. } => *code == -1 || TOKEN_ERRORS.contains(code),
            ApiError::Malformed(_) => false,
        }
    }
}

impl Default for WechatApi {
    fn default() -> WechatApi {
        WechatApi::new()
    }
}

fn endpoint(base: &Url, path: &str) -> Result<Url, ApiError> {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    base.join(path)
        .map_err(|e| ApiError::Malformed(format!("wechat_api_base: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passing_errors_are_retried_the_rest_dead_lettered() {
        let wechat = |code| ApiError::WeChat {
            code,
            message: String::new(),
        };
        for passing in [
            ApiError::Unreachable("refused".into()),
            ApiError::Status(502),
            ApiError::Status(429),
            wechat(-1),
            wechat(42001),
        ] {
            assert!(passing.is_passing(), "{passing}");
        }
        for lasting in [
            ApiError::Status(404),
            wechat(45015),
            wechat(45047),
            wechat(40003),
            ApiError::Malformed("x".into()),
        ] {
            assert!(!lasting.is_passing(), "{lasting}");
        }
    }
}
