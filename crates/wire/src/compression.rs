//! Compression of page data: the algorithm named on the wire and reusable codec contexts.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::WireError;

/// Algorithm of a compressed block, as named on the wire and in the handshake.
/// `None` is mandatory for every implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}

impl Compression {
    /// Every algorithm this build can encode and decode.
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Lz4, Compression::Zstd];
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        })
    }
}

/// The sender's choice: an algorithm plus its tuning (only zstd has a level).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionSetting {
    None,
    Lz4,
    Zstd { level: i32 },
}

impl CompressionSetting {
    pub fn algorithm(self) -> Compression {
        match self {
            CompressionSetting::None => Compression::None,
            CompressionSetting::Lz4 => Compression::Lz4,
            CompressionSetting::Zstd { .. } => Compression::Zstd,
        }
    }
}

/// Compresses blocks with one setting; keeps the zstd context so that every batch
/// does not pay for allocating a new one.
pub(crate) struct Compressor {
    setting: CompressionSetting,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

// By hand: zstd's contexts have no Debug; the setting says what they do.
impl fmt::Debug for Compressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compressor")
            .field("setting", &self.setting)
            .finish_non_exhaustive()
    }
}

impl Compressor {
    pub(crate) fn new(setting: CompressionSetting) -> Result<Self, WireError> {
        let zstd = match setting {
            CompressionSetting::Zstd { level } => Some(
                zstd::bulk::Compressor::new(level).map_err(|e| WireError::Compress {
                    algorithm: Compression::Zstd,
                    reason: e.to_string(),
                })?,
            ),
            _ => None,
        };
        Ok(Compressor { setting, zstd })
    }

    pub(crate) fn algorithm(&self) -> Compression {
        self.setting.algorithm()
    }

    pub(crate) fn setting(&self) -> CompressionSetting {
        self.setting
    }

    /// The compressed block, or `None` when the setting is to send data as it is.
    pub(crate) fn compress(&mut self, data: &[u8]) -> Result<Option<Vec<u8>>, WireError> {
        match (&mut self.zstd, self.setting) {
            (Some(zstd), _) => zstd
                .compress(data)
                .map(Some)
                .map_err(|e| WireError::Compress {
                    algorithm: Compression::Zstd,
                    reason: e.to_string(),
                }),
            (None, CompressionSetting::Lz4) => Ok(Some(lz4_flex::block::compress(data))),
            (None, _) => Ok(None),
        }
    }
}

/// The size `data` compresses to with `setting` (its own size without
/// compression), in a context made for this call: for measuring a codec on
/// real data now and then, not for every batch.
pub fn compressed_len(setting: CompressionSetting, data: &[u8]) -> Result<usize, WireError> {
    Ok(Compressor::new(setting)?
        .compress(data)?
        .map_or(data.len(), |block| block.len()))
}

/// Decompresses blocks of any algorithm into a caller-owned buffer.
pub(crate) struct Decompressor {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
}

// By hand: zstd's context has no Debug.
impl fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decompressor")
            .field("zstd", &self.zstd.is_some())
            .finish()
    }
}

impl Decompressor {
    pub(crate) fn new() -> Self {
        Decompressor { zstd: None }
    }

    /// Fills `out` with exactly `expected_len` bytes decoded from `input`, or says why not.
    /// Decoding writes into a slice of exactly `expected_len` bytes, so a hostile block
    /// cannot make it allocate more.
    pub(crate) fn decompress(
        &mut self,
        algorithm: Compression,
        input: &[u8],
        expected_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        out.clear();
        out.resize(expected_len, 0);
        let produced = match algorithm {
            Compression::None if input.len() == expected_len => {
                out.copy_from_slice(input);
                input.len()
            }
            Compression::None => input.len(),
            Compression::Lz4 => lz4_flex::block::decompress_into(input, out)
                .map_err(|e| format!("lz4 block does not decode: {e}"))?,
            Compression::Zstd => {
                let zstd = match &mut self.zstd {
                    Some(zstd) => zstd,
                    None => self.zstd.insert(
                        zstd::bulk::Decompressor::new()
                            .map_err(|e| format!("zstd context: {e}"))?,
                    ),
                };
                zstd.decompress_to_buffer(input, out.as_mut_slice())
                    .map_err(|e| format!("zstd block does not decode: {e}"))?
            }
        };
        if produced != expected_len {
            return Err(format!(
                "{algorithm} block holds {produced} bytes, expected {expected_len}"
            ));
        }
        Ok(())
    }
}
