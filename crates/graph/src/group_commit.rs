//! Graph's one-round-trip write for commands that only add nodes and edges (most writes): the
//! kit's executor tries it whenever it knows the graph's head ([`cim_aggregate::OneStatement`])
//! and commits many graphs' commands in one statement ([`cim_aggregate::group_commit`]). What is
//! graph's own is here: which commands qualify ([`decide_assuming`]) and the statement that
//! checks their assumptions and writes their rows. Lock order is the same as the locked path's
//! (graph row first), so the two never deadlock.

use std::sync::LazyLock;

use cim_aggregate::{GroupStatement, OneStatement};
use cim_core::events::graph::GraphEvent;
use cim_eventstore::StoreError;

use crate::domain::{Assumed, GraphCommand, GraphState, Limits, decide_assuming};

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
pub struct Additions {
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
#[derive(Debug, Default)]
pub struct GroupParams {
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

    fn bind(self, q: Query) -> Query {
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

/// The statement above, for the kit's group writer.
#[derive(Debug, Clone, Copy, Default)]
pub struct GraphStatement;

type Query = sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>;

impl GroupStatement for GraphStatement {
    type Rows = Additions;
    type Params = GroupParams;

    fn sql(&self, group: &[&Additions]) -> &'static str {
        if group.iter().all(|rows| rows.nodes_only()) { SQL_NODES_ONLY.as_str() } else { SQL.as_str() }
    }

    fn add(&self, params: &mut GroupParams, graph: uuid::Uuid, rows: Additions) {
        params.add(graph, rows);
    }

    fn bind(&self, params: GroupParams, query: Query) -> Query {
        params.bind(query)
    }
}

impl OneStatement<GraphState> for GraphStatement {
    fn decide_assuming(&self, command: &GraphCommand, limits: &Limits) -> Option<(Vec<GraphEvent>, Additions)> {
        let (events, assumed) = decide_assuming(command, limits)?;
        // Rows that do not build (never for events decided here) go the locked way.
        let rows = Additions::new(&events, &assumed).ok()?;
        Some((events, rows))
    }

    fn open(&self, state: &GraphState) -> bool {
        !state.archived
    }
}
