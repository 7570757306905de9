//! `mllm link`: owned by the link emulator work (crates/link).
use clap::Args;

#[derive(Args)]
pub struct LinkArgs {}

pub fn run(_args: LinkArgs) -> anyhow::Result<()> {
    anyhow::bail!("mllm link is not built yet")
}
