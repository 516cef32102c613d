//! TLS for every listener and every call between services, with rustls over ring (the one crypto
//! provider of the whole tree: no C library to build).
//!
//! Off unless a certificate is configured (`CIM_TLS_CERT_FILE` + `CIM_TLS_KEY_FILE`). With one,
//! the gateway and websocket listeners speak HTTPS and the domain services' gRPC listeners TLS;
//! with `CIM_TLS_CLIENT_CA_FILE` too, a gRPC listener requires a client certificate issued by
//! that CA (mTLS between services; the HTTP listeners never ask browsers for one). Calls to
//! `https://` service URLs check the server against `CIM_TLS_CA_FILE` and present this service's
//! certificate ([`ClientTls`]). Every certificate, key and CA file is read again when it changes
//! ([`reload`], checked at most every `CIM_TLS_RELOAD_SECS` on a handshake): a rotation on disk
//! reaches listeners and clients without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
pub use rustls::{ClientConfig, ServerConfig};

mod connector;
mod incoming;
pub mod reload;
mod verify;

pub use connector::TlsConnector;
pub use incoming::{HttpListener, TlsIncoming};
pub use reload::ReloadingCert;
pub use verify::{ClientRoots, ServerRoots};

/// ring, the provider every TLS configuration here is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process default, for libraries that build their own rustls configuration
/// from it (sqlx, the redis client). Idempotent.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The `CIM_TLS_*` settings: this service's certificate, the CA its callers' certificates must
/// come from, and the CA of the services it calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Served on this service's listener and presented as its client certificate; `None`: plain
    /// TCP (local development).
    pub identity: Option<CertFiles>,
    /// gRPC listeners require client certificates issued by this CA.
    pub client_ca: Option<PathBuf>,
    /// The CA the services this one calls over `https://` are checked against.
    pub ca: Option<PathBuf>,
    /// How often the certificate files are checked for a change, at most, on a handshake.
    pub reload: Duration,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self { identity: None, client_ca: None, ca: None, reload: Duration::from_secs(10) }
    }
}

/// A certificate or key file that cannot be used, naming the file (never its contents).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {what}", .path.display())]
pub struct TlsError {
    pub path: PathBuf,
    pub what: String,
}

impl TlsError {
    fn new(path: &Path, what: impl Into<String>) -> Self {
        Self { path: path.to_owned(), what: what.into() }
    }
}

/// Start-up fails with it like with any other I/O error (the files were checked when the
/// configuration was read; this is a file changed in between).
impl From<TlsError> for crate::RuntimeError {
    fn from(e: TlsError) -> Self {
        crate::RuntimeError::Io(std::io::Error::other(format!("TLS: {e}")))
    }
}

/// Every certificate in a PEM file; at least one.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::new(path, format!("cannot read PEM certificates ({e})")))?;
    if certs.is_empty() {
        return Err(TlsError::new(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1). The error never quotes the file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        let what = match e {
            rustls::pki_types::pem::Error::Io(e) => format!("cannot read the private key ({e})"),
            _ => "holds no PEM private key".to_owned(),
        };
        TlsError::new(path, what)
    })
}

/// The CA certificates in a PEM file, as trust anchors.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(path)? {
        roots.add(cert).map_err(|e| TlsError::new(path, format!("holds a certificate that is no CA ({e})")))?;
    }
    Ok(roots)
}

/// The chain and key, checked to belong together.
pub fn certified_key(files: &CertFiles) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(&files.cert)?;
    let key = read_key(&files.key)?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        TlsError::new(&files.key, format!("does not fit the certificate in {} ({e})", files.cert.display()))
    })
}

/// The protocols a listener offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// gRPC: HTTP/2 only.
    Grpc,
    /// A browser-facing listener: HTTP/2 and HTTP/1.1 (websocket upgrades).
    Http,
}

impl TlsSettings {
    /// The configuration of a gRPC listener: client certificates required when a client CA is
    /// set. `None` without a certificate (plain TCP).
    pub fn grpc_server(&self) -> Result<Option<Arc<ServerConfig>>, TlsError> {
        self.server(Protocols::Grpc, self.client_ca.as_deref())
    }

    /// The configuration of an HTTP listener (gateway, websocket): no client certificate asked.
    pub fn http_server(&self) -> Result<Option<Arc<ServerConfig>>, TlsError> {
        self.server(Protocols::Http, None)
    }

    fn server(&self, protocols: Protocols, client_ca: Option<&Path>) -> Result<Option<Arc<ServerConfig>>, TlsError> {
        let Some(identity) = &self.identity else { return Ok(None) };
        server_config(identity, client_ca, self.reload, protocols).map(Some)
    }

    /// What calls to `https://` service URLs check and present; `None` without a CA.
    pub fn client(&self) -> Option<ClientTls> {
        let ca = self.ca.clone()?;
        Some(ClientTls { ca, identity: self.identity.clone(), server_name: None, reload: self.reload })
    }
}

/// A server configuration serving `identity` (re-read when its files change), requiring client
/// certificates from `client_ca` when given.
pub fn server_config(
    identity: &CertFiles,
    client_ca: Option<&Path>,
    reload: Duration,
    protocols: Protocols,
) -> Result<Arc<ServerConfig>, TlsError> {
    let resolver = Arc::new(ReloadingCert::new(identity.clone(), reload)?);
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new(&identity.cert, e.to_string()))?;
    let builder = match client_ca {
        Some(path) => builder.with_client_cert_verifier(Arc::new(ClientRoots::new(path.to_owned(), reload)?)),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = match protocols {
        Protocols::Grpc => vec![b"h2".to_vec()],
        Protocols::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    Ok(Arc::new(config))
}

/// A client's TLS: the CA the server must come from, this side's certificate for mTLS, the name
/// the server's certificate must carry (`None`: the URL's host), and how often the files are
/// checked for a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub identity: Option<CertFiles>,
    pub server_name: Option<String>,
    pub reload: Duration,
}

impl ClientTls {
    /// A rustls client configuration that checks servers against the CA file and presents the
    /// certificate files as they are at each handshake.
    pub fn rustls(&self) -> Result<ClientConfig, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new(&self.ca, e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerRoots::new(self.ca.clone(), self.reload)?));
        Ok(match &self.identity {
            Some(files) => builder.with_client_cert_resolver(Arc::new(ReloadingCert::new(files.clone(), self.reload)?)),
            None => builder.with_no_client_auth(),
        })
    }

    fn server_name(&self) -> Result<Option<ServerName<'static>>, TlsError> {
        self.server_name
            .as_ref()
            .map(|name| {
                ServerName::try_from(name.clone())
                    .map_err(|e| TlsError::new(&self.ca, format!("server name {name:?}: {e}")))
            })
            .transpose()
    }
}

/// A lazily connected channel to a service URL: `https://` over `tls` (required), its files
/// read again when they change; `http://` plain. `configure` sets the endpoint's timeouts.
pub fn grpc_channel(
    url: &str,
    tls: Option<&ClientTls>,
    configure: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
) -> Result<tonic::transport::Channel, String> {
    let Some(rest) = url.strip_prefix("https://") else {
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned()).map_err(|e| format!("{url}: {e}"))?;
        return Ok(configure(endpoint).connect_lazy());
    };
    let tls = tls.ok_or_else(|| format!("{url}: an https:// URL needs CIM_TLS_CA_FILE"))?;
    // The connector makes the TLS connection: tonic is given the address as plain http (with
    // the https default port when none is named), so it adds no TLS of its own.
    let authority = rest.split('/').next().unwrap_or_default();
    let has_port =
        authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) && !authority.ends_with(']');
    let plain = if has_port { format!("http://{rest}") } else { format!("http://{authority}:443") };
    let endpoint = tonic::transport::Endpoint::from_shared(plain).map_err(|e| format!("{url}: {e}"))?;
    let mut config = tls.rustls().map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::new(Arc::new(config), tls.server_name().map_err(|e| e.to_string())?);
    Ok(configure(endpoint).connect_with_connector_lazy(connector))
}
