//! The accept script's arguments for one callback, built here rather than in Lua: Redis runs
//! one script at a time on its one thread, and its Lua interprets every line each call (about
//! a third of its work per callback, callgrind says), while this side runs on the proxy's
//! cores. So the callback's hash comes as its field and value pairs, ready to be written as
//! they are, and the script only decides (the dedupe) and adds what needs Redis's clock.

use crate::store::{NewCallback, SHAPE_VERSION};

/// The accept script's arguments for `callback` (see the top of `lua/accept.lua`); `list`: its
/// targets are to be added to the account's `targets` set.
pub(super) fn accept_args(callback: &NewCallback, list: bool) -> Vec<Vec<u8>> {
    let request = &callback.request;
    let text = |s: &str| s.as_bytes().to_vec();
    let number = |n: i64| n.to_string().into_bytes();
    let inline = |job: &crate::store::NewJob| job.lease.is_some() && !job.ordered;
    let flag = if callback.jobs.is_empty() {
        "done"
    } else if callback.jobs.iter().any(inline) {
        "inline"
    } else {
        ""
    };
    let queued: Vec<_> = callback.jobs.iter().filter(|j| !inline(j)).collect();
    let mut args = vec![
        number(callback.id.0),
        text(&callback.dedupe_key),
        number(callback.received_at_ms),
        text(callback.legacy_dedupe_key.as_deref().unwrap_or("")),
        callback
            .answer_pending_ms
            .map_or(Vec::new(), |ms| ms.to_string().into_bytes()),
        text(flag),
        number(if list { callback.jobs.len() as i64 } else { 0 }),
        number(queued.len() as i64),
    ];
    if list {
        args.extend(callback.jobs.iter().map(|j| text(&j.target)));
    }
    for job in queued {
        args.push(number(job.id.0));
        args.push(text(&job.target));
        args.push(job.lease.unwrap_or(0).to_string().into_bytes());
        let lane = request.lane.as_deref().filter(|_| job.ordered);
        args.push(text(lane.unwrap_or("")));
    }
    // The callback's hash (`store::shape`), field and value pairs, after their count.
    let at = args.len();
    args.push(Vec::new());
    let mut field = |name: &str, value: Vec<u8>| {
        args.push(text(name));
        args.push(value);
    };
    field("v", number(i64::from(SHAPE_VERSION)));
    field("dedupe", text(&callback.dedupe_key));
    field("received", number(callback.received_at_ms));
    field("query", text(&request.stored_query()));
    field("body", request.body.to_vec());
    field("open", number(callback.jobs.len() as i64));
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
            field(name, text(value));
        }
    }
    if let Some(headers) = request.stored_headers() {
        field("headers", text(&headers));
    }
    let mut routed = String::new();
    for (i, job) in callback.jobs.iter().enumerate() {
        routed.push_str(&job.target);
        routed.push('\n');
        // A job whose id does not follow the callback's in `routed`'s order is named beside
        // it, where the history looks when it is not there (as for a backfill's job).
        if job.id.0 != callback.id.0 + i as i64 + 1 {
            field(&format!("job:{}", job.target), number(job.id.0));
        }
        if let Some(token) = job.lease.filter(|_| inline(job)) {
            // Held in the callback's hash (see lua/prelude.lua).
            field(&format!("l:{}", job.target), token.to_string().into_bytes());
        }
    }
    field("routed", routed.into_bytes());
    let count = args.len() - at - 1;
    args[at] = number(count as i64);
    args
}
