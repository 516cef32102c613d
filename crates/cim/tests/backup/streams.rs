//! `cim streams rebuild` after JetStream lost a domain's stream.

use std::sync::Arc;
use std::time::Duration;

use cim_core::{Domain, EventEnvelope, TenantId};
use cim_eventstore::archive::republish::ids_in_stream;
use cim_eventstore::{Consumer, ConsumerConfig, EventHandler};
use cim_runtime::Shutdown;
use cim_testkit::domain::unique;
use futures::future::BoxFuture;

use crate::world::*;

/// A consumer's effect: one row per event it applied.
struct Recorder;

impl EventHandler for Recorder {
    fn handle<'a>(
        &'a self,
        tx: &'a mut sqlx::PgConnection,
        event: &'a EventEnvelope,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO graph.recorded (event_id) VALUES ($1)")
                .bind(event.event_id.as_uuid())
                .execute(tx)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// Runs the inbox consumer `recorder` until the stream's `n` messages were delivered and
/// acknowledged; returns how many events it recorded in all, and the most for one event.
async fn consume(pool: &sqlx::PgPool, prefix: &str, n: u64) -> (i64, i64) {
    let js = jetstream().await;
    let sp: cim_core::SubjectPrefix = prefix.parse().unwrap();
    let stream = sp.stream_name(Domain::Graph);
    let config = ConsumerConfig::new("recorder", &stream, &sp.domain_events(Domain::Graph));
    let consumer = Consumer::new(pool.clone(), js.clone(), sp, config, Arc::new(Recorder)).unwrap();
    let stop = Shutdown::new();
    let task = tokio::spawn(consumer.run(stop.clone()));
    let mut acked = 0;
    for _ in 0..600 {
        let info = match js
            .get_stream(&stream)
            .await
            .unwrap()
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>("recorder")
            .await
        {
            Ok(mut c) => c.info().await.ok().cloned(),
            Err(_) => None,
        };
        acked = info.map_or(0, |i| i.ack_floor.stream_sequence);
        if acked >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.trigger();
    let _ = task.await;
    assert!(acked >= n, "the consumer acknowledged {acked} of {n} messages");
    let total = count(pool, "SELECT count(*) FROM graph.recorded").await;
    let most =
        count(pool, "SELECT coalesce(max(c), 0) FROM (SELECT count(*) AS c FROM graph.recorded GROUP BY event_id) x")
            .await;
    (total, most)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_stream_is_rebuilt_with_each_event_once_and_the_relay_continues() {
    let _slot = SLOTS.acquire().await.unwrap();
    let (db, prefix) = (Database::create("bks").await, unique("p"));
    let services = Services::start(&db, &prefix).await;
    let tenant = TenantId::new();
    let written = write_graphs_at(services.graph.grpc, tenant, 2, 600, 100).await as u64;
    assert_eq!(stream_holds(&prefix, Domain::Graph, written).await, written, "the relay published everything");
    // A consumer that applied every event before the loss.
    let pool = db.pool().await;
    sqlx::query("CREATE TABLE graph.recorded (event_id uuid NOT NULL)").execute(&pool).await.unwrap();
    assert_eq!(consume(&services.graph.pool, &prefix, written).await, (written as i64, 1));
    let name = prefix.parse::<cim_core::SubjectPrefix>().unwrap().stream_name(Domain::Graph);
    let js = jetstream().await;
    let before = ids_in_stream(&js, &name).await.unwrap();
    js.delete_stream(&name).await.unwrap();

    let out = run_ok(cim(&db, &prefix).args(["streams", "rebuild", "--domain", "graph"]));
    assert!(out.contains(&format!("held 0 messages; {written} events published, 0 already there")), "{out}");
    let info = js.get_stream(&name).await.unwrap().info().await.unwrap().state.messages;
    assert_eq!(info, written, "each event once");
    assert_eq!(ids_in_stream(&js, &name).await.unwrap(), before, "the same message ids as the relay's");

    // The consumer (its durable went with the stream) is given every event again and applies
    // none twice: its inbox remembers them.
    assert_eq!(consume(&services.graph.pool, &prefix, written).await, (written as i64, 1));

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
