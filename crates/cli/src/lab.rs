//! `mllm lab`: guest images, scenarios, baselines.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use mllm_lab::image::ImageBuilder;
use mllm_lab::result::RunResult;
use mllm_lab::scenario::Scenario;
use mllm_lab::scoreboard::{self, Provenance};
use mllm_lab::suite::{self, Suite};
use mllm_lab::{disk_io, paths, report, run};
use mllm_link::{parse_duration, parse_size};

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
    /// Run every method of every scenario of a suite and write the
    /// scoreboard: mllm's best method against QEMU's best and the physical
    /// limit, scenario by scenario. Takes an hour or more.
    Suite {
        /// Suite file (TOML): the scenario files to run, in order.
        #[arg(default_value = "scenarios/suite.toml")]
        suite: PathBuf,
        /// Directory for the results, one subdirectory per scenario and method.
        #[arg(long, default_value = "results/suite")]
        out: PathBuf,
        /// Where to write the scoreboard (rewritten after every run).
        #[arg(long, default_value = "docs/scoreboard.md")]
        scoreboard: PathBuf,
        /// Run only these scenarios (by name; repeatable).
        #[arg(long)]
        only: Vec<String>,
        /// Keep results already in --out instead of running those methods again.
        #[arg(long)]
        resume: bool,
    },
    /// Write the scoreboard from results already on disk (suite output
    /// directories, scenario result directories or result.json files).
    Scoreboard {
        #[arg(required = true)]
        results: Vec<PathBuf>,
        /// Where to write it; standard output if not given.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print results side by side: result directories or result.json files.
    Compare {
        #[arg(required = true)]
        results: Vec<PathBuf>,
    },
    /// Guest disk throughput through the agent's NBD server against the
    /// image attached directly to QEMU: fio in the Debian root disk guest
    /// (random 4 KiB read, random 4 KiB write, sequential 1 MiB read).
    /// Needs `mllm lab setup --rootfs`.
    DiskIo {
        /// How long each fio job runs.
        #[arg(long, value_parser = parse_duration, default_value = "20s")]
        runtime: Duration,
        /// The file on the root disk the jobs read and write.
        #[arg(long, value_parser = parse_size, default_value = "256MiB")]
        file_size: usize,
        /// Requests fio keeps in flight.
        #[arg(long, default_value_t = 16)]
        iodepth: u32,
        /// Boots each way, alternating; the report takes the median.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Where to write the markdown report; standard output if not given.
        #[arg(long)]
        out: Option<PathBuf>,
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
        LabCommand::Suite {
            suite,
            out,
            scoreboard,
            only,
            resume,
        } => {
            let (_, scenarios) = Suite::load(&suite)?;
            let scenarios = suite::select(scenarios, &only)?;
            let image = build_image()?;
            let command = format!("mllm lab suite {} --out {}", suite.display(), out.display());
            let write_board = |results: &[RunResult]| -> anyhow::Result<()> {
                let board = scoreboard::render(results, &provenance(&command, migration_machine()));
                std::fs::write(&scoreboard, board)
                    .with_context(|| format!("cannot write {}", scoreboard.display()))
            };
            let results = suite::run_suite(&scenarios, &image, &out, resume, write_board)?;
            write_board(&results)?;
            println!("{}", report::compare(&results));
            println!("scoreboard: {}", scoreboard.display());
            Ok(())
        }
        LabCommand::Scoreboard { results, out } => {
            let mut loaded = Vec::new();
            for path in &results {
                loaded.extend(find_results(path)?);
            }
            let sources: Vec<String> = results.iter().map(|p| p.display().to_string()).collect();
            let command = format!("mllm lab scoreboard {}", sources.join(" "));
            let board = scoreboard::render(&loaded, &provenance(&command, migration_machine()));
            match out {
                Some(path) => std::fs::write(&path, board)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{board}"),
            }
            Ok(())
        }
        LabCommand::DiskIo {
            runtime,
            file_size,
            iodepth,
            rounds,
            out,
        } => {
            let image = build_image()?;
            let settings = disk_io::Settings {
                runtime,
                file_size: file_size as u64,
                io_depth: iodepth,
                rounds,
            };
            let comparison = disk_io::compare(&image, &settings)?;
            let mut command = format!(
                "mllm lab disk-io --runtime {} --file-size {}MiB --iodepth {iodepth} --rounds {rounds}",
                humantime::format_duration(runtime),
                file_size >> 20
            );
            if let Some(path) = &out {
                command.push_str(&format!(" --out {}", path.display()));
            }
            let machine = format!(
                "{} CPUs shared by the guest's {}, QEMU's own threads and the agent's NBD server",
                cpus(),
                disk_io::guest_cpus()
            );
            let report = disk_io::render(&comparison, &provenance(&command, machine));
            match out {
                Some(path) => std::fs::write(&path, report)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{report}"),
            }
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

/// When, at which commit and on what (`machine`) results were made.
fn provenance(command: &str, machine: String) -> Provenance {
    let commit = paths::source_commit();
    Provenance {
        command: command.to_owned(),
        when: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        commit,
        machine,
    }
}

/// The machine of a migration's results.
fn migration_machine() -> String {
    format!(
        "{} CPUs shared by both VMs, both agents and the link emulator; the vCPUs \
         pinned to a core of their own unless a scenario says otherwise (`[vm] pin_vcpus`, \
         each result's `environment.placement`)",
        cpus()
    )
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, usize::from)
}

fn build_image() -> anyhow::Result<mllm_lab::image::GuestImage> {
    ImageBuilder::new(&paths::cache_dir(), &paths::workspace_root())
        .build()
        .context("building the guest image")
}

/// `path` itself if it is a file, else every result.json up to three levels
/// below it (a suite's `SCENARIO/METHOD/result.json`), in path order.
fn find_results(path: &Path) -> anyhow::Result<Vec<RunResult>> {
    if path.is_file() {
        return Ok(vec![RunResult::read(path)?]);
    }
    if !path.is_dir() {
        bail!("{} does not exist", path.display());
    }
    let mut files = Vec::new();
    collect_results(path, 3, &mut files)?;
    files.sort();
    if files.is_empty() {
        bail!("no result.json in {} or below it", path.display());
    }
    files.iter().map(|file| RunResult::read(file)).collect()
}

fn collect_results(dir: &Path, depth: u32, found: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let direct = dir.join("result.json");
    if direct.is_file() {
        found.push(direct);
    }
    if depth == 0 {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.path().is_dir() {
            collect_results(&entry.path(), depth - 1, found)?;
        }
    }
    Ok(())
}
