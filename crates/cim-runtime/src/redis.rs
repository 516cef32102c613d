//! Redis through a deadpool pool, with timeouts on every step so a dead Redis costs a bounded
//! wait instead of a stuck request, and no ping before a connection in use a moment ago is used
//! again ([`trusted`]).

mod trusted;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_redis::redis::{self, ClientTlsConfig, TlsCertificates};
use deadpool_redis::{PoolConfig, Runtime, Timeouts};

use crate::error::RuntimeError;
use crate::health::CheckFn;
use crate::tls::TlsError;
use crate::tls::reload::Reloading;
pub use trusted::{Connection, PING_IF_IDLE_FOR};
use trusted::{Manager, RawPool};

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub max_size: usize,
    pub timeout: Duration,
    /// Certificates for a `rediss://` URL; the default: the system's roots, no client certificate.
    pub tls: RedisTls,
}

/// A `rediss://` connection's CA and client certificate (`CIM_REDIS_*_FILE`).
#[derive(Debug, Clone)]
pub struct RedisTls {
    /// The CA Redis's certificate must come from; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    pub identity: Option<crate::tls::CertFiles>,
    /// How often the files are checked for a change, at most (`CIM_TLS_RELOAD_SECS`).
    pub reload: Duration,
}

impl Default for RedisTls {
    fn default() -> Self {
        Self { ca: None, identity: None, reload: crate::tls::TlsSettings::default().reload }
    }
}

impl RedisTls {
    fn files(&self) -> Vec<PathBuf> {
        let identity = self.identity.iter().flat_map(|f| [f.cert.clone(), f.key.clone()]);
        self.ca.iter().cloned().chain(identity).collect()
    }
}

/// A Redis connection pool whose TLS files are read again when they change. The redis client
/// takes its CA and client certificate as bytes, read once, into every connection it makes; so
/// with a `rediss://` URL and certificate files, [`Pool::get`] checks the files (at most every
/// `RedisTls::reload`, [`Reloading`]) and, once they changed, hands out connections of a new
/// pool built from them. Connections already made keep working; the old pool's close as they
/// come back to it.
///
/// It also counts the times Redis could not be reached ([`Pool::outages`]), so that data kept in
/// Redis can be distrusted after changes that could not be recorded in it meanwhile.
#[derive(Debug, Clone)]
pub struct Pool {
    swapped: Arc<Swapped>,
    outages: Arc<AtomicU64>,
}

#[derive(Debug)]
enum Swapped {
    Fixed(RawPool),
    Reloading(Reloading<RawPool>),
}

impl Pool {
    fn new(swapped: Swapped) -> Self {
        Self { swapped: Arc::new(swapped), outages: Arc::default() }
    }

    /// A connection from the pool, made with the current files when a new one is needed.
    pub async fn get(&self) -> Result<Connection, deadpool_redis::PoolError> {
        let object = match &*self.swapped {
            Swapped::Fixed(pool) => pool.get().await,
            Swapped::Reloading(pool) => pool.current().get().await,
        };
        match object {
            Ok(object) => Ok(Connection::new(object, self.outages.clone())),
            Err(e) => {
                // Waiting for a free connection is load, not Redis away.
                if !matches!(e, deadpool_redis::PoolError::Timeout(deadpool::managed::TimeoutType::Wait)) {
                    self.note_outage();
                }
                Err(e)
            }
        }
    }

    /// How many times Redis could not be reached so far (no connection made, a command cut off or
    /// timed out on one) or a caller said a change could not be recorded ([`Pool::note_outage`]):
    /// when it moved, something may have changed that Redis was never told of.
    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Acquire)
    }

    /// Counts a change that could not be recorded in Redis as an outage.
    pub fn note_outage(&self) {
        self.outages.fetch_add(1, Ordering::AcqRel);
    }
}

fn pool(settings: &RedisSettings) -> Result<Pool, RuntimeError> {
    let error = |e: TlsError| {
        let what = if e.path.as_os_str().is_empty() { e.what } else { e.to_string() };
        RuntimeError::Redis { at: crate::config::redact_url(&settings.url), what }
    };
    let files = settings.tls.files();
    if !settings.url.starts_with("rediss://") || files.is_empty() {
        return build(settings).map(|pool| Pool::new(Swapped::Fixed(pool))).map_err(error);
    }
    let settings_now = settings.clone();
    let reloading = Reloading::new(files, settings.tls.reload, move || build(&settings_now)).map_err(error)?;
    Ok(Pool::new(Swapped::Reloading(reloading)))
}

/// A deadpool pool with the TLS files as they are now. Errors name the file at fault, or the
/// certificate file for a configuration that does not build.
fn build(settings: &RedisSettings) -> Result<RawPool, TlsError> {
    let unnamed = |what: String| TlsError { path: PathBuf::new(), what };
    let pool_config = PoolConfig {
        max_size: settings.max_size,
        timeouts: Timeouts {
            wait: Some(settings.timeout),
            create: Some(settings.timeout),
            recycle: Some(settings.timeout),
        },
        ..PoolConfig::default()
    };
    let pool = |manager| {
        RawPool::builder(Manager(manager))
            .config(pool_config)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| unnamed(format!("bad configuration: {e}")))
    };
    if !settings.url.starts_with("rediss://") {
        let manager = deadpool_redis::Manager::new(settings.url.as_str())
            .map_err(|e| unnamed(format!("bad configuration: {e}")))?;
        return pool(manager);
    }
    // Checked here, as the other TLS files are: a half-rotated pair (the new key beside the old
    // certificate) is an error that keeps the previous pool, not a pool that cannot connect.
    if let Some(files) = &settings.tls.identity {
        crate::tls::certified_key(files)?;
    }
    if let Some(ca) = &settings.tls.ca {
        crate::tls::read_roots(ca)?;
    }
    // The redis client builds its rustls configuration from the process's provider.
    crate::tls::install_provider();
    let read = |path: &Path| std::fs::read(path).map_err(|e| TlsError { path: path.to_owned(), what: e.to_string() });
    let certificates = TlsCertificates {
        client_tls: match &settings.tls.identity {
            Some(files) => Some(ClientTlsConfig { client_cert: read(&files.cert)?, client_key: read(&files.key)? }),
            None => None,
        },
        root_cert: settings.tls.ca.as_deref().map(read).transpose()?,
    };
    let at =
        settings.tls.identity.as_ref().map(|f| f.cert.clone()).or_else(|| settings.tls.ca.clone()).unwrap_or_default();
    let client = redis::Client::build_with_tls(settings.url.as_str(), certificates)
        .map_err(|e| TlsError { path: at, what: format!("bad TLS configuration: {e}") })?;
    let manager = deadpool_redis::Manager::new(client.get_connection_info().clone())
        .map_err(|e| unnamed(format!("bad configuration: {e}")))?;
    pool(manager)
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
