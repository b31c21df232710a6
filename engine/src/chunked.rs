//! A deque in fixed-size chunks, for what is held per log entry (the core's entries, the log
//! writer's record locations) and other lists that grow long on a hot path.
//!
//! Between two snapshots a log holds up to a million entries. In one `VecDeque`, each time it
//! outgrew its room every item moved to an allocation twice the size: megabytes copied into fresh
//! pages within one turn of the thread that owns it. On the 2-core VM at 112,000 writes/s those
//! turns took 16-60 ms in the driver (and as long in the log writer), the node's whole pipeline
//! waited behind each one, and they were among the largest steps of the open-loop tail. In
//! chunks an append allocates at most one chunk, an item never moves once pushed, and dropping a
//! prefix hands back whole chunks without touching the items kept.

use std::collections::VecDeque;

/// Items in chunks of `N`: every chunk but the first and the last holds exactly `N`; the first
/// may have lost some from its front, the last may not be full yet; none is empty.
#[derive(Debug)]
pub(crate) struct Chunked<T, const N: usize = 4096> {
    chunks: VecDeque<VecDeque<T>>,
    len: usize,
}

impl<T, const N: usize> Default for Chunked<T, N> {
    fn default() -> Self {
        Self {
            chunks: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T, const N: usize> Chunked<T, N> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The `k`-th item from the front.
    pub(crate) fn get(&self, k: usize) -> Option<&T> {
        let first = self.chunks.front()?;
        match k.checked_sub(first.len()) {
            None => first.get(k),
            Some(k) => self.chunks.get(1 + k / N)?.get(k % N),
        }
    }

    pub(crate) fn back(&self) -> Option<&T> {
        self.chunks.back()?.back()
    }

    pub(crate) fn push_back(&mut self, item: T) {
        const { assert!(N > 0, "chunks hold at least one item") };
        match self.chunks.back_mut() {
            Some(last) if last.len() < N => last.push_back(item),
            _ => {
                let mut chunk = VecDeque::with_capacity(N);
                chunk.push_back(item);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    /// Keeps the first `keep` items.
    pub(crate) fn truncate(&mut self, keep: usize) {
        if keep >= self.len {
            return;
        }
        let first_len = self.chunks.front().map_or(0, VecDeque::len);
        // The chunk that will be the last, and how many of its items stay.
        let (last, in_last) = match keep.checked_sub(first_len) {
            None => (0, keep),
            Some(k) => (1 + k / N, k % N),
        };
        if in_last == 0 {
            self.chunks.truncate(last);
        } else {
            self.chunks.truncate(last + 1);
            self.chunks[last].truncate(in_last);
        }
        self.len = keep;
    }

    /// Removes the first `count` items (at most all), handing them back in chunks: whole chunks
    /// as they were, and the part of one chunk that stays split off it.
    pub(crate) fn drain_front(&mut self, count: usize) -> Vec<VecDeque<T>> {
        let mut left = count.min(self.len);
        self.len -= left;
        let mut removed = Vec::new();
        while let Some(first) = self.chunks.front_mut() {
            if left == 0 {
                break;
            }
            if left < first.len() {
                removed.push(first.drain(..left).collect());
                break;
            }
            left -= first.len();
            removed.extend(self.chunks.pop_front());
        }
        removed
    }

    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

impl<T, const N: usize> IntoIterator for Chunked<T, N> {
    type Item = T;
    type IntoIter = std::iter::Flatten<std::collections::vec_deque::IntoIter<VecDeque<T>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.chunks.into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks every item against a plain deque doing the same, and the chunks' shape.
    fn check(c: &Chunked<u32, 3>, model: &VecDeque<u32>) {
        assert_eq!(c.len(), model.len());
        assert_eq!(
            c.iter().collect::<Vec<_>>(),
            model.iter().collect::<Vec<_>>()
        );
        for k in 0..model.len() + 4 {
            assert_eq!(c.get(k), model.get(k), "item {k}");
        }
        assert_eq!(c.back(), model.back());
        let chunks = c.chunks.len();
        for (i, chunk) in c.chunks.iter().enumerate() {
            assert!(!chunk.is_empty() && chunk.len() <= 3, "chunk {i}");
            if i > 0 && i + 1 < chunks {
                assert_eq!(chunk.len(), 3, "a middle chunk is full");
            }
        }
    }

    #[test]
    fn behaves_as_a_deque_across_chunk_boundaries() {
        let mut c = Chunked::<u32, 3>::default();
        let mut model = VecDeque::new();
        let mut next = 0;
        // Pushes, front drains and truncations of every size up to a few chunks, in a fixed
        // pseudo-random order.
        for step in 0u32..3_000 {
            let r = step.wrapping_mul(2_654_435_761) >> 20;
            match r % 4 {
                0 | 1 => {
                    for _ in 0..r % 9 {
                        c.push_back(next);
                        model.push_back(next);
                        next += 1;
                    }
                }
                2 => {
                    let count = (r as usize / 4) % 8;
                    let removed: Vec<u32> = c.drain_front(count).into_iter().flatten().collect();
                    let expected: Vec<u32> = model.drain(..count.min(model.len())).collect();
                    assert_eq!(removed, expected);
                }
                _ => {
                    let keep = model.len().saturating_sub((r as usize / 4) % 7);
                    c.truncate(keep);
                    model.truncate(keep);
                }
            }
            check(&c, &model);
        }
        c.clear();
        check(&c, &VecDeque::new());
    }

    #[test]
    fn items_never_move_and_whole_chunks_come_back() {
        let mut c = Chunked::<String, 4>::default();
        for i in 0..10 {
            c.push_back(i.to_string());
        }
        let kept = c.get(6).map(std::ptr::from_ref);
        // Growing past many chunks does not move what is held.
        for i in 10..1_000 {
            c.push_back(i.to_string());
        }
        assert_eq!(c.get(6).map(std::ptr::from_ref), kept);
        // Dropping a prefix hands back the whole chunks it covers and splits the one it ends in.
        let removed = c.drain_front(6);
        assert_eq!(
            removed.iter().map(VecDeque::len).collect::<Vec<_>>(),
            [4, 2]
        );
        assert_eq!(c.get(0).map(std::ptr::from_ref), kept);
        assert_eq!(c.len(), 994);
    }
}
