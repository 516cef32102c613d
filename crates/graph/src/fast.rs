//! The one-round-trip write for commands that only add nodes and edges (most writes).
//!
//! The locked path costs six round trips (BEGIN, lock the graph row, read facts, append,
//! project, COMMIT). Here the service remembers each graph's head from its own last write,
//! decides on assumed facts ([`decide_assuming`]) and sends one statement that locks the graph
//! row, checks the head and the facts, appends the events and writes the projection. If anything
//! differs (another instance wrote, a node exists, the graph was archived) the statement writes
//! nothing and the caller takes the locked path, which reports the real outcome. Lock order is
//! the same as the locked path's (graph row first), so the two never deadlock.
//!
//! Commands on one graph are also serialized inside the process ([`Heads::lock`]): they would
//! queue on the row lock anyway, and queueing here means each one finds a fresh head instead of
//! failing its check and paying for the locked path.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use cim_core::events::graph::GraphEvent;
use cim_core::{AggregateId, EventHash, TenantId};
use cim_eventstore::{Append, Appended, EventStore, StoreError};
use tokio::sync::OwnedMutexGuard;

use crate::domain::Assumed;

/// A graph's head as this process last wrote or read it under the row lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownHead {
    pub tenant: TenantId,
    pub version: u64,
    pub head: EventHash,
    pub archived: bool,
}

type Slot = Arc<tokio::sync::Mutex<Option<KnownHead>>>;

/// Per-graph heads and in-process write queues, bounded.
#[derive(Debug)]
pub struct Heads {
    slots: Mutex<HashMap<AggregateId, Slot>>,
    capacity: usize,
}

impl Heads {
    pub fn new(capacity: usize) -> Self {
        Self { slots: Mutex::new(HashMap::new()), capacity: capacity.max(1) }
    }

    /// Waits for this process's other commands on `graph`, then gives the graph's known head.
    pub async fn lock(&self, graph: AggregateId) -> OwnedMutexGuard<Option<KnownHead>> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if slots.len() >= self.capacity && !slots.contains_key(&graph) {
                // Forget graphs nobody is writing right now; they cost one locked write later.
                slots.retain(|_, slot| Arc::strong_count(slot) > 1);
            }
            slots.entry(graph).or_default().clone()
        };
        slot.lock_owned().await
    }
}

/// The guard: the graph row, locked, only if it is still at the known head and every assumed
/// fact holds. Caller parameters: `$18` version, `$19` head hash, `$20` nodes that must be
/// absent, `$21` nodes that must be present, `$22` edges that must be absent.
///
/// Each id is looked up on its own through the primary key (`OFFSET 0` keeps the lateral
/// subquery from being flattened into a join the planner may turn into a scan). The plain form,
/// `node_id = ANY($20)`, got a generic plan scanning every node of the graph through
/// `nodes_by_type (graph_id, …)`: the cost of adding a node grew with the graph.
const GUARD_HEAD: &str = "SELECT graph_id FROM graphs \
    WHERE graph_id = $1 AND tenant_id = $8 AND version = $18 AND head_hash = $19 AND NOT archived \
      AND NOT EXISTS (SELECT 1 FROM unnest($20::text[]) AS a(id) \
          CROSS JOIN LATERAL (SELECT 1 FROM nodes WHERE graph_id = $1 AND node_id = a.id OFFSET 0) x) ";
const GUARD_EDGES: &str = "AND (SELECT count(*) FROM unnest($21::text[]) AS a(id) \
          CROSS JOIN LATERAL (SELECT 1 FROM nodes WHERE graph_id = $1 AND node_id = a.id OFFSET 0) x) \
          = cardinality($21::text[]) \
      AND NOT EXISTS (SELECT 1 FROM unnest($22::text[]) AS a(id) \
          CROSS JOIN LATERAL (SELECT 1 FROM edges WHERE graph_id = $1 AND edge_id = a.id OFFSET 0) x) ";

/// The projection writes: `$23..$25` nodes, `$26..$30` edges, `$31`/`$32` count deltas.
const INSERT_NODES: &str = ", n AS ( \
        INSERT INTO nodes (graph_id, node_id, node_type, properties) \
        SELECT g.graph_id, u.id, u.ty, u.props::jsonb \
        FROM guard g, unnest($23::text[], $24::text[], $25::text[]) AS u(id, ty, props) \
    )";
const INSERT_EDGES: &str = ", e AS ( \
        INSERT INTO edges (graph_id, edge_id, edge_type, source, target, properties) \
        SELECT g.graph_id, u.id, u.ty, u.s, u.t, u.props::jsonb \
        FROM guard g, unnest($26::text[], $27::text[], $28::text[], $29::text[], $30::text[]) AS u(id, ty, s, t, props) \
    )";
const UPDATE_GRAPH: &str = ", up AS ( \
        UPDATE graphs SET version = $16, head_hash = ($13::bytea[])[cardinality($13::bytea[])], updated_at = $7, \
            node_count = node_count + $31, edge_count = edge_count + $32 \
        FROM guard g WHERE graphs.graph_id = g.graph_id \
    )";

/// The full statement, and one for additions of nodes alone (most writes: `AddNode`): it leaves
/// out the edge checks and the edge insert, whose executor start-up (opening `edges` and its
/// three indexes, planning-tree initialisation) was a large share of the statement's CPU. It
/// takes the same parameters; the ones it does not use are ignored.
static SQL: LazyLock<String> = LazyLock::new(|| {
    let guard = format!("{GUARD_HEAD}{GUARD_EDGES}FOR UPDATE");
    cim_eventstore::guarded_append_sql(&guard, &format!("{INSERT_NODES}{INSERT_EDGES}{UPDATE_GRAPH}"))
});
static SQL_NODES_ONLY: LazyLock<String> = LazyLock::new(|| {
    let guard = format!("{GUARD_HEAD}FOR UPDATE");
    cim_eventstore::guarded_append_sql(&guard, &format!("{INSERT_NODES}{UPDATE_GRAPH}"))
});

fn texts<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

/// Appends `append` (whose events are `events`, decided on `assumed`) and projects it in one
/// statement. `Ok(None)`: the head or an assumption did not hold and nothing was written.
pub async fn append(
    store: &EventStore,
    append: &Append,
    events: &[GraphEvent],
    assumed: &Assumed,
    known: &KnownHead,
) -> Result<Option<Appended>, StoreError> {
    let mut nodes: [Vec<String>; 3] = Default::default();
    let mut edges: [Vec<String>; 5] = Default::default();
    for event in events {
        match event {
            GraphEvent::NodeAdded(e) => {
                nodes[0].push(e.node_id.to_string());
                nodes[1].push(e.node_type.to_string());
                nodes[2].push(serde_json::to_string(&e.properties).map_err(|e| StoreError::Invalid(e.to_string()))?);
            }
            GraphEvent::EdgeAdded(e) => {
                edges[0].push(e.edge_id.to_string());
                edges[1].push(e.edge_type.to_string());
                edges[2].push(e.source.to_string());
                edges[3].push(e.target.to_string());
                edges[4].push(serde_json::to_string(&e.properties).map_err(|e| StoreError::Invalid(e.to_string()))?);
            }
            other => return Err(StoreError::Invalid(format!("{} is not an addition", other.event_type()))),
        }
    }
    let (dn, de) = (nodes[0].len() as i64, edges[0].len() as i64);
    let absent_nodes = texts(&assumed.absent_nodes);
    let present_nodes = texts(&assumed.present_nodes);
    let absent_edges = texts(&assumed.absent_edges);
    let nodes_only = edges[0].is_empty() && present_nodes.is_empty() && absent_edges.is_empty();
    let sql = if nodes_only { SQL_NODES_ONLY.as_str() } else { SQL.as_str() };
    store
        .append_guarded(append, sql, move |q| {
            let [n_id, n_ty, n_props] = nodes;
            let [e_id, e_ty, e_s, e_t, e_props] = edges;
            q.bind(known.version as i64)
                .bind(known.head.as_bytes().to_vec())
                .bind(absent_nodes)
                .bind(present_nodes)
                .bind(absent_edges)
                .bind(n_id)
                .bind(n_ty)
                .bind(n_props)
                .bind(e_id)
                .bind(e_ty)
                .bind(e_s)
                .bind(e_t)
                .bind(e_props)
                .bind(dn)
                .bind(de)
        })
        .await
}
