//! Redis through a deadpool pool, with timeouts on every step so a dead Redis costs a bounded
//! wait instead of a stuck request.

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis::{self, ClientTlsConfig, TlsCertificates};
use deadpool_redis::{Config, Pool, PoolConfig, Runtime, Timeouts};

use crate::error::RuntimeError;
use crate::health::CheckFn;

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub max_size: usize,
    pub timeout: Duration,
    /// Certificates for a `rediss://` URL; the default: the system's roots, no client certificate.
    pub tls: RedisTls,
}

/// A `rediss://` connection's CA and client certificate (`CIM_REDIS_*_FILE`).
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// The CA Redis's certificate must come from; `None`: the system's roots.
    pub ca: Option<std::path::PathBuf>,
    pub identity: Option<crate::tls::CertFiles>,
}

fn pool(settings: &RedisSettings) -> Result<Pool, RuntimeError> {
    let error = |what: String| RuntimeError::Redis { at: crate::config::redact_url(&settings.url), what };
    let pool_config = PoolConfig {
        max_size: settings.max_size,
        timeouts: Timeouts {
            wait: Some(settings.timeout),
            create: Some(settings.timeout),
            recycle: Some(settings.timeout),
        },
        ..PoolConfig::default()
    };
    if !settings.url.starts_with("rediss://") {
        let mut cfg = Config::from_url(settings.url.clone());
        cfg.pool = Some(pool_config);
        return cfg.create_pool(Some(Runtime::Tokio1)).map_err(|e| error(format!("bad configuration: {e}")));
    }
    // The redis client builds its rustls configuration from the process's provider.
    crate::tls::install_provider();
    let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| error(format!("{}: {e}", path.display())));
    let certificates = TlsCertificates {
        client_tls: match &settings.tls.identity {
            Some(files) => Some(ClientTlsConfig { client_cert: read(&files.cert)?, client_key: read(&files.key)? }),
            None => None,
        },
        root_cert: settings.tls.ca.as_deref().map(read).transpose()?,
    };
    let client = redis::Client::build_with_tls(settings.url.as_str(), certificates)
        .map_err(|e| error(format!("bad TLS configuration: {e}")))?;
    let manager = deadpool_redis::Manager::new(client.get_connection_info().clone())
        .map_err(|e| error(format!("bad configuration: {e}")))?;
    Pool::builder(manager)
        .config(pool_config)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| error(format!("bad configuration: {e}")))
}

async fn ping(pool: &Pool, timeout: Duration) -> Result<(), String> {
    let work = async {
        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
        deadpool_redis::redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Builds the pool and checks Redis answers.
pub async fn connect(settings: &RedisSettings) -> Result<Pool, RuntimeError> {
    let pool = pool(settings)?;
    ping(&pool, settings.timeout)
        .await
        .map_err(|what| RuntimeError::Redis { at: crate::config::redact_url(&settings.url), what })?;
    Ok(pool)
}

/// Builds the pool without checking: for services that keep serving while Redis is down.
pub fn connect_lazy(settings: &RedisSettings) -> Result<Pool, RuntimeError> {
    pool(settings)
}

/// Ready while Redis answers PING.
pub fn readiness(pool: Pool, timeout: Duration) -> CheckFn {
    Arc::new(move || {
        let pool = pool.clone();
        Box::pin(async move { ping(&pool, timeout).await.map_err(|e| format!("redis: {e}")) })
    })
}
