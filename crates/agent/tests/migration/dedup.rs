//! De-duplication with real guests: content the destination already holds
//! travels as references, and a reference the destination cannot honour
//! falls back to content without a wrong byte written.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mllm_agent::{
    DedupReport, DedupSettings, DestinationReport, GuestRam, SourceReport, SourceSettings,
    TrackedDisk,
};
use mllm_wire::PAGE_SIZE;
use rand::{RngCore, SeedableRng};

use crate::support::{
    link_config, migrate, one_vm_pair_at_a_time, Storage, TestDisk, Vm, GUEST_MIB,
};

/// A disk of 16 MiB for the cross-space test.
const DISK_BYTES: u64 = 16 << 20;

/// Moves a memload guest with `settings` (digests compared), the source
/// optionally with a disk, which the destination has too, filled by
/// `destination_holds`; checks that both sides succeeded, that the digests
/// matched and that the guest runs on intact at the destination.
fn move_and_check(
    settings: &SourceSettings,
    disk: Option<TestDisk<'_>>,
    destination_holds: &dyn Fn(&TrackedDisk),
    prepare: &dyn Fn(&Vm),
) -> (SourceReport, DestinationReport, DedupReport) {
    let destination_disk = disk.as_ref().map(|disk| TestDisk {
        bytes: disk.bytes,
        fill: destination_holds,
    });
    let source = Vm::boot_memload_with("source", disk);
    prepare(&source);
    let destination = Vm::incoming_on(
        "destination",
        GUEST_MIB,
        Storage {
            new_disk: destination_disk,
            ..Storage::default()
        },
    );
    let outcome = migrate(
        &source,
        &destination,
        link_config(200, 20),
        settings,
        |_| false,
    );
    let report = outcome.source.expect("source side of the migration");
    let received = outcome
        .destination
        .expect("destination side of the migration");
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    println!("{}", serde_json::to_string_pretty(&received).unwrap());
    assert!(report.verified && received.verified, "digests not compared");
    assert!(destination.is_running());
    destination.assert_alive_and_intact("after a de-duplicated migration");
    let dedup = report.dedup.clone().expect("a de-duplication report");
    // Every reference the source counted was either copied or refused
    // (and then sent as content) by the destination.
    assert_eq!(
        received.references_copied + received.references_refused,
        dedup.references
    );
    assert_eq!(received.references_refused, dedup.fallbacks);
    (report, received, dedup)
}

#[test]
fn repeated_content_travels_as_references_and_the_digests_still_match() {
    let _one_at_a_time = one_vm_pair_at_a_time();
    let settings = SourceSettings {
        verify: true,
        ..SourceSettings::default()
    };
    let (_, _, dedup) = move_and_check(&settings, None, &|_| {}, &|_| {});
    // A booted guest holds the same content more than once (its initramfs
    // archive and the files unpacked from it, pages re-sent unchanged).
    assert!(dedup.references > 100, "{dedup:?}");
    assert_eq!(dedup.fallbacks, 0, "nothing forced a disagreement");
    assert!(dedup.bytes_saved > 100 * 4000, "{dedup:?}");
    assert!(dedup.cpu_seconds_per_gib > 0.0);
}

#[test]
fn refused_references_fall_back_to_content_and_never_write_wrong_data() {
    let _one_at_a_time = one_vm_pair_at_a_time();
    // Every third reference names a location the destination holds other
    // content at: copied blindly, it would corrupt the guest, which the
    // digests (and the guest's own check) would catch.
    let settings = SourceSettings {
        verify: true,
        dedup: DedupSettings {
            misdirect_every: NonZeroU32::new(3),
            ..DedupSettings::default()
        },
        ..SourceSettings::default()
    };
    let (_, received, dedup) = move_and_check(&settings, None, &|_| {}, &|_| {});
    assert!(dedup.fallbacks > 10, "{dedup:?}");
    assert!(received.references_copied > 0, "{received:?}");
}

/// Blocks of the source's disk that get copies of guest pages.
const COPIED_PAGES: u32 = 64;
/// Where on the disk the copies go.
const FIRST_COPY_BLOCK: u32 = 1024;

/// Copies up to [`COPIED_PAGES`] non-zero pages of the running guest that
/// stay unchanged over half a second onto the disk, behind the guest's
/// back, as its page cache would hold blocks it read: a memory page equal
/// to a disk block, whichever of the two moves first. Returns how many.
fn copy_stable_pages_to_disk(vm: &Vm) -> u32 {
    let ram = GuestRam::open(&vm.ram_file).unwrap();
    let disk = &vm.disks()[0];
    let mut first = Box::new([0u8; PAGE_SIZE]);
    let mut again = Box::new([0u8; PAGE_SIZE]);
    let candidates: Vec<(u32, Box<[u8; PAGE_SIZE]>)> = (0..ram.pages())
        .step_by(97)
        .filter_map(|page| {
            ram.read_page(page, &mut first);
            (first.iter().any(|&byte| byte != first[0])).then(|| (page, first.clone()))
        })
        .take(4 * COPIED_PAGES as usize)
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut copied = 0;
    for (page, content) in candidates {
        ram.read_page(page, &mut again);
        if again == content && copied < COPIED_PAGES {
            disk.write_block(FIRST_COPY_BLOCK + copied, &content)
                .unwrap();
            copied += 1;
        }
    }
    copied
}

#[test]
fn a_memory_page_equal_to_a_disk_block_travels_as_a_reference() {
    let _one_at_a_time = one_vm_pair_at_a_time();
    let settings = SourceSettings {
        verify: true,
        ..SourceSettings::default()
    };
    let disk = TestDisk {
        bytes: DISK_BYTES,
        fill: &|_| {},
    };
    let copied = AtomicU32::new(0);
    let (report, _, dedup) = move_and_check(&settings, Some(disk), &|_| {}, &|source| {
        copied.store(copy_stable_pages_to_disk(source), Ordering::Relaxed);
    });
    let copied = copied.into_inner();
    assert!(
        copied > COPIED_PAGES / 2,
        "only {copied} stable pages found"
    );
    assert_eq!(
        report.blocks_sent,
        u64::from(copied),
        "the used blocks move once"
    );
    assert!(dedup.cross_space > 0, "{dedup:?}");
}

/// Blocks of the test data a VM's disk holds on both hosts.
const DATA_BLOCKS: u32 = 1024;
/// Of those, the ones the guest rewrote since it left the destination.
const CHANGED_BLOCKS: u32 = 16;
/// Blocks the destination's old image holds that the source's does not.
const STALE_BLOCKS: std::ops::Range<u32> = 3000..3100;

/// Incompressible content, different for every (block, version).
fn block_content(block: u32, version: u64) -> [u8; PAGE_SIZE] {
    let mut content = [0u8; PAGE_SIZE];
    rand::rngs::StdRng::seed_from_u64(u64::from(block) << 8 | version).fill_bytes(&mut content);
    content
}

/// A VM moving back to a host that kept its old disk image: the source
/// refers to what that image still holds instead of sending it, sends the
/// blocks that changed, and the blocks only the old image had read as
/// zeros afterwards (the disk digest compares every block).
#[test]
fn a_disk_the_destination_already_holds_moves_as_references() {
    let _one_at_a_time = one_vm_pair_at_a_time();
    let settings = SourceSettings {
        verify: true,
        ..SourceSettings::default()
    };
    let disk = TestDisk {
        bytes: DISK_BYTES,
        fill: &|disk| {
            for block in 0..DATA_BLOCKS {
                let version = u64::from(block < CHANGED_BLOCKS);
                disk.write_block(block, &block_content(block, version))
                    .unwrap();
            }
        },
    };
    let old_image = |disk: &TrackedDisk| {
        for block in (0..DATA_BLOCKS).chain(STALE_BLOCKS) {
            disk.write_block(block, &block_content(block, 0)).unwrap();
        }
    };
    let (report, received, dedup) = move_and_check(&settings, Some(disk), &old_image, &|_| {});
    let unchanged = u64::from(DATA_BLOCKS - CHANGED_BLOCKS);
    assert!(
        received.references_copied >= unchanged,
        "{received:?} {dedup:?}"
    );
    assert_eq!(dedup.fallbacks, 0, "{dedup:?}");
    // The changed blocks and the guest's own writes as content, compressed
    // or not; 4 MiB of incompressible data if everything had moved.
    let full = u64::from(DATA_BLOCKS) * PAGE_SIZE as u64;
    assert!(
        report.disk_bytes < full / 8,
        "{} disk bytes on the link for {full} bytes of data",
        report.disk_bytes
    );
}
