//! What the source still owes the destination after the switch in a
//! post-copy migration, shared by the three threads: the migration pushes
//! owed pages in the strategy's order, the receiver records the pages the
//! destination asks for, and the sender sends those ahead of every queued
//! frame. A page leaves the owed set when it is handed to either path, so
//! it crosses the link once.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use mllm_core::memory::{PageIndex, PageRange};
use mllm_core::PageSet;

use crate::error::MigrationError;

#[derive(Debug)]
pub(crate) struct Owed {
    state: Mutex<OwedState>,
}

#[derive(Debug)]
struct OwedState {
    owed: PageSet,
    /// Asked for, oldest first; a page may be here twice or no longer
    /// owed: taking skips those.
    asked: VecDeque<PageIndex>,
    pushed: u64,
    sent_on_demand: u64,
    requests: u64,
}

/// What the post-copy phase moved, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct OwedCounts {
    pub pushed: u64,
    pub sent_on_demand: u64,
    pub requests: u64,
}

impl Owed {
    /// Nothing owed yet, in a guest of `pages` pages.
    pub fn new(pages: PageIndex) -> Owed {
        Owed {
            state: Mutex::new(OwedState {
                owed: PageSet::new(pages),
                asked: VecDeque::new(),
                pushed: 0,
                sent_on_demand: 0,
                requests: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, OwedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The destination lacks `pages` from now on.
    pub fn owe(&self, pages: &[PageIndex]) {
        self.lock().owed.insert_all(pages);
    }

    /// After a resume: the destination lacks exactly `missing` (its word is
    /// the truth: what was handed out and lost with the link is owed again,
    /// what arrived is not), and has asked for nothing on this connection.
    pub fn owe_exactly(&self, missing: &[PageRange]) -> Result<(), MigrationError> {
        let mut state = self.lock();
        let mut owed = PageSet::new(state.owed.universe());
        for range in missing {
            if range.end > owed.universe() {
                return Err(MigrationError::Invalid(format!(
                    "the destination says it lacks items {}..{}, beyond the {} there are",
                    range.start,
                    range.end,
                    owed.universe()
                )));
            }
            for item in range.pages() {
                owed.insert(item);
            }
        }
        state.owed = owed;
        state.asked.clear();
        Ok(())
    }

    /// The destination asked for `pages`; false when none is still owed
    /// (already on its way), so nobody needs waking.
    pub fn ask(&self, pages: &[PageIndex]) -> bool {
        let mut state = self.lock();
        state.requests += 1;
        let before = state.asked.len();
        for &page in pages {
            if page < state.owed.universe() && state.owed.contains(page) {
                state.asked.push_back(page);
            }
        }
        state.asked.len() > before
    }

    /// Up to `max` asked-for pages still owed, oldest request first; they
    /// are no longer owed once taken.
    pub fn take_asked(&self, max: usize) -> Vec<PageIndex> {
        let mut state = self.lock();
        let mut taken = Vec::new();
        while taken.len() < max {
            let Some(page) = state.asked.pop_front() else {
                break;
            };
            if state.owed.contains(page) {
                state.owed.remove(page);
                taken.push(page);
            }
        }
        state.sent_on_demand += taken.len() as u64;
        taken
    }

    /// Whether the push should send `page`: true once, if still owed.
    pub fn take_for_push(&self, page: PageIndex) -> bool {
        let mut state = self.lock();
        let owed = state.owed.contains(page);
        if owed {
            state.owed.remove(page);
            state.pushed += 1;
        }
        owed
    }

    /// Pages (or blocks) the destination lacks and nobody took yet.
    pub fn owed_count(&self) -> u64 {
        self.lock().owed.count()
    }

    pub fn counts(&self) -> OwedCounts {
        let state = self.lock();
        OwedCounts {
            pushed: state.pushed,
            sent_on_demand: state.sent_on_demand,
            requests: state.requests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_owed_page_is_handed_out_once_whichever_path_asks_first() {
        let owed = Owed::new(100);
        owed.owe(&[1, 2, 3, 4]);
        assert!(owed.ask(&[3, 3, 99]));
        assert!(!owed.ask(&[50]), "a page never owed is not sent");
        assert_eq!(owed.take_asked(10), [3]);
        assert!(!owed.take_for_push(3), "sent on demand already");
        assert!(owed.take_for_push(1));
        assert!(!owed.take_for_push(1));
        assert!(owed.ask(&[2, 1]));
        assert_eq!(owed.take_asked(1), [2]);
        assert!(owed.take_asked(10).is_empty(), "1 went by push");
        let counts = owed.counts();
        assert_eq!(
            (counts.pushed, counts.sent_on_demand, counts.requests),
            (1, 2, 3)
        );
    }

    #[test]
    fn a_resume_owes_exactly_what_the_destination_still_lacks() {
        let owed = Owed::new(100);
        owed.owe(&[1, 2, 3, 4]);
        assert!(owed.take_for_push(1), "handed out, then lost with the link");
        assert!(owed.take_for_push(2), "handed out and arrived");
        assert!(owed.ask(&[3]));
        owed.owe_exactly(&[PageRange::new(1, 2), PageRange::new(3, 5)])
            .unwrap();
        assert!(owed.take_asked(10).is_empty(), "asked on the old link");
        assert!(!owed.take_for_push(2));
        for page in [1, 3, 4] {
            assert!(owed.take_for_push(page), "page {page} is owed again");
        }
        assert!(owed.owe_exactly(&[PageRange::new(99, 101)]).is_err());
    }
}
