//! `cim verify`: the hash chain of every aggregate each domain service stored.

use super::*;

/// `cim verify`: every aggregate of every (or one) domain service's schema, or one aggregate.
pub(crate) async fn verify(only: Option<&str>, aggregate: Option<&str>) -> ExitCode {
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let services: Vec<&DomainService> = DOMAIN_SERVICES.iter().filter(|s| only.is_none_or(|o| o == s.name)).collect();
    if services.is_empty() {
        let names: Vec<&str> = DOMAIN_SERVICES.iter().map(|s| s.name).collect();
        return fail(&format!("--domain: expected one of {}", names.join(", ")), EXIT_CONFIG);
    }
    let aggregate = match aggregate.map(str::parse::<cim_core::AggregateId>) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(e)) => return fail(&format!("--aggregate: {e}"), EXIT_CONFIG),
    };
    let mut found = false;
    let mut broken = 0;
    for service in services {
        let pool = cim_runtime::postgres::connect(&cim_runtime::postgres::PgSettings {
            url: config.database_url.expose().to_owned(),
            schema: service.schema.into(),
            max_connections: 2,
            connect_timeout: config.connect_timeout,
            application_name: "cim-verify".into(),
        })
        .await;
        let pool = match pool {
            Ok(pool) => pool,
            Err(e) => return fail(&format!("postgres: {e}"), 1),
        };
        let exists = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'events')",
        )
        .bind(service.schema)
        .fetch_one(&pool)
        .await;
        match exists {
            Ok(true) => {}
            Ok(false) => {
                out(&format!("{}: schema {} has no events yet; nothing to verify", service.name, service.schema));
                continue;
            }
            Err(e) => return fail(&format!("postgres: {e}"), 1),
        }
        let store = cim_eventstore::EventStore::open(
            pool,
            cim_eventstore::StoreConfig {
                domain: service.domain,
                schema: service.schema.to_owned(),
                snapshot_every: u64::MAX,
                upcasters: cim_core::Upcasters::new(),
            },
        )
        .await;
        let store = match store {
            Ok(store) => store,
            Err(e) => return fail(&format!("{}: {e}", service.name), 1),
        };
        if let Some(id) = aggregate {
            match verify_one(&store, service.name, id).await {
                Ok(None) => continue,
                Ok(Some(ok)) => {
                    found = true;
                    broken += usize::from(!ok);
                    continue;
                }
                Err(e) => return fail(&format!("{}: {e}", service.name), 1),
            }
        }
        let report = store.verify_all().await;
        match report {
            Ok(report) => {
                for b in &report.broken {
                    out(&format!(
                        "{}: BROKEN aggregate {} (tenant {}): {}",
                        service.name, b.aggregate, b.tenant, b.why
                    ));
                }
                broken += report.broken.len();
                out(&format!(
                    "{}: {} aggregates, {} events verified; {} broken",
                    service.name,
                    report.aggregates,
                    report.events,
                    report.broken.len()
                ));
            }
            Err(e) => return fail(&format!("{}: {e}", service.name), 1),
        }
    }
    if let Some(id) = aggregate
        && !found
    {
        return fail(&format!("aggregate {id}: no events in any schema checked"), 1);
    }
    if broken == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// One aggregate's chain, if this schema holds it: `Some(true)` when it holds, `Some(false)`
/// after printing the first broken link.
async fn verify_one(
    store: &cim_eventstore::EventStore,
    name: &str,
    id: cim_core::AggregateId,
) -> Result<Option<bool>, cim_eventstore::StoreError> {
    let tenant: Option<uuid::Uuid> = sqlx::query_scalar("SELECT tenant_id FROM events WHERE aggregate_id = $1 LIMIT 1")
        .bind(id.as_uuid())
        .fetch_optional(store.pool())
        .await?;
    let Some(tenant) = tenant else { return Ok(None) };
    let tenant =
        cim_core::TenantId::from_uuid(tenant).map_err(|e| cim_eventstore::StoreError::Corrupt(e.to_string()))?;
    match store.verify(tenant, id).await {
        Ok(events) => {
            out(&format!("{name}: aggregate {id} (tenant {tenant}): {events} events verified"));
            Ok(Some(true))
        }
        Err(cim_eventstore::StoreError::Database(e)) => Err(cim_eventstore::StoreError::Database(e)),
        Err(e) => {
            out(&format!("{name}: BROKEN aggregate {id} (tenant {tenant}): {e}"));
            Ok(Some(false))
        }
    }
}
