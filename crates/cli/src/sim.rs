//! `mllm sim`: owned by the simulator work (crates/sim).
use clap::Subcommand;

#[derive(Subcommand)]
pub enum SimCommand {}

pub fn run(cmd: SimCommand) -> anyhow::Result<()> {
    match cmd {}
}
