//! The transmission phase: one thread reads requests and checks them, a
//! small pool of workers serves them against the store and writes the
//! replies, in whatever order they finish.

use std::io::{self, BufWriter, ErrorKind, IoSlice, Read, Write};
use std::net::Shutdown;
use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;

use crate::handshake::{drain, field, read_exact};
use crate::protocol::*;
use crate::{BlockStore, ConnectionEnd, FileRegion, NbdError, NbdStream, Zeroing};

/// Requests read but not yet picked up by a worker. Small: the byte budget
/// below is what bounds memory; this only bounds bookkeeping.
const QUEUE_DEPTH: usize = 64;

/// Payload bytes (write data read, read data to send) one connection may
/// hold at once. Two maximal requests: one being served while the next is
/// read.
const BYTE_BUDGET: u64 = 2 * MAX_PAYLOAD as u64;

/// A worker reads into the same buffer from one read to the next, up to
/// this size: a fresh buffer per read cost as much as the copy out of the
/// page cache (it is zeroed first). A larger read, rare, gets a buffer of
/// its own, so that it does not stay allocated.
const KEPT_READ_BUFFER: usize = 4 << 20;

/// What a connection negotiated and is served from.
pub(crate) struct Session<'a> {
    pub store: &'a dyn BlockStore,
    pub structured_replies: bool,
    pub workers: usize,
    pub stopping: &'a AtomicBool,
}

/// Serves requests until the client disconnects or fails. `input` is the
/// connection's read side as the handshake left it (with anything it read
/// ahead); replies go to `stream`.
pub(crate) fn transmit<R: Read, S: NbdStream>(
    mut input: R,
    stream: S,
    session: &Session<'_>,
) -> Result<ConnectionEnd, NbdError> {
    let writer = stream.try_clone().map_err(|source| NbdError::Send {
        what: "(cloning the connection for replies)",
        source,
    })?;
    let replies = Replies::new(writer, session.structured_replies);
    let budget = ByteBudget::new(BYTE_BUDGET);
    let (jobs, queue) = sync_channel::<Job<'_>>(QUEUE_DEPTH);
    let queue = Mutex::new(queue);

    let ended = thread::scope(|scope| {
        for _ in 0..session.workers.max(1) {
            scope.spawn(|| serve_jobs(&queue, session.store, &replies, &stream));
        }
        let ended = read_requests(&mut input, session, &replies, &budget, &jobs);
        // Workers finish what was queued, then see the channel closed.
        drop(jobs);
        ended
    });
    if let Some(failure) = lock(&replies.failure).take() {
        return Err(failure);
    }
    let ended = ended?;
    lock(&replies.output)
        .flush()
        .map_err(|source| NbdError::Send {
            what: "the last replies",
            source,
        })?;
    Ok(ended)
}

/// One request, checked, with what it needs to be served.
#[derive(Debug)]
struct Job<'a> {
    cookie: u64,
    offset: u64,
    len: u32,
    flags: u16,
    work: Work,
    /// Held until the reply is sent: pays for `Work::Write` data or the
    /// buffer a read fills.
    _permit: Option<Permit<'a>>,
}

#[derive(Debug)]
enum Work {
    Read,
    Write(Vec<u8>),
    Flush,
    Trim,
    WriteZeroes,
}

/// Why a request is answered with an error before reaching the store.
#[derive(Debug)]
struct Refusal {
    code: ErrorCode,
    message: String,
}

fn refuse(code: ErrorCode, message: String) -> Refusal {
    Refusal { code, message }
}

fn read_requests<'a, R: Read>(
    input: &mut R,
    session: &Session<'_>,
    replies: &Replies<impl NbdStream>,
    budget: &'a ByteBudget,
    jobs: &SyncSender<Job<'a>>,
) -> Result<ConnectionEnd, NbdError> {
    let export_size = session.store.size();
    let clean_end = || {
        if session.stopping.load(Ordering::SeqCst) {
            ConnectionEnd::ServerShutdown
        } else {
            ConnectionEnd::ClientClosed
        }
    };
    loop {
        let Some(header) = read_header(input)? else {
            return Ok(clean_end());
        };
        let magic = u32::from_be_bytes(field(&header, 0));
        if magic != REQUEST_MAGIC {
            return Err(NbdError::BadRequestMagic {
                found: magic,
                expected: REQUEST_MAGIC,
            });
        }
        let flags = u16::from_be_bytes(field(&header, 4));
        let command = u16::from_be_bytes(field(&header, 6));
        let cookie = u64::from_be_bytes(field(&header, 8));
        let offset = u64::from_be_bytes(field(&header, 16));
        let len = u32::from_be_bytes(field(&header, 24));

        let work = match command {
            CMD_DISC => return Ok(ConnectionEnd::Disconnected),
            CMD_READ => Work::Read,
            CMD_WRITE => Work::Write(Vec::new()),
            CMD_FLUSH => Work::Flush,
            CMD_TRIM => Work::Trim,
            CMD_WRITE_ZEROES => Work::WriteZeroes,
            // Commands the protocol defines without a payload: the stream
            // stays in step, so the client gets an error and may go on.
            CMD_CACHE | CMD_BLOCK_STATUS | CMD_RESIZE => {
                let refusal = refuse(
                    ErrorCode::Inval,
                    format!("command {command} is not supported"),
                );
                replies.refuse(cookie, &refusal)?;
                continue;
            }
            _ => return Err(NbdError::UnknownCommand { command, cookie }),
        };

        if let Err(refusal) = check(
            &work,
            flags,
            offset,
            len,
            export_size,
            session.structured_replies,
        ) {
            if matches!(work, Work::Write(_)) {
                drain(input, u64::from(len), "payload of a refused write")?;
            }
            replies.refuse(cookie, &refusal)?;
            continue;
        }

        let (work, permit) = match work {
            Work::Read => (Work::Read, Some(budget.acquire(u64::from(len)))),
            Work::Write(_) => {
                let permit = budget.acquire(u64::from(len));
                // `check` bounded `len` by MAX_PAYLOAD.
                let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
                read_exact(input, &mut data, "write payload")?;
                (Work::Write(data), Some(permit))
            }
            other => (other, None),
        };
        let job = Job {
            cookie,
            offset,
            len,
            flags,
            work,
            _permit: permit,
        };
        if jobs.send(job).is_err() {
            // Every worker is gone: they panicked, and the scope re-raises
            // that.
            return Ok(clean_end());
        }
    }
}

/// Reads a request header; `None` when the client closed the connection
/// between requests.
fn read_header<R: Read>(input: &mut R) -> Result<Option<[u8; REQUEST_HEADER_LEN]>, NbdError> {
    let mut header = [0u8; REQUEST_HEADER_LEN];
    let mut filled = 0;
    while filled < header.len() {
        match input.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => {
                return Err(NbdError::Receive {
                    what: "request header",
                    source: ErrorKind::UnexpectedEof.into(),
                })
            }
            Ok(read) => filled += read,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(NbdError::Receive {
                    what: "request header",
                    source,
                })
            }
        }
    }
    Ok(Some(header))
}

/// The checks the protocol asks for before anything touches the store.
fn check(
    work: &Work,
    flags: u16,
    offset: u64,
    len: u32,
    export_size: u64,
    structured_replies: bool,
) -> Result<(), Refusal> {
    let allowed_flags = match work {
        Work::Read if structured_replies => CMD_FLAG_FUA | CMD_FLAG_DF,
        Work::WriteZeroes => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        _ => CMD_FLAG_FUA,
    };
    if flags & !allowed_flags != 0 {
        return Err(refuse(
            ErrorCode::Inval,
            format!("command flags 0x{flags:x} include bits not valid for this command"),
        ));
    }
    let inside = offset
        .checked_add(u64::from(len))
        .is_some_and(|end| end <= export_size);
    let outside = || format!("range {offset}+{len} is beyond the export's {export_size} bytes");
    match work {
        Work::Read if len > MAX_PAYLOAD => Err(refuse(
            ErrorCode::Overflow,
            format!("read of {len} bytes is above the {MAX_PAYLOAD}-byte maximum payload"),
        )),
        Work::Write(_) if len > MAX_PAYLOAD => Err(refuse(
            ErrorCode::Inval,
            format!("write of {len} bytes is above the {MAX_PAYLOAD}-byte maximum payload"),
        )),
        Work::Read | Work::Trim if !inside => Err(refuse(ErrorCode::Inval, outside())),
        Work::Write(_) | Work::WriteZeroes if !inside => Err(refuse(ErrorCode::NoSpc, outside())),
        Work::Flush if offset != 0 || len != 0 => Err(refuse(
            ErrorCode::Inval,
            format!("flush with offset {offset} and length {len}; both must be zero"),
        )),
        _ => Ok(()),
    }
}

fn serve_jobs<S: NbdStream>(
    queue: &Mutex<Receiver<Job<'_>>>,
    store: &dyn BlockStore,
    replies: &Replies<S>,
    stream: &S,
) {
    let mut failed = false;
    let mut read_buffer = Vec::new();
    loop {
        let next = lock(queue).recv();
        let Ok(job) = next else { return };
        // After a failure, queued jobs are only dropped: that returns their
        // byte budget, which the reader may be waiting for.
        if failed {
            continue;
        }
        if let Err(failure) = serve(&job, store, replies, &mut read_buffer) {
            replies.record_failure(failure);
            failed = true;
            // The client cannot get replies any more: stop reading requests
            // too. A failed shutdown means the socket is already closed.
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// `read_buffer`: the worker's buffer for read data, any content.
fn serve<S: NbdStream>(
    job: &Job<'_>,
    store: &dyn BlockStore,
    replies: &Replies<S>,
    read_buffer: &mut Vec<u8>,
) -> Result<(), NbdError> {
    let fua = job.flags & CMD_FLAG_FUA != 0;
    let len = u64::from(job.len);
    let done = match &job.work {
        Work::Read => return serve_read(job, store, replies, read_buffer),
        Work::Write(data) => store.write_at(data, job.offset, fua),
        Work::Flush => store.flush(),
        Work::Trim => store.trim(job.offset, len, fua),
        Work::WriteZeroes => {
            let zeroing = if job.flags & CMD_FLAG_NO_HOLE != 0 {
                Zeroing::Allocate
            } else {
                Zeroing::MayTrim
            };
            store.write_zeroes(job.offset, len, zeroing, fua)
        }
    };
    match done {
        Ok(()) => replies.simple(job.cookie, 0, Payload::Bytes(&[])),
        Err(error) => replies.refuse(
            job.cookie,
            &refuse(ErrorCode::from_io(&error), error.to_string()),
        ),
    }
}

/// Only bytes the store has just read are sent, so whatever an earlier
/// read left in `kept_buffer` never leaves.
fn serve_read<S: NbdStream>(
    job: &Job<'_>,
    store: &dyn BlockStore,
    replies: &Replies<S>,
    kept_buffer: &mut Vec<u8>,
) -> Result<(), NbdError> {
    let range = job.offset..job.offset + u64::from(job.len);
    let store_failed =
        |error: std::io::Error| refuse(ErrorCode::from_io(&error), error.to_string());
    let unfragmented = job.flags & CMD_FLAG_DF != 0;
    let pieces = if !replies.structured || unfragmented || range.is_empty() {
        vec![Piece::Data(range.clone())]
    } else {
        match store.zero_ranges(range.start, u64::from(job.len)) {
            Ok(zeroes) => split_holes(range.clone(), &zeroes),
            Err(error) => return replies.refuse(job.cookie, &store_failed(error)),
        }
    };

    let region = if replies.sends_files {
        match store.read_region(range.start, u64::from(job.len)) {
            Ok(region) => region,
            Err(error) => return replies.refuse(job.cookie, &store_failed(error)),
        }
    } else {
        None
    };
    // `check` bounded the length by MAX_PAYLOAD.
    let len = usize::try_from(job.len).unwrap_or(0);
    let mut own_buffer;
    let data = match region {
        Some(region) => Payload::File { region, len },
        None => {
            let data = if len <= KEPT_READ_BUFFER {
                if kept_buffer.len() < len {
                    kept_buffer.resize(len, 0);
                }
                &mut kept_buffer[..len]
            } else {
                own_buffer = vec![0u8; len];
                &mut own_buffer[..]
            };
            for piece in &pieces {
                if let Piece::Data(part) = piece {
                    let within = buffer_range(&range, part);
                    if let Err(error) = store.read_at(&mut data[within], part.start) {
                        return replies.refuse(job.cookie, &store_failed(error));
                    }
                }
            }
            Payload::Bytes(data)
        }
    };
    let payload = |part: &Range<u64>| data.part(buffer_range(&range, part));

    if !replies.structured {
        return replies.simple(job.cookie, 0, payload(&range));
    }
    if range.is_empty() {
        return replies.chunk(
            job.cookie,
            REPLY_FLAG_DONE,
            REPLY_TYPE_NONE,
            &[],
            Payload::Bytes(&[]),
        );
    }
    for (index, piece) in pieces.iter().enumerate() {
        // Everything was read (or the file is at hand) before the first
        // chunk, so no error reply can follow the last one: it may carry
        // DONE itself.
        let flags = if index + 1 == pieces.len() {
            REPLY_FLAG_DONE
        } else {
            0
        };
        match piece {
            Piece::Data(part) => replies.chunk(
                job.cookie,
                flags,
                REPLY_TYPE_OFFSET_DATA,
                &part.start.to_be_bytes(),
                payload(part),
            )?,
            Piece::Hole(part) => {
                let mut hole = [0u8; 12];
                hole[..8].copy_from_slice(&part.start.to_be_bytes());
                // A hole lies inside a request of at most MAX_PAYLOAD bytes.
                let size = u32::try_from(part.end - part.start).unwrap_or(u32::MAX);
                hole[8..].copy_from_slice(&size.to_be_bytes());
                replies.chunk(
                    job.cookie,
                    flags,
                    REPLY_TYPE_OFFSET_HOLE,
                    &hole,
                    Payload::Bytes(&[]),
                )?;
            }
        }
    }
    Ok(())
}

/// The bytes a reply carries after its header.
#[derive(Debug, Clone, Copy)]
enum Payload<'a> {
    Bytes(&'a [u8]),
    File { region: FileRegion<'a>, len: usize },
}

impl Payload<'_> {
    fn len(&self) -> usize {
        match self {
            Payload::Bytes(bytes) => bytes.len(),
            Payload::File { len, .. } => *len,
        }
    }

    /// The bytes at `within` (counted from the payload's start).
    fn part(&self, within: Range<usize>) -> Payload<'_> {
        match self {
            Payload::Bytes(bytes) => Payload::Bytes(&bytes[within]),
            Payload::File { region, .. } => Payload::File {
                region: FileRegion {
                    file: region.file,
                    offset: region.offset + within.start as u64,
                },
                len: within.len(),
            },
        }
    }
}

/// A part of a read: bytes to send, or a range that reads as zeroes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Data(Range<u64>),
    Hole(Range<u64>),
}

/// Cuts `request` into data and holes. The store's ranges are clipped to the
/// request, and any that go backwards or overlap are ignored, so a store
/// that gets them wrong cannot make the reply break the protocol.
fn split_holes(request: Range<u64>, zeroes: &[Range<u64>]) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut position = request.start;
    for zero in zeroes {
        let start = zero.start.max(position);
        let end = zero.end.min(request.end);
        if start >= end {
            continue;
        }
        if start > position {
            pieces.push(Piece::Data(position..start));
        }
        pieces.push(Piece::Hole(start..end));
        position = end;
    }
    if position < request.end {
        pieces.push(Piece::Data(position..request.end));
    }
    pieces
}

/// Where `part` of the request sits in the request's buffer. Both bounds are
/// within a request of at most MAX_PAYLOAD bytes.
fn buffer_range(request: &Range<u64>, part: &Range<u64>) -> Range<usize> {
    let at = |offset: u64| usize::try_from(offset - request.start).unwrap_or(usize::MAX);
    at(part.start)..at(part.end)
}

/// The write side of the connection, shared by the reader (for refusals)
/// and the workers. Each reply is written whole under the lock.
struct Replies<S: NbdStream> {
    output: Mutex<BufWriter<S>>,
    structured: bool,
    /// Whether read data may go from a file to the socket by `sendfile`.
    sends_files: bool,
    failure: Mutex<Option<NbdError>>,
}

impl<S: NbdStream> Replies<S> {
    fn new(stream: S, structured: bool) -> Self {
        Self {
            sends_files: stream.socket().is_some(),
            output: Mutex::new(BufWriter::with_capacity(64 << 10, stream)),
            structured,
            failure: Mutex::new(None),
        }
    }

    fn simple(&self, cookie: u64, error: u32, payload: Payload<'_>) -> Result<(), NbdError> {
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        header[4..8].copy_from_slice(&error.to_be_bytes());
        header[8..].copy_from_slice(&cookie.to_be_bytes());
        self.send(&[&header], payload)
    }

    /// A structured reply chunk whose payload is `head` then `payload`.
    fn chunk(
        &self,
        cookie: u64,
        flags: u16,
        chunk_type: u16,
        head: &[u8],
        payload: Payload<'_>,
    ) -> Result<(), NbdError> {
        // Payloads are a chunk head plus at most MAX_PAYLOAD bytes.
        let len = u32::try_from(head.len() + payload.len()).unwrap_or(u32::MAX);
        let mut header = [0u8; 20];
        header[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        header[4..6].copy_from_slice(&flags.to_be_bytes());
        header[6..8].copy_from_slice(&chunk_type.to_be_bytes());
        header[8..16].copy_from_slice(&cookie.to_be_bytes());
        header[16..].copy_from_slice(&len.to_be_bytes());
        self.send(&[&header, head], payload)
    }

    /// An error reply: a structured error chunk with the message when
    /// structured replies are on (the protocol requires it for reads and
    /// prefers it for the rest), a simple reply otherwise.
    fn refuse(&self, cookie: u64, refusal: &Refusal) -> Result<(), NbdError> {
        let code = refusal.code.wire();
        if !self.structured {
            return self.simple(cookie, code, Payload::Bytes(&[]));
        }
        // Messages are for people; the protocol caps strings at 4096 bytes.
        let message = truncate_utf8(&refusal.message, 4096);
        let message_len = u16::try_from(message.len()).unwrap_or(0);
        let mut head = Vec::with_capacity(6);
        head.extend_from_slice(&code.to_be_bytes());
        head.extend_from_slice(&message_len.to_be_bytes());
        self.chunk(
            cookie,
            REPLY_FLAG_DONE,
            REPLY_TYPE_ERROR,
            &head,
            Payload::Bytes(message.as_bytes()),
        )
    }

    /// Sends the headers, then the payload. A file's bytes go after the
    /// headers have left the buffer; the file is read as they are sent, so
    /// a failure there (the file shorter than the read, an I/O error) comes
    /// after a header promised them and can only end the connection.
    fn send(&self, headers: &[&[u8]], payload: Payload<'_>) -> Result<(), NbdError> {
        let failed = |source| NbdError::Send {
            what: "a reply",
            source,
        };
        let mut output = lock(&self.output);
        match payload {
            Payload::Bytes(data) => {
                write_all_vectored(&mut *output, headers.iter().copied().chain([data]))
                    .and_then(|()| output.flush())
                    .map_err(failed)
            }
            Payload::File { region, len } => {
                write_all_vectored(&mut *output, headers.iter().copied())
                    .and_then(|()| output.flush())
                    .map_err(failed)?;
                let Some(socket) = output.get_ref().socket() else {
                    unreachable!("file payloads are only made for streams with a socket")
                };
                send_file(socket, region, len).map_err(|source| NbdError::Send {
                    what: "read data from the image",
                    source,
                })
            }
        }
    }

    fn record_failure(&self, failure: NbdError) {
        lock(&self.failure).get_or_insert(failure);
    }
}

/// Sends `len` bytes of the file at `region` to `socket`, inside the kernel.
fn send_file(socket: BorrowedFd<'_>, region: FileRegion<'_>, len: usize) -> io::Result<()> {
    let Ok(mut offset) = libc::off_t::try_from(region.offset) else {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("file offset {} does not fit the file API", region.offset),
        ));
    };
    let mut remaining = len;
    while remaining > 0 {
        // SAFETY: both descriptors are borrowed, so open for the call, and
        // `offset` is a live local the kernel advances by what it sent.
        let sent = unsafe {
            libc::sendfile(
                socket.as_raw_fd(),
                region.file.as_raw_fd(),
                &mut offset,
                remaining,
            )
        };
        match sent {
            0 => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("the file ended {remaining} bytes short of the read"),
                ))
            }
            sent if sent > 0 => remaining -= sent.unsigned_abs(),
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() != ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
    Ok(())
}

/// Writes every byte of `parts`, in order. Through the (emptied) reply
/// buffer, a reply larger than the buffer leaves in one vectored write,
/// header and data together, rather than the header alone first.
fn write_all_vectored<'a>(
    output: &mut impl Write,
    parts: impl IntoIterator<Item = &'a [u8]>,
) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts.into_iter().map(IoSlice::new).collect();
    let mut remaining = &mut slices[..];
    // Drops leading empty parts, which a write would report as nothing written.
    IoSlice::advance_slices(&mut remaining, 0);
    while !remaining.is_empty() {
        match output.write_vectored(remaining) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut remaining, written),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn truncate_utf8(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Bytes of payload a connection may hold; the reader waits for workers to
/// give some back before taking more from the client.
#[derive(Debug)]
struct ByteBudget {
    available: Mutex<u64>,
    returned: Condvar,
}

#[derive(Debug)]
struct Permit<'a> {
    budget: &'a ByteBudget,
    bytes: u64,
}

impl ByteBudget {
    fn new(bytes: u64) -> Self {
        Self {
            available: Mutex::new(bytes),
            returned: Condvar::new(),
        }
    }

    /// Waits until `bytes` are free. Every request is at most MAX_PAYLOAD,
    /// half the budget, so this always ends once earlier requests are served.
    fn acquire(&self, bytes: u64) -> Permit<'_> {
        let mut available = lock(&self.available);
        while *available < bytes {
            available = self
                .returned
                .wait(available)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *available -= bytes;
        Permit {
            budget: self,
            bytes,
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *lock(&self.budget.available) += self.bytes;
        self.budget.returned.notify_all();
    }
}

/// A panic elsewhere already ends the connection (the scope re-raises it);
/// the data behind a poisoned lock is still consistent for what remains.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_split_a_read_and_bad_ranges_are_ignored() {
        let pieces = split_holes(100..200, &[0..110, 150..160, 155..170, 140..145, 190..400]);
        assert_eq!(
            pieces,
            vec![
                Piece::Hole(100..110),
                Piece::Data(110..150),
                Piece::Hole(150..160),
                Piece::Hole(160..170),
                Piece::Data(170..190),
                Piece::Hole(190..200),
            ]
        );
        assert_eq!(split_holes(0..10, &[]), vec![Piece::Data(0..10)]);
        assert_eq!(
            split_holes(0..10, &[20..30, 40..50]),
            vec![Piece::Data(0..10)]
        );
    }

    #[test]
    fn checks_follow_the_protocol() {
        let code = |work: Work, flags, offset, len, structured| {
            check(&work, flags, offset, len, 1 << 20, structured).map_err(|refusal| refusal.code)
        };
        assert_eq!(code(Work::Read, 0, 0, 4096, false), Ok(()));
        assert_eq!(
            code(Work::Read, 0, (1 << 20) - 1, 2, false),
            Err(ErrorCode::Inval)
        );
        assert_eq!(
            code(Work::Read, 0, u64::MAX, 1, false),
            Err(ErrorCode::Inval)
        );
        assert_eq!(
            code(Work::Read, 0, 0, MAX_PAYLOAD + 1, false),
            Err(ErrorCode::Overflow)
        );
        assert_eq!(
            code(Work::Read, CMD_FLAG_DF, 0, 1, false),
            Err(ErrorCode::Inval)
        );
        assert_eq!(code(Work::Read, CMD_FLAG_DF, 0, 1, true), Ok(()));
        assert_eq!(
            code(Work::Write(Vec::new()), 0, 1 << 20, 1, false),
            Err(ErrorCode::NoSpc)
        );
        assert_eq!(
            code(Work::Write(Vec::new()), 0, 0, MAX_PAYLOAD + 1, false),
            Err(ErrorCode::Inval)
        );
        assert_eq!(
            code(Work::Write(Vec::new()), CMD_FLAG_NO_HOLE, 0, 1, false),
            Err(ErrorCode::Inval)
        );
        assert_eq!(
            code(
                Work::WriteZeroes,
                CMD_FLAG_NO_HOLE | CMD_FLAG_FUA,
                0,
                1,
                false
            ),
            Ok(())
        );
        assert_eq!(
            code(Work::WriteZeroes, 0, 1, 1 << 20, false),
            Err(ErrorCode::NoSpc)
        );
        assert_eq!(
            code(Work::Trim, 0, 1, 1 << 20, false),
            Err(ErrorCode::Inval)
        );
        assert_eq!(code(Work::Flush, 0, 0, 0, false), Ok(()));
        assert_eq!(code(Work::Flush, 0, 0, 1, false), Err(ErrorCode::Inval));
        assert_eq!(
            code(Work::Flush, 1 << 9, 0, 0, false),
            Err(ErrorCode::Inval)
        );
    }
}
