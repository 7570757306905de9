//! The hook's wire format: one request line in, one reply line out.
//!
//! - Request: `WP <start> <len>`: write-protect `len` bytes (decimal) of guest
//!   RAM starting at address `<start>` (hex, `0x` optional) of QEMU's address
//!   space; both page aligned.
//! - Reply: `OK <features>` with the granted `UFFD_FEATURE_*` bits in `0x` hex,
//!   the userfaultfd travelling alongside as `SCM_RIGHTS`; or `ERR <reason>`
//!   with no descriptor.
//!
//! The agent side lives in `mllm-tracker`'s `hook_client`; keep both in step.

/// Longest request accepted; a valid one is under 64 bytes.
pub const MAX_REQUEST_LEN: u64 = 256;

#[derive(Debug, PartialEq, Eq)]
pub struct WriteProtectRequest {
    pub start: u64,
    pub len: u64,
}

pub fn parse_request(line: &str, page_size: u64) -> Result<WriteProtectRequest, String> {
    let mut words = line.split_whitespace();
    let (Some("WP"), Some(start), Some(len), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(format!("expected `WP <start_hex> <len>`, got {line:?}"));
    };
    let start_digits = start.strip_prefix("0x").unwrap_or(start);
    let start = u64::from_str_radix(start_digits, 16)
        .map_err(|_| format!("start address {start:?} is not hexadecimal"))?;
    let len: u64 = len
        .parse()
        .map_err(|_| format!("length {len:?} is not a decimal byte count"))?;
    // Page sizes are powers of two: aligned means no bit below the size.
    if len == 0 || (start | len) & (page_size - 1) != 0 {
        return Err(format!(
            "range 0x{start:x}+{len} is empty or not aligned to {page_size}-byte pages"
        ));
    }
    Ok(WriteProtectRequest { start, len })
}

pub fn ok_reply(features: u64) -> String {
    format!("OK 0x{features:x}")
}

pub fn error_reply(reason: &str) -> String {
    // The reply is one line: a multi-line reason would desynchronise the agent.
    format!("ERR {}", reason.replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_start_with_or_without_prefix() {
        let expected = WriteProtectRequest {
            start: 0x7f00_0000_0000,
            len: 8192,
        };
        assert_eq!(parse_request("WP 7f0000000000 8192", 4096), Ok(expected));
        let expected = WriteProtectRequest {
            start: 0x7f00_0000_0000,
            len: 8192,
        };
        assert_eq!(
            parse_request("WP 0x7f0000000000 8192\n", 4096),
            Ok(expected)
        );
    }

    #[test]
    fn rejects_malformed_and_unaligned_requests() {
        for bad in [
            "",
            "WP",
            "WP 1000",
            "MISSING 1000 4096",
            "WP 1000 4096 extra",
            "WP zz 4096",
            "WP 1000 0x1000",
            "WP 1001 4096",
            "WP 1000 4000",
            "WP 1000 0",
        ] {
            assert!(parse_request(bad, 4096).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn replies_are_single_lines() {
        assert_eq!(ok_reply(0xb000), "OK 0xb000");
        assert_eq!(error_reply("a\nb"), "ERR a b");
    }
}
