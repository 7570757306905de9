//! Finds guest RAM in QEMU's address space: the mapping of the
//! memory-backend file, read from `/proc/PID/maps`.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use mllm_core::memory::{pages_in, PageIndex, PAGE_SIZE};

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
pub fn find_ram_mapping(pid: i32, backing_file: &Path) -> Result<RamMapping> {
    // The kernel lists canonical paths; the caller may hold another spelling.
    let backing_file = std::fs::canonicalize(backing_file)
        .with_context(|| format!("guest RAM file {}", backing_file.display()))?;
    let maps_path = PathBuf::from(format!("/proc/{pid}/maps"));
    let maps = std::fs::read_to_string(&maps_path)
        .with_context(|| format!("reading {}", maps_path.display()))?;
    ram_mapping_in(&maps, &backing_file)
        .with_context(|| format!("guest RAM of process {pid} in {}", maps_path.display()))
}

struct MapsLine<'a> {
    start: u64,
    end: u64,
    shared: bool,
    offset: u64,
    path: &'a str,
}

fn ram_mapping_in(maps: &str, backing_file: &Path) -> Result<RamMapping> {
    let wanted = backing_file
        .to_str()
        .context("guest RAM file path is not UTF-8")?;
    let mut pieces = Vec::new();
    for line in maps.lines() {
        let piece = parse_line(line).with_context(|| format!("malformed maps line {line:?}"))?;
        if piece.path == wanted {
            pieces.push(piece);
        }
    }
    let Some(first) = pieces.first() else {
        bail!("{wanted} is not mapped");
    };
    let mut ram = RamMapping {
        start: first.start,
        len: 0,
    };
    for piece in &pieces {
        ensure!(
            piece.shared,
            "{wanted} is mapped private (share=off): guest writes never reach the file"
        );
        ensure!(
            piece.start == ram.end() && piece.offset == first.offset + ram.len,
            "{wanted} is mapped more than once (at 0x{:x} and 0x{:x})",
            ram.start,
            piece.start
        );
        ram.len += piece.end - piece.start;
    }
    ensure!(
        pages_in(ram.len).is_some(),
        "{wanted} is mapped over {} bytes: not a whole number of {PAGE_SIZE}-byte pages, \
         or more than {} of them",
        ram.len,
        PageIndex::MAX
    );
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

    const MAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1234                       /usr/bin/qemu-system-x86_64
7f0000000000-7f0000200000 rw-s 00000000 00:1a 42                         /dev/shm/my ram
7f0000200000-7f0008000000 rw-s 00200000 00:1a 42                         /dev/shm/my ram
7f0008000000-7f0008001000 ---p 00000000 00:00 0 
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn merges_consecutive_pieces_of_the_backing_file() {
        let ram = ram_mapping_in(MAPS, Path::new("/dev/shm/my ram")).unwrap();
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
        let missing = ram_mapping_in(MAPS, Path::new("/dev/shm/other")).unwrap_err();
        assert!(missing.to_string().contains("not mapped"), "{missing}");

        let private = MAPS.replace("rw-s 00200000", "rw-p 00200000");
        let error = ram_mapping_in(&private, Path::new("/dev/shm/my ram")).unwrap_err();
        assert!(error.to_string().contains("private"), "{error}");

        let twice = MAPS.replace("7f0000200000-7f0008000000", "7f1000200000-7f1008000000");
        let error = ram_mapping_in(&twice, Path::new("/dev/shm/my ram")).unwrap_err();
        assert!(error.to_string().contains("more than once"), "{error}");
    }
}
