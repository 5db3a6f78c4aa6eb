//! The stored callback: one shape, defined once, that both backends write and read, with a
//! version stored beside it.
//!
//! What is kept of a callback for its deliveries is a [`Replay`]: WeChat's query, content type
//! and body, byte for byte, and what the proxy learnt about the callback when it arrived (the
//! open platform's authorizer, the trace context, WeChat Pay's headers, the lane; beside it, the
//! accepting instance and, on Redis, an arrival index). Each backend keeps
//! every field in a place of its own (a column in SQLite, a field of the callback's hash in
//! Redis) and writes [`SHAPE_VERSION`] beside them (`shape_version`, `v`).
//!
//! # Rolling deploys
//!
//! Instances of two builds share one Redis while a deploy rolls, and an older build may be
//! started again on a SQLite file a newer one wrote (a rollback). Hence the rule for every change
//! of the shape: **a new build reads every shape an older build still running may write, writes
//! fields old builds ignore, and only stops writing an old form one release after it stopped
//! reading it.** Stored callbacks outlive deploys (retries, dead letters kept until purged), so
//! a form is read for as long as stored data may still have it, which can be longer.
//!
//! # Versions
//!
//! * **1** (no version stored): the build before this one. The authorizer rode in front of the
//!   stored query as `#{appid}#`: `#` never starts a query a server receives (it begins a
//!   fragment, which is never sent), so a tagged query is told from WeChat's own.
//! * **2**: the authorizer in a field of its own. For one release the query is still written
//!   tagged too, so that an instance of the build before reads the callback as before. Read: a
//!   callback with a version takes the authorizer from its field and the tag off its query; one
//!   without (written by the build before) has the tag parsed. The next release writes the query
//!   untagged (every build then running reads the field) and still parses the tag of callbacks
//!   without a version.
//! * **3**: the trace context (a W3C `traceparent`) in a field of its own, written when traces
//!   are on. Builds before ignore the field; a callback without it is delivered untraced (its
//!   attempts start traces of their own).
//! * **4**: the request headers that are replayed as received (WeChat Pay's five `Wechatpay-*`
//!   headers), in a field of their own (`headers`), one `name: value` a line; written only
//!   when there are some. Builds before ignore the field, and a callback without it has none.
//!   Only WeChat Pay accounts' callbacks have headers, and a build before this one refuses a
//!   configuration with such an account, so no instance of it has their targets and none of
//!   them leases their jobs during a rolling deploy: the headers are never dropped on the way.
//! * **5**: beside the shape, the targets the callback was queued for (`routed`, one name a
//!   line), written at accept and extended by a backfill, which queues a callback for a target
//!   only if that target is not listed; on Redis, the account's arrival index (`arrivals`, a
//!   sorted set by arrival time) too. Builds before ignore both. A callback an instance of the
//!   build before accepts during a rolling deploy has no `routed` and is not in the index: a
//!   backfill skips it (and says how many it skipped), it never guesses.
//! * **5**, also (one release, one version): the callback's lane (`lane`: a keyed hash of its sender, see `routing::lanes`),
//!   written for accounts with a target of `order = "per_user"`, and per job whether it waits
//!   in that lane. SQLite: the columns `callbacks.lane`, `jobs.lane` and `jobs.lane_seq` (set on
//!   lane-ordered jobs only) and the job state 2, *held* (behind its lane's first open job).
//!   Redis: the callback's field `lane`, the job's field `lane`, the state `h` (held), and per
//!   target and lane a zset `lane:<lane>:<target>` of the lane's open jobs in order, with
//!   `held:<target>` (a zset of the held jobs). A lane's first open job is an ordinary job in
//!   `due`/`lease` (SQLite: state 0 or 1), so every build leases and renews it as before.
//!
//!   **What a build before does with them.** It refuses `order` in its configuration (unknown
//!   key), so no build before makes lane-ordered jobs; but during a rolling deploy (Redis) or
//!   after a rollback (SQLite) it may meet them. Held jobs it never sees: not due, not leased
//!   (SQLite state 2 and Redis state `h` are in none of its queries or sets); a callback shown
//!   by its admin with a held job is an error there. A lane's first job it may lease and
//!   deliver once like any other (its lease token holds it); its outcome does not let the
//!   lane's next job go. On Redis this build heals such a lane when it next touches it (a new
//!   callback in the lane, an outcome in it, a lease of a lane-ordered target looks at a few
//!   lanes): a first job that is gone or dead is taken off, and the next goes. On SQLite, where
//!   the build before owns the file alone, held jobs wait until this build runs again. Hence:
//!   set `order` only once every instance runs this build, and before rolling back, remove it
//!   and let this build empty the lanes (the queue depth counts held jobs as pending).
//! * **5**, also: beside the shape, for the console's history search only, WeChat's `MsgId`
//!   (`msg_id`) and a keyed hash of the sender (`sender`: `privacy::UserHash` of
//!   `FromUserName`, never the user), written for every callback that has them. SQLite: the
//!   columns `callbacks.msg_id` and `callbacks.sender`; Redis: fields of the callback's hash.
//!   Builds before ignore them; a callback they stored is found by the history unfiltered, by
//!   type or time, but never by MsgId or user.
//! * **6**: beside the shape, the instance that accepted the callback (`instance`, its
//!   `server.instance_name`), shown with it in the console and searched by. SQLite: the column
//!   `callbacks.instance`; Redis: a field of the callback's hash. On Redis, a job whose id
//!   does not follow its callback's in `routed`'s order (a backfill's; rarely, an accept's) is
//!   named in the callback's hash (`job:<target>`), where the history finds it (it looks right
//!   after the callback's id first). Builds before ignore both: a callback one of them
//!   accepts has no instance (the console says it does not know), and the history takes a
//!   target of a backfill made by a build before without a job where it looks as delivered.
//! * **7** (Redis only; SQLite writes the number, its tables are as for 6): a job leased at
//!   accept (the accepting instance sends it at once, most jobs) is held in its callback's
//!   hash until its first outcome: the field `l:<target>` holds its lease token, and the
//!   account's zset `inline` lists such callbacks by lease expiry. It gets no hash of its own
//!   (`job:<id>`) and no entry in `lease:<target>`: delivered, it costs its callback's one
//!   `HSET`. Failed, released, or left by a process that died (its lease expired), it moves to
//!   a hash of its own and the sets every build reads. Outcomes name the job's callback and
//!   target, so this build finds either form.
//!
//!   **With a build before during a rolling deploy.** Both builds accept, lease, renew and
//!   record their own jobs; a job either build moved to its own hash and sets, either build
//!   delivers, under its lease token, once. What the build before cannot do is take over a job
//!   held in a hash: if an instance of this build dies while only instances of the build before
//!   run, its held jobs wait (never lost) until an instance of this build runs again and finds
//!   their leases expired. Its console shows such a job as delivered while it is held, and its
//!   queue depth does not count it. Rolling back, drain first: stop this build's instances
//!   gracefully (they release what they hold: it moves to the shared sets).

use std::borrow::Cow;

use bytes::Bytes;

/// The version of the shape this build writes (see the module's doc for each version).
pub const SHAPE_VERSION: u32 = 7;

/// Exactly what WeChat sent and every target gets again, with what the proxy learnt about the
/// callback on arrival: the stored callback's shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// WeChat's raw query string, byte for byte (without `?`).
    pub query: String,
    pub content_type: Option<String>,
    pub body: Bytes,
    /// Open platform: the authorized account (app id) the callback concerns, from the message
    /// URL's path or the authorization event. Targets get it in their URL and a header.
    pub authorizer: Option<String>,
    /// The callback's trace (W3C `traceparent`), when traces were on where it was accepted:
    /// every attempt's span joins it, whenever and wherever it is made.
    pub trace: Option<String>,
    /// Request headers replayed exactly as received (WeChat Pay's `Wechatpay-*`), names in
    /// lower case, values as sent; in the order received.
    pub headers: Vec<(String, String)>,
    /// The callback's lane (`order = "per_user"`): a keyed hash of its sender by the rule of its
    /// account's kind (`routing::lanes`), never the sender itself; set for accounts with a
    /// lane-ordered target. Targets do not get it.
    pub lane: Option<String>,
}

impl Replay {
    /// [`Replay::headers`] as the store keeps them: one `name: value` a line; `None` for none.
    pub(super) fn stored_headers(&self) -> Option<String> {
        if self.headers.is_empty() {
            return None;
        }
        let mut text = String::new();
        for (name, value) in &self.headers {
            text.push_str(name);
            text.push_str(": ");
            text.push_str(value);
            text.push('\n');
        }
        Some(text)
    }

    /// The query as this build stores it: still tagged with the authorizer, for instances of
    /// the build before (version 1), which read it from there.
    pub(super) fn stored_query(&self) -> Cow<'_, str> {
        match &self.authorizer {
            Some(appid) => Cow::Owned(format!("#{appid}#{}", self.query)),
            None => Cow::Borrowed(&self.query),
        }
    }
}

/// A callback's shape as a backend read it, field by field, before it is a [`Replay`].
#[derive(Debug)]
pub(super) struct Stored {
    /// `None` when no version was stored: written by the build before versions (1).
    pub(super) version: Option<u32>,
    /// The query as stored: tagged with the authorizer by version 1, and by 2 for its sake.
    pub(super) query: String,
    /// The authorizer's own field (version 2 on).
    pub(super) authorizer: Option<String>,
    pub(super) content_type: Option<String>,
    pub(super) body: Bytes,
    /// The trace context's own field (version 3 on).
    pub(super) trace: Option<String>,
    /// The replayed headers' own field (version 4 on), as [`Replay::stored_headers`] writes it.
    pub(super) headers: Option<String>,
    /// The lane's own field (version 5 on).
    pub(super) lane: Option<String>,
}

impl Stored {
    /// The callback as every version is read: WeChat's query, untagged, and the authorizer.
    pub(super) fn into_replay(self) -> Replay {
        let Stored {
            version,
            mut query,
            authorizer,
            content_type,
            body,
            trace,
            headers,
            lane,
        } = self;
        let authorizer = match version {
            // Its own field says; the tag written beside it for version 1 comes off.
            Some(_) => {
                if let Some(tag) = authorizer.as_deref().and_then(|a| tag_len(&query, a)) {
                    query.replace_range(..tag, "");
                }
                authorizer
            }
            None => match split_tag(&query) {
                Some((appid, tag)) => {
                    let appid = appid.to_owned();
                    query.replace_range(..tag, "");
                    Some(appid)
                }
                None => None,
            },
        };
        Replay {
            query,
            content_type,
            body,
            authorizer,
            trace,
            headers: headers.as_deref().map(read_headers).unwrap_or_default(),
            lane,
        }
    }
}

/// The targets of a stored `routed` field (one name a line), as [`routed_field`] writes them.
pub(crate) fn read_routed(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A `routed` field: the targets' names, one a line (a name has no control characters).
pub(crate) fn routed_field<'a>(targets: impl IntoIterator<Item = &'a str>) -> String {
    let mut field = String::new();
    for target in targets {
        field.push_str(target);
        field.push('\n');
    }
    field
}

/// The headers of a stored `headers` field; a line without `: ` (never written) is skipped.
pub(super) fn read_headers(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// The length of the tag `#{appid}#` that `stored` starts with, if it does.
fn tag_len(stored: &str, appid: &str) -> Option<usize> {
    let rest = stored.strip_prefix('#')?.strip_prefix(appid)?;
    rest.starts_with('#').then_some(appid.len() + 2)
}

/// The authorizer a stored query is tagged with and the tag's length, if it is tagged.
fn split_tag(stored: &str) -> Option<(&str, usize)> {
    let (appid, _) = stored.strip_prefix('#')?.split_once('#')?;
    Some((appid, appid.len() + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUERY: &str = "signature=a&timestamp=1&nonce=2&encrypt_type=aes&msg_signature=b";

    fn replay(authorizer: Option<&str>) -> Replay {
        Replay {
            query: QUERY.to_owned(),
            content_type: Some("text/xml".into()),
            body: Bytes::from_static(b"<xml/>"),
            authorizer: authorizer.map(str::to_owned),
            trace: None,
            headers: Vec::new(),
            lane: None,
        }
    }

    /// Read back as this build writes it (version, field and tagged query), or as the build
    /// before wrote it (no version, no field): the same callback.
    fn stored(replay: &Replay, version: Option<u32>) -> Stored {
        Stored {
            version,
            query: replay.stored_query().into_owned(),
            authorizer: version.and(replay.authorizer.clone()),
            content_type: replay.content_type.clone(),
            body: replay.body.clone(),
            trace: None,
            headers: version.and(replay.stored_headers()),
            lane: version.and(replay.lane.clone()),
        }
    }

    /// Was `wechat::authorizer`'s `a_tag_comes_off_exactly`: the tag, now the store's way of
    /// writing a shape for the build before, comes off exactly, whichever version reads it.
    #[test]
    fn a_tag_comes_off_exactly() {
        for authorizer in [Some("wxabc"), None] {
            let original = replay(authorizer);
            for version in [Some(SHAPE_VERSION), None] {
                assert_eq!(
                    stored(&original, version).into_replay(),
                    original,
                    "{version:?}"
                );
            }
        }
        assert_eq!(
            replay(Some("wxabc")).stored_query(),
            format!("#wxabc#{QUERY}")
        );
        assert_eq!(replay(None).stored_query(), QUERY);
        let empty = Stored {
            version: None,
            query: String::new(),
            authorizer: None,
            content_type: None,
            body: Bytes::new(),
            trace: None,
            headers: None,
            lane: None,
        };
        assert_eq!(empty.into_replay(), Replay::default());
    }

    /// With a version, the field is what counts: a query that merely starts like a tag of
    /// another authorizer (never written so, but never misread either) keeps it.
    #[test]
    fn with_a_version_the_field_decides_and_only_its_own_tag_comes_off() {
        let read = Stored {
            version: Some(SHAPE_VERSION),
            query: format!("#wxother#{QUERY}"),
            authorizer: Some("wxabc".into()),
            content_type: None,
            body: Bytes::new(),
            trace: None,
            headers: None,
            lane: None,
        }
        .into_replay();
        assert_eq!(read.authorizer.as_deref(), Some("wxabc"));
        assert_eq!(read.query, format!("#wxother#{QUERY}"));
        let untagged = Stored {
            version: Some(SHAPE_VERSION),
            query: QUERY.to_owned(),
            authorizer: Some("wxabc".into()),
            content_type: None,
            body: Bytes::new(),
            trace: None,
            headers: None,
            lane: None,
        }
        .into_replay();
        assert_eq!(
            (untagged.authorizer.as_deref(), &*untagged.query),
            (Some("wxabc"), QUERY)
        );
    }

    /// Version 4: WeChat Pay's headers come back exactly, in their order; a callback written
    /// before (no field) has none.
    #[test]
    fn headers_come_back_as_received() {
        let mut original = replay(None);
        original.headers = vec![
            ("wechatpay-serial".into(), "PUB_KEY_ID_0114".into()),
            ("wechatpay-signature".into(), "a+b/c==".into()),
            ("wechatpay-nonce".into(), "n: with a colon".into()),
        ];
        let read = stored(&original, Some(SHAPE_VERSION)).into_replay();
        assert_eq!(read, original);
        let before = stored(&original, Some(3)).into_replay();
        assert_eq!(
            before.headers.len(),
            3,
            "the field is read whatever the version"
        );
        assert!(stored(&original, None).into_replay().headers.is_empty());
        assert_eq!(replay(None).stored_headers(), None);
    }
}
