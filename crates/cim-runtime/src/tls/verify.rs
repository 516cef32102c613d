//! Certificate checks against CA files as they are now: a rotated CA bundle (a new CA added
//! before certificates from it are issued, the old one removed after) takes effect at the next
//! handshake, on servers checking client certificates and on clients checking servers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use super::reload::{Reloading, signatures};
use super::{TlsError, provider, read_roots};

/// Checks servers against the CA file `ca`, read again when it changes.
#[derive(Debug)]
pub struct ServerRoots(Reloading<Arc<WebPkiServerVerifier>>);

impl ServerRoots {
    pub fn new(ca: PathBuf, every: Duration) -> Result<Self, TlsError> {
        let file = ca.clone();
        Reloading::new(vec![ca], every, move || {
            WebPkiServerVerifier::builder_with_provider(Arc::new(read_roots(&file)?), provider())
                .build()
                .map_err(|e| TlsError::new(&file, format!("cannot check servers with it ({e})")))
        })
        .map(Self)
    }
}

impl ServerCertVerifier for ServerRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.0.current().verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &signatures())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &signatures())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures().supported_schemes()
    }
}

/// Requires client certificates issued by the CA file `ca`, read again when it changes.
#[derive(Debug)]
pub struct ClientRoots(Reloading<Arc<dyn ClientCertVerifier>>);

impl ClientRoots {
    pub fn new(ca: PathBuf, every: Duration) -> Result<Self, TlsError> {
        let file = ca.clone();
        Reloading::new(vec![ca], every, move || {
            WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(&file)?), provider())
                .build()
                .map_err(|e| TlsError::new(&file, format!("cannot check client certificates with it ({e})")))
        })
        .map(Self)
    }
}

impl ClientCertVerifier for ClientRoots {
    /// No hints: the CA list changes under a live configuration, and the services' clients
    /// present their one certificate whatever the hints say.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.0.current().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &signatures())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &signatures())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures().supported_schemes()
    }
}
