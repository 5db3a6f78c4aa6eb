//! Scripts' arguments as the batches carry them ([`Arg`]: a field's name is not copied, nor
//! the body), and an accept's, built here rather than in Lua: Redis runs one script at a time
//! on its one thread, and its Lua interprets every line each call, while this side runs on the
//! proxy's cores. So the callback's hash comes as its field and value pairs, written by a plain
//! `HSET` in the accept's transaction: an argument passed through a script costs Redis about
//! as much again (each becomes a Lua string, then a Redis string again, then garbage; load
//! bench: 9.0 µs for the hash's `HSET` alone, 14.7 µs through a script that only writes it).
//! The script only decides (the dedupe) and adds what needs Redis's clock.

use bytes::Bytes;

use crate::store::{NewCallback, NewJob, SHAPE_VERSION};

/// One argument of a script: a name spelled in this build, bytes of the callback shared with
/// it (its body), or made for the call.
#[derive(Debug, Clone)]
pub(super) enum Arg {
    Static(&'static str),
    Shared(Bytes),
    Owned(Vec<u8>),
}

impl Arg {
    pub(super) fn number(n: impl ToString) -> Arg {
        Arg::Owned(n.to_string().into_bytes())
    }

    pub(super) fn text(s: &str) -> Arg {
        Arg::Owned(s.as_bytes().to_vec())
    }
}

impl redis::ToRedisArgs for Arg {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg(match self {
            Arg::Static(s) => s.as_bytes(),
            Arg::Shared(b) => b,
            Arg::Owned(v) => v,
        });
    }
}

/// A job the accepting instance sends at once, held in its callback's hash (see
/// lua/prelude_inline.lua), not in a hash and sets of its own.
fn held_in_hash(job: &NewJob) -> bool {
    job.lease.is_some() && !job.ordered
}

/// The accept script's arguments for `callback` (see the top of `lua/accept.lua`); `list`: its
/// targets are to be added to the account's `targets` set.
pub(super) fn accept_args(callback: &NewCallback, list: bool) -> Vec<Arg> {
    let request = &callback.request;
    let flag = if callback.jobs.is_empty() {
        "done"
    } else if callback.jobs.iter().any(held_in_hash) {
        "inline"
    } else {
        ""
    };
    let queued: Vec<_> = callback.jobs.iter().filter(|j| !held_in_hash(j)).collect();
    let listed = if list { callback.jobs.len() } else { 0 };
    let mut args = vec![
        Arg::number(callback.id.0),
        Arg::text(&callback.dedupe_key),
        Arg::number(callback.received_at_ms),
        Arg::text(callback.legacy_dedupe_key.as_deref().unwrap_or("")),
        callback
            .answer_pending_ms
            .map_or(Arg::Static(""), Arg::number),
        Arg::Static(flag),
        Arg::number(listed),
        Arg::number(queued.len()),
    ];
    if list {
        args.extend(callback.jobs.iter().map(|j| Arg::text(&j.target)));
    }
    for job in queued {
        args.push(Arg::number(job.id.0));
        args.push(Arg::text(&job.target));
        args.push(Arg::number(job.lease.unwrap_or(0)));
        let lane = request.lane.as_deref().filter(|_| job.ordered);
        args.push(Arg::text(lane.unwrap_or("")));
    }
    args
}

/// The `HSET` arguments of the callback's hash (`store::shape`) under the account's key `base`:
/// its key, then field and value pairs. Written by a plain `HSET` in the accept's transaction,
/// ahead of the script (which deletes it again if the callback is a resend of one stored
/// already).
pub(super) fn callback_hash(base: &str, callback: &NewCallback) -> Vec<Arg> {
    let request = &callback.request;
    let mut args = Vec::with_capacity(33);
    args.push(Arg::Owned(
        format!("{base}:cb:{}", callback.id.0).into_bytes(),
    ));
    let mut field = |name: Arg, value: Arg| {
        args.push(name);
        args.push(value);
    };
    field(Arg::Static("v"), Arg::number(SHAPE_VERSION));
    field(Arg::Static("dedupe"), Arg::text(&callback.dedupe_key));
    field(
        Arg::Static("received"),
        Arg::number(callback.received_at_ms),
    );
    field(Arg::Static("query"), Arg::text(&request.stored_query()));
    field(Arg::Static("body"), Arg::Shared(request.body.clone()));
    field(Arg::Static("open"), Arg::number(callback.jobs.len()));
    let optional = [
        ("msg_type", callback.msg_type.as_deref()),
        ("event", callback.event.as_deref()),
        ("ctype", request.content_type.as_deref()),
        ("authorizer", request.authorizer.as_deref()),
        ("trace", request.trace.as_deref()),
        ("lane", request.lane.as_deref()),
        ("msg_id", callback.msg_id.as_deref()),
        ("sender", callback.sender.as_deref()),
        ("instance", callback.instance.as_deref()),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            field(Arg::Static(name), Arg::text(value));
        }
    }
    if let Some(headers) = request.stored_headers() {
        field(Arg::Static("headers"), Arg::Owned(headers.into_bytes()));
    }
    let mut routed = String::new();
    for (i, job) in callback.jobs.iter().enumerate() {
        routed.push_str(&job.target);
        routed.push('\n');
        // A job whose id does not follow the callback's in `routed`'s order is named beside
        // it, where the history looks when it is not there (as for a backfill's job).
        if job.id.0 != callback.id.0 + i as i64 + 1 {
            field(
                Arg::Owned(format!("job:{}", job.target).into_bytes()),
                Arg::number(job.id.0),
            );
        }
        if let Some(token) = job.lease.filter(|_| held_in_hash(job)) {
            // Held in the callback's hash (see lua/prelude_inline.lua).
            field(
                Arg::Owned(format!("l:{}", job.target).into_bytes()),
                Arg::number(token),
            );
        }
    }
    field(Arg::Static("routed"), Arg::Owned(routed.into_bytes()));
    args
}
