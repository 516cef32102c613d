//! The serverless pattern without a cluster: a webhook process that exits when it has had nothing
//! to do for `CIM_WEBHOOK_IDLE_EXIT_SECS`, and what tells a starter (`cim wake`, KEDA's
//! triggers) that there is work again: messages its intake consumers have not acknowledged, or
//! deliveries due. Nothing is lost across a stop: unacknowledged messages stay in the streams'
//! durable consumers, queued deliveries in Postgres.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use cim_core::{Domain, SubjectPrefix};
use cim_runtime::Shutdown;
use futures::future::join_all;
use sqlx::PgPool;

use super::intake;

/// When the delivery workers last did anything.
#[derive(Debug)]
pub struct Activity {
    origin: Instant,
    /// Milliseconds after `origin`.
    last: AtomicU64,
}

impl Default for Activity {
    /// Starting counts as activity: a process started for work gets its idle period to find it.
    fn default() -> Self {
        Activity { origin: Instant::now(), last: AtomicU64::new(0) }
    }
}

impl Activity {
    pub fn touch(&self) {
        self.last.store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn idle_for(&self) -> Duration {
        self.origin.elapsed().saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}

/// Work waiting for the webhook service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waiting {
    /// Messages of the domain streams the intake consumers have not acknowledged (delivered to
    /// no one yet, or to a process that went away).
    pub messages: u64,
    /// Queued deliveries whose time has come.
    pub due: u64,
}

impl Waiting {
    pub fn any(&self) -> bool {
        self.messages > 0 || self.due > 0
    }
}

/// What is waiting, from the intake consumers' state on the server and the delivery queue (`pool`
/// on the webhook schema). A domain whose stream or consumer does not exist yet has nothing
/// waiting for it (the intake creates its consumer when it starts).
pub async fn waiting(pool: &PgPool, js: &jetstream::Context, prefix: &SubjectPrefix) -> Result<Waiting, String> {
    let pending = join_all(Domain::ALL.iter().map(|&domain| async move {
        let Ok(stream) = js.get_stream_no_info(prefix.stream_name(domain)).await else { return 0 };
        match stream.consumer_info(intake::consumer_name(domain)).await {
            Ok(info) => info.num_pending + info.num_ack_pending as u64,
            Err(_) => 0,
        }
    }))
    .await;
    let due: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_deliveries WHERE state = 'pending' AND next_at <= now() \
         AND EXISTS (SELECT 1 FROM webhook_subscriptions s \
                     WHERE s.subscription_id = webhook_deliveries.subscription_id AND s.state = 'active')",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| format!("the delivery queue: {e}"))?;
    Ok(Waiting { messages: pending.iter().sum(), due: due.max(0) as u64 })
}

/// Stops the whole service (`service`, its root shutdown) once the workers have been idle for
/// `idle` and nothing is waiting; ends with `stop` otherwise.
pub async fn exit_when_idle(
    delivery: std::sync::Arc<super::Delivery>,
    js: jetstream::Context,
    prefix: SubjectPrefix,
    idle: Duration,
    service: Shutdown,
    stop: Shutdown,
) {
    let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.wait() => return,
        }
        if delivery.activity.idle_for() < idle {
            continue;
        }
        match waiting(&delivery.pool, &js, &prefix).await {
            Ok(w) if !w.any() => {
                tracing::info!(idle_secs = idle.as_secs(), "webhook service idle: exiting (started again on demand)");
                service.trigger();
                return;
            }
            // Work the workers will take up (and so touch the activity) in a moment.
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "idle check failed; staying up"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_starts_fresh_and_touching_resets_it() {
        let activity = Activity::default();
        std::thread::sleep(Duration::from_millis(30));
        assert!(activity.idle_for() >= Duration::from_millis(30));
        activity.touch();
        assert!(activity.idle_for() < Duration::from_millis(30));
    }
}
