//! Redis only: ids after a clean stop, `maxmemory` and readiness, a killed and restarted
//! server, and the hash an accept writes ahead of its script.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wechat_fanout::store::{Accepted, RedisOptions, RedisStore, Replay, Store, StoreError};

use crate::accept::concurrent_resends_create_one_callback;
use crate::backends::{open_redis, prefix, redis_options, standalone_urls};
use crate::redis_server::RedisServer;
use crate::support::{callback, lease_one};

/// The same on Redis, whose counter every instance shares: an instance gives back the rest of
/// its block only if no other instance reserved a block after it.
#[tokio::test]
async fn redis_ids_go_on_after_a_clean_stop_unless_another_instance_reserved_since() {
    let urls = standalone_urls();
    let prefix = prefix();
    let a = open_redis(urls.clone(), false, &prefix, 30_000).await;
    let first = a.next_ids(2).await.unwrap();
    a.close().await.unwrap();
    let b = open_redis(urls.clone(), false, &prefix, 30_000).await;
    assert_eq!(b.next_ids(1).await.unwrap()[0], first[1] + 1);
    let c = open_redis(urls, false, &prefix, 30_000).await;
    let c_first = c.next_ids(1).await.unwrap()[0];
    // b's block is no longer the latest: b gives nothing back, and c's ids stay c's.
    b.close().await.unwrap();
    let d = open_redis(standalone_urls(), false, &prefix, 30_000).await;
    assert!(d.next_ids(1).await.unwrap()[0] > c_first + 1_000);
}

/// Redis only: at its `maxmemory` (with `noeviction`, as it should run) Redis refuses writes:
/// the store says it is full, in Redis's words, rather than an error this build does not expect.
#[tokio::test]
async fn redis_at_its_maxmemory_is_full() {
    let server = RedisServer::start(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]);
    let store = open_redis(vec![server.url()], false, &prefix(), 30_000).await;
    let body = Bytes::from(vec![b'x'; 64 * 1024]);
    for n in 0.. {
        let mut new = callback(&store, &format!("m{n}"), &[("a", false)]).await;
        new.request = Arc::new(Replay {
            body: body.clone(),
            ..(*new.request).clone()
        });
        match store.accept(new).await {
            Ok(_) => assert!(n < 1_000, "{n} callbacks of 64 KiB stored in 4 MiB"),
            Err(e) => {
                assert!(matches!(e, StoreError::Full(_)), "{e:?}");
                assert!(e.to_string().contains("OOM"), "{e}");
                break;
            }
        }
    }
}

/// Redis only, issue 25: readiness fails once Redis uses `max_memory_used_percent` of its
/// `maxmemory`, while writes still succeed: the load balancer and an alert act before Redis
/// refuses them. `usage` is the fraction an alert reads; without a `maxmemory` there is none.
#[tokio::test]
async fn redis_is_not_ready_before_its_maxmemory_refuses_writes() {
    let unlimited = open_redis(standalone_urls(), false, &prefix(), 30_000).await;
    assert_eq!(unlimited.usage().await.unwrap(), None);
    let server = RedisServer::start(&["--maxmemory", "8mb", "--maxmemory-policy", "noeviction"]);
    let store = RedisStore::open(&RedisOptions {
        max_memory_used_ratio: 0.9,
        ..redis_options(vec![server.url()], false, &prefix(), 30_000)
    })
    .await
    .unwrap();
    store.check_writable().await.unwrap();
    let body = Bytes::from(vec![b'x'; 32 * 1024]);
    let mut n = 0;
    while store.usage().await.unwrap().unwrap() < 0.9 {
        let mut new = callback(&store, &format!("f{n}"), &[("a", false)]).await;
        new.request = Arc::new(Replay {
            body: body.clone(),
            ..(*new.request).clone()
        });
        store.accept(new).await.unwrap();
        n += 1;
        assert!(n < 1_000, "{n} callbacks of 32 KiB stored in 8 MiB");
    }
    let refused = store.check_writable().await.unwrap_err();
    assert!(matches!(refused, StoreError::Full(_)), "{refused:?}");
    assert!(
        refused
            .to_string()
            .contains("store.redis.max_memory_used_percent"),
        "{refused}"
    );
    // Not yet full: a callback is still stored.
    let one_more = callback(&store, "still", &[("a", false)]).await;
    assert!(matches!(
        store.accept(one_more).await,
        Ok(Accepted::New { .. })
    ));
}

/// Redis only: SIGKILLed and started again (AOF `always`), Redis keeps every accepted callback;
/// while it is down the store fails (it never claims a write), and the same store value works
/// again once Redis is back, without being reopened.
#[tokio::test]
async fn redis_killed_and_restarted_keeps_what_was_accepted_and_the_store_recovers() {
    let mut server = RedisServer::start(&[]);
    let store = open_redis(vec![server.url()], false, &prefix(), 30_000).await;
    let kept = callback(&store, "before", &[("a", false)]).await;
    store.accept(kept.clone()).await.unwrap();

    server.signal("KILL");
    let down = store
        .accept(callback(&store, "during", &[("a", false)]).await)
        .await;
    // Down is a fault to retry later, not a refusal or a reply this build does not expect.
    assert!(
        matches!(
            down,
            Err(StoreError::Unavailable(_) | StoreError::Timeout(_))
        ),
        "{down:?}"
    );
    assert!(matches!(
        store.check_writable().await,
        Err(StoreError::Unavailable(_) | StoreError::Timeout(_))
    ));

    server.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.check_writable().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the store did not recover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let job = lease_one(&store, "a").await;
    assert_eq!(job.id, kept.jobs[0].id);
    assert_eq!(&job.request.body[..], b"<xml><MsgId>before</MsgId></xml>");
    assert!(matches!(
        store
            .accept(callback(&store, "during", &[("a", false)]).await)
            .await
            .unwrap(),
        Accepted::New { .. }
    ));
}

/// Redis only: an accept writes its callback's hash ahead of the script, in one transaction.
/// A resend's hash (a copy alone, copies beside their first in one batch or the next, a copy
/// of one whose jobs were leased at accept) is deleted again, so only first copies have one; and after the
/// server lost its scripts (`SCRIPT FLUSH`, as after a restart), the next accept loads the
/// script and is stored once.
#[tokio::test]
async fn a_resend_leaves_no_hash_behind_and_a_lost_script_is_loaded_again() {
    let prefix = prefix();
    let store: Arc<dyn Store> =
        Arc::new(open_redis(standalone_urls(), false, &prefix, 30_000).await);
    let first = store
        .accept(callback(&*store, "r1", &[("a", true), ("b", true)]).await)
        .await
        .unwrap();
    assert!(matches!(first, Accepted::New { .. }), "{first:?}");
    let again = store
        .accept(callback(&*store, "r1", &[("a", true), ("b", true)]).await)
        .await
        .unwrap();
    assert!(matches!(again, Accepted::Duplicate { .. }), "{again:?}");
    concurrent_resends_create_one_callback(store.clone()).await;
    let client = redis::Client::open(standalone_urls()[0].as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let reader = conn.clone();
    let hashes = || {
        let mut conn = reader.clone();
        let pattern = format!("{prefix}:{{main}}:cb:*");
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut conn)
                .await
                .unwrap();
            keys.len()
        }
    };
    assert_eq!(hashes().await, 3, "r1, same and other");
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let next = store
        .accept(callback(&*store, "r2", &[("a", false)]).await)
        .await
        .unwrap();
    assert!(matches!(next, Accepted::New { .. }), "{next:?}");
    let resend = store
        .accept(callback(&*store, "r2", &[("a", false)]).await)
        .await
        .unwrap();
    assert!(matches!(resend, Accepted::Duplicate { .. }), "{resend:?}");
    assert_eq!(hashes().await, 4);
}
