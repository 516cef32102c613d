//! The dispatcher: pushes queued tasks to the agents whose workers are connected to this process,
//! keeps the leases of what they hold, and carries conversations over the same streams.
//!
//! - **Exactly once**: an assignment is a `TaskAssigned` command through the kit's executor. Of
//!   two replicas that pick the same task, the first append wins; the other's append conflicts,
//!   is decided again on the new state, and is refused (the task is no longer queued). A task
//!   whose last event this process wrote (it was submitted here) is assigned, and later
//!   completed, by one guarded statement shared with other tasks' ([`crate::task::TaskStatement`]);
//!   a guard that finds the row moved writes nothing and the executor decides on the real state.
//! - **Order and fairness**: a pass gives every tenant whose connected agents have free slots up
//!   to `turn` of its queued tasks that those agents cover, highest priority first, then oldest,
//!   each routed by [`crate::routing`]. Tenants take their turns in a rotating order, so one
//!   tenant's backlog delays another tenant's work by at most one turn.
//! - **Pipelined passes**: a pass holds the slots it plans and marks the tasks as being
//!   assigned, starts their writes and returns; the next pass reads the queue while they commit,
//!   counting those slots as taken and leaving those tasks out. A refused assignment frees its
//!   slot and wakes the loop.
//! - **Wake-ups**: a submission, a freed slot or a new worker in this process wakes the loop at
//!   once ([`Dispatcher::wake`]); submissions and requeues through other replicas arrive as events
//!   on the domain stream ([`feed`]) (a submission made here does not wake it a second time when
//!   the feed brings it back); a slow re-scan covers anything missed. Only agents connected
//!   here are given tasks from here.
//! - [`session`]: one worker stream's state; [`stream`]: `ConnectAgent` and the worker's messages;
//!   [`lease`]: extensions and the sweeper (lapsed leases, deadlines); [`conversation`]:
//!   `SendMessage`; [`relay`]: conversations across replicas and to the websocket over NATS;
//!   [`queue`]: the SQL it reads; [`wire`]: proto conversions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cim_aggregate::CommandExecutor;
use cim_core::{Actor, AggregateId, ErrorCode, TenantId};
use cim_runtime::Shutdown;
use cim_runtime::edge::Caller;
use cim_runtime::status::HasErrorCode;
use futures::future::join_all;
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::agent::Agent;
use crate::events::TaskEvent;
use crate::metrics::{AT_DISPATCHER, DISPATCH_LATENCY_SECONDS, TASKS_ASSIGNED_TOTAL};
use crate::routing::{self, Candidate};
use crate::task::{Task, TaskCommand};

mod backlog;
mod conversation;
mod direct;
mod feed;
mod ids;
mod lease;
mod queue;
mod relay;
mod session;
mod stream;
mod wire;

use backlog::Backlogs;
pub use conversation::ResponseStream;
pub use direct::Claim;
use ids::IdSet;
use queue::QueuedTask;
use session::{Profile, Session};
pub use stream::DispatchStream;

/// The dispatcher's timings: deployments keep the defaults, tests shorten them.
#[derive(Debug, Clone)]
pub struct DispatchOptions {
    /// How long a lease runs from an assignment or an extension.
    pub lease: Duration,
    /// How often workers are asked to send heartbeats (told in `welcome`).
    pub heartbeat_interval: Duration,
    /// A stream silent this long is closed, and its agent goes offline.
    pub heartbeat_timeout: Duration,
    /// The sweeper's longest sleep; it wakes earlier for a lease or deadline it knows is due.
    pub sweep_interval: Duration,
    /// The dispatch loop's safety re-scan when no wake-up came.
    pub rescan_interval: Duration,
    /// A conversation response not ended by then is recorded as failed (`timeout`).
    pub response_timeout: Duration,
    /// Tasks one tenant is given per pass before the next tenant's turn.
    pub turn: usize,
}

impl DispatchOptions {
    /// The timings from the `CIM_AGENT_*` variables; the rest at their defaults.
    pub fn from_settings(settings: &cim_runtime::config::AgentSettings) -> Self {
        Self {
            lease: settings.lease,
            heartbeat_interval: settings.heartbeat_interval,
            heartbeat_timeout: settings.heartbeat_timeout,
            response_timeout: settings.response_timeout,
            ..Self::default()
        }
    }
}

impl Default for DispatchOptions {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(5),
            // Three missed heartbeats: one lost packet or a GC pause does not take an agent off.
            heartbeat_timeout: Duration::from_secs(15),
            sweep_interval: Duration::from_secs(1),
            rescan_interval: Duration::from_secs(10),
            response_timeout: Duration::from_secs(300),
            turn: 32,
        }
    }
}

/// Pushes tasks to the workers connected to this process; shared by the gRPC edge and the
/// dispatcher's loops.
pub struct Dispatcher {
    agents: CommandExecutor<Agent>,
    tasks: CommandExecutor<Task>,
    pool: PgPool,
    options: DispatchOptions,
    /// The stream of each agent connected here.
    sessions: Mutex<HashMap<(TenantId, AggregateId), Arc<Session>>>,
    wake: Notify,
    /// Tasks planned for an agent whose assignment is being written: passes leave them out.
    assigning: IdSet,
    /// Tasks submitted through this process, until the feed hears of them.
    submitted_here: IdSet,
    /// Whether a tenant's queue holds anything an agent here could take.
    backlogs: Backlogs,
    /// NATS: session announcements and conversations across replicas (set by
    /// [`Dispatcher::start`]).
    bus: OnceLock<relay::Bus>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let connected = self.sessions.lock().map(|s| s.len()).unwrap_or_default();
        f.debug_struct("Dispatcher").field("options", &self.options).field("connected", &connected).finish()
    }
}

/// Who the dispatcher's own commands (assignments, requeues, time-outs, offline) are recorded as.
fn dispatcher(tenant: TenantId) -> Caller {
    Caller { tenant, actor: Actor::service("agent-dispatcher"), correlation: None }
}

/// Whether a refused task command means the task is simply no longer there to act on (another
/// replica or the holder went first): expected in a race, not worth a warning.
fn lost_race(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::FailedPrecondition | ErrorCode::Conflict | ErrorCode::NotFound)
}

impl Dispatcher {
    pub fn new(agents: CommandExecutor<Agent>, tasks: CommandExecutor<Task>, options: DispatchOptions) -> Arc<Self> {
        let pool = tasks.store().pool().clone();
        Arc::new(Self {
            agents,
            tasks,
            pool,
            options,
            sessions: Mutex::default(),
            wake: Notify::new(),
            assigning: IdSet::default(),
            submitted_here: IdSet::default(),
            backlogs: Backlogs::default(),
            bus: OnceLock::new(),
        })
    }

    /// Starts the dispatcher's workers in `host`: the dispatch loop, the sweeper, the event feed
    /// from the domain stream; and, on `shutdown`, ends every worker stream so the drain is quick.
    pub fn start(
        self: &Arc<Self>,
        host: &mut cim_runtime::ServiceHost,
        shutdown: &Shutdown,
        js: async_nats::jetstream::Context,
        prefix: cim_core::SubjectPrefix,
    ) {
        let (bus, publish) = relay::Bus::new(js.client(), prefix.clone());
        if self.bus.set(bus).is_ok() {
            tokio::spawn(publish);
        }
        let stop = host.workers_shutdown();
        host.spawn_worker("dispatch", self.clone().run(stop.clone()));
        host.spawn_worker("sweeper", lease::sweep_forever(self.clone(), stop.clone()));
        host.spawn_worker("dispatch-feed", feed::follow(self.clone(), js, prefix, stop));
        let closer = self.clone();
        let shutdown = shutdown.clone();
        host.spawn_worker("worker-streams", async move { closer.close_all(shutdown).await });
    }

    pub fn options(&self) -> &DispatchOptions {
        &self.options
    }

    /// Something may be assignable now: a pass runs as soon as the loop is free. Wake-ups while
    /// a pass runs fold into one more pass.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn session(&self, tenant: TenantId, agent: AggregateId) -> Option<Arc<Session>> {
        self.sessions.lock().ok()?.get(&(tenant, agent)).cloned()
    }

    fn all_sessions(&self) -> Vec<Arc<Session>> {
        self.sessions.lock().map(|s| s.values().cloned().collect()).unwrap_or_default()
    }

    /// Assigns until a pass finds nothing more, then waits for a wake-up or the re-scan.
    pub async fn run(self: Arc<Self>, stop: Shutdown) {
        // The tenant that went first in the last pass: the next pass starts after it.
        let mut first: Option<TenantId> = None;
        // The re-scan reads every tenant's queue, even one known to hold nothing for the agents
        // here (a feed event missed while the feed was down).
        let mut everyone = true;
        loop {
            loop {
                match self.pass(&mut first, everyone).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "dispatch pass failed; retrying at the next wake-up");
                        break;
                    }
                }
            }
            everyone = tokio::select! {
                _ = self.wake.notified() => false,
                _ = tokio::time::sleep(self.options.rescan_interval) => true,
                _ = stop.wait() => return,
            };
        }
    }

    /// One turn for every tenant with free agents here (`everyone`: also those whose queue is
    /// known to hold nothing for them, [`backlog`]); the number of tasks it set out to assign
    /// (their writes go on while the next pass reads the queue).
    async fn pass(self: &Arc<Self>, first: &mut Option<TenantId>, everyone: bool) -> Result<usize, sqlx::Error> {
        let mut by_tenant: BTreeMap<TenantId, Vec<Arc<Session>>> = BTreeMap::new();
        let sessions = self.all_sessions().into_iter().filter(|s| s.free_slots() > 0);
        for session in sessions.filter(|s| everyone || !self.backlogs.is_drained(s.tenant)) {
            by_tenant.entry(session.tenant).or_default().push(session);
        }
        let tenants: Vec<TenantId> = by_tenant.keys().copied().collect();
        let start = first.map_or(0, |f| tenants.iter().position(|t| *t > f).unwrap_or(0));
        *first = tenants.get(start).copied();
        let mut planned = 0;
        for tenant in tenants[start..].iter().chain(&tenants[..start]) {
            planned += self.turn(*tenant, &by_tenant[tenant]).await?;
        }
        Ok(planned)
    }

    /// Plans up to `turn` of a tenant's queued tasks for its free agents connected here and
    /// starts writing them; the number planned.
    async fn turn(self: &Arc<Self>, tenant: TenantId, sessions: &[Arc<Session>]) -> Result<usize, sqlx::Error> {
        let connected: Vec<queue::Connected> = sessions
            .iter()
            .map(|s| queue::Connected { agent: s.agent, held: s.held_count(), slots: s.slots() })
            .collect();
        let skip = self.assigning.snapshot();
        let generation = self.backlogs.generation(tenant);
        let (agents, queued) =
            queue::turn(&self.pool, tenant, &connected, &skip, self.options.turn, Utc::now()).await?;
        let (mut free, mut saw_full) = (0, false);
        let mut candidates = Vec::new();
        for row in agents {
            let Some(session) = sessions.iter().find(|s| s.agent == row.agent) else { continue };
            let held = connected.iter().find(|c| c.agent == row.agent).map_or(0, |c| c.held);
            // The limit, state and capabilities may have changed since the session last looked.
            session.set_profile(row.limit, Profile { state: row.state, capabilities: row.capabilities.clone() });
            if row.state == crate::agent::AgentState::Active {
                let capacity = session.capacity();
                free += capacity.saturating_sub(held) as usize;
                saw_full |= held >= capacity;
            }
            candidates.push(Candidate {
                agent: row.agent,
                state: row.state,
                capabilities: row.capabilities,
                running: session.held_count(),
                limit: session.capacity(),
            });
        }
        // The read asked for as many as the free slots take (at most a turn): fewer means nothing
        // else waits that an agent here could take, and a submission may go straight to one.
        if free > 0 && queued.len() < free.min(self.options.turn) {
            self.backlogs.drained(tenant, generation, saw_full);
        }
        // Planned in queue order, against the load each choice adds; each chosen slot is held
        // (so the next pass counts it) and the task marked as being assigned (so the next pass
        // leaves it out) until its write is done. A slot a submission took meanwhile is not
        // given twice: the task waits for the next pass.
        let now = Utc::now();
        let lease_until = now + self.options.lease;
        let mut plan = Vec::with_capacity(queued.len());
        for task in queued {
            let Some(chosen) = routing::route(&task.required_capabilities, &candidates) else { continue };
            let agent = chosen.agent;
            let Some(session) = sessions.iter().find(|s| s.agent == agent) else { continue };
            let held = session.try_hold(task.id, lease_until);
            if let Some(c) = candidates.iter_mut().find(|c| c.agent == agent) {
                c.running = if held { c.running + 1 } else { c.limit };
            }
            if !held {
                continue;
            }
            self.assigning.insert(task.id);
            plan.push((task, session.clone()));
        }
        let planned = plan.len();
        if planned > 0 {
            // Written together (the task executor groups concurrent commands into one
            // statement) while the loop goes on to the next pass.
            let this = self.clone();
            tokio::spawn(async move {
                join_all(plan.into_iter().map(|(task, session)| this.assign(task, session, now, lease_until))).await;
            });
        }
        Ok(planned)
    }

    /// Assigns one planned task and pushes it to the agent's stream. When another replica (or a
    /// cancellation, a deadline) got to the task first, the held slot is free again.
    async fn assign(&self, task: QueuedTask, session: Arc<Session>, now: DateTime<Utc>, lease_until: DateTime<Utc>) {
        let (tenant, agent) = (session.tenant, session.agent);
        let command = TaskCommand::Assign { agent, lease_until, now, attempts: Some(task.attempts) };
        let outcome = self.tasks.execute(&dispatcher(tenant), task.id, &command, &Default::default()).await;
        self.assigning.remove(task.id);
        let done = match outcome {
            Ok(done) => done,
            Err(e) => {
                if lost_race(e.code()) {
                    tracing::debug!(task = %task.id, error = %e, "not assigned: the task moved on");
                } else {
                    tracing::warn!(task = %task.id, error = %e, "assignment failed");
                }
                // Still queued, perhaps (a failed write), and left out of no pass any more.
                self.backlogs.changed(tenant);
                session.release(task.id);
                self.wake();
                return;
            }
        };
        let attempt = done
            .events
            .iter()
            .find_map(|e| match TaskEvent::from_envelope(e) {
                Ok(TaskEvent::Assigned(a)) => Some(a.attempt),
                _ => None,
            })
            .unwrap_or(1);
        let waited = (now - task.queued_since).to_std().unwrap_or_default();
        self.deliver(tenant, agent, &task, lease_until, attempt, AT_DISPATCHER, waited);
    }

    /// Tells the agent's worker of an assignment that committed; `at` labels who assigned it.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &self,
        tenant: TenantId,
        agent: AggregateId,
        task: &QueuedTask,
        lease_until: DateTime<Utc>,
        attempt: u32,
        at: &'static str,
        waited: Duration,
    ) {
        metrics::counter!(TASKS_ASSIGNED_TOTAL, "at" => at).increment(1);
        metrics::histogram!(DISPATCH_LATENCY_SECONDS).record(waited.as_secs_f64());
        // The agent's current stream (its worker may have reconnected meanwhile). A worker that
        // went away never hears of it: its lease lapses and the sweeper puts the task back.
        if let Some(current) = self.session(tenant, agent) {
            // Held before it is pushed: the worker may answer at once.
            current.hold(task.id, lease_until);
            current.push(wire::assignment(task, lease_until, attempt));
        }
    }

    /// A task was submitted through this process: the loop wakes now, and the feed's copy of
    /// the submission does not wake it again.
    pub fn submitted(&self, tenant: TenantId, task: AggregateId) {
        self.submitted_here.insert(task);
        self.backlogs.changed(tenant);
        self.wake();
    }

    /// An agent of `tenant` has a slot free again: the loop looks for work for it.
    fn slot_freed(&self, tenant: TenantId) {
        self.backlogs.slot_freed(tenant);
        self.wake();
    }

    /// An agent was changed through this process: submissions are not routed on what the last
    /// pass read of it until a pass reads it again (other replicas' changes come by the feed).
    pub fn agent_changed(&self, tenant: TenantId, agent: AggregateId) {
        if let Some(session) = self.session(tenant, agent) {
            session.forget_profile();
        }
        self.backlogs.changed(tenant);
    }

    /// The agent no longer holds `task` (cancelled, timed out, its lease lapsed): if its worker
    /// is connected here and still thinks it does, it is told to stop, and the slot is free.
    fn revoke(&self, tenant: TenantId, agent: AggregateId, task: AggregateId, cause: &str, reason: &str) {
        if let Some(session) = self.session(tenant, agent)
            && session.release(task)
        {
            session.push(wire::cancellation(task, cause, reason));
            self.slot_freed(tenant);
        }
    }

    /// A task was cancelled through this process: its holder hears it now if connected here
    /// (through another replica, the event feed brings it).
    pub fn cancelled(&self, tenant: TenantId, task: AggregateId, done: &cim_aggregate::Executed) {
        for event in &done.events {
            if let Ok(TaskEvent::Cancelled(c)) = TaskEvent::from_envelope(event)
                && let Some(holder) = c.holder
            {
                let reason = if c.reason.is_empty() { "the task was cancelled" } else { &c.reason };
                self.revoke(tenant, holder, task, wire::cause::CANCELLED, reason);
            }
        }
    }

    /// Ends every stream (shutdown): workers reconnect to another replica or to this one when
    /// it is back.
    pub async fn close_all(&self, stop: Shutdown) {
        stop.wait().await;
        for session in self.all_sessions() {
            session.end(cim_proto::status::error_status(
                ErrorCode::Unavailable,
                "the agent service is shutting down; reconnect".to_owned(),
                &[],
            ));
        }
    }
}
