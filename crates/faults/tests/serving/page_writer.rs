//! Faults of a `page_writer` reading pages, served through the hook.

use std::fs::{File, OpenOptions};
use std::hash::{DefaultHasher, Hasher};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use mllm_faults::{
    arm_missing, punch_holes, FaultError, Installed, MissingPages, PageIndex, PageRange,
    RamMapping, PAGE_SIZE,
};
use mllm_hook_protocol::UFFD_FEATURE_MISSING_SHMEM;
use mllm_tracker::{arm_hook, TrackerError};

use crate::support::PageWriter;

const RAM_BYTES: u64 = 16 << 20;
/// Long enough for a loaded machine, short enough that a lost fault fails
/// the test rather than hanging it.
const FAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to watch for a fault that must not come.
const QUIET: Duration = Duration::from_millis(200);

/// The agent's own mapping of the writer's RAM file, through which it
/// writes and reads pages without ever faulting.
struct AgentMapping {
    file: File,
    base: *mut u8,
    len: usize,
}

impl AgentMapping {
    fn open(path: &Path) -> AgentMapping {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("opening the RAM file");
        let len = usize::try_from(file.metadata().expect("RAM file size").len())
            .expect("the RAM file fits the address space");
        // SAFETY: a fresh shared mapping of the whole file, unmapped on drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mapping the RAM file");
        AgentMapping {
            file,
            base: base.cast(),
            len,
        }
    }

    fn page(&self, page: PageIndex) -> *mut u8 {
        let offset = usize::try_from(page).expect("a page index fits usize") * PAGE_SIZE;
        assert!(offset < self.len, "page {page} is beyond the mapping");
        // SAFETY: the page lies inside the mapping.
        unsafe { self.base.add(offset) }
    }

    fn write(&self, page: PageIndex, content: &[u8; PAGE_SIZE]) {
        // SAFETY: the page lies inside the mapping, which no Rust reference
        // covers; the writer process only reads it.
        unsafe {
            self.page(page)
                .copy_from_nonoverlapping(content.as_ptr(), PAGE_SIZE)
        }
    }

    fn read(&self, page: PageIndex) -> [u8; PAGE_SIZE] {
        let mut content = [0u8; PAGE_SIZE];
        // SAFETY: as in `write`.
        unsafe {
            self.page(page)
                .copy_to_nonoverlapping(content.as_mut_ptr(), PAGE_SIZE)
        }
        content
    }
}

impl Drop for AgentMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, no longer used.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// A page of bytes that differs with `seed`.
fn pattern(seed: u8) -> [u8; PAGE_SIZE] {
    let mut content = [0u8; PAGE_SIZE];
    let mut byte = seed;
    for slot in &mut content {
        *slot = byte;
        byte = byte.wrapping_mul(31).wrapping_add(7);
    }
    content
}

/// The checksum `page_writer`'s `read` reports for these pages.
fn checksum<'a>(pages: impl IntoIterator<Item = &'a [u8; PAGE_SIZE]>) -> u64 {
    let mut hasher = DefaultHasher::new();
    pages.into_iter().for_each(|page| hasher.write(page));
    hasher.finish()
}

fn read_command(pages: &[PageIndex]) -> String {
    let pages: Vec<String> = pages.iter().map(PageIndex::to_string).collect();
    format!("read {}", pages.join(" "))
}

fn next_fault(missing: &MissingPages) -> PageIndex {
    missing
        .wait_fault(FAULT_TIMEOUT)
        .expect("waiting for a fault")
        .expect("no fault came")
}

fn install(missing: &MissingPages, page: PageIndex, content: &[u8; PAGE_SIZE]) -> Installed {
    missing.install(page, content).expect("installing a page")
}

fn assert_no_fault(missing: &MissingPages) {
    assert_eq!(
        missing.wait_fault(QUIET).expect("waiting for a fault"),
        None
    );
}

#[test]
fn a_missing_page_faults_and_its_reader_sees_what_was_installed() {
    let mut writer = PageWriter::spawn(RAM_BYTES, true);
    let agent = AgentMapping::open(writer.file());
    let (present, stale) = (pattern(1), pattern(2));
    agent.write(1, &present);
    agent.write(2, &stale);
    punch_holes(&agent.file, &[PageRange::new(2, 3)]).expect("punching page 2");
    let missing = arm_missing(writer.socket(), writer.ram()).expect("arming");

    assert_eq!(writer.command("read 1"), checksum([&present]));
    assert_no_fault(&missing);

    for (page, seed) in [(2, 4), (7, 5)] {
        // Page 2 was punched, page 7 never written: both are missing.
        writer.send(&format!("read {page}"));
        assert_eq!(next_fault(&missing), page);
        let content = pattern(seed);
        assert_eq!(install(&missing, page, &content), Installed::Copied);
        assert_eq!(writer.count(), checksum([&content]));
    }
    assert_eq!(agent.read(2), pattern(4), "installed into the shared file");
}

#[test]
fn a_page_installed_before_anyone_touches_it_never_faults() {
    let mut writer = PageWriter::spawn(RAM_BYTES, true);
    let missing = arm_missing(writer.socket(), writer.ram()).expect("arming");
    let content = pattern(9);
    assert_eq!(install(&missing, 5, &content), Installed::Copied);
    assert_eq!(writer.command("read 5"), checksum([&content]));
    assert_no_fault(&missing);
}

#[test]
fn a_second_install_leaves_the_first_content_and_wakes_every_reader() {
    let mut writer = PageWriter::spawn(RAM_BYTES, true);
    let agent = AgentMapping::open(writer.file());
    let missing = arm_missing(writer.socket(), writer.ram()).expect("arming");
    let (first, second) = (pattern(11), pattern(12));
    assert_eq!(install(&missing, 6, &first), Installed::Copied);
    assert_eq!(install(&missing, 6, &second), Installed::AlreadyPresent);
    assert_eq!(writer.command("read 6"), checksum([&first]));

    // The race a fault's fetch runs against a background push: the reader
    // sleeps on page 8, the push lands through the agent's own mapping, and
    // only then does the fetched copy arrive.
    writer.send("read 8");
    assert_eq!(next_fault(&missing), 8);
    agent.write(8, &first);
    assert_eq!(install(&missing, 8, &second), Installed::AlreadyPresent);
    assert_eq!(writer.count(), checksum([&first]));
    assert_no_fault(&missing);
}

#[test]
fn a_hundred_faults_in_a_row_are_all_served() {
    let mut writer = PageWriter::spawn(RAM_BYTES, true);
    let missing = arm_missing(writer.socket(), writer.ram()).expect("arming");
    let pages: Vec<PageIndex> = (0..100).map(|i| 3 * i + 10).collect();
    let content = |page: PageIndex| pattern(page.to_le_bytes()[0]);

    let started = Instant::now();
    writer.send(&read_command(&pages));
    let mut faults = Vec::new();
    let mut served = Vec::new();
    while served.len() < pages.len() {
        faults.clear();
        let read = missing
            .wait_faults(FAULT_TIMEOUT, &mut faults)
            .expect("waiting for faults");
        assert!(read > 0, "no fault after {} served", served.len());
        for &page in &faults {
            assert_eq!(install(&missing, page, &content(page)), Installed::Copied);
            served.push(page);
        }
    }
    let expected = pages.iter().map(|&page| content(page));
    let expected: Vec<[u8; PAGE_SIZE]> = expected.collect();
    assert_eq!(writer.count(), checksum(&expected));
    let faulted = started.elapsed();
    assert_eq!(
        served, pages,
        "faults come in the order the reader took them"
    );

    let started = Instant::now();
    assert_eq!(writer.command(&read_command(&pages)), checksum(&expected));
    let present = started.elapsed();
    eprintln!(
        "100 pages read: {faulted:?} missing (each a fault served), {present:?} present; \
         {:?} per fault round trip",
        faulted.saturating_sub(present) / 100
    );
}

#[test]
fn reading_a_hole_through_another_mapping_makes_it_present() {
    let mut writer = PageWriter::spawn(RAM_BYTES, true);
    let agent = AgentMapping::open(writer.file());
    let missing = arm_missing(writer.socket(), writer.ram()).expect("arming");
    assert_eq!(agent.read(9), [0; PAGE_SIZE]);
    assert_eq!(writer.command("read 9"), checksum([&[0; PAGE_SIZE]]));
    assert_no_fault(&missing);
    assert_eq!(install(&missing, 9, &pattern(1)), Installed::AlreadyPresent);
}

fn refusal(writer: &PageWriter, ram: RamMapping) -> String {
    match arm_missing(writer.socket(), ram) {
        Err(FaultError::Arm(TrackerError::HookRefused { reason, .. })) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn the_hook_refuses_missing_on_bad_ranges_and_on_a_range_already_registered() {
    let writer = PageWriter::spawn(RAM_BYTES, true);
    let ram = writer.ram();
    let page = PAGE_SIZE as u64;
    for unaligned in [
        RamMapping {
            start: ram.start + 1,
            len: page,
        },
        RamMapping {
            start: ram.start,
            len: 1000,
        },
        RamMapping {
            start: ram.start,
            len: 0,
        },
    ] {
        let reason = refusal(&writer, unaligned);
        assert!(reason.contains("aligned"), "{reason}");
    }
    let unmapped = RamMapping {
        start: page,
        len: page,
    };
    let reason = refusal(&writer, unmapped);
    assert!(
        reason.contains("UFFDIO_REGISTER (missing mode)"),
        "{reason}"
    );

    // A page belongs to one userfaultfd: WP over a MISSING range is busy,
    // and so is a second MISSING while the first descriptor is held here.
    let armed = arm_missing(writer.socket(), ram).expect("arming");
    match arm_hook(writer.socket(), ram) {
        Err(TrackerError::HookRefused { reason, .. }) => {
            assert!(reason.contains("busy"), "{reason}")
        }
        other => panic!("expected WP to be refused, got {other:?}"),
    }
    let reason = refusal(&writer, ram);
    assert!(reason.contains("busy"), "{reason}");
    drop(armed);
}

#[test]
fn the_hook_hands_over_a_nonblocking_close_on_exec_missing_shmem_descriptor() {
    let writer = PageWriter::spawn(RAM_BYTES, true);
    let missing = arm_missing(writer.socket(), writer.ram()).expect("arming");
    assert_eq!(missing.features().0, UFFD_FEATURE_MISSING_SHMEM);
    // The hook's own copy, in the writer: QEMU's children must not inherit
    // it, and the agent's copy shares its non-blocking file status.
    let flags = userfaultfd_flags(writer.pid());
    let wanted = libc::O_NONBLOCK | libc::O_CLOEXEC;
    assert_eq!(flags & wanted, wanted, "flags 0o{flags:o}");
}

/// The open flags of the one userfaultfd process `pid` holds, from
/// /proc/PID/fdinfo (which shows O_CLOEXEC among them).
fn userfaultfd_flags(pid: i32) -> i32 {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("listing descriptors");
    let uffds: Vec<_> = fds
        .map(|entry| entry.expect("a descriptor").path())
        .filter(|path| {
            std::fs::read_link(path)
                .is_ok_and(|target| target.to_string_lossy().contains("userfaultfd"))
        })
        .collect();
    let [uffd] = uffds.as_slice() else {
        panic!("expected one userfaultfd in the writer, found {uffds:?}");
    };
    let number = uffd.file_name().expect("a descriptor number");
    let fdinfo =
        std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", number.to_string_lossy()))
            .expect("reading fdinfo");
    let flags = fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("flags:"))
        .expect("a flags line");
    i32::from_str_radix(flags.trim(), 8).expect("octal flags")
}
