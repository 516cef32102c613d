//! `cim verify`: the hash chain of every aggregate each domain service stored.

use super::*;

/// `cim verify`: every aggregate of every (or one) domain service's schema.
pub(crate) async fn verify(only: Option<&str>) -> ExitCode {
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let services: Vec<&DomainService> = DOMAIN_SERVICES.iter().filter(|s| only.is_none_or(|o| o == s.name)).collect();
    if services.is_empty() {
        let names: Vec<&str> = DOMAIN_SERVICES.iter().map(|s| s.name).collect();
        return fail(&format!("--service: expected one of {}", names.join(", ")), EXIT_CONFIG);
    }
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
        let report = match store {
            Ok(store) => store.verify_all().await,
            Err(e) => Err(e),
        };
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
    if broken == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
