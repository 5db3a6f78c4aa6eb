//! The routing table: accounts and their targets, built once from the config so that a request
//! needs one hash lookup and no parsing of settings.
//!
//! Each [`Target`] also carries what ingress and delivery share at run time: the bound on
//! requests in flight (a semaphore: the primary relay takes from the same budget), the bell
//! that tells the target's worker new jobs are due in the store, and the handoff through which
//! ingress passes new jobs straight to the worker.

mod allowed;
mod build;
mod lanes;
mod pay;
pub mod replies;
pub mod retry;

pub use allowed::Allowed;
pub use build::{build, credentials};
pub use lanes::Lanes;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, Semaphore, mpsc};

use crate::config::{AUTHORIZER_IN_URL, TargetSettings};
use crate::outbound::Origin;
use crate::outbound::signing::WebhookSigner;
use crate::outbound::wechat_api::ApiAccount;
use crate::privacy::{UserHash, UserIds};
use crate::routing::replies::{Owners, Route};
use crate::routing::retry::Breaker;
use crate::store::{Job, Replay, TargetKey};

use crate::wechat::{ApiV3Key, PayKeys, event_type_matches};
use crate::wechat::{
    CallbackQuery, Credentials, Envelope, Notification, PayError, Resign, open_callback,
    out_trade_no,
};

/// Jobs that can wait in a target's handoff, per request it may have in flight. Past that,
/// ingress stores new jobs as pending and the worker leases them when it catches up.
const HANDOFF_PER_PERMIT: usize = 4;

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
    /// The keyed hash of its users the store keeps with each callback (`sender`), always a
    /// hash: what the console's history search by user matches.
    pub user_hash: UserHash,
    /// How its callbacks are put in lanes, when a target of it has `order = "per_user"`:
    /// only then is a callback's lane worked out and stored.
    pub lanes: Option<Lanes>,
    /// `allowed_sources`: only these clients may call (`None`: anyone).
    pub allowed: Option<Allowed>,
    /// What WeChat's API needs to fetch the callback IP list, for `allowed_sources = ["wechat"]`.
    pub sources_api: Option<ApiAccount>,
    /// `late_replies = "customer_service"`: the internal target whose jobs are late replies,
    /// sent through the customer-service API. Never matched by a callback.
    pub late_replies: Option<Arc<Target>>,
    /// A WeChat Pay account (`kind = "wechat_pay"`): its keys; `credentials` are then unused.
    pub pay: Option<Arc<PayAccount>>,
}

/// What a WeChat Pay account checks and reads its notifications with.
#[derive(Debug)]
pub struct PayAccount {
    /// WeChat Pay's public keys and platform certificates' keys, by serial.
    pub keys: PayKeys,
    /// The APIv3 key, when configured: the resource is decrypted for routing and the console.
    pub apiv3_key: Option<ApiV3Key>,
    /// How far `Wechatpay-Timestamp` may be from the local clock.
    pub max_skew_secs: u64,
}

/// A WeChat Pay notification's body as routing reads it ([`PayAccount::open`]).
#[derive(Debug)]
pub struct OpenedNotification {
    pub notification: Notification,
    /// The resource decrypted, with the account's APIv3 key (`None` without one).
    pub resource: Option<Vec<u8>>,
    /// What the filters read: the event type and, from the resource, the order number.
    pub envelope: Envelope,
}

impl PayAccount {
    /// A notification's body read, its resource decrypted where the account has the APIv3 key:
    /// the one reading for ingress, a backfill's routing and the admin's view.
    pub fn open(&self, body: &[u8]) -> Result<OpenedNotification, PayError> {
        let notification = Notification::parse(body)?;
        let resource = match &self.apiv3_key {
            Some(key) => Some(key.decrypt(&notification.resource)?),
            None => None,
        };
        let envelope = notification.envelope(resource.as_deref().and_then(out_trade_no));
        Ok(OpenedNotification {
            notification,
            resource,
            envelope,
        })
    }
}

#[derive(Debug)]
pub struct Target {
    pub key: TargetKey,
    /// The target's URL; the callback's query string is appended to it.
    pub url: String,
    pub settings: TargetSettings,
    filter: Filter,
    /// What ingress and delivery share about this target at run time.
    pub plumbing: Plumbing,
    /// The target's own credentials (`resign`): its deliveries are re-signed.
    pub resign: Option<Resign>,
    /// A candidate whose answers are compared with this target's, never sent to WeChat.
    pub shadow_of: Option<Arc<str>>,
    /// Set on an account's late-replies target: its jobs are customer-service API calls.
    pub api: Option<Arc<ApiAccount>>,
    /// Where requests go, for a plain `http://` URL without `{authorizer}`: parsed once here.
    origin: Option<Origin>,
    /// Reached over WebSockets its clients open (`listen = true`), not at a URL.
    pub listen: Option<Listen>,
    /// `signing_secret_env`: its deliveries are signed by the proxy (Standard Webhooks).
    pub signing: Option<WebhookSigner>,
}

/// What a `listen` target's clients must present, and how long its callbacks wait for one.
pub struct Listen {
    token: String,
    /// `listen_backlog_secs`: due this long with no client connected, a job is a dead letter.
    pub backlog: std::time::Duration,
}

impl std::fmt::Debug for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listen").finish_non_exhaustive()
    }
}

impl Listen {
    pub fn new(token: String, backlog: std::time::Duration) -> Listen {
        Listen { token, backlog }
    }

    /// Whether `presented` is the token, compared in constant time.
    pub fn admits(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        bool::from(self.token.as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// What ingress and delivery share about one target while the proxy runs, made in one place
/// ([`Plumbing::new`]) from its settings.
#[derive(Debug)]
pub struct Plumbing {
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
}

impl Plumbing {
    /// For a target with `max_concurrency` requests in flight at most; its handoff holds
    /// `handoff` jobs, by default [`HANDOFF_PER_PERMIT`] per request.
    pub fn new(max_concurrency: usize, handoff: Option<usize>) -> Plumbing {
        let capacity = handoff.unwrap_or(max_concurrency.max(1) * HANDOFF_PER_PERMIT);
        let (handoff, inbox) = mpsc::channel(capacity.max(1));
        Plumbing {
            permits: Arc::new(Semaphore::new(max_concurrency)),
            wake: Arc::new(Notify::new()),
            handoff,
            inbox: Mutex::new(Some(inbox)),
            breaker: Breaker::default(),
        }
    }
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
    /// Only callbacks from these senders (`FromUserName`, exact).
    users: Option<Vec<String>>,
    /// WeChat Pay: only notifications of these event types (a trailing `*`: a prefix).
    event_types: Option<Vec<String>>,
    /// WeChat Pay: only notifications whose order number starts with one of these.
    out_trade_no_prefixes: Option<Vec<String>>,
}

impl Routes {
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
        let owner = &self.targets[self.owners.owner(
            envelope.msg_type.as_deref(),
            envelope.event.as_deref(),
            envelope.from_user_name.as_deref(),
        )?];
        owner.accepts(envelope, authorizer).then_some(owner)
    }

    /// Whether `target` would get a stored callback (`request`) if it arrived now, by the same
    /// filters as at accept: the request opened again with the account's credentials (its
    /// signature checked, its body decrypted; not its age). `None` when it cannot be opened
    /// (the account's token or key changed since).
    pub fn would_route(&self, target: &Target, request: &Replay) -> Option<bool> {
        let envelope = match &self.pay {
            Some(pay) => pay.open(&request.body).ok()?.envelope,
            None => {
                let query = CallbackQuery::parse(&request.query).ok()?;
                open_callback(&self.credentials, &query, &request.body)
                    .ok()?
                    .envelope
            }
        };
        Some(target.accepts(&envelope, request.authorizer.as_deref()))
    }

    /// The reply routes as configured: each route, the target that owns it, and the sender the
    /// claim is limited to (its `users`), if any; in no order.
    pub fn reply_routes(&self) -> impl Iterator<Item = (&Route, &Arc<Target>, Option<&str>)> {
        (self.owners.entries())
            .filter_map(|(route, i, user)| self.targets.get(i).map(|t| (route, t, user)))
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

    /// The filters that are set, by their keys in the configuration, as the target applies them
    /// (`msg_types`, `events` and `info_types` lower-cased). A shadow's are its target's.
    pub fn filters(&self) -> impl Iterator<Item = (&'static str, &[String])> {
        let f = &self.filter;
        [
            ("msg_types", &f.msg_types),
            ("events", &f.events),
            ("info_types", &f.info_types),
            ("authorizers", &f.authorizers),
            ("users", &f.users),
            ("event_types", &f.event_types),
            ("out_trade_no_prefixes", &f.out_trade_no_prefixes),
        ]
        .into_iter()
        .filter_map(|(key, list)| list.as_deref().map(|list| (key, list)))
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
        if let Some(users) = &self.filter.users
            && !(envelope.from_user_name.as_deref()).is_some_and(|u| users.iter().any(|i| i == u))
        {
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
        if let Some(patterns) = &self.filter.event_types
            && !(envelope.event.as_deref())
                .is_some_and(|e| patterns.iter().any(|p| event_type_matches(p, e)))
        {
            return false;
        }
        if let Some(prefixes) = &self.filter.out_trade_no_prefixes
            && !(envelope.out_trade_no.as_deref())
                .is_some_and(|n| prefixes.iter().any(|p| n.starts_with(p.as_str())))
        {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests;
