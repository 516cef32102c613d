//! The object store that holds document content, behind the `object_store` crate: a local
//! directory by default, S3 or MinIO (path-style, plain HTTP allowed) in compose and Kubernetes.
//! `CIM_OBJECT_STORE_URL` chooses; `cim-runtime`'s config has already validated it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cim_runtime::config::{ObjectLocation, ObjectStoreSettings};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

pub use object_store::path::Path;

/// Everything that can go wrong opening or probing the store; each names the store.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error("object store {at} (CIM_OBJECT_STORE_URL): cannot create the directory: {source}")]
    Directory { at: String, source: std::io::Error },
    #[error("object store {at} (CIM_OBJECT_STORE_URL): {source}")]
    Open { at: String, source: Box<object_store::Error> },
    #[error("object store {at}: {step} {path} failed: {source}")]
    Probe { at: String, step: &'static str, path: String, source: Box<object_store::Error> },
    #[error("object store {at}: {path} read back {got} bytes that differ from the {put} written")]
    Corrupt { at: String, path: String, put: usize, got: usize },
}

/// The object the readiness check looks for (beside the probes, under `cim-probe/`).
pub const READY_MARKER: &str = "cim-probe/ready";

/// An open store and how to name it in messages.
#[derive(Debug, Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    at: String,
}

/// What a successful probe measured.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub bytes: usize,
    /// Put, get and delete together.
    pub elapsed: Duration,
}

impl Objects {
    /// Opens the configured store. Nothing is contacted yet: a wrong endpoint or credentials
    /// show up at the first request (or at [`Objects::probe`]). Requests retry transient errors
    /// for at most `timeout`, so a store that is down fails within it instead of after minutes.
    pub fn open(settings: &ObjectStoreSettings, timeout: Duration) -> Result<Objects, ObjectsError> {
        match &settings.location {
            ObjectLocation::Local(dir) => {
                let shown = dir.display().to_string();
                std::fs::create_dir_all(dir)
                    .map_err(|source| ObjectsError::Directory { at: format!("{shown:?}"), source })?;
                let abs = std::fs::canonicalize(dir)
                    .map_err(|source| ObjectsError::Directory { at: format!("{shown:?}"), source })?;
                let at = format!("local directory {}", abs.display());
                let store = LocalFileSystem::new_with_prefix(&abs)
                    .map_err(|source| ObjectsError::Open { at: at.clone(), source: Box::new(source) })?;
                Ok(Objects { store: Arc::new(store), at })
            }
            ObjectLocation::S3 { bucket, prefix } => {
                // reqwest's TLS is compiled without a crypto provider (see the workspace
                // Cargo.toml); an error only means another part of the process installed one.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let mut at = match prefix.as_str() {
                    "" => format!("s3://{bucket}"),
                    p => format!("s3://{bucket}/{p}"),
                };
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(&settings.s3_region)
                    .with_client_options(ClientOptions::new().with_connect_timeout(timeout))
                    .with_retry(RetryConfig { max_retries: 3, retry_timeout: timeout, ..RetryConfig::default() });
                match &settings.s3_endpoint {
                    Some(endpoint) => {
                        at.push_str(&format!(" at {endpoint}"));
                        builder = builder
                            .with_endpoint(endpoint)
                            .with_allow_http(endpoint.starts_with("http://"))
                            .with_virtual_hosted_style_request(false);
                    }
                    None => at.push_str(&format!(" (AWS {})", settings.s3_region)),
                }
                if let Some((id, secret)) = &settings.s3_credentials {
                    builder = builder.with_access_key_id(id).with_secret_access_key(secret.expose());
                }
                let s3 = builder
                    .build()
                    .map_err(|source| ObjectsError::Open { at: at.clone(), source: Box::new(source) })?;
                let store: Arc<dyn ObjectStore> = match prefix.as_str() {
                    "" => Arc::new(s3),
                    p => Arc::new(PrefixStore::new(s3, p)),
                };
                Ok(Objects { store, at })
            }
        }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The store as messages name it: `local directory /abs/path` or `s3://bucket at http://…`.
    pub fn describe(&self) -> &str {
        &self.at
    }

    /// The readiness check `object_store` (`cim_runtime::health`): a HEAD of one small marker
    /// object, `cim-probe/ready`, written again when it is missing. A HEAD alone cannot tell a
    /// missing bucket from a missing object (both are 404 in S3), so a missing marker is put: a
    /// store that is down, a bucket that is gone and credentials that may not write all fail it,
    /// at one request per check once the marker is there.
    pub fn readiness(&self) -> cim_runtime::health::CheckFn {
        let this = self.clone();
        Arc::new(move || {
            let this = this.clone();
            Box::pin(async move { this.ready().await.map_err(|e| e.to_string()) })
        })
    }

    async fn ready(&self) -> Result<(), ObjectsError> {
        let path = Path::from(READY_MARKER);
        let failed = |step: &'static str| {
            let at = self.at.clone();
            move |source| ObjectsError::Probe { at, step, path: READY_MARKER.to_owned(), source: Box::new(source) }
        };
        match self.store.head(&path).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => {
                let body = PutPayload::from_static(b"cim readiness marker\n");
                self.store.put(&path, body).await.map(|_| ()).map_err(failed("put"))
            }
            Err(e) => Err(failed("head")(e)),
        }
    }

    /// Writes, reads back, compares and deletes one small object under `cim-probe/`: the store
    /// is reachable, the credentials may write, and what is written is what is read.
    pub async fn probe(&self) -> Result<Probe, ObjectsError> {
        let id = uuid::Uuid::now_v7();
        let path = Path::from(format!("cim-probe/{id}"));
        let body = Bytes::from(format!("cim probe {id}\n"));
        let failed = |step: &'static str| {
            let at = self.at.clone();
            let path = path.to_string();
            move |source| ObjectsError::Probe { at, step, path, source: Box::new(source) }
        };
        let started = Instant::now();
        self.store.put(&path, PutPayload::from_bytes(body.clone())).await.map_err(failed("put"))?;
        let read = async { self.store.get(&path).await?.bytes().await };
        let got = read.await.map_err(failed("get"));
        // Removed even when the read failed, so a half-broken store does not collect probes.
        let deleted = self.store.delete(&path).await.map_err(failed("delete"));
        let got = got?;
        deleted?;
        if got != body {
            return Err(ObjectsError::Corrupt {
                at: self.at.clone(),
                path: path.to_string(),
                put: body.len(),
                got: got.len(),
            });
        }
        Ok(Probe { bytes: body.len(), elapsed: started.elapsed() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(dir: &std::path::Path) -> ObjectStoreSettings {
        ObjectStoreSettings {
            location: ObjectLocation::Local(dir.to_owned()),
            s3_endpoint: None,
            s3_region: "us-east-1".into(),
            s3_credentials: None,
        }
    }

    #[tokio::test]
    async fn a_local_store_is_created_probed_and_left_empty() {
        let dir = std::env::temp_dir().join(format!("cim-objects-{}", uuid::Uuid::now_v7()));
        let objects = Objects::open(&local(&dir.join("nested/objects")), Duration::from_secs(2)).unwrap();
        assert!(objects.describe().starts_with("local directory /"), "{}", objects.describe());
        let probe = objects.probe().await.unwrap();
        assert!(probe.bytes > 0);
        let left: Vec<_> =
            std::fs::read_dir(dir.join("nested/objects/cim-probe")).map(|d| d.count()).into_iter().collect();
        assert!(left.iter().all(|n| *n == 0), "probe objects left behind: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_directory_that_cannot_be_created_is_named() {
        let file = std::env::temp_dir().join(format!("cim-objects-file-{}", uuid::Uuid::now_v7()));
        std::fs::write(&file, b"not a directory").unwrap();
        let err = Objects::open(&local(&file.join("objects")), Duration::from_secs(2)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("cannot create the directory") && text.contains("CIM_OBJECT_STORE_URL"), "{text}");
        std::fs::remove_file(&file).unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_s3_endpoint_fails_the_probe_within_the_timeout() {
        // A port nobody listens on: connection refused at once, retried until the timeout.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let settings = ObjectStoreSettings {
            location: ObjectLocation::S3 { bucket: "cim-documents".into(), prefix: "t".into() },
            s3_endpoint: Some(format!("http://127.0.0.1:{port}")),
            s3_region: "us-east-1".into(),
            s3_credentials: Some(("cim".into(), cim_runtime::config::Secret::new("secret-key"))),
        };
        let objects = Objects::open(&settings, Duration::from_millis(500)).unwrap();
        assert_eq!(objects.describe(), format!("s3://cim-documents/t at http://127.0.0.1:{port}"));
        let started = Instant::now();
        let err = objects.probe().await.unwrap_err();
        assert!(matches!(err, ObjectsError::Probe { step: "put", .. }), "{err}");
        assert!(!err.to_string().contains("secret-key"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
        let err = (objects.readiness())().await.unwrap_err();
        assert!(err.contains("head cim-probe/ready failed") && !err.contains("secret-key"), "{err}");
    }

    /// The readiness check passes on a working store and leaves its marker, puts the marker
    /// again when it is gone, and fails, naming the store, when the store cannot be written.
    #[tokio::test]
    async fn readiness_keeps_its_marker_and_fails_when_the_store_cannot_write() {
        let dir = std::env::temp_dir().join(format!("cim-objects-ready-{}", uuid::Uuid::now_v7()));
        let objects = Objects::open(&local(&dir), Duration::from_secs(2)).unwrap();
        let check = objects.readiness();
        check().await.unwrap();
        let marker = dir.join(READY_MARKER);
        assert!(marker.is_file(), "{marker:?}");
        std::fs::remove_file(&marker).unwrap();
        check().await.unwrap();
        assert!(marker.is_file(), "{marker:?} not put again");

        // The marker's directory replaced by a file: neither HEAD nor PUT can succeed.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cim-probe"), b"in the way").unwrap();
        let err = check().await.unwrap_err();
        assert!(err.contains(objects.describe()) && err.contains("cim-probe/ready"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
