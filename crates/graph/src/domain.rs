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
mod tests {
    use super::*;
    use serde_json::json;

    fn id<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().unwrap()
    }

    fn props(v: serde_json::Value) -> Properties {
        v.as_object().unwrap().clone()
    }

    fn created() -> GraphEvent {
        GraphEvent::Created(GraphCreated {
            name: "g".into(),
            description: String::new(),
            properties: Properties::new(),
        })
    }

    fn node_added(n: &str) -> GraphEvent {
        GraphEvent::NodeAdded(NodeAdded { node_id: id(n), node_type: id("person"), properties: Properties::new() })
    }

    fn edge_added(e: &str, s: &str, t: &str) -> GraphEvent {
        GraphEvent::EdgeAdded(EdgeAdded {
            edge_id: id(e),
            edge_type: id("knows"),
            source: id(s),
            target: id(t),
            properties: Properties::new(),
        })
    }

    /// Given `history`, when `command`, then the result.
    fn when(history: &[GraphEvent], command: GraphCommand) -> Result<Vec<GraphEvent>, GraphError> {
        decide(&GraphState::replay(history), &command, &Limits::default())
    }

    fn one(change: Change) -> GraphCommand {
        GraphCommand::Apply(vec![change])
    }

    fn add_node(n: &str) -> Change {
        Change::AddNode { id: Some(id(n)), node_type: id("person"), properties: Properties::new() }
    }

    fn add_edge(e: &str, s: &str, t: &str) -> Change {
        Change::AddEdge {
            id: Some(id(e)),
            edge_type: id("knows"),
            source: id(s),
            target: id(t),
            properties: Properties::new(),
        }
    }

    #[test]
    fn creating_a_graph() {
        let cmd = GraphCommand::Create { name: "g".into(), description: String::new(), properties: Properties::new() };
        assert_eq!(when(&[], cmd.clone()), Ok(vec![created()]));
        assert_eq!(when(&[created()], cmd), Err(GraphError::GraphExists));
        let unnamed =
            GraphCommand::Create { name: " ".into(), description: String::new(), properties: Properties::new() };
        assert!(matches!(when(&[], unnamed), Err(GraphError::Invalid(f, _)) if f == "name"));
    }

    #[test]
    fn changes_to_a_missing_graph_are_not_found() {
        assert_eq!(when(&[], one(add_node("a"))), Err(GraphError::GraphNotFound));
        assert_eq!(when(&[], GraphCommand::Archive), Err(GraphError::GraphNotFound));
        assert_eq!(GraphError::GraphNotFound.code(), ErrorCode::NotFound);
    }

    #[test]
    fn node_ids_are_unique() {
        assert_eq!(when(&[created()], one(add_node("a"))), Ok(vec![node_added("a")]));
        let err = when(&[created(), node_added("a")], one(add_node("a"))).unwrap_err();
        assert_eq!(err, GraphError::NodeExists(id("a")));
        assert_eq!(err.code(), ErrorCode::AlreadyExists);
    }

    #[test]
    fn an_unnamed_node_gets_a_generated_id() {
        let events = when(
            &[created()],
            one(Change::AddNode { id: None, node_type: id("person"), properties: Properties::new() }),
        )
        .unwrap();
        let GraphEvent::NodeAdded(added) = &events[0] else { panic!("{events:?}") };
        assert_eq!(added.node_id.as_str().len(), 36);
    }

    #[test]
    fn edge_endpoints_must_exist() {
        let history = [created(), node_added("a"), node_added("b")];
        assert_eq!(when(&history, one(add_edge("e", "a", "b"))), Ok(vec![edge_added("e", "a", "b")]));
        let err = when(&history, one(add_edge("e", "a", "zz"))).unwrap_err();
        assert_eq!(err, GraphError::MissingEndpoint(id("zz")));
        assert_eq!(err.code(), ErrorCode::FailedPrecondition);
        assert_eq!(when(&history, one(add_edge("e", "zz", "a"))), Err(GraphError::MissingEndpoint(id("zz"))));
    }

    #[test]
    fn edge_ids_are_unique() {
        let history = [created(), node_added("a"), node_added("b"), edge_added("e", "a", "b")];
        assert_eq!(when(&history, one(add_edge("e", "b", "a"))), Err(GraphError::EdgeExists(id("e"))));
    }

    #[test]
    fn removing_a_node_removes_its_edges_and_lists_them() {
        let history = [
            created(),
            node_added("a"),
            node_added("b"),
            node_added("c"),
            edge_added("ab", "a", "b"),
            edge_added("ca", "c", "a"),
            edge_added("aa", "a", "a"),
            edge_added("bc", "b", "c"),
        ];
        let events = when(&history, one(Change::RemoveNode { id: id("a") })).unwrap();
        assert_eq!(
            events,
            vec![GraphEvent::NodeRemoved(NodeRemoved {
                node_id: id("a"),
                removed_edges: vec![id("aa"), id("ab"), id("ca")],
            })]
        );
        let mut state = GraphState::replay(&history);
        state.apply(&events[0]);
        assert_eq!(state.edges.keys().map(EdgeId::as_str).collect::<Vec<_>>(), ["bc"]);
        assert_eq!(when(&history, one(Change::RemoveNode { id: id("x") })), Err(GraphError::NodeNotFound(id("x"))));
    }

    #[test]
    fn an_archived_graph_rejects_every_change() {
        let history = [created(), node_added("a"), GraphEvent::Archived(GraphArchived {})];
        for change in [
            add_node("b"),
            Change::UpdateNode { id: id("a"), properties: Properties::new() },
            Change::RemoveNode { id: id("a") },
            Change::Rename { name: "x".into() },
        ] {
            let err = when(&history, one(change)).unwrap_err();
            assert_eq!(err, GraphError::Archived);
            assert_eq!(err.code(), ErrorCode::FailedPrecondition);
        }
        assert_eq!(when(&history, GraphCommand::Archive), Err(GraphError::Archived));
        assert_eq!(when(&history[..2], GraphCommand::Archive), Ok(vec![GraphEvent::Archived(GraphArchived {})]));
    }

    #[test]
    fn property_documents_are_bounded_in_size_and_depth() {
        let limits = Limits::default();
        let state = GraphState::replay(&[created()]);
        let big = props(json!({"blob": "x".repeat(limits.max_property_bytes)}));
        let err = decide(&state, &one(Change::AddNode { id: None, node_type: id("t"), properties: big }), &limits)
            .unwrap_err();
        assert!(matches!(&err, GraphError::Invalid(f, r) if f == "node.properties" && r.contains("bytes")), "{err}");
        let mut deep = json!(1);
        for _ in 0..=limits.max_property_depth {
            deep = json!({ "d": deep });
        }
        let deep = props(deep);
        let err = decide(&state, &one(Change::AddNode { id: None, node_type: id("t"), properties: deep }), &limits)
            .unwrap_err();
        assert!(matches!(&err, GraphError::Invalid(_, r) if r.contains("deep")), "{err}");
        assert_eq!(err.code(), ErrorCode::InvalidArgument);
        assert_eq!(err.field_violation().unwrap().field, "node.properties");
        // Exactly at the limit is fine.
        let mut at_limit = json!(1);
        for _ in 0..limits.max_property_depth {
            at_limit = json!({ "d": at_limit });
        }
        assert!(check_properties("p", &props(at_limit), &limits).is_ok());
        let fine = props(json!({"a": {"b": [1, 2, {"c": null}]}}));
        assert!(check_properties("p", &fine, &limits).is_ok());
    }

    #[test]
    fn updates_need_the_element_and_replace_properties() {
        let history = [created(), node_added("a"), node_added("b"), edge_added("e", "a", "b")];
        let p = props(json!({"age": 3}));
        let events = when(&history, one(Change::UpdateNode { id: id("a"), properties: p.clone() })).unwrap();
        let mut state = GraphState::replay(&history);
        state.apply(&events[0]);
        assert_eq!(state.nodes[&id::<NodeId>("a")].properties, p);
        assert_eq!(
            when(&history, one(Change::UpdateEdge { id: id("x"), properties: p.clone() })),
            Err(GraphError::EdgeNotFound(id("x")))
        );
        assert_eq!(
            when(&history, one(Change::UpdateNode { id: id("x"), properties: p })),
            Err(GraphError::NodeNotFound(id("x")))
        );
        assert_eq!(
            when(&history, one(Change::RemoveEdge { id: id("e") })),
            Ok(vec![GraphEvent::EdgeRemoved(EdgeRemoved { edge_id: id("e") })])
        );
        assert_eq!(when(&history, one(Change::RemoveEdge { id: id("x") })), Err(GraphError::EdgeNotFound(id("x"))));
    }

    #[test]
    fn a_batch_sees_its_own_changes_and_is_all_or_nothing() {
        let batch = GraphCommand::Apply(vec![
            add_node("a"),
            add_node("b"),
            add_edge("e", "a", "b"),
            Change::Rename { name: "h".into() },
        ]);
        let events = when(&[created()], batch).unwrap();
        assert_eq!(events.len(), 4);
        let failing = GraphCommand::Apply(vec![add_node("a"), add_edge("e", "a", "missing"), add_node("c")]);
        assert_eq!(when(&[created()], failing), Err(GraphError::MissingEndpoint(id("missing"))));
        let bad_field = GraphCommand::Apply(vec![add_node("a"), Change::Rename { name: String::new() }]);
        assert!(matches!(when(&[created()], bad_field), Err(GraphError::Invalid(f, _)) if f == "changes[1].name"));
        assert!(matches!(when(&[created()], GraphCommand::Apply(vec![])), Err(GraphError::Invalid(..))));
        let too_many = GraphCommand::Apply((0..1001).map(|i| add_node(&format!("n{i}"))).collect());
        assert!(matches!(when(&[created()], too_many), Err(GraphError::Invalid(f, _)) if f == "changes"));
    }

    #[test]
    fn values_postgres_cannot_store_are_rejected() {
        let limits = Limits::default();
        let state = GraphState::replay(&[created()]);
        for bad in [json!({"a\u{0}": 1}), json!({"a": ["x\u{0}"]}), json!({"a": {"b": "\u{0}"}})] {
            let cmd = one(Change::AddNode { id: None, node_type: id("t"), properties: props(bad) });
            assert!(matches!(decide(&state, &cmd, &limits), Err(GraphError::Invalid(f, _)) if f == "node.properties"));
        }
        // Every finite number is storable now that numbers read back exactly (up to 1e308 they
        // were refused, because the 309-digit text Postgres prints could not be read back).
        let extremes = json!({"a": f64::MAX, "b": [-1e308], "c": {"d": 1.5e308}, "e": 5e-324});
        assert!(check_properties("p", &props(extremes), &limits).is_ok());
        let create =
            GraphCommand::Create { name: "g".into(), description: "a\0b".into(), properties: Properties::new() };
        assert!(
            matches!(decide(&GraphState::default(), &create, &limits), Err(GraphError::Invalid(f, _)) if f == "description")
        );
    }

    #[test]
    fn assumed_decisions_match_decisions_on_the_real_state() {
        let history = [created(), node_added("a"), node_added("b")];
        let real = GraphState::replay(&history);
        let limits = Limits::default();
        let cmd = GraphCommand::Apply(vec![add_node("c"), add_edge("e", "a", "c"), add_edge("f", "c", "b")]);
        let (events, assumed) = decide_assuming(&cmd, &limits).unwrap();
        assert_eq!(Ok(events), decide(&real, &cmd, &limits));
        assert_eq!(assumed.absent_nodes, vec![id::<NodeId>("c")]);
        assert_eq!(assumed.present_nodes, vec![id::<NodeId>("a"), id("b")]);
        assert_eq!(assumed.absent_edges, vec![id::<EdgeId>("e"), id("f")]);
        // Anything but additions, or a command the assumptions already reject, takes the locked path.
        assert_eq!(decide_assuming(&one(Change::RemoveNode { id: id("a") }), &limits), None);
        assert_eq!(decide_assuming(&GraphCommand::Archive, &limits), None);
        assert_eq!(decide_assuming(&GraphCommand::Apply(vec![add_edge("e", "x", "y"), add_node("x")]), &limits), None);
        assert_eq!(decide_assuming(&GraphCommand::Apply(vec![]), &limits), None);
    }

    #[test]
    fn needs_name_every_fact_a_command_consults() {
        let cmd = GraphCommand::Apply(vec![add_edge("e", "a", "b"), Change::RemoveNode { id: id("c") }, add_node("d")]);
        let needs = cmd.needs();
        assert_eq!(needs.nodes, ["a", "b", "c", "d"].iter().map(|s| id(s)).collect());
        assert_eq!(needs.edges, [id("e")].into_iter().collect());
        assert_eq!(needs.incident_to, [id("c")].into_iter().collect());
        // Deciding with only the needed facts gives what deciding with the full state gives.
        let history = [created(), node_added("a"), node_added("b"), node_added("c"), edge_added("x", "c", "a")];
        let full = GraphState::replay(&history);
        let mut partial = GraphState { exists: true, ..Default::default() };
        for n in &needs.nodes {
            if let Some(node) = full.nodes.get(n) {
                partial.nodes.insert(n.clone(), node.clone());
            }
        }
        for (e, edge) in &full.edges {
            if needs.edges.contains(e)
                || needs.incident_to.contains(&edge.source)
                || needs.incident_to.contains(&edge.target)
            {
                partial.edges.insert(e.clone(), edge.clone());
            }
        }
        let limits = Limits::default();
        assert_eq!(decide(&partial, &cmd, &limits), decide(&full, &cmd, &limits));
    }

    #[test]
    fn state_survives_a_json_round_trip_for_snapshots() {
        let state = GraphState::replay(&[created(), node_added("a"), node_added("b"), edge_added("e", "a", "b")]);
        let back: GraphState = serde_json::from_value(serde_json::to_value(&state).unwrap()).unwrap();
        assert_eq!(back, state);
    }
}
