//! The live feed of a deployment on Redis: the console of any instance shows every instance's
//! callbacks and deliveries.
//!
//! Each event is shown here at once and published on one Redis Pub/Sub channel,
//! `<key_prefix>:events`, tagged with this instance's id, with the others that come within
//! 10 ms (up to 64 a message, a line each: one PUBLISH instead of four per callback); what the
//! channel brings from the other instances is re-broadcast into the local feed. During a rolling
//! deploy a build before reads a message of one event only: on its console, the events of this
//! build's instances that came in company are missing until it is replaced. An event published while Redis is unreachable,
//! or dropped from a full queue, is not shown on the other instances' consoles: the live view is
//! fire-and-forget (the targets and dead-letter views read the store, which has everything).
//! The link itself, and how it follows a failover, is [`super::pubsub`].

use std::sync::Arc;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::pubsub::{Link, Nodes, Outgoing};
use super::{Event, EventFeed, LocalFeed, Published, Subscription};

/// An event on its way to the channel, from this instance.
#[derive(Debug)]
struct Tagged {
    from: u64,
    event: Arc<Published>,
}

impl Outgoing for Tagged {
    /// JSON holds no raw newline: several events go in one PUBLISH.
    const JOINED: bool = true;

    /// `{"from": instance, "event": {…}}`, with the event's JSON as the console's streams send
    /// it (written once for both).
    fn into_bytes(self) -> Vec<u8> {
        outgoing(self.from, &self.event)
    }
}

fn outgoing(from: u64, event: &Published) -> Vec<u8> {
    let json = event.json();
    let mut text = own_prefix(from);
    text.extend_from_slice(b"\"event\":");
    text.extend_from_slice(&json);
    text.push(b'}');
    text
}

/// How the events of instance `from` begin on the channel (the comma ends the number).
fn own_prefix(from: u64) -> Vec<u8> {
    format!("{{\"from\":{from},").into_bytes()
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
    link: Link<Tagged>,
    channel: Arc<str>,
    /// Tags this instance's events, so they are not shown twice when they come back.
    instance: u64,
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
        let instance = rand::random();
        let heard = {
            let local = local.clone();
            // This instance's own events come back first of all: told by how `outgoing` begins,
            // they are not parsed; nor is anything while no console here watches.
            let own = own_prefix(instance);
            Arc::new(move |_: &str, payload: &[u8]| {
                if !local.watched() {
                    return;
                }
                // Several events to a message, a line each (one, from a build before).
                for line in payload.split(|b| *b == b'\n') {
                    if line.starts_with(&own) {
                        continue;
                    }
                    match serde_json::from_slice::<Incoming>(line) {
                        Ok(incoming) if incoming.from != instance => local.publish(incoming.event),
                        Ok(_) => {}
                        Err(e) => debug!(error = %e, "an unreadable console event on the channel"),
                    }
                }
            })
        };
        let link = Link::start(
            nodes,
            vec![channel.clone()],
            heard,
            "console events",
            shutdown,
        );
        RedisFeed {
            local,
            link,
            channel: channel.into(),
            instance,
        }
    }
}

impl EventFeed for RedisFeed {
    fn publish(&self, event: Event) {
        let event = Arc::new(Published::new(event));
        // Full: Redis is slow or away; the live view elsewhere misses this one.
        let tagged = Tagged {
            from: self.instance,
            event: event.clone(),
        };
        self.link.publish(&self.channel, tagged);
        self.local.send(event);
    }

    fn subscribe(&self) -> Subscription {
        self.local.subscribe()
    }

    fn carries_content(&self) -> bool {
        self.local.carries_content()
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
        assert_eq!((back.from, back.event), (7, event.clone()));
        // Told apart by their beginning: 7's own, not 71's.
        assert!(text.starts_with(&own_prefix(7)));
        let other = outgoing(71, &Published::new(event));
        assert!(!other.starts_with(&own_prefix(7)));
    }
}
