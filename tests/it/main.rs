//! Integration tests: the whole proxy, as WeChat, the downstream services and an operator see it.
//!
//! One test binary (`cargo test --test it`). Each test starts its own proxy in-process on
//! `127.0.0.1:0` with its own SQLite file ([`support::Proxy`]), fake downstream services that
//! record every byte they get ([`support::Target`]), and callbacks signed and encrypted exactly as
//! WeChat sends them ([`support::Wx`]); the restart, CLI and operations tests run the real binary.
//! Tests are named after what a user would see; each asserts status codes, bytes on the wire and
//! what every target received. Timing is made fast by configuration (20 ms polls, 10 ms backoffs),
//! and every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod admin_guard;
mod cli;
mod console;
mod dedupe;
mod delivery;
mod http2;
mod ingress;
mod instances;
mod lanes;
mod late_replies;
mod listen;
mod open_platform;
mod operate;
mod owners;
mod pace;
mod pay;
mod pipelining;
mod probe;
mod refusals;
mod reply;
mod resign;
mod restart;
mod shadow;
mod sources;
mod store_faults;
mod traces;
mod undeliverable;
