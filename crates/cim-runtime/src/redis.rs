//! Redis through a deadpool pool, with timeouts on every step so a dead Redis costs a bounded
//! wait instead of a stuck request.

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{Config, Pool, PoolConfig, Runtime, Timeouts};

use crate::error::RuntimeError;
use crate::health::CheckFn;

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub max_size: usize,
    pub timeout: Duration,
}

fn pool(settings: &RedisSettings) -> Result<Pool, RuntimeError> {
    let mut cfg = Config::from_url(settings.url.clone());
    cfg.pool = Some(PoolConfig {
        max_size: settings.max_size,
        timeouts: Timeouts {
            wait: Some(settings.timeout),
            create: Some(settings.timeout),
            recycle: Some(settings.timeout),
        },
        ..PoolConfig::default()
    });
    cfg.create_pool(Some(Runtime::Tokio1)).map_err(|e| RuntimeError::Redis {
        at: crate::config::redact_url(&settings.url),
        what: format!("bad configuration: {e}"),
    })
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
