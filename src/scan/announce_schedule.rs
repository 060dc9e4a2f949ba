//! When to announce to a tracker again, from our `tracker.announce_secs`, the
//! `tracker.respect_interval` switch and what the tracker answered (`interval`, `min interval`).
//!
//! * `respect_interval = false`: every `announce_secs`, even when the tracker asks for longer.
//! * `respect_interval = true`: the longer of `announce_secs` and the tracker's `interval`.
//! * A tracker's `min interval` is always respected: never announce sooner.
//! * An absurd value is not obeyed: an `interval` (or `min interval`) above a day is capped at
//!   a day; a missing, zero or negative `interval` is ignored (our own interval is used). Each
//!   is reported as a [`Note`] (logged once per tracker and stored with the schedule).
//!
//! Pure: no clock, no I/O.

/// Longest wait a tracker can impose, seconds (a day).
pub const MAX_TRACKER_INTERVAL_SECS: i64 = 86_400;

/// What decided the wait until the next announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecidedBy {
    /// Our `tracker.announce_secs`.
    Ours,
    /// The tracker's `interval` (longer than ours, `respect_interval = true`).
    Interval,
    /// The tracker's `min interval` (longer than everything else).
    MinInterval,
}

impl DecidedBy {
    /// The name stored and shown in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            DecidedBy::Ours => "ours",
            DecidedBy::Interval => "interval",
            DecidedBy::MinInterval => "min_interval",
        }
    }
}

/// A tracker value that was not obeyed as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// No `interval` in the answer: ignored.
    IntervalMissing,
    /// `interval` 0 or negative: ignored.
    IntervalNotPositive(i64),
    /// `interval` over a day: capped.
    IntervalCapped(i64),
    /// `min interval` over a day: capped.
    MinIntervalCapped(i64),
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cap = MAX_TRACKER_INTERVAL_SECS;
        match self {
            Note::IntervalMissing => write!(f, "no interval given: ignored"),
            Note::IntervalNotPositive(v) => write!(f, "interval {v} s: ignored"),
            Note::IntervalCapped(v) => write!(f, "interval {v} s: capped at {cap} s"),
            Note::MinIntervalCapped(v) => write!(f, "min interval {v} s: capped at {cap} s"),
        }
    }
}

/// The schedule after one successful announce.
#[derive(Debug, Clone, PartialEq)]
pub struct NextAnnounce {
    /// Seconds until the next announce.
    pub secs: f64,
    /// What decided it.
    pub decided_by: DecidedBy,
    /// Values not obeyed as given (at most one per field).
    pub notes: Vec<Note>,
}

impl NextAnnounce {
    /// The notes as one line ("" when there are none).
    pub fn notes_text(&self) -> String {
        self.notes
            .iter()
            .map(Note::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The wait until the next announce (see the module docs). `interval` and `min_interval` are
/// what the tracker sent (`None` = not sent; UDP trackers send no min interval).
pub fn next_announce(
    announce_secs: f64,
    respect_interval: bool,
    interval: Option<i64>,
    min_interval: Option<i64>,
) -> NextAnnounce {
    let mut notes = Vec::new();
    let interval = match interval {
        None => {
            notes.push(Note::IntervalMissing);
            None
        }
        Some(v) if v <= 0 => {
            notes.push(Note::IntervalNotPositive(v));
            None
        }
        Some(v) if v > MAX_TRACKER_INTERVAL_SECS => {
            notes.push(Note::IntervalCapped(v));
            Some(MAX_TRACKER_INTERVAL_SECS)
        }
        Some(v) => Some(v),
    };
    let min_interval = match min_interval {
        // 0 or less asks for no minimum: nothing to obey, nothing odd.
        Some(v) if v > MAX_TRACKER_INTERVAL_SECS => {
            notes.push(Note::MinIntervalCapped(v));
            Some(MAX_TRACKER_INTERVAL_SECS)
        }
        Some(v) if v > 0 => Some(v),
        _ => None,
    };
    let mut secs = announce_secs;
    let mut decided_by = DecidedBy::Ours;
    if let Some(i) = interval.filter(|_| respect_interval) {
        if i as f64 > secs {
            secs = i as f64;
            decided_by = DecidedBy::Interval;
        }
    }
    if let Some(m) = min_interval {
        if m as f64 > secs {
            secs = m as f64;
            decided_by = DecidedBy::MinInterval;
        }
    }
    NextAnnounce {
        secs,
        decided_by,
        notes,
    }
}

/// Wait after the `failures`-th failed announce in a row (1, 2, 4 … minutes, at most an hour;
/// never longer than a successful schedule would wait when `announce_secs` is longer).
pub fn retry_after_failure(announce_secs: f64, failures: u32) -> f64 {
    let backoff = 60.0 * 2f64.powi(failures.clamp(1, 7) as i32 - 1);
    backoff.min(3600.0).min(announce_secs.max(60.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respect_false_uses_ours_even_when_the_tracker_asks_for_longer() {
        let n = next_announce(10.0, false, Some(600), None);
        assert_eq!(n.secs, 10.0);
        assert_eq!(n.decided_by, DecidedBy::Ours);
        assert!(n.notes.is_empty());
    }

    #[test]
    fn respect_true_takes_the_longer_of_the_two() {
        let n = next_announce(10.0, true, Some(600), None);
        assert_eq!((n.secs, n.decided_by), (600.0, DecidedBy::Interval));
        let n = next_announce(900.0, true, Some(600), None);
        assert_eq!((n.secs, n.decided_by), (900.0, DecidedBy::Ours));
        // Equal: ours (nothing to say in the log).
        let n = next_announce(600.0, true, Some(600), None);
        assert_eq!((n.secs, n.decided_by), (600.0, DecidedBy::Ours));
    }

    #[test]
    fn min_interval_always_wins_when_longer() {
        for respect in [false, true] {
            let n = next_announce(10.0, respect, Some(600), Some(120));
            let want = if respect {
                (600.0, DecidedBy::Interval)
            } else {
                (120.0, DecidedBy::MinInterval)
            };
            assert_eq!((n.secs, n.decided_by), want, "respect {respect}");
            let n = next_announce(10.0, respect, Some(60), Some(900));
            assert_eq!((n.secs, n.decided_by), (900.0, DecidedBy::MinInterval));
        }
        // A min interval shorter than ours changes nothing; 0 means no minimum.
        let n = next_announce(300.0, false, Some(1800), Some(60));
        assert_eq!((n.secs, n.decided_by), (300.0, DecidedBy::Ours));
        let n = next_announce(300.0, false, Some(1800), Some(0));
        assert_eq!((n.secs, n.decided_by), (300.0, DecidedBy::Ours));
        assert!(n.notes.is_empty());
    }

    #[test]
    fn absurd_intervals_are_capped_or_ignored_and_noted() {
        let n = next_announce(300.0, true, Some(30 * 86_400), None);
        assert_eq!(n.secs, 86_400.0);
        assert_eq!(n.decided_by, DecidedBy::Interval);
        assert_eq!(n.notes, vec![Note::IntervalCapped(30 * 86_400)]);
        assert_eq!(n.notes_text(), "interval 2592000 s: capped at 86400 s");
        // Capped min interval still wins, at a day.
        let n = next_announce(300.0, false, Some(600), Some(i64::from(u32::MAX)));
        assert_eq!((n.secs, n.decided_by), (86_400.0, DecidedBy::MinInterval));
        assert_eq!(n.notes, vec![Note::MinIntervalCapped(i64::from(u32::MAX))]);
        for (given, note) in [
            (None, Note::IntervalMissing),
            (Some(0), Note::IntervalNotPositive(0)),
            (Some(-5), Note::IntervalNotPositive(-5)),
        ] {
            let n = next_announce(300.0, true, given, None);
            assert_eq!(
                (n.secs, n.decided_by),
                (300.0, DecidedBy::Ours),
                "{given:?}"
            );
            assert_eq!(n.notes, vec![note]);
        }
        let n = next_announce(300.0, true, None, Some(86_401));
        assert_eq!(n.notes.len(), 2);
        assert_eq!(
            n.notes_text(),
            "no interval given: ignored; min interval 86401 s: capped at 86400 s"
        );
    }

    #[test]
    fn failures_back_off_exponentially_up_to_an_hour() {
        let waits: Vec<f64> = (1..=9).map(|f| retry_after_failure(300.0, f)).collect();
        assert_eq!(
            waits,
            vec![60.0, 120.0, 240.0, 300.0, 300.0, 300.0, 300.0, 300.0, 300.0]
        );
        let waits: Vec<f64> = (1..=9).map(|f| retry_after_failure(86_400.0, f)).collect();
        assert_eq!(
            waits,
            vec![60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0, 3600.0]
        );
        assert_eq!(retry_after_failure(10.0, 1), 60.0);
        assert_eq!(retry_after_failure(10.0, 5), 60.0);
    }
}
