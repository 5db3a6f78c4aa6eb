//! The live feed of a deployment on Redis: the console of any instance shows every instance's
//! callbacks and deliveries.
//!
//! Each event is shown here at once and published on one Redis Pub/Sub channel,
//! `<key_prefix>:events`, tagged with this instance's id; what the channel brings from the other
//! instances is re-broadcast into the local feed. Pub/Sub is fire-and-forget, like the live view
//! itself: an event published while Redis is unreachable, or before an instance subscribed, is
//! not shown there (the targets and dead-letter views read the store, which has everything).
//! Publishing never waits: events go to a bounded queue that one task writes as JSON and sends,
//! and a full queue drops them. On a Cluster, a PUBLISH reaches every node, so one connection to any seed node
//! hears every instance.
//!
//! Behind Sentinels the nodes are the primary they name, asked anew at each connect and every
//! [`RECHECK`]: after a failover both connections move to the new primary (a replica would
//! neither pass this instance's events on to the primary's subscribers nor hear theirs).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use redis::ConnectionInfo;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Event, EventFeed, LocalFeed, Published, Subscription};

/// Events waiting to be published; beyond this they are dropped (the page says nothing is lost
/// for the store, only for the live view).
const OUTBOX: usize = 4096;
/// How long to wait before trying Redis again after it failed.
const RETRY: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a connection checks that its node is still one of the nodes (a failover).
const RECHECK: Duration = Duration::from_secs(2);

/// Where to publish and subscribe, asked anew at each connect: the first that accepts is used.
/// Fixed for a standalone server or a Cluster; behind Sentinels, the primary they name now.
pub type Nodes =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<ConnectionInfo>> + Send>> + Send + Sync>;

/// An event on the channel, `{"from": instance, "event": {…}}`, with the event's JSON as the
/// console's streams send it (written once for both).
fn outgoing(from: u64, event: &Published) -> Vec<u8> {
    let json = event.json();
    let mut text = format!("{{\"from\":{from},\"event\":").into_bytes();
    text.extend_from_slice(&json);
    text.push(b'}');
    text
}

#[derive(Deserialize)]
struct Incoming {
    from: u64,
    event: Event,
}

/// This instance's events and everyone else's, through Redis.
#[derive(Debug)]
pub struct RedisFeed {
    local: LocalFeed,
    /// Shared with the local feed's subscribers: serialised by the publishing task, not by the
    /// publisher (ingress publishes before WeChat has its answer).
    outbox: mpsc::Sender<Arc<Published>>,
}

impl RedisFeed {
    /// Starts publishing to and listening on `channel` at the first of `nodes` that answers,
    /// until `shutdown`.
    pub fn start(
        nodes: Nodes,
        channel: String,
        local: LocalFeed,
        shutdown: CancellationToken,
    ) -> RedisFeed {
        // Tags this instance's events, so they are not shown twice when they come back.
        let instance = rand::random();
        let (outbox, queued) = mpsc::channel(OUTBOX);
        tokio::spawn(publish(
            nodes.clone(),
            channel.clone(),
            instance,
            queued,
            shutdown.clone(),
        ));
        tokio::spawn(listen(nodes, channel, local.clone(), instance, shutdown));
        RedisFeed { local, outbox }
    }
}

impl EventFeed for RedisFeed {
    fn publish(&self, event: Event) {
        let event = Arc::new(Published::new(event));
        // Full: Redis is slow or away; the live view elsewhere misses this one.
        let _ = self.outbox.try_send(event.clone());
        self.local.send(event);
    }

    fn subscribe(&self) -> Subscription {
        self.local.subscribe()
    }

    fn carries_content(&self) -> bool {
        self.local.carries_content()
    }
}

/// A connection to the first node that accepts one, and that node.
async fn connect(nodes: &Nodes) -> Option<(redis::aio::MultiplexedConnection, ConnectionInfo)> {
    for node in nodes().await {
        let Ok(client) = redis::Client::open(node.clone()) else {
            continue;
        };
        if let Ok(Ok(connection)) =
            tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection()).await
        {
            return Some((connection, node));
        }
    }
    None
}

/// Whether `node` is no longer one of the nodes (a failover moved the primary). A lookup that
/// finds no node says nothing: the connection is kept.
async fn moved(nodes: &Nodes, node: &ConnectionInfo) -> bool {
    let now = nodes().await;
    !now.is_empty() && !now.iter().any(|n| n.addr() == node.addr())
}

async fn publish(
    nodes: Nodes,
    channel: String,
    instance: u64,
    mut queued: mpsc::Receiver<Arc<Published>>,
    shutdown: CancellationToken,
) {
    let mut connection = None;
    // One warning per outage, not one per event.
    let mut warned = false;
    let mut checked = Instant::now();
    loop {
        let event = tokio::select! {
            event = queued.recv() => match event {
                Some(event) => event,
                None => return,
            },
            () = shutdown.cancelled() => return,
        };
        let text = outgoing(instance, &event);
        if checked.elapsed() >= RECHECK {
            checked = Instant::now();
            if let Some((_, node)) = &connection
                && moved(&nodes, node).await
            {
                connection = None;
            }
        }
        // A connection that broke is replaced once for this event (Redis restarted, or a
        // failover moved the primary); if that fails too, the event is not shared.
        for retry in [false, true] {
            if connection.is_none() {
                connection = connect(&nodes).await;
            }
            let Some((open, _)) = connection.as_mut() else {
                if !warned {
                    warn!(
                        "cannot reach redis to share console events; other instances' consoles miss this one's until it can"
                    );
                    warned = true;
                }
                break;
            };
            let sent: Result<i64, _> = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(&text)
                .query_async(open)
                .await;
            connection = match sent {
                Ok(_) => {
                    warned = false;
                    break;
                }
                Err(e) => {
                    if retry && !warned {
                        warn!(error = %e, "sharing a console event through redis failed");
                        warned = true;
                    }
                    None
                }
            };
        }
    }
}

async fn listen(
    nodes: Nodes,
    channel: String,
    local: LocalFeed,
    instance: u64,
    shutdown: CancellationToken,
) {
    loop {
        for node in nodes().await {
            let subscribed = async {
                let client = redis::Client::open(node.clone())?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = match tokio::time::timeout(CONNECT_TIMEOUT, subscribed).await {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(e)) => {
                    debug!(error = %e, "cannot subscribe to console events");
                    continue;
                }
                Err(_) => continue,
            };
            let mut messages = pubsub.into_on_message();
            let mut recheck = tokio::time::interval(RECHECK);
            recheck.tick().await;
            loop {
                let message = tokio::select! {
                    message = messages.next() => message,
                    _ = recheck.tick() => {
                        if moved(&nodes, &node).await {
                            break;
                        }
                        continue;
                    }
                    () = shutdown.cancelled() => return,
                };
                // None: the connection is gone; subscribe again.
                let Some(message) = message else { break };
                match serde_json::from_slice::<Incoming>(message.get_payload_bytes()) {
                    Ok(incoming) if incoming.from != instance => local.publish(incoming.event),
                    Ok(_) => {}
                    Err(e) => debug!(error = %e, "an unreadable console event on the channel"),
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_travels_with_its_instance() {
        let event = Event::Rejected {
            at_ms: 1,
            account: "main".into(),
            reason: "bad_signature".into(),
        };
        let text = outgoing(7, &Published::new(event.clone()));
        let back: Incoming = serde_json::from_slice(&text).unwrap_or(Incoming {
            from: 0,
            event: Event::Replayed {
                at_ms: 0,
                job: None,
                count: 0,
            },
        });
        assert_eq!((back.from, back.event), (7, event));
    }
}
