//! Self-checking records: the layout of every memory page and disk block the
//! workloads write.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "MLLMREC1"
//!      8     8  index of the record (page or block number), little-endian
//!     16     8  version: how often the record has been rewritten, little-endian
//!     24     8  xxh3-64 of the payload, little-endian
//!     32     …  payload: random bytes (the random fraction), then zeros
//! ```
//!
//! The payload is a pure function of (seed, index, version), so a reader knows
//! the exact bytes a record must hold. Together with a version table kept
//! elsewhere this catches a torn or damaged record (checksum, content), a
//! record copied to the wrong place (index), and — the failure a migration
//! bug typically causes — an intact but stale record (version).

use std::fmt;

use xxhash_rust::xxh3::xxh3_64;

use crate::convert::saturating_usize;
use crate::rng::SplitMix64;

pub const HEADER_LEN: usize = 32;
const MAGIC: &[u8; 8] = b"MLLMREC1";

/// How records of one workload are laid out and filled.
#[derive(Debug, Clone)]
pub struct RecordFormat {
    size: usize,
    seed: u64,
    /// Bytes of random payload; a multiple of 8 so it is filled word by word.
    random_len: usize,
}

/// Why a record failed its check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Corruption {
    /// No record header: zeroed or foreign data.
    BadMagic,
    WrongIndex {
        found: u64,
    },
    WrongVersion {
        found: u64,
        expected: u64,
    },
    /// The payload does not match the checksum stored with it.
    BadChecksum,
    /// Self-consistent, but not the bytes this (index, version) must hold.
    WrongContent {
        offset: usize,
    },
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corruption::BadMagic => write!(f, "no record header (zeroed or foreign data)"),
            Corruption::WrongIndex { found } => write!(f, "holds record {found}"),
            Corruption::WrongVersion { found, expected } => {
                write!(
                    f,
                    "version {found}, expected {expected} (stale or lost write)"
                )
            }
            Corruption::BadChecksum => write!(f, "payload checksum mismatch"),
            Corruption::WrongContent { offset } => {
                write!(f, "content differs at byte {offset}")
            }
        }
    }
}

impl RecordFormat {
    /// `size` bytes per record (more than the header, a multiple of 8);
    /// `random_fraction` in [0, 1] is the share of the payload that is random
    /// (incompressible); the rest is zeros. 0 gives an all-zero payload.
    pub fn new(size: usize, seed: u64, random_fraction: f64) -> Self {
        assert!(
            size > HEADER_LEN && size.is_multiple_of(8),
            "bad record size {size}"
        );
        assert!((0.0..=1.0).contains(&random_fraction));
        let payload_len = size - HEADER_LEN;
        let random_len = saturating_usize(payload_len as f64 * random_fraction) / 8 * 8;
        RecordFormat {
            size,
            seed,
            random_len,
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Overwrites `record` with version `version` of record `index`.
    pub fn fill(&self, record: &mut [u8], index: u64, version: u64) {
        assert_eq!(record.len(), self.size);
        let (header, payload) = record.split_at_mut(HEADER_LEN);
        let (random, zeros) = payload.split_at_mut(self.random_len);
        let mut rng = SplitMix64::for_item(self.seed, index, version);
        for word in random.chunks_exact_mut(8) {
            word.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        zeros.fill(0);
        header[0..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&index.to_le_bytes());
        header[16..24].copy_from_slice(&version.to_le_bytes());
        header[24..32].copy_from_slice(&xxh3_64(payload).to_le_bytes());
    }

    /// Checks that `record` is exactly version `version` of record `index`.
    pub fn check(&self, record: &[u8], index: u64, version: u64) -> Result<(), Corruption> {
        assert_eq!(record.len(), self.size);
        let (header, payload) = record.split_at(HEADER_LEN);
        if &header[0..8] != MAGIC {
            return Err(Corruption::BadMagic);
        }
        let found_index = le_u64(&header[8..16]);
        if found_index != index {
            return Err(Corruption::WrongIndex { found: found_index });
        }
        let found_version = le_u64(&header[16..24]);
        if found_version != version {
            return Err(Corruption::WrongVersion {
                found: found_version,
                expected: version,
            });
        }
        if le_u64(&header[24..32]) != xxh3_64(payload) {
            return Err(Corruption::BadChecksum);
        }
        self.check_content(payload, index, version)
    }

    /// Compares the payload with its regenerated bytes without building a copy.
    fn check_content(&self, payload: &[u8], index: u64, version: u64) -> Result<(), Corruption> {
        let (random, zeros) = payload.split_at(self.random_len);
        let mut rng = SplitMix64::for_item(self.seed, index, version);
        for (word_index, word) in random.chunks_exact(8).enumerate() {
            let want = rng.next_u64().to_le_bytes();
            if word != want {
                let byte = word
                    .iter()
                    .zip(&want)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(Corruption::WrongContent {
                    offset: HEADER_LEN + word_index * 8 + byte,
                });
            }
        }
        match zeros.iter().position(|&b| b != 0) {
            Some(at) => Err(Corruption::WrongContent {
                offset: HEADER_LEN + self.random_len + at,
            }),
            None => Ok(()),
        }
    }
}

fn le_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("header fields are 8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(format: &RecordFormat, index: u64, version: u64) -> Vec<u8> {
        let mut record = vec![0xAA; format.size()];
        format.fill(&mut record, index, version);
        record
    }

    #[test]
    fn a_fresh_record_passes_its_check() {
        let format = RecordFormat::new(4096, 1, 0.5);
        let record = filled(&format, 7, 3);
        assert_eq!(format.check(&record, 7, 3), Ok(()));
        assert_eq!(&record[..8], b"MLLMREC1");
    }

    #[test]
    fn generation_is_deterministic_and_version_dependent() {
        let format = RecordFormat::new(4096, 1, 1.0);
        assert_eq!(filled(&format, 7, 3), filled(&format, 7, 3));
        assert_ne!(filled(&format, 7, 3)[32..], filled(&format, 7, 4)[32..]);
        let other_seed = RecordFormat::new(4096, 2, 1.0);
        assert_ne!(filled(&format, 7, 3)[32..], filled(&other_seed, 7, 3)[32..]);
    }

    #[test]
    fn random_fraction_sets_the_random_share() {
        let zeros = |random_fraction: f64| {
            let format = RecordFormat::new(4096, 1, random_fraction);
            filled(&format, 0, 0)[HEADER_LEN..]
                .iter()
                .filter(|&&b| b == 0)
                .count()
        };
        let payload = 4096 - HEADER_LEN;
        assert!(zeros(1.0) < 64, "random bytes are rarely zero");
        assert_eq!(zeros(0.0), payload);
        let half = zeros(0.5);
        assert!(half >= payload / 2 && half < payload / 2 + 64, "{half}");
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let format = RecordFormat::new(512, 9, 0.3);
        let record = filled(&format, 4, 2);
        for at in 0..record.len() {
            let mut damaged = record.clone();
            damaged[at] ^= 0x01;
            assert!(
                format.check(&damaged, 4, 2).is_err(),
                "flip at byte {at} went unnoticed"
            );
        }
    }

    #[test]
    fn payload_damage_is_reported_as_a_checksum_mismatch() {
        let format = RecordFormat::new(4096, 1, 0.5);
        let mut record = filled(&format, 0, 0);
        record[100] ^= 0x80;
        assert_eq!(format.check(&record, 0, 0), Err(Corruption::BadChecksum));
    }

    #[test]
    fn a_self_consistent_record_with_wrong_content_is_caught() {
        let format = RecordFormat::new(4096, 1, 0.5);
        let mut record = filled(&format, 0, 0);
        record[4000] = 1;
        let checksum = xxh3_64(&record[HEADER_LEN..]);
        record[24..32].copy_from_slice(&checksum.to_le_bytes());
        assert_eq!(
            format.check(&record, 0, 0),
            Err(Corruption::WrongContent { offset: 4000 })
        );
    }

    #[test]
    fn stale_misplaced_and_zeroed_records_are_named() {
        let format = RecordFormat::new(4096, 1, 0.5);
        let record = filled(&format, 5, 1);
        assert_eq!(
            format.check(&record, 5, 2),
            Err(Corruption::WrongVersion {
                found: 1,
                expected: 2
            })
        );
        assert_eq!(
            format.check(&record, 6, 1),
            Err(Corruption::WrongIndex { found: 5 })
        );
        assert_eq!(
            format.check(&vec![0; 4096], 5, 1),
            Err(Corruption::BadMagic)
        );
    }
}
