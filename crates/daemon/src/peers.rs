//! How the daemon secures its links with peer agents: mutual TLS by
//! default (`mllm-tls`), plaintext only when the operator asked for it by
//! name.

use std::net::{IpAddr, TcpStream};
use std::path::PathBuf;

use anyhow::{Context, Result};
use mllm_tls::{PeerStream, TlsContext};

/// What the operator chose for the links with peer agents.
#[derive(Debug, Clone)]
pub enum PeerSecurity {
    /// Mutual TLS: the agent's certificate, key and CA in `dir` (`ca.pem`,
    /// `cert.pem`, `key.pem`), and the names of the peers it accepts.
    Tls {
        dir: PathBuf,
        allowed_peers: Vec<String>,
    },
    /// Neither encryption nor authentication (`--insecure-plaintext`).
    InsecurePlaintext,
}

/// Turns fresh TCP connections with peers into agent links.
#[derive(Debug)]
pub(crate) struct PeerLinks {
    /// `None` only with [`PeerSecurity::InsecurePlaintext`].
    tls: Option<TlsContext>,
}

impl PeerLinks {
    pub fn new(security: &PeerSecurity) -> Result<PeerLinks> {
        let tls = match security {
            PeerSecurity::Tls { dir, allowed_peers } => Some(
                TlsContext::load(dir, allowed_peers)
                    .with_context(|| format!("loading the agent's TLS files from {}", dir.display()))
                    .context(
                        "TLS is on by default: give --tls-dir (see `mllm certs`) and --allow-peer, \
                         or run with --insecure-plaintext on a trusted network",
                    )?,
            ),
            PeerSecurity::InsecurePlaintext => None,
        };
        Ok(PeerLinks { tls })
    }

    /// What the startup line says about the links.
    pub fn describe(&self) -> String {
        match &self.tls {
            Some(tls) => format!("TLS, peers allowed: {}", tls.allowed_peers()),
            None => {
                "PLAINTEXT (--insecure-plaintext: peers neither authenticated nor encrypted)".into()
            }
        }
    }

    /// A link a peer opened: refused unless the peer authenticates.
    pub fn accept(&self, tcp: TcpStream) -> Result<PeerStream> {
        match &self.tls {
            Some(tls) => Ok(tls.accept(tcp)?),
            None => Ok(tcp.into()),
        }
    }

    /// A link this agent opened to `to` (see [`peer_name`]).
    pub fn secure(&self, tcp: TcpStream, to: &str) -> Result<PeerStream> {
        match &self.tls {
            Some(tls) => Ok(tls.connect(tcp, peer_name(to))?),
            None => Ok(tcp.into()),
        }
    }
}

/// Splits a migration target into the peer's expected TLS name and the
/// address to dial: `NAME@HOST:PORT` names the peer, `HOST:PORT` expects
/// HOST when it is a name, and any allowed peer when it is an IP address.
pub(crate) fn split_target(to: &str) -> (Option<&str>, &str) {
    match to.split_once('@') {
        Some((name, address)) => (Some(name), address),
        None => {
            let host = to.rsplit_once(':').map_or(to, |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            (host.parse::<IpAddr>().is_err().then_some(host), to)
        }
    }
}

fn peer_name(to: &str) -> Option<&str> {
    split_target(to).0
}

#[cfg(test)]
mod tests {
    use super::split_target;

    #[test]
    fn a_target_names_its_peer_explicitly_by_host_name_or_not_at_all() {
        assert_eq!(
            split_target("hostb@10.0.0.2:7800"),
            (Some("hostb"), "10.0.0.2:7800")
        );
        assert_eq!(
            split_target("hostb.dc2:7800"),
            (Some("hostb.dc2"), "hostb.dc2:7800")
        );
        assert_eq!(split_target("10.0.0.2:7800"), (None, "10.0.0.2:7800"));
        assert_eq!(split_target("[::1]:7800"), (None, "[::1]:7800"));
    }
}
