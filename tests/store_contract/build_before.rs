//! A rolling deploy with the build before: callbacks it stored are delivered by this build,
//! and callbacks this build stores are readable by it, on SQLite and Redis.

use std::time::Duration;

use bytes::Bytes;
use wechat_fanout::config::Synchronous;
use wechat_fanout::store::{
    DeadLetterFilter, Disposition, JobId, JobState, Replay, SHAPE_VERSION, SqliteStore, Store,
};

use crate::backends::{open_redis, prefix};
use crate::support::{AUTHORIZER, authorized_callback, key, lease_one, record, report};

/// The authorizer of the callbacks stored by the build before, in their query's tag.
const OLD_AUTHORIZER: &str = "wxstoredbefore01";
/// WeChat's query of those callbacks, and the query as that build stored it.
const OLD_QUERY: &str = "signature=old&timestamp=1&nonce=2";

fn tagged_old_query() -> String {
    format!("#{OLD_AUTHORIZER}#{OLD_QUERY}")
}

/// The job of a callback the build before stored (its authorizer in the query's tag, no shape
/// version), job id `job`, body `body`, pending for target `a`: this build leases it with the
/// authorizer read from the tag and WeChat's query alone, shows it so as a dead letter, and
/// delivers it once replayed.
async fn a_callback_of_the_build_before_is_delivered(store: &dyn Store, job: JobId, body: &[u8]) {
    let expected = Replay {
        query: OLD_QUERY.into(),
        content_type: Some("text/xml".into()),
        body: Bytes::copy_from_slice(body),
        authorizer: Some(OLD_AUTHORIZER.into()),
        trace: None,
        headers: Vec::new(),
        lane: None,
    };
    let leased = lease_one(store, "a").await;
    assert_eq!((leased.id, &*leased.request), (job, &expected));
    record(store, report(&leased, 1, Disposition::Dead)).await;
    let letter = store.dead_letter(job).await.unwrap().unwrap();
    assert_eq!(letter.request, expected);
    let shown = store
        .callback(letter.letter.callback)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(shown.request, expected);
    let states: Vec<_> = shown.jobs.iter().map(|j| (j.id, j.state)).collect();
    assert_eq!(states, [(job, JobState::Dead)]);
    store
        .replay_dead(Some(job), &DeadLetterFilter::default(), vec![key("a")])
        .await
        .unwrap();
    let again = lease_one(store, "a").await;
    assert_eq!((again.id, &*again.request), (job, &expected));
    record(store, report(&again, 2, Disposition::Delivered)).await;
    assert!(store.queue_depths().await.unwrap().is_empty());
}

/// SQLite only, a rolling deploy's two directions. A file the build before made (its tables,
/// a callback as its INSERT wrote it: the authorizer in the query's tag) opens, and its job is
/// delivered with the authorizer; so is one that build writes into the file after this build
/// added its columns (started again on it: a rollback). And a callback this build stores keeps
/// the tagged query in `query`, where that build reads it.
#[tokio::test]
async fn sqlite_callbacks_of_the_build_before_and_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    // As the build before wrote a callback and its pending job (`?1`: callback id, `?2`: job id).
    let insert_as_before = |conn: &rusqlite::Connection, callback: i64, job: i64, body: &str| {
        conn.execute(
            "INSERT INTO callbacks (id, account, dedupe_key, received_at, msg_type, event, query, content_type, body, answer_due)
             VALUES (?1, 'main', ?3, 1000, 'text', NULL, ?4, 'text/xml', ?5, NULL)",
            rusqlite::params![callback, job, format!("before-{callback}"), tagged_old_query(), body.as_bytes()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO jobs (id, callback_id, account, target, state, attempts, next_at, updated_at, lease)
             VALUES (?2, ?1, 'main', 'a', 0, 0, 1000, 1000, 0)",
            rusqlite::params![callback, job],
        )
        .unwrap();
    };
    {
        let before = rusqlite::Connection::open(&path).unwrap();
        before
            .execute_batch(
                "CREATE TABLE callbacks (id INTEGER PRIMARY KEY, account TEXT NOT NULL,
                    dedupe_key TEXT NOT NULL, received_at INTEGER NOT NULL, msg_type TEXT,
                    event TEXT, query TEXT NOT NULL, content_type TEXT, body BLOB NOT NULL,
                    answer_type TEXT, answer BLOB, answer_due INTEGER,
                    UNIQUE (account, dedupe_key));
                 CREATE TABLE jobs (id INTEGER PRIMARY KEY, callback_id INTEGER NOT NULL,
                    account TEXT NOT NULL, target TEXT NOT NULL, state INTEGER NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0, retry_base INTEGER NOT NULL DEFAULT 0,
                    next_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, last_status INTEGER,
                    last_error TEXT, lease INTEGER NOT NULL DEFAULT 0);",
            )
            .unwrap();
        insert_as_before(&before, 1, 2, "<xml>made before</xml>");
    }
    let store = SqliteStore::open(&path, Synchronous::Full).unwrap();
    a_callback_of_the_build_before_is_delivered(&store, JobId(2), b"<xml>made before</xml>").await;

    let rollback = rusqlite::Connection::open(&path).unwrap();
    rollback.busy_timeout(Duration::from_secs(5)).unwrap();
    insert_as_before(&rollback, 10, 11, "<xml>written by a rollback</xml>");
    a_callback_of_the_build_before_is_delivered(
        &store,
        JobId(11),
        b"<xml>written by a rollback</xml>",
    )
    .await;

    let new = authorized_callback(&store, "for-the-build-before", &[("a", false)]).await;
    store.accept(new.clone()).await.unwrap();
    store.flush().await.unwrap();
    let stored: (String, String, u32) = rollback
        .query_row(
            "SELECT query, authorizer, shape_version FROM callbacks WHERE id = ?1",
            [new.id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap();
    let tagged = format!("#{AUTHORIZER}#{}", new.request.query);
    assert_eq!(stored, (tagged, AUTHORIZER.to_owned(), SHAPE_VERSION));
}

/// A plain connection to the tests' Redis (standalone or Cluster), for what the build before's
/// scripts wrote and read.
enum RawRedis {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl RawRedis {
    async fn connect(urls: &[String], cluster: bool) -> RawRedis {
        if cluster {
            let client = redis::cluster::ClusterClient::new(urls.to_vec()).unwrap();
            RawRedis::Cluster(client.get_async_connection().await.unwrap())
        } else {
            let client = redis::Client::open(urls[0].as_str()).unwrap();
            RawRedis::Single(client.get_multiplexed_async_connection().await.unwrap())
        }
    }

    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> T {
        match self {
            RawRedis::Single(c) => cmd.query_async(c).await.unwrap(),
            RawRedis::Cluster(c) => cmd.query_async(c).await.unwrap(),
        }
    }
}

/// Redis, a rolling deploy's first direction: a callback an instance of the build before
/// stored (the hash fields, due set and sets its accept script wrote: no `v`, no `authorizer`,
/// the authorizer in the query's tag) is leased and delivered by this build with the
/// authorizer.
pub(crate) async fn redis_a_callback_stored_by_the_build_before_is_delivered(
    urls: Vec<String>,
    cluster: bool,
) {
    let prefix = prefix();
    let store = open_redis(urls.clone(), cluster, &prefix, 30_000).await;
    let ids = store.next_ids(2).await.unwrap();
    let (callback, job) = (ids[0], ids[1]);
    let base = format!("{prefix}:{{main}}");
    let body = "<xml>stored before</xml>";
    let mut raw = RawRedis::connect(&urls, cluster).await;
    let () = raw
        .query(
            redis::cmd("SADD")
                .arg(format!("{prefix}:accounts"))
                .arg("main"),
        )
        .await;
    let () = raw
        .query(
            redis::cmd("HSET")
                .arg(format!("{base}:dedupe"))
                .arg("before")
                .arg(callback),
        )
        .await;
    let () = raw
        .query(
            redis::cmd("HSET")
                .arg(format!("{base}:cb:{callback}"))
                .arg(&["dedupe", "before", "received", "1000"])
                .arg("query")
                .arg(tagged_old_query())
                .arg(&[
                    "body", body, "open", "1", "msg_type", "text", "ctype", "text/xml",
                ]),
        )
        .await;
    let () = raw
        .query(
            redis::cmd("HSET")
                .arg(format!("{base}:job:{job}"))
                .arg("cb")
                .arg(callback)
                .arg(&[
                    "target", "a", "state", "p", "lease", "0", "attempts", "0", "base", "0",
                ]),
        )
        .await;
    // Due since it arrived, long ago by Redis's clock.
    let () = raw
        .query(
            redis::cmd("ZADD")
                .arg(format!("{base}:due:a"))
                .arg(1000)
                .arg(job),
        )
        .await;
    let () = raw
        .query(redis::cmd("SADD").arg(format!("{base}:targets")).arg("a"))
        .await;
    a_callback_of_the_build_before_is_delivered(&store, JobId(job), body.as_bytes()).await;
}

/// Redis, a rolling deploy's other direction: a callback this build stores keeps the tagged
/// query in its `query` field, which an instance of the build before reads (its lease script
/// takes `query`, `ctype` and `body`, and it parses the tag), beside the shape's own fields.
pub(crate) async fn redis_the_build_before_reads_a_callback_of_this_build(
    urls: Vec<String>,
    cluster: bool,
) {
    let prefix = prefix();
    let store = open_redis(urls.clone(), cluster, &prefix, 30_000).await;
    let new = authorized_callback(&store, "for-the-build-before", &[("a", false)]).await;
    store.accept(new.clone()).await.unwrap();
    let mut raw = RawRedis::connect(&urls, cluster).await;
    let (query, content_type, body, authorizer, version): (String, String, Vec<u8>, String, u32) =
        raw.query(
            redis::cmd("HMGET")
                .arg(format!("{prefix}:{{main}}:cb:{}", new.id))
                .arg(&["query", "ctype", "body", "authorizer", "v"]),
        )
        .await;
    assert_eq!(query, format!("#{AUTHORIZER}#{}", new.request.query));
    assert_eq!(content_type, "text/xml");
    assert_eq!(body, new.request.body);
    assert_eq!((&*authorizer, version), (AUTHORIZER, SHAPE_VERSION));
}
