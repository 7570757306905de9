//! The sender's queue: segments of pages or blocks, sent in order.

use std::collections::VecDeque;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Memory,
    Disk,
}

#[derive(Debug, Default)]
pub struct SendQueue {
    segments: VecDeque<(Space, Vec<u32>)>,
    cursor: usize,
}

impl SendQueue {
    pub fn new() -> Self {
        SendQueue::default()
    }

    /// Appends `items` of `space`, to be sent in the given order.
    pub fn then(mut self, space: Space, items: Vec<u32>) -> Self {
        if !items.is_empty() {
            self.segments.push_back((space, items));
        }
        self
    }

    /// Items left, skipped or not.
    pub fn len(&self) -> usize {
        let consumed = self.cursor;
        self.segments
            .iter()
            .map(|(_, items)| items.len())
            .sum::<usize>()
            - consumed
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next item for which `needed` holds; items it rejects (already on
    /// the destination) are dropped without cost.
    pub fn next(&mut self, mut needed: impl FnMut(Space, u32) -> bool) -> Option<(Space, u32)> {
        while let Some((space, items)) = self.segments.front() {
            match items.get(self.cursor) {
                Some(&item) => {
                    self.cursor += 1;
                    if needed(*space, item) {
                        return Some((*space, item));
                    }
                }
                None => {
                    self.segments.pop_front();
                    self.cursor = 0;
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_in_order_skipping_unneeded() {
        let mut queue = SendQueue::new()
            .then(Space::Disk, vec![4, 5])
            .then(Space::Memory, vec![])
            .then(Space::Memory, vec![1, 2]);
        let mut sent = Vec::new();
        while let Some(item) = queue.next(|space, item| !(space == Space::Disk && item == 5)) {
            sent.push(item);
        }
        assert_eq!(
            sent,
            vec![(Space::Disk, 4), (Space::Memory, 1), (Space::Memory, 2)]
        );
    }
}
