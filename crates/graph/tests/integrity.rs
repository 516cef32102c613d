//! Regressions found from outside (issues 13 and 26): traversal limits, exact numbers on every
//! path, text validated before SQL, undecodable and malformed requests, created ids, and the
//! standard rich error model as third-party clients read it.

#[path = "support/harness.rs"]
mod harness;

use cim_core::TenantId;
use cim_proto::graph as pb;
use harness::*;
use tonic::Code;

fn add_node(id: &str) -> pb::GraphChange {
    pb::GraphChange { change: Some(pb::graph_change::Change::AddNode(node(id, "n"))) }
}

fn add_edge(id: &str, s: &str, t: &str) -> pb::GraphChange {
    pb::GraphChange { change: Some(pb::graph_change::Change::AddEdge(edge(id, "e", s, t))) }
}

async fn batch(c: &mut Client, t: TenantId, g: &str, changes: Vec<pb::GraphChange>) -> pb::CommandResponse {
    c.apply_batch(req(t, pb::ApplyBatchRequest { graph_id: g.into(), changes, options: None }))
        .await
        .unwrap()
        .into_inner()
}

/// The issue's graph: `hub` with 30 self-loops, then `hub -> a -> far`.
async fn hub_graph(c: &mut Client, t: TenantId) -> String {
    let g = create(c, t).await;
    let mut changes = vec![add_node("hub"), add_node("a"), add_node("far")];
    changes.extend((0..30).map(|i| add_edge(&format!("loop{i:02}"), "hub", "hub")));
    changes.push(add_edge("z1", "hub", "a"));
    changes.push(add_edge("z2", "a", "far"));
    batch(c, t, &g, changes).await;
    g
}

async fn traverse(c: &mut Client, t: TenantId, g: &str, dir: pb::Direction, max_nodes: u32) -> (Vec<String>, bool) {
    let r = c
        .traverse(req(
            t,
            pb::TraverseRequest {
                graph_id: g.into(),
                start_node_id: "hub".into(),
                direction: dir as i32,
                edge_types: vec![],
                max_depth: 3,
                max_nodes,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    (r.visits.into_iter().map(|v| v.node.unwrap().id).collect(), r.truncated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traverse_returns_the_bfs_prefix_and_truncated_exactly_when_something_was_left_out() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let t = TenantId::new();
    let g = hub_graph(&mut c, t).await;
    for dir in [pb::Direction::Out, pb::Direction::Both] {
        let all = vec!["hub".to_owned(), "a".to_owned(), "far".to_owned()];
        assert_eq!(traverse(&mut c, t, &g, dir, 3).await, (all.clone(), false), "{dir:?} max_nodes 3");
        assert_eq!(traverse(&mut c, t, &g, dir, 10).await, (all.clone(), false), "{dir:?} max_nodes 10");
        assert_eq!(traverse(&mut c, t, &g, dir, 2).await, (all[..2].to_vec(), true), "{dir:?} max_nodes 2");
        assert_eq!(traverse(&mut c, t, &g, dir, 1).await, (all[..1].to_vec(), true), "{dir:?} max_nodes 1");
    }
    // Depth bounds what "reachable" means: within depth 1 only `a` is reachable, and it fits.
    let r = c
        .traverse(req(
            t,
            pb::TraverseRequest {
                graph_id: g.clone(),
                start_node_id: "hub".into(),
                direction: pb::Direction::Out as i32,
                edge_types: vec![],
                max_depth: 1,
                max_nodes: 2,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.visits.len(), r.truncated), (2, false));
    assert_eq!(r.visits[1].parent_id, "hub");

    // Shortest path through the self-loops finds `far` at depth 2.
    let path = c
        .shortest_path(req(
            t,
            pb::ShortestPathRequest {
                graph_id: g.clone(),
                from_node_id: "hub".into(),
                to_node_id: "far".into(),
                direction: pb::Direction::Out as i32,
                edge_types: vec![],
                max_depth: 3,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(path.found && !path.truncated);
    assert_eq!(path.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["hub", "a", "far"]);
    assert_eq!(path.edges.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["z1", "z2"]);

    // Neighbours: a limited answer is the first edges by id, and says it was limited; with BOTH
    // a self-loop counts once.
    let neighbors = |dir: pb::Direction, limit: u32| pb::NeighborsRequest {
        graph_id: g.clone(),
        node_id: "hub".into(),
        direction: dir as i32,
        edge_types: vec![],
        limit,
    };
    let few = c.neighbors(req(t, neighbors(pb::Direction::Out, 3))).await.unwrap().into_inner();
    let ids: Vec<_> = few.neighbors.iter().map(|n| n.via.as_ref().unwrap().id.clone()).collect();
    assert_eq!((ids, few.truncated), (vec!["loop00".to_owned(), "loop01".into(), "loop02".into()], true));
    let both = c.neighbors(req(t, neighbors(pb::Direction::Both, 100))).await.unwrap().into_inner();
    assert_eq!((both.neighbors.len(), both.truncated), (31, false));
    let exact = c.neighbors(req(t, neighbors(pb::Direction::Out, 31))).await.unwrap().into_inner();
    assert_eq!((exact.neighbors.len(), exact.truncated), (31, false));

    // A Direction the enum does not define is refused, not read as OUT.
    for bad in [4, i32::MAX, -1] {
        let err = c
            .neighbors(req(t, pb::NeighborsRequest { direction: bad, ..neighbors(pb::Direction::Out, 3) }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "direction {bad}: {err:?}");
    }
    svc.stop().await;
}

fn json(s: Option<prost_types::Struct>) -> serde_json::Value {
    serde_json::Value::Object(cim_proto::json::struct_to_json(s).unwrap())
}

/// Every document comes back as the same value on every read path: the projection (ListNodes,
/// GetNode), the history (GetGraphAtVersion), the events on JetStream (what the websocket
/// forwards), after a restart; integers stay integers; the hash chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stored_json_comes_back_exactly_on_every_path() {
    let cases: usize = std::env::var("CIM_TEST_JSON_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let t = TenantId::new();
    let g = create(&mut c, t).await;
    let docs = documents(cases);
    // The issue's reproduction first: one AddNode, then the history at its version.
    let x: f64 = 2.7715077941825975e-163;
    c.add_node(req(
        t,
        pb::AddNodeRequest {
            graph_id: g.clone(),
            node: Some(pb::NodeSpec {
                id: "x".into(),
                r#type: "n".into(),
                properties: props(
                    serde_json::json!({"x": x, "since": 2020, "max": f64::MAX, "min": f64::MIN, "sub": 5e-324}),
                ),
            }),
            options: None,
        },
    ))
    .await
    .unwrap();
    let at2 = c
        .get_graph_at_version(req(t, pb::GetGraphAtVersionRequest { graph_id: g.clone(), version: 2 }))
        .await
        .unwrap()
        .into_inner();
    let back = json(at2.nodes[0].properties.clone());
    for (key, value) in [("x", x), ("max", f64::MAX), ("min", f64::MIN), ("sub", 5e-324)] {
        assert_eq!(back[key].as_f64().unwrap().to_bits(), value.to_bits(), "{key}");
    }
    let listed =
        c.get_node(req(t, pb::GetNodeRequest { graph_id: g.clone(), node_id: "x".into() })).await.unwrap().into_inner();
    assert_eq!(json(listed.properties)["max"].as_f64(), Some(f64::MAX), "the projection (jsonb) gave it back");
    assert_eq!(back["since"].to_string(), "2020", "an integer came back as {}", back["since"]);

    for (chunk_no, chunk) in docs.chunks(200).enumerate() {
        let changes = chunk
            .iter()
            .enumerate()
            .map(|(i, doc)| pb::GraphChange {
                change: Some(pb::graph_change::Change::AddNode(pb::NodeSpec {
                    id: format!("d{:05}", chunk_no * 200 + i),
                    r#type: "doc".into(),
                    properties: Some(cim_proto::json::json_to_struct(doc)),
                })),
            })
            .collect();
        batch(&mut c, t, &g, changes).await;
    }
    let expected = |id: &str| serde_json::Value::Object(docs[id[1..].parse::<usize>().unwrap()].clone());
    let check = |what: &str, id: &str, got: serde_json::Value| {
        assert!(same(&expected(id), &got), "{what} {id}: stored {} came back {got}", expected(id));
    };
    let listed = all_nodes(&mut c, t, &g, "doc").await;
    assert_eq!(listed.len(), docs.len());
    for n in &listed {
        check("ListNodes", &n.id, json(n.properties.clone()));
    }
    let one = c.get_node(req(t, pb::GetNodeRequest { graph_id: g.clone(), node_id: "d00007".into() })).await.unwrap();
    check("GetNode", "d00007", json(one.into_inner().properties));
    let version = c.get_graph(req(t, pb::GetGraphRequest { graph_id: g.clone() })).await.unwrap().into_inner().version;
    let at = c
        .get_graph_at_version(req(t, pb::GetGraphAtVersionRequest { graph_id: g.clone(), version }))
        .await
        .unwrap()
        .into_inner();
    for n in at.nodes.iter().filter(|n| n.id.starts_with('d')) {
        check("GetGraphAtVersion", &n.id, json(n.properties.clone()));
    }
    // The events as stored and as published (the websocket forwards these envelopes).
    let store = store_of(&svc).await;
    let id: cim_core::AggregateId = g.parse().unwrap();
    assert_eq!(store.verify(t, id).await.unwrap() as u64, version);
    for e in store.history(t, id).await.unwrap() {
        if let Some(node_id) = e.payload["node_id"].as_str().filter(|n| n.starts_with('d')) {
            check("stored event", node_id, e.payload["properties"].clone());
            let wire: cim_core::EventEnvelope = serde_json::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap();
            check("event on the wire", node_id, wire.payload["properties"].clone());
        }
    }
    // After a restart (a new process over the same schema), the same answers.
    let replica = svc.replica().await;
    for n in all_nodes(&mut replica.client().await, t, &g, "doc").await {
        check("ListNodes after restart", &n.id, json(n.properties));
    }
    replica.stop_replica().await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_name_what_they_created_even_on_a_retry() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let t = TenantId::new();
    let g = create(&mut c, t).await;
    let generated = c
        .add_node(req(
            t,
            pb::AddNodeRequest {
                graph_id: g.clone(),
                node: Some(pb::NodeSpec { id: String::new(), r#type: "n".into(), properties: None }),
                options: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(generated.created_node_ids.len(), 1);
    let id = &generated.created_node_ids[0];
    c.get_node(req(t, pb::GetNodeRequest { graph_id: g.clone(), node_id: id.clone() })).await.unwrap();
    let options = Some(cim_proto::common::CommandOptions { expected_version: None, idempotency_key: "k1".into() });
    let changes = vec![
        pb::GraphChange {
            change: Some(pb::graph_change::Change::AddNode(pb::NodeSpec {
                id: String::new(),
                r#type: "n".into(),
                properties: None,
            })),
        },
        add_node("named"),
        pb::GraphChange {
            change: Some(pb::graph_change::Change::AddEdge(pb::EdgeSpec {
                id: String::new(),
                r#type: "e".into(),
                source: id.clone(),
                target: "named".into(),
                properties: None,
            })),
        },
    ];
    let send = |mut c: Client| {
        let (g, changes, options) = (g.clone(), changes.clone(), options.clone());
        async move {
            c.apply_batch(req(t, pb::ApplyBatchRequest { graph_id: g, changes, options })).await.unwrap().into_inner()
        }
    };
    let first = send(c.clone()).await;
    assert_eq!(first.created_node_ids.len(), 2);
    assert_eq!(first.created_node_ids[1], "named");
    assert_eq!(first.created_edge_ids.len(), 1);
    let retry = send(c.clone()).await;
    assert!(retry.replayed);
    assert_eq!((retry.created_node_ids, retry.created_edge_ids), (first.created_node_ids, first.created_edge_ids));
    svc.stop().await;
}

/// Text that would reach SQL is checked first: NUL, over-long and foreign values in every
/// string field are INVALID_ARGUMENT (or NOT_FOUND for a well-formed id that names nothing),
/// never INTERNAL; the graph is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_string_field_is_checked_before_sql() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let t = TenantId::new();
    let g = hub_graph(&mut c, t).await;
    let before = c.get_graph(req(t, pb::GetGraphRequest { graph_id: g.clone() })).await.unwrap().into_inner().version;
    let long = "x".repeat(100_000);
    for bad in ["a\0b", "\0", long.as_str(), "a b", "\u{202e}x"] {
        let s = || bad.to_owned();
        let page = Some(cim_proto::common::PageRequest { page_size: 10, page_token: s() });
        let opts = Some(cim_proto::common::CommandOptions { expected_version: None, idempotency_key: s() });
        let mut outcomes: Vec<(&str, Result<(), tonic::Status>)> = Vec::new();
        macro_rules! call {
            ($name:literal, $rpc:ident, $msg:expr) => {
                outcomes.push(($name, c.$rpc(req(t, $msg)).await.map(|_| ())))
            };
        }
        call!(
            "ListGraphs.page_token",
            list_graphs,
            pb::ListGraphsRequest { page: page.clone(), include_archived: false }
        );
        call!(
            "ListNodes.page_token",
            list_nodes,
            pb::ListNodesRequest { graph_id: g.clone(), r#type: String::new(), page: page.clone() }
        );
        call!("ListNodes.type", list_nodes, pb::ListNodesRequest { graph_id: g.clone(), r#type: s(), page: None });
        call!(
            "ListEdges.page_token",
            list_edges,
            pb::ListEdgesRequest { graph_id: g.clone(), page: page.clone(), ..Default::default() }
        );
        call!(
            "ListEdges.node_id",
            list_edges,
            pb::ListEdgesRequest { graph_id: g.clone(), node_id: s(), ..Default::default() }
        );
        call!(
            "ListEdges.type",
            list_edges,
            pb::ListEdgesRequest { graph_id: g.clone(), r#type: s(), ..Default::default() }
        );
        call!("GetGraph.graph_id", get_graph, pb::GetGraphRequest { graph_id: s() });
        call!("GetNode.node_id", get_node, pb::GetNodeRequest { graph_id: g.clone(), node_id: s() });
        call!(
            "Neighbors.node_id",
            neighbors,
            pb::NeighborsRequest { graph_id: g.clone(), node_id: s(), ..Default::default() }
        );
        call!(
            "Neighbors.edge_types",
            neighbors,
            pb::NeighborsRequest {
                graph_id: g.clone(),
                node_id: "hub".into(),
                edge_types: vec![s()],
                ..Default::default()
            }
        );
        call!(
            "Traverse.start",
            traverse,
            pb::TraverseRequest {
                graph_id: g.clone(),
                start_node_id: s(),
                max_depth: 1,
                max_nodes: 1,
                ..Default::default()
            }
        );
        call!(
            "ShortestPath.to",
            shortest_path,
            pb::ShortestPathRequest {
                graph_id: g.clone(),
                from_node_id: "hub".into(),
                to_node_id: s(),
                max_depth: 1,
                ..Default::default()
            }
        );
        call!("CreateGraph.name", create_graph, pb::CreateGraphRequest { name: s(), ..Default::default() });
        call!(
            "CreateGraph.description",
            create_graph,
            pb::CreateGraphRequest { name: "n".into(), description: s(), ..Default::default() }
        );
        call!(
            "CreateGraph.graph_id",
            create_graph,
            pb::CreateGraphRequest { name: "n".into(), graph_id: s(), ..Default::default() }
        );
        call!(
            "RenameGraph.name",
            rename_graph,
            pb::RenameGraphRequest { graph_id: g.clone(), name: s(), options: None }
        );
        call!(
            "RenameGraph.idempotency_key",
            rename_graph,
            pb::RenameGraphRequest { graph_id: g.clone(), name: "ok".into(), options: opts.clone() }
        );
        call!(
            "AddNode.id",
            add_node,
            pb::AddNodeRequest {
                graph_id: g.clone(),
                node: Some(pb::NodeSpec { id: s(), r#type: "n".into(), properties: None }),
                options: None
            }
        );
        call!(
            "AddNode.type",
            add_node,
            pb::AddNodeRequest {
                graph_id: g.clone(),
                node: Some(pb::NodeSpec { id: "ok".into(), r#type: s(), properties: None }),
                options: None
            }
        );
        call!(
            "AddNode.properties",
            add_node,
            pb::AddNodeRequest {
                graph_id: g.clone(),
                node: Some(pb::NodeSpec {
                    id: "ok".into(),
                    r#type: "n".into(),
                    properties: props(serde_json::json!({ "k": bad, bad: 1 }))
                }),
                options: None
            }
        );
        call!(
            "AddEdge.source",
            add_edge,
            pb::AddEdgeRequest { graph_id: g.clone(), edge: Some(edge("ok", "e", bad, "hub")), options: None }
        );
        call!(
            "RemoveNode.node_id",
            remove_node,
            pb::RemoveNodeRequest { graph_id: g.clone(), node_id: s(), options: None }
        );
        call!(
            "RemoveEdge.edge_id",
            remove_edge,
            pb::RemoveEdgeRequest { graph_id: g.clone(), edge_id: s(), options: None }
        );
        for (field, outcome) in outcomes {
            let code = outcome.err().map(|s| s.code());
            // "a b" and U+202E are fine as names, keys and property values; the
            // rest must be refused as the client's fault.
            let allowed = [Some(Code::InvalidArgument), Some(Code::NotFound)];
            let benign = matches!(
                field,
                "CreateGraph.description"
                    | "AddNode.properties"
                    | "CreateGraph.name"
                    | "RenameGraph.name"
                    | "RenameGraph.idempotency_key"
            ) && !bad.contains('\0')
                && bad.len() < 1000;
            assert!(benign || allowed.contains(&code), "{field} with {:?}: {code:?}", &bad[..bad.len().min(12)]);
            assert_ne!(code, Some(Code::Internal), "{field}");
        }
    }
    let after = c.get_graph(req(t, pb::GetGraphRequest { graph_id: g.clone() })).await.unwrap().into_inner().version;
    // Only the benign renames may have changed the graph.
    assert!(after >= before);
    svc.stop().await;
}

/// One gRPC call with a raw body, as a broken or hostile client sends it: the final status.
async fn raw_call(svc: &Service, path: &str, encoding: Option<&str>, body: Vec<u8>) -> (Code, String) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", svc.grpc)).unwrap().connect().await.unwrap();
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{path}", svc.grpc))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-cim-tenant", TenantId::new().to_string());
    if let Some(e) = encoding {
        request = request.header("grpc-encoding", e);
    }
    let request = request.body(tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(body)))).unwrap();
    let response = channel.oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let trailers = body.collect().await.ok().and_then(|c| c.trailers().cloned());
    let status = tonic::Status::from_header_map(&parts.headers)
        .or_else(|| trailers.as_ref().and_then(tonic::Status::from_header_map))
        .expect("a gRPC status");
    (status.code(), status.message().to_owned())
}

fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Requests that do not decode, or are not one well-formed gRPC message, are the client's fault
/// on every method: INVALID_ARGUMENT (UNIMPLEMENTED for a compression we do not offer).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undecodable_and_malformed_requests_are_invalid_argument_on_every_method() {
    use prost::Message;
    let svc = Service::start().await;
    let fds = prost_types::FileDescriptorSet::decode(cim_proto::FILE_DESCRIPTOR_SET).unwrap();
    let methods: Vec<String> = fds
        .file
        .iter()
        .flat_map(|f| f.service.iter().map(move |s| (f.package().to_owned(), s)))
        .filter(|(_, s)| s.name() == "GraphService")
        .flat_map(|(pkg, s)| s.method.iter().map(move |m| format!("/{pkg}.{}/{}", s.name(), m.name())))
        .collect();
    assert_eq!(methods.len(), 19, "{methods:?}");
    let garbage = framed(&[0xff; 16]);
    for path in &methods {
        let (code, message) = raw_call(&svc, path, None, garbage.clone()).await;
        assert_eq!(code, Code::InvalidArgument, "{path}: {message}");
    }
    let add_node = "/cim.graph.v1.GraphService/AddNode";
    let get_graph = "/cim.graph.v1.GraphService/GetGraph";
    // A Struct nested past the decoder's recursion limit.
    let mut deep = serde_json::json!("leaf");
    for _ in 0..60 {
        deep = serde_json::json!({ "d": deep });
    }
    let nested = pb::AddNodeRequest {
        graph_id: uuid::Uuid::now_v7().to_string(),
        node: Some(pb::NodeSpec { id: "n".into(), r#type: "n".into(), properties: props(deep) }),
        options: None,
    }
    .encode_to_vec();
    let ok_message = pb::GetGraphRequest { graph_id: uuid::Uuid::now_v7().to_string() }.encode_to_vec();
    // (what, method, grpc-encoding, body, expected code)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, Code);
    let cases: Vec<Case> = vec![
        ("nesting past the limit", add_node, None, framed(&nested), Code::InvalidArgument),
        // Field 1 (graph_id), length 2, not UTF-8.
        ("invalid UTF-8 in a string", get_graph, None, framed(&[0x0a, 2, 0xc3, 0x28]), Code::InvalidArgument),
        (
            "compressed flag, no grpc-encoding",
            get_graph,
            None,
            [&[1u8][..], &framed(&ok_message)[1..]].concat(),
            Code::InvalidArgument,
        ),
        (
            "length prefix shorter than the data",
            get_graph,
            None,
            [framed(&ok_message), vec![0]].concat(),
            Code::InvalidArgument,
        ),
        (
            "length prefix longer than the data",
            get_graph,
            None,
            framed(&ok_message)[..8].to_vec(),
            Code::InvalidArgument,
        ),
        ("truncated prefix", get_graph, None, vec![0, 0, 0], Code::InvalidArgument),
        ("flag byte 0x80", get_graph, None, [&[0x80u8][..], &framed(&ok_message)[1..]].concat(), Code::InvalidArgument),
        ("empty body", get_graph, None, vec![], Code::InvalidArgument),
        (
            "two messages in a unary call",
            get_graph,
            None,
            [framed(&ok_message), framed(&ok_message)].concat(),
            Code::InvalidArgument,
        ),
        (
            "gzip, which is not offered",
            get_graph,
            Some("gzip"),
            [&[1u8][..], &framed(&ok_message)[1..]].concat(),
            Code::Unimplemented,
        ),
        // The control: the same message, well formed, reaches the service (graph not found).
        ("one good message", get_graph, None, framed(&ok_message), Code::NotFound),
    ];
    for (what, path, encoding, body, expected) in cases {
        let (code, message) = raw_call(&svc, path, encoding, body).await;
        assert_eq!(code, expected, "{what}: {message}");
    }
    svc.stop().await;
}

/// grpcurl, as the README uses it, prints the code, the message and the decoded details of an
/// error (it printed only "EOF" when the details were not a google.rpc.Status).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpcurl_shows_the_error_code_message_and_details() {
    let svc = Service::start().await;
    // scripts/test.sh installs grpcurl (tests/python/requirements.txt) and says where.
    let grpcurl = std::env::var("CIM_TEST_GRPCURL").map(std::path::PathBuf::from).unwrap_or_else(|_| {
        let python = std::env::var("CIM_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        std::path::Path::new(&python).with_file_name("grpcurl")
    });
    assert!(grpcurl.exists(), "{} missing: scripts/test.sh installs tests/python/requirements.txt", grpcurl.display());
    let (addr, tenant) = (svc.grpc.to_string(), TenantId::new().to_string());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(grpcurl)
            .args(["-plaintext", "-H", &format!("x-cim-tenant: {tenant}"), "-d", r#"{"graph_id":"nope"}"#])
            .args([addr.as_str(), "cim.graph.v1.GraphService/GetGraph"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success());
    for expected in [
        "Code: InvalidArgument",
        "Message: graph_id:",
        "google.rpc.ErrorInfo",
        "INVALID_ARGUMENT",
        "google.rpc.BadRequest",
    ] {
        assert!(text.contains(expected), "grpcurl output lacks {expected:?}:\n{text}");
    }
    assert!(!text.contains("EOF"), "{text}");
    svc.stop().await;
}
