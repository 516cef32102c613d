//! The pool's manager: deadpool-redis's, except that a connection in use a moment ago is handed
//! out again without a ping.
//!
//! deadpool-redis sends `UNWATCH` + `PING` before it hands out any pooled connection: a round
//! trip before each use, as many round trips as the use itself for the gateway's one-command
//! cache lookups and its pipelined cache bumps. As with Postgres (`crate::postgres`), a
//! connection checked out less than [`PING_IF_IDLE_FOR`] ago whose commands all went through is
//! trusted; one that failed in any way (an I/O error, a timeout, an error reply) or that was idle
//! longer is pinged first, and dropped by the pool if the ping fails, as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleResult};
use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// A pooled connection checked out longer ago than this is pinged before it is handed out.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// deadpool-redis's manager (connections made from the URL and its TLS files; its recycling is
/// the ping), used only when a connection is not trusted.
#[derive(Debug)]
pub struct Manager(pub deadpool_redis::Manager);

/// A pooled connection and whether a command on it failed since it was last pinged.
pub struct Tracked {
    conn: MultiplexedConnection,
    failed: bool,
}

// `MultiplexedConnection` is not `Debug`.
impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked").field("failed", &self.failed).finish_non_exhaustive()
    }
}

impl managed::Manager for Manager {
    type Type = Tracked;
    type Error = RedisError;

    async fn create(&self) -> Result<Tracked, RedisError> {
        let conn = managed::Manager::create(&self.0).await?;
        Ok(Tracked { conn, failed: false })
    }

    async fn recycle(&self, tracked: &mut Tracked, metrics: &Metrics) -> RecycleResult<RedisError> {
        if !tracked.failed && metrics.last_used() < PING_IF_IDLE_FOR {
            return Ok(());
        }
        managed::Manager::recycle(&self.0, &mut tracked.conn, metrics).await?;
        tracked.failed = false;
        Ok(())
    }
}

pub type RawPool = managed::Pool<Manager>;

/// A connection from [`super::Pool::get`]: a `redis` connection (`query_async(&mut conn)`,
/// `AsyncCommands`) that goes back to the pool when dropped.
pub struct Connection {
    object: managed::Object<Manager>,
    /// The pool's count of outages ([`super::Pool::outages`]).
    outages: Arc<AtomicU64>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Connection").field(&*self.object).finish()
    }
}

impl Connection {
    pub(super) fn new(object: managed::Object<Manager>, outages: Arc<AtomicU64>) -> Self {
        Self { object, outages }
    }

    /// Notes a failure, so the connection is pinged before its next use; one that means Redis
    /// was not reached (not an error reply) counts as an outage.
    fn noted<T>(failed: &mut bool, outages: &AtomicU64, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(e) = &result {
            *failed = true;
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
                outages.fetch_add(1, Ordering::AcqRel);
            }
        }
        result
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let Tracked { conn, failed } = &mut *self.object;
        let outages = &self.outages;
        Box::pin(async move {
            let result = conn.req_packed_command(cmd).await;
            Self::noted(failed, outages, result)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let Tracked { conn, failed } = &mut *self.object;
        let outages = &self.outages;
        Box::pin(async move {
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            Self::noted(failed, outages, result)
        })
    }

    fn get_db(&self) -> i64 {
        self.object.conn.get_db()
    }
}
