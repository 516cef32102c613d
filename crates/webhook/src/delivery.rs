//! Delivery: the events of every domain stream, taken in per matching active subscription
//! ([`intake`]: a row per subscription and event in `webhook_deliveries`), and sent from there
//! ([`sender`]) as signed CloudEvents ([`cloudevent`]), in order per aggregate, at least once.
//!
//! Why a queue in Postgres rather than sending from the stream consumer: one receiver that is
//! slow or down would hold back every other subscription of the stream (its consumer acks in
//! order), and a retry budget of minutes would outlast any ack wait. The queue holds each
//! subscription's retries on its own; the intake acks a stream message once its rows are
//! committed, and the sender leases a row for one call, so a sender killed mid-call loses
//! nothing: the lease lapses and the call is made again with the same `ce-id`.

use std::sync::Arc;

use cim_aggregate::CommandExecutor;
use cim_core::{AggregateId, EventId, SubjectPrefix, TenantId};
use cim_runtime::config::WebhookSettings;
use sqlx::{PgPool, Row};
use tokio::sync::Notify;

use crate::subscription::Subscription;

pub mod cloudevent;
pub mod floor;
pub mod idle;
pub mod intake;
pub mod sender;

/// The dead-letter subject's consumer token: `<prefix>.dlq.webhook`, with the subscription in a
/// header.
pub const DEAD_LETTER_CONSUMER: &str = "webhook";
/// Dead letters name their subscription in this header.
pub const SUBSCRIPTION_HEADER: &str = "Cim-Webhook-Subscription";

/// What the intake and the sender share.
#[derive(Debug)]
pub struct Delivery {
    pub(crate) pool: PgPool,
    pub(crate) subscriptions: CommandExecutor<Subscription>,
    pub(crate) settings: WebhookSettings,
    pub(crate) client: reqwest::Client,
    /// Rows were taken in: the sender looks at once rather than at its next poll.
    pub(crate) wake: Notify,
    /// When the intake or the sender last had something to do (for `CIM_WEBHOOK_IDLE_EXIT_SECS`).
    pub(crate) activity: idle::Activity,
}

impl Delivery {
    pub fn new(subscriptions: CommandExecutor<Subscription>, settings: WebhookSettings) -> Result<Arc<Self>, String> {
        let pool = subscriptions.store().pool().clone();
        let client = cloudevent::client(&settings)?;
        Ok(Arc::new(Delivery {
            pool,
            subscriptions,
            settings,
            client,
            wake: Notify::new(),
            activity: Default::default(),
        }))
    }

    /// The intake consumers (one per domain stream) and the sender, as workers of `host`; with
    /// an idle exit set, also the worker that stops `service` (the whole process) when idle.
    pub fn start(
        self: &Arc<Self>,
        host: &mut cim_runtime::ServiceHost,
        js: async_nats::jetstream::Context,
        prefix: SubjectPrefix,
        service: &cim_runtime::Shutdown,
    ) {
        let stop = host.workers_shutdown();
        if let Some(idle) = self.settings.idle_exit {
            let exit =
                idle::exit_when_idle(self.clone(), js.clone(), prefix.clone(), idle, service.clone(), stop.clone());
            host.spawn_worker("webhook-idle-exit", exit);
        }
        for (name, consumer) in intake::consumers(self, &js, &prefix, &stop) {
            host.spawn_worker(&name, consumer);
        }
        host.spawn_worker("webhook-sender", sender::run(self.clone(), js, prefix, stop.clone()));
        host.spawn_worker("webhook-stats", sender::export_stats(self.pool.clone(), stop));
    }

    pub fn settings(&self) -> &WebhookSettings {
        &self.settings
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

/// Puts dead-lettered deliveries of `subscription` (of `tenant`, when the caller is one; the
/// operator's CLI names none) back in the queue with a fresh retry budget: `event` one of them,
/// else all. Answers how many. A replayed event goes out after later events of its aggregate
/// that were delivered meanwhile.
pub async fn replay(
    pool: &PgPool,
    tenant: Option<TenantId>,
    subscription: AggregateId,
    event: Option<EventId>,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_at = now(), leased_until = NULL, \
         done_at = NULL WHERE subscription_id = $1 AND state = 'dead' AND ($2::uuid IS NULL OR tenant_id = $2) \
         AND ($3::uuid IS NULL OR event_id = $3)",
    )
    .bind(subscription.as_uuid())
    .bind(tenant.map(|t| t.as_uuid()))
    .bind(event.map(|e| e.as_uuid()))
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Where one subscription's deliveries stand.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub pending: u64,
    pub delivered: u64,
    pub dead: u64,
    pub lag_seconds: f64,
    pub last_failure_status: Option<u16>,
    pub last_failure: Option<String>,
    pub last_failure_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub async fn stats(pool: &PgPool, tenant: TenantId, subscription: AggregateId) -> Result<Stats, sqlx::Error> {
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE state = 'pending') AS pending, \
                count(*) FILTER (WHERE state = 'delivered') AS delivered, \
                count(*) FILTER (WHERE state = 'dead') AS dead, \
                coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE state = 'pending')), 0)::float8 AS lag \
         FROM webhook_deliveries WHERE tenant_id = $1 AND subscription_id = $2",
    )
    .bind(tenant.as_uuid())
    .bind(subscription.as_uuid())
    .fetch_one(pool)
    .await?;
    let last = sqlx::query(
        "SELECT last_status, last_error, last_failure_at FROM webhook_deliveries \
         WHERE tenant_id = $1 AND subscription_id = $2 AND last_failure_at IS NOT NULL \
         ORDER BY last_failure_at DESC LIMIT 1",
    )
    .bind(tenant.as_uuid())
    .bind(subscription.as_uuid())
    .fetch_optional(pool)
    .await?;
    let count = |name: &str| row.try_get::<i64, _>(name).map(|n| n.max(0) as u64);
    Ok(Stats {
        pending: count("pending")?,
        delivered: count("delivered")?,
        dead: count("dead")?,
        lag_seconds: row.try_get("lag")?,
        last_failure_status: match &last {
            Some(r) => r.try_get::<Option<i32>, _>("last_status")?.map(|s| s as u16),
            None => None,
        },
        last_failure: match &last {
            Some(r) => r.try_get("last_error")?,
            None => None,
        },
        last_failure_at: match &last {
            Some(r) => r.try_get("last_failure_at")?,
            None => None,
        },
    })
}
