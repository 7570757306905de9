//! `mllm certs`: a CA and the agents' certificates for a small deployment.
//! The CA's key stays where it was made; each agent gets a directory for
//! `mllm agent --tls-dir`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use mllm_tls::certs::{CA_FILE, CA_KEY_FILE, CERT_FILE, KEY_FILE};
use mllm_tls::{CertificateAuthority, Validity};

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create a CA: OUT/ca.pem (every agent trusts it) and OUT/ca-key.pem
    /// (keep it on this machine).
    Ca {
        /// Directory to create the files in (existing files are never overwritten).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "mllm agents CA")]
        name: String,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue an agent's certificate, signed by the CA in --ca: OUT/ca.pem,
    /// OUT/cert.pem and OUT/key.pem, for `mllm agent --tls-dir OUT`.
    Host {
        /// The agent's name (a DNS name, usually its host's): its peers
        /// allow it by this name (`--allow-peer NAME`).
        name: String,
        /// The CA's directory (from `mllm certs ca`).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Directory to create the files in (existing files are never overwritten).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

pub fn run(command: CertsCommand) -> Result<()> {
    match command {
        CertsCommand::Ca { out, name, days } => {
            CertificateAuthority::generate(&name, Validity::days_from_now(days))?.save(&out)?;
            println!(
                "CA {name:?} in {}: {CA_FILE} for every agent, {CA_KEY_FILE} stays here",
                out.display()
            );
        }
        CertsCommand::Host {
            name,
            ca,
            out,
            days,
        } => {
            CertificateAuthority::load(&ca)?
                .issue(&name, Validity::days_from_now(days))?
                .save(&out)?;
            println!(
                "{name} in {}: {CA_FILE}, {CERT_FILE}, {KEY_FILE}; copy to that host and run \
                 `mllm agent --tls-dir DIR --allow-peer PEER ...`",
                out.display()
            );
        }
    }
    Ok(())
}
