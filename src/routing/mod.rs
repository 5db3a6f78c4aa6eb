//! The routing table: accounts and their targets, built once from the config so that a request
//! needs one hash lookup and no parsing of settings.
//!
//! Each [`Target`] also carries what ingress and delivery share at run time: the bound on
//! requests in flight (a semaphore: the primary relay takes from the same budget), the bell
//! that tells the target's worker new jobs are due in the store, and the handoff through which
//! ingress passes new jobs straight to the worker.

mod allowed;
pub mod replies;
pub mod retry;

pub use allowed::Allowed;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, Semaphore, mpsc};

use crate::config::{
    AUTHORIZER_IN_URL, Config, ConfigError, LATE_REPLIES_TARGET, TargetSettings,
    authorizer_placeholders,
};
use crate::outbound::Origin;
use crate::outbound::wechat_api::ApiAccount;
use crate::privacy::UserIds;
use crate::routing::replies::Owners;
use crate::routing::retry::Breaker;
use crate::store::{Job, TargetKey};
use crate::wechat::resign::Resign;

/// Jobs that can wait in a target's handoff, per request it may have in flight. Past that,
/// ingress stores new jobs as pending and the worker leases them when it catches up.
const HANDOFF_PER_PERMIT: usize = 4;
use crate::wechat::{Credentials, Envelope};

#[derive(Debug)]
pub struct Routes {
    accounts: HashMap<String, Arc<Account>>,
}

#[derive(Debug)]
pub struct Account {
    pub id: Arc<str>,
    pub credentials: Credentials,
    pub targets: Vec<Arc<Target>>,
    /// Which target's answer becomes the passive reply, per route (indexes into `targets`).
    owners: Owners,
    /// Per target, the indexes of the targets that shadow it (`shadow_of`).
    shadows: Vec<Vec<usize>>,
    /// How log lines name this account's users (a keyed hash unless `log.show_user_ids`).
    pub user_ids: UserIds,
    /// `allowed_sources`: only these clients may call (`None`: anyone).
    pub allowed: Option<Allowed>,
    /// `late_replies = "customer_service"`: the internal target whose jobs are late replies,
    /// sent through the customer-service API. Never matched by a callback.
    pub late_replies: Option<Arc<Target>>,
}

#[derive(Debug)]
pub struct Target {
    pub key: TargetKey,
    /// The target's URL; the callback's query string is appended to it.
    pub url: String,
    pub settings: TargetSettings,
    filter: Filter,
    /// Requests in flight to this target, at most `settings.max_concurrency`.
    pub permits: Arc<Semaphore>,
    /// Rung when jobs for this target are stored as due.
    pub wake: Arc<Notify>,
    /// New jobs that ingress stored as already in flight, with the request it holds in memory:
    /// the common case costs no lease through the store and no second copy of the body.
    pub handoff: mpsc::Sender<Job>,
    /// The receiving end of `handoff`, taken by the target's worker when it starts.
    pub inbox: Mutex<Option<mpsc::Receiver<Job>>>,
    /// Open while the target keeps failing: its worker then starts no attempts.
    pub breaker: Breaker,
    /// The target's own credentials (`resign`): its deliveries are re-signed.
    pub resign: Option<Resign>,
    /// A candidate whose answers are compared with this target's, never sent to WeChat.
    pub shadow_of: Option<Arc<str>>,
    /// Set on an account's late-replies target: its jobs are customer-service API calls.
    pub api: Option<Arc<ApiAccount>>,
    /// Where requests go, for a plain `http://` URL without `{authorizer}`: parsed once here.
    origin: Option<Origin>,
}

/// Lower-cased allow lists; `None` lets everything through.
#[derive(Debug, Default)]
struct Filter {
    msg_types: Option<Vec<String>>,
    events: Option<Vec<String>>,
    /// Open platform: only authorization events of these types.
    info_types: Option<Vec<String>>,
    /// Open platform: only callbacks about these authorizers (app ids, exact).
    authorizers: Option<Vec<String>>,
    /// The URL has `{authorizer}`: only callbacks with an authorizer can be sent.
    needs_authorizer: bool,
}

impl Routes {
    pub fn from_config(config: &Config) -> Result<Routes, ConfigError> {
        let mut accounts = HashMap::with_capacity(config.accounts.len());
        for (i, account) in config.accounts.iter().enumerate() {
            let credentials = account.credentials(&format!("accounts[{i}]"))?;
            let allowed = account.allowed_sources(&format!("accounts[{i}]"))?;
            let id: Arc<str> = Arc::from(account.id.as_str());
            let lower = |list: &Option<Vec<String>>| {
                list.as_ref()
                    .map(|l| l.iter().map(|s| s.to_ascii_lowercase()).collect())
            };
            let key = format!("accounts[{i}]");
            let owners = account.owners(&key)?;
            let shadow_of = account.shadows(&key)?;
            let targets: Vec<Arc<Target>> = account
                .targets
                .iter()
                .enumerate()
                .map(|(j, t)| {
                    // A shadow gets what its target gets.
                    let filtered = shadow_of[j].map_or(t, |k| &account.targets[k]);
                    let resign = t
                        .credentials(&format!("accounts[{i}].targets[{j}]"), &credentials)?
                        .map(|(target, own_key)| Resign {
                            account: credentials.clone(),
                            target,
                            own_key,
                        });
                    let settings = t.settings(&config.target_defaults);
                    let needs_authorizer = authorizer_placeholders(t.url.as_str()) > 0;
                    let (handoff, inbox) =
                        mpsc::channel(settings.max_concurrency.max(1) * HANDOFF_PER_PERMIT);
                    Ok(Arc::new(Target {
                        key: TargetKey {
                            account: id.clone(),
                            target: Arc::from(t.name.as_str()),
                        },
                        url: t.url.to_string(),
                        permits: Arc::new(Semaphore::new(settings.max_concurrency)),
                        settings,
                        filter: Filter {
                            msg_types: lower(&filtered.msg_types),
                            events: lower(&filtered.events),
                            info_types: lower(&filtered.info_types),
                            authorizers: filtered.authorizers.clone(),
                            needs_authorizer,
                        },
                        wake: Arc::new(Notify::new()),
                        handoff,
                        inbox: Mutex::new(Some(inbox)),
                        breaker: Breaker::default(),
                        resign,
                        shadow_of: t.shadow_of.as_deref().map(Arc::from),
                        api: None,
                        origin: (!needs_authorizer)
                            .then(|| Origin::parse(t.url.as_str()))
                            .flatten(),
                    }))
                })
                .collect::<Result<_, ConfigError>>()?;
            let late_replies = account
                .late_replies_api(&key, &config.wechat_api_base)?
                .map(|api| {
                    // Sent by the WeChat API client, which picks its own protocol.
                    let settings = TargetSettings {
                        http2: false,
                        pipelining: false,
                        ..config.target_defaults.settings()
                    };
                    let (handoff, inbox) = mpsc::channel(1);
                    Arc::new(Target {
                        key: TargetKey {
                            account: id.clone(),
                            target: Arc::from(LATE_REPLIES_TARGET),
                        },
                        url: api.base.to_string(),
                        permits: Arc::new(Semaphore::new(settings.max_concurrency)),
                        settings,
                        // Matched by no callback: its jobs are made by `rescue`.
                        filter: Filter {
                            msg_types: Some(Vec::new()),
                            events: None,
                            info_types: None,
                            authorizers: None,
                            needs_authorizer: false,
                        },
                        wake: Arc::new(Notify::new()),
                        handoff,
                        inbox: Mutex::new(Some(inbox)),
                        breaker: Breaker::default(),
                        resign: None,
                        shadow_of: None,
                        api: Some(Arc::new(api)),
                        // Its calls go through the WeChat API client, never `exchange`.
                        origin: None,
                    })
                });
            let mut shadows = vec![Vec::new(); targets.len()];
            for (j, of) in shadow_of.iter().enumerate() {
                if let Some(k) = of {
                    shadows[*k].push(j);
                }
            }
            accounts.insert(
                account.id.clone(),
                Arc::new(Account {
                    id,
                    user_ids: UserIds::new(&credentials.token, config.log.show_user_ids),
                    allowed,
                    credentials,
                    targets,
                    owners,
                    shadows,
                    late_replies,
                }),
            );
        }
        Ok(Routes { accounts })
    }

    pub fn account(&self, id: &str) -> Option<&Arc<Account>> {
        self.accounts.get(id)
    }

    /// Every account.
    pub fn accounts(&self) -> impl Iterator<Item = &Arc<Account>> {
        self.accounts.values()
    }

    /// Every target of every account, the internal late-replies targets included.
    pub fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.accounts
            .values()
            .flat_map(|a| a.targets.iter().chain(a.late_replies.iter()))
    }

    /// The key of every target: what the store calls routed.
    pub fn keys(&self) -> Vec<TargetKey> {
        self.targets().map(|t| t.key.clone()).collect()
    }
}

impl Account {
    /// The target whose answer becomes this callback's passive reply, if it gets the callback.
    pub fn owner(&self, envelope: &Envelope, authorizer: Option<&str>) -> Option<&Arc<Target>> {
        let owner = &self.targets[self
            .owners
            .owner(envelope.msg_type.as_deref(), envelope.event.as_deref())?];
        owner.accepts(envelope, authorizer).then_some(owner)
    }

    /// The targets that shadow `target` (`shadow_of`).
    pub fn shadows<'a>(&'a self, target: &Target) -> impl Iterator<Item = &'a Arc<Target>> {
        let index = self.targets.iter().position(|t| t.key == target.key);
        index
            .into_iter()
            .flat_map(|i| self.shadows[i].iter().map(|&s| &self.targets[s]))
    }
}

impl Target {
    /// Where a plain `http://` target's requests for `authorizer` go (see [`Origin`]); `None`
    /// for other URLs.
    pub fn origin_for(&self, authorizer: Option<&str>) -> Option<Cow<'_, Origin>> {
        if self.filter.needs_authorizer {
            return Origin::parse(&self.url_for(authorizer)).map(Cow::Owned);
        }
        self.origin.as_ref().map(Cow::Borrowed)
    }

    /// The URL to send a callback about `authorizer` to: `{authorizer}` replaced by it.
    pub fn url_for(&self, authorizer: Option<&str>) -> Cow<'_, str> {
        match authorizer {
            Some(appid) if self.filter.needs_authorizer => Cow::Owned(
                AUTHORIZER_IN_URL
                    .iter()
                    .fold(self.url.clone(), |url, p| url.replace(p, appid)),
            ),
            _ => Cow::Borrowed(&self.url),
        }
    }

    /// An authorizer to probe this target for: the first it filters on (its URL may need one).
    pub fn probe_authorizer(&self) -> Option<&str> {
        self.filter
            .authorizers
            .as_ref()
            .and_then(|list| list.first())
            .map(String::as_str)
    }

    /// The credentials this target verifies WeChat's requests with: its own (`resign`), else
    /// the account's.
    pub fn signing_credentials<'a>(&'a self, account: &'a Credentials) -> &'a Credentials {
        self.resign.as_ref().map_or(account, |r| &r.target)
    }

    /// Does this target want this callback (about `authorizer`, on an open platform)? `MsgType`,
    /// `Event` and `InfoType` compare ignoring ASCII case; the event filter applies to events
    /// only; `info_types` and `authorizers` let through only callbacks that have one listed.
    pub fn accepts(&self, envelope: &Envelope, authorizer: Option<&str>) -> bool {
        let listed = |list: &[String], value: Option<&str>| {
            value.is_some_and(|v| list.iter().any(|item| item.eq_ignore_ascii_case(v)))
        };
        if self.filter.needs_authorizer && authorizer.is_none() {
            return false;
        }
        if let Some(types) = &self.filter.info_types
            && !listed(types, envelope.info_type.as_deref())
        {
            return false;
        }
        if let Some(appids) = &self.filter.authorizers
            && !authorizer.is_some_and(|a| appids.iter().any(|item| item == a))
        {
            return false;
        }
        if let Some(types) = &self.filter.msg_types
            && !listed(types, envelope.msg_type.as_deref())
        {
            return false;
        }
        if let Some(events) = &self.filter.events
            && envelope.is_msg_type("event")
            && !listed(events, envelope.event.as_deref())
        {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_type_and_event_ignoring_case() {
        let config = Config::from_toml(
            r#"
            [[accounts]]
            id = "a"
            kind = "official_account"
            token = "t"
            [[accounts.targets]]
            name = "all"
            url = "http://127.0.0.1:1/"
            [[accounts.targets]]
            name = "subs"
            url = "http://127.0.0.1:2/"
            msg_types = ["TEXT", "event"]
            events = ["subscribe", "SCAN"]
            "#,
        )
        .unwrap();
        let routes = Routes::from_config(&config).unwrap();
        let account = routes.account("a").unwrap();
        let env = |xml: &str| Envelope::parse(xml.as_bytes()).unwrap();
        let (all, subs) = (&account.targets[0], &account.targets[1]);
        let text = env("<xml><MsgType>text</MsgType></xml>");
        let scan = env("<xml><MsgType>event</MsgType><Event>scan</Event></xml>");
        let click = env("<xml><MsgType>event</MsgType><Event>CLICK</Event></xml>");
        let image = env("<xml><MsgType>image</MsgType></xml>");
        assert!(all.accepts(&click, None) && all.accepts(&image, None));
        assert!(subs.accepts(&text, None) && subs.accepts(&scan, None));
        assert!(!subs.accepts(&click, None) && !subs.accepts(&image, None));
        assert!(account.owner(&text, None).is_none() && account.owner(&click, None).is_none());
    }

    /// `{authorizer}` is replaced in the path (where the URL parser percent-encodes the braces)
    /// and in the query (where it does not); without an authorizer such a target takes nothing.
    #[test]
    fn the_authorizer_fills_its_placeholders_in_path_and_query() {
        let config = Config::from_toml(
            r#"
            [[accounts]]
            id = "op"
            kind = "open_platform"
            token = "t"
            app_id = "wx1"
            encoding_aes_key = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
            [[accounts.targets]]
            name = "svc"
            url = "http://127.0.0.1:1/wx/{authorizer}?app={authorizer}"
            "#,
        )
        .unwrap();
        let routes = Routes::from_config(&config).unwrap();
        let svc = &routes.account("op").unwrap().targets[0];
        assert_eq!(
            svc.url_for(Some("wxA")),
            "http://127.0.0.1:1/wx/wxA?app=wxA"
        );
        let ticket =
            Envelope::parse(b"<xml><InfoType>component_verify_ticket</InfoType></xml>").unwrap();
        assert!(!svc.accepts(&ticket, None));
        assert!(svc.accepts(&ticket, Some("wxA")));
    }
}
