//! The wire to `listen` targets: WebSocket connections that their clients opened, and the frames
//! that go over them. A delivery is one text frame down, its answer one text frame up, matched
//! by the delivery id (a job is attempted once at a time, so the id is unique on the wire).
//!
//! The [`Hub`] keeps, per target, the connections open now; a delivery goes to one of them in
//! turn. A connection's task (ingress) owns the socket: it takes frames from the connection's
//! queue and hands answers back here. When it ends, every delivery waiting on it fails at once
//! and is retried like any failed attempt. Knows no job and no target: names and bytes.
//!
//! With several instances on Redis, a client's connection is held by one of them; a delivery
//! made elsewhere (the reply owner's, at accept, on the instance WeChat called) goes through
//! [`remote`]: asked of the instance holding a connection, its answer sent back.
//!
//! The protocol, for clients in any language, is in docs/listen.md.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

mod frames;
mod remote;

use self::frames::QUEUE;
pub use self::frames::{AnswerFrame, DeliveryFrame, ListenError};
use self::remote::{DeliverHere, Held, HeldHere, Remote};
use crate::events::pubsub::Nodes;

/// The answer a listen client gave: status, content type, body.
#[derive(Debug, Clone)]
pub struct Answered {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// One open connection: the queue its socket task reads, and the deliveries awaiting answers.
#[derive(Debug)]
struct Conn {
    id: u64,
    frames: mpsc::Sender<String>,
    waiting: Mutex<HashMap<i64, oneshot::Sender<AnswerFrame>>>,
}

/// The connections of one target.
#[derive(Debug, Default)]
struct Slot {
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Rung when a connection opens.
    connected: Notify,
    turn: AtomicUsize,
}

/// Every listen target's connections in this process.
#[derive(Debug, Default)]
pub struct Hub {
    slots: Mutex<HashMap<(String, String), Arc<Slot>>>,
    next_id: std::sync::atomic::AtomicU64,
    /// Rung when a connection opens or closes, for the other instances to hear it.
    changed: Arc<Notify>,
    /// The other instances, on Redis ([`Hub::share`]).
    remote: OnceLock<Remote>,
}

/// A connection as its socket task holds it: the frames to write, and where answers go. Dropping
/// it closes the connection for the hub: what waits on it fails.
#[derive(Debug)]
pub struct Connection {
    slot: Arc<Slot>,
    conn: Arc<Conn>,
    changed: Arc<Notify>,
    /// The frames to write to the socket, in order.
    pub frames: mpsc::Receiver<String>,
}

impl Hub {
    fn slot(&self, account: &str, target: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry((account.to_owned(), target.to_owned()))
            .or_default()
            .clone()
    }

    /// A connection opened for `account`/`target`.
    pub fn open(&self, account: &str, target: &str) -> Connection {
        let slot = self.slot(account, target);
        let (sender, frames) = mpsc::channel(QUEUE);
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            frames: sender,
            waiting: Mutex::default(),
        });
        slot.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn.clone());
        slot.connected.notify_waiters();
        self.changed.notify_one();
        Connection {
            slot,
            conn,
            changed: self.changed.clone(),
            frames,
        }
    }

    /// How many connections `account`/`target` has on this instance now.
    pub fn connections(&self, account: &str, target: &str) -> usize {
        let slot = self.slot(account, target);
        slot.conns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// How many connections `account`/`target` has on every instance, as far as this one
    /// heard (the others tell theirs every few seconds, and at once when they change).
    pub fn connections_everywhere(&self, account: &str, target: &str) -> usize {
        let elsewhere = (self.remote.get()).map_or(0, |r| r.connections(account, target));
        self.connections(account, target) + elsewhere
    }

    /// Whether a delivery to `account`/`target` can be made from here now: a connection on
    /// this instance, or on another one that said so lately.
    pub fn reachable(&self, account: &str, target: &str) -> bool {
        self.connections_everywhere(account, target) > 0
    }

    /// Makes this hub one of the deployment's: the other instances' connections become
    /// reachable from here, and this one's from theirs, through the Redis at `nodes`, on
    /// channels under `<key_prefix>:listen`, until `shutdown`.
    pub fn share(self: &Arc<Self>, nodes: Nodes, key_prefix: &str, shutdown: CancellationToken) {
        let here: DeliverHere = {
            let hub = Arc::downgrade(self);
            Arc::new(move |account, target, frame, timeout| {
                let hub = hub.clone();
                Box::pin(async move {
                    let Some(hub) = hub.upgrade() else {
                        return Err(ListenError::NotConnected);
                    };
                    hub.deliver_here(&account, &target, &frame, timeout).await
                })
            })
        };
        let held: HeldHere = {
            let hub = Arc::downgrade(self);
            Arc::new(move || hub.upgrade().map(|hub| hub.held()).unwrap_or_default())
        };
        let changed = self.changed.clone();
        let remote = Remote::start(nodes, key_prefix, here, held, changed, shutdown);
        let _ = self.remote.set(remote);
    }

    /// The targets with a connection on this instance, and how many each has.
    fn held(&self) -> Vec<Held> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut held: Vec<_> = slots
            .iter()
            .map(|((account, target), slot)| {
                let count = slot.conns.lock().unwrap_or_else(|p| p.into_inner()).len();
                (account.clone(), target.clone(), count)
            })
            .filter(|(_, _, count)| *count > 0)
            .collect();
        held.sort();
        held
    }

    /// Waits until `account`/`target` has a connection.
    pub async fn connected(&self, account: &str, target: &str) {
        let slot = self.slot(account, target);
        loop {
            let notified = slot.connected.notified();
            if !slot
                .conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                return;
            }
            notified.await;
        }
    }

    /// Sends `frame` over one of the target's connections (in turn) and waits up to `timeout`
    /// for its answer: a connection of this instance's, else one another instance holds.
    pub async fn deliver(
        &self,
        account: &str,
        target: &str,
        frame: &DeliveryFrame,
        timeout: Duration,
    ) -> Result<Answered, ListenError> {
        let frame = match self.deliver_here(account, target, frame, timeout).await {
            Err(ListenError::NotConnected) => match self.remote.get() {
                Some(remote) => remote.ask(account, target, frame, timeout).await?,
                None => return Err(ListenError::NotConnected),
            },
            answered => answered?,
        };
        let body = base64::engine::general_purpose::STANDARD
            .decode(&frame.body)
            .map_err(|e| ListenError::BadAnswer(format!("body is not base64 ({e})")))?;
        Ok(Answered {
            status: frame.status,
            content_type: frame.header("content-type").map(str::to_owned),
            body: Bytes::from(body),
        })
    }

    /// [`Hub::deliver`] over a connection of this instance's only: the answer frame.
    async fn deliver_here(
        &self,
        account: &str,
        target: &str,
        frame: &DeliveryFrame,
        timeout: Duration,
    ) -> Result<AnswerFrame, ListenError> {
        let slot = self.slot(account, target);
        let conn = {
            let conns = slot.conns.lock().unwrap_or_else(|p| p.into_inner());
            if conns.is_empty() {
                return Err(ListenError::NotConnected);
            }
            let turn = slot.turn.fetch_add(1, Ordering::Relaxed);
            conns[turn % conns.len()].clone()
        };
        let text =
            serde_json::to_string(frame).map_err(|e| ListenError::BadAnswer(e.to_string()))?;
        let (answer, answered) = oneshot::channel();
        conn.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(frame.delivery, answer);
        let forget = |conn: &Conn| {
            conn.waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&frame.delivery);
        };
        if let Err(e) = conn.frames.try_send(text) {
            forget(&conn);
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => ListenError::Busy,
                mpsc::error::TrySendError::Closed(_) => ListenError::Closed,
            });
        }
        match tokio::time::timeout(timeout, answered).await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(_)) => Err(ListenError::Closed),
            Err(_) => {
                forget(&conn);
                Err(ListenError::Timeout(timeout))
            }
        }
    }
}

impl Connection {
    /// Hands an answer frame (text from the socket) to the delivery waiting for it; an answer
    /// nobody waits for (late, or unknown) is dropped. Errs on a frame that is no answer.
    pub fn answer(&self, text: &str) -> Result<(), String> {
        let frame: AnswerFrame =
            serde_json::from_str(text).map_err(|e| format!("not an answer frame: {e}"))?;
        if frame.kind != "answer" {
            return Err(format!("unexpected frame type {:?}", frame.kind));
        }
        let waiting = self
            .conn
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&frame.delivery);
        if let Some(waiting) = waiting {
            let _ = waiting.send(frame);
        }
        Ok(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut conns = self.slot.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|c| c.id != self.conn.id);
        self.changed.notify_one();
        // Dropping the senders fails every delivery waiting on this connection at once.
        self.conn
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_delivery_goes_to_a_connection_and_its_answer_comes_back() {
        let hub = Arc::new(Hub::default());
        let frame = DeliveryFrame::new(7, 1, "signature=a", vec![], b"<xml/>");
        let none = hub.deliver("a", "t", &frame, Duration::from_secs(1)).await;
        assert_eq!(none.unwrap_err(), ListenError::NotConnected);

        let mut conn = hub.open("a", "t");
        assert_eq!(hub.connections("a", "t"), 1);
        let client = tokio::spawn(async move {
            let text = conn.frames.recv().await.unwrap();
            let got: DeliveryFrame = serde_json::from_str(&text).unwrap();
            assert_eq!(got.body().unwrap(), b"<xml/>");
            let answer = AnswerFrame::new(
                got.delivery,
                200,
                vec![("Content-Type".into(), "text/xml".into())],
                b"<xml>hi</xml>",
            );
            conn.answer(&serde_json::to_string(&answer).unwrap())
                .unwrap();
            conn
        });
        let answered = hub
            .deliver("a", "t", &frame, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(answered.status, 200);
        assert_eq!(answered.content_type.as_deref(), Some("text/xml"));
        assert_eq!(&answered.body[..], b"<xml>hi</xml>");

        // A connection that goes away fails what waits on it at once.
        let conn = client.await.unwrap();
        let waiting = {
            let hub = hub.clone();
            let frame = DeliveryFrame::new(8, 1, "", vec![], b"");
            tokio::spawn(async move { hub.deliver("a", "t", &frame, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(conn);
        assert_eq!(waiting.await.unwrap().unwrap_err(), ListenError::Closed);
        assert_eq!(hub.connections("a", "t"), 0);
    }

    /// Two clients of one target share its deliveries in turn, each answering its own.
    #[tokio::test]
    async fn connections_of_one_target_take_deliveries_in_turn() {
        let hub = Arc::new(Hub::default());
        let mut clients = Vec::new();
        for _ in 0..2 {
            let mut conn = hub.open("a", "t");
            clients.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(text) = conn.frames.recv().await {
                    let frame: DeliveryFrame = serde_json::from_str(&text).unwrap();
                    got.push(frame.delivery);
                    let answer = AnswerFrame::new(frame.delivery, 200, vec![], b"");
                    conn.answer(&serde_json::to_string(&answer).unwrap())
                        .unwrap();
                    if got.len() == 2 {
                        break;
                    }
                }
                got
            }));
        }
        for delivery in 1..=4 {
            let frame = DeliveryFrame::new(delivery, 1, "", vec![], b"");
            let answered = hub.deliver("a", "t", &frame, Duration::from_secs(1)).await;
            assert_eq!(answered.unwrap().status, 200);
        }
        let mut got = Vec::new();
        for client in clients {
            got.push(client.await.unwrap());
        }
        got.sort();
        assert_eq!(got, [vec![1, 3], vec![2, 4]]);
    }
}
