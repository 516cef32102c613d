//! The graph service over real TCP with a tonic client, against real Postgres and NATS.

#[path = "support/harness.rs"]
mod harness;

use std::collections::BTreeSet;

use cim_core::TenantId;
use cim_proto::graph as pb;
use futures::StreamExt;
use harness::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_over_the_wire() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let t = TenantId::new();
    let created = c
        .create_graph(req(
            t,
            pb::CreateGraphRequest {
                name: "people".into(),
                description: "who knows whom".into(),
                properties: props(serde_json::json!({"owner": "ada"})),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let g = created.graph_id.clone();
    assert_eq!(created.version, 1);
    assert_eq!(created.event_ids.len(), 1);

    for n in ["a", "b", "c", "d"] {
        c.add_node(req(t, pb::AddNodeRequest { graph_id: g.clone(), node: Some(node(n, "person")), options: None }))
            .await
            .unwrap();
    }
    for (id, s, tgt, ty) in
        [("ab", "a", "b", "knows"), ("bc", "b", "c", "knows"), ("cd", "c", "d", "likes"), ("ad", "a", "d", "likes")]
    {
        c.add_edge(req(t, pb::AddEdgeRequest { graph_id: g.clone(), edge: Some(edge(id, ty, s, tgt)), options: None }))
            .await
            .unwrap();
    }
    let renamed = c
        .rename_graph(req(
            t,
            pb::RenameGraphRequest { graph_id: g.clone(), name: "friends".into(), options: expect(9) },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.version, 10);
    c.update_node(req(
        t,
        pb::UpdateNodeRequest {
            graph_id: g.clone(),
            node_id: "a".into(),
            properties: props(serde_json::json!({"age": 36})),
            options: None,
        },
    ))
    .await
    .unwrap();
    c.update_edge(req(
        t,
        pb::UpdateEdgeRequest {
            graph_id: g.clone(),
            edge_id: "ab".into(),
            properties: props(serde_json::json!({"since": 2020})),
            options: None,
        },
    ))
    .await
    .unwrap();

    let graph = c.get_graph(req(t, pb::GetGraphRequest { graph_id: g.clone() })).await.unwrap().into_inner();
    assert_eq!((graph.name.as_str(), graph.node_count, graph.edge_count, graph.version), ("friends", 4, 4, 12));
    assert_eq!(graph.status, "active");

    let a =
        c.get_node(req(t, pb::GetNodeRequest { graph_id: g.clone(), node_id: "a".into() })).await.unwrap().into_inner();
    assert_eq!(cim_graph::convert::struct_to_json("p", a.properties).unwrap()["age"], 36.0);

    let out = c
        .neighbors(req(
            t,
            pb::NeighborsRequest {
                graph_id: g.clone(),
                node_id: "a".into(),
                direction: pb::Direction::Out as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let ids: BTreeSet<String> = out.neighbors.iter().map(|n| n.node.as_ref().unwrap().id.clone()).collect();
    assert_eq!(ids, ["b", "d"].map(String::from).into());
    let knows = c
        .neighbors(req(
            t,
            pb::NeighborsRequest {
                graph_id: g.clone(),
                node_id: "a".into(),
                direction: pb::Direction::Out as i32,
                edge_types: vec!["knows".into()],
                limit: 10,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(knows.neighbors.len(), 1);
    assert_eq!(knows.neighbors[0].via.as_ref().unwrap().id, "ab");
    let incoming = c
        .neighbors(req(
            t,
            pb::NeighborsRequest {
                graph_id: g.clone(),
                node_id: "d".into(),
                direction: pb::Direction::In as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(incoming.neighbors.len(), 2);
    let both = c
        .neighbors(req(
            t,
            pb::NeighborsRequest {
                graph_id: g.clone(),
                node_id: "b".into(),
                direction: pb::Direction::Both as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(both.neighbors.len(), 2);

    let walk = c
        .traverse(req(
            t,
            pb::TraverseRequest {
                graph_id: g.clone(),
                start_node_id: "a".into(),
                direction: pb::Direction::Out as i32,
                max_depth: 2,
                max_nodes: 100,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let depths: Vec<(String, u32)> =
        walk.visits.iter().map(|v| (v.node.as_ref().unwrap().id.clone(), v.depth)).collect();
    assert_eq!(depths[0], ("a".into(), 0));
    assert_eq!(depths.len(), 4, "{depths:?}");
    assert!(depths.contains(&("c".into(), 2)));

    let path = c
        .shortest_path(req(
            t,
            pb::ShortestPathRequest {
                graph_id: g.clone(),
                from_node_id: "a".into(),
                to_node_id: "c".into(),
                direction: pb::Direction::Out as i32,
                max_depth: 5,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(path.found);
    assert_eq!(path.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(path.edges.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["ab", "bc"]);
    let none = c
        .shortest_path(req(
            t,
            pb::ShortestPathRequest {
                graph_id: g.clone(),
                from_node_id: "d".into(),
                to_node_id: "a".into(),
                direction: pb::Direction::Out as i32,
                max_depth: 5,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!none.found);

    // Paging: 4 nodes, 3 per page.
    let p1 = c
        .list_nodes(req(
            t,
            pb::ListNodesRequest {
                graph_id: g.clone(),
                page: Some(cim_proto::common::PageRequest { page_size: 3, page_token: String::new() }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p1.nodes.len(), 3);
    let token = p1.page.unwrap().next_page_token;
    assert!(!token.is_empty());
    let p2 = c
        .list_nodes(req(
            t,
            pb::ListNodesRequest {
                graph_id: g.clone(),
                page: Some(cim_proto::common::PageRequest { page_size: 3, page_token: token }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p2.nodes.len(), 1);
    assert!(p2.page.unwrap().next_page_token.is_empty());
    let edges_of_a = c
        .list_edges(req(t, pb::ListEdgesRequest { graph_id: g.clone(), node_id: "a".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(edges_of_a.edges.len(), 2);
    let graphs = c.list_graphs(req(t, pb::ListGraphsRequest::default())).await.unwrap().into_inner();
    assert_eq!(graphs.graphs.len(), 1);

    // A batch is atomic and sees its own changes.
    let batch = c
        .apply_batch(req(
            t,
            pb::ApplyBatchRequest {
                graph_id: g.clone(),
                changes: vec![
                    pb::GraphChange { change: Some(pb::graph_change::Change::AddNode(node("e", "person"))) },
                    pb::GraphChange { change: Some(pb::graph_change::Change::AddEdge(edge("de", "knows", "d", "e"))) },
                ],
                options: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.event_ids.len(), 2);

    // Removing a node removes its edges.
    c.remove_edge(req(t, pb::RemoveEdgeRequest { graph_id: g.clone(), edge_id: "bc".into(), options: None }))
        .await
        .unwrap();
    c.remove_node(req(t, pb::RemoveNodeRequest { graph_id: g.clone(), node_id: "d".into(), options: None }))
        .await
        .unwrap();
    let graph = c.get_graph(req(t, pb::GetGraphRequest { graph_id: g.clone() })).await.unwrap().into_inner();
    assert_eq!((graph.node_count, graph.edge_count), (4, 1));
    let left = c
        .list_edges(req(t, pb::ListEdgesRequest { graph_id: g.clone(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(left.edges.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["ab"]);

    // History: version 5 had a graph with two nodes and no edges... check a few versions.
    let at5 = c
        .get_graph_at_version(req(t, pb::GetGraphAtVersionRequest { graph_id: g.clone(), version: 5 }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((at5.nodes.len(), at5.edges.len()), (4, 0));
    assert_eq!(at5.graph.unwrap().name, "people");
    let at9 = c
        .get_graph_at_version(req(t, pb::GetGraphAtVersionRequest { graph_id: g.clone(), version: 9 }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((at9.nodes.len(), at9.edges.len()), (4, 4));

    // Idempotency: the same key twice appends once.
    let key = Some(cim_proto::common::CommandOptions { expected_version: None, idempotency_key: "k-1".into() });
    let first = c
        .add_node(req(
            t,
            pb::AddNodeRequest { graph_id: g.clone(), node: Some(node("z", "person")), options: key.clone() },
        ))
        .await
        .unwrap()
        .into_inner();
    let again = c
        .add_node(req(t, pb::AddNodeRequest { graph_id: g.clone(), node: Some(node("z", "person")), options: key }))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed && !first.replayed);
    assert_eq!((again.version, again.event_ids), (first.version, first.event_ids));

    // Archived graphs reject changes.
    c.archive_graph(req(t, pb::ArchiveGraphRequest { graph_id: g.clone(), options: None })).await.unwrap();
    let err = c
        .add_node(req(t, pb::AddNodeRequest { graph_id: g.clone(), node: Some(node("y", "person")), options: None }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Every event reached JetStream on the design's subjects, with its headers.
    let client = cim_runtime::nats::connect(&cim_runtime::nats::NatsSettings {
        url: nats_url(),
        client_name: "t".into(),
        connect_timeout: std::time::Duration::from_secs(5),
        security: Default::default(),
    })
    .await
    .unwrap();
    let js = cim_runtime::nats::jetstream(client);
    let prefix: cim_core::SubjectPrefix = svc.prefix.parse().unwrap();
    let stream_name = prefix.stream_name(cim_core::Domain::Graph);
    let total_events =
        c.get_graph(req(t, pb::GetGraphRequest { graph_id: g.clone() })).await.unwrap().into_inner().version;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let n = js.get_stream(&stream_name).await.unwrap().info().await.unwrap().state.messages;
        if n == total_events {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{n} of {total_events} events in the stream");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let stream = js.get_stream(&stream_name).await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap().take(total_events as usize);
    let mut types = Vec::new();
    while let Some(m) = messages.next().await {
        let m = m.unwrap();
        let h = m.headers.as_ref().unwrap();
        let event_type = h.get("Cim-Event-Type").unwrap().as_str().to_owned();
        assert_eq!(m.subject.as_str(), format!("{}.graph.evt.graph.{g}.{event_type}", svc.prefix));
        assert_eq!(h.get("Cim-Aggregate-Id").unwrap().as_str(), g);
        assert_eq!(h.get("Cim-Tenant-Id").unwrap().as_str(), t.to_string());
        assert!(h.get("Nats-Msg-Id").is_some());
        types.push(event_type);
    }
    assert_eq!(types[0], "graph_created");
    assert!(types.contains(&"node_removed".to_owned()));
    assert_eq!(types.last().unwrap(), "graph_archived");
    let _ = js.delete_stream(&stream_name).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_the_right_code_and_changes_nothing() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let t = TenantId::new();
    let g = create(&mut c, t).await;
    c.add_node(req(t, pb::AddNodeRequest { graph_id: g.clone(), node: Some(node("a", "person")), options: None }))
        .await
        .unwrap();
    let version = |c: &mut pb::graph_service_client::GraphServiceClient<_>| {
        let g = g.clone();
        let mut c = c.clone();
        async move { c.get_graph(req(t, pb::GetGraphRequest { graph_id: g })).await.unwrap().into_inner().version }
    };
    let before = version(&mut c).await;

    let cases: Vec<(&str, tonic::Status, Code)> = vec![
        (
            "malformed graph id",
            c.add_node(req(
                t,
                pb::AddNodeRequest { graph_id: "not-a-uuid".into(), node: Some(node("b", "person")), options: None },
            ))
            .await
            .unwrap_err(),
            Code::InvalidArgument,
        ),
        (
            "malformed node id",
            c.add_node(req(
                t,
                pb::AddNodeRequest { graph_id: g.clone(), node: Some(node("b c", "person")), options: None },
            ))
            .await
            .unwrap_err(),
            Code::InvalidArgument,
        ),
        (
            "missing edge endpoint",
            c.add_edge(req(
                t,
                pb::AddEdgeRequest { graph_id: g.clone(), edge: Some(edge("e", "knows", "a", "ghost")), options: None },
            ))
            .await
            .unwrap_err(),
            Code::FailedPrecondition,
        ),
        (
            "unknown graph",
            c.add_node(req(
                t,
                pb::AddNodeRequest {
                    graph_id: cim_core::AggregateId::new().to_string(),
                    node: Some(node("b", "person")),
                    options: None,
                },
            ))
            .await
            .unwrap_err(),
            Code::NotFound,
        ),
        (
            "stale expected_version",
            c.add_node(req(
                t,
                pb::AddNodeRequest { graph_id: g.clone(), node: Some(node("b", "person")), options: expect(1) },
            ))
            .await
            .unwrap_err(),
            Code::Aborted,
        ),
        (
            "oversized properties",
            c.add_node(req(
                t,
                pb::AddNodeRequest {
                    graph_id: g.clone(),
                    node: Some(pb::NodeSpec {
                        id: "b".into(),
                        r#type: "person".into(),
                        properties: props(serde_json::json!({"blob": "x".repeat(70_000)})),
                    }),
                    options: None,
                },
            ))
            .await
            .unwrap_err(),
            Code::InvalidArgument,
        ),
        (
            "traversal without limits",
            c.traverse(req(
                t,
                pb::TraverseRequest { graph_id: g.clone(), start_node_id: "a".into(), ..Default::default() },
            ))
            .await
            .unwrap_err(),
            Code::InvalidArgument,
        ),
        (
            "negative page size",
            c.list_nodes(req(
                t,
                pb::ListNodesRequest {
                    graph_id: g.clone(),
                    page: Some(cim_proto::common::PageRequest { page_size: -1i32 as u32, page_token: String::new() }),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err(),
            Code::InvalidArgument,
        ),
        (
            "duplicate node id",
            c.add_node(req(
                t,
                pb::AddNodeRequest { graph_id: g.clone(), node: Some(node("a", "person")), options: None },
            ))
            .await
            .unwrap_err(),
            Code::AlreadyExists,
        ),
        (
            "no tenant",
            c.get_graph(tonic::Request::new(pb::GetGraphRequest { graph_id: g.clone() })).await.unwrap_err(),
            Code::Unauthenticated,
        ),
    ];
    for (what, status, code) in cases {
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(!status.message().is_empty(), "{what}: no message");
        // The stable code travels in the standard details (google.rpc.ErrorInfo).
        let (stable, _) = cim_proto::status::read_status(&status);
        assert_eq!(stable.grpc(), code, "{what}");
        let info = tonic_types::StatusExt::get_error_details(&status).error_info().cloned();
        assert_eq!(info.map(|i| i.metadata["code"].clone()), Some(stable.as_str().to_owned()), "{what}");
    }
    let oversized = c
        .add_node(req(
            t,
            pb::AddNodeRequest {
                graph_id: g.clone(),
                node: Some(pb::NodeSpec {
                    id: "b".into(),
                    r#type: "person".into(),
                    properties: props(serde_json::json!({"blob": "x".repeat(70_000)})),
                }),
                options: None,
            },
        ))
        .await
        .unwrap_err();
    let (_, violations) = cim_proto::status::read_status(&oversized);
    assert_eq!(violations[0].field, "node.properties");
    assert_eq!(version(&mut c).await, before, "a rejected command changed the graph");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_cannot_see_or_change_another_tenants_graph() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let (a, b) = (TenantId::new(), TenantId::new());
    let g = create(&mut c, a).await;
    assert_eq!(
        c.get_graph(req(b, pb::GetGraphRequest { graph_id: g.clone() })).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        c.add_node(req(b, pb::AddNodeRequest { graph_id: g.clone(), node: Some(node("x", "t")), options: None }))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        c.get_graph_at_version(req(b, pb::GetGraphAtVersionRequest { graph_id: g.clone(), version: 1 }))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert!(c.list_graphs(req(b, pb::ListGraphsRequest::default())).await.unwrap().into_inner().graphs.is_empty());
    // Creating B's graph with A's id does not reveal or touch A's graph.
    let clash = c
        .create_graph(req(b, pb::CreateGraphRequest { graph_id: g.clone(), name: "x".into(), ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(clash.code(), Code::AlreadyExists);
    assert_eq!(c.get_graph(req(a, pb::GetGraphRequest { graph_id: g })).await.unwrap().into_inner().version, 1);
    svc.stop().await;
}

/// Every node and edge of a graph, page by page.
async fn everything(c: &mut Client, t: TenantId, g: &str) -> (Vec<pb::Node>, Vec<pb::Edge>) {
    let g = g.to_owned();
    let nodes = all_nodes(c, t, &g, "").await;
    let mut token = String::new();
    let mut edges = Vec::new();
    loop {
        let page = c
            .list_edges(req(
                t,
                pb::ListEdgesRequest {
                    graph_id: g.clone(),
                    page: Some(cim_proto::common::PageRequest { page_size: 100, page_token: token }),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        edges.extend(page.edges);
        token = page.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
    }
    (nodes, edges)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_concurrent_clients_leave_a_projection_equal_to_the_replay() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let t = TenantId::new();
    let g = create(&mut c, t).await;
    c.add_node(req(t, pb::AddNodeRequest { graph_id: g.clone(), node: Some(node("hub", "hub")), options: None }))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|w| {
            let (mut c, g) = (c.clone(), g.clone());
            tokio::spawn(async move {
                for i in 0..10 {
                    let n = format!("w{w}n{i}");
                    c.add_node(req(
                        t,
                        pb::AddNodeRequest { graph_id: g.clone(), node: Some(node(&n, "leaf")), options: None },
                    ))
                    .await
                    .unwrap();
                    c.add_edge(req(
                        t,
                        pb::AddEdgeRequest {
                            graph_id: g.clone(),
                            edge: Some(edge(&format!("e{n}"), "spoke", "hub", &n)),
                            options: None,
                        },
                    ))
                    .await
                    .unwrap();
                    if i % 3 == 2 {
                        c.remove_node(req(t, pb::RemoveNodeRequest { graph_id: g.clone(), node_id: n, options: None }))
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let graph = c.get_graph(req(t, pb::GetGraphRequest { graph_id: g.clone() })).await.unwrap().into_inner();
    let replay = c
        .get_graph_at_version(req(t, pb::GetGraphAtVersionRequest { graph_id: g.clone(), version: graph.version }))
        .await
        .unwrap()
        .into_inner();
    let (nodes, edges) = everything(&mut c, t, &g).await;
    // 1 hub + 32 * 10 leaves, minus 32 * 3 removed; one edge per surviving leaf.
    assert_eq!(nodes.len(), 1 + 32 * 7);
    assert_eq!(edges.len(), 32 * 7);
    assert_eq!((graph.node_count as usize, graph.edge_count as usize), (nodes.len(), edges.len()));
    assert_eq!(nodes, replay.nodes);
    assert_eq!(edges, replay.edges);
    svc.stop().await;
}

/// Sum of a counter's samples whose labels contain `label`, from this process's registry.
fn counter(name: &str, label: &str) -> f64 {
    cim_runtime::metrics::handle()
        .render()
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Writer `w` adds `n` nodes to `g`, each linked to the previous one; every `check_every`-th
/// step it also checks that a duplicate node and an edge to a missing node are refused.
async fn write_chain(c: &mut Client, t: TenantId, g: &str, w: usize, n: usize, check_every: usize) {
    let g = g.to_owned();
    let mut prev: Option<String> = None;
    for i in 0..n {
        let id = format!("w{w}n{i}");
        let added = c
            .add_node(req(t, pb::AddNodeRequest { graph_id: g.clone(), node: Some(node(&id, "leaf")), options: None }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(added.event_ids.len(), 1);
        if let Some(p) = &prev {
            c.add_edge(req(
                t,
                pb::AddEdgeRequest {
                    graph_id: g.clone(),
                    edge: Some(edge(&format!("e{id}"), "next", p, &id)),
                    options: None,
                },
            ))
            .await
            .unwrap();
        }
        if i % check_every == 0 {
            // Rule checks still hold on either path: a duplicate id and a missing endpoint.
            let dup = c
                .add_node(req(t, pb::AddNodeRequest { graph_id: g.clone(), node: Some(node(&id, "x")), options: None }))
                .await
                .unwrap_err();
            assert_eq!(dup.code(), tonic::Code::AlreadyExists, "{dup:?}");
            let missing = c
                .add_edge(req(
                    t,
                    pb::AddEdgeRequest {
                        graph_id: g.clone(),
                        edge: Some(edge(&format!("x{id}"), "next", &id, "nowhere")),
                        options: None,
                    },
                ))
                .await
                .unwrap_err();
            assert_eq!(missing.code(), tonic::Code::FailedPrecondition, "{missing:?}");
        }
        prev = Some(id);
    }
}

/// Two instances over one schema (as two processes would be) write to the same graph. Each
/// remembers heads from its own writes, so the other's writes make its one-statement path miss;
/// every miss must fall back to the locked path and the result must be a valid, complete history.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_writing_one_graph_keep_a_valid_history() {
    let a = Service::start().await;
    let b = a.replica().await;
    let (mut ca, cb) = (a.client().await, b.client().await);
    let t = TenantId::new();
    let g = create(&mut ca, t).await;
    let (hits, misses) =
        (counter("cim_one_statement_writes_total", "\"hit\""), counter("cim_one_statement_writes_total", "\"miss\""));
    let tasks: Vec<_> = (0..16)
        .map(|w| {
            let mut c = if w % 2 == 0 { ca.clone() } else { cb.clone() };
            let g = g.clone();
            tokio::spawn(async move { write_chain(&mut c, t, &g, w, 12, 1).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let graph = ca.get_graph(req(t, pb::GetGraphRequest { graph_id: g.clone() })).await.unwrap().into_inner();
    // Created + 16 * 12 nodes + 16 * 11 edges.
    assert_eq!(graph.version, 1 + 16 * 12 + 16 * 11);
    assert_eq!((graph.node_count, graph.edge_count), (16 * 12, 16 * 11));
    // The hash chain is intact: every head the one-statement path chained onto was the real one.
    let store = store_of(&a).await;
    let id: cim_core::AggregateId = g.parse().unwrap();
    assert_eq!(store.verify(t, id).await.unwrap() as u64, graph.version);
    let replay = ca
        .get_graph_at_version(req(t, pb::GetGraphAtVersionRequest { graph_id: g.clone(), version: graph.version }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay.nodes.len() as u64, graph.node_count);
    assert_eq!(replay.edges.len() as u64, graph.edge_count);
    // Both paths ran: one-statement writes, and misses caused by the other instance's writes.
    assert!(counter("cim_one_statement_writes_total", "\"hit\"") > hits, "no one-statement write");
    assert!(counter("cim_one_statement_writes_total", "\"miss\"") > misses, "no fallback to the locked path");
    b.stop_replica().await;
    a.stop().await;
}

/// Commands of different graphs share one statement (group commit). Two instances write to
/// twelve graphs at once, so groups mix commands that succeed with ones whose head the other
/// instance moved (and duplicates and missing endpoints, which take the locked path): each graph
/// must end with a complete history, an intact hash chain and a projection equal to its replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grouped_writes_to_many_graphs_keep_every_graph_valid() {
    let a = Service::start().await;
    let b = a.replica().await;
    let (mut ca, cb) = (a.client().await, b.client().await);
    let t = TenantId::new();
    let mut graphs = Vec::new();
    for _ in 0..12 {
        graphs.push(create(&mut ca, t).await);
    }
    let tasks: Vec<_> = (0..24)
        .map(|w| {
            let mut c = if w % 2 == 0 { ca.clone() } else { cb.clone() };
            let g = graphs[w % 12].clone();
            tokio::spawn(async move { write_chain(&mut c, t, &g, w, 8, 4).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let store = store_of(&a).await;
    for g in &graphs {
        let graph = ca.get_graph(req(t, pb::GetGraphRequest { graph_id: g.clone() })).await.unwrap().into_inner();
        // Created + two writers' 8 nodes and 7 edges each.
        assert_eq!(graph.version, 1 + 2 * (8 + 7));
        assert_eq!((graph.node_count, graph.edge_count), (16, 14));
        let id: cim_core::AggregateId = g.parse().unwrap();
        assert_eq!(store.verify(t, id).await.unwrap() as u64, graph.version);
        let replay = ca
            .get_graph_at_version(req(t, pb::GetGraphAtVersionRequest { graph_id: g.clone(), version: graph.version }))
            .await
            .unwrap()
            .into_inner();
        let (nodes, edges) = everything(&mut ca, t, g).await;
        assert_eq!((nodes, edges), (replay.nodes, replay.edges));
    }
    // Groups formed: some transaction wrote events of more than one graph.
    let shared: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT xmin::text FROM events WHERE tenant_id = $1 \
         GROUP BY 1 HAVING count(DISTINCT aggregate_id) > 1) s",
    )
    .bind(t.as_uuid())
    .fetch_one(&a.pool)
    .await
    .unwrap();
    assert!(shared > 0, "no statement wrote more than one graph's command");
    b.stop_replica().await;
    a.stop().await;
}

/// Postgres connections of the service are killed (`pg_terminate_backend`, as a database
/// restart or failover would) while sixteen clients add nodes to sixteen graphs through grouped
/// writes. Each command either succeeds, or gets UNAVAILABLE and is retried by its client (a
/// retry may find that the lost answer's commit went through: ALREADY_EXISTS). Nothing
/// acknowledged is lost: every acknowledged event is stored and reaches JetStream once, and each
/// graph's projection equals its replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_database_connections_lose_no_acknowledged_command() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const NODES: u64 = 60;
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let t = TenantId::new();
    let mut graphs = Vec::new();
    for _ in 0..16 {
        graphs.push(create(&mut c, t).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let (pool, stop) = (svc.pool.clone(), stop.clone());
        tokio::spawn(async move {
            use sqlx::Connection;
            let mut admin = sqlx::PgConnection::connect(&database_url()).await.unwrap();
            let (mut pids, mut killed, mut round) = (BTreeSet::new(), Vec::<i32>::new(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                // Learn the service's connections from its own pool (this test shares it), then
                // kill those of them that are running a statement.
                let mut held = Vec::new();
                while let Some(mut conn) = pool.try_acquire() {
                    // try_acquire skips the pool's liveness check, so this may be a connection
                    // an earlier round killed just after its statement ended: drop it for good.
                    match sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(&mut *conn).await {
                        Ok(pid) => {
                            pids.insert(pid);
                        }
                        Err(_) => conn.close_on_drop(),
                    }
                    held.push(conn);
                }
                drop(held);
                // Mostly grouped writes (their text starts with the store's `WITH cmd AS`), every
                // tenth round anything busy (the relay, the locked path).
                let list: Vec<i32> = pids.iter().copied().collect();
                round += 1;
                let hit: Vec<i32> = sqlx::query_scalar(
                    "WITH busy AS MATERIALIZED (SELECT pid FROM pg_stat_activity WHERE pid = ANY($1) \
                     AND state = 'active' AND ($2 OR query LIKE 'WITH cmd AS%')) \
                     SELECT pid FROM busy WHERE pg_terminate_backend(pid)",
                )
                .bind(&list)
                .bind(round % 10 == 0)
                .fetch_all(&mut admin)
                .await
                .unwrap();
                killed.extend(hit);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            // pg_terminate_backend only signals: wait until every killed backend has exited, so
            // that none dies under the checks below.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let alive: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                    .bind(&killed)
                    .fetch_one(&mut admin)
                    .await
                    .unwrap();
                if alive == 0 {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "{alive} killed backends still alive");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            killed.len() as u64
        })
    };
    // Writers go on past NODES (for up to 30 s) until some command has met a kill: whether a
    // kill lands inside a statement is a race, and a run where none did would prove nothing.
    let hit = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let started = std::time::Instant::now();
    let writers: Vec<_> = graphs
        .iter()
        .enumerate()
        .map(|(w, g)| {
            let (mut c, g, hit) = (c.clone(), g.clone(), hit.clone());
            tokio::spawn(async move {
                let (mut acked, mut unavailable, mut ambiguous) = (Vec::new(), 0u32, 0u32);
                let mut i = 0u64;
                while i < NODES
                    || (hit.load(Ordering::Relaxed) == 0 && started.elapsed() < std::time::Duration::from_secs(30))
                {
                    let mut retried = false;
                    loop {
                        let r = c
                            .add_node(req(
                                t,
                                pb::AddNodeRequest {
                                    graph_id: g.clone(),
                                    node: Some(node(&format!("w{w}n{i}"), "leaf")),
                                    options: None,
                                },
                            ))
                            .await;
                        match r {
                            Ok(done) => {
                                acked.extend(done.into_inner().event_ids);
                                break;
                            }
                            Err(s) if s.code() == Code::Unavailable => {
                                unavailable += 1;
                                hit.fetch_add(1, Ordering::Relaxed);
                                retried = true;
                                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                            }
                            Err(s) if s.code() == Code::AlreadyExists && retried => {
                                ambiguous += 1;
                                break;
                            }
                            Err(s) => panic!("{s:?}"),
                        }
                    }
                    i += 1;
                }
                (acked, unavailable, ambiguous, i)
            })
        })
        .collect();
    let (mut acked, mut unavailable, mut ambiguous, mut written) = (BTreeSet::new(), 0, 0, Vec::new());
    for w in writers {
        let (ids, u, a, n) = w.await.unwrap();
        acked.extend(ids);
        (unavailable, ambiguous) = (unavailable + u, ambiguous + a);
        written.push(n);
    }
    stop.store(true, Ordering::Relaxed);
    let killed = killer.await.unwrap();
    assert!(killed > 0, "no connection was killed while busy");
    assert!(unavailable > 0, "{killed} kills, but no command saw one");
    // Every node is there once: acknowledged, or written before its answer was lost.
    let store = store_of(&svc).await;
    let mut stored = BTreeSet::new();
    for (g, &nodes) in graphs.iter().zip(&written) {
        let graph = c.get_graph(req(t, pb::GetGraphRequest { graph_id: g.clone() })).await.unwrap().into_inner();
        assert_eq!((graph.version, graph.node_count), (nodes + 1, nodes), "graph {g}");
        let id: cim_core::AggregateId = g.parse().unwrap();
        assert_eq!(store.verify(t, id).await.unwrap() as u64, nodes + 1);
        stored.extend(store.events(t, id, 0).await.unwrap().iter().map(|e| e.event_id.to_string()));
        let replay = c
            .get_graph_at_version(req(t, pb::GetGraphAtVersionRequest { graph_id: g.clone(), version: nodes + 1 }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(everything(&mut c, t, g).await, (replay.nodes, replay.edges));
    }
    assert_eq!((acked.len() + ambiguous as usize) as u64, written.iter().sum::<u64>());
    assert!(acked.is_subset(&stored), "an acknowledged event is missing");
    // The relay (whose connections were killed too) publishes each stored event once.
    let client = cim_runtime::nats::connect(&cim_runtime::nats::NatsSettings {
        url: nats_url(),
        client_name: "t".into(),
        connect_timeout: std::time::Duration::from_secs(5),
        security: Default::default(),
    })
    .await
    .unwrap();
    let js = cim_runtime::nats::jetstream(client);
    let stream_name = svc.prefix.parse::<cim_core::SubjectPrefix>().unwrap().stream_name(cim_core::Domain::Graph);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let n = js.get_stream(&stream_name).await.unwrap().info().await.unwrap().state.messages;
        if n >= stored.len() as u64 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{n} of {} events in the stream", stored.len());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let consumer = js
        .get_stream(&stream_name)
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap().take(stored.len());
    let mut published = Vec::new();
    while let Some(m) = messages.next().await {
        let m = m.unwrap();
        published.push(m.headers.as_ref().unwrap().get("Nats-Msg-Id").unwrap().as_str().to_owned());
    }
    let unique: BTreeSet<_> = published.iter().cloned().collect();
    assert_eq!(unique.len(), published.len(), "an event was published twice");
    assert_eq!(unique, stored);
    let _ = js.delete_stream(&stream_name).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_independent_python_client_discovers_and_calls_the_service() {
    let svc = Service::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/reflect_call.py");
    let tenant = TenantId::new().to_string();
    let grpc = svc.grpc.to_string();
    let out = tokio::task::spawn_blocking(move || {
        let python = std::env::var("CIM_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        std::process::Command::new(python).arg(script).arg(grpc).arg(tenant).output()
    })
    .await
    .unwrap()
    .expect("python3 must be installed (scripts/test.sh installs tests/python/requirements.txt)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python client failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let methods = seen["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 19, "{methods:?}");
    let services = seen["services"].as_array().unwrap();
    assert!(services.iter().any(|s| s.as_str().unwrap().ends_with(".ServerReflection")), "{services:?}");
    let details = &seen["bad_request_details"];
    assert_eq!((details["reason"].as_str(), details["domain"].as_str()), (Some("INVALID_ARGUMENT"), Some("cim")));
    assert_eq!(details["fields"], serde_json::json!(["graph_id"]));
    assert!(details["message"].as_str().unwrap().starts_with("graph_id:"), "{details}");
    svc.stop().await;
}
