//! Whether every loop of the scan still makes progress: the rule the systemd watchdog pings
//! follow.
//!
//! Each engine worker counts its loop iterations (`WorkerCounters::loops`, one per `tick`,
//! at least every 50 ms) and so does the writer (`WriterMetrics::loops`, at least every
//! 250 ms while idle). The status loop samples the counters; a counter that has not moved for
//! longer than the stall limit marks its thread stalled, and while any thread is stalled no
//! `WATCHDOG=1` is sent, so systemd restarts a service whose worker or writer is stuck (in a
//! system call, a lock, an endless loop) even though the process is still alive.

use std::time::{Duration, Instant};

/// One thread's heartbeat: a counter it increments on every loop iteration.
struct Beat {
    name: String,
    read: Box<dyn Fn() -> u64>,
    last_value: u64,
    last_change: Instant,
}

/// The heartbeats of the threads that must keep moving.
#[derive(Default)]
pub struct Heartbeats {
    beats: Vec<Beat>,
}

impl std::fmt::Debug for Heartbeats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.beats.iter().map(|b| b.name.as_str()).collect();
        f.debug_struct("Heartbeats")
            .field("threads", &names)
            .finish()
    }
}

/// How long a heartbeat may stand still before its thread counts as stalled: half the
/// watchdog timeout (systemd's own advice for the ping interval), at least two seconds (the
/// slowest healthy beat is the idle writer's 250 ms; a commit on a slow disk may take longer).
pub fn stall_limit(watchdog: Duration) -> Duration {
    (watchdog / 2).max(Duration::from_secs(2))
}

impl Heartbeats {
    /// Adds a thread whose counter `read` returns.
    pub fn add(&mut self, name: impl Into<String>, now: Instant, read: Box<dyn Fn() -> u64>) {
        let last_value = read();
        self.beats.push(Beat {
            name: name.into(),
            read,
            last_value,
            last_change: now,
        });
    }

    /// Samples every counter at `now`; returns the threads whose counter has not moved for
    /// longer than `limit`, with how long.
    pub fn stalled(&mut self, now: Instant, limit: Duration) -> Vec<(String, Duration)> {
        let mut out = Vec::new();
        for b in &mut self.beats {
            let v = (b.read)();
            if v != b.last_value {
                b.last_value = v;
                b.last_change = now;
            }
            let still = now.saturating_duration_since(b.last_change);
            if still > limit {
                out.push((b.name.clone(), still));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_counter_that_stands_still_past_the_limit_is_stalled() {
        let t0 = Instant::now();
        let a = Arc::new(AtomicU64::new(0));
        let b = Arc::new(AtomicU64::new(0));
        let mut h = Heartbeats::default();
        let (ra, rb) = (a.clone(), b.clone());
        h.add("engine-0", t0, Box::new(move || ra.load(Ordering::Relaxed)));
        h.add("writer", t0, Box::new(move || rb.load(Ordering::Relaxed)));
        let limit = Duration::from_secs(2);
        for s in 1..=5u64 {
            a.fetch_add(1, Ordering::Relaxed);
            if s <= 2 {
                b.fetch_add(1, Ordering::Relaxed);
            }
            let stalled = h.stalled(t0 + Duration::from_secs(s), limit);
            if s <= 4 {
                assert!(stalled.is_empty(), "second {s}: {stalled:?}");
            } else {
                assert_eq!(
                    stalled,
                    vec![("writer".to_string(), Duration::from_secs(3))]
                );
            }
        }
        b.fetch_add(1, Ordering::Relaxed);
        assert!(h.stalled(t0 + Duration::from_secs(6), limit).is_empty());
    }

    #[test]
    fn the_limit_is_half_the_watchdog_but_not_below_two_seconds() {
        assert_eq!(
            stall_limit(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
        assert_eq!(stall_limit(Duration::from_secs(1)), Duration::from_secs(2));
    }
}
