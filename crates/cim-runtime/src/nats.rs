//! NATS: a client that reconnects with capped exponential backoff, and its JetStream context.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions};

use crate::error::RuntimeError;
use crate::health::CheckFn;

#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// One URL or several separated by commas.
    pub url: String,
    pub client_name: String,
    pub connect_timeout: Duration,
}

/// Backoff between reconnect attempts: 100 ms doubling up to 5 s.
pub fn reconnect_delay(attempts: usize) -> Duration {
    let exp = attempts.saturating_sub(1).min(16) as u32;
    Duration::from_millis(100u64.saturating_mul(1u64 << exp)).min(Duration::from_secs(5))
}

/// Connects once (a missing server is a clear error at start-up); after that the client keeps
/// reconnecting forever and buffers publishes while it does.
pub async fn connect(settings: &NatsSettings) -> Result<Client, RuntimeError> {
    let urls: Vec<async_nats::ServerAddr> = settings
        .url
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| RuntimeError::Nats { at: settings.url.clone(), what: format!("bad URL: {e}") })?;
    let opts = ConnectOptions::new()
        .name(&settings.client_name)
        .connection_timeout(settings.connect_timeout)
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                async_nats::Event::Disconnected => tracing::warn!("NATS disconnected; reconnecting"),
                other => tracing::debug!(event = %other, "NATS event"),
            }
        });
    let connecting = async_nats::connect_with_options(urls, opts);
    match tokio::time::timeout(settings.connect_timeout + Duration::from_millis(500), connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(RuntimeError::Nats { at: settings.url.clone(), what: format!("cannot connect: {e}") }),
        Err(_) => Err(RuntimeError::Nats {
            at: settings.url.clone(),
            what: format!("no answer within {:?}", settings.connect_timeout),
        }),
    }
}

/// JetStream over `client`.
pub fn jetstream(client: Client) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(client)
}

/// Ready while the connection is up.
pub fn readiness(client: Client) -> CheckFn {
    Arc::new(move || {
        let state = client.connection_state();
        Box::pin(async move {
            match state {
                async_nats::connection::State::Connected => Ok(()),
                other => Err(format!("nats: {other:?}")),
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(reconnect_delay(1), Duration::from_millis(100));
        assert_eq!(reconnect_delay(2), Duration::from_millis(200));
        assert_eq!(reconnect_delay(4), Duration::from_millis(800));
        assert_eq!(reconnect_delay(100), Duration::from_secs(5));
    }
}
