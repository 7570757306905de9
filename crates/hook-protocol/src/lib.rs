//! The conversation between `mllm-hook`, preloaded into QEMU, and the agent
//! (`mllm-tracker` for write tracking, `mllm-faults` for missing pages). Both
//! sides encode and parse their messages here, so they cannot drift apart;
//! [`uffd_abi`] declares the kernel interface of the descriptor the hook
//! hands over.
//!
//! # Transport
//!
//! The hook listens on the unix stream socket whose path QEMU's environment
//! gives in [`SOCKET_ENV`]; without the variable the hook does nothing. A
//! client connects, sends one request, reads one reply, and the hook closes
//! the connection. The hook answers one connection at a time.
//!
//! Every message is one UTF-8 line ending in `\n`, its fields separated by
//! spaces. A request is at most [`MAX_REQUEST_LEN`] bytes and a reply at most
//! [`MAX_REPLY_LEN`], newline included: each side reads no further, and the
//! parsers reject a longer line before looking inside it.
//!
//! # Requests
//!
//! Both take a range of QEMU's address space: `start` hexadecimal (`0x`
//! optional; clients send it without), `len` decimal, both multiples of the
//! page size and `len` not zero.
//!
//! - `WP <start> <len>` ([`Request::WriteProtect`]): create a userfaultfd in
//!   QEMU, register the range with it in asynchronous write-protect mode, and
//!   write-protect it. For example `WP 7f3a40000000 268435456`.
//! - `MISSING <start> <len>` ([`Request::Missing`]): create a userfaultfd in
//!   QEMU with `UFFD_FEATURE_MISSING_SHMEM` and register the range with it in
//!   missing mode (`UFFDIO_REGISTER_MODE_MISSING`): from then on, any QEMU
//!   thread touching a page of the range that the shared file does not hold
//!   sleeps until the descriptor's holder installs the page (`UFFDIO_COPY`)
//!   or wakes it (`UFFDIO_WAKE`). For example `MISSING 7f3a40000000 268435456`.
//!
//! Both descriptors are created `O_NONBLOCK | O_CLOEXEC`.
//!
//! # Replies
//!
//! - `OK 0x<features>` ([`Reply::Armed`]): the range is registered (and for
//!   `WP` write-protected); `<features>` are the `UFFD_FEATURE_*` bits
//!   enabled on the descriptor ([`UffdFeatures`]), hexadecimal. The
//!   userfaultfd comes with this reply.
//! - `ERR <reason>` ([`Reply::Refused`]): nothing was armed, and no
//!   descriptor comes with the reply. The reason is for an operator.
//!
//! # Errors
//!
//! The hook refuses with `ERR`:
//! - a malformed request, quoting what is wrong with it ([`ParseError`]);
//! - an empty range, or one not aligned to the page size;
//! - for `WP`, a kernel without `UFFD_FEATURE_WP_ASYNC` (Linux 6.7+); for
//!   `MISSING`, one without `UFFD_FEATURE_MISSING_SHMEM`, or a QEMU without
//!   the privilege to handle faults the kernel takes on its behalf
//!   (`CAP_SYS_PTRACE` or `vm.unprivileged_userfaultfd=1`; `WP` falls back to
//!   user-mode faults, which async write-protect never blocks on, but a
//!   missing page that `read(2)` fills in QEMU would then fail with `EFAULT`
//!   instead of waiting);
//! - a failing kernel call, named with its errno, for example
//!   `UFFDIO_REGISTER (write-protect mode): Device or resource busy (os error 16)`
//!   when the range is still registered through an earlier userfaultfd (of
//!   either kind: a page can be registered with one userfaultfd only), or
//!   `Invalid argument` when it is not mapped.
//!
//! A request the hook cannot read (nothing within its time limit, or a read
//! error) gets no reply: the connection just closes.
//!
//! # The userfaultfd
//!
//! The descriptor travels as one `SCM_RIGHTS` control message holding one
//! `int`, attached to the `sendmsg` that carries the `OK` line. The client
//! reads with `recvmsg` and a control buffer of at least
//! `CMSG_SPACE(sizeof(int))` bytes (preferably with `MSG_CMSG_CLOEXEC`) and
//! keeps the descriptor open for as long as it tracks.
//!
//! The registration lasts while any copy of the descriptor is open, and the
//! hook keeps one of each kind: tracking survives the client closing its
//! copy, and so do missing-page registrations (QEMU threads on a missing page
//! keep sleeping rather than going on with an empty page). The next
//! well-formed request of the same kind first drops the hook's copy of that
//! kind, so a restarted agent can arm again; while a client still holds the
//! earlier descriptor, the new registration fails with `EBUSY`. When the last
//! copy of a `MISSING` descriptor closes, the kernel removes its registration
//! and wakes the sleeping threads, which then see each missing page as a new
//! zero-filled page: a `MISSING` request that replaces a live one leaves that
//! window open for the length of one registration.
//!
//! The `WP` and `MISSING` descriptors are independent: the hook holds at most
//! one of each, and a request of one kind never touches the other's.

#![forbid(unsafe_code)]

pub mod uffd_abi;

use std::fmt;

pub use uffd_abi::{
    UFFD_FEATURE_MISSING_SHMEM, UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
    UFFD_FEATURE_WP_UNPOPULATED,
};

/// Environment variable naming the unix socket the hook listens on.
pub const SOCKET_ENV: &str = "MLLM_HOOK_SOCKET";

/// Longest request line, newline included; a valid one is under 64 bytes.
pub const MAX_REQUEST_LEN: usize = 256;
/// Longest reply line, newline included.
pub const MAX_REPLY_LEN: usize = 512;

const WRITE_PROTECT: &str = "WP";
const MISSING: &str = "MISSING";
const ARMED: &str = "OK";
const REFUSED_PREFIX: &str = "ERR ";
const REQUEST_SYNTAX: &str = "`WP <start_hex> <len>` or `MISSING <start_hex> <len>`";
const REPLY_SYNTAX: &str = "`OK 0x<features>` or `ERR <reason>`";

/// What a client asks of the hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Write-protect `len` bytes of QEMU's address space from `start`.
    WriteProtect { start: u64, len: u64 },
    /// Make QEMU's threads wait for missing pages among `len` bytes of its
    /// address space from `start`.
    Missing { start: u64, len: u64 },
}

impl Request {
    /// The request as sent: one line, newline included.
    pub fn encode(&self) -> String {
        match self {
            Request::WriteProtect { start, len } => format!("{WRITE_PROTECT} {start:x} {len}\n"),
            Request::Missing { start, len } => format!("{MISSING} {start:x} {len}\n"),
        }
    }

    /// Parses one request line, with or without its newline.
    pub fn parse(line: &[u8]) -> Result<Request, ParseError> {
        let line = one_line(line, MAX_REQUEST_LEN)?;
        let mut words = line.split_ascii_whitespace();
        let (kind, start, len) = match (words.next(), words.next(), words.next(), words.next()) {
            (Some(kind @ (WRITE_PROTECT | MISSING)), Some(start), Some(len), None) => {
                (kind, start, len)
            }
            _ => {
                return Err(ParseError::Unexpected {
                    expected: REQUEST_SYNTAX,
                    line: line.to_owned(),
                })
            }
        };
        let start = parse_number(NumberField::Start, start)?;
        let len = parse_number(NumberField::Length, len)?;
        Ok(match kind {
            WRITE_PROTECT => Request::WriteProtect { start, len },
            _ => Request::Missing { start, len },
        })
    }
}

/// What the hook answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done; the userfaultfd is attached to this reply.
    Armed { features: UffdFeatures },
    /// Nothing was armed.
    Refused { reason: String },
}

impl Reply {
    /// The reply as sent: one line, newline included, at most
    /// [`MAX_REPLY_LEN`] bytes. A refusal's reason is cut to fit, and its
    /// line breaks become spaces: a second line would be taken for garbage.
    pub fn encode(&self) -> String {
        match self {
            Reply::Armed { features } => format!("{ARMED} 0x{:x}\n", features.0),
            Reply::Refused { reason } => {
                let room = MAX_REPLY_LEN - REFUSED_PREFIX.len() - "\n".len();
                let reason = truncate_at_char_boundary(reason, room).replace('\n', " ");
                format!("{REFUSED_PREFIX}{reason}\n")
            }
        }
    }

    /// Parses one reply line, with or without its newline.
    pub fn parse(line: &[u8]) -> Result<Reply, ParseError> {
        let line = one_line(line, MAX_REPLY_LEN)?;
        if let Some(reason) = line.strip_prefix(REFUSED_PREFIX) {
            return Ok(Reply::Refused {
                reason: reason.to_owned(),
            });
        }
        let mut words = line.split_ascii_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(ARMED), Some(features), None) => Ok(Reply::Armed {
                features: UffdFeatures(parse_number(NumberField::Features, features)?),
            }),
            _ => Err(ParseError::Unexpected {
                expected: REPLY_SYNTAX,
                line: line.to_owned(),
            }),
        }
    }
}

/// The `UFFD_FEATURE_*` bits the kernel granted to the hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UffdFeatures(pub u64);

impl UffdFeatures {
    pub fn contains(&self, bits: u64) -> bool {
        self.0 & bits == bits
    }
}

impl fmt::Display for UffdFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(u64, &str); 4] = [
            (UFFD_FEATURE_WP_ASYNC, "wp_async"),
            (UFFD_FEATURE_WP_UNPOPULATED, "wp_unpopulated"),
            (UFFD_FEATURE_WP_HUGETLBFS_SHMEM, "wp_hugetlbfs_shmem"),
            (UFFD_FEATURE_MISSING_SHMEM, "missing_shmem"),
        ];
        write!(f, "0x{:x} (", self.0)?;
        let mut granted = NAMES.iter().filter(|(bit, _)| self.contains(*bit));
        if let Some((_, first)) = granted.next() {
            f.write_str(first)?;
        }
        for (_, name) in granted {
            write!(f, ", {name}")?;
        }
        f.write_str(")")
    }
}

/// Why a line is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Longer than the protocol allows for this message.
    TooLong { len: usize, max: usize },
    /// A line break before the end.
    NotOneLine,
    /// Bytes that are not UTF-8 text.
    NotUtf8,
    /// Not the shape of any message of this direction.
    Unexpected {
        expected: &'static str,
        line: String,
    },
    /// A field that must be a 64-bit number is not one.
    BadNumber { field: NumberField, text: String },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::TooLong { len, max } => {
                write!(f, "a line of {len} bytes, longer than the {max} allowed")
            }
            ParseError::NotOneLine => f.write_str("a line break before the end of the line"),
            ParseError::NotUtf8 => f.write_str("the line is not UTF-8"),
            ParseError::Unexpected { expected, line } => {
                write!(f, "expected {expected}, got {line:?}")
            }
            ParseError::BadNumber { field, text } => {
                write!(
                    f,
                    "{} {text:?} is not a 64-bit {}",
                    field.name(),
                    field.kind()
                )
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// The numeric fields of the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberField {
    /// A request's start address, hexadecimal.
    Start,
    /// A request's length in bytes, decimal.
    Length,
    /// `OK`'s feature bits, hexadecimal.
    Features,
}

impl NumberField {
    fn name(self) -> &'static str {
        match self {
            NumberField::Start => "start address",
            NumberField::Length => "length",
            NumberField::Features => "features",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            NumberField::Start | NumberField::Features => "hexadecimal number",
            NumberField::Length => "decimal byte count",
        }
    }

    fn radix(self) -> u32 {
        match self {
            NumberField::Start | NumberField::Features => 16,
            NumberField::Length => 10,
        }
    }
}

/// The text of `line` without its newline, once it is known to be one line
/// of at most `max_len` bytes.
fn one_line(line: &[u8], max_len: usize) -> Result<&str, ParseError> {
    if line.len() > max_len {
        return Err(ParseError::TooLong {
            len: line.len(),
            max: max_len,
        });
    }
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    if line.contains(&b'\n') {
        return Err(ParseError::NotOneLine);
    }
    std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)
}

fn parse_number(field: NumberField, text: &str) -> Result<u64, ParseError> {
    let radix = field.radix();
    let digits = match radix {
        16 => text.strip_prefix("0x").unwrap_or(text),
        _ => text,
    };
    // Digits only: from_str_radix alone would also take a leading `+`.
    let value = if digits.chars().all(|c| c.is_digit(radix)) {
        u64::from_str_radix(digits, radix).ok()
    } else {
        None
    };
    value.ok_or_else(|| ParseError::BadNumber {
        field,
        text: text.to_owned(),
    })
}

fn truncate_at_char_boundary(text: &str, max_len: usize) -> &str {
    let mut end = text.len().min(max_len);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write_protect(start: u64, len: u64) -> Request {
        Request::WriteProtect { start, len }
    }

    fn missing(start: u64, len: u64) -> Request {
        Request::Missing { start, len }
    }

    #[test]
    fn messages_are_encoded_in_the_wire_format() {
        assert_eq!(
            write_protect(0x7f00_0000_0000, 8192).encode(),
            "WP 7f0000000000 8192\n"
        );
        assert_eq!(
            missing(0x7f00_0000_0000, 8192).encode(),
            "MISSING 7f0000000000 8192\n"
        );
        let armed = Reply::Armed {
            features: UffdFeatures(0xb000),
        };
        assert_eq!(armed.encode(), "OK 0xb000\n");
        let refused = Reply::Refused {
            reason: "a\nb".into(),
        };
        assert_eq!(refused.encode(), "ERR a b\n");
    }

    #[test]
    fn requests_parse_with_or_without_prefix_newline_and_extra_spaces() {
        let expected = Ok(write_protect(0x7f00_0000_0000, 8192));
        for line in [
            "WP 7f0000000000 8192",
            "WP 0x7f0000000000 8192\n",
            "  WP\t7F0000000000   8192 \n",
        ] {
            assert_eq!(Request::parse(line.as_bytes()), expected, "{line:?}");
        }
        assert_eq!(
            Request::parse(b" MISSING\t0x7f0000000000  8192\n"),
            Ok(missing(0x7f00_0000_0000, 8192))
        );
        // Syntax only: the hook itself refuses empty and unaligned ranges.
        assert_eq!(Request::parse(b"WP 1001 0"), Ok(write_protect(0x1001, 0)));
        assert_eq!(Request::parse(b"MISSING 1001 0"), Ok(missing(0x1001, 0)));
    }

    #[test]
    fn malformed_requests_are_rejected_with_what_is_wrong() {
        let unexpected = |line: &str| ParseError::Unexpected {
            expected: REQUEST_SYNTAX,
            line: line.into(),
        };
        let bad = |field, text: &str| ParseError::BadNumber {
            field,
            text: text.into(),
        };
        let cases = [
            ("", unexpected("")),
            ("\n", unexpected("")),
            ("WP", unexpected("WP")),
            ("WP 1000", unexpected("WP 1000")),
            ("wp 1000 4096", unexpected("wp 1000 4096")),
            ("missing 1000 4096", unexpected("missing 1000 4096")),
            ("MINOR 1000 4096", unexpected("MINOR 1000 4096")),
            ("MISSING 1000", unexpected("MISSING 1000")),
            ("WP 1000 4096 extra", unexpected("WP 1000 4096 extra")),
            (
                "MISSING 1000 4096 8192",
                unexpected("MISSING 1000 4096 8192"),
            ),
            ("MISSING 1000 4k", bad(NumberField::Length, "4k")),
            ("MISSING -1000 4096", bad(NumberField::Start, "-1000")),
            ("WP zz 4096", bad(NumberField::Start, "zz")),
            ("WP 0x 4096", bad(NumberField::Start, "0x")),
            ("WP +1000 4096", bad(NumberField::Start, "+1000")),
            (
                "WP 10000000000000000 4096",
                bad(NumberField::Start, "10000000000000000"),
            ),
            ("WP 1000 0x1000", bad(NumberField::Length, "0x1000")),
            ("WP 1000 +4096", bad(NumberField::Length, "+4096")),
            ("WP 1000 -4096", bad(NumberField::Length, "-4096")),
            (
                "WP 1000 18446744073709551616",
                bad(NumberField::Length, "18446744073709551616"),
            ),
            ("WP 1000\n4096", ParseError::NotOneLine),
            ("WP 1000 4096\n\n", ParseError::NotOneLine),
        ];
        for (line, expected) in cases {
            assert_eq!(Request::parse(line.as_bytes()), Err(expected), "{line:?}");
        }
        assert_eq!(Request::parse(b"WP \xff 4096"), Err(ParseError::NotUtf8));
        let long = format!("WP 1000 {}", "0".repeat(MAX_REQUEST_LEN));
        assert_eq!(
            Request::parse(long.as_bytes()),
            Err(ParseError::TooLong {
                len: long.len(),
                max: MAX_REQUEST_LEN
            })
        );
    }

    #[test]
    fn parse_errors_say_what_was_expected_and_what_came() {
        let messages = [
            (
                Request::parse(b"MINOR 1000 4096\n"),
                "expected `WP <start_hex> <len>` or `MISSING <start_hex> <len>`, \
                 got \"MINOR 1000 4096\"",
            ),
            (
                Request::parse(b"WP zz 4096"),
                r#"start address "zz" is not a 64-bit hexadecimal number"#,
            ),
            (
                Request::parse(b"WP 1000 4k"),
                r#"length "4k" is not a 64-bit decimal byte count"#,
            ),
        ];
        for (parsed, message) in messages {
            assert_eq!(parsed.unwrap_err().to_string(), message);
        }
        let reply = Reply::parse(b"MAYBE\n").unwrap_err();
        assert_eq!(
            reply.to_string(),
            r#"expected `OK 0x<features>` or `ERR <reason>`, got "MAYBE""#
        );
    }

    #[test]
    fn replies_parse_from_the_wire_format() {
        let armed = Reply::Armed {
            features: UffdFeatures(0xb000),
        };
        assert_eq!(Reply::parse(b"OK 0xb000\n"), Ok(armed.clone()));
        assert_eq!(Reply::parse(b"OK b000"), Ok(armed));
        let refused = |reason: &str| {
            Ok(Reply::Refused {
                reason: reason.into(),
            })
        };
        assert_eq!(Reply::parse(b"ERR busy\n"), refused("busy"));
        assert_eq!(Reply::parse(b"ERR \n"), refused(""));
    }

    #[test]
    fn malformed_replies_are_rejected() {
        for line in ["", "OK", "OK 0xb000 extra", "ERR", "ERRbusy", "YES 1"] {
            assert!(
                matches!(
                    Reply::parse(line.as_bytes()),
                    Err(ParseError::Unexpected { .. })
                ),
                "{line:?}"
            );
        }
        assert_eq!(
            Reply::parse(b"OK 0xzz"),
            Err(ParseError::BadNumber {
                field: NumberField::Features,
                text: "0xzz".into()
            })
        );
        assert_eq!(Reply::parse(b"ERR a\nb\n"), Err(ParseError::NotOneLine));
        assert_eq!(Reply::parse(b"ERR \xc3"), Err(ParseError::NotUtf8));
        let long = vec![b'E'; MAX_REPLY_LEN + 1];
        assert!(matches!(
            Reply::parse(&long),
            Err(ParseError::TooLong { .. })
        ));
    }

    #[test]
    fn features_name_the_bits_the_hook_asks_for() {
        let granted = UffdFeatures(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED);
        assert!(granted.contains(UFFD_FEATURE_WP_ASYNC));
        assert!(!granted.contains(UFFD_FEATURE_WP_HUGETLBFS_SHMEM));
        assert_eq!(granted.to_string(), "0xa000 (wp_async, wp_unpopulated)");
        let missing = UffdFeatures(UFFD_FEATURE_MISSING_SHMEM);
        assert_eq!(missing.to_string(), "0x20 (missing_shmem)");
        assert_eq!(UffdFeatures(0).to_string(), "0x0 ()");
    }

    proptest! {
        #[test]
        fn every_request_survives_encoding(start: u64, len: u64, wp: bool) {
            let request = if wp { write_protect(start, len) } else { missing(start, len) };
            let line = request.encode();
            prop_assert!(line.len() <= MAX_REQUEST_LEN);
            prop_assert_eq!(Request::parse(line.as_bytes()), Ok(request));
        }

        #[test]
        fn every_grant_survives_encoding(features: u64) {
            let reply = Reply::Armed { features: UffdFeatures(features) };
            prop_assert_eq!(Reply::parse(reply.encode().as_bytes()), Ok(reply));
        }

        #[test]
        fn every_refusal_is_sent_as_one_line_that_parses(reason in "(?s).{0,700}") {
            let line = Reply::Refused { reason: reason.clone() }.encode();
            prop_assert!(line.len() <= MAX_REPLY_LEN);
            let Ok(Reply::Refused { reason: received }) = Reply::parse(line.as_bytes()) else {
                return Err(TestCaseError::fail(format!("{line:?} does not parse")));
            };
            // What arrives is the reason, cut to fit, line breaks as spaces.
            prop_assert!(reason.replace('\n', " ").starts_with(&received));
            if reason.len() + REFUSED_PREFIX.len() < MAX_REPLY_LEN {
                prop_assert_eq!(received.len(), reason.len());
            }
        }

        #[test]
        fn any_bytes_parse_or_fail_without_panicking(line in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = Request::parse(&line);
            let _ = Reply::parse(&line);
        }

        #[test]
        fn near_misses_parse_or_fail_without_panicking(
            line in "(WP|MISSING|OK|ERR|wp)?( {0,2}(0x)?[0-9a-fA-F+-]{0,24}){0,4}\n?"
        ) {
            let _ = Request::parse(line.as_bytes());
            let _ = Reply::parse(line.as_bytes());
        }
    }
}
