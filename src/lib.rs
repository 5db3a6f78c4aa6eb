//! wechat-fanout: one WeChat callback URL, many downstream services.
//!
//! # Layout
//! Data flows one way: accept → verify → buffer → dedupe → persist → reply → deliver.
//!
//! - [`config`]: defaults → file → environment, validated; names the bad key.
//! - [`wechat`]: the protocol as pure functions (signatures, AES, envelopes, dedupe keys).
//! - [`targets`]: the routing table built from the config: accounts, targets, filters; the
//!   reply owner of each route ([`replies`]); [`authorizer`]: which account an open platform
//!   callback concerns, carried to targets.
//! - [`store`]: the durable queue and dedupe, one trait: SQLite (default, one instance) or Redis
//!   (shared by several instances; leases with tokens, the store's clock).
//! - [`retry`]: which answers are retried, and when; [`downstream`]: the byte-identical replay,
//!   or, for a target with its own credentials, the re-signed one ([`resign`]).
//! - [`leases`]: keeps alive the leases this process holds (on a store where they expire).
//! - [`ingress`]: the WeChat-facing server: verify, buffer, persist, answer in time; only from
//!   allowed sources ([`sources`], with WeChat's callback IPs from [`wechat_api`]).
//! - [`delivery`]: one worker per target: lease due jobs, send, record.
//! - [`rescue`]: a reply owner's late answer sent through the customer-service API, as a job of
//!   the account's internal late-replies target ([`wechat_api`] sends it).
//! - [`shadow`]: candidate targets' answers compared with the owner's, never sent to WeChat.
//! - [`events`]: what happened, for the live console: ingress and delivery publish, never wait.
//! - [`admin`]: health, readiness, metrics, dead letters, shadow differences, on a separate
//!   port; [`metrics`]; [`console`]: the live console in the browser, its login and its event
//!   stream.
//! - [`error`], [`shutdown`], [`telemetry`]: rejection mapping, signals, logging; [`escape`]:
//!   caller text made safe for a log line or an error message; [`privacy`]: users named in logs
//!   only by a keyed hash.
//! - [`cli`], [`admin_client`], [`simulate`], [`probe`]: the commands besides `serve`.
//!
//! `ingress` and `delivery` never import each other: the stored job is their shared vocabulary.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod attempt;
pub mod cidr;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod delivery;
pub mod error;
pub mod escape;
pub mod events;
pub mod http;
pub mod ingress;
pub mod metrics;
pub mod outbound;
pub mod privacy;
pub mod routing;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod wechat;

pub use app::{Listeners, Reload, run, run_with};
