//! What the server's settings say, read once at open: what a crash of Redis can lose with its
//! persistence settings (one WARN line if anything), whether new accepts wait with `WAITAOF`,
//! and whether enough replicas are connected for `store.redis.min_replicas` (one WARN line if
//! not). Managed Redis that refuses `CONFIG GET` gets a warning saying so.

use std::collections::BTreeMap;

use tracing::warn;

use super::{RedisStore, value_text};

impl RedisStore {
    /// Reads the persistence settings, logs what a crash can lose, and says whether new
    /// accepts should wait with `WAITAOF`.
    pub(super) async fn check_persistence(&self) -> bool {
        let version = match self
            .ask_server(redis::cmd("INFO").arg("server").clone())
            .await
        {
            Ok(info) => server_version(&value_text(&info)),
            Err(_) => None,
        };
        let has_waitaof = version.is_some_and(|v| v >= (7, 2));
        let mut settings = BTreeMap::new();
        for name in ["appendonly", "appendfsync", "save", "maxmemory-policy"] {
            match self
                .ask_server(redis::cmd("CONFIG").arg("GET").arg(name).clone())
                .await
            {
                Ok(value) => {
                    if let Ok(pairs) = redis::from_redis_value::<Vec<String>>(value)
                        && let [_, value] = &pairs[..]
                    {
                        settings.insert(name, value.clone());
                    }
                }
                Err(e) => {
                    warn!(
                        error = %e,
                        "store: cannot read Redis's persistence settings (CONFIG GET refused?); \
                         make sure it runs with appendonly yes, appendfsync always and \
                         maxmemory-policy noeviction, or accepted callbacks can be lost"
                    );
                    return false;
                }
            }
        }
        let aof = settings.get("appendonly").is_some_and(|v| v == "yes");
        let waitaof = has_waitaof && aof;
        if let Some(risk) = persistence_risk(&settings, waitaof) {
            warn!("store: {risk}");
        }
        waitaof
    }

    /// With `min_replicas`: one WARN line if fewer replicas are connected now (on a Cluster:
    /// to one primary), since every callback is answered 503 until there are enough.
    pub(super) async fn check_replicas(&self) {
        let Some(replicas) = self.replicas else {
            return;
        };
        let connected = match self
            .ask_server(redis::cmd("INFO").arg("replication").clone())
            .await
        {
            Ok(info) => value_text(&info).lines().find_map(|line| {
                line.strip_prefix("connected_slaves:")?
                    .trim()
                    .parse::<u32>()
                    .ok()
            }),
            Err(_) => None,
        };
        if let Some(connected) = connected
            && connected < replicas.count
        {
            warn!(
                connected,
                min_replicas = replicas.count,
                "store: fewer replicas are connected to the redis primary than store.redis.min_replicas \
                 asks for; every callback is answered 503 until there are enough"
            );
        }
    }
}

/// `redis_version:7.2.4` in `INFO server` → (7, 2).
pub(super) fn server_version(info: &str) -> Option<(u32, u32)> {
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))?
        .trim();
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// What a crash (or a full memory) of Redis can lose with these settings, if anything.
pub(super) fn persistence_risk(settings: &BTreeMap<&str, String>, waitaof: bool) -> Option<String> {
    let get = |name: &str| settings.get(name).map(String::as_str).unwrap_or("");
    let mut risks = Vec::new();
    if get("appendonly") != "yes" {
        if get("save").is_empty() {
            risks.push(
                "appendonly no and no snapshots: a restart of Redis loses every stored callback and job"
                    .to_owned(),
            );
        } else {
            risks.push(format!(
                "appendonly no (snapshots only, save \"{}\"): a crash of Redis loses the callbacks accepted since the last snapshot",
                get("save")
            ));
        }
    } else if !waitaof {
        match get("appendfsync") {
            "always" | "" => {}
            "everysec" => risks.push(
                "appendfsync everysec: a crash of the machine running Redis can lose up to about 1 s of accepted callbacks"
                    .to_owned(),
            ),
            other => risks.push(format!(
                "appendfsync {other}: a crash of the machine running Redis can lose the accepted callbacks the OS had not written yet (typically up to 30 s)"
            )),
        }
    }
    let policy = get("maxmemory-policy");
    if !policy.is_empty() && policy != "noeviction" {
        risks.push(format!(
            "maxmemory-policy {policy}: when Redis is full it can evict stored callbacks and jobs; use noeviction"
        ));
    }
    (!risks.is_empty()).then(|| risks.join("; "))
}
