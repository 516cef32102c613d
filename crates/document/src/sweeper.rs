//! Collects content no version references (after hard deletes, failed commits, abandoned
//! uploads) and staging leftovers, once they are older than the grace period. An S3 multipart
//! upload abandoned by a killed process is not listed by the object store API: the bucket's
//! lifecycle rule `AbortIncompleteMultipartUpload` removes it (docs/deployment.md).
//!
//! Safety against a concurrent upload of the same bytes: each collected content's row is
//! locked while its object is deleted, and an upload's pin waits on that lock (see
//! `content::pin`). The object is deleted before the row, so a crash between the two leaves a
//! row whose object is gone, which the next pass removes (and an upload pinning it puts the
//! bytes back, because promotion checks the object, not the row).

use std::time::Duration;

use chrono::Utc;
use cim_runtime::Shutdown;
use sqlx::{PgPool, Row};

use crate::content::{ContentError, ContentStore};
use crate::metrics::{GC_OBJECTS_TOTAL, GC_RUNS_TOTAL};

/// Contents examined per transaction.
const BATCH: i64 = 100;

#[derive(Debug, Clone)]
pub struct Sweeper {
    pub pool: PgPool,
    pub content: ContentStore,
    pub grace: Duration,
    pub interval: Duration,
}

/// What one pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub blobs: u64,
    pub staging: u64,
}

impl Sweeper {
    /// Sweeps every `interval` until `stop` fires.
    pub async fn run(self, stop: Shutdown) {
        loop {
            tokio::select! {
                _ = stop.wait() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
            match self.sweep().await {
                Ok(swept) => {
                    metrics::counter!(GC_RUNS_TOTAL, "outcome" => "ok").increment(1);
                    if swept != Swept::default() {
                        tracing::info!(blobs = swept.blobs, staging = swept.staging, "swept unreferenced content");
                    }
                }
                Err(e) => {
                    metrics::counter!(GC_RUNS_TOTAL, "outcome" => "error").increment(1);
                    tracing::warn!(error = %e, "content sweep failed; the next pass retries");
                }
            }
        }
    }

    /// One pass: unreferenced content, then staging leftovers.
    pub async fn sweep(&self) -> Result<Swept, ContentError> {
        let mut swept = Swept::default();
        loop {
            let removed = self.sweep_blobs().await?;
            swept.blobs += removed;
            if removed < BATCH as u64 {
                break;
            }
        }
        let cutoff = Utc::now() - chrono::Duration::from_std(self.grace).unwrap_or(chrono::Duration::MAX);
        for path in self.content.older_than(&ContentStore::staging_root(), cutoff).await? {
            self.content.discard(&path).await?;
            swept.staging += 1;
        }
        swept.staging += self.content.sweep_local_staging(std::time::SystemTime::now() - self.grace).await?;
        metrics::counter!(GC_OBJECTS_TOTAL, "kind" => "blob").increment(swept.blobs);
        metrics::counter!(GC_OBJECTS_TOTAL, "kind" => "staging").increment(swept.staging);
        Ok(swept)
    }

    async fn sweep_blobs(&self) -> Result<u64, ContentError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT b.tenant_id, b.cid FROM content_blobs b \
             WHERE b.touched_at < now() - make_interval(secs => $1) \
             AND NOT EXISTS (SELECT 1 FROM document_versions v WHERE v.tenant_id = b.tenant_id AND v.cid = b.cid) \
             ORDER BY b.touched_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.grace.as_secs_f64())
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let mut swept = 0;
        for row in &rows {
            let tenant: uuid::Uuid = row.try_get("tenant_id")?;
            let cid: String = row.try_get("cid")?;
            let Ok(tenant_id) = cim_core::TenantId::from_uuid(tenant) else { continue };
            // Checked again now: the select's snapshot may predate a version that committed
            // before this row's lock was taken (its key-share lock was gone by then, so nothing
            // made the select look again). The lock held from here on keeps new versions out.
            let deleted = sqlx::query(
                "DELETE FROM content_blobs b WHERE b.tenant_id = $1 AND b.cid = $2 \
                 AND NOT EXISTS (SELECT 1 FROM document_versions v WHERE v.tenant_id = b.tenant_id AND v.cid = b.cid)",
            )
            .bind(tenant)
            .bind(&cid)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if deleted == 1 {
                self.content.discard(&ContentStore::blob_path(tenant_id, &cid)).await?;
                swept += 1;
            }
        }
        tx.commit().await?;
        Ok(swept)
    }
}
