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
    /// this round's entries of the slots not drained yet, and the drained ones waiting; a peer
    /// with a stale entry besides its live one counts once. Costs a pass over that backlog.
    pub fn due_count(&self, table: &PeerTable, now: u32) -> usize {
        let mut seen = std::collections::HashSet::new();
        let mut count = |idx: &PeerIdx| {
            let due = table.get(*idx).next_visit;
            if due != NOT_SCHEDULED && due <= now {
                seen.insert(*idx);
            }
        };
        self.pending.iter().for_each(&mut count);
        if self.cursor <= now {
            let behind = (now - self.cursor) as usize + 1;
            for k in 0..behind.min(WHEEL_SLOTS) {
                let second = self.cursor as usize + k;
                self.slots[second % WHEEL_SLOTS].iter().for_each(&mut count);
            }
        }
        seen.len()
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
    /// The next visit was aimed at the peer's predicted crossing: its instant (milliseconds
    /// since the scan's epoch), finer than the wheel's whole seconds.
    pub aim_ms: Option<u64>,
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
    /// `now_ms` is milliseconds since the scan's epoch.
    ///
    /// The next visit is the base interval, except: a peer whose measured speed predicts it
    /// crosses the threshold sooner is visited just after the predicted crossing (clients often
    /// leave as soon as they finish); a failing peer backs off exponentially; a peer at the
    /// threshold is not visited again unless `done_revisit_secs` says so.
    pub fn apply(&self, peer: &mut PeerEntry, now_ms: u64, result: VisitResult) -> VisitEffect {
        self.apply_answer(peer, now_ms, result, 0)
    }

    /// [`RevisitPolicy::apply`] for a probe whose peer answered `answer_ms` after we
    /// connected: an aimed visit connects that much before the instant it aims at.
    pub fn apply_answer(
        &self,
        peer: &mut PeerEntry,
        now_ms: u64,
        result: VisitResult,
        answer_ms: u64,
    ) -> VisitEffect {
        let mut effect = VisitEffect::default();
        let now = (now_ms / 1000) as u32;
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
                effect.speed = speed_since_last_contact(peer, p, now_ms);
                peer.failures = 0;
                peer.contacts = peer.contacts.saturating_add(1);
                peer.flags |= flag::EVALUATED;
                peer.progress = p_fixed;
                peer.last_contact_cs = contact_time(now_ms);
                if p_fixed < threshold_fixed {
                    peer.flags |= flag::SEEN_BELOW;
                    peer.flags &= !flag::AT_THRESHOLD;
                    let latency = answer_ms as f64 / 1000.0;
                    let aimed = effect.speed.and_then(|speed| self.aim(p, speed, latency));
                    match aimed {
                        Some(secs) if secs < self.revisit_secs => {
                            let due_ms = now_ms + (secs * 1000.0).round() as u64;
                            effect.aim_ms = Some(due_ms);
                            // The wheel's whole second at or after the aimed instant; the
                            // caller may visit at `aim_ms` itself, which is earlier.
                            peer.next_visit = due_ms.div_ceil(1000) as u32;
                        }
                        _ => {
                            peer.next_visit = now.saturating_add(self.revisit_secs.max(1.0) as u32);
                        }
                    }
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

    /// Seconds from now to the visit aimed at a peer at progress `p` (below the threshold)
    /// moving at `speed` (fraction per second) that answers `latency` seconds after we
    /// connect, or None when it is not moving.
    ///
    /// The aim is inside the window in which the peer is at or above the threshold but not
    /// yet complete (a client that quits the moment it finishes can only be seen there). A
    /// quarter into it when the window leaves time for a second look after an early
    /// arrival (arriving early costs one more visit, aimed again from closer; arriving late
    /// can lose the peer), else its middle. The shortest interval, `min_revisit_secs`, keeps
    /// noisy speeds from hammering a peer, except when waiting that long would miss the
    /// window's first half.
    fn aim(&self, p: f64, speed: f64, latency: f64) -> Option<f64> {
        if speed.is_nan() || speed <= 0.0 {
            return None;
        }
        let window = 1.0 - self.threshold;
        let window_secs = window / speed;
        let into = if 0.75 * window_secs >= 2.0 * latency + 1.0 {
            0.25
        } else {
            0.5
        };
        let to_target = (self.threshold + window * into - p) / speed - latency;
        let to_middle = (self.threshold + window / 2.0 - p) / speed - latency;
        let shortest = if self.min_revisit_secs <= to_middle {
            self.min_revisit_secs
        } else {
            MIN_AIMED_SECS
        };
        Some(to_target.max(shortest))
    }
}

/// The shortest interval to an aimed visit: a fresh connection every 100 ms at most.
const MIN_AIMED_SECS: f64 = 0.1;

/// The peer's progress speed (fraction per second) from its last successful contact to
/// progress `p` at `now_ms`; None without an earlier contact or when progress went back.
pub fn speed_since_last_contact(peer: &PeerEntry, p: f64, now_ms: u64) -> Option<f64> {
    let now_cs = contact_time(now_ms);
    let p_fixed = progress_fixed(p);
    (peer.has(flag::EVALUATED) && now_cs > peer.last_contact_cs && p_fixed >= peer.progress).then(
        || {
            let dp = progress_fraction(p_fixed) - progress_fraction(peer.progress);
            dp / (f64::from(now_cs - peer.last_contact_cs) / 100.0)
        },
    )
}

/// A contact time as stored in [`PeerEntry::last_contact_cs`]: hundredths of a second since
/// the scan's epoch (a `u32` lasts 497 days per run), never 0 (0 = never contacted).
pub fn contact_time(now_ms: u64) -> u32 {
    ((now_ms / 10).min(u64::from(u32::MAX))).max(1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::peer_table::{Inserted, PeerTable};
    use std::net::SocketAddr;

    fn ms(secs: u32) -> u64 {
        u64::from(secs) * 1000
    }

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
    fn due_count_counts_peers_due_and_not_handed_out() {
        let mut t = table_with(5);
        let mut w = RevisitWheel::new(100);
        for (idx, due) in [(0, 105), (1, 101), (2, 2000), (3, 103), (4, 100)] {
            t.get_mut(idx).next_visit = due;
            w.schedule(idx, due);
        }
        assert_eq!(w.due_count(&t, 99), 0);
        assert_eq!(w.due_count(&t, 100), 1);
        assert_eq!(w.due_count(&t, 104), 3);
        // Peer 3 moved to later: its old entry no longer counts.
        t.get_mut(3).next_visit = 150;
        w.schedule(3, 150);
        assert_eq!(w.due_count(&t, 104), 2);
        // Handed out (some left pending by `max`): only those not handed out count.
        let mut out = Vec::new();
        w.drain_due(&mut t, 110, 1, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(w.due_count(&t, 110), 2, "peers 1 and 0");
        // More than a revolution ahead counts only when due.
        assert_eq!(w.due_count(&t, 1999), 3, "and peer 3");
        assert_eq!(w.due_count(&t, 2000), 4, "and peer 2");
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
            policy.apply(peer, ms(now), VisitResult::Failed);
            delays.push(peer.next_visit - now);
        }
        assert_eq!(
            delays,
            vec![10, 30, 90, 100],
            "10 s, ×3 each time, capped at 100 s"
        );
        policy.apply(peer, ms(5000), VisitResult::Failed);
        assert_eq!(peer.next_visit, NOT_SCHEDULED, "forgotten after 5 failures");
        // A success resets the count.
        let never = RevisitPolicy {
            max_failures: 0,
            ..policy
        };
        never.apply(peer, ms(6000), VisitResult::Progress(0.5));
        assert_eq!(peer.failures, 0);
        for i in 0..300 {
            never.apply(peer, ms(7000 + i), VisitResult::Failed);
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
                .apply(leecher, ms(10), VisitResult::Progress(0.5))
                .newly_confirmed
        );
        assert_eq!(leecher.next_visit, 310);
        assert!(
            !policy
                .apply(leecher, ms(400), VisitResult::Failed)
                .newly_confirmed
        );
        assert!(
            policy
                .apply(leecher, ms(700), VisitResult::Progress(0.99))
                .newly_confirmed
        );
        assert_eq!(leecher.next_visit, NOT_SCHEDULED);
        assert!(leecher.has(flag::CONFIRMED));

        let seeder = t.get_mut(1);
        assert!(
            !policy
                .apply(seeder, ms(10), VisitResult::Progress(1.0))
                .newly_confirmed
        );
        assert!(
            !policy
                .apply(seeder, ms(400), VisitResult::Progress(1.0))
                .newly_confirmed
        );
        assert!(!seeder.has(flag::CONFIRMED));
    }

    #[test]
    fn speed_predicts_an_earlier_visit_and_failures_back_off() {
        let policy = RevisitPolicy::default();
        let mut t = table_with(2);
        let p = t.get_mut(0);
        policy.apply(p, ms(0), VisitResult::Progress(0.10));
        // 0.5 in 100 s: 0.005/s; the aim (a quarter into the window, 0.985) is 17 s away,
        // completion 20 s: the 30 s minimum would skip the window, so the aim wins.
        let e = policy.apply(p, ms(100), VisitResult::Progress(0.60));
        assert!((e.speed.unwrap() - 0.005).abs() < 1e-4);
        let aim = e.aim_ms.expect("aimed");
        assert!((76_900..=77_100).contains(&(aim - 100_000)), "{aim}");
        assert_eq!(u64::from(p.next_visit), aim.div_ceil(1000));

        // 0.004/s from 0.4: 146 s to the aim, sooner than the base interval.
        let q = t.get_mut(1);
        policy.apply(q, ms(0), VisitResult::Progress(0.0));
        let e = policy.apply(q, ms(100), VisitResult::Progress(0.4));
        assert!((246_100..=246_400).contains(&e.aim_ms.unwrap()));
        assert_eq!(q.next_visit, 247);

        let mut t = table_with(1);
        let f = t.get_mut(0);
        policy.apply(f, ms(0), VisitResult::Failed);
        assert_eq!(f.next_visit, 300);
        policy.apply(f, ms(300), VisitResult::Failed);
        assert_eq!(f.next_visit, 900);
        for _ in 0..10 {
            policy.apply(f, ms(1000), VisitResult::Failed);
        }
        assert_eq!(f.next_visit, 1000 + 3600);
    }

    #[test]
    fn the_shortest_interval_holds_unless_it_would_skip_the_window() {
        let policy = RevisitPolicy::default(); // 30 s minimum, threshold 0.98
        let mut t = table_with(2);
        // Slow near the end: 0.001/s at 0.95 → aim 35 s, minimum irrelevant.
        let slow = t.get_mut(0);
        policy.apply(slow, ms(0), VisitResult::Progress(0.90));
        let e = policy.apply(slow, ms(50), VisitResult::Progress(0.95));
        let aim = e.aim_ms.unwrap() - 50_000;
        assert!((34_800..=35_200).contains(&aim), "{aim}");
        // 0.002/s at 0.95: aim 17.5 s, completion 25 s — both within 30 s, so visiting at
        // 30 s would find it complete (and a quitter gone): aimed at 17.5 s.
        let fast = t.get_mut(1);
        policy.apply(fast, ms(0), VisitResult::Progress(0.85));
        let e = policy.apply(fast, ms(50), VisitResult::Progress(0.95));
        let aim = e.aim_ms.unwrap() - 50_000;
        assert!((17_300..=17_700).contains(&aim), "{aim}");
        // Wide window: 0.0006/s at 0.97 → aim 25 s, clamped to 30 s; completion 50 s.
        let mut t = table_with(1);
        let wide = t.get_mut(0);
        policy.apply(wide, ms(0), VisitResult::Progress(0.94));
        let e = policy.apply(wide, ms(50), VisitResult::Progress(0.97));
        assert_eq!(
            e.aim_ms,
            Some(80_000),
            "the 30 s minimum still lands in the window"
        );
        // Sub-second precision: a peer 0.3 s from the window is not visited a second late.
        let policy = RevisitPolicy {
            min_revisit_secs: 1.0,
            ..RevisitPolicy::default()
        };
        let mut t = table_with(1);
        let quick = t.get_mut(0);
        policy.apply(quick, 10_000, VisitResult::Progress(0.90));
        // 0.07 in 2.5 s: 0.028/s; the window (0.98 to 1) lasts 0.71 s, too short for a second
        // look: aimed at its middle, 0.71 s away (completion 1.07 s: the 1 s minimum would
        // land in the window's last moment).
        let e = policy.apply(quick, 12_500, VisitResult::Progress(0.97));
        let aim = e.aim_ms.unwrap() - 12_500;
        assert!((680..=750).contains(&aim), "{aim}");
    }

    #[test]
    fn an_aimed_visit_connects_as_long_before_as_the_peer_takes_to_answer() {
        let policy = RevisitPolicy {
            min_revisit_secs: 1.0,
            ..RevisitPolicy::default()
        };
        let mut t = table_with(2);
        // 0.01/s at 0.90: the window lasts 2 s. Answering in 0.1 s leaves time for a second
        // look: a quarter in (0.985, 8.5 s away), connecting 0.1 s before.
        let prompt = t.get_mut(0);
        policy.apply(prompt, 0, VisitResult::Progress(0.80));
        let e = policy.apply_answer(prompt, 10_000, VisitResult::Progress(0.90), 100);
        let aim = e.aim_ms.unwrap() - 10_000;
        assert!((8_350..=8_450).contains(&aim), "{aim}");
        // Answering in 1 s (Transmission): no time for a second look; the middle (0.99, 9 s
        // away), connecting 1 s before.
        let slow = t.get_mut(1);
        policy.apply(slow, 0, VisitResult::Progress(0.80));
        let e = policy.apply_answer(slow, 10_000, VisitResult::Progress(0.90), 1_000);
        let aim = e.aim_ms.unwrap() - 10_000;
        assert!((7_950..=8_050).contains(&aim), "{aim}");
    }
}
