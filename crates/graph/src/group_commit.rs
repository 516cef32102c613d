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
//! Commands of different graphs share that statement ([`GroupCommit`]): whatever arrives while
//! earlier groups are being written goes in the next one, so under load one round trip, one
//! executor start-up and one commit serve many commands.
//!
//! Commands on one graph are also serialized inside the process ([`Heads::lock`]): they would
//! queue on the row lock anyway, and queueing here means each one finds a fresh head instead of
//! failing its check and paying for the locked path.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use cim_core::events::graph::GraphEvent;
use cim_core::{AggregateId, EventHash, TenantId};
use cim_eventstore::{Append, Appended, EventStore, SealedAppend, StoreError};
use tokio::sync::{OwnedMutexGuard, mpsc, oneshot};

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

/// The guard over a group of commands (see [`cim_eventstore::guarded_append_many_sql`]): each
/// graph row, locked in id order (so concurrent groups never deadlock), only if it is still at
/// the head its command assumed and every assumed fact holds. Caller parameters: `$23`/`$24`
/// nodes that must be absent, `$25`/`$26` nodes that must be present, `$27`/`$28` edges that
/// must be absent (each as graph and id), `$29` the commands' graphs with `$30` how many present
/// nodes each assumed.
///
/// Each id is looked up on its own through the primary key (`OFFSET 0` keeps the lateral
/// subquery from being flattened into a join the planner may turn into a scan). The plain form,
/// `node_id = ANY($n)`, got a generic plan scanning every node of the graph through
/// `nodes_by_type (graph_id, …)`: the cost of adding a node grew with the graph.
const CLASH_NODES: &str = "clash AS ( \
        SELECT a.gid FROM unnest($23::uuid[], $24::text[]) AS a(gid, id) \
        CROSS JOIN LATERAL (SELECT 1 FROM nodes WHERE graph_id = a.gid AND node_id = a.id OFFSET 0) x";
const FOUND: &str = "found AS ( \
        SELECT a.gid FROM unnest($25::uuid[], $26::text[]) AS a(gid, id) \
        CROSS JOIN LATERAL (SELECT 1 FROM nodes WHERE graph_id = a.gid AND node_id = a.id OFFSET 0) x \
    ), ";
const CLASH_EDGES: &str = " UNION ALL \
        SELECT a.gid FROM unnest($27::uuid[], $28::text[]) AS a(gid, id) \
        CROSS JOIN LATERAL (SELECT 1 FROM edges WHERE graph_id = a.gid AND edge_id = a.id OFFSET 0) x \
        UNION ALL \
        SELECT p.gid FROM unnest($29::uuid[], $30::bigint[]) AS p(gid, want) \
        WHERE p.want <> (SELECT count(*) FROM found f WHERE f.gid = p.gid)";
const GUARD: &str = " ), guard AS ( \
        SELECT g.graph_id AS aggregate_id FROM graphs g JOIN cmd c ON g.graph_id = c.aggregate_id \
        WHERE g.tenant_id = c.tenant_id AND g.version = c.version AND g.head_hash = c.head AND NOT g.archived \
          AND g.graph_id NOT IN (SELECT gid FROM clash) \
        ORDER BY g.graph_id FOR UPDATE OF g \
    )";

/// The projection writes: `$33..$36` nodes, `$37..$42` edges (each with its graph), `$31`/`$32`
/// the commands' count deltas (aligned with `$29`).
const INSERT_NODES: &str = ", n AS ( \
        INSERT INTO nodes (graph_id, node_id, node_type, properties) \
        SELECT u.gid, u.id, u.ty, u.props::jsonb \
        FROM unnest($33::uuid[], $34::text[], $35::text[], $36::text[]) AS u(gid, id, ty, props) \
        WHERE u.gid = ANY (ARRAY(SELECT aggregate_id FROM guard)) \
    )";
const INSERT_EDGES: &str = ", e AS ( \
        INSERT INTO edges (graph_id, edge_id, edge_type, source, target, properties) \
        SELECT u.gid, u.id, u.ty, u.s, u.t, u.props::jsonb \
        FROM unnest($37::uuid[], $38::text[], $39::text[], $40::text[], $41::text[], $42::text[]) \
            AS u(gid, id, ty, s, t, props) \
        WHERE u.gid = ANY (ARRAY(SELECT aggregate_id FROM guard)) \
    )";
const UPDATE_GRAPHS: &str = ", up AS ( \
        UPDATE graphs SET version = c.new_version, head_hash = c.new_head, updated_at = c.occurred_at, \
            node_count = node_count + d.dn, edge_count = edge_count + d.de \
        FROM cmd c JOIN unnest($29::uuid[], $31::bigint[], $32::bigint[]) AS d(aggregate_id, dn, de) USING (aggregate_id) \
        WHERE graphs.graph_id = c.aggregate_id AND c.aggregate_id = ANY (ARRAY(SELECT aggregate_id FROM guard)) \
    )";

/// The full statement, and one for groups that only add nodes (most writes: `AddNode`): it
/// leaves out the edge checks and the edge insert, whose executor start-up (opening `edges` and
/// its three indexes) was a large share of a small statement's CPU. Both take the same
/// parameters; the ones it does not use are ignored.
static SQL: LazyLock<String> = LazyLock::new(|| {
    cim_eventstore::guarded_append_many_sql(
        &format!("{FOUND}{CLASH_NODES}{CLASH_EDGES}{GUARD}"),
        &format!("{INSERT_NODES}{INSERT_EDGES}{UPDATE_GRAPHS}"),
    )
});
static SQL_NODES_ONLY: LazyLock<String> = LazyLock::new(|| {
    cim_eventstore::guarded_append_many_sql(&format!("{CLASH_NODES}{GUARD}"), &format!("{INSERT_NODES}{UPDATE_GRAPHS}"))
});

/// One command's projection rows and assumptions, as text for the statement's arrays.
#[derive(Debug, Default)]
struct Additions {
    absent_nodes: Vec<String>,
    present_nodes: Vec<String>,
    absent_edges: Vec<String>,
    /// Node id, type, properties (JSON).
    nodes: [Vec<String>; 3],
    /// Edge id, type, source, target, properties (JSON).
    edges: [Vec<String>; 5],
}

impl Additions {
    fn new(events: &[GraphEvent], assumed: &Assumed) -> Result<Self, StoreError> {
        let json = |v: &serde_json::Map<String, serde_json::Value>| {
            serde_json::to_string(v).map_err(|e| StoreError::Invalid(e.to_string()))
        };
        let mut rows = Additions {
            absent_nodes: texts(&assumed.absent_nodes),
            present_nodes: texts(&assumed.present_nodes),
            absent_edges: texts(&assumed.absent_edges),
            ..Additions::default()
        };
        for event in events {
            match event {
                GraphEvent::NodeAdded(e) => {
                    rows.nodes[0].push(e.node_id.to_string());
                    rows.nodes[1].push(e.node_type.to_string());
                    rows.nodes[2].push(json(&e.properties)?);
                }
                GraphEvent::EdgeAdded(e) => {
                    rows.edges[0].push(e.edge_id.to_string());
                    rows.edges[1].push(e.edge_type.to_string());
                    rows.edges[2].push(e.source.to_string());
                    rows.edges[3].push(e.target.to_string());
                    rows.edges[4].push(json(&e.properties)?);
                }
                other => return Err(StoreError::Invalid(format!("{} is not an addition", other.event_type()))),
            }
        }
        Ok(rows)
    }

    fn nodes_only(&self) -> bool {
        self.edges[0].is_empty() && self.present_nodes.is_empty() && self.absent_edges.is_empty()
    }
}

fn texts<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

/// The statement's caller parameters (`$23..$42`) for a whole group.
#[derive(Default)]
struct GroupParams {
    absent_nodes: (Vec<uuid::Uuid>, Vec<String>),
    present_nodes: (Vec<uuid::Uuid>, Vec<String>),
    absent_edges: (Vec<uuid::Uuid>, Vec<String>),
    graphs: Vec<uuid::Uuid>,
    present_counts: Vec<i64>,
    node_deltas: Vec<i64>,
    edge_deltas: Vec<i64>,
    nodes: (Vec<uuid::Uuid>, [Vec<String>; 3]),
    edges: (Vec<uuid::Uuid>, [Vec<String>; 5]),
}

impl GroupParams {
    fn add(&mut self, graph: uuid::Uuid, mut rows: Additions) {
        fn tagged(graph: uuid::Uuid, into: &mut (Vec<uuid::Uuid>, Vec<String>), ids: Vec<String>) {
            into.0.extend(std::iter::repeat_n(graph, ids.len()));
            into.1.extend(ids);
        }
        self.graphs.push(graph);
        self.present_counts.push(rows.present_nodes.len() as i64);
        self.node_deltas.push(rows.nodes[0].len() as i64);
        self.edge_deltas.push(rows.edges[0].len() as i64);
        tagged(graph, &mut self.absent_nodes, rows.absent_nodes);
        tagged(graph, &mut self.present_nodes, rows.present_nodes);
        tagged(graph, &mut self.absent_edges, rows.absent_edges);
        self.nodes.0.extend(std::iter::repeat_n(graph, rows.nodes[0].len()));
        for (into, from) in self.nodes.1.iter_mut().zip(&mut rows.nodes) {
            into.append(from);
        }
        self.edges.0.extend(std::iter::repeat_n(graph, rows.edges[0].len()));
        for (into, from) in self.edges.1.iter_mut().zip(&mut rows.edges) {
            into.append(from);
        }
    }

    fn bind(
        self,
        q: sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let [n_id, n_ty, n_props] = self.nodes.1;
        let [e_id, e_ty, e_s, e_t, e_props] = self.edges.1;
        q.bind(self.absent_nodes.0)
            .bind(self.absent_nodes.1)
            .bind(self.present_nodes.0)
            .bind(self.present_nodes.1)
            .bind(self.absent_edges.0)
            .bind(self.absent_edges.1)
            .bind(self.graphs)
            .bind(self.present_counts)
            .bind(self.node_deltas)
            .bind(self.edge_deltas)
            .bind(self.nodes.0)
            .bind(n_id)
            .bind(n_ty)
            .bind(n_props)
            .bind(self.edges.0)
            .bind(e_id)
            .bind(e_ty)
            .bind(e_s)
            .bind(e_t)
            .bind(e_props)
    }
}

type Reply = oneshot::Sender<Result<Option<Appended>, StoreError>>;

struct Pending {
    sealed: SealedAppend,
    rows: Additions,
    reply: Reply,
}

/// Group commit of the one-statement writes: commands of different graphs that arrive while
/// earlier groups are being written go to Postgres together, one statement and one commit for
/// all. Under load that divides the per-statement costs (round trip, executor start-up, commit
/// and WAL flush) by the group size; alone, a command waits for nobody.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    store: EventStore,
    queue: mpsc::Sender<Pending>,
}

/// Groups written at once (each holds a pooled connection while it runs).
const WRITERS: usize = 4;
/// At most this many commands per statement; the rest wait for the next group.
const MAX_GROUP: usize = 64;

impl GroupCommit {
    /// Starts the writers; they end when the last handle is dropped.
    pub fn start(store: EventStore) -> Self {
        let (queue, rx) = mpsc::channel(MAX_GROUP * WRITERS * 4);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..WRITERS {
            tokio::spawn(writer(store.clone(), rx.clone()));
        }
        Self { store, queue }
    }

    /// Appends `append` (whose events are `events`, decided on `assumed`) and projects it, with
    /// whichever other commands are waiting. `Ok(None)`: the head or an assumption did not hold
    /// (or the group's statement failed) and nothing of this command was written.
    pub async fn append(
        &self,
        append: &Append,
        events: &[GraphEvent],
        assumed: &Assumed,
    ) -> Result<Option<Appended>, StoreError> {
        let (sealed, rows) = (self.store.seal_guarded(append)?, Additions::new(events, assumed)?);
        let (reply, done) = oneshot::channel();
        let pending = Pending { sealed, rows, reply };
        if self.queue.send(pending).await.is_err() {
            return Ok(None);
        }
        done.await.unwrap_or(Ok(None))
    }
}

async fn writer(store: EventStore, queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Pending>>>) {
    loop {
        let mut group = Vec::new();
        {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else { return };
            group.push(first);
            while group.len() < MAX_GROUP {
                let Ok(next) = queue.try_recv() else { break };
                group.push(next);
            }
        }
        write_group(&store, group).await;
    }
}

/// Writes one group and answers each command.
async fn write_group(store: &EventStore, group: Vec<Pending>) {
    // A graph twice in one group (possible only after a cancelled request left its command
    // queued): the later one takes the locked path.
    let mut seen = std::collections::HashSet::with_capacity(group.len());
    let (group, repeated): (Vec<_>, Vec<_>) = group.into_iter().partition(|p| seen.insert(p.sealed.aggregate_id()));
    for p in repeated {
        let _ = p.reply.send(Ok(None));
    }
    metrics::histogram!(crate::metrics::WRITE_GROUP_SIZE).record(group.len() as f64);
    let nodes_only = group.iter().all(|p| p.rows.nodes_only());
    let sql = if nodes_only { SQL_NODES_ONLY.as_str() } else { SQL.as_str() };
    let mut b = GroupParams::default();
    let mut sealed = Vec::with_capacity(group.len());
    let mut replies = Vec::with_capacity(group.len());
    for p in group {
        b.add(p.sealed.aggregate_id().as_uuid(), p.rows);
        sealed.push(p.sealed);
        replies.push(p.reply);
    }
    match store.append_guarded_many(sql, sealed, move |q| b.bind(q)).await {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Err(StoreError::Database(e @ sqlx::Error::Database(_))) if !cim_runtime::postgres::is_transient(&e) => {
            // Postgres refused the statement as a whole (nothing was written): one bad
            // command must not fail the others, so each takes the locked path on its own.
            // ("Not now" errors — a lost connection, a server shutting down — go to every
            // command instead: they are the clients' to retry.)
            tracing::warn!(error = %e, commands = replies.len(), "group write refused; commands retry alone");
            for reply in replies {
                let _ = reply.send(Ok(None));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.for_group()));
            }
        }
    }
}
