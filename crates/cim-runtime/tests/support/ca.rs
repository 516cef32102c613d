//! A temporary certificate authority for the TLS tests: CAs and certificates made in the test
//! (rcgen, ECDSA P-256), written as PEM files into a directory removed when the test ends.

use std::path::{Path, PathBuf};

use cim_runtime::tls::CertFiles;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A directory of its own under the system's temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("cim-tls-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA whose certificate is `<dir>/<name>-ca.pem`.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
}

/// When a certificate is valid.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Now,
    /// Ended in 2021.
    Expired,
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join(format!("{name}-ca.pem")), issuer.pem()).unwrap();
        Self { issuer, dir: dir.to_owned(), name: name.to_owned() }
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A certificate for `names` (DNS names), for servers and clients alike, as `<stem>.pem` and
    /// `<stem>-key.pem` (the key readable by its owner only, as Postgres requires).
    pub fn issue(&self, stem: &str, names: &[&str], validity: Validity) -> CertFiles {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or(stem));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        if validity == Validity::Expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let files =
            CertFiles { cert: self.dir.join(format!("{stem}.pem")), key: self.dir.join(format!("{stem}-key.pem")) };
        write_key(&files.key, &key.serialize_pem());
        std::fs::write(&files.cert, cert.pem()).unwrap();
        files
    }
}

/// Writes a private key readable by its owner only.
fn write_key(path: &Path, pem: &str) {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).unwrap();
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Puts `from`'s certificate and key where `to`'s are, as a rotation does (each file replaced
/// whole by a rename, the way a mounted Kubernetes Secret changes).
#[allow(dead_code)] // Each test binary compiles this module; only some rotate.
pub fn rotate(from: &CertFiles, to: &CertFiles) {
    for (src, dst) in [(&from.key, &to.key), (&from.cert, &to.cert)] {
        let staged = dst.with_extension("staged");
        std::fs::copy(src, &staged).unwrap();
        std::fs::rename(&staged, dst).unwrap();
    }
}
