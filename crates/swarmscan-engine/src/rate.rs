//! Token-bucket connect rate and in-flight cap.

use super::conversation::Millis;

/// Connects per second with a burst allowance, plus a cap on probes in flight.
#[derive(Debug, Clone)]
pub struct ConnectBudget {
    /// Tokens per millisecond times 1000 (i.e. connects per second); 0 = unlimited.
    per_sec: u64,
    burst: u64,
    /// Tokens scaled by 1000 so fractional refills are not lost.
    milli_tokens: u64,
    last: Millis,
    max_in_flight: usize,
}

impl ConnectBudget {
    /// `per_sec == 0` means no rate limit; `burst` is the bucket size in connects.
    pub fn new(per_sec: u64, burst: u64, max_in_flight: usize, now: Millis) -> ConnectBudget {
        let burst = burst.max(1);
        ConnectBudget {
            per_sec,
            burst,
            milli_tokens: burst * 1000,
            last: now,
            max_in_flight,
        }
    }

    fn refill(&mut self, now: Millis) {
        if now > self.last {
            let add = (now - self.last).saturating_mul(self.per_sec);
            self.milli_tokens = (self.milli_tokens.saturating_add(add)).min(self.burst * 1000);
            self.last = now;
        }
    }

    /// True when a connect may start now with `in_flight` probes already live.
    pub fn may_connect(&mut self, now: Millis, in_flight: usize) -> bool {
        if in_flight >= self.max_in_flight {
            return false;
        }
        if self.per_sec == 0 {
            return true;
        }
        self.refill(now);
        self.milli_tokens >= 1000
    }

    /// Takes one token (call after a connect was started).
    pub fn take(&mut self) {
        if self.per_sec != 0 {
            self.milli_tokens = self.milli_tokens.saturating_sub(1000);
        }
    }

    /// When the next token will be available, if the bucket is empty.
    pub fn next_token_at(&self) -> Option<Millis> {
        if self.per_sec == 0 || self.milli_tokens >= 1000 {
            return None;
        }
        let missing = 1000 - self.milli_tokens;
        Some(self.last + missing.div_ceil(self.per_sec))
    }

    /// The in-flight cap.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_respected_over_time() {
        let mut budget = ConnectBudget::new(100, 10, usize::MAX, 0);
        let mut started = 0;
        for now in 0..=1000 {
            while budget.may_connect(now, 0) {
                budget.take();
                started += 1;
            }
        }
        // Burst of 10 plus 100/s for one second.
        assert!((105..=111).contains(&started), "started {started}");
    }

    #[test]
    fn in_flight_cap_and_next_token() {
        let mut budget = ConnectBudget::new(10, 1, 2, 0);
        assert!(!budget.may_connect(0, 2));
        assert!(budget.may_connect(0, 1));
        budget.take();
        assert!(!budget.may_connect(0, 0));
        assert_eq!(budget.next_token_at(), Some(100));
        assert!(budget.may_connect(100, 0));
        let mut unlimited = ConnectBudget::new(0, 1, 5, 0);
        for _ in 0..100 {
            assert!(unlimited.may_connect(0, 4));
            unlimited.take();
        }
        assert_eq!(unlimited.next_token_at(), None);
    }
}
