//! Only WeChat's addresses (`allowed_sources`, opt-in per account): which client sent a request,
//! and whether the account takes requests from it.
//!
//! The client is the socket peer, or, when the peer is one of `server.trusted_proxies`, the
//! right-most address of `X-Forwarded-For` that is not itself a trusted proxy (each proxy appends
//! the address it saw, so only the entries to the right of the last untrusted one can be
//! believed; a forged entry on the left changes nothing), else `X-Real-IP`, else the peer. A
//! peer that is not trusted cannot claim anything with these headers.
//!
//! An account's list holds CIDR blocks (or single addresses) and/or `"wechat"`: WeChat's callback
//! IP list, fetched with the account's access token ([`crate::outbound::wechat_api`]) at start and every
//! hour, and kept in the store as a small JSON value ([`crate::store::Store::keep_value`]), so
//! that a start while the API is unreachable still has the last list, on any instance sharing
//! the store. Until some list is known,
//! `"wechat"` admits nobody (fail closed).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cidr::{Cidr, listed};
use crate::outbound::wechat_api::{ApiAccount, WechatApi};
use crate::routing::Allowed;
use crate::store::Store;

/// How often WeChat's callback IP list is fetched again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(3600);
/// After a failed fetch, the next try comes sooner.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// The client that sent a request, as far as it can be believed; `Err` when a trusted proxy's
/// header does not parse.
pub fn client_address(
    peer: IpAddr,
    headers: &http::HeaderMap,
    trusted: &[Cidr],
) -> Result<IpAddr, &'static str> {
    if !listed(trusted, peer) {
        return Ok(peer);
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().map_err(|_| "X-Forwarded-For is not ASCII"))
        .collect::<Result<_, _>>()?;
    let mut hops = Vec::new();
    for value in forwarded {
        for hop in value.split(',') {
            let ip: IpAddr = hop
                .trim()
                .parse()
                .map_err(|_| "X-Forwarded-For holds something that is not an address")?;
            hops.push(ip);
        }
    }
    if let Some(client) = hops.iter().rev().find(|ip| !listed(trusted, **ip)) {
        return Ok(*client);
    }
    if let Some(first) = hops.first() {
        // Every hop is a trusted proxy: the first one is where the request entered.
        return Ok(*first);
    }
    if let Some(real) = headers.get("x-real-ip") {
        return real
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or("X-Real-IP is not an address");
    }
    Ok(peer)
}

/// Why a client was refused (the 403's body and the log line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("source {0} is not in the account's allowed_sources")]
    NotAllowed(IpAddr),
    #[error("source {0} is not in allowed_sources, and WeChat's callback IP list is not known yet")]
    ListUnknown(IpAddr),
    #[error("cannot tell the source: {0}")]
    BadHeader(&'static str),
}

/// The lists every account's check reads: trusted proxies, and WeChat's callback IPs per account.
#[derive(Debug, Default)]
pub struct Sources {
    pub trusted: Vec<Cidr>,
    /// Account id → WeChat's callback IP list, as last fetched (or loaded from the store).
    wechat: ArcSwap<HashMap<String, Arc<Vec<Cidr>>>>,
}

impl Sources {
    pub fn new(trusted: Vec<Cidr>) -> Sources {
        Sources {
            trusted,
            wechat: ArcSwap::default(),
        }
    }

    /// Does `account` take a request from `peer` with these headers?
    pub fn check(
        &self,
        account: &str,
        allowed: &Allowed,
        peer: IpAddr,
        headers: &http::HeaderMap,
    ) -> Result<(), Denied> {
        let client = client_address(peer, headers, &self.trusted).map_err(Denied::BadHeader)?;
        if listed(&allowed.blocks, client) {
            return Ok(());
        }
        if !allowed.wechat {
            return Err(Denied::NotAllowed(client));
        }
        match self.wechat.load().get(account) {
            Some(list) if listed(list, client) => Ok(()),
            Some(_) => Err(Denied::NotAllowed(client)),
            None => Err(Denied::ListUnknown(client)),
        }
    }

    fn set(&self, account: &str, list: Vec<Cidr>) {
        let mut all = HashMap::clone(&self.wechat.load());
        all.insert(account.to_owned(), Arc::new(list));
        self.wechat.store(Arc::new(all));
    }
}

/// The store keeps each account's last list under its own name, written only when that
/// account's fetch succeeds: instances sharing the store never put back an older list of an
/// account whose fetch failed here.
pub fn kept_as(account: &str) -> String {
    format!("wechat-callback-ips:{account}")
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedList {
    ip_list: Vec<String>,
    fetched_at_ms: i64,
}

fn parse_list(ip_list: &[String]) -> Vec<Cidr> {
    ip_list
        .iter()
        .filter_map(|entry| Cidr::parse(entry))
        .collect()
}

/// Puts in force the lists the store kept from the last fetch (on Redis: any instance's), for
/// a start while WeChat's API is unreachable. Awaited before callbacks are served, so the first
/// callback after a start is checked against them.
pub async fn load_kept(sources: &Sources, accounts: &[ApiAccount], store: &dyn Store) {
    for account in accounts {
        let kept = match store.kept_value(&kept_as(&account.id)).await {
            Ok(kept) => kept.and_then(|bytes| serde_json::from_slice::<SavedList>(&bytes).ok()),
            Err(e) => {
                warn!(account = %account.id, error = %e, "could not read the last WeChat callback IP list from the store");
                None
            }
        };
        if let Some(list) = kept {
            sources.set(&account.id, parse_list(&list.ip_list));
            info!(
                account = %account.id,
                addresses = list.ip_list.len(),
                fetched_at_ms = list.fetched_at_ms,
                "WeChat's callback IP list loaded from the last fetch"
            );
        }
    }
}

/// Until `shutdown`: fetches each account's list now and every [`REFRESH_EVERY`] (after a
/// failure, again in a minute; the last list stays in force), and keeps it in the store.
pub async fn refresh_loop(
    sources: Arc<Sources>,
    api: Arc<WechatApi>,
    accounts: Vec<ApiAccount>,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) {
    loop {
        let mut all_ok = true;
        for account in &accounts {
            match api.callback_ips(account).await {
                Ok(ip_list) => {
                    sources.set(&account.id, parse_list(&ip_list));
                    info!(account = %account.id, addresses = ip_list.len(), "WeChat's callback IP list fetched");
                    let list = SavedList {
                        ip_list,
                        fetched_at_ms: crate::clock::now_ms(),
                    };
                    let kept = match serde_json::to_vec(&list) {
                        Ok(bytes) => store
                            .keep_value(&kept_as(&account.id), Bytes::from(bytes))
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = kept {
                        warn!(account = %account.id, error = %e, "could not keep WeChat's callback IP list in the store");
                    }
                }
                Err(e) => {
                    all_ok = false;
                    warn!(account = %account.id, error = %e, "could not fetch WeChat's callback IP list; keeping the last one");
                }
            }
        }
        let wait = if all_ok { REFRESH_EVERY } else { RETRY_AFTER };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop_behind_a_trusted_proxy() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let from = |peer: &str, pairs: &[(&str, &str)]| {
            client_address(ip(peer), &headers(pairs), &trusted)
        };
        let forged = [("x-forwarded-for", "101.226.103.5")];
        assert_eq!(
            from("198.51.100.1", &forged),
            Ok(ip("198.51.100.1")),
            "untrusted peer"
        );
        assert_eq!(from("10.0.0.1", &forged), Ok(ip("101.226.103.5")));
        let chain = [("x-forwarded-for", "101.226.103.5, 198.51.100.9, 10.0.0.2")];
        assert_eq!(from("10.0.0.1", &chain), Ok(ip("198.51.100.9")));
        let split = [
            ("x-forwarded-for", "101.226.103.5"),
            ("x-forwarded-for", "198.51.100.9"),
        ];
        assert_eq!(from("10.0.0.1", &split), Ok(ip("198.51.100.9")));
        assert_eq!(
            from("10.0.0.1", &[("x-real-ip", "101.226.103.6")]),
            Ok(ip("101.226.103.6"))
        );
        assert_eq!(from("10.0.0.1", &[]), Ok(ip("10.0.0.1")));
        assert!(from("10.0.0.1", &[("x-forwarded-for", "a, b")]).is_err());
    }
}
