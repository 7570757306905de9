//! What the fuzz targets share: reading a stream as an agent does, and
//! frames and hellos sealed with a valid checksum so that mutated bytes reach
//! the decoders behind it.

use std::io::{self, Read, Write};

use mllm_wire::{FrameReader, Message, PageBatchDecoder, PageContent, WireError, PAGE_SIZE};
use xxhash_rust::xxh3::xxh3_64;

/// Reads every frame of `input` as the destination does, decoding page
/// batches, until the first error.
pub fn read_stream(input: &[u8]) -> WireError {
    let mut reader = FrameReader::new(input);
    let mut decoder = PageBatchDecoder::new();
    loop {
        match reader.recv() {
            Ok(Message::PageBatch(batch)) => match decoder.decode(&batch) {
                Ok(pages) => {
                    for (_, content) in pages {
                        if let PageContent::Data(page) = content {
                            assert_eq!(page.len(), PAGE_SIZE);
                        }
                    }
                }
                Err(error) => return error,
            },
            Ok(_) => {}
            Err(error) => return error,
        }
    }
}

/// A frame of `type_code` around `payload`, with a valid checksum.
pub fn sealed_frame(type_code: u16, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("fuzz inputs are small");
    let mut frame = Vec::with_capacity(payload.len() + 16);
    frame.extend_from_slice(&type_code.to_le_bytes());
    frame.extend_from_slice(&0u16.to_le_bytes());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(payload);
    let checksum = xxh3_64(&frame);
    frame.extend_from_slice(&checksum.to_le_bytes());
    frame
}

/// The start of a hello: magic and this build's version.
pub fn hello_prefix() -> Vec<u8> {
    [&b"MLLMLINK"[..], &mllm_wire::PROTOCOL_VERSION.to_le_bytes()].concat()
}

/// A hello around `body`, with a valid length and checksum.
pub fn sealed_hello(body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(body.len().min(usize::from(u16::MAX))).expect("clamped");
    let mut hello = hello_prefix();
    hello.extend_from_slice(&len.to_le_bytes());
    hello.extend_from_slice(&body[..usize::from(len)]);
    let checksum = xxh3_64(&hello);
    hello.extend_from_slice(&checksum.to_le_bytes());
    hello
}

/// A peer end of the link that says `input` and swallows what it is told.
#[derive(Debug)]
pub struct Peer<'a> {
    pub input: &'a [u8],
    pub told: Vec<u8>,
}

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.told.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
