//! The graph routes' JSON: representations, requests, query parameters, and their conversions
//! from and to the gRPC messages.

use super::*;

#[derive(Debug, Serialize, ToSchema)]
pub struct Graph {
    pub graph_id: String,
    pub name: String,
    pub description: String,
    #[schema(value_type = Object)]
    pub properties: Props,
    /// `active` or `archived`.
    pub status: String,
    pub version: u64,
    pub node_count: u64,
    pub edge_count: u64,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Node {
    pub id: String,
    #[serde(rename = "type")]
    pub node_type: String,
    #[schema(value_type = Object)]
    pub properties: Props,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Edge {
    pub id: String,
    #[serde(rename = "type")]
    pub edge_type: String,
    pub source: String,
    pub target: String,
    #[schema(value_type = Object)]
    pub properties: Props,
}

/// What every command returns.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandResult {
    pub graph_id: String,
    /// The graph's version after the command.
    pub version: u64,
    pub event_ids: Vec<String>,
    /// True when an earlier command with the same Idempotency-Key already did this (the other
    /// fields repeat its answer).
    pub replayed: bool,
    /// Ids of the nodes this command added (generated ids included), in order.
    pub created_node_ids: Vec<String>,
    /// Ids of the edges this command added, in order.
    pub created_edge_ids: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Neighbor {
    pub node: Node,
    pub via: Edge,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Neighbors {
    pub items: Vec<Neighbor>,
    pub truncated: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Visit {
    pub node: Node,
    pub depth: u32,
    pub parent_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Traversal {
    pub visits: Vec<Visit>,
    pub truncated: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShortestPath {
    pub found: bool,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// Not found because the search reached the server's node bound first: a path may exist.
    pub truncated: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Snapshot {
    pub graph: Graph,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGraph {
    /// A UUID; generated when absent.
    #[serde(default)]
    pub graph_id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    #[serde(deserialize_with = "exact_properties")]
    #[schema(value_type = Object)]
    pub properties: Props,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameGraph {
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub node_type: String,
    #[serde(default)]
    #[serde(deserialize_with = "exact_properties")]
    #[schema(value_type = Object)]
    pub properties: Props,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub edge_type: String,
    pub source: String,
    pub target: String,
    #[serde(default)]
    #[serde(deserialize_with = "exact_properties")]
    #[schema(value_type = Object)]
    pub properties: Props,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetProperties {
    #[serde(deserialize_with = "exact_properties")]
    #[schema(value_type = Object)]
    pub properties: Props,
}

/// One change of a batch: `op` names it; its other fields are those of the single-change route.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    AddNode(NodeSpec),
    AddEdge(EdgeSpec),
    UpdateNode(PropertiesOf),
    UpdateEdge(PropertiesOf),
    RemoveNode(ElementId),
    RemoveEdge(ElementId),
    Rename(RenameGraph),
}

/// A node's or an edge's new property document, in a batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PropertiesOf {
    pub id: String,
    #[serde(deserialize_with = "exact_properties")]
    #[schema(value_type = Object)]
    pub properties: Props,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ElementId {
    pub id: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Out,
    In,
    Both,
}

impl Direction {
    pub(super) fn pb(self) -> i32 {
        match self {
            Direction::Out => pb::Direction::Out as i32,
            Direction::In => pb::Direction::In as i32,
            Direction::Both => pb::Direction::Both as i32,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TraverseRequest {
    pub start: String,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub edge_types: Vec<String>,
    pub max_depth: u32,
    pub max_nodes: u32,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListGraphsQuery {
    pub page_size: Option<u32>,
    pub page_token: Option<String>,
    pub include_archived: Option<bool>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListNodesQuery {
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub node_type: Option<String>,
    pub page_size: Option<u32>,
    pub page_token: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListEdgesQuery {
    /// Only edges touching this node.
    pub node_id: Option<String>,
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub edge_type: Option<String>,
    pub page_size: Option<u32>,
    pub page_token: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NeighborsQuery {
    pub direction: Option<Direction>,
    /// Comma-separated edge types.
    pub edge_types: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PathQuery {
    pub from: String,
    pub to: String,
    pub direction: Option<Direction>,
    pub edge_types: Option<String>,
    pub max_depth: Option<u32>,
}

pub(super) fn graph(g: pb::Graph) -> Graph {
    Graph {
        graph_id: g.graph_id,
        name: g.name,
        description: g.description,
        properties: props(g.properties),
        status: g.status,
        version: g.version,
        node_count: g.node_count,
        edge_count: g.edge_count,
        created_at: ts(g.created_at),
        updated_at: ts(g.updated_at),
    }
}

pub(super) fn node(n: pb::Node) -> Node {
    Node { id: n.id, node_type: n.r#type, properties: props(n.properties) }
}

pub(super) fn edge(e: pb::Edge) -> Edge {
    Edge { id: e.id, edge_type: e.r#type, source: e.source, target: e.target, properties: props(e.properties) }
}

pub(super) fn result(r: pb::CommandResponse) -> CommandResult {
    CommandResult {
        graph_id: r.graph_id,
        version: r.version,
        event_ids: r.event_ids,
        replayed: r.replayed,
        created_node_ids: r.created_node_ids,
        created_edge_ids: r.created_edge_ids,
    }
}

impl From<NodeSpec> for pb::NodeSpec {
    fn from(n: NodeSpec) -> Self {
        pb::NodeSpec { id: n.id.unwrap_or_default(), r#type: n.node_type, properties: structure(&n.properties) }
    }
}

impl From<EdgeSpec> for pb::EdgeSpec {
    fn from(e: EdgeSpec) -> Self {
        pb::EdgeSpec {
            id: e.id.unwrap_or_default(),
            r#type: e.edge_type,
            source: e.source,
            target: e.target,
            properties: structure(&e.properties),
        }
    }
}

impl From<Change> for pb::GraphChange {
    fn from(change: Change) -> Self {
        use pb::graph_change::Change as C;
        let properties = |p: PropertiesOf| pb::UpdateProperties { id: p.id, properties: structure(&p.properties) };
        let change = match change {
            Change::AddNode(node) => C::AddNode(node.into()),
            Change::AddEdge(edge) => C::AddEdge(edge.into()),
            Change::UpdateNode(p) => C::UpdateNode(properties(p)),
            Change::UpdateEdge(p) => C::UpdateEdge(properties(p)),
            Change::RemoveNode(node) => C::RemoveNode(node.id),
            Change::RemoveEdge(edge) => C::RemoveEdge(edge.id),
            Change::Rename(rename) => C::Rename(rename.name),
        };
        pb::GraphChange { change: Some(change) }
    }
}

pub(super) fn types(list: Option<String>) -> Vec<String> {
    list.map(|l| l.split(',').map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect()).unwrap_or_default()
}

pub(super) fn created(r: pb::CommandResponse) -> impl IntoResponse {
    (StatusCode::CREATED, Json(result(r)))
}

pub(super) fn done(r: pb::CommandResponse) -> impl IntoResponse {
    (StatusCode::OK, Json(result(r)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch change is the single-change route's body plus `op`, with the same strictness.
    #[test]
    fn a_batch_change_is_its_routes_body_with_an_op() {
        let batch: Batch = serde_json::from_str(
            r#"{"changes":[{"op":"add_node","type":"n","properties":{"a":1}},
                {"op":"update_edge","id":"e","properties":{}},{"op":"rename","name":"x"}]}"#,
        )
        .unwrap();
        assert!(matches!(&batch.changes[0], Change::AddNode(NodeSpec { id: None, node_type, .. }) if node_type == "n"));
        assert!(matches!(&batch.changes[1], Change::UpdateEdge(PropertiesOf { id, .. }) if id == "e"));
        assert!(matches!(&batch.changes[2], Change::Rename(RenameGraph { name }) if name == "x"));
        for refused in [
            r#"{"op":"add_node","type":"n","colour":"red"}"#,
            r#"{"op":"remove_node"}"#,
            r#"{"op":"explode","id":"a"}"#,
            r#"{"type":"n"}"#,
            r#"{"op":"add_node","type":"n","properties":{"big":9007199254740993}}"#,
        ] {
            assert!(serde_json::from_str::<Change>(refused).is_err(), "{refused} was accepted");
        }
    }
}
