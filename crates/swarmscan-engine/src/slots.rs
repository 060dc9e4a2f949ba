//! Generation-checked slab with a fixed capacity.
//!
//! The capacity never changes after construction, so a value never moves in memory while it
//! is live: the kernel may hold pointers into it (a socket address for a pending connect).
//! Every removal bumps the slot's generation, so a handle (index, generation) taken before the
//! removal no longer finds the new occupant.

use super::user_data::GENERATION_MASK;

struct Entry<T> {
    generation: u32,
    value: Option<T>,
}

/// Fixed-capacity slab of `T` addressed by (index, generation).
pub struct Slab<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    live: usize,
}

impl<T> Slab<T> {
    /// A slab holding at most `capacity` values.
    pub fn with_capacity(capacity: usize) -> Slab<T> {
        let capacity = capacity.min(u32::MAX as usize);
        let mut entries = Vec::with_capacity(capacity);
        entries.resize_with(capacity, || Entry {
            generation: 0,
            value: None,
        });
        // Pop from the end gives low indexes first, which keeps the touched memory compact.
        let free = (0..capacity as u32).rev().collect();
        Slab {
            entries,
            free,
            live: 0,
        }
    }

    /// Bytes reserved per slot (entry plus free-list index), live or not.
    pub fn bytes_per_slot() -> usize {
        std::mem::size_of::<Entry<T>>() + std::mem::size_of::<u32>()
    }

    /// Number of live values.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when no value is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Maximum number of live values.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// True when another insert would fail.
    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    /// Stores `value`; returns its (index, generation), or gives the value back when full.
    pub fn insert(&mut self, value: T) -> Result<(u32, u32), T> {
        let Some(index) = self.free.pop() else {
            return Err(value);
        };
        let entry = &mut self.entries[index as usize];
        debug_assert!(entry.value.is_none());
        entry.value = Some(value);
        self.live += 1;
        Ok((index, entry.generation))
    }

    /// The value at `index` if its generation is still `generation`.
    pub fn get(&self, index: u32, generation: u32) -> Option<&T> {
        let entry = self.entries.get(index as usize)?;
        if entry.generation != generation & GENERATION_MASK {
            return None;
        }
        entry.value.as_ref()
    }

    /// Mutable access, generation-checked like [`Slab::get`].
    pub fn get_mut(&mut self, index: u32, generation: u32) -> Option<&mut T> {
        let entry = self.entries.get_mut(index as usize)?;
        if entry.generation != generation & GENERATION_MASK {
            return None;
        }
        entry.value.as_mut()
    }

    /// Removes the value and moves the slot to the next generation.
    pub fn remove(&mut self, index: u32, generation: u32) -> Option<T> {
        let entry = self.entries.get_mut(index as usize)?;
        if entry.generation != generation & GENERATION_MASK {
            return None;
        }
        let value = entry.value.take()?;
        entry.generation = (entry.generation + 1) & GENERATION_MASK;
        self.free.push(index);
        self.live -= 1;
        Some(value)
    }

    /// (index, generation) of every live value.
    pub fn handles(&self) -> Vec<(u32, u32)> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.value.is_some())
            .map(|(i, e)| (i as u32, e.generation))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_handle_does_not_reach_new_occupant() {
        let mut slab = Slab::with_capacity(1);
        let (i, g) = slab.insert("first").unwrap();
        assert_eq!(slab.remove(i, g), Some("first"));
        let (i2, g2) = slab.insert("second").unwrap();
        assert_eq!(i2, i, "single slot is reused");
        assert_ne!(g2, g);
        assert_eq!(slab.get(i, g), None);
        assert_eq!(slab.get_mut(i, g), None);
        assert_eq!(slab.remove(i, g), None);
        assert_eq!(slab.get(i2, g2), Some(&"second"));
    }

    #[test]
    fn capacity_is_a_hard_bound() {
        let mut slab = Slab::with_capacity(3);
        let handles: Vec<_> = (0..3).map(|v| slab.insert(v).unwrap()).collect();
        assert!(slab.is_full());
        assert_eq!(slab.insert(9), Err(9));
        assert_eq!(slab.len(), 3);
        let (i, g) = handles[1];
        assert_eq!(slab.remove(i, g), Some(1));
        assert_eq!(slab.len(), 2);
        assert_eq!(slab.handles().len(), 2);
        assert!(slab.insert(4).is_ok());
    }

    #[test]
    fn generation_wraps_within_mask() {
        let mut slab = Slab::with_capacity(1);
        for _ in 0..(GENERATION_MASK as usize + 2).min(100_000) {
            let (i, g) = slab.insert(()).unwrap();
            assert!(g <= GENERATION_MASK);
            slab.remove(i, g).unwrap();
        }
    }
}
