//! `webhook_subscriptions`, written in each command's transaction by the kit's executor.

use cim_aggregate::Projection;
use cim_core::EventEnvelope;
use sqlx::PgConnection;

use crate::events::SubscriptionEvent;
use crate::subscription::check_filter;

#[derive(Debug, Clone, Copy, Default)]
pub struct SubscriptionProjection;

impl Projection for SubscriptionProjection {
    type Event = SubscriptionEvent;

    async fn apply(
        &self,
        tx: &mut PgConnection,
        at: &EventEnvelope,
        event: &SubscriptionEvent,
    ) -> Result<(), sqlx::Error> {
        use SubscriptionEvent as E;
        let (tenant, id, version) = (at.tenant_id.as_uuid(), at.aggregate_id.as_uuid(), at.sequence as i64);
        let set = |sql: &'static str| sqlx::query(sql).bind(tenant).bind(id).bind(version).bind(at.occurred_at);
        match event {
            E::Registered(e) => {
                // The rules accepted the filter, so it names a domain.
                let domain = check_filter(&e.filter).map(|d| d.as_str()).unwrap_or_default();
                set("INSERT INTO webhook_subscriptions (tenant_id, subscription_id, version, created_at, updated_at, \
                     name, filter, domain, condition, url, state) VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8, $9, 'pending')")
                .bind(&e.name)
                .bind(&e.filter)
                .bind(domain)
                .bind(&e.condition)
                .bind(&e.url)
                .execute(&mut *tx)
                .await?;
            }
            E::Activated(_) => {
                set("UPDATE webhook_subscriptions SET state = 'active', reason = '', version = $3, updated_at = $4 \
                     WHERE tenant_id = $1 AND subscription_id = $2")
                .execute(&mut *tx)
                .await?;
            }
            E::Disabled(e) => {
                set("UPDATE webhook_subscriptions SET state = 'disabled', reason = $5, version = $3, updated_at = $4 \
                     WHERE tenant_id = $1 AND subscription_id = $2")
                .bind(&e.reason)
                .execute(&mut *tx)
                .await?;
            }
            E::Deleted(_) => {
                // Its queue and secret go with it: nothing is sent for a deleted subscription.
                for table in ["webhook_deliveries", "webhook_secrets"] {
                    let sql = format!("DELETE FROM {table} WHERE tenant_id = $1 AND subscription_id = $2");
                    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(id).execute(&mut *tx).await?;
                }
                set("UPDATE webhook_subscriptions SET state = 'deleted', version = $3, updated_at = $4 \
                     WHERE tenant_id = $1 AND subscription_id = $2")
                .execute(&mut *tx)
                .await?;
            }
        }
        Ok(())
    }
}
