//! JetStream streams, created or updated at start-up (idempotently) to the settings in
//! docs/design.md#subjects-streams-and-headers.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use cim_core::{Domain, SubjectPrefix};

use crate::StreamError;

/// Duplicate window: a re-publish of the same event id within it is dropped by the server.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

fn config(name: String, subjects: String, replicas: usize) -> stream::Config {
    stream::Config {
        name,
        subjects: vec![subjects],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: replicas,
        ..Default::default()
    }
}

async fn ensure(js: &jetstream::Context, config: stream::Config) -> Result<(), StreamError> {
    let name = config.name.clone();
    js.create_or_update_stream(config)
        .await
        .map(|_| ())
        .map_err(|e| StreamError::JetStream(format!("creating or updating stream {name}: {e}")))
}

/// The domain's event stream, e.g. `CIM_GRAPH` on `cim.graph.evt.>`.
pub async fn ensure_domain_stream(
    js: &jetstream::Context,
    prefix: &SubjectPrefix,
    domain: Domain,
    replicas: usize,
) -> Result<String, StreamError> {
    let name = prefix.stream_name(domain);
    ensure(js, config(name.clone(), prefix.domain_events(domain), replicas)).await?;
    Ok(name)
}

/// The dead-letter stream, `CIM_DLQ` on `cim.dlq.>`.
pub async fn ensure_dlq_stream(
    js: &jetstream::Context,
    prefix: &SubjectPrefix,
    replicas: usize,
) -> Result<String, StreamError> {
    let name = prefix.dlq_stream_name();
    ensure(js, config(name.clone(), prefix.dlq_subjects(), replicas)).await?;
    Ok(name)
}
