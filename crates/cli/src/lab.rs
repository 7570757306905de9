//! `mllm lab`: guest images, scenarios, baselines.
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use mllm_lab::image::ImageBuilder;
use mllm_lab::result::RunResult;
use mllm_lab::scenario::Scenario;
use mllm_lab::{paths, report, run};

#[derive(Subcommand)]
pub enum LabCommand {
    /// Fetch Debian's kernel and busybox and build the guest image (cached:
    /// rerunning is cheap). QEMU itself comes from scripts/install-deps.sh.
    Setup {
        /// Also build the Debian root disk (redis, fio, sqlite3, stress-ng)
        /// used by `command` workloads.
        #[arg(long)]
        rootfs: bool,
    },
    /// Boot, warm up, migrate and measure every method a scenario names.
    Run {
        /// Scenario file (TOML); see scenarios/.
        scenario: PathBuf,
        /// Directory for result.json, logs and plots.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print results side by side: result directories or result.json files.
    Compare {
        #[arg(required = true)]
        results: Vec<PathBuf>,
    },
}

pub fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Setup { rootfs } => {
            let image = build_image()?;
            println!("guest image ready: {}", image.description);
            println!("  kernel: {}", image.kernel.display());
            println!("  initrd: {}", image.initrd.display());
            if rootfs {
                let root = mllm_lab::rootfs::build_root_disk(&paths::cache_dir())?;
                println!(
                    "Debian root disk ready: {} ({} MiB)",
                    root.image.display(),
                    root.bytes >> 20
                );
            }
            Ok(())
        }
        LabCommand::Run { scenario, out } => {
            let scenario = Scenario::load(&scenario)?;
            let image = build_image()?;
            let results = run::run_scenario(&scenario, &image, &out)?;
            println!("{}", report::compare(&results));
            Ok(())
        }
        LabCommand::Compare { results } => {
            let mut loaded = Vec::new();
            for path in results {
                loaded.extend(find_results(&path)?);
            }
            println!("{}", report::compare(&loaded));
            Ok(())
        }
    }
}

fn build_image() -> anyhow::Result<mllm_lab::image::GuestImage> {
    ImageBuilder::new(&paths::cache_dir(), &paths::workspace_root())
        .build()
        .context("building the guest image")
}

/// `path` itself if it is a file, else every result.json up to two levels below it.
fn find_results(path: &PathBuf) -> anyhow::Result<Vec<RunResult>> {
    if path.is_file() {
        return Ok(vec![RunResult::read(path)?]);
    }
    if !path.is_dir() {
        bail!("{} does not exist", path.display());
    }
    let mut found = Vec::new();
    let direct = path.join("result.json");
    if direct.is_file() {
        found.push(RunResult::read(&direct)?);
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(path)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("result.json").is_file())
        .collect();
    subdirs.sort();
    for dir in subdirs {
        found.push(RunResult::read(&dir.join("result.json"))?);
    }
    if found.is_empty() {
        bail!("no result.json in {} or its subdirectories", path.display());
    }
    Ok(found)
}
