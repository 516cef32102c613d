//! [`CommandExecutor`]: one command path for every replayed aggregate.

use std::marker::PhantomData;

use cim_core::events::DomainEvent;
use cim_core::{AggregateId, CommandId, ErrorCode, EventContext, FieldViolation, TenantId};
use cim_eventstore::{Append, Appended, EventStore, Expected, Projector, StoreError};
use cim_runtime::edge::Caller;
use cim_runtime::status::HasErrorCode;

use crate::{Aggregate, Folded};

/// Counts every command by service, command and outcome (`ok` or the error's stable code).
pub const COMMANDS_TOTAL: &str = "cim_commands_total";

/// How often a command is decided again after another process moved the aggregate first.
const ATTEMPTS: usize = 5;

/// Commands on one aggregate queue in this process (on one of this many locks, picked by the
/// aggregate's id) instead of racing each other to the store and deciding again; only writers
/// in other processes can still move an aggregate between a load and its append.
const AGGREGATE_LOCKS: usize = 64;

/// What a caller may say about how a command runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOptions {
    /// Refuse (conflict) unless the aggregate is at this version.
    pub expected_version: Option<u64>,
    /// A retry with the same key gets the first answer and changes nothing.
    pub idempotency_key: Option<String>,
}

/// What [`CommandExecutor::execute`] answers.
pub type Executed = Appended;

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError<E> {
    /// The aggregate's own rules refused the command.
    #[error(transparent)]
    Rule(E),
    #[error("{0} {1} not found")]
    NotFound(&'static str, AggregateId),
    #[error("{0} {1} already exists")]
    Exists(&'static str, AggregateId),
    #[error("{kind} {id} is at version {actual}, not the expected {expected}")]
    Stale { kind: &'static str, id: AggregateId, expected: u64, actual: u64 },
    #[error("{kind} {id} moved on while the command ran (expected version {expected}); reload and retry")]
    Moved { kind: &'static str, id: AggregateId, expected: u64 },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<E: HasErrorCode> HasErrorCode for ExecutorError<E> {
    fn code(&self) -> ErrorCode {
        match self {
            ExecutorError::Rule(e) => e.code(),
            ExecutorError::NotFound(..) | ExecutorError::Store(StoreError::NotFound(_)) => ErrorCode::NotFound,
            ExecutorError::Exists(..) => ErrorCode::AlreadyExists,
            ExecutorError::Stale { .. } | ExecutorError::Moved { .. } => ErrorCode::Conflict,
            ExecutorError::Invalid { .. } => ErrorCode::InvalidArgument,
            ExecutorError::Store(e) => e.code(),
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            ExecutorError::Rule(e) => e.violations(),
            ExecutorError::Invalid { field, reason } => vec![FieldViolation::new(*field, reason.clone())],
            _ => vec![],
        }
    }
}

/// Runs commands of one aggregate type against one service's event store.
pub struct CommandExecutor<A> {
    store: EventStore,
    service: &'static str,
    locks: std::sync::Arc<[tokio::sync::Mutex<()>]>,
    projector: Option<std::sync::Arc<dyn Projector>>,
    aggregate: PhantomData<fn() -> A>,
}

impl<A> std::fmt::Debug for CommandExecutor<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandExecutor")
            .field("service", &self.service)
            .field("projected", &self.projector.is_some())
            .finish_non_exhaustive()
    }
}

impl<A> Clone for CommandExecutor<A> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            service: self.service,
            locks: self.locks.clone(),
            projector: self.projector.clone(),
            aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> CommandExecutor<A> {
    /// `service` labels the command metrics (`document`, ...).
    pub fn new(store: EventStore, service: &'static str) -> Self {
        let locks = (0..AGGREGATE_LOCKS).map(|_| tokio::sync::Mutex::new(())).collect();
        Self { store, service, locks, projector: None, aggregate: PhantomData }
    }

    /// Runs `projector` in every append's transaction: the domain's read tables change exactly
    /// when its events commit.
    pub fn with_projector(mut self, projector: impl Projector + 'static) -> Self {
        self.projector = Some(std::sync::Arc::new(projector));
        self
    }

    /// The aggregate's current state and version (snapshot plus later events).
    pub async fn load(&self, tenant: TenantId, id: AggregateId) -> Result<(A, u64), ExecutorError<A::Error>> {
        match self.store.load::<Folded<A>>(tenant, id).await {
            Ok(loaded) => Ok((loaded.state.0, loaded.version)),
            Err(StoreError::NotFound(_)) => Err(ExecutorError::NotFound(A::AGGREGATE_TYPE, id)),
            Err(e) => Err(e.into()),
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.store
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
        result
    }

    async fn run(
        &self,
        caller: &Caller,
        id: AggregateId,
        command: &A::Command,
        options: &CommandOptions,
    ) -> Result<Executed, ExecutorError<A::Error>> {
        if let Some(key) = &options.idempotency_key {
            if key.is_empty() || key.len() > 200 || key.chars().any(char::is_control) {
                return Err(ExecutorError::Invalid {
                    field: "options.idempotency_key",
                    reason: "1 to 200 bytes, no control characters".into(),
                });
            }
            let mut conn = self.store.pool().acquire().await.map_err(StoreError::from)?;
            if let Some(first) = self.store.find_idempotent(&mut conn, caller.tenant, key).await? {
                return Ok(first);
            }
        }
        let kind = A::AGGREGATE_TYPE;
        let creates = A::creates(command);
        let stripe = id.as_uuid().as_u128() as usize % self.locks.len();
        let _queued = self.locks[stripe].lock().await;
        for attempt in 1..=ATTEMPTS {
            let (state, expected, version) = match self.store.load::<Folded<A>>(caller.tenant, id).await {
                Ok(loaded) => {
                    let expected = loaded.expected();
                    (loaded.state.0, expected, loaded.version)
                }
                Err(StoreError::NotFound(_)) => (A::default(), Expected::NoStream, 0),
                Err(e) => return Err(e.into()),
            };
            match (creates, version > 0) {
                (true, true) => return Err(ExecutorError::Exists(kind, id)),
                (false, false) => return Err(ExecutorError::NotFound(kind, id)),
                _ => {}
            }
            if let Some(wanted) = options.expected_version
                && wanted != version
            {
                return Err(ExecutorError::Stale { kind, id, expected: wanted, actual: version });
            }
            let events = state.decide(command).map_err(ExecutorError::Rule)?;
            let append = self.append_of(caller, id, expected, &events, options.idempotency_key.clone())?;
            let appended = match &self.projector {
                Some(projector) => self.store.append_with(append, projector.as_ref()).await,
                None => self.store.append(append).await,
            };
            match appended {
                Ok(done) => return Ok(done),
                // Two creates of one id: the loser sees the winner's sequence 1.
                Err(StoreError::Conflict { .. }) if creates => return Err(ExecutorError::Exists(kind, id)),
                // Another writer went first. A caller who named no version asked for the current
                // state: decide again on it.
                Err(StoreError::Conflict { .. }) if options.expected_version.is_none() && attempt < ATTEMPTS => {
                    tracing::debug!(aggregate = %id, attempt, "another process went first; deciding again");
                    tokio::time::sleep(std::time::Duration::from_millis(5 << attempt)).await;
                }
                Err(StoreError::Conflict { .. }) => return Err(ExecutorError::Moved { kind, id, expected: version }),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ExecutorError::Moved { kind, id, expected: 0 })
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

    /// The state after the aggregate's first `version` events, folded from its verified history.
    pub async fn at_version(
        &self,
        tenant: TenantId,
        id: AggregateId,
        version: u64,
    ) -> Result<A, ExecutorError<A::Error>> {
        if version == 0 {
            return Err(ExecutorError::Invalid { field: "version", reason: "must be at least 1".into() });
        }
        let history = match self.store.history(tenant, id).await {
            Ok(history) => history,
            Err(StoreError::NotFound(_)) => return Err(ExecutorError::NotFound(A::AGGREGATE_TYPE, id)),
            Err(e) => return Err(e.into()),
        };
        if version > history.len() as u64 {
            return Err(ExecutorError::Invalid {
                field: "version",
                reason: format!("{} {id} has {} versions", A::AGGREGATE_TYPE, history.len()),
            });
        }
        let mut state = A::default();
        for envelope in history.iter().take(version as usize) {
            let event = A::Event::from_envelope(envelope)
                .map_err(|e| StoreError::Corrupt(format!("event {}: {e}", envelope.event_id)))?;
            state.apply(&event);
        }
        Ok(state)
    }
}
