//! The command path: the one-statement write for commands decided on assumed facts (group
//! commit), else one transaction that locks the graph's row, reads the facts the command
//! needs, decides, appends and projects.

use super::*;

impl GraphApi {
    pub fn new(store: EventStore, limits: Limits, query: QueryLimits) -> Self {
        crate::metrics::describe();
        let pool = store.pool().clone();
        let group = GroupCommit::start(store.clone());
        Self { store, pool, limits, query, heads: std::sync::Arc::new(Heads::new(KNOWN_HEADS)), group }
    }

    pub(super) async fn execute(
        &self,
        caller: Caller,
        graph: AggregateId,
        command: GraphCommand,
        options: Option<pb::CommandOptions>,
        kind: &'static str,
    ) -> Result<pb::CommandResponse, ServiceError> {
        let result = self.execute_inner(&caller, graph, &command, options).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code().as_str(),
        };
        metrics::counter!(COMMANDS_TOTAL, "command" => kind, "outcome" => outcome).increment(1);
        result
    }

    async fn execute_inner(
        &self,
        caller: &Caller,
        graph: AggregateId,
        command: &GraphCommand,
        options: Option<pb::CommandOptions>,
    ) -> Result<pb::CommandResponse, ServiceError> {
        let options = options.unwrap_or_default();
        let key = match options.idempotency_key.as_str() {
            "" => None,
            k if k.len() > 200 || k.chars().any(char::is_control) => {
                return Err(ServiceError::invalid(
                    "options.idempotency_key",
                    "at most 200 bytes, no control characters",
                ));
            }
            k => Some(k.to_owned()),
        };
        let mut known = self.heads.lock(graph).await;
        if key.is_none()
            && let Some(head) = *known
            && head.tenant == caller.tenant
            && !head.archived
            && options.expected_version.is_none_or(|v| v == head.version)
            && let Some((events, assumed)) = decide_assuming(command, &self.limits)
        {
            let append = self.append_of(caller, graph, HeadToken::from_projection(head.version, head.head), &events)?;
            *known = None;
            if let Some(done) = self.group.append(&append, &events, &assumed).await? {
                metrics::counter!(FAST_WRITES_TOTAL, "outcome" => "hit").increment(1);
                *known = Some(KnownHead { version: done.version, head: done.head, ..head });
                return Ok(response(done));
            }
            metrics::counter!(FAST_WRITES_TOTAL, "outcome" => "miss").increment(1);
            // The head or a fact differed: the locked path below decides on what is there.
        }
        self.execute_locked(caller, graph, command, &options, key, &mut known).await
    }

    fn append_of(
        &self,
        caller: &Caller,
        graph: AggregateId,
        head: HeadToken,
        events: &[cim_core::events::graph::GraphEvent],
    ) -> Result<Append, ServiceError> {
        self.append_with(caller, graph, Expected::Head(head), events, None)
    }

    fn append_with(
        &self,
        caller: &Caller,
        graph: AggregateId,
        expected: Expected,
        events: &[cim_core::events::graph::GraphEvent],
        idempotency_key: Option<String>,
    ) -> Result<Append, ServiceError> {
        let command_id = CommandId::new();
        Ok(Append {
            context: EventContext {
                domain: Domain::Graph,
                aggregate_type: AGGREGATE_TYPE
                    .parse()
                    .map_err(|e: cim_core::NameError| ServiceError::invalid("aggregate_type", e.to_string()))?,
                aggregate_id: graph,
                tenant_id: caller.tenant,
                actor: caller.actor.clone(),
                correlation_id: caller.correlation.unwrap_or_else(|| command_id.as_root_correlation()),
                causation_id: command_id.as_causation(),
            },
            expected,
            events: events.iter().map(|e| e.to_new_event()).collect(),
            idempotency_key,
        })
    }

    /// Reads the facts under the graph's row lock, decides, appends and projects in one
    /// transaction. Leaves `known` at the graph's head as seen under the lock (or after the write).
    async fn execute_locked(
        &self,
        caller: &Caller,
        graph: AggregateId,
        command: &GraphCommand,
        options: &pb::CommandOptions,
        key: Option<String>,
        known: &mut Option<KnownHead>,
    ) -> Result<pb::CommandResponse, ServiceError> {
        let creating = matches!(command, GraphCommand::Create { .. });
        let mut tx = self.pool.begin().await?;
        let locked = lock_graph(&mut tx, caller.tenant, graph).await?;
        if let Some(g) = &locked {
            *known = Some(KnownHead { tenant: caller.tenant, version: g.version, head: g.head, archived: g.archived });
        }
        if let Some(key) = &key
            && let Some(done) = self.store.find_idempotent(&mut tx, caller.tenant, key).await?
        {
            return Ok(response(done));
        }
        let mut state = GraphState::default();
        let expected = match &locked {
            Some(g) => {
                if let Some(v) = options.expected_version
                    && v != g.version
                {
                    return Err(ServiceError::Stale { expected: v, actual: g.version });
                }
                state.exists = true;
                state.archived = g.archived;
                metrics::histogram!(GRAPH_SIZE_NODES).record(g.node_count as f64);
                Expected::Head(HeadToken::from_projection(g.version, g.head))
            }
            None if creating => {
                if let Some(v) = options.expected_version.filter(|v| *v != 0) {
                    return Err(ServiceError::Stale { expected: v, actual: 0 });
                }
                Expected::NoStream
            }
            None => return Err(ServiceError::GraphNotFound),
        };
        load_facts(&mut tx, graph, &command.needs(), &mut state).await?;
        let events = decide(&state, command, &self.limits)?;
        let append = self.append_with(caller, graph, expected, &events, key)?;
        let done = match self.store.append_in_tx(&mut tx, &append).await {
            Ok(done) => done,
            // Two creates of one id: the loser sees the winner's sequence 1.
            Err(StoreError::Conflict { .. }) if creating => {
                return Err(ServiceError::Domain(crate::domain::GraphError::GraphExists));
            }
            Err(e) => return Err(e.into()),
        };
        if !done.replayed {
            project(&mut tx, caller.tenant, &done.events).await.map_err(|e| match e {
                ServiceError::Database(ref db) if creating && is_unique_violation(db) => {
                    ServiceError::Domain(crate::domain::GraphError::GraphExists)
                }
                other => other,
            })?;
        }
        tx.commit().await?;
        self.store.committed(&done);
        if !done.replayed {
            let archived = state.archived || matches!(command, GraphCommand::Archive);
            *known = Some(KnownHead { tenant: caller.tenant, version: done.version, head: done.head, archived });
        }
        Ok(response(done))
    }

    pub(super) async fn timed<T>(
        &self,
        query: &'static str,
        f: impl std::future::Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        let started = Instant::now();
        let r = f.await;
        metrics::histogram!(QUERY_DURATION_SECONDS, "query" => query).record(started.elapsed().as_secs_f64());
        r
    }
}

pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

pub(super) fn response(done: cim_eventstore::Appended) -> pb::CommandResponse {
    use cim_core::events::graph::GraphEvent;
    let (mut created_node_ids, mut created_edge_ids) = (Vec::new(), Vec::new());
    for event in done.events.iter().filter_map(|e| GraphEvent::from_envelope(e).ok()) {
        match event {
            GraphEvent::NodeAdded(n) => created_node_ids.push(n.node_id.to_string()),
            GraphEvent::EdgeAdded(e) => created_edge_ids.push(e.edge_id.to_string()),
            _ => {}
        }
    }
    pb::CommandResponse {
        graph_id: done.aggregate_id.to_string(),
        version: done.version,
        event_ids: done.event_ids.iter().map(ToString::to_string).collect(),
        replayed: done.replayed,
        created_node_ids,
        created_edge_ids,
    }
}
