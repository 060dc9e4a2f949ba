//! Hashed timer wheel with millisecond deadlines bucketed by [`TICK_MS`].
//!
//! Entries are (slot, generation, deadline). Removal is lazy: the owner keeps the deadline it
//! armed and ignores entries that no longer match. Deadlines further away than one turn of
//! the wheel stay in their bucket and are skipped until their turn comes.

use super::conversation::Millis;

/// Bucket width in milliseconds.
pub const TICK_MS: u64 = 4;
/// Number of buckets (one turn = `BUCKETS * TICK_MS` ms, about 16 s).
pub const BUCKETS: usize = 4096;

/// One armed timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerEntry {
    /// Slot index the timer belongs to.
    pub slot: u32,
    /// Slot generation when armed.
    pub generation: u32,
    /// Deadline on the engine clock.
    pub at: Millis,
}

/// Per-worker timer wheel.
pub struct TimerWheel {
    buckets: Vec<Vec<TimerEntry>>,
    /// The tick up to which every earlier bucket has been processed.
    cursor: u64,
    len: usize,
    /// Memoised `next_deadline` (None = recompute); inserts lower it, expiries reset it.
    cached_next: std::cell::Cell<Option<Millis>>,
}

impl TimerWheel {
    /// An empty wheel starting at time `now`.
    pub fn new(now: Millis) -> TimerWheel {
        TimerWheel {
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            cursor: now / TICK_MS,
            len: 0,
            cached_next: std::cell::Cell::new(None),
        }
    }

    /// Number of armed entries (including ones the owner considers stale).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is armed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Arms a timer. Deadlines in the past fire at the next `expire`.
    pub fn insert(&mut self, entry: TimerEntry) {
        let tick = (entry.at / TICK_MS).max(self.cursor);
        self.buckets[(tick % BUCKETS as u64) as usize].push(entry);
        self.len += 1;
        if let Some(cached) = self.cached_next.get() {
            self.cached_next
                .set(Some(cached.min(entry.at.max(self.cursor * TICK_MS))));
        }
    }

    /// Moves every entry with `at <= now` into `due`.
    pub fn expire(&mut self, now: Millis, due: &mut Vec<TimerEntry>) {
        let now_tick = now / TICK_MS;
        if now_tick < self.cursor {
            return;
        }
        // Visiting more than one turn of buckets would only revisit the same ones.
        let steps = (now_tick - self.cursor + 1).min(BUCKETS as u64);
        for step in 0..steps {
            let tick = self.cursor + step;
            let bucket = &mut self.buckets[(tick % BUCKETS as u64) as usize];
            if bucket.is_empty() {
                continue;
            }
            let before = bucket.len();
            let mut i = 0;
            while i < bucket.len() {
                if bucket[i].at <= now {
                    due.push(bucket.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            if bucket.len() != before {
                self.len -= before - bucket.len();
                self.cached_next.set(None);
            }
        }
        // A memoised lower bound now in the past (an entry from a later turn): recompute.
        if self.cached_next.get().is_some_and(|c| c <= now) {
            self.cached_next.set(None);
        }
        // The current tick's bucket may still hold entries later in this tick: keep it.
        self.cursor = now_tick;
    }

    /// Earliest deadline armed, if any (lower bound when deadlines lie beyond one turn).
    pub fn next_deadline(&self) -> Option<Millis> {
        if self.len == 0 {
            return None;
        }
        if let Some(cached) = self.cached_next.get() {
            return Some(cached);
        }
        for step in 0..BUCKETS as u64 {
            let tick = self.cursor + step;
            let bucket = &self.buckets[(tick % BUCKETS as u64) as usize];
            if let Some(min) = bucket.iter().map(|e| e.at).min() {
                // An entry from a later turn in this bucket: wake at the bucket's time at most.
                let bucket_end = (tick + 1) * TICK_MS - 1;
                let next = min.min(bucket_end).max(tick * TICK_MS);
                self.cached_next.set(Some(next));
                return Some(next);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(slot: u32, at: Millis) -> TimerEntry {
        TimerEntry {
            slot,
            generation: 0,
            at,
        }
    }

    #[test]
    fn fires_each_entry_once_at_or_after_deadline() {
        let mut wheel = TimerWheel::new(0);
        for (slot, at) in [(1, 5), (2, 5), (3, 6000), (4, 100), (5, 0)] {
            wheel.insert(entry(slot, at));
        }
        let mut due = Vec::new();
        wheel.expire(4, &mut due);
        assert_eq!(due.iter().map(|e| e.slot).collect::<Vec<_>>(), vec![5]);
        due.clear();
        wheel.expire(5, &mut due);
        let mut slots: Vec<_> = due.iter().map(|e| e.slot).collect();
        slots.sort();
        assert_eq!(slots, vec![1, 2]);
        due.clear();
        assert_eq!(wheel.next_deadline(), Some(100));
        wheel.expire(5999, &mut due);
        assert_eq!(due.iter().map(|e| e.slot).collect::<Vec<_>>(), vec![4]);
        due.clear();
        wheel.expire(6000, &mut due);
        assert_eq!(due.iter().map(|e| e.slot).collect::<Vec<_>>(), vec![3]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn deadlines_beyond_one_turn_wait_for_their_turn() {
        let mut wheel = TimerWheel::new(0);
        let far = (BUCKETS as u64) * TICK_MS * 3 + 7;
        wheel.insert(entry(1, far));
        let mut due = Vec::new();
        let mut now = 0;
        while now < far {
            wheel.expire(now, &mut due);
            assert!(due.is_empty(), "fired early at {now}");
            let next = wheel.next_deadline().unwrap();
            assert!(next <= far && next >= now.min(far));
            now = next.max(now + 1);
        }
        wheel.expire(far, &mut due);
        assert_eq!(due.len(), 1);
    }

    #[test]
    fn large_jump_fires_everything_due() {
        let mut wheel = TimerWheel::new(0);
        for i in 0..1000 {
            wheel.insert(entry(i, i as u64 * 37));
        }
        let mut due = Vec::new();
        wheel.expire(1_000_000, &mut due);
        assert_eq!(due.len(), 1000);
    }

    #[test]
    fn next_deadline_follows_inserts_and_expiries() {
        let mut wheel = TimerWheel::new(0);
        wheel.insert(entry(1, 5000));
        assert_eq!(wheel.next_deadline(), Some(5000));
        wheel.insert(entry(2, 300));
        assert_eq!(wheel.next_deadline(), Some(300));
        wheel.insert(entry(3, 9000));
        assert_eq!(wheel.next_deadline(), Some(300));
        let mut due = Vec::new();
        wheel.expire(300, &mut due);
        assert_eq!(due.len(), 1);
        assert_eq!(wheel.next_deadline(), Some(5000));
        wheel.expire(4999, &mut due);
        assert_eq!(wheel.next_deadline(), Some(5000));
        wheel.expire(5000, &mut due);
        assert_eq!(wheel.next_deadline(), Some(9000));
        wheel.expire(9000, &mut due);
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn past_deadline_fires_on_next_expire() {
        let mut wheel = TimerWheel::new(1000);
        wheel.insert(entry(1, 10));
        assert_eq!(wheel.next_deadline(), Some(1000));
        let mut due = Vec::new();
        wheel.expire(1000, &mut due);
        assert_eq!(due.len(), 1);
    }
}
