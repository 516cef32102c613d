//! The gRPC edge: requests parsed into subscription commands for the kit's executor, the
//! validation handshake before activation, queries over the projection and the delivery queue.

use std::str::FromStr;
use std::sync::Arc;

use cim_aggregate::{CommandExecutor, CommandOptions, Executed, ExecutorError};
use cim_core::{AggregateId, EventId, TenantId};
use cim_proto::webhook as pb;
use cim_proto::webhook::webhook_service_server::WebhookService;
use cim_runtime::edge::{Caller, handle, timestamp};
use sqlx::{PgPool, Row};
use tonic::{Request, Response, Status};

use crate::delivery::{self, Delivery, cloudevent};
use crate::error::ServiceError;
use crate::signing::Secret;
use crate::subscription::{Subscription, SubscriptionCommand as C, SubscriptionError, SubscriptionState};

type Reply<T> = Result<Response<T>, Status>;

#[derive(Debug, Clone)]
pub struct WebhookApi {
    subscriptions: CommandExecutor<Subscription>,
    delivery: Arc<Delivery>,
    pool: PgPool,
}

impl WebhookApi {
    pub fn new(subscriptions: CommandExecutor<Subscription>, delivery: Arc<Delivery>) -> Self {
        let pool = subscriptions.store().pool().clone();
        Self { subscriptions, delivery, pool }
    }

    async fn execute(
        &self,
        caller: &Caller,
        id: AggregateId,
        command: C,
        options: Option<cim_proto::common::CommandOptions>,
    ) -> Result<Executed, ServiceError> {
        Ok(self.subscriptions.execute(caller, id, &command, &CommandOptions::from(options)).await?)
    }

    /// The handshake with the subscription's URL, then the activation.
    async fn activate(
        &self,
        caller: &Caller,
        id: AggregateId,
        url: &str,
    ) -> Result<Result<Executed, String>, ServiceError> {
        match cloudevent::handshake(self.delivery.client(), url).await {
            Ok(allowed_origin) => Ok(Ok(self.execute(caller, id, C::Activate { allowed_origin }, None).await?)),
            Err(why) => Ok(Err(why)),
        }
    }

    async fn row(&self, tenant: TenantId, id: AggregateId) -> Result<sqlx::postgres::PgRow, ServiceError> {
        sqlx::query(
            "SELECT subscription_id, name, filter, condition, url, state, reason, version, created_at, updated_at \
             FROM webhook_subscriptions WHERE tenant_id = $1 AND subscription_id = $2 AND state <> 'deleted'",
        )
        .bind(tenant.as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| ServiceError::not_found(format!("subscription {id} not found")))
    }

    async fn subscription(
        &self,
        tenant: TenantId,
        row: &sqlx::postgres::PgRow,
    ) -> Result<pb::Subscription, ServiceError> {
        let id: uuid::Uuid = row.try_get("subscription_id")?;
        let id = AggregateId::from_uuid(id).map_err(|e| ServiceError::corrupt(e.to_string()))?;
        let stats = delivery::stats(&self.pool, tenant, id).await?;
        Ok(pb::Subscription {
            subscription_id: id.to_string(),
            name: row.try_get("name")?,
            filter: row.try_get("filter")?,
            condition: row.try_get::<Option<String>, _>("condition")?.unwrap_or_default(),
            url: row.try_get("url")?,
            state: row.try_get("state")?,
            reason: row.try_get("reason")?,
            version: row.try_get::<i64, _>("version")?.max(0) as u64,
            created_at: Some(timestamp(row.try_get("created_at")?)),
            updated_at: Some(timestamp(row.try_get("updated_at")?)),
            deliveries: Some(pb::DeliveryStats {
                pending: stats.pending,
                delivered: stats.delivered,
                dead: stats.dead,
                lag_seconds: stats.lag_seconds,
                last_failure_status: stats.last_failure_status.map_or(0, u32::from),
                last_failure: stats.last_failure.unwrap_or_default(),
                last_failure_at: stats.last_failure_at.map(timestamp),
            }),
        })
    }
}

fn id(field: &str, s: &str) -> Result<AggregateId, ServiceError> {
    AggregateId::from_str(s).map_err(|e| ServiceError::invalid(field, e.to_string()))
}

fn respond(done: Executed) -> pb::CommandResponse {
    pb::CommandResponse {
        id: done.aggregate_id.to_string(),
        version: done.version,
        event_ids: done.event_ids.iter().map(ToString::to_string).collect(),
        replayed: done.replayed,
    }
}

#[tonic::async_trait]
impl WebhookService for WebhookApi {
    async fn create_subscription(
        &self,
        req: Request<pb::CreateSubscriptionRequest>,
    ) -> Reply<pb::CreateSubscriptionResponse> {
        handle(req, |caller, r| async move {
            let id = if r.subscription_id.is_empty() { AggregateId::new() } else { id("subscription_id", &r.subscription_id)? };
            let secret = if r.secret.is_empty() {
                Secret::generate().map_err(ServiceError::internal)?
            } else {
                Secret::parse(&r.secret).map_err(|e| ServiceError::invalid("secret", e))?;
                r.secret
            };
            let condition = (!r.condition.trim().is_empty()).then_some(r.condition);
            let url = r.url;
            let command = C::Register { name: r.name, filter: r.filter, condition, url: url.clone() };
            let registered = self.execute(&caller, id, command, r.options).await?;
            // After the registration (refused requests leave nothing behind); a retried request
            // keeps the first secret.
            let secret: String = sqlx::query_scalar(
                "WITH put AS (INSERT INTO webhook_secrets (subscription_id, tenant_id, secret) VALUES ($1, $2, $3) \
                 ON CONFLICT (subscription_id) DO NOTHING RETURNING secret) \
                 SELECT secret FROM put UNION ALL SELECT secret FROM webhook_secrets WHERE subscription_id = $1 LIMIT 1",
            )
            .bind(id.as_uuid())
            .bind(caller.tenant.as_uuid())
            .bind(&secret)
            .fetch_one(&self.pool)
            .await?;
            let (state, validation_error, version) = match self.activate(&caller, id, &url).await? {
                Ok(done) => (SubscriptionState::Active, String::new(), done.version),
                Err(why) => (SubscriptionState::Pending, why, registered.version),
            };
            Ok::<_, ServiceError>(pb::CreateSubscriptionResponse {
                subscription_id: id.to_string(),
                version,
                state: state.as_str().to_owned(),
                validation_error,
                secret,
                replayed: registered.replayed,
            })
        })
        .await
    }

    async fn activate_subscription(&self, req: Request<pb::SubscriptionCommand>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = id("subscription_id", &r.subscription_id)?;
            let row = self.row(caller.tenant, id).await?;
            if row.try_get::<String, _>("state")? == "active" {
                return Err(ServiceError::Subscription(ExecutorError::Rule(SubscriptionError::Already("active"))));
            }
            let url: String = row.try_get("url")?;
            match self.activate(&caller, id, &url).await? {
                Ok(done) => Ok(respond(done)),
                Err(why) => Err(ServiceError::precondition(why)),
            }
        })
        .await
    }

    async fn disable_subscription(&self, req: Request<pb::SubscriptionCommand>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = id("subscription_id", &r.subscription_id)?;
            self.row(caller.tenant, id).await?;
            Ok::<_, ServiceError>(respond(self.execute(&caller, id, C::Disable { reason: r.reason }, r.options).await?))
        })
        .await
    }

    async fn delete_subscription(&self, req: Request<pb::SubscriptionCommand>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = id("subscription_id", &r.subscription_id)?;
            self.row(caller.tenant, id).await?;
            Ok::<_, ServiceError>(respond(self.execute(&caller, id, C::Delete, r.options).await?))
        })
        .await
    }

    async fn get_subscription(&self, req: Request<pb::GetSubscriptionRequest>) -> Reply<pb::Subscription> {
        handle(req, |caller, r| async move {
            let id = id("subscription_id", &r.subscription_id)?;
            let row = self.row(caller.tenant, id).await?;
            self.subscription(caller.tenant, &row).await
        })
        .await
    }

    async fn list_subscriptions(
        &self,
        req: Request<pb::ListSubscriptionsRequest>,
    ) -> Reply<pb::ListSubscriptionsResponse> {
        handle(req, |caller, r| async move {
            let listed = ["pending", "active", "disabled"];
            if !r.state.is_empty() && !listed.contains(&r.state.as_str()) {
                return Err(ServiceError::invalid("state", format!("one of {}", listed.join(", "))));
            }
            let rows = sqlx::query(
                "SELECT subscription_id, name, filter, condition, url, state, reason, version, created_at, updated_at \
                 FROM webhook_subscriptions WHERE tenant_id = $1 AND state <> 'deleted' AND ($2 = '' OR state = $2) \
                 ORDER BY subscription_id DESC LIMIT 1000",
            )
            .bind(caller.tenant.as_uuid())
            .bind(&r.state)
            .fetch_all(&self.pool)
            .await?;
            let mut subscriptions = Vec::with_capacity(rows.len());
            for row in &rows {
                subscriptions.push(self.subscription(caller.tenant, row).await?);
            }
            Ok(pb::ListSubscriptionsResponse { subscriptions })
        })
        .await
    }

    async fn replay_dead_letters(
        &self,
        req: Request<pb::ReplayDeadLettersRequest>,
    ) -> Reply<pb::ReplayDeadLettersResponse> {
        handle(req, |caller, r| async move {
            let id = id("subscription_id", &r.subscription_id)?;
            let event = if r.event_id.is_empty() {
                None
            } else {
                Some(EventId::from_str(&r.event_id).map_err(|e| ServiceError::invalid("event_id", e.to_string()))?)
            };
            self.row(caller.tenant, id).await?;
            let replayed = delivery::replay(&self.pool, Some(caller.tenant), id, event).await?;
            Ok::<_, ServiceError>(pb::ReplayDeadLettersResponse { replayed })
        })
        .await
    }
}
