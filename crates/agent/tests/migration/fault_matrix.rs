//! The fault matrix: every fault we know how to cause, each ending with
//! exactly one running guest and its data intact. Whatever fails before the
//! destination runs, the source VM keeps (or gets back) its guest, memory
//! and disk intact, and the error names the cause; a cut after the
//! hand-over leaves the guest running on the destination alone.
//!
//! The test suite runs the cases marked `in_ci`; `scripts/fault-matrix.sh`
//! runs every case (`MLLM_FAULT_MATRIX=full`) and writes the table into
//! docs/reliability.md (`MLLM_FAULT_MATRIX_OUT`).
//!
//! Booting a TCG guest takes seconds, so one source guest lives through
//! every failure it survives in turn: each case also shows that a failed
//! migration leaves the source fit for the next attempt (the hook re-arms).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use mllm_agent::{
    migrate_source, GuestRam, MigrationError, Phase, Progress, Recovery, SourceError,
    SourceSettings,
};
use mllm_link::Link;
use mllm_tls::{CertificateAuthority, HostCertificate, TlsContext, Validity};
use mllm_wire::{
    handshake, Capabilities, DestinationRunning, FrameReader, FrameWriter, Hello, Message,
    MigrationAccept, Role, PROTOCOL_VERSION,
};

use crate::postcopy_recovery;
use crate::protocol::{accept_frame_with_bad_checksum, hello_of_version};
use crate::support::{link_config, migrate_through, one_vm_pair_at_a_time, Storage, Vm, GUEST_MIB};

/// The link of every case unless a case needs a longer trip.
const RTT_MS: u64 = 20;
const DISK_MIB: u64 = 64;
/// Data the source's disk holds: the blocks a disk migration must move.
const DISK_DATA_MIB: u64 = 16;
/// Both agents' link timeout where a case waits for silence to be noticed.
const PARTITION_TIMEOUT: Duration = Duration::from_secs(3);

/// One row of the matrix.
struct Row {
    case: &'static str,
    phase: &'static str,
    guest_after: String,
    data: &'static str,
    resolved_in: Duration,
}

/// A fault the source survives: run against the long-lived source guest.
struct Case {
    name: &'static str,
    phase: &'static str,
    in_ci: bool,
    run: fn(&Vm) -> Failed,
}

const SOURCE_SURVIVES: &[Case] = &[
    Case {
        name: "peer with a certificate of another CA",
        phase: "TLS handshake",
        in_ci: true,
        run: peer_of_another_ca,
    },
    Case {
        name: "peer with an expired certificate",
        phase: "TLS handshake",
        in_ci: false,
        run: peer_with_expired_certificate,
    },
    Case {
        name: "unknown peer (a name not in the allowed list)",
        phase: "TLS handshake",
        in_ci: false,
        run: unknown_peer,
    },
    Case {
        name: "peer without TLS",
        phase: "TLS handshake",
        in_ci: false,
        run: peer_without_tls,
    },
    Case {
        name: "peer speaks another protocol version",
        phase: "handshake",
        in_ci: true,
        run: version_mismatch,
    },
    Case {
        name: "frame with a bad checksum",
        phase: "request",
        in_ci: true,
        run: corrupt_frame,
    },
    Case {
        name: "frame cut short, then the connection closes",
        phase: "request",
        in_ci: true,
        run: truncated_frame,
    },
    Case {
        name: "destination says it runs before it has the VM",
        phase: "pre-copy",
        in_ci: true,
        run: running_out_of_order,
    },
    Case {
        name: "destination VM has less RAM",
        phase: "request",
        in_ci: true,
        run: ram_size_mismatch,
    },
    Case {
        name: "destination agent dies (its connection closes)",
        phase: "pre-copy, round 1",
        in_ci: false,
        run: destination_agent_dies,
    },
    Case {
        name: "link cut",
        phase: "pre-copy, round 1",
        in_ci: true,
        run: cut_in_round_1,
    },
    Case {
        name: "link goes silent (a partition: nothing closes)",
        phase: "pre-copy, round 1",
        in_ci: false,
        run: partition_in_round_1,
    },
    Case {
        name: "link cut",
        phase: "pre-copy, round 3",
        in_ci: true,
        run: cut_in_round_3,
    },
    Case {
        name: "link cut",
        phase: "switchover (final round, VM paused)",
        in_ci: false,
        run: cut_in_final_round,
    },
    Case {
        name: "link cut",
        phase: "device state",
        in_ci: true,
        run: cut_during_device_state,
    },
    Case {
        name: "destination QEMU killed",
        phase: "pre-copy, round 2",
        in_ci: true,
        run: destination_qemu_killed,
    },
    Case {
        name: "destination QEMU killed after the source handed over",
        phase: "hand-over in flight",
        in_ci: true,
        run: destination_qemu_killed_after_hand_over,
    },
    Case {
        name: "destination memory overwritten behind the agent",
        phase: "final round",
        in_ci: true,
        run: destination_memory_corrupted,
    },
    Case {
        name: "destination has no room for guest RAM (/dev/shm full)",
        phase: "request",
        in_ci: false,
        run: no_room_for_ram,
    },
];

/// A fault the source survives, with a disk on both sides.
struct DiskCase {
    name: &'static str,
    phase: &'static str,
    run: fn(&Vm) -> Failed,
}

const DISK_SOURCE_SURVIVES: &[DiskCase] = &[
    DiskCase {
        name: "destination disk is smaller",
        phase: "request",
        run: disk_size_mismatch,
    },
    DiskCase {
        name: "link cut while memory and disk move",
        phase: "pre-copy, round 1",
        run: cut_with_disk,
    },
    DiskCase {
        name: "destination has no room for the disk",
        phase: "pre-copy, disk blocks",
        run: no_room_for_disk,
    },
];

fn full_matrix() -> bool {
    std::env::var("MLLM_FAULT_MATRIX").is_ok_and(|value| value == "full")
}

#[test]
fn every_fault_ends_with_exactly_one_running_guest_and_its_data_intact() {
    let _one_at_a_time = one_vm_pair_at_a_time();
    let full = full_matrix();
    let mut rows = Vec::new();

    let source = Vm::boot_memload("source");
    for case in SOURCE_SURVIVES.iter().filter(|case| full || case.in_ci) {
        let failed = (case.run)(&source);
        assert_kept_running(&source, &failed, case.name);
        rows.push(Row {
            case: case.name,
            phase: case.phase,
            guest_after: source_after(&failed),
            data: "source guest's own memory check passes after",
            resolved_in: failed.resolved_in,
        });
    }
    drop(source);

    rows.push(cut_after_the_hand_over());
    if full {
        // Their own tests run them too (`postcopy_recovery`).
        rows.push(partition_in_post_copy());
        rows.push(destination_gone_in_post_copy());
    }

    if full {
        let source = Vm::boot_memload_on(
            "source",
            Storage::with_disk(disk_with_data(&scratch().join("source.img"))),
        );
        let disk = &source.disks()[0];
        let before = disk.digest().unwrap();
        for case in DISK_SOURCE_SURVIVES {
            let failed = (case.run)(&source);
            assert_kept_running(&source, &failed, case.name);
            assert_eq!(
                disk.digest().unwrap(),
                before,
                "{}: the source's disk changed",
                case.name
            );
            rows.push(Row {
                case: case.name,
                phase: case.phase,
                guest_after: source_after(&failed),
                data: "source memory check passes; source disk digest unchanged",
                resolved_in: failed.resolved_in,
            });
        }
        // Last: the source hands its guest over.
        rows.push(nbd_client_reconnects_mid_migration(&source));
        drop(source);
        let _ = std::fs::remove_dir_all(scratch());
    }

    let table = render(&rows);
    println!("{table}");
    if let Ok(path) = std::env::var("MLLM_FAULT_MATRIX_OUT") {
        std::fs::write(&path, &table).unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }
}

fn source_after(failed: &Failed) -> String {
    match failed.recovery() {
        Recovery::NeverStopped => "source, never paused".into(),
        Recovery::Resumed => "source, resumed".into(),
        ref other => format!("{other:?}"),
    }
}

fn render(rows: &[Row]) -> String {
    let mut table = String::from(
        "| case | phase | guest runs after | data check | resolved in |\n|---|---|---|---|---|\n",
    );
    for row in rows {
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {:.1} s |",
            row.case,
            row.phase,
            row.guest_after,
            row.data,
            row.resolved_in.as_secs_f64()
        );
    }
    table
}

/// The deployment's CA and the source's side of the link.
struct Deployment {
    ca: CertificateAuthority,
    source: TlsContext,
}

fn deployment() -> Deployment {
    let ca =
        CertificateAuthority::generate("mllm fault matrix CA", Validity::days_from_now(1)).unwrap();
    let host = ca.issue("source", Validity::days_from_now(1)).unwrap();
    let source = TlsContext::from_host(&host, &["destination".into()]).unwrap();
    Deployment { ca, source }
}

/// A destination speaking TLS with `certificate` (or plaintext, without):
/// the source's handshake must fail, naming why, before any migration
/// starts; returns that failure.
fn refused_by_tls(deployment: &Deployment, certificate: Option<HostCertificate>) -> Failed {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let started = Instant::now();
    let text = thread::scope(|scope| {
        scope.spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            match certificate {
                Some(host) => {
                    let context = TlsContext::from_host(&host, &["source".into()]).unwrap();
                    let _ = context.accept(tcp);
                }
                // A plaintext agent answers the TLS hello with its own hello.
                None => {
                    let mut tcp = tcp;
                    let _ = tcp.write_all(&hello_of_version(PROTOCOL_VERSION));
                    let _ = tcp.read(&mut [0; 1024]);
                }
            }
        });
        let tcp = TcpStream::connect(address).unwrap();
        match deployment.source.connect(tcp, Some("destination")) {
            Ok(_) => panic!("the source accepted a peer it must refuse"),
            Err(error) => error.to_string(),
        }
    });
    // Refused before the migration request: the source VM was never touched.
    Failed::refused_before_migrating(text, started.elapsed())
}

fn peer_of_another_ca(_source: &Vm) -> Failed {
    // Named like ours, with another key.
    let other =
        CertificateAuthority::generate("mllm fault matrix CA", Validity::days_from_now(1)).unwrap();
    let error = refused_by_tls(
        &deployment(),
        Some(
            other
                .issue("destination", Validity::days_from_now(1))
                .unwrap(),
        ),
    );
    assert!(error.contains("signed by an unknown CA"), "{error}");
    error
}

fn peer_with_expired_certificate(_source: &Vm) -> Failed {
    let day = Duration::from_secs(86_400);
    let now = std::time::SystemTime::now();
    let expired = Validity {
        not_before: now - 2 * day,
        not_after: now - day,
    };
    let ours = deployment();
    let certificate = ours.ca.issue("destination", expired).unwrap();
    let error = refused_by_tls(&ours, Some(certificate));
    assert!(error.contains("expired at"), "{error}");
    error
}

fn unknown_peer(_source: &Vm) -> Failed {
    let ours = deployment();
    let certificate = ours
        .ca
        .issue("mallory", Validity::days_from_now(1))
        .unwrap();
    let error = refused_by_tls(&ours, Some(certificate));
    assert!(error.contains("mallory"), "{error}");
    error
}

fn peer_without_tls(_source: &Vm) -> Failed {
    let error = refused_by_tls(&deployment(), None);
    assert!(error.contains("does not speak TLS"), "{error}");
    error
}

fn version_mismatch(source: &Vm) -> Failed {
    let error = against_fake_destination(source, |mut stream| {
        stream
            .write_all(&hello_of_version(PROTOCOL_VERSION + 1))
            .unwrap();
    });
    assert!(error.contains("protocol version mismatch"), "{error}");
    error.assert_kind("Protocol");
    error
}

fn corrupt_frame(source: &Vm) -> Failed {
    let error = against_fake_destination(source, |mut stream| {
        accept_request(&mut stream);
        stream.write_all(&accept_frame_with_bad_checksum()).unwrap();
    });
    assert!(error.contains("checksum mismatch"), "{error}");
    error
}

fn truncated_frame(source: &Vm) -> Failed {
    let error = against_fake_destination(source, |mut stream| {
        accept_request(&mut stream);
        let frame = accept_frame_with_bad_checksum();
        stream.write_all(&frame[..frame.len() / 2]).unwrap();
        stream.shutdown(std::net::Shutdown::Both).unwrap();
    });
    error.assert_kind("Link");
    error
}

fn running_out_of_order(source: &Vm) -> Failed {
    let error = against_fake_destination(source, |mut stream| {
        accept_request(&mut stream);
        let mut writer = FrameWriter::new(&stream);
        writer.send(&MigrationAccept.into()).unwrap();
        writer.send(&DestinationRunning.into()).unwrap();
    });
    assert!(
        error.contains("the destination sent DestinationRunning") && error.contains("in pre-copy"),
        "{error}"
    );
    error.assert_kind("Protocol");
    error
}

/// A destination agent that accepts, takes a few batches and is gone: the
/// kernel closes its socket, as it does for a process that died.
fn destination_agent_dies(source: &Vm) -> Failed {
    let error = against_fake_destination(source, |mut stream| {
        accept_request(&mut stream);
        FrameWriter::new(&stream)
            .send(&MigrationAccept.into())
            .unwrap();
        let mut reader = FrameReader::new(&stream);
        for _ in 0..8 {
            reader.recv().unwrap();
        }
        stream.shutdown(std::net::Shutdown::Both).unwrap();
    });
    error.assert_kind("Link");
    error
}

fn ram_size_mismatch(source: &Vm) -> Failed {
    let error = migrate_to_new_destination(source, GUEST_MIB / 2, 1000, |_| false);
    assert!(error.contains("RAM size differs"), "{error}");
    assert!(
        error.contains("256 MiB") && error.contains("128 MiB"),
        "{error}"
    );
    error.assert_kind("Refused");
    error
}

fn cut_in_round_1(source: &Vm) -> Failed {
    let error = migrate_to_new_destination(source, GUEST_MIB, 1000, |p| {
        p.phase == Phase::Precopy && p.round == 1 && p.bytes_acknowledged > 1 << 20
    });
    error.assert_kind("Link");
    error
}

/// Silence, not a reset: the source gives up after its link timeout.
fn partition_in_round_1(source: &Vm) -> Failed {
    let error = migrate_with_settings(
        source,
        GUEST_MIB,
        SourceSettings {
            link_timeout: PARTITION_TIMEOUT,
            verify: true,
            ..SourceSettings::default()
        },
        Storage::default(),
        |_, p| {
            if p.phase == Phase::Precopy && p.bytes_acknowledged > 1 << 20 {
                Fault::Partition
            } else {
                Fault::NotYet
            }
        },
    );
    error.assert_kind("Link");
    assert!(error.contains("silent"), "{error}");
    assert!(
        error.resolved_in < PARTITION_TIMEOUT * 2,
        "{:?} after the partition",
        error.resolved_in
    );
    error
}

/// A target nothing meets keeps pre-copy going round after round.
fn cut_in_round_3(source: &Vm) -> Failed {
    migrate_to_new_destination(source, GUEST_MIB, 1, |p| {
        p.phase == Phase::Precopy && p.round >= 3
    })
}

fn cut_in_final_round(source: &Vm) -> Failed {
    let error =
        migrate_to_new_destination(source, GUEST_MIB, 1000, |p| p.phase == Phase::FinalRound);
    assert!(error.contains("was resumed"), "{error}");
    error
}

fn cut_during_device_state(source: &Vm) -> Failed {
    let error =
        migrate_to_new_destination(source, GUEST_MIB, 1000, |p| p.phase == Phase::DeviceState);
    assert!(error.contains("was resumed"), "{error}");
    // The cause, not a note that some other step saw it.
    error.assert_kind("Link");
    error
}

/// The destination's QEMU dies after the source handed the VM over, before
/// the hand-over arrives (a 200 ms one-way trip): the destination tells the
/// source it will not run the VM, and the source takes it back.
fn destination_qemu_killed_after_hand_over(source: &Vm) -> Failed {
    let error = migrate_with(
        source,
        GUEST_MIB,
        1000,
        400,
        Storage::default(),
        |destination, p| {
            if p.phase == Phase::WaitingForDestination {
                kill(destination);
                return Fault::Caused;
            }
            Fault::NotYet
        },
    );
    error.assert_kind("PeerAborted");
    error
}

fn destination_qemu_killed(source: &Vm) -> Failed {
    let error = migrate_with(
        source,
        GUEST_MIB,
        1,
        RTT_MS,
        Storage::default(),
        |destination, p| {
            if p.phase == Phase::Precopy && p.round >= 2 {
                kill(destination);
                return Fault::Caused;
            }
            Fault::NotYet
        },
    );
    assert!(error.contains("destination QEMU failed"), "{error}");
    error.assert_kind("PeerAborted");
    error
}

fn destination_memory_corrupted(source: &Vm) -> Failed {
    let error = migrate_with(
        source,
        GUEST_MIB,
        1000,
        RTT_MS,
        Storage::default(),
        |destination, p| {
            if p.phase == Phase::FinalRound {
                corrupt_every_1024th_page(destination);
                return Fault::Caused;
            }
            Fault::NotYet
        },
    );
    assert!(error.contains("RAM DIGEST MISMATCH"), "{error}");
    assert!(error.contains("was resumed"), "{error}");
    error
}

/// The destination's RAM file lives on a tmpfs a quarter of the guest's
/// size: the destination must refuse before anything is sent, not die of
/// SIGBUS writing into a hole of a full tmpfs.
fn no_room_for_ram(source: &Vm) -> Failed {
    let small = SmallTmpfs::mount(GUEST_MIB / 4);
    let error = migrate_with(
        source,
        GUEST_MIB,
        1000,
        RTT_MS,
        Storage {
            ram_dir: Some(small.path.clone()),
            ..Storage::default()
        },
        |_, _| Fault::NotYet,
    );
    assert!(
        error.contains("reserving 256 MiB for guest RAM") && error.contains("No space left"),
        "{error}"
    );
    error.assert_kind("Refused");
    error
}

fn disk_size_mismatch(source: &Vm) -> Failed {
    let image = scratch().join("smaller.img");
    sparse_image(&image, DISK_MIB / 2);
    let error = migrate_with(
        source,
        GUEST_MIB,
        1000,
        RTT_MS,
        Storage::with_disk(image),
        |_, _| Fault::NotYet,
    );
    assert!(error.contains("disks differ"), "{error}");
    assert!(
        error.contains("64 MiB") && error.contains("32 MiB"),
        "{error}"
    );
    error
}

fn cut_with_disk(source: &Vm) -> Failed {
    let image = scratch().join("destination.img");
    sparse_image(&image, DISK_MIB);
    let error = migrate_with(
        source,
        GUEST_MIB,
        1000,
        RTT_MS,
        Storage::with_disk(image),
        |_, p| {
            if p.phase == Phase::Precopy && p.bytes_acknowledged > 4 << 20 {
                Fault::CutLink
            } else {
                Fault::NotYet
            }
        },
    );
    error.assert_kind("Link");
    error
}

/// The destination's disk image lives on a tmpfs smaller than the data the
/// source's disk holds: writing its blocks fails, and the migration with it.
fn no_room_for_disk(source: &Vm) -> Failed {
    let small = SmallTmpfs::mount(DISK_DATA_MIB / 4);
    let image = small.path.join("destination.img");
    sparse_image(&image, DISK_MIB);
    let error = migrate_with(
        source,
        GUEST_MIB,
        1000,
        RTT_MS,
        Storage::with_disk(image),
        |_, _| Fault::NotYet,
    );
    assert!(error.contains("No space left"), "{error}");
    error
}

/// QEMU's NBD client loses its connection to the source agent's disk server
/// in the middle of pre-copy (the server stops, and serves the disk again on
/// the same socket a second later): QEMU reconnects, the migration goes on
/// and completes, and the destination's RAM and disk equal the source's at
/// the switch.
fn nbd_client_reconnects_mid_migration(source: &Vm) -> Row {
    let image = scratch().join("destination-after-reconnect.img");
    sparse_image(&image, DISK_MIB);
    let destination = Vm::incoming_on("destination", GUEST_MIB, Storage::with_disk(image));
    let link = Link::new(link_config(100, RTT_MS)).unwrap();
    let settings = SourceSettings {
        verify: true,
        ..SourceSettings::default()
    };
    let in_precopy = AtomicBool::new(false);
    let finished = AtomicBool::new(false);
    let restarted_at = Mutex::new(None);
    let outcome = thread::scope(|scope| {
        scope.spawn(|| {
            while !finished.load(Ordering::Relaxed) {
                if in_precopy.load(Ordering::Relaxed) {
                    *restarted_at.lock().unwrap() = Some(Instant::now());
                    source.restart_disk_server(Duration::from_secs(1));
                    return;
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        let outcome = migrate_through(source, &destination, &link, &settings, |p| {
            if p.phase == Phase::Precopy && p.bytes_acknowledged > 4 << 20 {
                in_precopy.store(true, Ordering::Relaxed);
            }
            false
        });
        finished.store(true, Ordering::Relaxed);
        outcome
    });
    let restarted_at = restarted_at
        .into_inner()
        .unwrap()
        .expect("the disk server restarted during pre-copy");
    let report = outcome.source.expect("the migration completes");
    let received = outcome.destination.expect("the destination runs the VM");
    assert!(report.verified && received.verified, "digests not compared");
    assert!(report.blocks_sent > 0, "{report:?}");
    destination.assert_alive_and_intact("after the NBD client reconnected during the migration");
    Row {
        case: "NBD client disconnect (the source's disk server stops; it serves again 1 s later and QEMU reconnects)",
        phase: "pre-copy, round 1",
        guest_after: "destination (migration completed)".into(),
        data: "RAM and disk digests equal at the switch; guest memory check passes",
        resolved_in: outcome.source_answered_at.saturating_duration_since(restarted_at),
    }
}

/// A cut after the hand-over arrived: the destination runs the VM, the
/// source cannot tell and stays paused. Exactly one guest runs.
fn cut_after_the_hand_over() -> Row {
    let source = Vm::boot_memload("source");
    let destination = Vm::incoming("destination", GUEST_MIB);
    // The destination's word that it runs takes 200 ms to come back: the
    // cut, made as soon as the destination runs, always beats it.
    let link = Link::new(link_config(200, 400)).unwrap();
    let settings = SourceSettings {
        verify: true,
        ..SourceSettings::default()
    };
    let finished = AtomicBool::new(false);
    let cut_at = Mutex::new(None);
    let outcome = thread::scope(|scope| {
        scope.spawn(|| {
            while !finished.load(Ordering::Relaxed) {
                if destination.is_running() {
                    link.cut();
                    *cut_at.lock().unwrap() = Some(Instant::now());
                    return;
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        let outcome = migrate_through(&source, &destination, &link, &settings, |_| false);
        finished.store(true, Ordering::Relaxed);
        outcome
    });
    let resolved_in = outcome
        .source_answered_at
        .saturating_duration_since(cut_at.into_inner().unwrap().expect("the destination ran"));
    let error = Failed::new(
        outcome.source.expect_err("the source cannot know"),
        resolved_in,
    );
    println!("source: {error}");
    assert_eq!(error.recovery(), Recovery::Undecided, "{error}");
    assert!(error.contains("never confirmed it runs there"), "{error}");
    error.assert_kind("Link");
    let received = outcome
        .destination
        .expect("the destination runs the VM it was handed");
    assert!(received.verified, "test mode compares the RAM digests");
    assert!(!source.is_running(), "the source VM resumed");
    assert!(destination.is_running(), "the destination VM does not run");
    destination.assert_alive_and_intact("destination after a cut after the hand-over");
    assert!(!source.is_running(), "the source VM resumed later");
    Row {
        case: "link cut after the hand-over arrived",
        phase: "destination running, confirmation in flight",
        guest_after: "destination (source stays paused: undecided)".into(),
        data: "destination RAM digest equals the source's at the switch; guest memory check passes",
        resolved_in,
    }
}

fn partition_in_post_copy() -> Row {
    let (_, after_heal) = postcopy_recovery::partition_in_post_copy_then_recovery();
    Row {
        case: "link goes silent for 8 s, then comes back",
        phase: "post-copy (destination runs, pages missing)",
        guest_after: "destination (post-copy resumed; source stays paused)".into(),
        data: "every pending page checked as installed; guest memory check passes",
        resolved_in: after_heal,
    }
}

fn destination_gone_in_post_copy() -> Row {
    let interrupted = postcopy_recovery::destination_agent_gone_in_post_copy();
    Row {
        case: "destination agent gone for good (connections reset, then refused)",
        phase: "post-copy (destination runs, pages missing)",
        guest_after: "destination, stalled on missing pages (both agents say so after the \
                      recovery timeout); source stays paused"
            .into(),
        data: "source RAM file digest unchanged: it holds every missing page",
        resolved_in: interrupted
            .outcome
            .source_answered_at
            .saturating_duration_since(interrupted.fault_at),
    }
}

fn kill(vm: &Vm) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(vm.qemu.pid().cast_signed(), libc::SIGKILL) };
}

/// Overwrites pages of the destination's RAM behind the agent's back. The
/// final round resends only the few pages written lately, so most stay wrong.
fn corrupt_every_1024th_page(destination: &Vm) {
    let mut ram = GuestRam::open(&destination.ram_file).unwrap();
    for page in (0..ram.pages()).step_by(1024) {
        ram.write_page(page, &[0x5a; 4096]);
    }
}

/// Migrates to a fresh destination of `memory_mib` with a downtime target of
/// `target_ms` (in test mode: digests compared), cutting the link when
/// `cut_when` says; returns the error.
fn migrate_to_new_destination(
    source: &Vm,
    memory_mib: u64,
    target_ms: u64,
    cut_when: impl Fn(&Progress) -> bool,
) -> Failed {
    migrate_with(
        source,
        memory_mib,
        target_ms,
        RTT_MS,
        Storage::default(),
        |_, progress| {
            if cut_when(progress) {
                Fault::CutLink
            } else {
                Fault::NotYet
            }
        },
    )
}

/// What a case did at a progress report.
#[derive(PartialEq)]
enum Fault {
    NotYet,
    /// Cut the link now.
    CutLink,
    /// Stop carrying anything, closing nothing.
    Partition,
    /// The case caused its fault itself.
    Caused,
}

/// Like [`migrate_to_new_destination`] to a destination on `storage`;
/// `fault` is given the destination at every progress report and says
/// when it caused the fault or wants the link cut.
fn migrate_with(
    source: &Vm,
    memory_mib: u64,
    target_ms: u64,
    rtt_ms: u64,
    storage: Storage,
    fault: impl Fn(&Vm, &Progress) -> Fault,
) -> Failed {
    let settings = SourceSettings {
        downtime_target: Duration::from_millis(target_ms),
        verify: true,
        ..SourceSettings::default()
    };
    migrate_over(source, memory_mib, rtt_ms, settings, storage, fault)
}

/// [`migrate_with`] with the source's settings given whole.
fn migrate_with_settings(
    source: &Vm,
    memory_mib: u64,
    settings: SourceSettings,
    storage: Storage,
    fault: impl Fn(&Vm, &Progress) -> Fault,
) -> Failed {
    migrate_over(source, memory_mib, RTT_MS, settings, storage, fault)
}

fn migrate_over(
    source: &Vm,
    memory_mib: u64,
    rtt_ms: u64,
    settings: SourceSettings,
    storage: Storage,
    fault: impl Fn(&Vm, &Progress) -> Fault,
) -> Failed {
    let destination = Vm::incoming_on("destination", memory_mib, storage);
    let link = Link::new(link_config(200, rtt_ms)).unwrap();
    let started = Instant::now();
    let fault_at = Mutex::new(None);
    let outcome = migrate_through(source, &destination, &link, &settings, |progress| {
        let mut at = fault_at.lock().unwrap();
        if at.is_some() {
            return false;
        }
        let happened = fault(&destination, progress);
        if happened == Fault::Partition {
            link.partition();
        }
        if happened != Fault::NotYet {
            *at = Some(Instant::now());
        }
        happened == Fault::CutLink
    });
    let error = outcome.source.expect_err("the migration must fail");
    let from = fault_at.into_inner().unwrap().unwrap_or(started);
    let resolved_in = outcome.source_answered_at.saturating_duration_since(from);
    let destination_error = outcome
        .destination
        .expect_err("the destination must fail too");
    assert!(
        !destination.is_running(),
        "the destination VM ran: {}",
        destination_error.chain()
    );
    Failed::new(error, resolved_in)
}

/// A destination that completes the handshake and reads the request.
fn accept_request(stream: &mut TcpStream) {
    let hello = Hello {
        role: Role::Destination,
        capabilities: Capabilities::all(),
    };
    handshake(stream, &hello).unwrap();
    let request = FrameReader::new(&*stream).recv().unwrap();
    assert!(
        matches!(request, Message::MigrationRequest(_)),
        "{request:?}"
    );
}

/// Runs the source agent against a fake destination that does `fake` with
/// the connection; returns the source's error.
fn against_fake_destination(source: &Vm, fake: impl FnOnce(TcpStream) + Send) -> Failed {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let started = Instant::now();
    thread::scope(|scope| {
        scope.spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut keep = stream.try_clone().unwrap();
            fake(stream);
            // Hold the connection until the agent hangs up.
            let mut rest = Vec::new();
            let _ = keep.read_to_end(&mut rest);
        });
        let error = migrate_source(
            &source.qemu,
            &source.ram_file,
            &source.disks(),
            TcpStream::connect(address).unwrap(),
            &SourceSettings::default(),
            &|_| {},
        )
        .expect_err("the migration must fail");
        Failed::new(error, started.elapsed())
    })
}

/// A directory for this run's disk images.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mllm-fault-matrix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sparse_image(path: &Path, mib: u64) {
    let file = std::fs::File::create(path).unwrap();
    file.set_len(mib << 20).unwrap();
}

/// A sparse disk image whose first [`DISK_DATA_MIB`] hold non-zero data.
fn disk_with_data(path: &Path) -> PathBuf {
    sparse_image(path, DISK_MIB);
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let mut block = [0u8; 4096];
    for index in 0..(DISK_DATA_MIB << 20) / 4096 {
        block[..8].copy_from_slice(&index.to_le_bytes());
        block[8..].fill(u8::try_from(index % 251).unwrap() | 1);
        file.write_all(&block).unwrap();
    }
    path.to_owned()
}

/// A tmpfs of `mib` mounted for one case (the agents run as root in CI and
/// on these machines; elsewhere the case fails saying why).
struct SmallTmpfs {
    path: PathBuf,
}

impl SmallTmpfs {
    fn mount(mib: u64) -> SmallTmpfs {
        let path = tempfile::Builder::new()
            .prefix("mllm-small-")
            .tempdir()
            .unwrap()
            .keep();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a {mib} MiB tmpfs at {} failed: this case needs root",
            path.display()
        );
        SmallTmpfs { path }
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// A failed migration: what the operator reads, what the code sees (none
/// when the peer was refused before the migration began), and how long
/// after the fault the source had its answer.
struct Failed {
    text: String,
    error: Option<SourceError>,
    resolved_in: Duration,
}

impl Failed {
    fn new(error: SourceError, resolved_in: Duration) -> Failed {
        Failed {
            text: format!("{error}: {}", error.cause.chain()),
            error: Some(error),
            resolved_in,
        }
    }

    /// The link to the peer failed before the migration began: the source
    /// VM was never touched.
    fn refused_before_migrating(text: String, resolved_in: Duration) -> Failed {
        Failed {
            text: format!("the source VM never stopped: {text}"),
            error: None,
            resolved_in,
        }
    }

    fn recovery(&self) -> Recovery {
        self.error
            .as_ref()
            .map_or(Recovery::NeverStopped, |error| error.recovery.clone())
    }

    fn contains(&self, text: &str) -> bool {
        self.text.contains(text)
    }

    /// Fails unless the error is of the kind `MigrationError::<kind>`.
    fn assert_kind(&self, kind: &str) {
        let found = match self.kind() {
            MigrationError::Link(_) => "Link",
            MigrationError::Protocol(_) => "Protocol",
            MigrationError::Refused { .. } => "Refused",
            MigrationError::PeerAborted { .. } => "PeerAborted",
            _ => "another kind",
        };
        assert_eq!(found, kind, "{self}");
    }

    fn kind(&self) -> &MigrationError {
        self.error
            .as_ref()
            .expect("a migration that began")
            .cause
            .root()
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn assert_kept_running(source: &Vm, error: &Failed, step: &str) {
    println!("{step}: {error}");
    assert!(
        error.contains("never stopped") || error.contains("was resumed"),
        "{step}: the error does not say what became of the source: {error}"
    );
    assert!(
        matches!(error.recovery(), Recovery::NeverStopped | Recovery::Resumed),
        "{step}: {:?}",
        error.recovery()
    );
    assert!(source.is_running(), "{step}: the source VM is not running");
    source.assert_alive_and_intact(step);
}
