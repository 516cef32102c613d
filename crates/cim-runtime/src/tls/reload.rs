//! What TLS reads from files, read again when the files change: certificates are rotated on
//! disk (cert-manager, a Kubernetes Secret mounted as files, a cron job), and so are CA bundles.
//! The next handshakes pick them up without a restart, on both sides of a connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{SignatureScheme, crypto};

use super::{CertFiles, TlsError, certified_key};

/// A value loaded from files. On use, at most once per `every`, the files' times and sizes are
/// compared with those last loaded (a `stat` of each: cheap); when they differ the value is
/// loaded again. Files that do not load (a half-written rotation: the new certificate beside the
/// old key) keep the previous value in service, and are tried again at the next check.
pub struct Reloading<T> {
    paths: Vec<PathBuf>,
    every: Duration,
    load: Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>,
    state: Mutex<State<T>>,
}

struct State<T> {
    value: Arc<T>,
    loaded: Option<Vec<Stamp>>,
    checked: Instant,
}

/// What tells a file changed: its modification time and length.
type Stamp = (SystemTime, u64);

fn stamps(paths: &[PathBuf]) -> Option<Vec<Stamp>> {
    let one =
        |path: &Path| std::fs::metadata(path).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
    paths.iter().map(|p| one(p)).collect()
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading").field("paths", &self.paths).field("every", &self.every).finish_non_exhaustive()
    }
}

impl<T> Reloading<T> {
    /// Loads now: a configuration that cannot work fails at start-up.
    pub fn new(
        paths: Vec<PathBuf>,
        every: Duration,
        load: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let loaded = stamps(&paths);
        let value = Arc::new(load()?);
        let state = Mutex::new(State { value, loaded, checked: Instant::now() });
        Ok(Self { paths, every, load: Box::new(load), state })
    }

    /// The value to use now.
    pub fn current(&self) -> Arc<T> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.checked.elapsed() >= self.every {
            state.checked = Instant::now();
            let now = stamps(&self.paths);
            if now.is_some() && now != state.loaded {
                match (self.load)() {
                    Ok(value) => {
                        tracing::info!(files = ?self.paths, "TLS files reloaded");
                        state.value = Arc::new(value);
                        state.loaded = now;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS files changed but cannot be loaded; keeping the previous ones")
                    }
                }
            }
        }
        state.value.clone()
    }
}

/// A certificate and its key, served by a listener or presented as a client certificate.
#[derive(Debug)]
pub struct ReloadingCert(Reloading<CertifiedKey>);

impl ReloadingCert {
    pub fn new(files: CertFiles, every: Duration) -> Result<Self, TlsError> {
        let paths = vec![files.cert.clone(), files.key.clone()];
        Reloading::new(paths, every, move || certified_key(&files)).map(Self)
    }

    /// The certificate to present now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.0.current()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for ReloadingCert {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let key = self.current();
        // A server that accepts none of this key's schemes gets no certificate (and refuses).
        key.key.choose_scheme(sigschemes).is_some().then_some(key)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The signature checks every verifier here delegates to ring for.
pub(super) fn signatures() -> crypto::WebPkiSupportedAlgorithms {
    crypto::ring::default_provider().signature_verification_algorithms
}
