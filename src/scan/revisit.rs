//! When to visit a peer again, and the time-ordered wheel that holds the due times.

use super::peer_table::{flag, PeerEntry, PeerIdx, PeerTable, NOT_SCHEDULED, PROGRESS_ONE};

/// A hashed timing wheel of one-second slots holding peer indices.
///
/// An entry is only a hint: the peer's own `next_visit` is the truth. When a slot is drained,
/// entries whose peer is no longer due at that time (rescheduled, in flight) are skipped, so
/// rescheduling never has to search the wheel. Entries due more than one revolution ahead stay
/// in their slot until their round comes.
pub struct RevisitWheel {
    slots: Vec<Vec<PeerIdx>>,
    /// Next second to drain.
    cursor: u32,
    /// Peers taken out of a slot but not yet handed out (a drain that hit its `max`).
    pending: Vec<PeerIdx>,
}

const WHEEL_SLOTS: usize = 1024;

impl RevisitWheel {
    pub fn new(start: u32) -> Self {
        RevisitWheel {
            slots: (0..WHEEL_SLOTS).map(|_| Vec::new()).collect(),
            cursor: start,
            pending: Vec::new(),
        }
    }

    /// Schedules `idx` at `due` (the peer's `next_visit` must already say `due`).
    pub fn schedule(&mut self, idx: PeerIdx, due: u32) {
        // A time in the past goes into the next slot to drain.
        let due = due.max(self.cursor);
        self.slots[due as usize % WHEEL_SLOTS].push(idx);
    }

    /// Hands out up to `max` peers due at or before `now`, marking them not scheduled.
    pub fn drain_due(
        &mut self,
        table: &mut PeerTable,
        now: u32,
        max: usize,
        out: &mut Vec<PeerIdx>,
    ) {
        let mut taken = 0;
        while taken < max {
            if let Some(idx) = self.pending.pop() {
                let p = table.get_mut(idx);
                if p.next_visit != NOT_SCHEDULED && p.next_visit <= now {
                    p.next_visit = NOT_SCHEDULED;
                    out.push(idx);
                    taken += 1;
                }
                continue;
            }
            if self.cursor > now {
                break;
            }
            let second = self.cursor;
            let slot = &mut self.slots[second as usize % WHEEL_SLOTS];
            // Keep entries of later rounds in place; move this round's to `pending`.
            let mut i = 0;
            while i < slot.len() {
                let idx = slot[i];
                let due = table.get(idx).next_visit;
                if due != NOT_SCHEDULED
                    && due > second
                    && (due as usize % WHEEL_SLOTS) == second as usize % WHEEL_SLOTS
                {
                    i += 1;
                } else {
                    self.pending.push(slot.swap_remove(i));
                }
            }
            if slot.capacity() > 64 && slot.len() < slot.capacity() / 4 {
                slot.shrink_to(slot.len() * 2);
            }
            self.cursor += 1;
        }
    }

    /// Peers due at or before `now` and not yet handed out (the due queue, for statistics):
    /// this round's entries of the slots not drained yet, and the drained ones waiting. A peer
    /// rescheduled to an earlier time may count twice until it is handed out.
    pub fn due_count(&self, table: &PeerTable, now: u32) -> usize {
        let is_due = |idx: &&PeerIdx| {
            let due = table.get(**idx).next_visit;
            due != NOT_SCHEDULED && due <= now
        };
        let behind = (now.saturating_sub(self.cursor) as usize + 1).min(WHEEL_SLOTS);
        let mut n = self.pending.iter().filter(is_due).count();
        if self.cursor <= now {
            for k in 0..behind {
                let second = self.cursor as usize + k;
                n += self.slots[second % WHEEL_SLOTS]
                    .iter()
                    .filter(is_due)
                    .count();
            }
        }
        n
    }

    /// Entries held (including stale ones), for metrics.
    pub fn len(&self) -> usize {
        self.slots.iter().map(Vec::len).sum::<usize>() + self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes held, for the memory benchmark.
    pub fn heap_bytes(&self) -> usize {
        self.slots.iter().map(|s| s.capacity() * 4).sum::<usize>() + self.pending.capacity() * 4
    }
}

/// The knobs of the revisit policy, in seconds (see the `peer.*` config keys).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RevisitPolicy {
    /// Base interval between visits (thesis: 300 s).
    pub revisit_secs: f64,
    /// Delay before the first retry of a failed peer.
    pub retry_secs: f64,
    /// Factor applied to the retry delay after each further consecutive failure.
    pub retry_factor: f64,
    /// Stop visiting a peer after this many consecutive failures; 0 = never.
    pub max_failures: u32,
    /// Shortest interval the speed-based prediction may choose.
    pub min_revisit_secs: f64,
    /// Longest back-off after repeated failures.
    pub max_backoff_secs: f64,
    /// Completion threshold as a fraction (thesis: 0.98).
    pub threshold: f64,
    /// Interval for peers already at the threshold (0 = stop visiting them).
    pub done_revisit_secs: f64,
}

impl Default for RevisitPolicy {
    fn default() -> Self {
        RevisitPolicy {
            revisit_secs: 300.0,
            retry_secs: 300.0,
            retry_factor: 2.0,
            max_failures: 0,
            min_revisit_secs: 30.0,
            max_backoff_secs: 3600.0,
            threshold: 0.98,
            done_revisit_secs: 0.0,
        }
    }
}

/// What a probe found, as far as scheduling cares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VisitResult {
    /// The peer answered with this progress (0..=1).
    Progress(f64),
    /// The probe failed (any error class).
    Failed,
}

/// What changed for a peer after a visit.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct VisitEffect {
    /// This visit confirmed a download (below before, at or above now).
    pub newly_confirmed: bool,
    /// Progress speed between the last two contacts, fraction per second.
    pub speed: Option<f64>,
}

/// Converts a fraction to fixed point.
pub fn progress_fixed(fraction: f64) -> u16 {
    (fraction.clamp(0.0, 1.0) * PROGRESS_ONE as f64).round() as u16
}

pub fn progress_fraction(fixed: u16) -> f64 {
    fixed as f64 / PROGRESS_ONE as f64
}

impl RevisitPolicy {
    /// Applies a visit's result to the peer (progress, flags, failures) and sets its next visit.
    ///
    /// The next visit is the base interval, except: a peer whose measured speed predicts it
    /// crosses the threshold sooner is visited just after the predicted crossing (clients often
    /// leave as soon as they finish); a failing peer backs off exponentially; a peer at the
    /// threshold is not visited again unless `done_revisit_secs` says so.
    pub fn apply(&self, peer: &mut PeerEntry, now: u32, result: VisitResult) -> VisitEffect {
        let mut effect = VisitEffect::default();
        match result {
            VisitResult::Failed => {
                peer.failures = peer.failures.saturating_add(1);
                if self.max_failures > 0 && u32::from(peer.failures) >= self.max_failures {
                    peer.next_visit = NOT_SCHEDULED;
                    return effect;
                }
                let backoff =
                    self.retry_secs * self.retry_factor.powi(peer.failures.min(64) as i32 - 1);
                peer.next_visit =
                    now.saturating_add(backoff.min(self.max_backoff_secs).max(1.0) as u32);
            }
            VisitResult::Progress(p) => {
                let threshold_fixed = progress_fixed(self.threshold);
                let p_fixed = progress_fixed(p);
                if peer.has(flag::EVALUATED) && now > peer.last_contact && p_fixed >= peer.progress
                {
                    let dp = progress_fraction(p_fixed) - progress_fraction(peer.progress);
                    effect.speed = Some(dp / (now - peer.last_contact) as f64);
                }
                peer.failures = 0;
                peer.contacts = peer.contacts.saturating_add(1);
                peer.flags |= flag::EVALUATED;
                peer.progress = p_fixed;
                peer.last_contact = now;
                if p_fixed < threshold_fixed {
                    peer.flags |= flag::SEEN_BELOW;
                    peer.flags &= !flag::AT_THRESHOLD;
                    let mut interval = self.revisit_secs;
                    if let Some(speed) = effect.speed.filter(|s| *s > 0.0) {
                        // Aim at the middle of the window in which the peer is at or above
                        // the threshold but not yet complete: a client that quits the moment
                        // it finishes can only be seen there.
                        let middle = (self.threshold + 1.0) / 2.0;
                        let predicted = (middle - p) / speed;
                        interval = interval.min(predicted.max(self.min_revisit_secs));
                    }
                    peer.next_visit = now.saturating_add(interval.max(1.0) as u32);
                } else {
                    if peer.has(flag::SEEN_BELOW) && !peer.has(flag::CONFIRMED) {
                        peer.flags |= flag::CONFIRMED;
                        effect.newly_confirmed = true;
                    }
                    peer.flags |= flag::AT_THRESHOLD;
                    peer.next_visit = if self.done_revisit_secs > 0.0 {
                        now.saturating_add(self.done_revisit_secs as u32)
                    } else {
                        NOT_SCHEDULED
                    };
                }
            }
        }
        effect
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::peer_table::{Inserted, PeerTable};
    use std::net::SocketAddr;

    fn table_with(n: u32) -> PeerTable {
        let mut t = PeerTable::new(n);
        for i in 0..n {
            let a: SocketAddr = format!("10.0.{}.{}:1", i / 256, i % 256).parse().unwrap();
            assert!(matches!(t.insert(0, a, 0, 0), Inserted::New(_)));
        }
        t
    }

    #[test]
    fn wheel_hands_out_in_due_order_and_skips_stale() {
        let mut t = table_with(5);
        let mut w = RevisitWheel::new(100);
        for (idx, due) in [(0, 105), (1, 101), (2, 2000), (3, 103), (4, 100)] {
            t.get_mut(idx).next_visit = due;
            w.schedule(idx, due);
        }
        // Peer 3 rescheduled later: its old entry is stale.
        t.get_mut(3).next_visit = 150;
        w.schedule(3, 150);
        let mut out = Vec::new();
        w.drain_due(&mut t, 104, 100, &mut out);
        assert_eq!(out, vec![4, 1]);
        out.clear();
        w.drain_due(&mut t, 149, 100, &mut out);
        assert_eq!(out, vec![0]);
        out.clear();
        w.drain_due(&mut t, 150, 100, &mut out);
        assert_eq!(out, vec![3]);
        out.clear();
        // 2000 is more than one revolution ahead: not before its time.
        w.drain_due(&mut t, 1999, 100, &mut out);
        assert!(out.is_empty());
        w.drain_due(&mut t, 2000, 100, &mut out);
        assert_eq!(out, vec![2]);
        assert!(out.iter().all(|&i| t.get(i).next_visit == NOT_SCHEDULED));
    }

    #[test]
    fn wheel_respects_max_and_keeps_the_rest() {
        let mut t = table_with(50);
        let mut w = RevisitWheel::new(0);
        for i in 0..50 {
            t.get_mut(i).next_visit = 3;
            w.schedule(i, 3);
        }
        let mut out = Vec::new();
        w.drain_due(&mut t, 10, 20, &mut out);
        assert_eq!(out.len(), 20);
        w.drain_due(&mut t, 10, 100, &mut out);
        assert_eq!(out.len(), 50);
        out.sort();
        out.dedup();
        assert_eq!(out.len(), 50);
    }

    #[test]
    fn failures_back_off_by_the_configured_factor_and_can_be_forgotten() {
        let policy = RevisitPolicy {
            retry_secs: 10.0,
            retry_factor: 3.0,
            max_backoff_secs: 100.0,
            max_failures: 5,
            ..RevisitPolicy::default()
        };
        let mut t = table_with(1);
        let peer = t.get_mut(0);
        let mut delays = Vec::new();
        for now in [1000, 2000, 3000, 4000] {
            policy.apply(peer, now, VisitResult::Failed);
            delays.push(peer.next_visit - now);
        }
        assert_eq!(
            delays,
            vec![10, 30, 90, 100],
            "10 s, ×3 each time, capped at 100 s"
        );
        policy.apply(peer, 5000, VisitResult::Failed);
        assert_eq!(peer.next_visit, NOT_SCHEDULED, "forgotten after 5 failures");
        // A success resets the count.
        let never = RevisitPolicy {
            max_failures: 0,
            ..policy
        };
        never.apply(peer, 6000, VisitResult::Progress(0.5));
        assert_eq!(peer.failures, 0);
        for i in 0..300 {
            never.apply(peer, 7000 + i, VisitResult::Failed);
        }
        assert_ne!(peer.next_visit, NOT_SCHEDULED, "0 = retried forever");
    }

    #[test]
    fn confirmation_needs_below_then_at_threshold() {
        let policy = RevisitPolicy::default();
        let mut t = table_with(2);
        let leecher = t.get_mut(0);
        assert!(
            !policy
                .apply(leecher, 10, VisitResult::Progress(0.5))
                .newly_confirmed
        );
        assert_eq!(leecher.next_visit, 310);
        assert!(
            !policy
                .apply(leecher, 400, VisitResult::Failed)
                .newly_confirmed
        );
        assert!(
            policy
                .apply(leecher, 700, VisitResult::Progress(0.99))
                .newly_confirmed
        );
        assert_eq!(leecher.next_visit, NOT_SCHEDULED);
        assert!(leecher.has(flag::CONFIRMED));

        let seeder = t.get_mut(1);
        assert!(
            !policy
                .apply(seeder, 10, VisitResult::Progress(1.0))
                .newly_confirmed
        );
        assert!(
            !policy
                .apply(seeder, 400, VisitResult::Progress(1.0))
                .newly_confirmed
        );
        assert!(!seeder.has(flag::CONFIRMED));
    }

    #[test]
    fn speed_predicts_an_earlier_visit_and_failures_back_off() {
        let policy = RevisitPolicy::default();
        let mut t = table_with(2);
        let p = t.get_mut(0);
        policy.apply(p, 0, VisitResult::Progress(0.10));
        // 0.8 in 100 s: 0.008/s; 0.09 left to 0.99 (between 0.98 and done) → 11.25 s,
        // clamped to the 30 s minimum.
        let e = policy.apply(p, 100, VisitResult::Progress(0.90));
        assert!((e.speed.unwrap() - 0.008).abs() < 1e-4);
        assert_eq!(p.next_visit, 130);
        // 0.1 in 10 s more: 0.01/s; 0.09 left to 0.99 → 9 s... still the minimum; from 0.5
        // at 0.001/s, 490 s → the base interval wins.
        let q = t.get_mut(1);
        policy.apply(q, 0, VisitResult::Progress(0.0));
        policy.apply(q, 100, VisitResult::Progress(0.4));
        // 0.004/s, 0.59 left to 0.99 → 147.5 s.
        assert_eq!(q.next_visit, 247);

        let mut t = table_with(1);
        let f = t.get_mut(0);
        policy.apply(f, 0, VisitResult::Failed);
        assert_eq!(f.next_visit, 300);
        policy.apply(f, 300, VisitResult::Failed);
        assert_eq!(f.next_visit, 900);
        for _ in 0..10 {
            policy.apply(f, 1000, VisitResult::Failed);
        }
        assert_eq!(f.next_visit, 1000 + 3600);
    }
}
