//! The same round trip through S3 (moto's server): `--to`/`--from s3://bucket/prefix` with the
//! configuration's S3 endpoint and credentials.

use cim_core::TenantId;
use cim_testkit::domain::unique;
use cim_testkit::s3::MotoS3;

use crate::world::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_to_s3_restores_from_s3() {
    let _slot = SLOTS.acquire().await.unwrap();
    let s3 = MotoS3::start();
    s3.create_bucket("cim-backups");
    let (db, prefix) = (Database::create("bk3").await, unique("p"));
    let services = Services::start(&db, &prefix).await;
    let tenant = TenantId::new();
    let written = write_graphs_at(services.graph.grpc, tenant, 2, 300, 100).await
        + write_agents(&services.agent, tenant, 3, 7).await;
    let with_s3 = |cmd: &mut std::process::Command| {
        cmd.env("CIM_S3_ENDPOINT", &s3.endpoint)
            .env("CIM_S3_ACCESS_KEY_ID", "cim")
            .env("CIM_S3_SECRET_ACCESS_KEY", "backup-secret-key");
    };
    let mut backup = cim(&db, &prefix);
    with_s3(backup.args(["backup", "--to", "s3://cim-backups/nightly", "--segment-events", "250"]));
    let out = run_ok(&mut backup);
    assert!(out.contains(&format!("complete: {written} events")), "{out}");
    assert!(s3.count_objects_under("cim-backups", "nightly/events/graph/") >= 3, "segments in the bucket");

    let (restored, rp) = (Database::create("r3").await, unique("p"));
    let mut restore = cim(&restored, &rp);
    with_s3(restore.args(["restore", "--from", "s3://cim-backups/nightly", "--no-streams"]));
    run_ok(&mut restore);
    let (a, b) = (db.pool().await, restored.pool().await);
    for schema in ["graph", "agent"] {
        assert_eq!(projections(&a, schema).await, projections(&b, schema).await, "{schema}");
    }
    services.stop().await;
    db.drop_now().await;
    restored.drop_now().await;
}
