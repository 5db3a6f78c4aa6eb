//! Listen clients connected to other instances of the deployment, reached through Redis
//! Pub/Sub ([`crate::events::pubsub`]).
//!
//! The instance WeChat calls is the one that must answer it, and the reply owner's answer may
//! have to come from a client connected anywhere. So each instance tells the others which
//! listen targets it holds connections for (on `<prefix>:listen`, every [`PRESENCE`] while it
//! holds any, and at once when that changes), and a delivery with no connection here is asked
//! of an instance that holds one, on that instance's own channel `<prefix>:listen:<id>`: it
//! sends the frame down its connection and sends the answer frame back on the asker's channel.
//!
//! The attempt stays the asker's: it holds the job's lease, records the outcome and retries, as
//! for a connection of its own; the holder only carries frames. So nothing is lost when a
//! message is (Pub/Sub forgets what it cannot deliver): the attempt fails at its timeout and
//! the job is retried, by whichever instance holds a connection then. An instance that
//! stopped without saying so is believed for [`FORGET_AFTER`] at most.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::frames::{AnswerFrame, DeliveryFrame, ListenError};
use crate::events::pubsub::{Link, Nodes};

/// How often an instance holding connections says so.
const PRESENCE: Duration = Duration::from_secs(2);
/// How long an instance's word is believed: three missed beats.
const FORGET_AFTER: Duration = Duration::from_secs(6);
/// The answer's time on Redis, both ways, on top of the client's own time.
const RELAY_MARGIN: Duration = Duration::from_secs(1);

/// What instances say to each other, as JSON.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Wire {
    /// The targets `from` holds connections for, and how many: all of them, each time.
    Presence { from: u64, targets: Vec<Held> },
    /// Send `frame` down a connection of `account`/`target`; answer on `from`'s channel.
    Ask {
        from: u64,
        ask: u64,
        account: String,
        target: String,
        timeout_ms: u64,
        frame: DeliveryFrame,
    },
    /// What became of ask `ask`.
    Reply {
        ask: u64,
        answer: Result<AnswerFrame, ListenError>,
    },
}

/// A target with connections on an instance: account, target, how many.
pub(super) type Held = (String, String, usize);

/// A delivery over a connection of this instance's: (account, target, frame, timeout).
pub(super) type DeliverHere = Arc<
    dyn Fn(
            String,
            String,
            DeliveryFrame,
            Duration,
        ) -> Pin<Box<dyn Future<Output = Result<AnswerFrame, ListenError>> + Send>>
        + Send
        + Sync,
>;

/// The targets this instance holds connections for now.
pub(super) type HeldHere = Arc<dyn Fn() -> Vec<Held> + Send + Sync>;

/// What another instance last said it holds.
#[derive(Debug)]
struct Heard {
    at: Instant,
    targets: Vec<Held>,
}

type Asked = HashMap<u64, oneshot::Sender<Result<AnswerFrame, ListenError>>>;

/// This instance's side of the relay.
#[derive(Clone)]
pub(super) struct Remote(Arc<State>);

struct State {
    /// Set once at start (the link's listener needs the state first).
    link: OnceLock<Link<Vec<u8>>>,
    /// This instance's id on the channels: random per start.
    me: u64,
    prefix: String,
    presence: Arc<str>,
    here: DeliverHere,
    others: Mutex<HashMap<u64, Heard>>,
    asked: Mutex<Asked>,
    next_ask: AtomicU64,
    turn: AtomicUsize,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("me", &self.0.me)
            .finish_non_exhaustive()
    }
}

/// An ask waiting for its reply; forgotten when dropped (answered, timed out, or cancelled).
struct Waiting<'a> {
    state: &'a State,
    ask: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.state.lock_asked().remove(&self.ask);
    }
}

impl Remote {
    /// Joins the deployment through the Redis at `nodes`, on channels under
    /// `<key_prefix>:listen`, until `shutdown`: asks from other instances are delivered with
    /// `here`, and what `held` says is told to them every [`PRESENCE`] and when `changed` rings.
    pub(super) fn start(
        nodes: Nodes,
        key_prefix: &str,
        here: DeliverHere,
        held: HeldHere,
        changed: Arc<Notify>,
        shutdown: CancellationToken,
    ) -> Remote {
        let me: u64 = rand::random();
        let prefix = format!("{key_prefix}:listen");
        let state = Arc::new(State {
            link: OnceLock::new(),
            me,
            presence: prefix.as_str().into(),
            prefix,
            here,
            others: Mutex::default(),
            asked: Mutex::default(),
            next_ask: AtomicU64::new(1),
            turn: AtomicUsize::new(0),
        });
        let heard = {
            let state = Arc::downgrade(&state);
            Arc::new(move |_: &str, payload: &[u8]| {
                if let Some(state) = state.upgrade() {
                    state.heard(payload);
                }
            })
        };
        let channels = vec![state.prefix.clone(), format!("{}:{me}", state.prefix)];
        let link = Link::start(nodes, channels, heard, "listen relays", shutdown.clone());
        let _ = state.link.set(link);
        tokio::spawn(announce(Arc::downgrade(&state), held, changed, shutdown));
        Remote(state)
    }

    /// How many connections other instances hold for `account`/`target`.
    pub(super) fn connections(&self, account: &str, target: &str) -> usize {
        self.0.holders(account, target).1
    }

    /// Sends `frame` down a connection another instance holds (one of them, in turn), and
    /// waits for the answer it sends back.
    pub(super) async fn ask(
        &self,
        account: &str,
        target: &str,
        frame: &DeliveryFrame,
        timeout: Duration,
    ) -> Result<AnswerFrame, ListenError> {
        let state = &*self.0;
        let (holders, _) = state.holders(account, target);
        if holders.is_empty() {
            return Err(ListenError::NotConnected);
        }
        let holder = holders[state.turn.fetch_add(1, Ordering::Relaxed) % holders.len()];
        let ask = state.next_ask.fetch_add(1, Ordering::Relaxed);
        let (reply, replied) = oneshot::channel();
        state.lock_asked().insert(ask, reply);
        let _waiting = Waiting { state, ask };
        let sent = state.send(
            holder,
            &Wire::Ask {
                from: state.me,
                ask,
                account: account.to_owned(),
                target: target.to_owned(),
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                frame: frame.clone(),
            },
        );
        if !sent {
            return Err(ListenError::Busy);
        }
        match tokio::time::timeout(timeout + RELAY_MARGIN, replied).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) | Err(_) => Err(ListenError::Timeout(timeout)),
        }
    }
}

impl State {
    fn lock_others(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Heard>> {
        self.others.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_asked(&self) -> std::sync::MutexGuard<'_, Asked> {
        self.asked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A message from the channels.
    fn heard(self: Arc<Self>, payload: &[u8]) {
        let wire = match serde_json::from_slice::<Wire>(payload) {
            Ok(wire) => wire,
            Err(e) => {
                debug!(error = %e, "an unreadable listen relay message on the channel");
                return;
            }
        };
        match wire {
            Wire::Presence { from, targets } if from != self.me => {
                let mut others = self.lock_others();
                if targets.is_empty() {
                    others.remove(&from);
                } else {
                    let at = Instant::now();
                    others.insert(from, Heard { at, targets });
                }
            }
            Wire::Presence { .. } => {}
            Wire::Ask {
                from,
                ask,
                account,
                target,
                timeout_ms,
                frame,
            } => {
                let timeout = Duration::from_millis(timeout_ms);
                let delivered = (self.here)(account, target, frame, timeout);
                tokio::spawn(async move {
                    let answer = delivered.await;
                    self.send(from, &Wire::Reply { ask, answer });
                });
            }
            Wire::Reply { ask, answer } => {
                if let Some(waiting) = self.lock_asked().remove(&ask) {
                    let _ = waiting.send(answer);
                }
            }
        }
    }

    /// The other instances holding connections for `account`/`target`, as lately heard, and
    /// how many they hold together.
    fn holders(&self, account: &str, target: &str) -> (Vec<u64>, usize) {
        let others = self.lock_others();
        let mut holders = Vec::new();
        let mut count = 0;
        for (instance, heard) in others.iter() {
            if heard.at.elapsed() > FORGET_AFTER {
                continue;
            }
            let held = (heard.targets.iter())
                .find(|(a, t, _)| a == account && t == target)
                .map_or(0, |(_, _, n)| *n);
            if held > 0 {
                holders.push(*instance);
                count += held;
            }
        }
        holders.sort_unstable();
        (holders, count)
    }

    /// Queues `wire` for instance `to`'s channel; false when the link's queue is full.
    fn send(&self, to: u64, wire: &Wire) -> bool {
        let channel: Arc<str> = format!("{}:{to}", self.prefix).into();
        self.publish(&channel, wire)
    }

    fn publish(&self, channel: &Arc<str>, wire: &Wire) -> bool {
        let Some(link) = self.link.get() else {
            return false;
        };
        match serde_json::to_vec(wire) {
            Ok(payload) => link.publish(channel, payload),
            Err(e) => {
                warn!(error = %e, "a listen relay message could not be written");
                false
            }
        }
    }
}

/// Tells the other instances which targets this one holds connections for: every
/// [`PRESENCE`] while it holds any, and at once when that changes (a last, empty word when the
/// last one closes).
async fn announce(
    state: std::sync::Weak<State>,
    held: HeldHere,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut beat = tokio::time::interval(PRESENCE);
    let mut said = Vec::new();
    loop {
        tokio::select! {
            _ = beat.tick() => {}
            () = changed.notified() => {}
            () = shutdown.cancelled() => return,
        }
        let Some(state) = state.upgrade() else { return };
        let targets = held();
        if targets.is_empty() && said.is_empty() {
            continue;
        }
        said.clone_from(&targets);
        let wire = Wire::Presence {
            from: state.me,
            targets,
        };
        state.publish(&state.presence, &wire);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_travels_with_its_answer_or_its_error() {
        let answer = AnswerFrame::new(7, 200, vec![], b"<xml/>");
        for answer in [
            Ok(answer),
            Err(ListenError::Timeout(Duration::from_millis(1500))),
            Err(ListenError::NotConnected),
        ] {
            let text = serde_json::to_vec(&Wire::Reply {
                ask: 3,
                answer: answer.clone(),
            })
            .unwrap_or_default();
            match serde_json::from_slice::<Wire>(&text) {
                Ok(Wire::Reply {
                    ask: 3,
                    answer: back,
                }) => assert_eq!(back, answer),
                other => panic!("{other:?}"),
            }
        }
    }
}
