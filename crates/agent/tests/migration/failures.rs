//! Whatever fails before the destination runs, the source VM keeps (or gets
//! back) its guest, memory intact, and the error names the cause; a cut
//! after the hand-over leaves the guest running on the destination alone.
//!
//! Booting a TCG guest takes seconds, so one source guest lives through
//! every failure in turn: each step also shows that a failed migration
//! leaves the source fit for the next attempt (the hook re-arms).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use mllm_agent::{
    migrate_source, GuestRam, MigrationError, Phase, Progress, Recovery, SourceError,
    SourceSettings,
};
use mllm_link::Link;
use mllm_wire::{
    handshake, Capabilities, DestinationRunning, FrameReader, FrameWriter, Hello, Message,
    MigrationAccept, Role,
};

use crate::protocol::{accept_frame_with_bad_checksum, hello_of_version};
use crate::support::{link_config, migrate, migrate_through, one_vm_pair_at_a_time, Vm, GUEST_MIB};

/// The link of every step unless a step needs a longer trip.
const RTT_MS: u64 = 20;

#[test]
fn the_source_survives_every_failure_before_the_destination_runs() {
    let _one_at_a_time = one_vm_pair_at_a_time();
    let source = Vm::boot_memload("source");

    let error = against_fake_destination(&source, |mut stream| {
        stream.write_all(&hello_of_version(7)).unwrap();
    });
    assert!(error.contains("protocol version mismatch"), "{error}");
    assert!(
        matches!(error.kind(), MigrationError::Protocol(_)),
        "{error}"
    );
    assert_kept_running(&source, &error, "peer of another protocol version");

    let error = against_fake_destination(&source, |mut stream| {
        let hello = Hello {
            role: Role::Destination,
            capabilities: Capabilities::all(),
        };
        handshake(&mut stream, &hello).unwrap();
        let request = FrameReader::new(&stream).recv().unwrap();
        assert!(
            matches!(request, Message::MigrationRequest(_)),
            "{request:?}"
        );
        stream.write_all(&accept_frame_with_bad_checksum()).unwrap();
    });
    assert!(error.contains("checksum mismatch"), "{error}");
    assert_kept_running(&source, &error, "frame with a bad checksum");

    // A destination that claims to run the VM before it got any of it.
    let error = against_fake_destination(&source, |stream| {
        let mut stream = stream;
        let hello = Hello {
            role: Role::Destination,
            capabilities: Capabilities::all(),
        };
        handshake(&mut stream, &hello).unwrap();
        FrameReader::new(&stream).recv().unwrap();
        let mut writer = FrameWriter::new(&stream);
        writer.send(&MigrationAccept.into()).unwrap();
        writer.send(&DestinationRunning.into()).unwrap();
    });
    assert!(
        error.contains("the destination sent DestinationRunning") && error.contains("in pre-copy"),
        "{error}"
    );
    assert!(
        matches!(error.kind(), MigrationError::Protocol(_)),
        "{error}"
    );
    assert_kept_running(&source, &error, "destination running out of order");

    let error = migrate_to_new_destination(&source, GUEST_MIB / 2, 1000, |_| false);
    assert!(error.contains("RAM size differs"), "{error}");
    assert!(
        error.contains("256 MiB") && error.contains("128 MiB"),
        "{error}"
    );
    assert!(
        matches!(error.kind(), MigrationError::Refused { .. }),
        "{error}"
    );
    assert_kept_running(&source, &error, "destination with less RAM");

    let error = migrate_to_new_destination(&source, GUEST_MIB, 1000, |p| {
        p.phase == Phase::Precopy && p.round == 1 && p.bytes_acknowledged > 1 << 20
    });
    assert!(matches!(error.kind(), MigrationError::Link(_)), "{error}");
    assert_kept_running(&source, &error, "cut in round 1");

    // A target nothing meets keeps pre-copy going round after round.
    let error = migrate_to_new_destination(&source, GUEST_MIB, 1, |p| {
        p.phase == Phase::Precopy && p.round >= 3
    });
    assert_kept_running(&source, &error, "cut in round 3");

    let error =
        migrate_to_new_destination(&source, GUEST_MIB, 1000, |p| p.phase == Phase::DeviceState);
    assert!(error.contains("was resumed"), "{error}");
    assert_kept_running(&source, &error, "cut during the device-state transfer");

    // The destination's QEMU dies after the source handed the VM over, before
    // the hand-over arrives (a 200 ms one-way trip): the destination tells
    // the source it will not run the VM, and the source takes it back.
    let error = migrate_with(&source, GUEST_MIB, 1000, 400, |destination, p| {
        if p.phase == Phase::WaitingForDestination {
            kill(destination);
        }
        false
    });
    assert!(
        matches!(error.kind(), MigrationError::PeerAborted { .. }),
        "{error}"
    );
    assert_kept_running(
        &source,
        &error,
        "destination QEMU killed after the hand-over",
    );

    let error = migrate_with(&source, GUEST_MIB, 1, RTT_MS, |destination, p| {
        if p.phase == Phase::Precopy && p.round >= 2 {
            kill(destination);
        }
        false
    });
    assert!(error.contains("destination QEMU failed"), "{error}");
    assert!(
        matches!(error.kind(), MigrationError::PeerAborted { .. }),
        "{error}"
    );
    assert_kept_running(&source, &error, "destination QEMU killed");

    let error = migrate_with(&source, GUEST_MIB, 1000, RTT_MS, |destination, p| {
        if p.phase == Phase::FinalRound {
            corrupt_every_1024th_page(destination);
        }
        false
    });
    assert!(error.contains("RAM DIGEST MISMATCH"), "{error}");
    assert!(error.contains("was resumed"), "{error}");
    assert_kept_running(&source, &error, "destination memory corrupted");
}

/// A cut after the hand-over arrived: the destination runs the VM, the
/// source cannot tell and stays paused. Exactly one guest runs.
#[test]
fn a_cut_after_the_hand_over_leaves_the_guest_running_on_the_destination_alone() {
    let _one_at_a_time = one_vm_pair_at_a_time();
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
    let outcome = thread::scope(|scope| {
        scope.spawn(|| {
            while !finished.load(Ordering::Relaxed) {
                if destination.is_running() {
                    link.cut();
                    return;
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        let outcome = migrate_through(&source, &destination, &link, &settings, |_| false);
        finished.store(true, Ordering::Relaxed);
        outcome
    });
    let error = Failed::from(outcome.source.expect_err("the source cannot know"));
    println!("source: {error}");
    assert_eq!(error.error.recovery, Recovery::Undecided, "{error}");
    assert!(error.contains("never confirmed it runs there"), "{error}");
    assert!(matches!(error.kind(), MigrationError::Link(_)), "{error}");
    let received = outcome
        .destination
        .expect("the destination runs the VM it was handed");
    assert!(received.verified, "test mode compares the RAM digests");
    assert!(!source.is_running(), "the source VM resumed");
    assert!(destination.is_running(), "the destination VM does not run");
    destination.assert_alive_and_intact("destination after a cut after the hand-over");
    assert!(!source.is_running(), "the source VM resumed later");
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
    migrate_with(source, memory_mib, target_ms, RTT_MS, |_, progress| {
        cut_when(progress)
    })
}

/// Like [`migrate_to_new_destination`], `on_progress` also given the destination.
fn migrate_with(
    source: &Vm,
    memory_mib: u64,
    target_ms: u64,
    rtt_ms: u64,
    on_progress: impl Fn(&Vm, &Progress) -> bool,
) -> Failed {
    let destination = Vm::incoming("destination", memory_mib);
    let settings = SourceSettings {
        downtime_target: Duration::from_millis(target_ms),
        verify: true,
        ..SourceSettings::default()
    };
    let outcome = migrate(
        source,
        &destination,
        link_config(200, rtt_ms),
        &settings,
        |progress| on_progress(&destination, progress),
    );
    let error = outcome.source.expect_err("the migration must fail");
    let destination_error = outcome
        .destination
        .expect_err("the destination must fail too");
    assert!(
        !destination.is_running(),
        "the destination VM ran: {}",
        destination_error.chain()
    );
    Failed::from(error)
}

/// Runs the source agent against a fake destination that does `fake` with
/// the connection; returns the source's error.
fn against_fake_destination(source: &Vm, fake: impl FnOnce(TcpStream) + Send) -> Failed {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
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
            &[],
            TcpStream::connect(address).unwrap(),
            &SourceSettings::default(),
            &|_| {},
        )
        .expect_err("the migration must fail");
        Failed::from(error)
    })
}

/// A failed migration: what the operator reads, and what the code sees.
struct Failed {
    text: String,
    error: SourceError,
}

impl From<SourceError> for Failed {
    fn from(error: SourceError) -> Failed {
        Failed {
            text: format!("{error}: {}", error.cause.chain()),
            error,
        }
    }
}

impl Failed {
    fn contains(&self, text: &str) -> bool {
        self.text.contains(text)
    }

    fn kind(&self) -> &MigrationError {
        self.error.cause.root()
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
        matches!(
            error.error.recovery,
            Recovery::NeverStopped | Recovery::Resumed
        ),
        "{step}: {:?}",
        error.error.recovery
    );
    assert!(source.is_running(), "{step}: the source VM is not running");
    source.assert_alive_and_intact(step);
}
