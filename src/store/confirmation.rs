//! The confirmation rule: a pure function from (stored progress history, new contact,
//! threshold) to the new history.
//!
//! A peer is a *confirmed download* when it was seen once with progress below the threshold
//! and later at or above it. A peer whose first known progress is already at or above the
//! threshold (a seeder, or a leecher we met too late) is never confirmed. Failed probes are not
//! inputs here: they change nothing. A contact whose progress is unknown (the torrent's piece
//! count was not known yet) is not an input either.
//!
//! The crossing time is estimated by linear interpolation between the last contact below the
//! threshold and the first at or above it (both are stored, so a study can use its own rule).

use super::record::UnixMs;

/// The progress history of one peer, as stored in its `peers` row.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProgressState {
    /// First contact with known progress.
    pub first_contact_at: Option<UnixMs>,
    /// Its progress (0..=1).
    pub first_progress: Option<f64>,
    /// Latest contact with known progress.
    pub last_contact_at: Option<UnixMs>,
    /// Its progress.
    pub last_progress: Option<f64>,
    /// Its piece count.
    pub last_have: Option<u32>,
    /// Latest contact below the threshold before the crossing.
    pub below_at: Option<UnixMs>,
    /// Its progress.
    pub below_progress: Option<f64>,
    /// First contact at or above the threshold.
    pub above_at: Option<UnixMs>,
    /// Its progress.
    pub above_progress: Option<f64>,
    /// Estimated time the threshold was crossed (confirmed peers only).
    pub crossed_at: Option<UnixMs>,
    /// Seen below, later at or above.
    pub confirmed: bool,
    /// Highest download speed between two consecutive contacts, pieces per second.
    pub max_speed: Option<f64>,
}

/// A successful contact with known progress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Contact {
    /// When.
    pub at: UnixMs,
    /// Pieces the peer has.
    pub have: u32,
    /// have / piece count (0..=1).
    pub progress: f64,
}

/// Applies one contact to a peer's history. Contacts older than the latest one already applied
/// (out of order) change nothing.
pub fn apply_contact(state: &ProgressState, contact: Contact, threshold: f64) -> ProgressState {
    let mut next = *state;
    let Contact { at, have, progress } = contact;
    let at_or_above = progress >= threshold;
    match state.last_contact_at {
        None => {
            next.first_contact_at = Some(at);
            next.first_progress = Some(progress);
            if at_or_above {
                next.above_at = Some(at);
                next.above_progress = Some(progress);
            } else {
                next.below_at = Some(at);
                next.below_progress = Some(progress);
            }
        }
        Some(last_at) if at < last_at => return next,
        Some(last_at) => {
            if let Some(last_have) = state.last_have {
                let secs = (at - last_at) as f64 / 1000.0;
                if secs > 0.0 && have > last_have {
                    let speed = f64::from(have - last_have) / secs;
                    next.max_speed = Some(state.max_speed.map_or(speed, |m| m.max(speed)));
                }
            }
            let first_below = state.first_progress.is_some_and(|p| p < threshold);
            if first_below && !state.confirmed {
                if at_or_above {
                    next.confirmed = true;
                    next.above_at = Some(at);
                    next.above_progress = Some(progress);
                    next.crossed_at = match (state.below_at, state.below_progress) {
                        (Some(b_at), Some(b_p)) => {
                            Some(crossing_time(b_at, b_p, at, progress, threshold))
                        }
                        _ => Some(at),
                    };
                } else {
                    next.below_at = Some(at);
                    next.below_progress = Some(progress);
                }
            }
        }
    }
    next.last_contact_at = Some(at);
    next.last_progress = Some(progress);
    next.last_have = Some(have);
    next
}

/// Linear interpolation of when progress reached `threshold` between a contact below it and
/// one at or above it.
pub fn crossing_time(
    below_at: UnixMs,
    below_p: f64,
    above_at: UnixMs,
    above_p: f64,
    threshold: f64,
) -> UnixMs {
    if above_p <= below_p {
        return above_at;
    }
    let share = ((threshold - below_p) / (above_p - below_p)).clamp(0.0, 1.0);
    below_at + ((above_at - below_at) as f64 * share).round() as UnixMs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(contacts: &[(UnixMs, u32, u32)], threshold: f64) -> ProgressState {
        contacts
            .iter()
            .fold(ProgressState::default(), |s, &(at, have, pieces)| {
                apply_contact(
                    &s,
                    Contact {
                        at,
                        have,
                        progress: f64::from(have) / f64::from(pieces),
                    },
                    threshold,
                )
            })
    }

    #[test]
    fn below_then_at_or_above_is_confirmed_with_interpolated_crossing() {
        // 100 pieces: 50 at t=0 s, 90 at t=300 s, 100 at t=600 s. Threshold 0.98 lies 8/10 of
        // the way from 90 to 100: 300 s + 0.8 * 300 s = 540 s.
        let s = run(
            &[(0, 50, 100), (300_000, 90, 100), (600_000, 100, 100)],
            0.98,
        );
        assert!(s.confirmed);
        assert_eq!(s.below_at, Some(300_000));
        assert_eq!(s.below_progress, Some(0.9));
        assert_eq!(s.above_at, Some(600_000));
        assert_eq!(s.crossed_at, Some(540_000));
        assert_eq!(s.first_progress, Some(0.5));
        assert_eq!(s.last_progress, Some(1.0));
        // Speeds: 40 pieces / 300 s, then 10 / 300 s; the max is 40/300.
        assert!((s.max_speed.unwrap() - 40.0 / 300.0).abs() < 1e-12);
    }

    #[test]
    fn exactly_at_threshold_counts() {
        let s = run(&[(0, 0, 50), (1000, 49, 50)], 0.98);
        assert!(s.confirmed);
        assert_eq!(s.crossed_at, Some(1000));
    }

    #[test]
    fn seeder_is_never_confirmed() {
        let s = run(&[(0, 100, 100), (1000, 100, 100), (2000, 100, 100)], 0.98);
        assert!(!s.confirmed);
        assert_eq!(s.crossed_at, None);
        assert_eq!(s.above_at, Some(0));
        assert_eq!(s.below_at, None);
        // Even if it later advertises less and then all again.
        let s = run(&[(0, 100, 100), (1000, 10, 100), (2000, 100, 100)], 0.98);
        assert!(!s.confirmed);
    }

    #[test]
    fn never_reaching_the_threshold_is_not_confirmed() {
        let s = run(&[(0, 10, 100), (1000, 50, 100), (2000, 97, 100)], 0.98);
        assert!(!s.confirmed);
        assert_eq!(s.below_at, Some(2000));
        assert_eq!(s.last_progress, Some(0.97));
    }

    #[test]
    fn threshold_is_a_parameter() {
        let contacts = [(0, 10, 100), (1000, 99, 100)];
        assert!(run(&contacts, 0.98).confirmed);
        assert!(!run(&contacts, 1.0).confirmed);
        assert!(run(&contacts, 0.5).confirmed);
    }

    #[test]
    fn confirmation_is_sticky_and_first_crossing_is_kept() {
        let s = run(
            &[
                (0, 10, 100),
                (1000, 100, 100),
                (2000, 50, 100),
                (3000, 100, 100),
            ],
            0.98,
        );
        assert!(s.confirmed);
        assert_eq!(s.above_at, Some(1000));
        assert_eq!(s.below_at, Some(0));
        assert_eq!(s.last_contact_at, Some(3000));
    }

    #[test]
    fn out_of_order_contacts_change_nothing() {
        let s = run(&[(5000, 10, 100)], 0.98);
        let t = apply_contact(
            &s,
            Contact {
                at: 1000,
                have: 100,
                progress: 1.0,
            },
            0.98,
        );
        assert_eq!(s, t);
    }

    #[test]
    fn crossing_time_edges() {
        assert_eq!(crossing_time(0, 0.5, 1000, 1.0, 0.75), 500);
        assert_eq!(crossing_time(0, 0.5, 1000, 0.5, 0.75), 1000);
        assert_eq!(crossing_time(0, 0.97, 100, 0.98, 0.98), 100);
    }
}
