//! Byte accounting per message type, so results can split link bytes into memory,
//! device state and the rest.

use std::collections::BTreeMap;

use crate::message::MessageType;

/// What a message's bytes are spent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrafficClass {
    /// Requests, replies, progress and switchover signals.
    Control,
    /// Guest RAM: page batches, round ends, and post-copy's pending pages and requests.
    Memory,
    /// QEMU's relayed device-state stream.
    DeviceState,
    /// Test-mode digests of guest RAM and disks.
    Verification,
    /// Guest disk blocks.
    Disk,
}

/// Frames and bytes of one message type; bytes include frame header and checksum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TypeTraffic {
    pub frames: u64,
    pub bytes: u64,
}

/// Frames and bytes that crossed the link in one direction, per message type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    per_type: BTreeMap<MessageType, TypeTraffic>,
}

impl Traffic {
    pub(crate) fn record(&mut self, message_type: MessageType, frame_bytes: u64) {
        let entry = self.per_type.entry(message_type).or_default();
        entry.frames += 1;
        entry.bytes += frame_bytes;
    }

    /// Adds what crossed another connection of the same migration (a
    /// resumed post-copy's).
    pub fn add(&mut self, other: &Traffic) {
        for (&message_type, traffic) in &other.per_type {
            let entry = self.per_type.entry(message_type).or_default();
            entry.frames += traffic.frames;
            entry.bytes += traffic.bytes;
        }
    }

    pub fn of_type(&self, message_type: MessageType) -> TypeTraffic {
        self.per_type
            .get(&message_type)
            .copied()
            .unwrap_or_default()
    }

    pub fn class_bytes(&self, class: TrafficClass) -> u64 {
        self.per_type
            .iter()
            .filter(|(message_type, _)| message_type.traffic_class() == class)
            .map(|(_, traffic)| traffic.bytes)
            .sum()
    }

    pub fn total_bytes(&self) -> u64 {
        self.per_type.values().map(|traffic| traffic.bytes).sum()
    }

    /// Message types seen so far, in code order.
    pub fn iter(&self) -> impl Iterator<Item = (MessageType, TypeTraffic)> + '_ {
        self.per_type
            .iter()
            .map(|(&message_type, &traffic)| (message_type, traffic))
    }
}
