//! Certificates for a small deployment: one CA, and a certificate per agent
//! signed by it, named after the agent's host (its DNS SAN and common name).
//!
//! On disk an agent's TLS directory holds [`CA_FILE`], [`CERT_FILE`] and
//! [`KEY_FILE`]; the CA's own directory adds [`CA_KEY_FILE`], which never
//! leaves the machine that issues certificates.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::TlsError;

/// The CA certificate every agent trusts.
pub const CA_FILE: &str = "ca.pem";
/// The CA's private key: only where certificates are issued.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// This agent's certificate.
pub const CERT_FILE: &str = "cert.pem";
/// This agent's private key.
pub const KEY_FILE: &str = "key.pem";

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago (clocks of two hosts differ a little) for `days`.
    pub fn days_from_now(days: u32) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }
}

/// A CA that signs the agents' certificates.
#[derive(Debug)]
pub struct CertificateAuthority {
    certificate_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// One agent's certificate and key, with the CA certificate it trusts.
#[derive(Clone)]
pub struct HostCertificate {
    pub ca_pem: String,
    pub certificate_pem: String,
    pub key_pem: String,
}

/// Without the key: debug output ends up in logs.
impl std::fmt::Debug for HostCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCertificate")
            .field("certificate_pem", &self.certificate_pem)
            .field("key_pem", &"[elided]")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new CA named `name`, with a fresh key.
    pub fn generate(name: &str, validity: Validity) -> Result<CertificateAuthority, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, validity);
        let key = KeyPair::generate().map_err(certificate_error)?;
        let certificate = params.self_signed(&key).map_err(certificate_error)?;
        Ok(CertificateAuthority {
            certificate_pem: certificate.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA written by [`CertificateAuthority::save`] to `dir`.
    pub fn load(dir: &Path) -> Result<CertificateAuthority, TlsError> {
        let certificate_pem = read(&dir.join(CA_FILE))?;
        let key = KeyPair::from_pem(&read(&dir.join(CA_KEY_FILE))?)
            .map_err(|e| TlsError::Setup(format!("{}: {e}", dir.join(CA_KEY_FILE).display())))?;
        let issuer = Issuer::from_ca_cert_pem(&certificate_pem, key)
            .map_err(|e| TlsError::Setup(format!("{}: {e}", dir.join(CA_FILE).display())))?;
        Ok(CertificateAuthority {
            certificate_pem,
            issuer,
        })
    }

    /// Writes the CA certificate and its key (readable by the owner only).
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        create_dir(dir)?;
        write(&dir.join(CA_FILE), &self.certificate_pem, 0o644)?;
        write(
            &dir.join(CA_KEY_FILE),
            &self.issuer.key().serialize_pem(),
            0o600,
        )
    }

    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// A certificate for the agent named `name` (a DNS name), valid as a
    /// server and as a client: agents are both.
    pub fn issue(&self, name: &str, validity: Validity) -> Result<HostCertificate, TlsError> {
        let mut params = CertificateParams::new(vec![name.to_owned()])
            .map_err(|e| TlsError::Setup(format!("cannot make a certificate for {name:?}: {e}")))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        set_validity(&mut params, validity);
        let key = KeyPair::generate().map_err(certificate_error)?;
        let certificate = params
            .signed_by(&key, &self.issuer)
            .map_err(certificate_error)?;
        Ok(HostCertificate {
            ca_pem: self.certificate_pem.clone(),
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl HostCertificate {
    /// Writes the agent's TLS directory: the CA certificate, its own
    /// certificate and its key (readable by the owner only).
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        create_dir(dir)?;
        write(&dir.join(CA_FILE), &self.ca_pem, 0o644)?;
        write(&dir.join(CERT_FILE), &self.certificate_pem, 0o644)?;
        write(&dir.join(KEY_FILE), &self.key_pem, 0o600)
    }
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
}

fn certificate_error(error: rcgen::Error) -> TlsError {
    TlsError::Setup(format!("cannot make a certificate: {error}"))
}

pub(crate) fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|cause| TlsError::Read {
        path: path.to_owned(),
        cause,
    })
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|cause| TlsError::Write {
        path: dir.to_owned(),
        cause,
    })
}

/// Writes `text` to a new file, refusing to overwrite one: a key replaced
/// by mistake would lock an agent out.
fn write(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    let failed = |cause| TlsError::Write {
        path: path.to_owned(),
        cause,
    };
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(failed)
}
