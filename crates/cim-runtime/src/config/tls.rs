//! The TLS settings (`CIM_TLS_*`, `CIM_REDIS_*_FILE`, `CIM_NATS_*`): every file is read and
//! checked here, so a missing file, a key that does not fit its certificate or a half-configured
//! pair stops the process at start-up naming the variable. Errors show paths, never contents.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::nats::NatsSecurity;
use crate::redis::RedisTls;
use crate::tls::{CertFiles, TlsError, TlsSettings, certified_key, read_roots};

/// A file variable: `Some(None)` unset, `Some(Some(path))` set and passing `check`, `None` wrong
/// (the error recorded with why).
fn file(r: &mut Reader<'_>, name: &str, check: impl FnOnce(&Path) -> Result<(), TlsError>) -> Option<Option<PathBuf>> {
    let Some(value) = r.optional(name) else { return Some(None) };
    let path = PathBuf::from(value.trim());
    match check(&path) {
        Ok(()) => Some(Some(path)),
        Err(e) => {
            r.errors.push(ConfigError {
                var: name.to_owned(),
                expected: spec(name).expected.to_owned(),
                got: format!("{:?} ({})", path.display().to_string(), e.what),
            });
            None
        }
    }
}

fn roots(path: &Path) -> Result<(), TlsError> {
    read_roots(path).map(|_| ())
}

fn missing(r: &mut Reader<'_>, name: &str, with: &str) {
    r.errors.push(ConfigError {
        var: name.to_owned(),
        expected: format!("{} (set together with {with})", spec(name).expected),
        got: "unset".to_owned(),
    });
}

/// A certificate and key given as a pair, the key checked to fit the certificate.
fn pair(r: &mut Reader<'_>, cert: &str, key: &str) -> Option<Option<CertFiles>> {
    match (r.optional(cert), r.optional(key)) {
        (None, None) => Some(None),
        (Some(_), None) => {
            missing(r, key, cert);
            None
        }
        (None, Some(_)) => {
            missing(r, cert, key);
            None
        }
        (Some(c), Some(k)) => {
            let files = CertFiles { cert: c.trim().into(), key: k.trim().into() };
            match certified_key(&files) {
                Ok(_) => Some(Some(files)),
                Err(e) => {
                    let var = if e.path == files.cert { cert } else { key };
                    r.errors.push(ConfigError {
                        var: var.to_owned(),
                        expected: spec(var).expected.to_owned(),
                        got: format!("{:?} ({})", e.path.display().to_string(), e.what),
                    });
                    None
                }
            }
        }
    }
}

pub(super) fn tls_settings(r: &mut Reader<'_>) -> Option<TlsSettings> {
    let identity = pair(r, CIM_TLS_CERT_FILE, CIM_TLS_KEY_FILE);
    let client_ca = file(r, CIM_TLS_CLIENT_CA_FILE, roots);
    let ca = file(r, CIM_TLS_CA_FILE, roots);
    let reload = r.parse(CIM_TLS_RELOAD_SECS, int_in(0u64, 3600)).map(Duration::from_secs);
    let settings = TlsSettings { identity: identity?, client_ca: client_ca?, ca: ca?, reload: reload? };
    if settings.client_ca.is_some() && settings.identity.is_none() {
        // Asking callers for certificates needs a TLS listener first.
        missing(r, CIM_TLS_CERT_FILE, CIM_TLS_CLIENT_CA_FILE);
        return None;
    }
    Some(settings)
}

/// Service URLs that say `https://` need the CA to check the services against.
pub(super) fn https_needs_ca(r: &mut Reader<'_>, tls: &TlsSettings, urls: &[(&str, &[String])]) {
    if tls.ca.is_some() {
        return;
    }
    for (name, list) in urls {
        if let Some(url) = list.iter().find(|u| u.starts_with("https://")) {
            r.errors.push(ConfigError {
                var: (*name).to_owned(),
                expected: format!("http:// URLs, or {CIM_TLS_CA_FILE} set for https:// ones"),
                got: format!("{url:?}"),
            });
        }
    }
}

/// `reload`: `CIM_TLS_RELOAD_SECS`, which the Redis files are checked with too (`None`: that
/// variable is wrong, and reported).
pub(super) fn redis_tls(r: &mut Reader<'_>, url: Option<&Secret>, reload: Option<Duration>) -> Option<RedisTls> {
    let ca = file(r, CIM_REDIS_CA_FILE, roots);
    let identity = pair(r, CIM_REDIS_CERT_FILE, CIM_REDIS_KEY_FILE);
    let tls = RedisTls { ca: ca?, identity: identity?, reload: reload? };
    let plain = url.is_some_and(|u| !u.expose().starts_with("rediss://"));
    if plain && (tls.ca.is_some() || tls.identity.is_some()) {
        // Certificates for a connection that will not use them: the URL is probably wrong.
        let name = if tls.ca.is_some() { CIM_REDIS_CA_FILE } else { CIM_REDIS_CERT_FILE };
        r.errors.push(ConfigError {
            var: name.to_owned(),
            expected: "unset, or a rediss:// CIM_REDIS_URL".to_owned(),
            got: "set with a redis:// URL".to_owned(),
        });
        return None;
    }
    Some(tls)
}

pub(super) fn nats_security(r: &mut Reader<'_>) -> Option<NatsSecurity> {
    let ca = file(r, CIM_NATS_CA_FILE, roots);
    let identity = pair(r, CIM_NATS_CERT_FILE, CIM_NATS_KEY_FILE);
    let creds_file = file(r, CIM_NATS_CREDS_FILE, |path| {
        crate::nats::read_creds(path).map(|_| ()).map_err(|what| TlsError { path: path.to_owned(), what })
    });
    let nkey_seed = match r.optional(CIM_NATS_NKEY_SEED) {
        Some(_) => r.parse(CIM_NATS_NKEY_SEED, |s| {
            (s.starts_with("SU") && s.len() > 50 && s.bytes().all(|b| b.is_ascii_alphanumeric()))
                .then(|| Some(Secret::new(s)))
        }),
        None => Some(None),
    };
    let security = NatsSecurity { ca: ca?, identity: identity?, creds_file: creds_file?, nkey_seed: nkey_seed? };
    if security.creds_file.is_some() && security.nkey_seed.is_some() {
        r.errors.push(ConfigError {
            var: CIM_NATS_NKEY_SEED.to_owned(),
            expected: format!("either {CIM_NATS_CREDS_FILE} or {CIM_NATS_NKEY_SEED}, not both"),
            got: "both set".to_owned(),
        });
        return None;
    }
    Some(security)
}

#[cfg(test)]
mod tests;
