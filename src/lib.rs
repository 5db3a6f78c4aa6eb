//! wechat-fanout: one WeChat callback URL, many downstream services.
//!
//! # Layout
//! Data flows one way: accept → verify → buffer → dedupe → persist → reply → deliver. A folder
//! per layer, listed lowest first; a module imports only from modules above it here, never below
//! (`tests/layout.rs` checks it).
//!
//! - Leaves: [`clock`] (the one clock), [`cidr`] (address blocks), [`error`] (errors as people
//!   read them), [`escape`] (caller text made safe for a log line), [`privacy`] (users named in
//!   logs only by a keyed hash), [`shutdown`] (signals, work in flight), [`metrics`], [`http`]
//!   (the listeners' small answers), [`events`] (what the live console shows), [`telemetry`]
//!   (logging, and OpenTelemetry traces).
//! - [`wechat`]: the protocol as pure functions (signatures, AES, envelopes, replies, dedupe
//!   keys, per-target re-signing): no I/O, no clock, randomness handed in.
//! - [`config`]: what the user wrote: defaults → file → environment, each field's rules.
//! - [`outbound`]: the wire to targets (and WeChat's API): bytes to a URL, and the answer.
//! - [`store`]: the durable queue and dedupe, one trait: SQLite (default, one instance) or
//!   Redis (several instances; leases with tokens, the store's clock).
//! - [`routing`]: the routing table, built once from the config (the only place its rules are
//!   checked): accounts, targets, filters, reply owners, retry rules.
//! - [`attempt`]: one delivery attempt and its record, and the parts every face shares.
//! - [`delivery`]: one worker per target: lease due jobs, send, record.
//! - [`ingress`]: the WeChat-facing server: verify, buffer, persist, answer in time.
//! - [`cmd`]: the commands besides `serve`: they talk to a running proxy over HTTP.
//! - [`admin`]: health, readiness, metrics, dead letters, stored callbacks and the console, on
//!   their own port.
//! - [`app`]: the wiring: run, reload, the background loops.
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
