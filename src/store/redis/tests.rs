use redis::IntoConnectionInfo as _;

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
