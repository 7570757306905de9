//! `mllm lab`: guest images, scenarios, baselines.
use clap::Subcommand;
use mllm_lab::image::ImageBuilder;
use mllm_lab::paths;

#[derive(Subcommand)]
pub enum LabCommand {
    /// Install-free part of the lab set-up: fetch Debian's kernel and busybox
    /// and build the guest image (cached; rerunning is cheap).
    Setup,
}

pub fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Setup => {
            let image = ImageBuilder::new(&paths::cache_dir(), &paths::workspace_root()).build()?;
            println!("guest image ready: {}", image.description);
            println!("  kernel: {}", image.kernel.display());
            println!("  initrd: {}", image.initrd.display());
            Ok(())
        }
    }
}
