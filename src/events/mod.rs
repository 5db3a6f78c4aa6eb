//! What the live console shows, as it happens: callbacks accepted or rejected by ingress, the
//! outcome of every delivery attempt, replays of dead letters.
//!
//! Ingress and delivery publish; the admin listener's event stream subscribes. Publishing never
//! waits: the feed is a bounded broadcast, and a subscriber that falls behind (a stalled
//! browser) loses the oldest events and is told how many, instead of slowing anyone down.
//!
//! [`EventFeed`] is the seam for other sources: [`LocalFeed`] carries this process's events;
//! [`RedisFeed`], for several instances on one Redis, also publishes each event on a Redis
//! channel and re-broadcasts what the other instances publish, so the page on any instance shows
//! every instance's callbacks. Events are serde types for that reason.
//!
//! Each event is written as JSON at most once, however many streams show it: the feed carries a
//! [`Published`] event, whose Server-Sent Events message the first stream that sends it writes
//! for all the others (and none, when nobody watches).
//!
//! An event carries no openid and no message content unless the feed was built to carry them
//! (`admin.show_content`): publishers ask [`EventFeed::carries_content`] before adding them.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub mod pubsub;
mod redis;

pub use self::pubsub::Nodes;
pub use self::redis::RedisFeed;

/// How many events a subscriber may fall behind before it loses the oldest.
pub const BUFFER: usize = 1024;

/// One thing that happened, as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A callback was stored, with one job per matching target; each starts pending.
    Callback(CallbackEvent),
    /// What WeChat got for a stored callback: `relayed` (the primary's answer) or `success`.
    Answered { callback: i64, answer: String },
    /// A resend of a stored callback: answered like its first copy, nothing stored.
    Duplicate {
        at_ms: i64,
        account: String,
        callback: i64,
        msg_type: Option<String>,
        event: Option<String>,
        msg_id: Option<String>,
    },
    /// A request refused before anything was stored.
    Rejected {
        at_ms: i64,
        /// A configured account's id; `-` when the path named none (the caller's text is not
        /// echoed).
        account: String,
        /// The metric label of the rejection (`bad_signature`, `unknown_account`, …).
        reason: String,
    },
    /// The end of one delivery attempt.
    Attempt(AttemptEvent),
    /// Dead letters were made due again by an operator.
    Replayed {
        at_ms: i64,
        /// The one replayed by id, if it was.
        job: Option<i64>,
        count: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackEvent {
    pub at_ms: i64,
    pub account: String,
    pub callback: i64,
    pub msg_type: Option<String>,
    pub event: Option<String>,
    /// `MsgId` when the message has one (it names no person).
    pub msg_id: Option<String>,
    /// One job per matching target, in the order of the account's targets.
    pub jobs: Vec<JobRef>,
    /// The sender's openid: only when the feed carries content.
    pub from: Option<String>,
    /// The message (decrypted for safe mode), as text: only when the feed carries content.
    pub content: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRef {
    pub job: i64,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptEvent {
    pub at_ms: i64,
    pub account: String,
    pub target: String,
    pub callback: i64,
    pub job: i64,
    /// From 1, over the job's whole life.
    pub attempt: u32,
    /// `delivered`, `retrying` or `dead`.
    pub outcome: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    /// When the next attempt is due (Unix ms), for `retrying`.
    pub next_at_ms: Option<i64>,
    pub elapsed_ms: u64,
}

/// An event as the feed carries it to every subscriber: the event, and its message for the
/// console's event streams, written once on first use and shared.
#[derive(Debug)]
pub struct Published {
    event: Event,
    message: OnceLock<Bytes>,
}

impl Published {
    pub fn new(event: Event) -> Published {
        Published {
            event,
            message: OnceLock::new(),
        }
    }

    pub fn event(&self) -> &Event {
        &self.event
    }

    /// `data: <the event as JSON>\n\n`: one Server-Sent Events message, the same bytes for
    /// every stream.
    pub fn message(&self) -> Bytes {
        self.message
            .get_or_init(|| {
                let mut message = b"data: ".to_vec();
                // Serialising these plain structs into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut message, &self.event);
                message.extend_from_slice(b"\n\n");
                Bytes::from(message)
            })
            .clone()
    }

    /// The event as JSON: the message without its `data: ` and final blank line.
    pub fn json(&self) -> Bytes {
        let message = self.message();
        message.slice(b"data: ".len()..message.len() - 2)
    }
}

impl PartialEq for Published {
    fn eq(&self, other: &Published) -> bool {
        self.event == other.event
    }
}

impl Eq for Published {}

/// What a subscriber gets next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Event(Arc<Published>),
    /// It fell behind: this many events were dropped for it.
    Dropped(u64),
    /// The feed is gone (the process is stopping).
    Closed,
}

/// A source of events that publishers feed and the console reads.
pub trait EventFeed: Send + Sync + std::fmt::Debug + 'static {
    /// Hands an event to every subscriber; never waits, and never fails the caller.
    fn publish(&self, event: Event);

    /// A new subscriber, which sees the events published from now on.
    fn subscribe(&self) -> Subscription;

    /// Whether publishers should add openids and message content (`admin.show_content`).
    fn carries_content(&self) -> bool;
}

/// One subscriber's view of a feed: bounded, lossy for the slow.
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<Published>>,
}

impl Subscription {
    /// Wraps a broadcast receiver: a feed that reads events from elsewhere re-broadcasts them
    /// locally and hands out subscriptions of its own channel.
    pub fn new(receiver: broadcast::Receiver<Arc<Published>>) -> Subscription {
        Subscription { receiver }
    }

    pub async fn next(&mut self) -> Received {
        match self.receiver.recv().await {
            Ok(event) => Received::Event(event),
            Err(broadcast::error::RecvError::Lagged(n)) => Received::Dropped(n),
            Err(broadcast::error::RecvError::Closed) => Received::Closed,
        }
    }

    /// What is there already, without waiting: `None` when nothing is.
    pub fn ready(&mut self) -> Option<Received> {
        match self.receiver.try_recv() {
            Ok(event) => Some(Received::Event(event)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Received::Dropped(n)),
            Err(broadcast::error::TryRecvError::Closed) => Some(Received::Closed),
            Err(broadcast::error::TryRecvError::Empty) => None,
        }
    }
}

/// This process's events, in memory.
#[derive(Debug, Clone)]
pub struct LocalFeed {
    sender: broadcast::Sender<Arc<Published>>,
    carries_content: bool,
}

impl LocalFeed {
    pub fn new(buffer: usize, carries_content: bool) -> LocalFeed {
        LocalFeed {
            sender: broadcast::Sender::new(buffer.max(1)),
            carries_content,
        }
    }

    /// Whether anyone subscribes (a console's stream is open): with nobody, an event need not
    /// be made.
    fn watched(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Hands an event that another feed shares (see [`RedisFeed`]) to every subscriber.
    fn send(&self, event: Arc<Published>) {
        // No subscriber is not an error: nobody is watching.
        let _ = self.sender.send(event);
    }
}

impl EventFeed for LocalFeed {
    fn publish(&self, event: Event) {
        self.send(Arc::new(Published::new(event)));
    }

    fn subscribe(&self) -> Subscription {
        Subscription::new(self.sender.subscribe())
    }

    fn carries_content(&self) -> bool {
        self.carries_content
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(n: i64) -> Event {
        Event::Rejected {
            at_ms: n,
            account: "main".into(),
            reason: "bad_signature".into(),
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_how_many_it_lost() {
        let feed = LocalFeed::new(4, false);
        let mut slow = feed.subscribe();
        for n in 0..10 {
            feed.publish(rejected(n));
        }
        assert_eq!(slow.next().await, Received::Dropped(6));
        for n in 6..10 {
            assert_eq!(
                slow.next().await,
                Received::Event(Arc::new(Published::new(rejected(n))))
            );
        }
    }

    /// Publishing with nobody watching is no error, and is not kept for a later subscriber:
    /// it sees the events from when it subscribed on.
    #[tokio::test]
    async fn an_event_published_before_anyone_subscribes_is_not_kept() {
        let feed = LocalFeed::new(4, false);
        feed.publish(rejected(1));
        let mut later = feed.subscribe();
        feed.publish(rejected(2));
        assert_eq!(
            later.next().await,
            Received::Event(Arc::new(Published::new(rejected(2))))
        );
    }

    #[test]
    fn events_are_json_with_a_kind() {
        let text = serde_json::to_string(&rejected(7)).unwrap_or_default();
        assert_eq!(
            text,
            r#"{"kind":"rejected","at_ms":7,"account":"main","reason":"bad_signature"}"#
        );
        let back: Event = serde_json::from_str(&text).unwrap_or_else(|_| rejected(0));
        assert_eq!(back, rejected(7));
        let published = Published::new(rejected(7));
        assert_eq!(published.message(), format!("data: {text}\n\n"));
        assert_eq!(published.json(), text);
    }
}
