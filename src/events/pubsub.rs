//! What the instances of one deployment on Redis tell each other, over Redis Pub/Sub: the
//! console's live feed ([`super::RedisFeed`]) and the `listen` targets' relay between the
//! instance WeChat calls and the one holding the client's WebSocket.
//!
//! A [`Link`] publishes from a bounded queue that one task drains (publishers never wait: a full
//! queue drops the message, and each use says what a lost message costs it), and hands every
//! message on its channels to a callback. Pub/Sub is fire-and-forget: a message published while
//! Redis is unreachable, or before the other side subscribed, is not heard.
//!
//! On a Cluster, a PUBLISH reaches every node, so one connection to any seed node hears every
//! instance. Behind Sentinels the node is the primary they name, asked anew at each connect and
//! every [`RECHECK`]: after a failover both connections move to the new primary (a replica would
//! neither pass messages on to the primary's subscribers nor hear theirs).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use redis::ConnectionInfo;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Messages waiting to be published; beyond this they are dropped.
const OUTBOX: usize = 4096;
/// How long a message that may share its PUBLISH ([`Outgoing::JOINED`]) waits for others…
const LINGER: Duration = Duration::from_millis(10);
/// …and how many share one at most, and how many bytes.
const JOINED_MAX: usize = 64;
const JOINED_MAX_BYTES: usize = 256 * 1024;
/// How long to wait before trying Redis again after it failed.
const RETRY: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a connection checks that its node is still one of the nodes (a failover).
const RECHECK: Duration = Duration::from_secs(2);

/// Where to publish and subscribe, asked anew at each connect: the first that accepts is used.
/// Fixed for a standalone server or a Cluster; behind Sentinels, the primary they name now.
pub type Nodes =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<ConnectionInfo>> + Send>> + Send + Sync>;

/// What a link does with a message heard on one of its channels: (channel, payload).
pub type Heard = Arc<dyn Fn(&str, &[u8]) + Send + Sync>;

/// A message as queued: written to bytes by the publishing task, off the publisher's path
/// (ingress publishes before WeChat has its answer).
pub trait Outgoing: Send + 'static {
    /// Messages of a kind whose bytes never hold a newline may travel several to a PUBLISH, a
    /// line each, after waiting up to [`LINGER`] for company: Redis's cost is per PUBLISH and
    /// per subscriber it reaches, not per byte. Those that hear them split the lines.
    const JOINED: bool = false;

    fn into_bytes(self) -> Vec<u8>;
}

impl Outgoing for Vec<u8> {
    fn into_bytes(self) -> Vec<u8> {
        self
    }
}

/// One instance's end of the link: publishes, and hears its channels until shutdown.
#[derive(Debug)]
pub struct Link<M> {
    outbox: mpsc::Sender<(Arc<str>, M)>,
}

impl<M: Outgoing> Link<M> {
    /// Starts publishing at, and listening on `channels` of, the first of `nodes` that answers,
    /// until `shutdown`. `what` names the messages in warnings ("console events").
    pub fn start(
        nodes: Nodes,
        channels: Vec<String>,
        heard: Heard,
        what: &'static str,
        shutdown: CancellationToken,
    ) -> Link<M> {
        let (outbox, queued) = mpsc::channel(OUTBOX);
        tokio::spawn(publish(nodes.clone(), queued, what, shutdown.clone()));
        tokio::spawn(listen(nodes, channels, heard, what, shutdown));
        Link { outbox }
    }

    /// Queues `payload` for `channel`; false when the queue is full (Redis slow or away) and
    /// the message is dropped.
    pub fn publish(&self, channel: &Arc<str>, message: M) -> bool {
        self.outbox.try_send((channel.clone(), message)).is_ok()
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

async fn publish<M: Outgoing>(
    nodes: Nodes,
    mut queued: mpsc::Receiver<(Arc<str>, M)>,
    what: &'static str,
    shutdown: CancellationToken,
) {
    let mut connection = None;
    // One warning per outage, not one per message.
    let mut warned = false;
    let mut checked = Instant::now();
    // A message taken while joining that was for another channel: the next to send.
    let mut next = None;
    loop {
        let (channel, message) = match next.take() {
            Some(message) => message,
            None => tokio::select! {
                message = queued.recv() => match message {
                    Some(message) => message,
                    None => return,
                },
                () = shutdown.cancelled() => return,
            },
        };
        let mut payload = message.into_bytes();
        if M::JOINED {
            next = join(&mut queued, &channel, &mut payload).await;
        }
        if checked.elapsed() >= RECHECK {
            checked = Instant::now();
            if let Some((_, node)) = &connection
                && moved(&nodes, node).await
            {
                connection = None;
            }
        }
        // A connection that broke is replaced once for this message (Redis restarted, or a
        // failover moved the primary); if that fails too, the message is dropped.
        for retry in [false, true] {
            if connection.is_none() {
                connection = connect(&nodes).await;
            }
            let Some((open, _)) = connection.as_mut() else {
                if !warned {
                    warn!("cannot reach redis to share {what} with the other instances");
                    warned = true;
                }
                break;
            };
            let sent: Result<i64, _> = redis::cmd("PUBLISH")
                .arg(&*channel)
                .arg(&payload)
                .query_async(open)
                .await;
            connection = match sent {
                Ok(_) => {
                    warned = false;
                    break;
                }
                Err(e) => {
                    if retry && !warned {
                        warn!(error = %e, "sharing {what} through redis failed");
                        warned = true;
                    }
                    None
                }
            };
        }
    }
}

/// Adds to `payload` (one message) the messages for `channel` that come within [`LINGER`], a
/// line each, up to [`JOINED_MAX`] of them and [`JOINED_MAX_BYTES`]; the first message for
/// another channel ends it, and is returned.
async fn join<M: Outgoing>(
    queued: &mut mpsc::Receiver<(Arc<str>, M)>,
    channel: &Arc<str>,
    payload: &mut Vec<u8>,
) -> Option<(Arc<str>, M)> {
    let until = tokio::time::Instant::now() + LINGER;
    for _ in 1..JOINED_MAX {
        if payload.len() >= JOINED_MAX_BYTES {
            break;
        }
        let Ok(Some((to, message))) = tokio::time::timeout_at(until, queued.recv()).await else {
            break;
        };
        if to != *channel {
            return Some((to, message));
        }
        payload.push(b'\n');
        payload.extend_from_slice(&message.into_bytes());
    }
    None
}

async fn listen(
    nodes: Nodes,
    channels: Vec<String>,
    heard: Heard,
    what: &'static str,
    shutdown: CancellationToken,
) {
    loop {
        for node in nodes().await {
            let subscribed = async {
                let client = redis::Client::open(node.clone())?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channels).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = match tokio::time::timeout(CONNECT_TIMEOUT, subscribed).await {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(e)) => {
                    debug!(error = %e, "cannot subscribe to {what}");
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
                heard(message.get_channel_name(), message.get_payload_bytes());
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

    struct Line(&'static str);

    impl Outgoing for Line {
        const JOINED: bool = true;

        fn into_bytes(self) -> Vec<u8> {
            self.0.as_bytes().to_vec()
        }
    }

    /// What comes within the linger for the same channel shares the PUBLISH, a line each; the
    /// first message for another channel ends it and is sent next.
    #[tokio::test]
    async fn messages_of_a_channel_share_a_publish_until_another_channel_comes() {
        let (outbox, mut queued) = mpsc::channel(16);
        let (events, other): (Arc<str>, Arc<str>) = (Arc::from("events"), Arc::from("other"));
        for (channel, text) in [
            (&events, "b"),
            (&events, "c"),
            (&other, "x"),
            (&events, "d"),
        ] {
            assert!(outbox.try_send((channel.clone(), Line(text))).is_ok());
        }
        let mut payload = b"a".to_vec();
        let next = join(&mut queued, &events, &mut payload).await;
        assert_eq!(payload, b"a\nb\nc");
        let (channel, message) = next.expect("the other channel's message");
        assert_eq!((&*channel, message.0), ("other", "x"));
        // Alone within the linger: sent alone.
        let mut payload = b"d".to_vec();
        let (_, message) = queued.recv().await.expect("queued");
        assert_eq!(message.0, "d");
        assert!(join(&mut queued, &events, &mut payload).await.is_none());
        assert_eq!(payload, b"d");
    }
}
