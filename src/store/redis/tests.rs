use redis::IntoConnectionInfo as _;

use super::settings::{persistence_risk, server_version};
use super::*;

#[test]
fn persistence_risks_name_what_a_crash_can_lose() {
    let settings = |pairs: &[(&'static str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (*k, (*v).to_owned()))
            .collect::<BTreeMap<_, _>>()
    };
    let safe = settings(&[
        ("appendonly", "yes"),
        ("appendfsync", "always"),
        ("maxmemory-policy", "noeviction"),
    ]);
    assert_eq!(persistence_risk(&safe, false), None);
    let everysec = settings(&[("appendonly", "yes"), ("appendfsync", "everysec")]);
    assert!(
        persistence_risk(&everysec, false)
            .unwrap()
            .contains("up to about 1 s")
    );
    assert_eq!(persistence_risk(&everysec, true), None, "WAITAOF covers it");
    let lru = settings(&[
        ("appendonly", "yes"),
        ("appendfsync", "always"),
        ("maxmemory-policy", "allkeys-lru"),
    ]);
    assert!(persistence_risk(&lru, false).unwrap().contains("evict"));
    let none = settings(&[("appendonly", "no"), ("save", "")]);
    assert!(
        persistence_risk(&none, false)
            .unwrap()
            .contains("every stored callback")
    );
}

/// `rediss://` is TLS (the crate's rustls feature is built in): the URL is accepted as a
/// TLS address rather than refused.
#[test]
fn rediss_urls_are_tls_addresses() {
    let info = "rediss://:pw@redis.example:6380/0"
        .into_connection_info()
        .unwrap();
    assert!(
        matches!(info.addr(), redis::ConnectionAddr::TcpTls { host, port: 6380, .. } if host == "redis.example"),
        "{:?}",
        info.addr()
    );
    assert_eq!(info.redis_settings().password(), Some("pw"));
}

#[test]
fn versions_are_read_from_info() {
    assert_eq!(
        server_version("# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:0\r\n"),
        Some((7, 0))
    );
    assert_eq!(server_version("redis_version:7.2.4\n"), Some((7, 2)));
    assert_eq!(server_version("nothing"), None);
}

/// Behind Sentinels, two sets of credentials: the Sentinels are asked with their URL's password
/// (or sentinel_password) and no database; the data nodes they name are reached with TLS as the
/// URLs say, the URL's database, and password_env's password alone (never the Sentinels').
#[test]
fn sentinels_and_the_primary_they_name_are_reached_each_with_their_own_settings() {
    let options = RedisOptions {
        urls: vec![
            "rediss://:sentinel-pw@s1:26379/2".to_owned(),
            "rediss://s2:26379/2".to_owned(),
        ],
        cluster: false,
        sentinel_master: Some("mymaster".to_owned()),
        key_prefix: "p".to_owned(),
        lease_ms: 1000,
        max_memory_used_ratio: 0.95,
        min_replicas: 0,
        min_replicas_timeout_ms: 1000,
        accept_linger_ms: 1,
        password: Some("data-pw".to_owned()),
        sentinel_password: None,
    };
    let sentinels = options.sentinels().unwrap().unwrap();
    assert_eq!(sentinels.master(), "mymaster");
    let nodes = sentinels.nodes();
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0].redis_settings().password(), Some("sentinel-pw"));
    assert_eq!(nodes[1].redis_settings().password(), None);
    assert!(nodes.iter().all(|n| n.redis_settings().db() == 0));
    let data = sentinels.data_node("10.0.0.9".to_owned(), 6380);
    assert!(matches!(
        data.addr(),
        redis::ConnectionAddr::TcpTls { host, port: 6380, .. } if host == "10.0.0.9"
    ));
    assert_eq!(data.redis_settings().password(), Some("data-pw"));
    assert_eq!(data.redis_settings().username(), None);
    assert_eq!(data.redis_settings().db(), 2);

    let overridden = RedisOptions {
        sentinel_password: Some("other".to_owned()),
        password: None,
        urls: vec!["redis://:sentinel-pw@s1:26379".to_owned()],
        ..options
    };
    let sentinels = overridden.sentinels().unwrap().unwrap();
    assert_eq!(
        sentinels.nodes()[0].redis_settings().password(),
        Some("other")
    );
    let data = sentinels.data_node("10.0.0.9".to_owned(), 6380);
    assert!(matches!(data.addr(), redis::ConnectionAddr::Tcp(..)));
    assert_eq!(data.redis_settings().password(), None);
    let plain = RedisOptions {
        sentinel_master: None,
        ..overridden
    };
    assert!(plain.sentinels().unwrap().is_none());
}
