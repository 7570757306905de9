//! `mllm agent` and `mllm migrate`: owned by the agent work (crates/agent).
use clap::Args;

#[derive(Args)]
pub struct AgentArgs {}

#[derive(Args)]
pub struct MigrateArgs {}

pub fn run_agent(_args: AgentArgs) -> anyhow::Result<()> {
    anyhow::bail!("mllm agent is not built yet")
}

pub fn run_migrate(_args: MigrateArgs) -> anyhow::Result<()> {
    anyhow::bail!("mllm migrate is not built yet")
}
