//! `mllm lab disk-io` with real QEMU under TCG: short fio jobs in the
//! Debian guest, with the image attached directly and served by the
//! agent's NBD server. Checked for what can go wrong, not for speed: on two
//! shared cores TCG's rates are too noisy for the 15 % target. Builds the
//! Debian root disk first if the cache lacks it, as `mllm lab run` does.

use std::time::Duration;

use mllm_lab::disk_io::{self, Comparison, DiskPath, Settings, JOBS};
use mllm_lab::image::ImageBuilder;
use mllm_lab::paths;
use mllm_lab::rootfs;
use mllm_lab::scoreboard::Provenance;

const FILE_SIZE: u64 = 64 << 20;
const RUNTIME: Duration = Duration::from_secs(3);

fn compare() -> Comparison {
    let image = ImageBuilder::new(&paths::cache_dir(), &paths::workspace_root())
        .build()
        .expect("guest image");
    rootfs::build_root_disk(&paths::cache_dir())
        .unwrap_or_else(|error| panic!("the Debian root disk: {error:#}"));
    let settings = Settings {
        runtime: RUNTIME,
        file_size: FILE_SIZE,
        io_depth: 4,
        rounds: 1,
    };
    disk_io::compare(&image, &settings).unwrap_or_else(|error| panic!("{error:#}"))
}

#[test]
fn fio_runs_on_both_disk_paths_and_the_agent_serves_every_byte_of_it() {
    let comparison = compare();
    let [round] = comparison.rounds.as_slice() else {
        panic!("{} rounds instead of one", comparison.rounds.len());
    };
    for path in [DiskPath::Direct, DiskPath::Agent] {
        let run = round.through(path);
        let path = path.name();
        assert_eq!(run.jobs.len(), JOBS.len(), "{path}");
        for (job, throughput) in JOBS.iter().zip(&run.jobs) {
            assert!(
                throughput.iops > 0.0 && throughput.bytes_per_s > 0.0,
                "{path} {}: {throughput:?}",
                job.name
            );
            // fio's three figures agree with each other: its rate is its
            // bytes over the job's time, and every request is one block.
            let seconds = throughput.bytes as f64 / throughput.bytes_per_s;
            assert!(
                (0.8..1.5).contains(&(seconds / RUNTIME.as_secs_f64())),
                "{path} {}: {seconds} s of I/O in a {RUNTIME:?} job",
                job.name
            );
            let block_size = throughput.bytes_per_s / throughput.iops;
            assert!(
                (block_size / job.block_size as f64 - 1.0).abs() < 0.02,
                "{path} {}: {block_size} bytes per request",
                job.name
            );
        }
        // The layout wrote the file whole before the jobs.
        assert!(
            run.guest_bytes_written >= FILE_SIZE,
            "{path}: {}",
            run.guest_bytes_written
        );
    }

    assert!(round.direct.served.is_none());
    let agent = &round.agent;
    let served = agent.served.expect("the agent's counts");
    // Direct I/O: every byte fio moved crossed the agent's NBD server, and
    // every block the layout wrote is marked for a migration to send.
    assert!(
        served.requests.bytes_read >= agent.guest_bytes_read,
        "the agent served {} bytes of reads, fio read {}",
        served.requests.bytes_read,
        agent.guest_bytes_read
    );
    assert!(
        served.requests.bytes_written >= agent.guest_bytes_written,
        "the agent served {} bytes of writes, fio wrote {}",
        served.requests.bytes_written,
        agent.guest_bytes_written
    );
    assert!(
        served.dirty_blocks >= FILE_SIZE / 4096,
        "{} blocks marked written for a {FILE_SIZE}-byte file",
        served.dirty_blocks
    );
    assert!(served.blocks_read > 0 && served.requests.reads > 0);

    let ratios = comparison.ratios();
    assert!(
        ratios.iter().all(|ratio| ratio.is_finite() && *ratio > 0.0),
        "{ratios:?}"
    );
    let provenance = Provenance {
        command: "mllm lab disk-io".into(),
        when: "now".into(),
        commit: None,
        machine: "this machine".into(),
    };
    let report = disk_io::render(&comparison, &provenance);
    println!("{report}");
    for (job, ratio) in JOBS.iter().zip(&ratios) {
        let row = report
            .lines()
            .find(|line| line.starts_with(&format!("| {} |", job.title)))
            .unwrap_or_else(|| panic!("no row for {} in\n{report}", job.title));
        assert!(row.contains(&format!("| {ratio:.2} |")), "{row}");
    }
}
