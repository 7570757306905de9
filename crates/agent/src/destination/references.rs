//! References at the destination: a page or block the source sent as "the
//! content you hold at `from`, hashing to `H`" is copied from there only if
//! what is held there hashes to `H`. Otherwise nothing is written to its
//! target, which the source is asked to send as content (`ResendContent`,
//! before the batch's acknowledgement); the destination refuses the
//! source's stop while any such content is missing, so it never starts a
//! VM with a target left unwritten. References are valid only before the
//! source stops (`mllm_wire::conversation`, "References").

use std::collections::HashSet;
use std::sync::Arc;

use mllm_wire::{ContentHash, ContentRef, Location, ResendContent, PAGE_SIZE};

use crate::disk::TrackedDisk;
use crate::error::MigrationError;
use crate::guest_ram::GuestRam;

type Result<T, E = MigrationError> = std::result::Result<T, E>;

#[derive(Debug)]
pub(super) struct References {
    /// Until the source stops.
    allowed: bool,
    /// Targets of refused references whose content has not arrived yet.
    owed: HashSet<Location>,
    /// Refused in the batch being written.
    refused: Vec<Location>,
    copied: u64,
    refused_total: u64,
    content: Box<[u8; PAGE_SIZE]>,
}

impl References {
    pub fn new() -> References {
        References {
            allowed: true,
            owed: HashSet::new(),
            refused: Vec::new(),
            copied: 0,
            refused_total: 0,
            content: Box::new([0; PAGE_SIZE]),
        }
    }

    /// The content `reference` names for `target`, when what this side
    /// holds at its `from` hashes as the source said; `None` when it does
    /// not (the target is then owed). Fails on a reference the protocol
    /// does not allow: after the stop, or to a location that does not
    /// exist.
    pub fn resolve(
        &mut self,
        reference: &ContentRef,
        target: Location,
        ram: &GuestRam,
        disks: &[Arc<TrackedDisk>],
    ) -> Result<Option<&[u8; PAGE_SIZE]>> {
        if !self.allowed {
            return Err(MigrationError::Invalid(format!(
                "the source sent a reference for {target} after it stopped the VM"
            )));
        }
        let beyond = |what: String| {
            Err(MigrationError::Invalid(format!(
                "the source referred to {}, beyond {what}",
                reference.from
            )))
        };
        match reference.from {
            Location::Page(page) if page >= ram.pages() => {
                return beyond(format!("the {} pages of guest RAM", ram.pages()))
            }
            Location::Page(page) => ram.read_page(page, &mut self.content),
            Location::Block { disk, block } => {
                let Some(image) = disks.get(usize::from(disk)) else {
                    return beyond(format!("the VM's {} disks", disks.len()));
                };
                if block >= image.blocks() {
                    return beyond(format!("the {} blocks of disk {disk}", image.blocks()));
                }
                image.read_block(block, &mut self.content)?;
            }
        }
        if ContentHash::of(&self.content[..]) != reference.hash {
            tracing::debug!(%target, from = %reference.from, "reference refused: content differs");
            self.refused_total += 1;
            self.refused.push(target);
            self.owed.insert(target);
            return Ok(None);
        }
        self.copied += 1;
        self.owed.remove(&target);
        Ok(Some(&self.content))
    }

    /// Content for `target` arrived (data or a zero marker).
    pub fn written(&mut self, target: Location) {
        if !self.owed.is_empty() {
            self.owed.remove(&target);
        }
    }

    /// The request for the content of the references refused since the
    /// last call, if any were.
    pub fn take_refused(&mut self) -> Option<ResendContent> {
        (!self.refused.is_empty()).then(|| ResendContent {
            locations: std::mem::take(&mut self.refused),
        })
    }

    /// The source stopped the VM: it must have sent every refused content.
    pub fn source_stopped(&mut self) -> Result<()> {
        self.allowed = false;
        match self.owed.iter().next() {
            None => Ok(()),
            Some(first) => Err(MigrationError::Invalid(format!(
                "the source stopped the VM while the content of {} refused references \
                 (first: {first}) had not arrived",
                self.owed.len()
            ))),
        }
    }

    pub fn copied(&self) -> u64 {
        self.copied
    }

    pub fn refused(&self) -> u64 {
        self.refused_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guest RAM of four pages in a temporary file; page 0 holds `0x11`s.
    fn ram() -> (tempfile::NamedTempFile, GuestRam) {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(4 * PAGE_SIZE as u64).unwrap();
        let mut ram = GuestRam::open(file.path()).unwrap();
        ram.write_page(0, &[0x11; PAGE_SIZE]);
        (file, ram)
    }

    fn reference(from: Location, content: u8) -> ContentRef {
        ContentRef {
            from,
            hash: ContentHash::of(&[content; PAGE_SIZE]),
        }
    }

    #[test]
    fn a_reference_is_copied_only_when_the_content_hashes_as_the_source_said() {
        let (_file, ram) = ram();
        let mut references = References::new();
        let copied = references
            .resolve(
                &reference(Location::Page(0), 0x11),
                Location::Page(1),
                &ram,
                &[],
            )
            .unwrap();
        assert_eq!(copied, Some(&[0x11; PAGE_SIZE]));
        let refused = references
            .resolve(
                &reference(Location::Page(0), 0x22),
                Location::Page(2),
                &ram,
                &[],
            )
            .unwrap();
        assert_eq!(refused, None);
        assert_eq!((references.copied(), references.refused()), (1, 1));
        let asked = references.take_refused().unwrap();
        assert_eq!(asked.locations, [Location::Page(2)]);
        assert!(references.take_refused().is_none(), "asked once");
    }

    #[test]
    fn the_stop_is_refused_until_the_refused_content_arrived() {
        let (_file, ram) = ram();
        let mut references = References::new();
        let _ = references
            .resolve(
                &reference(Location::Page(0), 0x22),
                Location::Page(2),
                &ram,
                &[],
            )
            .unwrap();
        let mut early = References {
            owed: references.owed.clone(),
            ..References::new()
        };
        assert!(early.source_stopped().is_err());
        references.written(Location::Page(2));
        references.source_stopped().unwrap();
        let after = references.resolve(
            &reference(Location::Page(0), 0x11),
            Location::Page(1),
            &ram,
            &[],
        );
        assert!(after.is_err(), "no reference after the stop");
    }

    #[test]
    fn references_beyond_ram_or_to_a_missing_disk_are_protocol_errors() {
        let (_file, ram) = ram();
        let mut references = References::new();
        for from in [Location::Page(4), Location::Block { disk: 0, block: 0 }] {
            let error = references
                .resolve(&reference(from, 0x11), Location::Page(1), &ram, &[])
                .unwrap_err();
            assert!(error.to_string().contains("beyond"), "{error}");
        }
    }
}
