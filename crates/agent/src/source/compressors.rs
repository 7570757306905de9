//! Compression threads: batches handed over in order, compressed in
//! parallel, taken back in the same order. The pipeline keeps the order
//! (the destination applies batches, and the references in them, in wire
//! order); the threads only add cores when one does not keep up with the
//! link (`codec.rs` decides how many are used).

use std::collections::VecDeque;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mllm_wire::{BatchCompressor, CompressionSetting, PageBatch, UncompressedBatch, WireError};

struct Job {
    batch: UncompressedBatch,
    setting: CompressionSetting,
    done: std::sync::mpsc::SyncSender<Result<PageBatch, WireError>>,
}

/// A fixed set of compression threads and the batches they hold, oldest
/// first, each with a tag the caller gets back with it.
pub(crate) struct Compressors<T> {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    in_progress: VecDeque<(T, Receiver<Result<PageBatch, WireError>>)>,
}

impl<T> std::fmt::Debug for Compressors<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressors")
            .field("threads", &self.threads.len())
            .field("in_progress", &self.in_progress.len())
            .finish()
    }
}

impl<T> Compressors<T> {
    /// `count` threads, started now.
    pub fn start(count: usize) -> std::io::Result<Compressors<T>> {
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let threads = (0..count)
            .map(|n| {
                let queue = Arc::clone(&queue);
                std::thread::Builder::new()
                    .name(format!("compress-{n}"))
                    .spawn(move || compress_jobs(&queue))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Compressors {
            jobs: Some(jobs),
            threads,
            in_progress: VecDeque::new(),
        })
    }

    /// Hands `batch` to a free thread.
    pub fn submit(&mut self, tag: T, batch: UncompressedBatch, setting: CompressionSetting) {
        let (done, result) = sync_channel(1);
        let job = Job {
            batch,
            setting,
            done,
        };
        if let Some(jobs) = &self.jobs {
            // The threads live as long as `jobs`: sending cannot fail.
            let _ = jobs.send(job);
        }
        self.in_progress.push_back((tag, result));
    }

    pub fn in_progress(&self) -> usize {
        self.in_progress.len()
    }

    /// The oldest batch handed over, once compressed; `None` when none is.
    pub fn next(&mut self) -> Option<(T, Result<PageBatch, WireError>)> {
        let (tag, result) = self.in_progress.pop_front()?;
        let batch = result.recv().unwrap_or_else(|_| {
            Err(WireError::Compress {
                algorithm: mllm_wire::Compression::None,
                reason: "a compression thread stopped".into(),
            })
        });
        Some((tag, batch))
    }
}

impl<T> Drop for Compressors<T> {
    fn drop(&mut self) {
        // Closing the queue ends the threads once they are idle.
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn compress_jobs(queue: &Mutex<Receiver<Job>>) {
    let mut compressor: Option<BatchCompressor> = None;
    loop {
        let job = match queue.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let result = (|| {
            let compressor = match &mut compressor {
                Some(current) if current.setting() == job.setting => current,
                _ => compressor.insert(BatchCompressor::new(job.setting)?),
            };
            job.batch.compress(compressor)
        })();
        let _ = job.done.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mllm_wire::{PageBatchBuilder, PageBatchDecoder, PageContent, PAGE_SIZE};

    #[test]
    fn batches_come_back_in_the_order_they_went_in() {
        let mut compressors = Compressors::start(3).unwrap();
        let settings = [
            CompressionSetting::Zstd { level: 9 },
            CompressionSetting::Lz4,
            CompressionSetting::None,
        ];
        for n in 0..30u8 {
            let mut builder = PageBatchBuilder::new(CompressionSetting::None, 8).unwrap();
            for page in 0..8u32 {
                let _ = builder.push(page, &[n | 1; PAGE_SIZE]);
            }
            compressors.submit(n, builder.take_uncompressed(), settings[usize::from(n % 3)]);
        }
        assert_eq!(compressors.in_progress(), 30);
        let mut decoder = PageBatchDecoder::new();
        for n in 0..30u8 {
            let (tag, batch) = compressors.next().unwrap();
            assert_eq!(tag, n);
            let batch = batch.unwrap();
            let first = decoder.decode(&batch).unwrap().next().unwrap();
            assert_eq!(first, (0, PageContent::Data(&[n | 1; PAGE_SIZE])));
        }
        assert!(compressors.next().is_none());
    }
}
