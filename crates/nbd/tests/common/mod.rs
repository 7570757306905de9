//! A small NBD client written from the protocol document, and stores that
//! let tests see and steer what the server does.

#![allow(dead_code)] // Each test binary uses a different part.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use mllm_nbd::{BlockStore, ConnectionEnd, NbdError, Server, Zeroing};

pub const INIT_MAGIC: u64 = 0x4e42_444d_4147_4943;
pub const OPTION_MAGIC: u64 = 0x4948_4156_454f_5054;
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_SET_META_CONTEXT: u32 = 10;

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_BLOCK_SIZE: u16 = 3;

pub const FLAG_HAS_FLAGS: u16 = 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_SEND_DF: u16 = 1 << 7;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const FUA: u16 = 1;
pub const NO_HOLE: u16 = 1 << 1;
pub const DF: u16 = 1 << 2;

pub const REPLY_FLAG_DONE: u16 = 1;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const EIO: u32 = 5;

pub const EXPORT: &str = "disk0";

/// Runs `server` on one end of a socket pair; the test talks on the other.
pub fn connect(server: &Arc<Server>) -> (UnixStream, JoinHandle<Result<ConnectionEnd, NbdError>>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let server = Arc::clone(server);
    let thread = thread::spawn(move || server.serve_connection(theirs));
    (ours, thread)
}

pub fn read_array<const N: usize>(stream: &mut impl Read) -> [u8; N] {
    let mut bytes = [0u8; N];
    stream.read_exact(&mut bytes).unwrap();
    bytes
}

pub fn read_u16(stream: &mut impl Read) -> u16 {
    u16::from_be_bytes(read_array(stream))
}

pub fn read_u32(stream: &mut impl Read) -> u32 {
    u32::from_be_bytes(read_array(stream))
}

pub fn read_u64(stream: &mut impl Read) -> u64 {
    u64::from_be_bytes(read_array(stream))
}

pub fn read_vec(stream: &mut impl Read, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).unwrap();
    bytes
}

/// Reads the greeting and answers with `client_flags`; returns the
/// handshake flags.
pub fn greet(stream: &mut UnixStream, client_flags: u32) -> u16 {
    assert_eq!(read_u64(stream), INIT_MAGIC);
    assert_eq!(read_u64(stream), OPTION_MAGIC);
    let flags = read_u16(stream);
    stream.write_all(&client_flags.to_be_bytes()).unwrap();
    flags
}

pub fn option_bytes(option: u32, data: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&OPTION_MAGIC.to_be_bytes());
    bytes.extend_from_slice(&option.to_be_bytes());
    bytes.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    bytes.extend_from_slice(data);
    bytes
}

pub fn send_option(stream: &mut UnixStream, option: u32, data: &[u8]) {
    stream.write_all(&option_bytes(option, data)).unwrap();
}

/// (option, reply type, data)
pub fn option_reply(stream: &mut UnixStream) -> (u32, u32, Vec<u8>) {
    assert_eq!(read_u64(stream), OPTION_REPLY_MAGIC);
    let option = read_u32(stream);
    let reply_type = read_u32(stream);
    let len = read_u32(stream);
    (option, reply_type, read_vec(stream, len as usize))
}

pub fn info_request(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut data = Vec::new();
    data.extend_from_slice(&u32::try_from(name.len()).unwrap().to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&u16::try_from(infos.len()).unwrap().to_be_bytes());
    for info in infos {
        data.extend_from_slice(&info.to_be_bytes());
    }
    data
}

/// What a successful INFO or GO told.
#[derive(Debug, Default)]
pub struct ExportDetails {
    pub size: u64,
    pub flags: u16,
    pub block_sizes: Option<(u32, u32, u32)>,
    pub name: Option<String>,
}

/// Reads INFO replies up to the final one; `Err(reply type)` on an error.
pub fn info_replies(stream: &mut UnixStream, option: u32) -> Result<ExportDetails, u32> {
    let mut details = ExportDetails::default();
    loop {
        let (replied_to, reply_type, data) = option_reply(stream);
        assert_eq!(replied_to, option);
        match reply_type {
            REP_ACK => return Ok(details),
            REP_INFO => match u16::from_be_bytes([data[0], data[1]]) {
                INFO_EXPORT => {
                    assert_eq!(data.len(), 12);
                    details.size = u64::from_be_bytes(data[2..10].try_into().unwrap());
                    details.flags = u16::from_be_bytes([data[10], data[11]]);
                }
                INFO_BLOCK_SIZE => {
                    assert_eq!(data.len(), 14);
                    let at = |i: usize| u32::from_be_bytes(data[i..i + 4].try_into().unwrap());
                    details.block_sizes = Some((at(2), at(6), at(10)));
                }
                INFO_NAME => details.name = Some(String::from_utf8(data[2..].to_vec()).unwrap()),
                other => panic!("unexpected info type {other}"),
            },
            error => return Err(error),
        }
    }
}

/// A client in the transmission phase.
pub struct Client {
    pub stream: UnixStream,
    pub structured: bool,
    pub details: ExportDetails,
    /// Requests sent and not yet answered: cookie to (command, offset, len).
    pending: HashMap<u64, (u16, u64, u32)>,
    next_cookie: u64,
}

/// A request's complete answer.
#[derive(Debug, Default, Clone)]
pub struct Answer {
    pub error: u32,
    pub message: String,
    /// For reads: the bytes, holes filled with zeroes.
    pub data: Vec<u8>,
    pub holes: Vec<Range<u64>>,
    pub chunks: usize,
}

impl Client {
    /// Handshake with GO, asking for structured replies when `structured`.
    pub fn go(mut stream: UnixStream, structured: bool) -> Self {
        let flags = greet(&mut stream, 0b11);
        assert_eq!(flags, 0b11, "fixed newstyle and no zeroes");
        if structured {
            send_option(&mut stream, OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(
                option_reply(&mut stream),
                (OPT_STRUCTURED_REPLY, REP_ACK, Vec::new())
            );
        }
        send_option(
            &mut stream,
            OPT_GO,
            &info_request(EXPORT, &[INFO_BLOCK_SIZE]),
        );
        let details = info_replies(&mut stream, OPT_GO).expect("GO succeeds");
        Self::transmitting(stream, structured, details)
    }

    pub fn transmitting(stream: UnixStream, structured: bool, details: ExportDetails) -> Self {
        // A server that stops answering fails the test instead of hanging it.
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Self {
            stream,
            structured,
            details,
            pending: HashMap::new(),
            next_cookie: 1,
        }
    }

    /// Sends a request; returns its cookie.
    pub fn send(&mut self, command: u16, flags: u16, offset: u64, len: u32, payload: &[u8]) -> u64 {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        self.stream
            .write_all(&request_bytes(command, flags, cookie, offset, len))
            .unwrap();
        self.stream.write_all(payload).unwrap();
        if command != CMD_DISC {
            self.pending.insert(cookie, (command, offset, len));
        }
        cookie
    }

    /// Reads messages until one request is fully answered.
    pub fn next_answer(&mut self, partial: &mut HashMap<u64, Answer>) -> (u64, Answer) {
        loop {
            let magic = read_u32(&mut self.stream);
            match magic {
                SIMPLE_REPLY_MAGIC => {
                    let error = read_u32(&mut self.stream);
                    let cookie = read_u64(&mut self.stream);
                    let (command, _, len) = self
                        .pending
                        .remove(&cookie)
                        .expect("reply to a pending cookie");
                    let data = if command == CMD_READ && error == 0 {
                        read_vec(&mut self.stream, len as usize)
                    } else {
                        Vec::new()
                    };
                    assert!(
                        !(self.structured && command == CMD_READ),
                        "a read must get a structured reply once negotiated"
                    );
                    return (
                        cookie,
                        Answer {
                            error,
                            data,
                            ..Answer::default()
                        },
                    );
                }
                STRUCTURED_REPLY_MAGIC => {
                    assert!(self.structured, "structured chunk without negotiation");
                    let flags = read_u16(&mut self.stream);
                    let kind = read_u16(&mut self.stream);
                    let cookie = read_u64(&mut self.stream);
                    let len = read_u32(&mut self.stream) as usize;
                    let payload = read_vec(&mut self.stream, len);
                    let &(_, offset, request_len) = self
                        .pending
                        .get(&cookie)
                        .expect("chunk for a pending cookie");
                    let answer = partial.entry(cookie).or_insert_with(|| Answer {
                        data: vec![0u8; request_len as usize],
                        ..Answer::default()
                    });
                    answer.chunks += 1;
                    let end = offset.saturating_add(u64::from(request_len));
                    match kind {
                        REPLY_TYPE_NONE => assert_eq!(len, 0),
                        REPLY_TYPE_OFFSET_DATA => {
                            let at = u64::from_be_bytes(payload[..8].try_into().unwrap());
                            let bytes = &payload[8..];
                            assert!(
                                !bytes.is_empty() && at >= offset && at + bytes.len() as u64 <= end
                            );
                            let start = index(at - offset);
                            answer.data[start..start + bytes.len()].copy_from_slice(bytes);
                        }
                        REPLY_TYPE_OFFSET_HOLE => {
                            assert_eq!(len, 12);
                            let at = u64::from_be_bytes(payload[..8].try_into().unwrap());
                            let size = u32::from_be_bytes(payload[8..].try_into().unwrap());
                            assert!(size > 0 && at >= offset && at + u64::from(size) <= end);
                            answer.holes.push(at..at + u64::from(size));
                        }
                        REPLY_TYPE_ERROR => {
                            answer.error = u32::from_be_bytes(payload[..4].try_into().unwrap());
                            let message_len = u16::from_be_bytes([payload[4], payload[5]]) as usize;
                            answer.message =
                                String::from_utf8(payload[6..6 + message_len].to_vec()).unwrap();
                        }
                        other => panic!("unexpected chunk type {other}"),
                    }
                    if flags & REPLY_FLAG_DONE != 0 {
                        self.pending.remove(&cookie);
                        let mut answer = partial.remove(&cookie).unwrap();
                        if answer.error != 0 {
                            answer.data.clear();
                        }
                        return (cookie, answer);
                    }
                }
                other => panic!("bad reply magic 0x{other:x}"),
            }
        }
    }

    /// Sends one request and waits for its answer (nothing else in flight).
    pub fn call(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Answer {
        let cookie = self.send(command, flags, offset, len, payload);
        let (answered, answer) = self.next_answer(&mut HashMap::new());
        assert_eq!(answered, cookie);
        answer
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let answer = self.call(
            CMD_WRITE,
            0,
            offset,
            u32::try_from(data.len()).unwrap(),
            data,
        );
        assert_eq!(answer.error, 0, "write at {offset}: {}", answer.message);
    }

    pub fn read(&mut self, offset: u64, len: u32) -> Vec<u8> {
        let answer = self.call(CMD_READ, 0, offset, len, &[]);
        assert_eq!(answer.error, 0, "read at {offset}: {}", answer.message);
        answer.data
    }

    pub fn disconnect(mut self) {
        self.send(CMD_DISC, 0, 0, 0, &[]);
        // The server closes after DISC.
        let mut rest = Vec::new();
        self.stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "no reply to DISC");
    }
}

/// A file or buffer position as an index; tests run on 64-bit hosts.
pub fn index(position: u64) -> usize {
    usize::try_from(position).unwrap()
}

pub fn request_bytes(command: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(28);
    bytes.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    bytes.extend_from_slice(&flags.to_be_bytes());
    bytes.extend_from_slice(&command.to_be_bytes());
    bytes.extend_from_slice(&cookie.to_be_bytes());
    bytes.extend_from_slice(&offset.to_be_bytes());
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes
}

/// One call the server made to a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Read {
        offset: u64,
        len: usize,
    },
    Write {
        offset: u64,
        len: usize,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u64,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        zeroing: Zeroing,
        fua: bool,
    },
}

/// A store in memory that records every call, and can hold reads at one
/// offset until the test opens the gate (to force replies out of order).
#[derive(Debug)]
pub struct MemStore {
    pub bytes: Mutex<Vec<u8>>,
    pub calls: Mutex<Vec<Call>>,
    /// Reads at this offset wait until the gate opens.
    pub held_offset: Option<u64>,
    gate_open: Mutex<bool>,
    gate: Condvar,
    /// Reads at this offset fail with EIO.
    pub failing_offset: Option<u64>,
}

impl MemStore {
    pub fn new(size: usize) -> Self {
        Self {
            bytes: Mutex::new(vec![0u8; size]),
            calls: Mutex::new(Vec::new()),
            held_offset: None,
            gate_open: Mutex::new(false),
            gate: Condvar::new(),
            failing_offset: None,
        }
    }

    pub fn open_gate(&self) {
        *self.gate_open.lock().unwrap() = true;
        self.gate.notify_all();
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn range(offset: u64, len: u64) -> Range<usize> {
        usize::try_from(offset).unwrap()..usize::try_from(offset + len).unwrap()
    }
}

impl BlockStore for MemStore {
    fn size(&self) -> u64 {
        self.bytes.lock().unwrap().len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.calls.lock().unwrap().push(Call::Read {
            offset,
            len: buf.len(),
        });
        if self.held_offset == Some(offset) {
            let mut open = self.gate_open.lock().unwrap();
            while !*open {
                open = self.gate.wait(open).unwrap();
            }
        }
        if self.failing_offset == Some(offset) {
            return Err(io::Error::from_raw_os_error(5));
        }
        buf.copy_from_slice(&self.bytes.lock().unwrap()[Self::range(offset, buf.len() as u64)]);
        Ok(())
    }

    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.calls.lock().unwrap().push(Call::Write {
            offset,
            len: data.len(),
            fua,
        });
        self.bytes.lock().unwrap()[Self::range(offset, data.len() as u64)].copy_from_slice(data);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.calls.lock().unwrap().push(Call::Flush);
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Trim { offset, len, fua });
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, zeroing: Zeroing, fua: bool) -> io::Result<()> {
        self.calls.lock().unwrap().push(Call::WriteZeroes {
            offset,
            len,
            zeroing,
            fua,
        });
        self.bytes.lock().unwrap()[Self::range(offset, len)].fill(0);
        Ok(())
    }
}
