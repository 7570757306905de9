//! `mllm`: live migration of QEMU VMs, memory and disk together, across slow links.

mod agent;
mod certs;
mod lab;
mod link;
mod migrate;
mod sim;
mod trace;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mllm",
    version,
    about = "Live migration of QEMU VMs across slow, high-latency links"
)]
struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mllm agent on this host: owns local VMs, sends and receives migrations.
    Agent(agent::AgentArgs),
    /// Make a CA and the agents' certificates for mutual TLS between agents.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Migrate a VM owned by the local agent to another host's agent.
    Migrate(migrate::MigrateArgs),
    /// Build guest images, run migration scenarios and compare results.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Run the inter-datacenter link emulator as a standalone relay.
    Link(link::LinkArgs),
    /// Trace-driven simulation of migration policies, for one VM or a fleet.
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// Record memory write traces of VMs the local agent runs.
    #[command(subcommand)]
    Trace(trace::TraceCommand),
}

fn main() {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MLLM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let outcome = match cli.command {
        Command::Agent(args) => agent::run(args),
        Command::Certs(cmd) => certs::run(cmd),
        Command::Migrate(args) => migrate::run(args),
        Command::Lab(cmd) => lab::run(cmd),
        Command::Link(args) => link::run(args),
        Command::Sim(cmd) => sim::run(cmd),
        Command::Trace(cmd) => trace::run(cmd),
    };
    if let Err(err) = outcome {
        // ripgrep-style: one line per cause, no backtrace noise.
        eprintln!("mllm: error: {err}");
        for cause in err.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}
