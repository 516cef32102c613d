//! `cim streams rebuild` after JetStream lost a domain's stream.

use cim_core::{Domain, TenantId};
use cim_eventstore::archive::republish::ids_in_stream;
use cim_testkit::domain::unique;

use crate::world::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_stream_is_rebuilt_with_each_event_once_and_the_relay_continues() {
    let _slot = SLOTS.acquire().await.unwrap();
    let (db, prefix) = (Database::create("bks").await, unique("p"));
    let services = Services::start(&db, &prefix).await;
    let tenant = TenantId::new();
    let written = write_graphs_at(services.graph.grpc, tenant, 2, 600, 100).await as u64;
    assert_eq!(stream_holds(&prefix, Domain::Graph, written).await, written, "the relay published everything");
    let name = prefix.parse::<cim_core::SubjectPrefix>().unwrap().stream_name(Domain::Graph);
    let js = jetstream().await;
    let before = ids_in_stream(&js, &name).await.unwrap();
    js.delete_stream(&name).await.unwrap();

    let out = run_ok(cim(&db, &prefix).args(["streams", "rebuild", "--domain", "graph"]));
    assert!(out.contains(&format!("held 0 messages; {written} events published, 0 already there")), "{out}");
    let info = js.get_stream(&name).await.unwrap().info().await.unwrap().state.messages;
    assert_eq!(info, written, "each event once");
    assert_eq!(ids_in_stream(&js, &name).await.unwrap(), before, "the same message ids as the relay's");

    // Again: nothing is missing, nothing is published twice.
    let out = run_ok(cim(&db, &prefix).args(["streams", "rebuild", "--domain", "graph"]));
    assert!(out.contains(&format!("0 events published, {written} already there")), "{out}");

    // The running service's relay goes on publishing new events after the rebuilt ones.
    let more = write_graphs_at(services.graph.grpc, tenant, 1, 10, 10).await as u64;
    assert_eq!(stream_holds(&prefix, Domain::Graph, written + more).await, written + more);

    let out = cim(&db, &prefix).args(["streams", "rebuild", "--domain", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    services.stop().await;
    db.drop_now().await;
}
