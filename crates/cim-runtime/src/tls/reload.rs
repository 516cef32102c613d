//! The served certificate, read again when its files change: certificates are rotated on disk
//! (cert-manager, a Kubernetes Secret mounted as files, a cron job) and picked up by the next
//! handshakes without a restart.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{CertFiles, TlsError, certified_key};

/// Serves the certificate in `files`. On a handshake, at most once per `every`, the files' times
/// and sizes are compared with those last loaded (a `stat` of each: cheap); when they differ the
/// pair is loaded again. A pair that does not load (a half-written rotation: the new certificate
/// beside the old key) keeps the previous one in service, and is tried again at the next check.
#[derive(Debug)]
pub struct ReloadingCert {
    files: CertFiles,
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    key: Arc<CertifiedKey>,
    loaded: Option<Stamp>,
    checked: Instant,
}

/// What tells a file changed: its modification time and length.
type Stamp = [(SystemTime, u64); 2];

fn stamp(files: &CertFiles) -> Option<Stamp> {
    let one =
        |path: &Path| std::fs::metadata(path).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
    Some([one(&files.cert)?, one(&files.key)?])
}

impl ReloadingCert {
    /// Loads the pair now: a configuration that cannot serve fails at start-up.
    pub fn new(files: CertFiles, every: Duration) -> Result<Self, TlsError> {
        let loaded = stamp(&files);
        let key = Arc::new(certified_key(&files)?);
        Ok(Self { files, every, state: Mutex::new(State { key, loaded, checked: Instant::now() }) })
    }

    /// The certificate to serve now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.checked.elapsed() >= self.every {
            state.checked = Instant::now();
            let now = stamp(&self.files);
            if now.is_some() && now != state.loaded {
                match certified_key(&self.files) {
                    Ok(key) => {
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                        state.key = Arc::new(key);
                        state.loaded = now;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate changed but cannot be loaded; serving the previous one")
                    }
                }
            }
        }
        state.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}
