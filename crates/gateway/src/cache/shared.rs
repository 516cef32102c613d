//! The second level, in Redis and shared by every gateway instance: one hash per aggregate, its
//! `gen` counter and its cached responses, each tagged with the `gen` it was computed under.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::CACHE_INVALIDATIONS_TOTAL;

/// The aggregate's hash. Its id alone: ids are UUIDs, unique across domains.
pub(super) fn entry(aggregate: &str) -> String {
    format!("cim:gw:cache:{aggregate}")
}

/// A cached response and the generation it was computed under.
#[derive(Serialize, Deserialize)]
pub(super) struct Cached {
    pub g: i64,
    pub b: String,
}

/// Writes a response only while `gen` is still what the reader saw (ARGV[1], empty: the hash had
/// none): a response computed before a bump is never served after it, even if it was written
/// late. A hash without a generation (never written, expired, or a Redis that restarted empty)
/// is given a random one (ARGV[5]) before anything is kept under it, and a generation that
/// vanished since the read keeps nothing: generations never start again from the same number, so
/// an entry another instance kept from before a restart can never match one counted afresh
/// after it. Answers 1 when the response was kept (under ARGV[5] or the one read), else 0.
pub(super) const STORE_IF_CURRENT: &str = r"
local gen = redis.call('HGET', KEYS[1], 'gen')
if not gen then
  if ARGV[1] ~= '' then return 0 end
  redis.call('HSET', KEYS[1], 'gen', ARGV[5])
elseif gen ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1";

/// Adds one generation bump to `pipe`. A hash without a generation starts from a random one, as
/// in [`STORE_IF_CURRENT`], so that a count begun afresh (the hash expired, or Redis restarted
/// empty) never meets a generation an instance's memory still holds entries under.
fn queue_bump(pipe: &mut deadpool_redis::redis::Pipeline, key: &str, ttl: i64) {
    pipe.hset_nx(key, "gen", fresh_generation()).ignore().hincr(key, "gen", 1).ignore().expire(key, ttl).ignore();
}

/// Where a hash's generation starts when a response is first kept in it: random, below 2^52 so
/// that counting up from it stays exact everywhere, and far from any earlier start.
pub(super) fn fresh_generation() -> i64 {
    (uuid::Uuid::new_v4().as_u64_pair().0 >> 12) as i64
}

type Bump = (String, tokio::sync::oneshot::Sender<Result<(), String>>);

/// Generation bumps sent to Redis in batches: bumps asked for while a batch is in flight go
/// together in the next pipeline, one round trip for all (every write through the gateway and
/// every event a shared invalidator sees asks for one). Each caller still waits until its bump
/// is in Redis, so a response computed before it is never served after.
#[derive(Debug, Clone)]
pub struct Bumps {
    queue: tokio::sync::mpsc::Sender<Bump>,
    redis: cim_runtime::redis::Pool,
    ttl: Duration,
}

/// At most this many aggregates per pipeline.
pub(super) const MAX_BUMPS: usize = 256;

impl Bumps {
    /// Starts the sender; it ends when the last handle is dropped.
    pub fn start(redis: cim_runtime::redis::Pool, ttl: Duration) -> Self {
        let (queue, rx) = tokio::sync::mpsc::channel(MAX_BUMPS * 4);
        tokio::spawn(send_bumps(redis.clone(), ttl, rx));
        Self { queue, redis, ttl }
    }

    /// Bumps every cached aggregate, of every domain: when changes may have gone unseen (a
    /// shared invalidator whose consumer went with its stream), nothing cached before is served.
    /// Answers how many aggregates were bumped.
    pub async fn bump_every_entry(&self) -> Result<u64, String> {
        use deadpool_redis::redis;
        let ttl = self.ttl.as_secs().max(1) as i64;
        let mut conn = self.redis.get().await.map_err(|e| e.to_string())?;
        let (mut cursor, mut bumped) = (0u64, 0u64);
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(entry("*"))
                .arg("COUNT")
                .arg(MAX_BUMPS)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            // An empty batch sends nothing: redis-rs refuses an empty pipeline ("empty command").
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for key in &keys {
                    queue_bump(&mut pipe, key, ttl);
                }
                let () = pipe.query_async(&mut conn).await.map_err(|e| e.to_string())?;
                bumped += keys.len() as u64;
            }
            if next == 0 {
                metrics::counter!(CACHE_INVALIDATIONS_TOTAL).increment(bumped);
                return Ok(bumped);
            }
            cursor = next;
        }
    }

    pub async fn bump(&self, aggregate: &str) -> Result<(), String> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.queue.send((aggregate.to_owned(), reply)).await.map_err(|_| "cache bumps stopped".to_owned())?;
        done.await.map_err(|_| "cache bumps stopped".to_owned())?
    }
}

async fn send_bumps(redis: cim_runtime::redis::Pool, ttl: Duration, mut rx: tokio::sync::mpsc::Receiver<Bump>) {
    let ttl = ttl.as_secs().max(1) as i64;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BUMPS {
            let Ok(next) = rx.try_recv() else { break };
            batch.push(next);
        }
        let aggregates: BTreeSet<&str> = batch.iter().map(|(a, _)| a.as_str()).collect();
        let mut pipe = deadpool_redis::redis::pipe();
        for aggregate in &aggregates {
            let key = entry(aggregate);
            queue_bump(&mut pipe, &key, ttl);
        }
        let send = || async {
            let mut conn = redis.get().await.map_err(|e| e.to_string())?;
            pipe.query_async::<()>(&mut conn).await.map_err(|e| e.to_string())
        };
        // Once more on a failure: the pool hands out a connection used a moment ago without a
        // ping (`cim_runtime::redis`), so a connection that just died fails here first; the
        // second try gets a pinged or a new one. A bump that fails lets another gateway serve
        // what this write changed until its event arrives.
        let sent = match send().await {
            Err(_) => send().await,
            sent => sent,
        };
        if sent.is_ok() {
            metrics::counter!(CACHE_INVALIDATIONS_TOTAL).increment(aggregates.len() as u64);
        }
        for (_, reply) in batch {
            let _ = reply.send(sent.clone());
        }
    }
}
