//! [`CommandExecutor`]: one command path for every aggregate.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use cim_core::events::DomainEvent;
use cim_core::{AggregateId, CommandId, EventContext, TenantId};
use cim_eventstore::{Append, Appended, EventStore, Expected, HeadToken, Projector, StoreError};
use cim_runtime::edge::Caller;
use cim_runtime::status::HasErrorCode;

use crate::heads::{Heads, KnownHead};
use crate::one_statement::{Assuming, ONE_STATEMENT_WRITES_TOTAL, OneStatement, Tried, Writer};
use crate::projection::{Projected, Projection};
use crate::source::LockingSource;
use crate::{Aggregate, ExecutorError, Folded};

/// Counts every command by service, command and outcome (`ok` or the error's stable code).
pub const COMMANDS_TOTAL: &str = "cim_commands_total";

/// How often a replayed command is decided again after another process moved the aggregate.
const ATTEMPTS: usize = 5;

/// Aggregates whose queue and head this process keeps (about 100 bytes each); past that, the
/// idle ones are forgotten.
const KNOWN_HEADS: usize = 100_000;

/// What a caller may say about how a command runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOptions {
    /// Refuse (conflict) unless the aggregate is at this version.
    pub expected_version: Option<u64>,
    /// A retry with the same key gets the first answer and changes nothing.
    pub idempotency_key: Option<String>,
}

/// The options as every domain's gRPC commands carry them (`cim.common.v1.CommandOptions`);
/// absent means none.
impl From<Option<cim_proto::common::CommandOptions>> for CommandOptions {
    fn from(options: Option<cim_proto::common::CommandOptions>) -> Self {
        let options = options.unwrap_or_default();
        Self {
            expected_version: options.expected_version,
            idempotency_key: Some(options.idempotency_key).filter(|key| !key.is_empty()),
        }
    }
}

/// What [`CommandExecutor::execute`] answers.
pub type Executed = Appended;

/// An aggregate as of one of its versions, folded from its verified history.
#[derive(Debug, Clone)]
pub struct AsOf<A> {
    pub state: A,
    pub version: u64,
    /// When its first event happened.
    pub created_at: DateTime<Utc>,
    /// When the event at `version` happened.
    pub updated_at: DateTime<Utc>,
}

/// Runs commands of one aggregate type against one service's event store.
pub struct CommandExecutor<A: Aggregate> {
    store: EventStore,
    service: &'static str,
    services: Arc<A::Services>,
    heads: Arc<Heads>,
    projector: Option<Arc<dyn Projector>>,
    source: Option<Arc<dyn LockingSource<A>>>,
    assuming: Option<Arc<dyn Assuming<A>>>,
}

impl<A: Aggregate> std::fmt::Debug for CommandExecutor<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandExecutor")
            .field("service", &self.service)
            .field("projected", &self.projector.is_some())
            .field("locked", &self.source.is_some())
            .field("one_statement", &self.assuming.is_some())
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> Clone for CommandExecutor<A> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            service: self.service,
            services: self.services.clone(),
            heads: self.heads.clone(),
            projector: self.projector.clone(),
            source: self.source.clone(),
            assuming: self.assuming.clone(),
        }
    }
}

impl<A: Aggregate> CommandExecutor<A>
where
    A::Services: Default,
{
    /// `service` labels the command metrics (`document`, ...).
    pub fn new(store: EventStore, service: &'static str) -> Self {
        Self::with_services(store, service, A::Services::default())
    }
}

impl<A: Aggregate> CommandExecutor<A> {
    /// An executor whose aggregate's rules consult `services`.
    pub fn with_services(store: EventStore, service: &'static str, services: A::Services) -> Self {
        metrics::describe_counter!(
            COMMANDS_TOTAL,
            "Commands handled, by service, command and outcome (ok or an error code)"
        );
        Self {
            store,
            service,
            services: Arc::new(services),
            heads: Arc::new(Heads::new(KNOWN_HEADS)),
            projector: None,
            source: None,
            assuming: None,
        }
    }

    /// Runs `projector` in every append's transaction: the domain's read tables change exactly
    /// when its events commit.
    pub fn with_projector(mut self, projector: impl Projector + 'static) -> Self {
        self.projector = Some(Arc::new(projector));
        self
    }

    /// Writes the read tables from each command's typed events, in the append's transaction
    /// ([`Projection`]; [`Self::with_projector`] for a projection that reads envelopes itself).
    pub fn with_projection(self, projection: impl Projection<Event = A::Event>) -> Self {
        self.with_projector(Projected(projection))
    }

    /// Decides on the facts `source` reads under the aggregate's row lock instead of replaying.
    pub fn with_locking_source(mut self, source: impl LockingSource<A>) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Tries `statement`'s one-round-trip write first whenever this process knows the head.
    pub fn with_one_statement<S: OneStatement<A>>(mut self, statement: S) -> Self {
        metrics::describe_counter!(
            ONE_STATEMENT_WRITES_TOTAL,
            "One-statement writes tried, by service: hit (written) or miss (took the locked path)"
        );
        self.assuming = Some(Arc::new(Writer::start(self.store.clone(), statement, self.service)));
        self
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    pub fn services(&self) -> &A::Services {
        &self.services
    }

    /// The aggregate's current state and version (snapshot plus later events).
    pub async fn load(&self, tenant: TenantId, id: AggregateId) -> Result<(A, u64), ExecutorError<A::Error>> {
        match self.store.load::<Folded<A>>(tenant, id).await {
            Ok(loaded) => Ok((loaded.state.0, loaded.version)),
            Err(StoreError::NotFound(_)) => Err(ExecutorError::NotFound(A::AGGREGATE_TYPE, id)),
            Err(e) => Err(e.into()),
        }
    }

    /// Decides `command` on the aggregate's current state and appends what it decided.
    pub async fn execute(
        &self,
        caller: &Caller,
        id: AggregateId,
        command: &A::Command,
        options: &CommandOptions,
    ) -> Result<Executed, ExecutorError<A::Error>> {
        let result = self.run(caller, id, command, options).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code().as_str(),
        };
        metrics::counter!(COMMANDS_TOTAL, "service" => self.service, "command" => A::command_name(command), "outcome" => outcome)
            .increment(1);
        // Written in the request's span: a JSON line carries its trace id.
        tracing::debug!(
            service = self.service,
            command = A::command_name(command),
            aggregate = %id,
            outcome,
            version = result.as_ref().ok().map(|done| done.version),
            "command executed"
        );
        result
    }

    async fn run(
        &self,
        caller: &Caller,
        id: AggregateId,
        command: &A::Command,
        options: &CommandOptions,
    ) -> Result<Executed, ExecutorError<A::Error>> {
        if let Some(key) = &options.idempotency_key
            && (key.is_empty() || key.len() > 200 || key.chars().any(char::is_control))
        {
            return Err(ExecutorError::Invalid {
                field: "options.idempotency_key",
                reason: "1 to 200 bytes, no control characters".into(),
            });
        }
        let mut known = self.heads.lock(id).await;
        if let Some(assuming) = &self.assuming
            && options.idempotency_key.is_none()
            && A::creates(command)
            && known.is_none()
            && options.expected_version.is_none_or(|v| v == 0)
        {
            // A create needs no head: its guard checks that the aggregate is absent. One share of
            // a group statement instead of a transaction of its own (BEGIN, append, project,
            // COMMIT). An id that exists after all misses, and the locked path says so.
            let tried = self.try_one_statement(assuming.as_ref(), caller, id, command, Expected::NoStream).await?;
            if let Tried::Written(done) = tried {
                // Decided here, so not closing (the [`OneStatement`] contract).
                *known = Some(KnownHead { tenant: caller.tenant, head: head_of(&done), open: true });
                return Ok(done);
            }
        }
        if let Some(assuming) = &self.assuming
            && options.idempotency_key.is_none()
            && let Some(head) = *known
            && head.tenant == caller.tenant
            && head.open
            && options.expected_version.is_none_or(|v| v == head.head.version())
        {
            // Whatever happens next, the head is known again only once it has been seen.
            *known = None;
            match self.try_one_statement(assuming.as_ref(), caller, id, command, Expected::Head(head.head)).await? {
                Tried::Written(done) => {
                    *known = Some(KnownHead { head: head_of(&done), ..head });
                    return Ok(done);
                }
                Tried::Missed => {}
                Tried::Ineligible => *known = Some(head),
            }
        }
        match &self.source {
            Some(source) => self.run_locked(source.as_ref(), caller, id, command, options, &mut known).await,
            None => self.run_replayed(caller, id, command, options, &mut known).await,
        }
    }

    /// Tries `assuming`'s one-statement write on `expected`, counting a hit or a miss.
    async fn try_one_statement(
        &self,
        assuming: &dyn Assuming<A>,
        caller: &Caller,
        id: AggregateId,
        command: &A::Command,
        expected: Expected,
    ) -> Result<Tried, ExecutorError<A::Error>> {
        let seal = Box::new(move |events: &[A::Event]| self.append_of(caller, id, expected, events, None));
        let tried = assuming.try_write(command, &self.services, seal).await?;
        let outcome = match &tried {
            Tried::Written(_) => "hit",
            Tried::Missed => "miss",
            Tried::Ineligible => return Ok(tried),
        };
        metrics::counter!(ONE_STATEMENT_WRITES_TOTAL, "service" => self.service, "outcome" => outcome).increment(1);
        Ok(tried)
    }

    /// Reads the state under the source's lock, decides, appends and projects in one
    /// transaction. Leaves `known` at the head as seen under the lock (or after the write).
    async fn run_locked(
        &self,
        source: &dyn LockingSource<A>,
        caller: &Caller,
        id: AggregateId,
        command: &A::Command,
        options: &CommandOptions,
        known: &mut Option<KnownHead>,
    ) -> Result<Executed, ExecutorError<A::Error>> {
        let creates = A::creates(command);
        let mut tx = self.store.pool().begin().await.map_err(StoreError::from)?;
        // A create without a key reads nothing: a new aggregate has no row to lock, and one that
        // exists after all is refused by the append (its first sequence is taken) as `Exists`.
        // One round trip less for every create.
        let current = if creates && options.idempotency_key.is_none() {
            None
        } else {
            source.read(&mut tx, caller.tenant, id, command).await?
        };
        if let Some(current) = &current {
            *known = Some(KnownHead { tenant: caller.tenant, head: current.head, open: self.open(&current.state) });
        }
        // Checked under the lock: a retry waits for the first attempt and then finds it.
        if let Some(key) = &options.idempotency_key
            && let Some(first) = self.store.find_idempotent(&mut tx, caller.tenant, key).await?
        {
            return Ok(first);
        }
        let (state, expected) = match current {
            Some(current) => (current.state, Expected::Head(current.head)),
            None => (A::default(), Expected::NoStream),
        };
        self.check(creates, id, version_of(expected), options)?;
        let events = state.decide(command, &self.services).map_err(ExecutorError::Rule)?;
        let append = self.append_of(caller, id, expected, &events, options.idempotency_key.clone())?;
        let race = |e| ExecutorError::exists_if_create_race(e, creates, A::AGGREGATE_TYPE, id);
        let done = self.store.append_in_tx(&mut tx, &append).await.map_err(race)?;
        if !done.replayed
            && let Some(projector) = &self.projector
        {
            projector.project(&mut tx, &done.events).await.map_err(race)?;
        }
        tx.commit().await.map_err(StoreError::from)?;
        self.store.committed(&done);
        if !done.replayed {
            state.committed(&events);
        }
        self.remember(known, caller.tenant, &done, state, &events);
        Ok(done)
    }

    /// Replays the state, decides and appends (projecting in the append's transaction); a lost
    /// race is decided again on the new state unless the caller named a version.
    async fn run_replayed(
        &self,
        caller: &Caller,
        id: AggregateId,
        command: &A::Command,
        options: &CommandOptions,
        known: &mut Option<KnownHead>,
    ) -> Result<Executed, ExecutorError<A::Error>> {
        if let Some(key) = &options.idempotency_key {
            let mut conn = self.store.pool().acquire().await.map_err(StoreError::from)?;
            if let Some(first) = self.store.find_idempotent(&mut conn, caller.tenant, key).await? {
                return Ok(first);
            }
        }
        let creates = A::creates(command);
        for attempt in 1..=ATTEMPTS {
            let (state, expected) = match self.store.load::<Folded<A>>(caller.tenant, id).await {
                Ok(loaded) => {
                    let expected = loaded.expected();
                    (loaded.state.0, expected)
                }
                Err(StoreError::NotFound(_)) => (A::default(), Expected::NoStream),
                Err(e) => return Err(e.into()),
            };
            let version = version_of(expected);
            self.check(creates, id, version, options)?;
            let events = state.decide(command, &self.services).map_err(ExecutorError::Rule)?;
            let append = self.append_of(caller, id, expected, &events, options.idempotency_key.clone())?;
            let appended = match &self.projector {
                Some(projector) => self.store.append_with(append, projector.as_ref()).await,
                None => self.store.append(append).await,
            };
            match appended {
                Ok(done) => {
                    if !done.replayed {
                        state.committed(&events);
                    }
                    self.remember(known, caller.tenant, &done, state, &events);
                    return Ok(done);
                }
                // Another writer went first. A caller who named no version asked for the current
                // state: decide again on it.
                Err(StoreError::Conflict { .. })
                    if !creates && options.expected_version.is_none() && attempt < ATTEMPTS =>
                {
                    tracing::debug!(aggregate = %id, attempt, "another process went first; deciding again");
                    tokio::time::sleep(std::time::Duration::from_millis(5 << attempt)).await;
                }
                Err(e @ StoreError::Conflict { .. }) if creates => {
                    return Err(ExecutorError::exists_if_create_race(e, creates, A::AGGREGATE_TYPE, id));
                }
                Err(StoreError::Conflict { .. }) => {
                    return Err(ExecutorError::Moved { kind: A::AGGREGATE_TYPE, id, expected: version });
                }
                Err(e) => return Err(ExecutorError::exists_if_create_race(e, creates, A::AGGREGATE_TYPE, id)),
            }
        }
        Err(ExecutorError::Moved { kind: A::AGGREGATE_TYPE, id, expected: 0 })
    }

    /// The checks every command passes before it is decided: it creates what is absent or
    /// changes what exists, at the version the caller named.
    fn check(
        &self,
        creates: bool,
        id: AggregateId,
        version: u64,
        options: &CommandOptions,
    ) -> Result<(), ExecutorError<A::Error>> {
        let kind = A::AGGREGATE_TYPE;
        match (creates, version > 0) {
            (true, true) => return Err(ExecutorError::Exists(kind, id)),
            (false, false) => return Err(ExecutorError::NotFound(kind, id)),
            _ => {}
        }
        match options.expected_version {
            Some(wanted) if wanted != version => {
                Err(ExecutorError::Stale { kind, id, expected: wanted, actual: version })
            }
            _ => Ok(()),
        }
    }

    fn open(&self, state: &A) -> bool {
        self.assuming.as_ref().is_some_and(|a| a.open(state))
    }

    /// After a write, the head the one-statement path may build on next. Only a domain with
    /// that path needs it: others skip folding the events they just wrote.
    fn remember(
        &self,
        known: &mut Option<KnownHead>,
        tenant: TenantId,
        done: &Appended,
        mut state: A,
        events: &[A::Event],
    ) {
        if done.replayed || self.assuming.is_none() {
            return;
        }
        for event in events {
            state.apply(event);
        }
        *known = Some(KnownHead { tenant, head: head_of(done), open: self.open(&state) });
    }

    fn append_of(
        &self,
        caller: &Caller,
        id: AggregateId,
        expected: Expected,
        events: &[A::Event],
        idempotency_key: Option<String>,
    ) -> Result<Append, ExecutorError<A::Error>> {
        let command_id = CommandId::new();
        let aggregate_type = A::AGGREGATE_TYPE.parse().map_err(|e: cim_core::NameError| ExecutorError::Invalid {
            field: "aggregate_type",
            reason: e.to_string(),
        })?;
        Ok(Append {
            context: EventContext {
                domain: A::DOMAIN,
                aggregate_type,
                aggregate_id: id,
                tenant_id: caller.tenant,
                actor: caller.actor.clone(),
                correlation_id: caller.correlation.unwrap_or_else(|| command_id.as_root_correlation()),
                causation_id: command_id.as_causation(),
            },
            expected,
            events: events.iter().map(DomainEvent::to_new_event).collect(),
            idempotency_key,
        })
    }

    /// The aggregate after its first `version` events, folded from its verified history.
    pub async fn at_version(
        &self,
        tenant: TenantId,
        id: AggregateId,
        version: u64,
    ) -> Result<AsOf<A>, ExecutorError<A::Error>> {
        if version == 0 {
            return Err(ExecutorError::Invalid { field: "version", reason: "must be at least 1".into() });
        }
        let history = match self.store.history_of(tenant, id, A::AGGREGATE_TYPE).await {
            Ok(history) if !history.is_empty() => history,
            Ok(_) | Err(StoreError::NotFound(_)) => return Err(ExecutorError::NotFound(A::AGGREGATE_TYPE, id)),
            Err(e) => return Err(e.into()),
        };
        if version > history.len() as u64 {
            return Err(ExecutorError::Invalid {
                field: "version",
                reason: format!("{} {id} has {} versions", A::AGGREGATE_TYPE, history.len()),
            });
        }
        let mut state = A::default();
        let seen = &history[..version as usize];
        for envelope in seen {
            let event = A::Event::from_envelope(envelope)
                .map_err(|e| StoreError::Corrupt(format!("event {}: {e}", envelope.event_id)))?;
            state.apply(&event);
        }
        Ok(AsOf { state, version, created_at: seen[0].occurred_at, updated_at: seen[seen.len() - 1].occurred_at })
    }
}

fn head_of(done: &Appended) -> HeadToken {
    done.head_token()
}

fn version_of(expected: Expected) -> u64 {
    match expected {
        Expected::Head(head) => head.version(),
        _ => 0,
    }
}
