//! Fixed newstyle negotiation: greeting, client flags, option haggling until
//! the client picks the export (`NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`) or
//! gives up (`NBD_OPT_ABORT`).

use std::io::{self, Read, Write};

use crate::protocol::*;
use crate::NbdError;

/// Option data above this is drained, never buffered: it bounds what one
/// option can make the server allocate. Export names are at most 4096 bytes
/// by the protocol; a GO with every information type fits easily.
pub const MAX_OPTION_DATA: u32 = 16 << 10;

/// What the client may see of the one export.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    pub name: String,
    pub size: u64,
    /// The store makes flushes visible across connections.
    pub multi_conn: bool,
}

impl ExportInfo {
    pub fn transmission_flags(&self, structured_replies: bool) -> u16 {
        let mut flags = FLAG_HAS_FLAGS
            | FLAG_SEND_FLUSH
            | FLAG_SEND_FUA
            | FLAG_SEND_TRIM
            | FLAG_SEND_WRITE_ZEROES;
        // DF only means something for structured reads.
        if structured_replies {
            flags |= FLAG_SEND_DF;
        }
        if self.multi_conn {
            flags |= FLAG_CAN_MULTI_CONN;
        }
        flags
    }

    /// The empty name is the protocol's "default export", which is ours.
    fn answers_to(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }
}

/// How negotiation ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    /// Go on to transmission.
    Transmission { structured_replies: bool },
    /// The client sent `NBD_OPT_ABORT`.
    Aborted,
}

/// Runs the server's side of the handshake on `input`/`output`. Replies are
/// flushed before every read, so `output` may be buffered.
pub fn negotiate<R: Read, W: Write>(
    input: &mut R,
    output: &mut W,
    export: &ExportInfo,
) -> Result<Negotiated, NbdError> {
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&INIT_MAGIC.to_be_bytes());
    greeting.extend_from_slice(&OPTION_MAGIC.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    output
        .write_all(&greeting)
        .and_then(|()| output.flush())
        .map_err(NbdError::Greeting)?;

    let client_flags = read_u32(input, "client flags")?;
    if client_flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(NbdError::ClientFlags {
            flags: client_flags,
            problem: "bits this server did not offer",
        });
    }
    // Option replies of fixed newstyle would confuse a client without it.
    if client_flags & CLIENT_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::ClientFlags {
            flags: client_flags,
            problem: "no NBD_FLAG_C_FIXED_NEWSTYLE; this server speaks only fixed newstyle",
        });
    }
    let no_zeroes = client_flags & CLIENT_NO_ZEROES != 0;

    let mut structured_replies = false;
    loop {
        let mut header = [0u8; 16];
        read_exact(input, &mut header, "option header")?;
        let magic = u64::from_be_bytes(field(&header, 0));
        if magic != OPTION_MAGIC {
            return Err(NbdError::BadOptionMagic {
                found: magic,
                expected: OPTION_MAGIC,
            });
        }
        let option = u32::from_be_bytes(field(&header, 8));
        let len = u32::from_be_bytes(field(&header, 12));

        if len > MAX_OPTION_DATA {
            if option == OPT_EXPORT_NAME {
                // This option has no error reply: the protocol's only answer
                // is to end the session.
                return Err(NbdError::ExportNameTooLong {
                    len,
                    limit: MAX_OPTION_DATA,
                });
            }
            drain(input, u64::from(len), "oversized option data")?;
            let message = format!("option data of {len} bytes is above {MAX_OPTION_DATA}");
            send_reply(output, option, REP_ERR_TOO_BIG, message.as_bytes())?;
            continue;
        }
        let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
        read_exact(input, &mut data, "option data")?;

        match option {
            OPT_EXPORT_NAME => {
                if !export.answers_to(&data) {
                    return Err(NbdError::UnknownExport {
                        name: String::from_utf8_lossy(&data).into_owned(),
                        served: export.name.clone(),
                    });
                }
                let mut reply = Vec::with_capacity(10 + 124);
                reply.extend_from_slice(&export.size.to_be_bytes());
                reply.extend_from_slice(
                    &export.transmission_flags(structured_replies).to_be_bytes(),
                );
                if !no_zeroes {
                    reply.resize(reply.len() + 124, 0);
                }
                send(output, &reply, "the export (NBD_OPT_EXPORT_NAME)")?;
                return Ok(Negotiated::Transmission { structured_replies });
            }
            OPT_ABORT => {
                // The client may already be gone; it owes us no reading.
                let _ = send_reply(output, option, REP_ACK, &[]);
                return Ok(Negotiated::Aborted);
            }
            OPT_LIST if !data.is_empty() => {
                send_reply(
                    output,
                    option,
                    REP_ERR_INVALID,
                    b"NBD_OPT_LIST takes no data",
                )?;
            }
            OPT_LIST => {
                let name = export.name.as_bytes();
                let mut server = Vec::with_capacity(4 + name.len());
                server.extend_from_slice(&len_u32(name).to_be_bytes());
                server.extend_from_slice(name);
                send_reply(output, option, REP_SERVER, &server)?;
                send_reply(output, option, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                let Some(request) = InfoRequest::parse(&data) else {
                    send_reply(
                        output,
                        option,
                        REP_ERR_INVALID,
                        b"malformed NBD_OPT_INFO/GO data",
                    )?;
                    continue;
                };
                if !export.answers_to(request.name) {
                    let message = format!(
                        "no export named {:?}",
                        String::from_utf8_lossy(request.name)
                    );
                    send_reply(output, option, REP_ERR_UNKNOWN, message.as_bytes())?;
                    continue;
                }
                send_export_info(
                    output,
                    option,
                    export,
                    structured_replies,
                    request.wants_name,
                )?;
                send_reply(output, option, REP_ACK, &[])?;
                if option == OPT_GO {
                    return Ok(Negotiated::Transmission { structured_replies });
                }
            }
            OPT_STRUCTURED_REPLY if !data.is_empty() => {
                send_reply(
                    output,
                    option,
                    REP_ERR_INVALID,
                    b"NBD_OPT_STRUCTURED_REPLY takes no data",
                )?;
            }
            OPT_STRUCTURED_REPLY => {
                structured_replies = true;
                send_reply(output, option, REP_ACK, &[])?;
            }
            _ => {
                let message = format!("option {option} is not supported");
                send_reply(output, option, REP_ERR_UNSUP, message.as_bytes())?;
            }
        }
    }
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`: name length, name, number
/// of information requests, the requests.
struct InfoRequest<'a> {
    name: &'a [u8],
    wants_name: bool,
}

impl<'a> InfoRequest<'a> {
    fn parse(data: &'a [u8]) -> Option<Self> {
        let name_len = usize::try_from(u32::from_be_bytes(data.get(..4)?.try_into().ok()?)).ok()?;
        let name_end = name_len.checked_add(4)?;
        let name = data.get(4..name_end)?;
        let count_end = name_end.checked_add(2)?;
        let count = u16::from_be_bytes(data.get(name_end..count_end)?.try_into().ok()?);
        let requests = data.get(count_end..)?;
        if requests.len() != usize::from(count) * 2 {
            return None;
        }
        let wants_name = requests
            .chunks_exact(2)
            .any(|pair| u16::from_be_bytes([pair[0], pair[1]]) == INFO_NAME);
        Some(Self { name, wants_name })
    }
}

/// `NBD_INFO_EXPORT` (required), `NBD_INFO_BLOCK_SIZE` (always: it states
/// the payload limit this server enforces) and the name when asked for.
fn send_export_info<W: Write>(
    output: &mut W,
    option: u32,
    export: &ExportInfo,
    structured_replies: bool,
    wants_name: bool,
) -> Result<(), NbdError> {
    let mut info = Vec::with_capacity(12);
    info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    info.extend_from_slice(&export.size.to_be_bytes());
    info.extend_from_slice(&export.transmission_flags(structured_replies).to_be_bytes());
    send_reply(output, option, REP_INFO, &info)?;

    let mut sizes = Vec::with_capacity(14);
    sizes.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    for size in [MIN_BLOCK_SIZE, PREFERRED_BLOCK_SIZE, MAX_PAYLOAD] {
        sizes.extend_from_slice(&size.to_be_bytes());
    }
    send_reply(output, option, REP_INFO, &sizes)?;

    if wants_name {
        let mut name = Vec::with_capacity(2 + export.name.len());
        name.extend_from_slice(&INFO_NAME.to_be_bytes());
        name.extend_from_slice(export.name.as_bytes());
        send_reply(output, option, REP_INFO, &name)?;
    }
    Ok(())
}

fn send_reply<W: Write>(
    output: &mut W,
    option: u32,
    reply_type: u32,
    data: &[u8],
) -> Result<(), NbdError> {
    let mut reply = Vec::with_capacity(20 + data.len());
    reply.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    reply.extend_from_slice(&option.to_be_bytes());
    reply.extend_from_slice(&reply_type.to_be_bytes());
    reply.extend_from_slice(&len_u32(data).to_be_bytes());
    reply.extend_from_slice(data);
    send(output, &reply, "an option reply")
}

fn send<W: Write>(output: &mut W, bytes: &[u8], what: &'static str) -> Result<(), NbdError> {
    output
        .write_all(bytes)
        .and_then(|()| output.flush())
        .map_err(|source| NbdError::Send { what, source })
}

/// Lengths of what this module sends: names and messages it made or
/// bounded itself, far below 4 GiB.
fn len_u32(bytes: &[u8]) -> u32 {
    u32::try_from(bytes.len()).unwrap_or(u32::MAX)
}

fn read_u32<R: Read>(input: &mut R, what: &'static str) -> Result<u32, NbdError> {
    let mut bytes = [0u8; 4];
    read_exact(input, &mut bytes, what)?;
    Ok(u32::from_be_bytes(bytes))
}

pub(crate) fn read_exact<R: Read>(
    input: &mut R,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), NbdError> {
    input
        .read_exact(buf)
        .map_err(|source| NbdError::Receive { what, source })
}

/// Reads and drops `len` bytes without buffering them.
pub(crate) fn drain<R: Read>(input: &mut R, len: u64, what: &'static str) -> Result<(), NbdError> {
    let copied = io::copy(&mut input.take(len), &mut io::sink())
        .map_err(|source| NbdError::Receive { what, source })?;
    if copied < len {
        return Err(NbdError::Receive {
            what,
            source: io::ErrorKind::UnexpectedEof.into(),
        });
    }
    Ok(())
}

/// `N` bytes of `bytes` from `at`; callers index fixed-size headers.
pub(crate) fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}
