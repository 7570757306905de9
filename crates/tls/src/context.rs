//! [`TlsContext`]: what an agent presents and whom it accepts, and the
//! handshake on a fresh TCP connection, in either direction.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
};

use crate::certs::{read, HostCertificate, CA_FILE, CERT_FILE, KEY_FILE};
use crate::error::{HandshakeFailure, TlsError};
use crate::stream::{PeerStream, TlsStream};
use crate::verify::{describe_names, AllowedClients, AllowedServer};

/// How long one step of a TLS handshake may wait for the peer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The one byte the server sends once it has accepted the client. In TLS
/// 1.3 the client's handshake ends before the server has checked the
/// client's certificate; without this byte a refused client would learn it
/// only as a broken link once the agents speak.
const ACCEPTED: u8 = 0x06;

/// One agent's TLS: its certificate and key, the CA it trusts, and the
/// names of the peers it accepts.
#[derive(Debug, Clone)]
pub struct TlsContext {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    allowed: Arc<[ServerName<'static>]>,
    server: Arc<ServerConfig>,
    handshake_timeout: Duration,
}

impl TlsContext {
    /// Reads an agent's TLS directory ([`CA_FILE`], [`CERT_FILE`] and
    /// [`KEY_FILE`], as `mllm certs host` writes it).
    pub fn load(dir: &Path, allowed_peers: &[String]) -> Result<TlsContext, TlsError> {
        TlsContext::from_pem(
            &read(&dir.join(CA_FILE))?,
            &read(&dir.join(CERT_FILE))?,
            &read(&dir.join(KEY_FILE))?,
            allowed_peers,
        )
        .map_err(|error| match error {
            TlsError::Setup(text) => TlsError::Setup(format!("{}: {text}", dir.display())),
            other => other,
        })
    }

    pub fn from_host(
        host: &HostCertificate,
        allowed_peers: &[String],
    ) -> Result<TlsContext, TlsError> {
        TlsContext::from_pem(
            &host.ca_pem,
            &host.certificate_pem,
            &host.key_pem,
            allowed_peers,
        )
    }

    pub fn from_pem(
        ca_pem: &str,
        certificate_pem: &str,
        key_pem: &str,
        allowed_peers: &[String],
    ) -> Result<TlsContext, TlsError> {
        let setup =
            |what: &str, error: &dyn std::fmt::Display| TlsError::Setup(format!("{what}: {error}"));
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let certificate = certificate.map_err(|e| setup("the CA certificate", &e))?;
            roots
                .add(certificate)
                .map_err(|e| setup("the CA certificate", &e))?;
        }
        if roots.is_empty() {
            return Err(TlsError::Setup("no CA certificate".into()));
        }
        let chain = CertificateDer::pem_slice_iter(certificate_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| setup("the agent's certificate", &e))?;
        if chain.is_empty() {
            return Err(TlsError::Setup("no certificate for this agent".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| setup("the agent's key", &e))?;
        if allowed_peers.is_empty() {
            return Err(TlsError::NoAllowedPeer);
        }
        let allowed = allowed_peers
            .iter()
            .map(|name| {
                ServerName::try_from(name.clone()).map_err(|_| {
                    TlsError::Setup(format!("allowed peer {name:?} is not a DNS name"))
                })
            })
            .collect::<Result<Arc<[_]>, _>>()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(roots);
        let ca =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| setup("the CA certificate", &e))?;
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| setup("TLS 1.3", &e))?
            .with_client_cert_verifier(Arc::new(AllowedClients {
                ca,
                allowed: Arc::clone(&allowed),
            }))
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| setup("the agent's certificate and key", &e))?;
        let context = TlsContext {
            provider,
            roots,
            chain,
            key: Arc::new(key),
            allowed,
            server: Arc::new(server),
            handshake_timeout: HANDSHAKE_TIMEOUT,
        };
        // The client side is built per connection; building one now finds a
        // key that does not fit the certificate before the first migration.
        context.client_config(None)?;
        Ok(context)
    }

    /// The names of the peers this agent accepts.
    pub fn allowed_peers(&self) -> String {
        describe_names(&self.allowed)
    }

    /// TLS as the server on a connection a peer opened. Refuses a peer
    /// without a certificate of the CA naming an allowed peer.
    pub fn accept(&self, tcp: TcpStream) -> Result<PeerStream, TlsError> {
        let connection = ServerConnection::new(Arc::clone(&self.server))
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        self.handshake(tcp, Connection::Server(connection))
    }

    /// TLS as the client on a connection this agent opened. The server must
    /// hold a certificate of the CA for `expected_peer`, which must be an
    /// allowed peer; without a name (the agent dialled an address), for
    /// any allowed peer.
    pub fn connect(
        &self,
        tcp: TcpStream,
        expected_peer: Option<&str>,
    ) -> Result<PeerStream, TlsError> {
        let expected = match expected_peer {
            Some(name) => {
                let server_name = ServerName::try_from(name.to_owned()).map_err(|_| {
                    TlsError::Setup(format!("peer name {name:?} is not a DNS name"))
                })?;
                if !self.allowed.contains(&server_name) {
                    return Err(TlsError::Setup(format!(
                        "peer name {name} is not in the allowed list ({})",
                        self.allowed_peers()
                    )));
                }
                Some(server_name)
            }
            None => None,
        };
        let sni = expected.clone().unwrap_or_else(|| self.allowed[0].clone());
        let connection = ClientConnection::new(self.client_config(expected)?, sni)
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        self.handshake(tcp, Connection::Client(connection))
    }

    fn client_config(
        &self,
        expected: Option<ServerName<'static>>,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let setup = |e: &dyn std::fmt::Display| TlsError::Setup(e.to_string());
        let ca = WebPkiServerVerifier::builder_with_provider(
            Arc::clone(&self.roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| setup(&e))?;
        let config = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| setup(&e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AllowedServer {
                ca,
                allowed: Arc::clone(&self.allowed),
                expected,
            }))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| setup(&format!("the agent's certificate and key: {e}")))?;
        Ok(Arc::new(config))
    }

    /// Runs the handshake with a bound on each wait, then hands the
    /// session to its relay thread.
    fn handshake(
        &self,
        mut tcp: TcpStream,
        mut connection: Connection,
    ) -> Result<PeerStream, TlsError> {
        let address = tcp
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        let timeout = self.handshake_timeout;
        let failed = |cause| TlsError::Handshake {
            peer: address.clone(),
            cause,
        };
        let io_failed = |error| failed(HandshakeFailure::from_io(error, timeout));
        tcp.set_read_timeout(Some(timeout)).map_err(io_failed)?;
        tcp.set_write_timeout(Some(timeout)).map_err(io_failed)?;
        while connection.is_handshaking() {
            connection.complete_io(&mut tcp).map_err(io_failed)?;
        }
        match &mut connection {
            Connection::Server(_) => {
                connection
                    .writer()
                    .write_all(&[ACCEPTED])
                    .map_err(io_failed)?;
                while connection.wants_write() {
                    connection.complete_io(&mut tcp).map_err(io_failed)?;
                }
            }
            Connection::Client(_) => {
                let mut byte = [0];
                loop {
                    match connection.reader().read(&mut byte) {
                        Ok(1) if byte[0] == ACCEPTED => break,
                        Ok(1) => return Err(failed(HandshakeFailure::NotTls)),
                        Ok(_) => return Err(failed(HandshakeFailure::Closed)),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            connection.complete_io(&mut tcp).map_err(io_failed)?;
                        }
                        Err(e) => return Err(io_failed(e)),
                    }
                }
            }
        }
        let peer_names = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(crate::verify::dns_names)
            .unwrap_or_default();
        let stream = TlsStream::start(connection, tcp, address.clone(), peer_names)
            .map_err(|e| failed(HandshakeFailure::Io(e)))?;
        Ok(PeerStream::Tls(stream))
    }
}
