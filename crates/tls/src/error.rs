//! What can go wrong, worded for the operator who has to fix it.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::UnixTime;
use rustls::{AlertDescription, CertificateError};

use crate::verify::{NameNotAllowed, WrongPeer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {cause}", path.display())]
    Read { path: PathBuf, cause: io::Error },
    #[error("cannot write {}: {cause}", path.display())]
    Write { path: PathBuf, cause: io::Error },
    #[error("no allowed peer: name at least one agent this one may talk to")]
    NoAllowedPeer,
    /// A certificate or key that does not parse or does not fit the rest.
    #[error("{0}")]
    Setup(String),
    #[error("TLS handshake with {peer} failed: {cause}")]
    Handshake {
        /// The peer's address.
        peer: String,
        cause: HandshakeFailure,
    },
}

/// Why a handshake failed: the peer was refused here, or refused us, or the
/// connection broke.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeFailure {
    #[error("peer certificate is signed by an unknown CA")]
    UnknownCa,
    /// Its issuer has the name of the trusted CA, not its key: another
    /// deployment's CA, made with the same name.
    #[error("peer certificate is signed by an unknown CA (named like ours, with another key)")]
    UnknownCaOfTheSameName,
    #[error("peer certificate expired at {}", describe_time(*not_after))]
    Expired { not_after: UnixTime },
    #[error("peer certificate is not valid before {}", describe_time(*not_before))]
    NotYetValid { not_before: UnixTime },
    #[error("{0}")]
    NameNotAllowed(NameNotAllowed),
    #[error("{0}")]
    WrongPeer(WrongPeer),
    #[error("peer presented no certificate")]
    NoCertificate,
    #[error("peer does not speak TLS (plaintext connection?)")]
    NotTls,
    #[error("peer refused our certificate: {}", describe_alert(*alert))]
    RefusedByPeer { alert: AlertDescription },
    #[error("peer closed the connection during the TLS handshake (does it speak TLS?)")]
    Closed,
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("{0}")]
    Io(io::Error),
    #[error("{0}")]
    Tls(rustls::Error),
}

impl HandshakeFailure {
    /// Sorts out an I/O error of the handshake, which carries rustls's own
    /// error when the TLS layer failed.
    pub(crate) fn from_io(error: io::Error, timeout: Duration) -> HandshakeFailure {
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                return HandshakeFailure::TimedOut(timeout)
            }
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => return HandshakeFailure::Closed,
            _ => {}
        }
        let tls = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .cloned();
        match tls {
            Some(tls) => HandshakeFailure::from_tls(tls),
            None => HandshakeFailure::Io(error),
        }
    }

    fn from_tls(error: rustls::Error) -> HandshakeFailure {
        use rustls::Error;
        match error {
            Error::InvalidCertificate(certificate) => match certificate {
                CertificateError::UnknownIssuer => HandshakeFailure::UnknownCa,
                CertificateError::BadSignature => HandshakeFailure::UnknownCaOfTheSameName,
                CertificateError::ExpiredContext { not_after, .. } => {
                    HandshakeFailure::Expired { not_after }
                }
                CertificateError::NotValidYetContext { not_before, .. } => {
                    HandshakeFailure::NotYetValid { not_before }
                }
                CertificateError::Other(ref other) => {
                    if let Some(refused) = other.0.downcast_ref::<NameNotAllowed>() {
                        HandshakeFailure::NameNotAllowed(refused.clone())
                    } else if let Some(wrong) = other.0.downcast_ref::<WrongPeer>() {
                        HandshakeFailure::WrongPeer(wrong.clone())
                    } else {
                        HandshakeFailure::Tls(Error::InvalidCertificate(certificate))
                    }
                }
                other => HandshakeFailure::Tls(Error::InvalidCertificate(other)),
            },
            Error::NoCertificatesPresented => HandshakeFailure::NoCertificate,
            Error::InvalidMessage(_) => HandshakeFailure::NotTls,
            Error::AlertReceived(alert) => HandshakeFailure::RefusedByPeer { alert },
            other => HandshakeFailure::Tls(other),
        }
    }
}

/// What the alert a peer sent when it refused us means here.
fn describe_alert(alert: AlertDescription) -> String {
    match alert {
        AlertDescription::UnknownCA => {
            "it is signed by a CA the peer does not trust (unknown CA)".into()
        }
        AlertDescription::CertificateExpired => "it has expired (or is not valid yet)".into(),
        // What a certificate whose signature fails draws, as one from a
        // CA named like the peer's but with another key.
        AlertDescription::DecryptError => {
            "its signature does not verify against the peer's CA (a CA of the same name with \
             another key?)"
                .into()
        }
        AlertDescription::CertificateUnknown => {
            "our name is not in the peer's allowed list (certificate unknown)".into()
        }
        AlertDescription::CertificateRequired => "the peer requires a certificate".into(),
        AlertDescription::BadCertificate => "the peer calls it a bad certificate".into(),
        other => format!("alert {other:?}"),
    }
}

/// An RFC 3339 time, to the second.
pub(crate) fn describe_time(time: UnixTime) -> String {
    let time = UNIX_EPOCH + Duration::from_secs(time.as_secs());
    describe_system_time(time)
}

pub(crate) fn describe_system_time(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}
