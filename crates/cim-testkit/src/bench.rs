//! Throughput points with their latency percentiles.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One measured point: operations per second, and how long each operation took.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub per_s: f64,
    /// Every operation's duration in seconds, sorted.
    pub latencies: Vec<f64>,
}

impl Throughput {
    /// The `q` quantile (0..=1) of the latencies, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.latencies, q)
    }

    /// `{"per_s", "p50_ms", "p99_ms", "samples"}`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "per_s": self.per_s.round(),
            "p50_ms": round3(self.quantile_ms(0.5)),
            "p99_ms": round3(self.quantile_ms(0.99)),
            "samples": self.latencies.len(),
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn quantile_ms(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize] * 1000.0
}

/// `{"samples", "p50_ms", "p99_ms"}` of durations in seconds.
pub fn percentiles(mut samples: Vec<f64>) -> serde_json::Value {
    samples.sort_by(f64::total_cmp);
    serde_json::json!({
        "samples": samples.len(),
        "p50_ms": round3(quantile_ms(&samples, 0.5)),
        "p99_ms": round3(quantile_ms(&samples, 0.99)),
    })
}

/// Runs `c` workers for `secs` after `warm_up`, each calling `op(worker, i)` in a loop; counts
/// and times the operations that end inside the measured window.
pub async fn rate<F, Fut>(c: usize, warm_up: Duration, secs: f64, op: F) -> Throughput
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now() + warm_up;
    let end = start + Duration::from_secs_f64(secs);
    let workers: Vec<_> = (0..c)
        .map(|w| {
            let (op, done) = (op.clone(), done.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = 0;
                while !done.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    op(w, i).await;
                    let ended = Instant::now();
                    if ended >= start && ended <= end {
                        latencies.push((ended - began).as_secs_f64());
                    }
                    i += 1;
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep_until((end).into()).await;
    done.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.expect("bench worker"));
    }
    latencies.sort_by(f64::total_cmp);
    Throughput { per_s: latencies.len() as f64 / secs, latencies }
}

/// A splitmix64 stream: reproducible pseudo-random numbers for benchmark data, without another
/// dependency.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The raw write every domain's command rate is compared with: one event row per transaction
/// (INSERT + COMMIT) into `table`, a copy of an `events` table, as an append's insert is.
#[derive(Debug, Clone)]
pub struct RawEvents {
    /// `(aggregate type, event type, payload JSON)` of every row.
    pub shape: (&'static str, &'static str, &'static str),
    /// Where the rows go: a table created `LIKE` an `events` table ([`RawEvents::create_table`]).
    pub table: &'static str,
}

impl RawEvents {
    /// Creates `table` with the columns, constraints and indexes of `events` (both names may be
    /// schema-qualified).
    pub async fn create_table(pool: &sqlx::PgPool, table: &str, events: &str) {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE TABLE {table} (LIKE {events} INCLUDING ALL)")))
            .execute(pool)
            .await
            .expect("raw events table");
    }

    /// [`rate`] of single-row transactions over `pool` at concurrency `c`.
    pub async fn rate(&self, pool: &sqlx::PgPool, c: usize, warm_up: Duration, secs: f64) -> Throughput {
        let sql = format!(
            "INSERT INTO {} (event_id, aggregate_id, sequence, aggregate_type, event_type, schema_version, \
             occurred_at, tenant_id, actor, correlation_id, causation_id, payload, hash, prev_hash) \
             VALUES ($1, $2, $3, $4, $5, 1, now(), $6, 'user:bench', $7, $8, $9::json, $10, $10)",
            self.table
        );
        let (pool, shape, tenant) = (pool.clone(), self.shape, uuid::Uuid::now_v7());
        rate(c, warm_up, secs, move |_, i| {
            let (pool, sql) = (pool.clone(), sql.clone());
            async move {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(uuid::Uuid::now_v7())
                    .bind(uuid::Uuid::now_v7())
                    .bind(i as i64 + 1)
                    .bind(shape.0)
                    .bind(shape.1)
                    .bind(tenant)
                    .bind(uuid::Uuid::now_v7())
                    .bind(uuid::Uuid::now_v7())
                    .bind(shape.2)
                    .bind(vec![0u8; 32])
                    .execute(&pool)
                    .await
                    .expect("raw insert");
            }
        })
        .await
    }
}
