//! One worker's stream as the dispatcher keeps it: who it is, the tasks the agent holds through
//! it (and their leases), the conversation responses it owes, and the way out to the worker.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use cim_core::{AggregateId, ErrorCode, TenantId};
use cim_proto::agent as pb;
use cim_runtime::edge::Caller;
use tokio::sync::{Notify, mpsc};
use tonic::Status;
use uuid::Uuid;

use super::conversation::Pending;
use crate::agent::AgentState;
use crate::names::Names;

/// Messages waiting to go out on one stream. Assignments are bounded by the agent's slots and
/// replies by what the worker sends, so a full queue means the worker stopped reading.
pub(super) const OUTBOUND: usize = 1024;

pub(super) type Outbound = mpsc::Sender<Result<pb::DispatchMessage, Status>>;

/// An agent as routing needs it, from the registry.
#[derive(Debug, Clone)]
pub(super) struct Profile {
    pub state: AgentState,
    pub capabilities: Names,
}

pub(super) struct Session {
    pub id: Uuid,
    pub tenant: TenantId,
    pub agent: AggregateId,
    pub connected_at: DateTime<Utc>,
    /// The worker's identity from its call's metadata: its results are recorded as its own.
    pub caller: Caller,
    /// What the worker said it can run at once (0: no limit of its own).
    slots: u32,
    /// Taken when the stream's last word is sent: the worker's stream ends with it.
    out: Mutex<Option<Outbound>>,
    state: Mutex<State>,
    ended: Notify,
}

#[derive(Default)]
struct State {
    /// The agent's max_concurrent_tasks as last read.
    limit: u32,
    /// The agent's state and capabilities as the last pass read them; forgotten when an event
    /// of the agent is seen, so a submission is routed on them only while they are current.
    profile: Option<Profile>,
    /// Tasks held through this stream, with the lease each runs until.
    held: HashMap<AggregateId, DateTime<Utc>>,
    /// Conversation messages forwarded and not yet answered, by message id.
    responses: HashMap<Uuid, Pending>,
    /// Why the stream was ended from outside (replaced, decommissioned, shutdown).
    ended: Option<Status>,
    /// Set once the stream closed and its open responses were taken: no new one opens.
    closing: bool,
    /// Ended because a newer stream of the agent took over (here or on another replica): the
    /// agent is not offline.
    replaced: bool,
}

impl Session {
    pub fn new(caller: Caller, agent: AggregateId, slots: u32, limit: u32, out: Outbound) -> Self {
        Self {
            id: Uuid::now_v7(),
            tenant: caller.tenant,
            agent,
            connected_at: Utc::now(),
            caller,
            slots,
            out: Mutex::new(Some(out)),
            state: Mutex::new(State { limit, ..State::default() }),
            ended: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock left plain maps behind, still consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends a message to the worker. A worker that stopped reading is cut off rather than
    /// buffered for without end; a closed stream is no error (the session is ending).
    pub fn push(&self, kind: pb::dispatch_message::Kind) {
        let sent = match self.out.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(out) => out.try_send(Ok(pb::DispatchMessage { kind: Some(kind) })),
            None => return,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = sent {
            self.end(cim_proto::status::error_status(
                ErrorCode::RateLimited,
                format!("the worker read none of the last {OUTBOUND} messages; reconnect"),
                &[],
            ));
        }
    }

    /// Ends the worker's stream: with `status` as its last word, or cleanly. Later pushes go
    /// nowhere.
    pub async fn finish(&self, status: Option<Status>) {
        let out = self.out.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let (Some(out), Some(status)) = (out, status) {
            let _ = out.send(Err(status)).await;
        }
    }

    /// Ends the stream from outside; the reader stops and cleans up.
    pub fn end(&self, status: Status) {
        self.state().ended.get_or_insert(status);
        self.ended.notify_waiters();
    }

    /// Resolves once [`Session::end`] was called, with its status. Safe to drop and call again
    /// (the reader does, every message): the state says whether it happened, the wake-up only
    /// when.
    pub async fn ended(&self) -> Status {
        loop {
            let notified = self.ended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(status) = self.state().ended.clone() {
                return status;
            }
            notified.await;
        }
    }

    /// Ends the stream because a newer one of the same agent took over.
    pub fn replace(&self) {
        self.state().replaced = true;
        self.end(cim_proto::status::error_status(
            ErrorCode::Conflict,
            format!("replaced by a newer connection of agent {}", self.agent),
            &[],
        ));
    }

    pub fn was_replaced(&self) -> bool {
        self.state().replaced
    }

    pub fn set_limit(&self, limit: u32) {
        self.state().limit = limit;
    }

    /// What a pass read of the agent: its limit, state and capabilities.
    pub fn set_profile(&self, limit: u32, profile: Profile) {
        let mut state = self.state();
        state.limit = limit;
        state.profile = Some(profile);
    }

    /// The agent changed (an event of it was written or seen): routing waits for a pass to read
    /// it again.
    pub fn forget_profile(&self) {
        self.state().profile = None;
    }

    pub fn profile(&self) -> Option<Profile> {
        self.state().profile.clone()
    }

    /// How many tasks the agent may hold through this stream: its limit, or the worker's own
    /// if lower.
    pub fn capacity(&self) -> u32 {
        let limit = self.state().limit;
        if self.slots == 0 { limit } else { limit.min(self.slots) }
    }

    /// The worker's own limit (0: none).
    pub fn slots(&self) -> u32 {
        self.slots
    }

    pub fn held_count(&self) -> u32 {
        self.state().held.len() as u32
    }

    pub fn free_slots(&self) -> u32 {
        self.capacity().saturating_sub(self.held_count())
    }

    pub fn hold(&self, task: AggregateId, lease_until: DateTime<Utc>) {
        self.state().held.insert(task, lease_until);
    }

    /// Holds a slot for `task` if one is free: a pass and a submission planning at the same
    /// time never give the agent more than its capacity.
    pub fn try_hold(&self, task: AggregateId, lease_until: DateTime<Utc>) -> bool {
        let mut state = self.state();
        let capacity = if self.slots == 0 { state.limit } else { state.limit.min(self.slots) };
        if state.held.len() as u32 >= capacity && !state.held.contains_key(&task) {
            return false;
        }
        state.held.insert(task, lease_until);
        true
    }

    /// Whether the task was held here (and is not any more).
    pub fn release(&self, task: AggregateId) -> bool {
        self.state().held.remove(&task).is_some()
    }

    pub fn lease_of(&self, task: AggregateId) -> Option<DateTime<Utc>> {
        self.state().held.get(&task).copied()
    }

    /// Records an extension, unless the task was released meanwhile.
    pub fn extended(&self, task: AggregateId, lease_until: DateTime<Utc>) {
        if let Some(lease) = self.state().held.get_mut(&task) {
            *lease = lease_until;
        }
    }

    /// Registers a response this stream owes; `false` (and nothing registered) if that message
    /// is already open or the stream is closing.
    pub fn open_response(&self, message: Uuid, pending: Pending) -> bool {
        let mut state = self.state();
        if state.closing || state.responses.contains_key(&message) {
            return false;
        }
        state.responses.insert(message, pending);
        true
    }

    pub fn is_closing(&self) -> bool {
        self.state().closing
    }

    /// Runs `f` on an open response.
    pub fn with_response<R>(&self, message: Uuid, f: impl FnOnce(&mut Pending) -> R) -> Option<R> {
        self.state().responses.get_mut(&message).map(f)
    }

    pub fn take_response(&self, message: Uuid) -> Option<Pending> {
        self.state().responses.remove(&message)
    }

    /// The responses still owed when the stream closed; none opens after this.
    pub fn close_responses(&self) -> Vec<Pending> {
        let mut state = self.state();
        state.closing = true;
        state.responses.drain().map(|(_, pending)| pending).collect()
    }
}
