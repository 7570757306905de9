//! Finds guest RAM in QEMU's address space: the mapping of the
//! memory-backend file, read from `/proc/PID/maps`.

use std::path::Path;

use mllm_core::memory::{pages_in, PageIndex, PAGE_SIZE};

use crate::error::{MisMapping, ProcAccess, TrackerError};
use crate::procfs;

/// Guest RAM as mapped in a process: `len` bytes from address `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamMapping {
    pub start: u64,
    pub len: u64,
}

impl RamMapping {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }

    pub fn pages(&self) -> PageIndex {
        pages_in(self.len)
            .expect("find_ram_mapping checks that guest RAM is whole, numberable pages")
    }

    /// The page holding `address`, which must lie within the mapping.
    pub fn page_at(&self, address: u64) -> PageIndex {
        debug_assert!((self.start..=self.end()).contains(&address));
        PageIndex::try_from((address - self.start) / PAGE_SIZE as u64)
            .expect("an address within the mapping is within its page count")
    }
}

/// Finds where process `pid` maps `backing_file` (QEMU's
/// `memory-backend-file` `mem-path`), merging the consecutive pieces the
/// kernel may list when flags differ within the mapping.
pub fn find_ram_mapping(pid: i32, backing_file: &Path) -> Result<RamMapping, TrackerError> {
    // The kernel lists canonical paths; the caller may hold another spelling.
    let backing_file =
        std::fs::canonicalize(backing_file).map_err(|source| TrackerError::RamFile {
            path: backing_file.to_owned(),
            source,
        })?;
    let maps_path = procfs::path(pid, "maps");
    let maps = std::fs::read_to_string(&maps_path)
        .map_err(TrackerError::proc(ProcAccess::Read, &maps_path))?;
    ram_mapping_in(pid, &maps, &backing_file)
}

struct MapsLine<'a> {
    start: u64,
    end: u64,
    shared: bool,
    offset: u64,
    path: &'a str,
}

/// Finds `backing_file` in `maps`, the content of process `pid`'s
/// `/proc/PID/maps`.
fn ram_mapping_in(pid: i32, maps: &str, backing_file: &Path) -> Result<RamMapping, TrackerError> {
    let mis_mapped = |problem| TrackerError::RamMisMapped {
        pid,
        file: backing_file.to_owned(),
        problem,
    };
    let mut pieces = Vec::new();
    for line in maps.lines() {
        let piece = parse_line(line).ok_or_else(|| TrackerError::MalformedMaps {
            pid,
            line: line.to_owned(),
        })?;
        if Path::new(piece.path) == backing_file {
            pieces.push(piece);
        }
    }
    let Some(first) = pieces.first() else {
        return Err(TrackerError::RamNotMapped {
            pid,
            file: backing_file.to_owned(),
        });
    };
    let mut ram = RamMapping {
        start: first.start,
        len: 0,
    };
    for piece in &pieces {
        if !piece.shared {
            return Err(mis_mapped(MisMapping::Private));
        }
        if piece.start != ram.end() || piece.offset != first.offset + ram.len {
            return Err(mis_mapped(MisMapping::MoreThanOnce {
                first: ram.start,
                second: piece.start,
            }));
        }
        ram.len += piece.end - piece.start;
    }
    if pages_in(ram.len).is_none() {
        return Err(mis_mapped(MisMapping::NotWholePages { len: ram.len }));
    }
    Ok(ram)
}

/// Parses `start-end perms offset dev inode [path]`.
fn parse_line(line: &str) -> Option<MapsLine<'_>> {
    let mut rest = line;
    let mut field = || {
        let trimmed = rest.trim_start();
        let (word, tail) = trimmed.split_at(trimmed.find(' ').unwrap_or(trimmed.len()));
        rest = tail;
        word
    };
    let (start, end) = field().split_once('-')?;
    let perms = field();
    let offset = field();
    let _device = field();
    let _inode = field();
    Some(MapsLine {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        shared: perms.ends_with('s'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        path: rest.trim_start(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: i32 = 42;
    const RAM_FILE: &str = "/dev/shm/my ram";
    const MAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1234                       /usr/bin/qemu-system-x86_64
7f0000000000-7f0000200000 rw-s 00000000 00:1a 42                         /dev/shm/my ram
7f0000200000-7f0008000000 rw-s 00200000 00:1a 42                         /dev/shm/my ram
7f0008000000-7f0008001000 ---p 00000000 00:00 0 
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn merges_consecutive_pieces_of_the_backing_file() {
        let ram = ram_mapping_in(PID, MAPS, Path::new(RAM_FILE)).unwrap();
        assert_eq!(
            ram,
            RamMapping {
                start: 0x7f00_0000_0000,
                len: 128 << 20
            }
        );
        assert_eq!(ram.pages(), 32768);
    }

    #[test]
    fn refuses_missing_private_and_repeated_mappings() {
        let missing = ram_mapping_in(PID, MAPS, Path::new("/dev/shm/other")).unwrap_err();
        assert!(
            matches!(missing, TrackerError::RamNotMapped { pid: PID, .. }),
            "{missing:?}"
        );
        assert!(missing.to_string().contains("is not mapped"), "{missing}");

        let mis_mapping = |maps: &str| match ram_mapping_in(PID, maps, Path::new(RAM_FILE)) {
            Err(TrackerError::RamMisMapped { problem, .. }) => problem,
            other => panic!("expected a mis-mapping, got {other:?}"),
        };
        let private = MAPS.replace("rw-s 00200000", "rw-p 00200000");
        assert_eq!(mis_mapping(&private), MisMapping::Private);
        let twice = MAPS.replace("7f0000200000-7f0008000000", "7f1000200000-7f1008000000");
        assert_eq!(
            mis_mapping(&twice),
            MisMapping::MoreThanOnce {
                first: 0x7f00_0000_0000,
                second: 0x7f10_0020_0000
            }
        );
        let error = ram_mapping_in(PID, &twice, Path::new(RAM_FILE)).unwrap_err();
        assert!(error.to_string().contains("more than once"), "{error}");
    }

    #[test]
    fn a_malformed_line_is_quoted() {
        let maps = format!("{MAPS}garbage\n");
        let error = ram_mapping_in(PID, &maps, Path::new(RAM_FILE)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "guest RAM of process 42 in /proc/42/maps: malformed maps line \"garbage\""
        );
    }
}
