//! LEB128 unsigned varints and zig-zag signed ones: small numbers (gaps between
//! written pages, time deltas) take one byte.

use std::io::{self, BufRead, Write};

use super::TraceError;

pub fn write_u64(out: &mut impl Write, mut value: u64) -> io::Result<()> {
    let mut buf = [0u8; 10];
    let mut len = 0;
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            buf[len] = byte;
            len += 1;
            break;
        }
        buf[len] = byte | 0x80;
        len += 1;
    }
    out.write_all(&buf[..len])
}

pub fn write_i64(out: &mut impl Write, value: i64) -> io::Result<()> {
    // Zig-zag: the sign moves to the low bit; the cast only reinterprets bits.
    write_u64(out, ((value << 1) ^ (value >> 63)).cast_unsigned())
}

/// `Ok(None)` at a clean end of input (before the first byte of a varint).
pub fn read_u64_or_end(input: &mut impl BufRead) -> Result<Option<u64>, TraceError> {
    if input.fill_buf()?.is_empty() {
        return Ok(None);
    }
    read_u64(input).map(Some)
}

pub fn read_u64(input: &mut impl BufRead) -> Result<u64, TraceError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = read_byte(input)?;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(TraceError::Invalid("varint longer than 64 bits".into()))
}

pub fn read_i64(input: &mut impl BufRead) -> Result<i64, TraceError> {
    let raw = read_u64(input)?;
    Ok((raw >> 1).cast_signed() ^ -(raw & 1).cast_signed())
}

pub fn read_byte(input: &mut impl BufRead) -> Result<u8, TraceError> {
    let buf = input.fill_buf()?;
    let Some(&byte) = buf.first() else {
        return Err(TraceError::Truncated);
    };
    input.consume(1);
    Ok(byte)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(unsigned in any::<u64>(), signed in any::<i64>()) {
            let mut bytes = Vec::new();
            write_u64(&mut bytes, unsigned).unwrap();
            write_i64(&mut bytes, signed).unwrap();
            let mut input = &bytes[..];
            prop_assert_eq!(read_u64(&mut input).unwrap(), unsigned);
            prop_assert_eq!(read_i64(&mut input).unwrap(), signed);
            prop_assert!(read_u64_or_end(&mut input).unwrap().is_none());
        }
    }

    #[test]
    fn small_values_take_one_byte() {
        let mut bytes = Vec::new();
        write_u64(&mut bytes, 127).unwrap();
        write_i64(&mut bytes, -64).unwrap();
        assert_eq!(bytes.len(), 2);
    }
}
