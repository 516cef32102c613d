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

/// How long start-up keeps asking for a stream. JetStream answers no API request while a
/// cluster's meta leader is being elected (seconds, after a node is lost, partitioned or healed),
/// and a service that exited then would only be restarted into the same election.
pub const ENSURE_PATIENCE: Duration = Duration::from_secs(30);

async fn ensure(js: &jetstream::Context, config: stream::Config) -> Result<(), StreamError> {
    ensure_within(js, config, ENSURE_PATIENCE).await
}

/// Creates or updates the stream, asking again (200 ms, doubling to 2 s) until `patience` has
/// passed; then the last error, with the tries it took. A setting JetStream refuses for good
/// (subjects another stream has) fails after `patience` too: start-up is the only caller.
async fn ensure_within(js: &jetstream::Context, config: stream::Config, patience: Duration) -> Result<(), StreamError> {
    let name = config.name.clone();
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(200);
    let mut tries = 0u32;
    loop {
        tries += 1;
        match js.create_or_update_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() + pause < patience => {
                tracing::warn!(stream = %name, error = %e, tries, "creating or updating the stream failed; asking again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                return Err(StreamError::JetStream(format!(
                    "creating or updating stream {name}: {e} ({tries} tries in {:.1?})",
                    started.elapsed()
                )));
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A JetStream that never answers (the API of a domain no server serves: "no responders",
    /// as during an election) is asked again until the patience is spent, then named.
    #[tokio::test]
    async fn a_jetstream_that_does_not_answer_is_asked_again_until_the_patience_is_spent() {
        let url = std::env::var("CIM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let client = async_nats::connect(url).await.unwrap();
        let js = jetstream::with_domain(client, "nowhere");
        let name = format!("CIM_ENSURE_{}", std::process::id());
        let started = std::time::Instant::now();
        let err = ensure_within(
            &js,
            config(name.clone(), format!("ensure{}.>", std::process::id()), 1),
            Duration::from_secs(2),
        )
        .await
        .unwrap_err()
        .to_string();
        let took = started.elapsed();
        assert!(err.contains(&format!("creating or updating stream {name}")), "{err}");
        let tries: u32 =
            err.rsplit_once(" tries in ").and_then(|(head, _)| head.rsplit_once('(')).unwrap().1.parse().unwrap();
        assert!(tries >= 3, "asked {tries} times: {err}");
        assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(10), "{took:?}: {err}");
    }
}
