//! The graph aggregate: its state, its commands, and the rules that turn a command into events.
//!
//! Deciding needs only a few facts (does this node exist, which edges touch that one), so the
//! service loads just those into a [`GraphState`] (see [`GraphCommand::needs`]) instead of the
//! whole graph; a full state (every node and edge) is what a replay builds, e.g. for
//! `GetGraphAtVersion`.

use std::collections::{BTreeMap, BTreeSet};

use cim_core::ErrorCode;
use cim_core::events::graph::{
    EdgeAdded, EdgeId, EdgeRemoved, EdgeUpdated, GraphArchived, GraphCreated, GraphEvent, GraphRenamed, NodeAdded,
    NodeId, NodeRemoved, NodeUpdated, Properties,
};
use cim_core::{FieldViolation, TypeName};
use cim_runtime::status::HasErrorCode;
use serde::{Deserialize, Serialize};

/// Bounds on what one command may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Serialized size of one property document.
    pub max_property_bytes: usize,
    /// Nesting depth of one property document (a flat object is depth 1).
    pub max_property_depth: usize,
    pub max_batch_changes: usize,
    pub max_name_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_property_bytes: 64 * 1024, max_property_depth: 16, max_batch_changes: 1000, max_name_chars: 200 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("{0}: {1}")]
    Invalid(String, String),
    #[error("graph not found")]
    GraphNotFound,
    #[error("graph already exists")]
    GraphExists,
    #[error("graph is archived and accepts no changes")]
    Archived,
    #[error("node {0} already exists")]
    NodeExists(NodeId),
    #[error("node {0} not found")]
    NodeNotFound(NodeId),
    #[error("edge {0} already exists")]
    EdgeExists(EdgeId),
    #[error("edge {0} not found")]
    EdgeNotFound(EdgeId),
    #[error("edge endpoint node {0} does not exist")]
    MissingEndpoint(NodeId),
}

impl GraphError {
    pub fn code(&self) -> ErrorCode {
        match self {
            GraphError::Invalid(..) => ErrorCode::InvalidArgument,
            GraphError::GraphNotFound | GraphError::NodeNotFound(_) | GraphError::EdgeNotFound(_) => {
                ErrorCode::NotFound
            }
            GraphError::GraphExists | GraphError::NodeExists(_) | GraphError::EdgeExists(_) => ErrorCode::AlreadyExists,
            GraphError::Archived | GraphError::MissingEndpoint(_) => ErrorCode::FailedPrecondition,
        }
    }

    /// The offending field, for INVALID_ARGUMENT details.
    pub fn field_violation(&self) -> Option<FieldViolation> {
        match self {
            GraphError::Invalid(field, reason) => Some(FieldViolation::new(field.clone(), reason.clone())),
            _ => None,
        }
    }
}

impl HasErrorCode for GraphError {
    fn code(&self) -> ErrorCode {
        GraphError::code(self)
    }

    fn violations(&self) -> Vec<FieldViolation> {
        self.field_violation().into_iter().collect()
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> GraphError {
    GraphError::Invalid(field.into(), reason.into())
}

/// One change inside a graph.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    AddNode { id: Option<NodeId>, node_type: TypeName, properties: Properties },
    UpdateNode { id: NodeId, properties: Properties },
    RemoveNode { id: NodeId },
    AddEdge { id: Option<EdgeId>, edge_type: TypeName, source: NodeId, target: NodeId, properties: Properties },
    UpdateEdge { id: EdgeId, properties: Properties },
    RemoveEdge { id: EdgeId },
    Rename { name: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum GraphCommand {
    Create {
        name: String,
        description: String,
        properties: Properties,
    },
    Archive,
    /// One or more changes, applied atomically in order.
    Apply(Vec<Change>),
}

/// What the service must load before deciding a command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    pub nodes: BTreeSet<NodeId>,
    pub edges: BTreeSet<EdgeId>,
    /// Nodes whose incident edges (both directions) must all be loaded.
    pub incident_to: BTreeSet<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    pub node_type: TypeName,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeState {
    pub edge_type: TypeName,
    pub source: NodeId,
    pub target: NodeId,
    pub properties: Properties,
}

/// The graph as far as it is known: everything after a replay, or the facts a command needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GraphState {
    pub exists: bool,
    pub archived: bool,
    pub name: String,
    pub description: String,
    pub properties: Properties,
    pub nodes: BTreeMap<NodeId, NodeState>,
    pub edges: BTreeMap<EdgeId, EdgeState>,
}

impl GraphState {
    /// Folds one event. Events are facts: applying never fails on a valid history.
    pub fn apply(&mut self, event: &GraphEvent) {
        match event {
            GraphEvent::Created(e) => {
                self.exists = true;
                self.name = e.name.clone();
                self.description = e.description.clone();
                self.properties = e.properties.clone();
            }
            GraphEvent::Renamed(e) => self.name = e.name.clone(),
            GraphEvent::Archived(_) => self.archived = true,
            GraphEvent::NodeAdded(e) => {
                self.nodes.insert(
                    e.node_id.clone(),
                    NodeState { node_type: e.node_type.clone(), properties: e.properties.clone() },
                );
            }
            GraphEvent::NodeUpdated(e) => {
                if let Some(n) = self.nodes.get_mut(&e.node_id) {
                    n.properties = e.properties.clone();
                }
            }
            GraphEvent::NodeRemoved(e) => {
                self.nodes.remove(&e.node_id);
                for edge in &e.removed_edges {
                    self.edges.remove(edge);
                }
            }
            GraphEvent::EdgeAdded(e) => {
                self.edges.insert(
                    e.edge_id.clone(),
                    EdgeState {
                        edge_type: e.edge_type.clone(),
                        source: e.source.clone(),
                        target: e.target.clone(),
                        properties: e.properties.clone(),
                    },
                );
            }
            GraphEvent::EdgeUpdated(e) => {
                if let Some(edge) = self.edges.get_mut(&e.edge_id) {
                    edge.properties = e.properties.clone();
                }
            }
            GraphEvent::EdgeRemoved(e) => {
                self.edges.remove(&e.edge_id);
            }
        }
    }

    /// Replays a history.
    pub fn replay<'a>(events: impl IntoIterator<Item = &'a GraphEvent>) -> GraphState {
        let mut state = GraphState::default();
        for e in events {
            state.apply(e);
        }
        state
    }

    fn incident_edges(&self, node: &NodeId) -> Vec<EdgeId> {
        self.edges.iter().filter(|(_, e)| &e.source == node || &e.target == node).map(|(id, _)| id.clone()).collect()
    }
}

/// Checks a property document against the rules every stored document meets
/// (`cim_core::document`: no NUL, nesting and size within the limits).
pub fn check_properties(field: &str, properties: &Properties, limits: &Limits) -> Result<(), GraphError> {
    let document = cim_core::document::DocumentLimits {
        max_bytes: limits.max_property_bytes,
        max_depth: limits.max_property_depth,
    };
    cim_core::document::check(properties, &document).map_err(|e| invalid(field, e.to_string()))
}

fn check_name(field: &str, name: &str, limits: &Limits) -> Result<(), GraphError> {
    let n = name.chars().count();
    if name.trim().is_empty() || n > limits.max_name_chars || name.chars().any(char::is_control) {
        return Err(invalid(field, format!("must be 1 to {} printable characters", limits.max_name_chars)));
    }
    Ok(())
}

impl GraphCommand {
    /// The facts [`decide`] will consult.
    pub fn needs(&self) -> Needs {
        let mut needs = Needs::default();
        if let GraphCommand::Apply(changes) = self {
            for change in changes {
                match change {
                    Change::AddNode { id, .. } => {
                        needs.nodes.extend(id.clone());
                    }
                    Change::UpdateNode { id, .. } => {
                        needs.nodes.insert(id.clone());
                    }
                    Change::RemoveNode { id } => {
                        needs.nodes.insert(id.clone());
                        needs.incident_to.insert(id.clone());
                    }
                    Change::AddEdge { id, source, target, .. } => {
                        needs.edges.extend(id.clone());
                        needs.nodes.insert(source.clone());
                        needs.nodes.insert(target.clone());
                    }
                    Change::UpdateEdge { id, .. } | Change::RemoveEdge { id } => {
                        needs.edges.insert(id.clone());
                    }
                    Change::Rename { .. } => {}
                }
            }
        }
        needs
    }
}

/// The kit runs graph commands on facts read under the graph's row lock
/// ([`crate::projection::GraphFacts`]), so the state is partial (see the module comment); a
/// replay, as for `GetGraphAtVersion`, builds it whole.
impl cim_aggregate::Aggregate for GraphState {
    const DOMAIN: cim_core::Domain = cim_core::Domain::Graph;
    const AGGREGATE_TYPE: &'static str = cim_core::events::graph::AGGREGATE_TYPE;
    type Command = GraphCommand;
    type Event = GraphEvent;
    type Error = GraphError;
    type Services = Limits;

    fn command_name(command: &GraphCommand) -> &'static str {
        match command {
            GraphCommand::Create { .. } => "create_graph",
            GraphCommand::Archive => "archive_graph",
            GraphCommand::Apply(changes) => match changes.as_slice() {
                [Change::Rename { .. }] => "rename_graph",
                [Change::AddNode { .. }] => "add_node",
                [Change::UpdateNode { .. }] => "update_node",
                [Change::RemoveNode { .. }] => "remove_node",
                [Change::AddEdge { .. }] => "add_edge",
                [Change::UpdateEdge { .. }] => "update_edge",
                [Change::RemoveEdge { .. }] => "remove_edge",
                _ => "apply_batch",
            },
        }
    }

    fn creates(command: &GraphCommand) -> bool {
        matches!(command, GraphCommand::Create { .. })
    }

    fn decide(&self, command: &GraphCommand, limits: &Limits) -> Result<Vec<GraphEvent>, GraphError> {
        decide(self, command, limits)
    }

    fn apply(&mut self, event: &GraphEvent) {
        GraphState::apply(self, event);
    }
}

/// Decides a command against the known state: the events to append, or why not.
/// All or nothing: a batch whose 5th change fails yields no events.
pub fn decide(state: &GraphState, command: &GraphCommand, limits: &Limits) -> Result<Vec<GraphEvent>, GraphError> {
    match command {
        GraphCommand::Create { name, description, properties } => {
            if state.exists {
                return Err(GraphError::GraphExists);
            }
            check_name("name", name, limits)?;
            if description.chars().count() > 10 * limits.max_name_chars || description.contains('\0') {
                return Err(invalid(
                    "description",
                    format!("at most {} characters, no NUL", 10 * limits.max_name_chars),
                ));
            }
            check_properties("properties", properties, limits)?;
            Ok(vec![GraphEvent::Created(GraphCreated {
                name: name.clone(),
                description: description.clone(),
                properties: properties.clone(),
            })])
        }
        GraphCommand::Archive => {
            if !state.exists {
                return Err(GraphError::GraphNotFound);
            }
            if state.archived {
                return Err(GraphError::Archived);
            }
            Ok(vec![GraphEvent::Archived(GraphArchived {})])
        }
        GraphCommand::Apply(changes) => {
            if !state.exists {
                return Err(GraphError::GraphNotFound);
            }
            if state.archived {
                return Err(GraphError::Archived);
            }
            if changes.is_empty() {
                return Err(invalid("changes", "at least one change is required"));
            }
            if changes.len() > limits.max_batch_changes {
                return Err(invalid("changes", format!("at most {} changes per batch", limits.max_batch_changes)));
            }
            let mut working = state.clone();
            let mut events = Vec::with_capacity(changes.len());
            for (i, change) in changes.iter().enumerate() {
                let field = |name: &str| {
                    if changes.len() == 1 { name.to_owned() } else { format!("changes[{i}].{name}") }
                };
                let event = decide_change(&working, change, limits, &field)?;
                working.apply(&event);
                events.push(event);
            }
            Ok(events)
        }
    }
}

/// The facts an additions-only command was decided on without reading them. The writer checks
/// them in the same statement that appends (under the graph's row lock) and falls back to the
/// locked read-then-decide path when any does not hold, so the outcome is the same either way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assumed {
    /// Nodes the command adds: must not exist yet.
    pub absent_nodes: Vec<NodeId>,
    /// Edge endpoints the command does not add itself: must exist.
    pub present_nodes: Vec<NodeId>,
    /// Edges the command adds: must not exist yet.
    pub absent_edges: Vec<EdgeId>,
}

/// Decides a command that only adds nodes and edges to an existing, open graph, assuming its
/// endpoints exist and its new ids are free (see [`Assumed`]). `None` when the command is of
/// another kind or the assumptions alone make it fail: the caller then takes the locked path,
/// which reports the authoritative outcome.
pub fn decide_assuming(command: &GraphCommand, limits: &Limits) -> Option<(Vec<GraphEvent>, Assumed)> {
    let GraphCommand::Apply(changes) = command else { return None };
    let mut state = GraphState { exists: true, ..Default::default() };
    let mut added = BTreeSet::new();
    let mut present = BTreeSet::new();
    for change in changes {
        match change {
            Change::AddNode { id, .. } => {
                added.extend(id.clone());
            }
            Change::AddEdge { source, target, .. } => {
                for end in [source, target] {
                    if !added.contains(end) && present.insert(end.clone()) {
                        // Only existence is consulted for an endpoint; its type is never read.
                        let node_type = "assumed".parse().ok()?;
                        state.nodes.insert(end.clone(), NodeState { node_type, properties: Properties::new() });
                    }
                }
            }
            _ => return None,
        }
    }
    let events = decide(&state, command, limits).ok()?;
    let mut assumed = Assumed { present_nodes: present.into_iter().collect(), ..Default::default() };
    for event in &events {
        match event {
            GraphEvent::NodeAdded(e) => assumed.absent_nodes.push(e.node_id.clone()),
            GraphEvent::EdgeAdded(e) => assumed.absent_edges.push(e.edge_id.clone()),
            _ => return None,
        }
    }
    Some((events, assumed))
}

fn decide_change(
    state: &GraphState,
    change: &Change,
    limits: &Limits,
    field: &dyn Fn(&str) -> String,
) -> Result<GraphEvent, GraphError> {
    Ok(match change {
        Change::AddNode { id, node_type, properties } => {
            check_properties(&field("node.properties"), properties, limits)?;
            let id = id.clone().unwrap_or_else(NodeId::generate);
            if state.nodes.contains_key(&id) {
                return Err(GraphError::NodeExists(id));
            }
            GraphEvent::NodeAdded(NodeAdded {
                node_id: id,
                node_type: node_type.clone(),
                properties: properties.clone(),
            })
        }
        Change::UpdateNode { id, properties } => {
            check_properties(&field("properties"), properties, limits)?;
            if !state.nodes.contains_key(id) {
                return Err(GraphError::NodeNotFound(id.clone()));
            }
            GraphEvent::NodeUpdated(NodeUpdated { node_id: id.clone(), properties: properties.clone() })
        }
        Change::RemoveNode { id } => {
            if !state.nodes.contains_key(id) {
                return Err(GraphError::NodeNotFound(id.clone()));
            }
            GraphEvent::NodeRemoved(NodeRemoved { node_id: id.clone(), removed_edges: state.incident_edges(id) })
        }
        Change::AddEdge { id, edge_type, source, target, properties } => {
            check_properties(&field("edge.properties"), properties, limits)?;
            let id = id.clone().unwrap_or_else(EdgeId::generate);
            if state.edges.contains_key(&id) {
                return Err(GraphError::EdgeExists(id));
            }
            for end in [source, target] {
                if !state.nodes.contains_key(end) {
                    return Err(GraphError::MissingEndpoint(end.clone()));
                }
            }
            GraphEvent::EdgeAdded(EdgeAdded {
                edge_id: id,
                edge_type: edge_type.clone(),
                source: source.clone(),
                target: target.clone(),
                properties: properties.clone(),
            })
        }
        Change::UpdateEdge { id, properties } => {
            check_properties(&field("properties"), properties, limits)?;
            if !state.edges.contains_key(id) {
                return Err(GraphError::EdgeNotFound(id.clone()));
            }
            GraphEvent::EdgeUpdated(EdgeUpdated { edge_id: id.clone(), properties: properties.clone() })
        }
        Change::RemoveEdge { id } => {
            if !state.edges.contains_key(id) {
                return Err(GraphError::EdgeNotFound(id.clone()));
            }
            GraphEvent::EdgeRemoved(EdgeRemoved { edge_id: id.clone() })
        }
        Change::Rename { name } => {
            check_name(&field("name"), name, limits)?;
            GraphEvent::Renamed(GraphRenamed { name: name.clone() })
        }
    })
}

#[cfg(test)]
mod tests;
