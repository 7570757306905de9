//! Mutations of valid encodings, for the hostile-input property tests of the
//! decoders fed from outside (each crate's `tests/hostile_input.rs` includes
//! this file): what a corrupting link, a buggy peer or a hostile one makes of
//! bytes that were valid.

use proptest::prelude::*;
use proptest::sample::Index;

#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit(Index, u8),
    /// A type code, tag or flag byte replaced.
    SetByte(Index, u8),
    /// Four bytes replaced by a little-endian number: fixed-size length and
    /// count fields.
    SetU32(Index, u32),
    /// Bytes replaced by a LEB128 varint: postcard lengths, trace counts.
    SetVarint(Index, u64),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    /// A piece of the input copied elsewhere into it: fields, frames or
    /// lines out of place.
    Splice {
        from: Index,
        len: usize,
        to: Index,
    },
}

/// Numbers where length and count checks go wrong.
fn boundary_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(127),
        Just(128),
        Just(4096),
        Just(u64::from(u32::MAX)),
        Just(u64::from(u32::MAX) + 1),
        Just(u64::MAX),
        any::<u64>(),
        0..1u64 << 24,
    ]
}

fn boundary_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(u32::MAX),
        Just(8 << 20),
        Just((8 << 20) + 1),
        any::<u32>(),
        0..1u32 << 16,
    ]
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte(at, byte)),
        (any::<Index>(), boundary_u32()).prop_map(|(at, value)| Mutation::SetU32(at, value)),
        (any::<Index>(), boundary_u64()).prop_map(|(at, value)| Mutation::SetVarint(at, value)),
        any::<Index>().prop_map(Mutation::Truncate),
        (
            any::<Index>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<Index>(), 1..64usize).prop_map(|(at, len)| Mutation::Remove(at, len)),
        (any::<Index>(), 1..256usize, any::<Index>())
            .prop_map(|(from, len, to)| Mutation::Splice { from, len, to }),
    ]
}

/// One to four mutations, applied in order.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..=4)
}

pub fn apply(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for mutation in mutations {
        // `Index` cannot point into nothing; inserting is the only mutation
        // of an empty input.
        let at = |index: &Index| index.index(bytes.len().max(1)).min(bytes.len());
        match mutation {
            Mutation::FlipBit(index, bit) if !bytes.is_empty() => {
                let at = at(index).min(bytes.len() - 1);
                bytes[at] ^= 1 << bit;
            }
            Mutation::SetByte(index, byte) if !bytes.is_empty() => {
                let at = at(index).min(bytes.len() - 1);
                bytes[at] = *byte;
            }
            Mutation::SetU32(index, value) => overwrite(bytes, at(index), &value.to_le_bytes()),
            Mutation::SetVarint(index, value) => overwrite(bytes, at(index), &varint(*value)),
            Mutation::Truncate(index) => bytes.truncate(at(index)),
            Mutation::Insert(index, inserted) => {
                let at = at(index);
                bytes.splice(at..at, inserted.iter().copied());
            }
            Mutation::Remove(index, len) => {
                let at = at(index);
                bytes.drain(at..(at + len).min(bytes.len()));
            }
            Mutation::Splice { from, len, to } => {
                let from = at(from);
                let piece = bytes[from..(from + len).min(bytes.len())].to_vec();
                let to = at(to);
                bytes.splice(to..to, piece);
            }
            Mutation::FlipBit(..) | Mutation::SetByte(..) => {}
        }
    }
}

fn overwrite(bytes: &mut Vec<u8>, at: usize, new: &[u8]) {
    let end = (at + new.len()).min(bytes.len());
    bytes.splice(at..end, new.iter().copied());
}

fn varint(mut value: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    loop {
        let low = u8::try_from(value & 0x7f).expect("seven bits fit a byte");
        value >>= 7;
        if value == 0 {
            bytes.push(low);
            return bytes;
        }
        bytes.push(low | 0x80);
    }
}
