//! Document bytes in the object store: content ids computed while the bytes stream in, a
//! per-tenant staging area, promotion to the content address, pins that keep the sweeper away,
//! and ranged reads.
//!
//! Layout: `staging/<tenant>/<upload id>` while an upload runs, `blobs/<tenant>/<cid>` after.
//! Tenants never share an object, so one tenant cannot learn from timing or deduplication
//! whether another stored the same bytes.

use std::sync::Arc;

use bytes::Bytes;
use cid::Cid;
use cid::multihash::Multihash;
use cim_core::TenantId;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sqlx::PgPool;

/// The multicodec of raw bytes.
const RAW: u64 = 0x55;
/// The multihash code of BLAKE3 (32-byte digest).
const BLAKE3: u64 = 0x1e;
/// Uploads up to this size are one PUT; larger ones go in parts of this size.
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts in flight per upload: bounds an upload's memory to about this many parts.
const PARTS_IN_FLIGHT: usize = 2;
/// Downloads from a local directory read this much per call (object_store's stream reads 8 KiB
/// per blocking-thread hop, which cost about 3 CPU-seconds per GiB in the document bench).
const READ_BYTES: u64 = 1024 * 1024;
/// The leading text of text-like content kept for search.
pub const SEARCH_TEXT_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("content is larger than the {limit}-byte limit (CIM_DOCUMENT_MAX_CONTENT_BYTES)")]
    TooLarge { limit: u64 },
    #[error("content is empty")]
    Empty,
    #[error("expected_cid: {0}")]
    BadCid(String),
    #[error("the content's id is {actual}, not the expected {expected}; nothing was stored")]
    Mismatch { expected: String, actual: String },
    #[error("object store {at}: {source}")]
    Store { at: String, source: Box<object_store::Error> },
    #[error("content {cid} is missing from the object store {at}")]
    Missing { at: String, cid: String },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// The content id of `digest`, a BLAKE3 hash of raw bytes: CIDv1, base32 (`bafkr4i…`).
pub fn cid_of(digest: &blake3::Hash) -> String {
    let hash = Multihash::<64>::wrap(BLAKE3, digest.as_bytes()).expect("a 32-byte digest fits");
    Cid::new_v1(RAW, hash).to_string()
}

/// Parses a client's CID, in any multibase; answers its canonical (base32) form.
pub fn parse_cid(s: &str) -> Result<String, ContentError> {
    let cid = Cid::try_from(s).map_err(|e| ContentError::BadCid(e.to_string()))?;
    if cid.codec() != RAW || cid.hash().code() != BLAKE3 {
        return Err(ContentError::BadCid("expected a CIDv1 with the raw codec and a BLAKE3 multihash".into()));
    }
    Ok(Cid::new_v1(RAW, *cid.hash()).to_string())
}

/// Whether search should read this content type's text.
pub fn is_text(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence.starts_with("text/")
        || matches!(
            essence.as_str(),
            "application/json" | "application/xml" | "application/yaml" | "application/x-ndjson"
        )
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
}

/// The object store as the document service uses it.
#[derive(Debug, Clone)]
pub struct ContentStore {
    store: Arc<dyn ObjectStore>,
    at: String,
    max_bytes: u64,
    /// The directory of a local store: its unfinished multipart files (`<path>#<n>`, left by a
    /// process killed mid-upload) are invisible to `list`, so the sweeper walks the disk too.
    local_root: Option<std::path::PathBuf>,
}

impl ContentStore {
    pub fn new(objects: &cim_objects::Objects, max_bytes: u64, local_root: Option<std::path::PathBuf>) -> Self {
        Self { store: objects.store().clone(), at: objects.describe().to_owned(), max_bytes, local_root }
    }

    /// Removes unfinished multipart files under a local store's `staging/` last modified before
    /// `cutoff`; how many.
    pub async fn sweep_local_staging(&self, cutoff: std::time::SystemTime) -> Result<u64, ContentError> {
        let Some(root) = self.local_root.clone() else { return Ok(0) };
        let at = self.at.clone();
        let failed = move |source: std::io::Error| ContentError::Store {
            at: at.clone(),
            source: Box::new(object_store::Error::Generic { store: "local staging sweep", source: Box::new(source) }),
        };
        tokio::task::spawn_blocking(move || {
            let mut removed = 0;
            let mut dirs = vec![root.join("staging")];
            while let Some(dir) = dirs.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(failed(e)),
                };
                for entry in entries {
                    // An upload finishing meanwhile removes its files: gone is not an error.
                    let meta = match entry.and_then(|e| e.metadata().map(|m| (e, m))) {
                        Ok(found) => found,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(failed(e)),
                    };
                    let (entry, meta) = meta;
                    if meta.is_dir() {
                        dirs.push(entry.path());
                    } else if entry.file_name().to_string_lossy().contains('#')
                        && meta.modified().map_err(&failed)? < cutoff
                    {
                        match std::fs::remove_file(entry.path()) {
                            Ok(()) => removed += 1,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => return Err(failed(e)),
                        }
                    }
                }
            }
            Ok(removed)
        })
        .await
        .unwrap_or(Ok(0))
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn failed(&self, source: object_store::Error) -> ContentError {
        ContentError::Store { at: self.at.clone(), source: Box::new(source) }
    }

    pub fn blob_path(tenant: TenantId, cid: &str) -> Path {
        Path::from(format!("blobs/{}/{cid}", tenant.as_uuid()))
    }

    pub fn staging_root() -> Path {
        Path::from("staging")
    }

    /// Starts an upload into the staging area.
    pub fn upload(&self, tenant: TenantId, keep_text: bool) -> Upload {
        let path = Path::from(format!("staging/{}/{}", tenant.as_uuid(), uuid::Uuid::now_v7()));
        Upload {
            store: self.clone(),
            path,
            hasher: blake3::Hasher::new(),
            size: 0,
            buffered: Vec::new(),
            buffered_bytes: 0,
            parts: None,
            text: keep_text.then(Vec::new),
        }
    }

    /// Copies staged bytes to their content address, unless the tenant already has them there
    /// (a hard link on a local directory, a server-side copy on S3). The staged copy stays until
    /// the version commits, so a commit refused because the sweeper took the content meanwhile
    /// can promote again. The caller has pinned the content first (see the `content_blobs`
    /// migration). Answers whether the tenant already had the bytes (deduplicated).
    pub async fn promote(&self, staged: &Staged, tenant: TenantId) -> Result<bool, ContentError> {
        let blob = Self::blob_path(tenant, &staged.cid);
        match self.store.head(&blob).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => {
                self.store.copy(&staged.path, &blob).await.map_err(|e| self.failed(e))?;
                Ok(false)
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Removes a staged or swept object; a missing one is already gone.
    pub async fn discard(&self, path: &Path) -> Result<(), ContentError> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Streams `length` bytes (all when `None`) of the tenant's content from `offset`, of
    /// content `size` bytes long.
    pub async fn read(
        &self,
        tenant: TenantId,
        cid: &str,
        size: u64,
        offset: u64,
        length: Option<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes, ContentError>>, ContentError> {
        let path = Self::blob_path(tenant, cid);
        let end = length.map_or(size, |n| offset + n).min(size);
        if self.local_root.is_some() {
            // A local file: large ranged reads, each one blocking-thread hop.
            let missing = |e: object_store::Error, this: &ContentStore| match e {
                object_store::Error::NotFound { .. } => {
                    ContentError::Missing { at: this.at.clone(), cid: cid.to_owned() }
                }
                e => this.failed(e),
            };
            self.store.head(&path).await.map_err(|e| missing(e, self))?;
            let this = self.clone();
            let reads = futures::stream::unfold(offset, move |at| {
                let (this, path) = (this.clone(), path.clone());
                async move {
                    if at >= end {
                        return None;
                    }
                    let upto = (at + READ_BYTES).min(end);
                    let read = this.store.get_range(&path, at..upto).await.map_err(|e| this.failed(e));
                    Some((read, upto))
                }
            });
            return Ok(reads.boxed());
        }
        let range = match length {
            Some(n) => Some(GetRange::Bounded(offset..offset + n)),
            None if offset > 0 => Some(GetRange::Offset(offset)),
            None => None,
        };
        let got = self.store.get_opts(&path, GetOptions { range, ..Default::default() }).await;
        let got = match got {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(ContentError::Missing { at: self.at.clone(), cid: cid.to_owned() });
            }
            Err(e) => return Err(self.failed(e)),
        };
        let this = self.clone();
        Ok(got.into_stream().map_err(move |e| this.failed(e)).boxed())
    }

    /// Objects under `prefix` last modified before `cutoff` (the sweeper's staging pass).
    pub async fn older_than(
        &self,
        prefix: &Path,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Path>, ContentError> {
        self.store
            .list(Some(prefix))
            .try_filter(|meta| std::future::ready(meta.last_modified < cutoff))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| self.failed(e))
    }
}

/// An upload in progress: hashes and counts what passes, writes it to staging.
pub struct Upload {
    store: ContentStore,
    path: Path,
    hasher: blake3::Hasher,
    size: u64,
    /// Chunks not yet written (as received, uncopied): until they pass one part, the upload is
    /// a single PUT.
    buffered: Vec<Bytes>,
    buffered_bytes: usize,
    parts: Option<WriteMultipart>,
    text: Option<Vec<u8>>,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload").field("path", &self.path).field("size", &self.size).finish_non_exhaustive()
    }
}

/// Bytes in staging with what the upload measured.
#[derive(Debug, Clone)]
pub struct Staged {
    pub path: Path,
    pub cid: String,
    pub size: u64,
    /// The leading text, for text-like content.
    pub text: Option<String>,
}

impl Upload {
    /// Takes one chunk as received: hashed and counted here, handed to the store uncopied.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), ContentError> {
        self.size += chunk.len() as u64;
        if self.size > self.store.max_bytes {
            return Err(ContentError::TooLarge { limit: self.store.max_bytes });
        }
        self.hasher.update(&chunk);
        if let Some(text) = &mut self.text
            && text.len() < SEARCH_TEXT_BYTES
        {
            let room = SEARCH_TEXT_BYTES - text.len();
            text.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        match &mut self.parts {
            Some(parts) => {
                parts.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(|e| self.store.failed(e))?;
                parts.put(chunk);
            }
            None => {
                self.buffered_bytes += chunk.len();
                self.buffered.push(chunk);
                if self.buffered_bytes > PART_BYTES {
                    let upload = self.store.store.put_multipart(&self.path).await.map_err(|e| self.store.failed(e))?;
                    let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
                    for chunk in std::mem::take(&mut self.buffered) {
                        parts.put(chunk);
                    }
                    self.parts = Some(parts);
                }
            }
        }
        Ok(())
    }

    /// Completes the staged object and names it by content.
    pub async fn finish(self) -> Result<Staged, ContentError> {
        if self.size == 0 {
            return Err(ContentError::Empty);
        }
        match self.parts {
            Some(parts) => {
                parts.finish().await.map_err(|e| self.store.failed(e))?;
            }
            None => {
                let payload: PutPayload = self.buffered.into_iter().collect();
                self.store.store.put(&self.path, payload).await.map_err(|e| self.store.failed(e))?;
            }
        }
        let text = self.text.map(|bytes| {
            // A multi-byte character split by the cap becomes U+FFFD; Postgres text holds no NUL.
            let text = String::from_utf8_lossy(&bytes).into_owned();
            text.replace('\0', " ")
        });
        Ok(Staged { cid: cid_of(&self.hasher.finalize()), size: self.size, path: self.path, text })
    }

    /// Gives up: aborts the parts or drops the buffer. Anything left behind in staging is
    /// collected by the sweeper.
    pub async fn abort(self) {
        if let Some(parts) = self.parts {
            let _ = parts.abort().await;
        }
    }
}

/// Pins content for the tenant: creates or touches its row, so the sweeper leaves it alone for
/// a grace period. Waits for a sweeper holding the row's lock, after which the row is created
/// anew and the caller puts the bytes back.
pub async fn pin(pool: &PgPool, tenant: TenantId, staged: &Staged) -> Result<(), ContentError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO content_blobs (tenant_id, cid, size) VALUES ($1, $2, $3) \
         ON CONFLICT (tenant_id, cid) DO UPDATE SET touched_at = now()",
    )
    .bind(tenant.as_uuid())
    .bind(&staged.cid)
    .bind(staged.size as i64)
    .execute(&mut *tx)
    .await?;
    if let Some(text) = &staged.text {
        sqlx::query(
            "INSERT INTO content_text (tenant_id, cid, body) VALUES ($1, $2, $3) ON CONFLICT (tenant_id, cid) DO NOTHING",
        )
        .bind(tenant.as_uuid())
        .bind(&staged.cid)
        .bind(text)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ids_are_cidv1_raw_blake3() {
        // An independent implementation agrees (tests/document.rs, Python's multiformats).
        let cid = cid_of(&blake3::hash(b"hello world\n"));
        assert!(cid.starts_with("bafkr4i"), "{cid}");
        assert_eq!(parse_cid(&cid).unwrap(), cid);
        let parsed = Cid::try_from(cid.as_str()).unwrap();
        assert_eq!(parsed.version(), cid::Version::V1);
        assert_eq!(parsed.codec(), RAW);
        assert_eq!(parsed.hash().code(), BLAKE3);
        assert_eq!(parsed.hash().digest(), blake3::hash(b"hello world\n").as_bytes());
        // Another multibase of the same CID is the same content id.
        let base58 = parsed.to_string_of_base(cid::multibase::Base::Base58Btc).unwrap();
        assert_eq!(parse_cid(&base58).unwrap(), cid);
        assert!(parse_cid("bafy-not-a-cid").is_err());
        let sha = Cid::new_v1(RAW, Multihash::<64>::wrap(0x12, &[0; 32]).unwrap()).to_string();
        assert!(parse_cid(&sha).unwrap_err().to_string().contains("BLAKE3"));
    }

    #[test]
    fn text_like_types() {
        assert!(is_text("text/plain; charset=utf-8"));
        assert!(is_text("application/ld+json"));
        assert!(!is_text("application/pdf"));
        assert!(!is_text("image/png"));
    }
}
