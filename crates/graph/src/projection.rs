//! Writes the projections in the command's transaction ([`GraphProjection`]), and reads the
//! facts a command needs under the graph row's lock ([`GraphFacts`]): the kit's executor runs
//! both.

use cim_aggregate::{Current, LockingSource, source::SourceFuture};
use cim_core::events::graph::{EdgeId, GraphEvent, NodeId};
use cim_core::{AggregateId, EventEnvelope, EventHash, TenantId};
use cim_eventstore::{HeadToken, Projector, StoreError};
use sqlx::{PgConnection, Row};

use crate::domain::{EdgeState, GraphCommand, GraphState, Needs, NodeState};
use crate::metrics::GRAPH_SIZE_NODES;

/// The graph's state for deciding a command: its row (locked) and the nodes and edges the
/// command names.
#[derive(Debug, Clone, Copy, Default)]
pub struct GraphFacts;

impl LockingSource<GraphState> for GraphFacts {
    fn read<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        tenant: TenantId,
        graph: AggregateId,
        command: &'a GraphCommand,
    ) -> SourceFuture<'a, GraphState> {
        Box::pin(async move {
            let Some(locked) = lock_graph(tx, tenant, graph).await? else { return Ok(None) };
            metrics::histogram!(GRAPH_SIZE_NODES).record(locked.node_count as f64);
            let mut state = GraphState { exists: true, archived: locked.archived, ..GraphState::default() };
            load_facts(tx, graph, &command.needs(), &mut state).await?;
            Ok(Some(Current { state, head: HeadToken::from_projection(locked.version, locked.head) }))
        })
    }
}

/// The read tables (`graphs`, `nodes`, `edges`), written in each command's transaction.
#[derive(Debug, Clone, Copy, Default)]
pub struct GraphProjection;

impl Projector for GraphProjection {
    fn project<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [EventEnvelope],
    ) -> futures::future::BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(project(tx, events))
    }
}

/// The graph row, locked for the rest of the transaction: commands on one graph run one at a
/// time instead of racing and retrying.
#[derive(Debug, Clone)]
pub struct LockedGraph {
    pub version: u64,
    pub head: EventHash,
    pub archived: bool,
    pub node_count: u64,
}

async fn lock_graph(
    tx: &mut PgConnection,
    tenant: TenantId,
    graph: AggregateId,
) -> Result<Option<LockedGraph>, StoreError> {
    let row = sqlx::query(
        "SELECT tenant_id, version, head_hash, archived, node_count FROM graphs WHERE graph_id = $1 FOR UPDATE",
    )
    .bind(graph.as_uuid())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    // Another tenant's graph does not exist as far as this caller can tell.
    if row.try_get::<uuid::Uuid, _>("tenant_id")? != tenant.as_uuid() {
        return Ok(None);
    }
    Ok(Some(LockedGraph {
        version: row.try_get::<i64, _>("version")? as u64,
        head: EventHash::from_slice(&row.try_get::<Vec<u8>, _>("head_hash")?).map_err(StoreError::Corrupt)?,
        archived: row.try_get("archived")?,
        node_count: row.try_get::<i64, _>("node_count")? as u64,
    }))
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// Fills `state` with the nodes and edges `needs` names (properties are not needed to decide).
async fn load_facts(
    tx: &mut PgConnection,
    graph: AggregateId,
    needs: &Needs,
    state: &mut GraphState,
) -> Result<(), StoreError> {
    if !needs.nodes.is_empty() {
        let ids: Vec<&str> = needs.nodes.iter().map(NodeId::as_str).collect();
        // One primary-key lookup per id (see the guard in `group_commit.rs` for why not `= ANY`).
        let rows = sqlx::query(
            "SELECT n.node_id, n.node_type FROM unnest($2::text[]) AS a(id) CROSS JOIN LATERAL \
             (SELECT node_id, node_type FROM nodes WHERE graph_id = $1 AND node_id = a.id OFFSET 0) n",
        )
        .bind(graph.as_uuid())
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        for row in rows {
            let id: NodeId = row.try_get::<String, _>("node_id")?.parse().map_err(corrupt)?;
            let node_type = row.try_get::<String, _>("node_type")?.parse().map_err(corrupt)?;
            state.nodes.insert(id, NodeState { node_type, properties: Default::default() });
        }
    }
    if !needs.edges.is_empty() || !needs.incident_to.is_empty() {
        let edge_ids: Vec<&str> = needs.edges.iter().map(EdgeId::as_str).collect();
        let incident: Vec<&str> = needs.incident_to.iter().map(NodeId::as_str).collect();
        let rows = sqlx::query(
            "SELECT x.* FROM unnest($2::text[]) AS a(id) CROSS JOIN LATERAL (SELECT edge_id, edge_type, source, target \
                 FROM edges WHERE graph_id = $1 AND edge_id = a.id OFFSET 0) x \
             UNION SELECT x.* FROM unnest($3::text[]) AS a(id) CROSS JOIN LATERAL (SELECT edge_id, edge_type, source, target \
                 FROM edges WHERE graph_id = $1 AND source = a.id OFFSET 0) x \
             UNION SELECT x.* FROM unnest($3::text[]) AS a(id) CROSS JOIN LATERAL (SELECT edge_id, edge_type, source, target \
                 FROM edges WHERE graph_id = $1 AND target = a.id OFFSET 0) x",
        )
        .bind(graph.as_uuid())
        .bind(&edge_ids)
        .bind(&incident)
        .fetch_all(&mut *tx)
        .await?;
        for row in rows {
            let id: EdgeId = row.try_get::<String, _>("edge_id")?.parse().map_err(corrupt)?;
            state.edges.insert(
                id,
                EdgeState {
                    edge_type: row.try_get::<String, _>("edge_type")?.parse().map_err(corrupt)?,
                    source: row.try_get::<String, _>("source")?.parse().map_err(corrupt)?,
                    target: row.try_get::<String, _>("target")?.parse().map_err(corrupt)?,
                    properties: Default::default(),
                },
            );
        }
    }
    Ok(())
}

fn json(p: &cim_core::events::graph::Properties) -> sqlx::types::Json<&cim_core::events::graph::Properties> {
    sqlx::types::Json(p)
}

/// Consecutive additions, written with one statement per table (a 1000-change batch is two
/// statements, not a thousand).
#[derive(Default)]
struct Additions {
    node_ids: Vec<String>,
    node_types: Vec<String>,
    node_props: Vec<String>,
    edge_ids: Vec<String>,
    edge_types: Vec<String>,
    edge_sources: Vec<String>,
    edge_targets: Vec<String>,
    edge_props: Vec<String>,
}

impl Additions {
    async fn flush(&mut self, tx: &mut PgConnection, graph: uuid::Uuid) -> Result<(), StoreError> {
        if !self.node_ids.is_empty() {
            sqlx::query(
                "INSERT INTO nodes (graph_id, node_id, node_type, properties) \
                 SELECT $1, u.id, u.ty, u.props::jsonb FROM unnest($2::text[], $3::text[], $4::text[]) AS u(id, ty, props)",
            )
            .bind(graph)
            .bind(&self.node_ids)
            .bind(&self.node_types)
            .bind(&self.node_props)
            .execute(&mut *tx)
            .await?;
        }
        if !self.edge_ids.is_empty() {
            sqlx::query(
                "INSERT INTO edges (graph_id, edge_id, edge_type, source, target, properties) \
                 SELECT $1, u.id, u.ty, u.s, u.t, u.props::jsonb \
                 FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) AS u(id, ty, s, t, props)",
            )
            .bind(graph)
            .bind(&self.edge_ids)
            .bind(&self.edge_types)
            .bind(&self.edge_sources)
            .bind(&self.edge_targets)
            .bind(&self.edge_props)
            .execute(&mut *tx)
            .await?;
        }
        *self = Additions::default();
        Ok(())
    }
}

fn props_text(p: &cim_core::events::graph::Properties) -> String {
    serde_json::to_string(p).unwrap_or_else(|_| "{}".to_owned())
}

/// Applies committed-to-be events to the projection tables.
async fn project(tx: &mut PgConnection, events: &[EventEnvelope]) -> Result<(), StoreError> {
    let Some(last) = events.last() else { return Ok(()) };
    let tenant = last.tenant_id;
    let graph = last.aggregate_id.as_uuid();
    let (mut dn, mut de) = (0i64, 0i64);
    let mut adds = Additions::default();
    for envelope in events {
        let event = GraphEvent::from_envelope(envelope).map_err(corrupt)?;
        match &event {
            GraphEvent::NodeAdded(e) => {
                adds.node_ids.push(e.node_id.to_string());
                adds.node_types.push(e.node_type.to_string());
                adds.node_props.push(props_text(&e.properties));
                dn += 1;
                continue;
            }
            GraphEvent::EdgeAdded(e) => {
                adds.edge_ids.push(e.edge_id.to_string());
                adds.edge_types.push(e.edge_type.to_string());
                adds.edge_sources.push(e.source.to_string());
                adds.edge_targets.push(e.target.to_string());
                adds.edge_props.push(props_text(&e.properties));
                de += 1;
                continue;
            }
            _ => adds.flush(tx, graph).await?,
        }
        match &event {
            GraphEvent::Created(e) => {
                sqlx::query(
                    "INSERT INTO graphs (graph_id, tenant_id, name, description, properties, version, head_hash, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
                )
                .bind(graph)
                .bind(tenant.as_uuid())
                .bind(&e.name)
                .bind(&e.description)
                .bind(json(&e.properties))
                .bind(envelope.sequence as i64)
                .bind(envelope.hash.as_bytes().to_vec())
                .bind(envelope.occurred_at)
                .execute(&mut *tx)
                .await?;
            }
            GraphEvent::Renamed(e) => {
                sqlx::query("UPDATE graphs SET name = $2 WHERE graph_id = $1")
                    .bind(graph)
                    .bind(&e.name)
                    .execute(&mut *tx)
                    .await?;
            }
            GraphEvent::Archived(_) => {
                sqlx::query("UPDATE graphs SET archived = true WHERE graph_id = $1")
                    .bind(graph)
                    .execute(&mut *tx)
                    .await?;
            }
            GraphEvent::NodeUpdated(e) => {
                sqlx::query("UPDATE nodes SET properties = $3 WHERE graph_id = $1 AND node_id = $2")
                    .bind(graph)
                    .bind(e.node_id.as_str())
                    .bind(json(&e.properties))
                    .execute(&mut *tx)
                    .await?;
            }
            GraphEvent::NodeRemoved(e) => {
                sqlx::query("DELETE FROM nodes WHERE graph_id = $1 AND node_id = $2")
                    .bind(graph)
                    .bind(e.node_id.as_str())
                    .execute(&mut *tx)
                    .await?;
                let removed: Vec<&str> = e.removed_edges.iter().map(EdgeId::as_str).collect();
                let n = sqlx::query("DELETE FROM edges WHERE graph_id = $1 AND edge_id = ANY($2)")
                    .bind(graph)
                    .bind(&removed)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                dn -= 1;
                de -= n as i64;
            }
            GraphEvent::EdgeUpdated(e) => {
                sqlx::query("UPDATE edges SET properties = $3 WHERE graph_id = $1 AND edge_id = $2")
                    .bind(graph)
                    .bind(e.edge_id.as_str())
                    .bind(json(&e.properties))
                    .execute(&mut *tx)
                    .await?;
            }
            GraphEvent::EdgeRemoved(e) => {
                sqlx::query("DELETE FROM edges WHERE graph_id = $1 AND edge_id = $2")
                    .bind(graph)
                    .bind(e.edge_id.as_str())
                    .execute(&mut *tx)
                    .await?;
                de -= 1;
            }
            GraphEvent::NodeAdded(_) | GraphEvent::EdgeAdded(_) => {}
        }
    }
    // Trailing additions and the graph row in one statement: the common command (one AddNode
    // or AddEdge) projects in a single round trip.
    sqlx::query(
        "WITH n AS ( \
             INSERT INTO nodes (graph_id, node_id, node_type, properties) \
             SELECT $1, u.id, u.ty, u.props::jsonb FROM unnest($7::text[], $8::text[], $9::text[]) AS u(id, ty, props) \
         ), e AS ( \
             INSERT INTO edges (graph_id, edge_id, edge_type, source, target, properties) \
             SELECT $1, u.id, u.ty, u.s, u.t, u.props::jsonb \
             FROM unnest($10::text[], $11::text[], $12::text[], $13::text[], $14::text[]) AS u(id, ty, s, t, props) \
         ) \
         UPDATE graphs SET version = $2, head_hash = $3, updated_at = $4, node_count = node_count + $5, \
             edge_count = edge_count + $6 WHERE graph_id = $1",
    )
    .bind(graph)
    .bind(last.sequence as i64)
    .bind(last.hash.as_bytes().to_vec())
    .bind(last.occurred_at)
    .bind(dn)
    .bind(de)
    .bind(&adds.node_ids)
    .bind(&adds.node_types)
    .bind(&adds.node_props)
    .bind(&adds.edge_ids)
    .bind(&adds.edge_types)
    .bind(&adds.edge_sources)
    .bind(&adds.edge_targets)
    .bind(&adds.edge_props)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
