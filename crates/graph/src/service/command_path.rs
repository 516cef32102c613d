//! The command path is the kit's executor: the one-statement write for commands decided on
//! assumed facts ([`GraphStatement`]), else one transaction that locks the graph's row, reads
//! the facts the command needs ([`GraphFacts`]), decides, appends and projects.

use super::*;

impl GraphApi {
    pub fn new(store: EventStore, limits: Limits, query: QueryLimits) -> Self {
        crate::metrics::describe();
        let pool = store.pool().clone();
        let executor = CommandExecutor::with_services(store, "graph", limits)
            .with_projector(GraphProjection)
            .with_locking_source(GraphFacts)
            .with_one_statement(GraphStatement);
        Self { executor, pool, query }
    }

    pub(super) async fn execute(
        &self,
        caller: Caller,
        graph: AggregateId,
        command: GraphCommand,
        options: Option<cim_proto::common::CommandOptions>,
    ) -> Result<pb::CommandResponse, ServiceError> {
        let options = CommandOptions::from(options);
        Ok(response(self.executor.execute(&caller, graph, &command, &options).await?))
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
