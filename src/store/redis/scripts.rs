//! The Lua scripts every operation on an account runs as, one file each under `lua/`, compiled
//! in with `include_str!`: each script is read where it is written, with its arguments and its
//! reply described at its top, and the Rust side only names it.
//!
//! Every script begins with `lua/prelude.lua` (the account's key base `K`, Redis's clock,
//! closing a job), then the parts of `lua/prelude_*.lua` it uses (a dead letter's fields,
//! lanes, jobs held in their callback's hash: Lua defines each function given to a script on
//! every call, so each gets only its own), joined at load; the two that walk an account's
//! arrival index (history, and a backfill's arrivals) also `lua/walk.lua`. The window for
//! legacy dedupe keys ([`LEGACY_KEY_WINDOW`]) is written into the accept script's text where it
//! says `LEGACY_WINDOW_MS` (the shape's version comes with the callback's fields: `args.rs`).

use redis::Script;

use crate::store::LEGACY_KEY_WINDOW;

const PRELUDE: &str = include_str!("lua/prelude.lua");
/// A dead letter's fields.
const LETTERS: &str = include_str!("lua/prelude_letters.lua");
/// Lanes: joining, leaving, a lane's first.
const LANES: &str = include_str!("lua/prelude_lanes.lua");
/// Jobs held in their callback's hash (shape version 7).
const INLINE: &str = include_str!("lua/prelude_inline.lua");
/// Walking an account's arrival index.
const WALK: &str = include_str!("lua/walk.lua");

/// What the accept script reads as its legacy window, replaced by the window in milliseconds.
const LEGACY_WINDOW_PLACEHOLDER: &str = "LEGACY_WINDOW_MS";

/// The scripts, hashed once (`EVALSHA`, loaded again by the client on `NOSCRIPT`).
pub(super) struct Scripts {
    /// Stores callbacks and their jobs, or finds their first copy (the dedupe).
    pub(super) accept: Script,
    pub(super) save_answer: Script,
    pub(super) lease: Script,
    pub(super) next_due: Script,
    /// Applies attempts' outcomes under their lease.
    pub(super) record: Script,
    pub(super) release: Script,
    pub(super) renew: Script,
    /// Turns the pending jobs of unrouted targets into dead letters.
    pub(super) bury: Script,
    /// Turns a target's jobs due for too long into dead letters.
    pub(super) bury_waiting: Script,
    pub(super) replay: Script,
    pub(super) purge_dead: Script,
    /// Forgets callbacks with no job left after the retention.
    pub(super) purge_done: Script,
    pub(super) dead_list: Script,
    pub(super) dead_detail: Script,
    pub(super) depths: Script,
    /// A callback with the jobs it still holds.
    pub(super) callback: Script,
    /// Reserves a paced target's next delivery start.
    pub(super) pace: Script,
    /// A page of an account's callbacks by arrival, for a backfill.
    pub(super) arrivals: Script,
    /// Queues stored callbacks for a target not yet queued for.
    pub(super) backfill: Script,
    /// Lets go of lanes an older build left blocked.
    pub(super) lanes: Script,
    /// A page of an account's history, filtered.
    pub(super) history: Script,
    /// Adds an instance's per-minute counts of the console's charts (deployment-wide).
    pub(super) minutes_add: Script,
    /// The per-minute counts of a span of minutes.
    pub(super) minutes: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        let script = |parts: &[&str], body: &str| Script::new(&source(parts, body));
        Scripts {
            accept: script(&[LANES], &accept_body()),
            save_answer: script(&[], include_str!("lua/save_answer.lua")),
            lease: script(&[INLINE], include_str!("lua/lease.lua")),
            next_due: script(&[], include_str!("lua/next_due.lua")),
            record: script(&[LANES], include_str!("lua/record.lua")),
            release: script(&[INLINE], include_str!("lua/release.lua")),
            renew: script(&[], include_str!("lua/renew.lua")),
            bury: script(&[LANES], include_str!("lua/bury.lua")),
            bury_waiting: script(&[LANES], include_str!("lua/bury_waiting.lua")),
            replay: script(&[LANES], include_str!("lua/replay.lua")),
            purge_dead: script(&[], include_str!("lua/purge_dead.lua")),
            purge_done: script(&[], include_str!("lua/purge_done.lua")),
            dead_list: script(&[LETTERS], include_str!("lua/dead_list.lua")),
            dead_detail: script(&[LETTERS], include_str!("lua/dead_detail.lua")),
            depths: script(&[], include_str!("lua/depths.lua")),
            callback: script(&[INLINE], include_str!("lua/callback.lua")),
            pace: script(&[], include_str!("lua/pace.lua")),
            arrivals: script(&[WALK], include_str!("lua/arrivals.lua")),
            backfill: script(&[], include_str!("lua/backfill.lua")),
            lanes: script(&[LANES], include_str!("lua/lanes.lua")),
            history: script(&[WALK], include_str!("lua/history.lua")),
            minutes_add: script(&[], include_str!("lua/minutes_add.lua")),
            minutes: script(&[], include_str!("lua/minutes.lua")),
        }
    }
}

/// A script as Redis runs it: the prelude, the `parts` of it this script uses, then `body`.
fn source(parts: &[&str], body: &str) -> String {
    let mut text = String::from(PRELUDE);
    for part in parts {
        text.push_str(part);
    }
    text.push_str(body);
    text
}

/// The accept script with this build's legacy window written in.
fn accept_body() -> String {
    include_str!("lua/accept.lua").replace(
        LEGACY_WINDOW_PLACEHOLDER,
        &LEGACY_KEY_WINDOW.as_millis().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window is a number in the script Redis runs: a placeholder left in its text would
    /// make `tonumber` nil, and every accept with a legacy key fail.
    #[test]
    fn the_accept_script_has_the_legacy_window_written_in() {
        let accept = source(&[LANES], &accept_body());
        assert!(!accept.contains(LEGACY_WINDOW_PLACEHOLDER), "{accept}");
        let window = format!("tonumber('{}')", LEGACY_KEY_WINDOW.as_millis());
        assert!(accept.contains(&window), "{accept}");
        assert!(accept.starts_with(PRELUDE));
    }
}
