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
    GraphEvent::Created(GraphCreated { name: "g".into(), description: String::new(), properties: Properties::new() })
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
    let unnamed = GraphCommand::Create { name: " ".into(), description: String::new(), properties: Properties::new() };
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
    let events =
        when(&[created()], one(Change::AddNode { id: None, node_type: id("person"), properties: Properties::new() }))
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
    let err =
        decide(&state, &one(Change::AddNode { id: None, node_type: id("t"), properties: big }), &limits).unwrap_err();
    assert!(matches!(&err, GraphError::Invalid(f, r) if f == "node.properties" && r.contains("bytes")), "{err}");
    let mut deep = json!(1);
    for _ in 0..=limits.max_property_depth {
        deep = json!({ "d": deep });
    }
    let deep = props(deep);
    let err =
        decide(&state, &one(Change::AddNode { id: None, node_type: id("t"), properties: deep }), &limits).unwrap_err();
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
    let create = GraphCommand::Create { name: "g".into(), description: "a\0b".into(), properties: Properties::new() };
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
