//! Failed authentications per client address, counted in Redis so every gateway replica sees
//! the same count: past `CIM_GATEWAY_AUTH_FAILURES_PER_MINUTE` in a minute, the address gets
//! 429 (problem+json, Retry-After) for the rest of that minute, even with good credentials.
//!
//! Only failures cost a Redis round trip (an INCR, which returns the count over all replicas);
//! a replica remembers the addresses it saw go over the limit, so a successful request never
//! waits for Redis. Another replica learns of a blocked address at that address's first failure
//! there, whose INCR returns the shared count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cim_core::ErrorCode;

use crate::problem::ApiError;

pub const AUTH_FAILURES_TOTAL: &str = "cim_gateway_auth_failures_total";

pub fn describe() {
    metrics::describe_counter!(AUTH_FAILURES_TOTAL, "Failed authentications, by outcome (unauthenticated, locked_out)");
}

#[derive(Debug)]
pub struct Lockout {
    pub redis: cim_runtime::redis::Pool,
    /// 0: no limit.
    pub per_minute: u64,
    /// Addresses over the limit, with the minute they are blocked in.
    blocked: Mutex<HashMap<IpAddr, u64>>,
    /// The last minute (plus one; 0: never) in which any address was blocked: while it is not
    /// this minute, a request passes without taking the lock.
    last_block: AtomicU64,
}

fn window_key(client: IpAddr, minute: u64) -> String {
    format!("cim:gw:authfail:{client}:{minute}")
}

fn locked_out(now: u64) -> ApiError {
    let mut e = ApiError::new(ErrorCode::RateLimited, "too many failed authentications from this address; retry later");
    e.retry_after = Some(60 - now % 60);
    e
}

impl Lockout {
    pub fn new(redis: cim_runtime::redis::Pool, per_minute: u64) -> Self {
        Self { redis, per_minute, blocked: Mutex::new(HashMap::new()), last_block: AtomicU64::new(0) }
    }

    /// Refuses an address this replica knows to be over the limit this minute.
    pub fn check(&self, client: IpAddr) -> Result<(), ApiError> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let now = cim_auth::now_secs();
        if self.last_block.load(Ordering::Acquire) != now / 60 + 1 {
            return Ok(());
        }
        let blocked = self.blocked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match blocked.get(&client) {
            Some(minute) if *minute == now / 60 => {
                metrics::counter!(AUTH_FAILURES_TOTAL, "outcome" => "locked_out").increment(1);
                Err(locked_out(now))
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed authentication; answers what the client gets: the failure itself, or
    /// 429 once the address is over the limit. Without Redis the failure is not counted (the
    /// 401 still stands): an outage must not lock everyone out.
    pub async fn failed(&self, client: IpAddr, failure: ApiError) -> ApiError {
        metrics::counter!(AUTH_FAILURES_TOTAL, "outcome" => "unauthenticated").increment(1);
        if self.per_minute == 0 {
            return failure;
        }
        let now = cim_auth::now_secs();
        let key = window_key(client, now / 60);
        let count: Result<u64, String> = async {
            let mut conn = self.redis.get().await.map_err(|e| e.to_string())?;
            let (count,): (u64,) = deadpool_redis::redis::pipe()
                .incr(&key, 1)
                .expire(&key, 61)
                .ignore()
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok(count)
        }
        .await;
        match count {
            Ok(n) if n > self.per_minute => {
                let mut blocked = self.blocked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                // Past minutes are forgotten; the map holds at most this minute's offenders.
                blocked.retain(|_, minute| *minute == now / 60);
                blocked.insert(client, now / 60);
                self.last_block.store(now / 60 + 1, Ordering::Release);
                tracing::warn!(%client, failures = n, "client locked out after failed authentications");
                locked_out(now)
            }
            Ok(_) => failure,
            Err(e) => {
                tracing::debug!(error = %e, "failed authentication not counted: redis unavailable");
                failure
            }
        }
    }
}
