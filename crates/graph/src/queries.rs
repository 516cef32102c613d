//! Reads over the projections. Every read first resolves the graph within the caller's tenant,
//! so another tenant's graph is simply not found.

use std::collections::{HashMap, VecDeque};

use cim_core::{AggregateId, TenantId};
use cim_proto::common::PageResponse;
use cim_proto::graph as pb;
use cim_runtime::edge::KeysetPage;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::convert::{json_to_struct, timestamp};
use crate::error::ServiceError;

mod walk;

pub use walk::{Dir, Walk, shortest_path, traverse};

/// Server-side bounds on reads.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub default_page: u32,
    pub max_page: u32,
    pub max_neighbors: u32,
    pub max_depth: u32,
    pub max_nodes: u32,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self { default_page: 100, max_page: 1000, max_neighbors: 10_000, max_depth: 10, max_nodes: 10_000 }
    }
}

impl QueryLimits {
    pub fn page_size(&self, requested: u32) -> Result<i64, ServiceError> {
        match requested {
            0 => Ok(i64::from(self.default_page)),
            n if n <= self.max_page => Ok(i64::from(n)),
            n => Err(ServiceError::invalid("page.page_size", format!("{n} is above the maximum {}", self.max_page))),
        }
    }
}

type Props = sqlx::types::Json<cim_core::events::graph::Properties>;

fn graph_from_row(row: &PgRow) -> Result<pb::Graph, ServiceError> {
    let props: Props = row.try_get("properties")?;
    Ok(pb::Graph {
        graph_id: row.try_get::<uuid::Uuid, _>("graph_id")?.to_string(),
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        properties: Some(json_to_struct(&props.0)),
        status: if row.try_get::<bool, _>("archived")? { "archived" } else { "active" }.to_owned(),
        version: row.try_get::<i64, _>("version")? as u64,
        node_count: row.try_get::<i64, _>("node_count")? as u64,
        edge_count: row.try_get::<i64, _>("edge_count")? as u64,
        created_at: Some(timestamp(row.try_get("created_at")?)),
        updated_at: Some(timestamp(row.try_get("updated_at")?)),
    })
}

pub fn node_from_row(graph: &str, row: &PgRow) -> Result<pb::Node, ServiceError> {
    let props: Props = row.try_get("properties")?;
    Ok(pb::Node {
        graph_id: graph.to_owned(),
        id: row.try_get("node_id")?,
        r#type: row.try_get("node_type")?,
        properties: Some(json_to_struct(&props.0)),
    })
}

pub fn edge_from_row(graph: &str, row: &PgRow) -> Result<pb::Edge, ServiceError> {
    let props: Props = row.try_get("properties")?;
    Ok(pb::Edge {
        graph_id: graph.to_owned(),
        id: row.try_get("edge_id")?,
        r#type: row.try_get("edge_type")?,
        source: row.try_get("source")?,
        target: row.try_get("target")?,
        properties: Some(json_to_struct(&props.0)),
    })
}

const GRAPH_COLUMNS: &str =
    "graph_id, name, description, properties, archived, version, node_count, edge_count, created_at, updated_at";

pub async fn get_graph(pool: &PgPool, tenant: TenantId, graph: AggregateId) -> Result<pb::Graph, ServiceError> {
    let sql = format!("SELECT {GRAPH_COLUMNS} FROM graphs WHERE graph_id = $1 AND tenant_id = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(graph.as_uuid())
        .bind(tenant.as_uuid())
        .fetch_optional(pool)
        .await?
        .ok_or(ServiceError::GraphNotFound)?;
    graph_from_row(&row)
}

/// Resolves the graph in the tenant or fails with NOT_FOUND.
pub async fn ensure_graph(pool: &PgPool, tenant: TenantId, graph: AggregateId) -> Result<(), ServiceError> {
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM graphs WHERE graph_id = $1 AND tenant_id = $2")
        .bind(graph.as_uuid())
        .bind(tenant.as_uuid())
        .fetch_optional(pool)
        .await?;
    found.map(|_| ()).ok_or(ServiceError::GraphNotFound)
}

pub async fn list_graphs(
    pool: &PgPool,
    tenant: TenantId,
    page: KeysetPage,
    include_archived: bool,
) -> Result<(Vec<pb::Graph>, PageResponse), ServiceError> {
    let sql = format!(
        "SELECT {GRAPH_COLUMNS} FROM graphs WHERE tenant_id = $1 AND ($2::uuid IS NULL OR graph_id > $2) \
         AND ($3 OR NOT archived) ORDER BY graph_id LIMIT $4"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant.as_uuid())
        .bind(page.after)
        .bind(include_archived)
        .bind(page.fetch())
        .fetch_all(pool)
        .await?;
    let graphs: Vec<pb::Graph> = rows.iter().map(graph_from_row).collect::<Result<_, _>>()?;
    Ok(page.split(graphs, |g| g.graph_id.clone()))
}

pub async fn get_node(pool: &PgPool, graph: AggregateId, node: &str) -> Result<pb::Node, ServiceError> {
    let row = sqlx::query("SELECT node_id, node_type, properties FROM nodes WHERE graph_id = $1 AND node_id = $2")
        .bind(graph.as_uuid())
        .bind(node)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ServiceError::ElementNotFound(format!("node {node}")))?;
    node_from_row(&graph.to_string(), &row)
}

pub async fn list_nodes(
    pool: &PgPool,
    graph: AggregateId,
    node_type: Option<&str>,
    size: i64,
    after: Option<&str>,
) -> Result<(Vec<pb::Node>, String), ServiceError> {
    let rows = sqlx::query(
        "SELECT node_id, node_type, properties FROM nodes WHERE graph_id = $1 AND ($2::text IS NULL OR node_type = $2) \
         AND node_id > $3 ORDER BY node_id LIMIT $4",
    )
    .bind(graph.as_uuid())
    .bind(node_type)
    // Every id is non-empty, so "" starts at the first.
    .bind(after.unwrap_or(""))
    .bind(size + 1)
    .fetch_all(pool)
    .await?;
    let g = graph.to_string();
    let mut nodes: Vec<pb::Node> = rows.iter().map(|r| node_from_row(&g, r)).collect::<Result<_, _>>()?;
    let next = if nodes.len() as i64 > size {
        nodes.truncate(size as usize);
        nodes.last().map(|n| n.id.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    Ok((nodes, next))
}

pub async fn list_edges(
    pool: &PgPool,
    graph: AggregateId,
    node: Option<&str>,
    edge_type: Option<&str>,
    size: i64,
    after: Option<&str>,
) -> Result<(Vec<pb::Edge>, String), ServiceError> {
    let rows = sqlx::query(
        "SELECT edge_id, edge_type, source, target, properties FROM edges WHERE graph_id = $1 \
         AND ($2::text IS NULL OR source = $2 OR target = $2) AND ($3::text IS NULL OR edge_type = $3) \
         AND edge_id > $4 ORDER BY edge_id LIMIT $5",
    )
    .bind(graph.as_uuid())
    .bind(node)
    .bind(edge_type)
    // Every id is non-empty, so "" starts at the first.
    .bind(after.unwrap_or(""))
    .bind(size + 1)
    .fetch_all(pool)
    .await?;
    let g = graph.to_string();
    let mut edges: Vec<pb::Edge> = rows.iter().map(|r| edge_from_row(&g, r)).collect::<Result<_, _>>()?;
    let next = if edges.len() as i64 > size {
        edges.truncate(size as usize);
        edges.last().map(|e| e.id.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    Ok((edges, next))
}

/// Resolves the graph in the tenant and the node in the graph, in one round trip.
pub async fn ensure_node(pool: &PgPool, tenant: TenantId, graph: AggregateId, node: &str) -> Result<(), ServiceError> {
    let row = sqlx::query(
        "SELECT EXISTS (SELECT 1 FROM graphs WHERE graph_id = $1 AND tenant_id = $2) AS g, \
                EXISTS (SELECT 1 FROM nodes WHERE graph_id = $1 AND node_id = $3) AS n",
    )
    .bind(graph.as_uuid())
    .bind(tenant.as_uuid())
    .bind(node)
    .fetch_one(pool)
    .await?;
    if !row.try_get::<bool, _>("g")? {
        return Err(ServiceError::GraphNotFound);
    }
    if !row.try_get::<bool, _>("n")? {
        return Err(ServiceError::ElementNotFound(format!("node {node}")));
    }
    Ok(())
}

/// The edges at `node` with the node at their other end, and whether the graph (in the tenant)
/// and the node exist: one round trip.
pub async fn neighbors(
    pool: &PgPool,
    tenant: TenantId,
    graph: AggregateId,
    node: &str,
    dir: Dir,
    types: &[String],
    limit: u32,
) -> Result<pb::NeighborsResponse, ServiceError> {
    let select = |near: &str, far: &str| {
        format!(
            "SELECT e.edge_id, e.edge_type, e.source, e.target, e.properties, \
                    n.node_id, n.node_type, n.properties AS node_properties \
             FROM edges e JOIN nodes n ON n.graph_id = e.graph_id AND n.node_id = e.{far} \
             WHERE e.graph_id = $1 AND e.{near} = $2 AND (cardinality($3::text[]) = 0 OR e.edge_type = ANY($3))"
        )
    };
    // In edge-id order, so a limited answer is always the same one; with BOTH a self-loop is
    // one neighbour, not two.
    let hops = match dir {
        Dir::Out => format!("{} ORDER BY edge_id LIMIT $4", select("source", "target")),
        Dir::In => format!("{} ORDER BY edge_id LIMIT $4", select("target", "source")),
        Dir::Both => format!(
            "SELECT * FROM (({}) UNION ALL ({} AND e.source <> e.target)) both_ways ORDER BY edge_id LIMIT $4",
            select("source", "target"),
            select("target", "source")
        ),
    };
    let sql = format!(
        "WITH here AS ( \
             SELECT EXISTS (SELECT 1 FROM graphs WHERE graph_id = $1 AND tenant_id = $5) AS g, \
                    EXISTS (SELECT 1 FROM nodes WHERE graph_id = $1 AND node_id = $2) AS n \
         ) \
         SELECT here.g, here.n, x.* FROM here LEFT JOIN LATERAL ({hops}) x ON here.g AND here.n"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(graph.as_uuid())
        .bind(node)
        .bind(types)
        .bind(i64::from(limit) + 1)
        .bind(tenant.as_uuid())
        .fetch_all(pool)
        .await?;
    let Some(first) = rows.first() else { return Err(ServiceError::GraphNotFound) };
    if !first.try_get::<bool, _>("g")? {
        return Err(ServiceError::GraphNotFound);
    }
    if !first.try_get::<bool, _>("n")? {
        return Err(ServiceError::ElementNotFound(format!("node {node}")));
    }
    // With no neighbours, the one row carries only the flags.
    let rows: Vec<&PgRow> =
        rows.iter().filter(|r| r.try_get::<Option<String>, _>("edge_id").ok().flatten().is_some()).collect();
    let truncated = rows.len() > limit as usize;
    let g = graph.to_string();
    let neighbors = rows
        .iter()
        .take(limit as usize)
        .map(|r| {
            let props: Props = r.try_get("node_properties")?;
            Ok(pb::Neighbor {
                node: Some(pb::Node {
                    graph_id: g.clone(),
                    id: r.try_get("node_id")?,
                    r#type: r.try_get("node_type")?,
                    properties: Some(json_to_struct(&props.0)),
                }),
                via: Some(edge_from_row(&g, r)?),
            })
        })
        .collect::<Result<_, ServiceError>>()?;
    Ok(pb::NeighborsResponse { neighbors, truncated })
}
