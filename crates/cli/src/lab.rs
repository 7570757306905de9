//! `mllm lab`: guest images, scenarios, baselines.
use clap::Subcommand;

#[derive(Subcommand)]
pub enum LabCommand {}

pub fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {}
}
