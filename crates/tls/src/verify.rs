//! Who may connect: the CA check of rustls's WebPKI verifiers, then the
//! allowed-peer list by the names in the peer certificate (DNS SANs).

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

/// A certificate that chains to the CA but names no allowed peer.
#[derive(Debug, Clone)]
pub struct NameNotAllowed {
    /// The DNS names the certificate holds.
    pub presented: Vec<String>,
    pub allowed: Arc<[ServerName<'static>]>,
}

impl fmt::Display for NameNotAllowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let presented = match self.presented.as_slice() {
            [] => "(none)".to_owned(),
            names => names.join(", "),
        };
        write!(
            f,
            "peer name {presented} is not in the allowed list ({})",
            describe_names(&self.allowed)
        )
    }
}

impl std::error::Error for NameNotAllowed {}

/// A certificate that chains to the CA but is not for the peer the client
/// expected.
#[derive(Debug, Clone)]
pub struct WrongPeer {
    pub expected: String,
    /// The DNS names the certificate holds.
    pub presented: Vec<String>,
}

impl fmt::Display for WrongPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "peer certificate is for {}, not for {}",
            self.presented.join(", "),
            self.expected
        )
    }
}

impl std::error::Error for WrongPeer {}

fn refuse(error: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

pub(crate) fn describe_names(names: &[ServerName<'static>]) -> String {
    names
        .iter()
        .map(|name| name.to_str().into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The DNS names of `certificate`, for messages and logs: whether a
/// certificate is valid for a name is webpki's to say.
pub(crate) fn dns_names(certificate: &CertificateDer<'_>) -> Vec<String> {
    webpki::EndEntityCert::try_from(certificate)
        .map(|parsed| parsed.valid_dns_names().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Fails unless `certificate` is valid for one of the `allowed` names.
/// Its chain must have been verified already.
fn check_allowed(
    certificate: &CertificateDer<'_>,
    allowed: &Arc<[ServerName<'static>]>,
) -> Result<(), rustls::Error> {
    let parsed = webpki::EndEntityCert::try_from(certificate)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if allowed
        .iter()
        .any(|name| parsed.verify_is_valid_for_subject_name(name).is_ok())
    {
        return Ok(());
    }
    let refused = NameNotAllowed {
        presented: parsed.valid_dns_names().map(str::to_owned).collect(),
        allowed: Arc::clone(allowed),
    };
    Err(refuse(refused))
}

/// The server's check of a client: chains to the CA (`ca`), then names an
/// allowed peer.
#[derive(Debug)]
pub(crate) struct AllowedClients {
    pub ca: Arc<dyn ClientCertVerifier>,
    pub allowed: Arc<[ServerName<'static>]>,
}

impl ClientCertVerifier for AllowedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.ca.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.ca.verify_client_cert(end_entity, intermediates, now)?;
        check_allowed(end_entity, &self.allowed)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.ca.supported_verify_schemes()
    }
}

/// The client's check of a server: chains to the CA, and is valid for the
/// name the client expects, or when it expects none (it dialled an
/// address), for an allowed name. An expected name is itself checked
/// against the allowed list before the connection.
#[derive(Debug)]
pub(crate) struct AllowedServer {
    pub ca: Arc<WebPkiServerVerifier>,
    pub allowed: Arc<[ServerName<'static>]>,
    pub expected: Option<ServerName<'static>>,
}

impl ServerCertVerifier for AllowedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _sni_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(expected) = &self.expected {
            return self
                .ca
                .verify_server_cert(end_entity, intermediates, expected, ocsp_response, now)
                .map_err(|error| match error {
                    rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    ) => refuse(WrongPeer {
                        expected: expected.to_str().into_owned(),
                        presented: dns_names(end_entity),
                    }),
                    other => other,
                });
        }
        // Checks the chain first: a certificate of another CA is refused
        // as such, not for its name.
        let any_name = &self.allowed[0];
        match self
            .ca
            .verify_server_cert(end_entity, intermediates, any_name, ocsp_response, now)
        {
            Ok(verified) => return Ok(verified),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(other) => return Err(other),
        }
        check_allowed(end_entity, &self.allowed)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.ca.supported_verify_schemes()
    }
}
