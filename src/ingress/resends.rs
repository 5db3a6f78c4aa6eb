//! Concurrent resends: WeChat may resend a callback while the first copy is still being handled
//! (it gives up on an answer after 5 s). The first copy in this process leads; later copies wait
//! for its answer and send the same bytes, or fail the same way when it could not be stored.
//!
//! The store's insert-if-absent remains the dedupe (and the only one across processes); this map
//! only lets copies that arrive together share one answer, including a primary's relayed reply.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::store::{Answer, CallbackId};

#[derive(Debug, Clone)]
pub(super) enum State {
    Pending,
    /// The stored callback's id (followers log under it too) and its answer.
    Answered(CallbackId, Answer),
    Failed,
}

#[derive(Debug, Default)]
pub(super) struct Resends {
    /// Per dedupe key: when its leader will have answered at the latest, and its outcome.
    inflight: Mutex<HashMap<String, (Instant, watch::Receiver<State>)>>,
}

#[derive(Debug)]
pub(super) enum Role {
    /// The first copy: it stores the callback and publishes the answer through the guard.
    Leader(Leader),
    /// A copy of one being handled now: wait for the leader's answer, which comes by the
    /// leader's reply deadline (a copy can start reading before the leader yet join after it).
    Follower {
        leader_deadline: Instant,
        outcome: watch::Receiver<State>,
    },
}

impl Resends {
    /// Joins the copies of `key` being handled; `deadline` is when this copy must answer.
    pub(super) fn join(self: &Arc<Self>, key: &str, deadline: Instant) -> Role {
        let mut inflight = self
            .inflight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((leader_deadline, outcome)) = inflight.get(key) {
            return Role::Follower {
                leader_deadline: *leader_deadline,
                outcome: outcome.clone(),
            };
        }
        let (sender, receiver) = watch::channel(State::Pending);
        inflight.insert(key.to_owned(), (deadline, receiver));
        Role::Leader(Leader {
            resends: self.clone(),
            key: key.to_owned(),
            sender,
        })
    }
}

/// Held by the copy that leads; followers are released when it publishes or is dropped.
#[derive(Debug)]
pub(super) struct Leader {
    resends: Arc<Resends>,
    key: String,
    sender: watch::Sender<State>,
}

impl Leader {
    pub(super) fn publish(&self, callback: CallbackId, answer: Answer) {
        self.sender.send_replace(State::Answered(callback, answer));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        // A leader that never published failed to store the callback: its followers must not
        // answer 200 for something that is not stored.
        self.sender.send_if_modified(|state| {
            if matches!(state, State::Pending) {
                *state = State::Failed;
                true
            } else {
                false
            }
        });
        let mut inflight = self
            .resends
            .inflight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inflight.remove(&self.key);
    }
}

/// Waits for the leader's outcome, the callback's id and answer: `None` if it failed.
pub(super) async fn follow(mut receiver: watch::Receiver<State>) -> Option<(CallbackId, Answer)> {
    match receiver
        .wait_for(|state| !matches!(state, State::Pending))
        .await
    {
        Ok(state) => match &*state {
            State::Answered(callback, answer) => Some((*callback, answer.clone())),
            _ => None,
        },
        Err(_) => None,
    }
}
