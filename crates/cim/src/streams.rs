//! `cim streams rebuild`: a domain's events published again from Postgres to its JetStream stream
//! (created again if it is gone), only those the stream lacks, with their original message ids.

use cim_eventstore::archive::republish::{Republished, republish};

use super::*;
use crate::backup::connect;
use crate::progress::Progress;

pub(crate) async fn run(domain: &str) -> ExitCode {
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(service) = DOMAIN_SERVICES.iter().find(|s| s.name == domain) else {
        let names: Vec<&str> = DOMAIN_SERVICES.iter().map(|s| s.name).collect();
        return fail(&format!("--domain: expected one of {}", names.join(", ")), EXIT_CONFIG);
    };
    match rebuild(&config, service).await {
        Ok(done) => {
            out(&format!(
                "stream {}: held {} messages; {} events published, {} already there",
                config.subject_prefix.stream_name(service.domain),
                done.in_stream,
                done.published,
                done.present
            ));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("streams rebuild failed: {e}"), 1),
    }
}

/// Publishes what `service`'s stream lacks (also the last step of `cim restore`).
pub(crate) async fn rebuild(config: &Config, service: &DomainService) -> Result<Republished, String> {
    let pool = connect(config, service.schema, 2).await?;
    let total: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM \"{}\".events", service.schema)))
            .fetch_one(&pool)
            .await
            .map_err(|e| format!("{}: {e}", service.schema))?;
    let client = cim_runtime::nats::connect(&cim_runtime::nats::NatsSettings {
        url: config.nats_url.clone(),
        client_name: "cim-streams-rebuild".into(),
        connect_timeout: config.connect_timeout,
        security: config.nats_security.clone(),
    })
    .await
    .map_err(|e| format!("nats: {e}"))?;
    let js = cim_runtime::nats::jetstream(client);
    let mut progress = Progress::new(&format!("republish {}", service.name), total as u64);
    let mut tick = |n| progress.add(n);
    let done = republish(
        &pool,
        service.schema,
        service.domain,
        &js,
        &config.subject_prefix,
        config.stream_replicas,
        &mut tick,
    )
    .await
    .map_err(|e| format!("{}: {e}", service.name))?;
    progress.finish();
    Ok(done)
}
