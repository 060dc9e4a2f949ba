//! Per-source rate limit for the queries we answer: a token bucket per address prefix
//! (IPv4 /24, IPv6 /48, so one host cannot dodge it by rotating addresses within its
//! network), in a bounded table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The prefix a source is counted under.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Prefix {
    V4([u8; 3]),
    V6([u8; 6]),
}

impl Prefix {
    pub fn of(ip: IpAddr) -> Prefix {
        match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Prefix::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                Prefix::V6([o[0], o[1], o[2], o[3], o[4], o[5]])
            }
        }
    }
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets per prefix. When the table is full, idle prefixes (bucket refilled) are
/// forgotten; if none is idle, unknown prefixes share one overflow bucket, so a flood of
/// new addresses is limited as a whole instead of growing the table.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    max_prefixes: usize,
    buckets: HashMap<Prefix, Bucket>,
    overflow: Bucket,
    last_purge: Option<Instant>,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32, max_prefixes: usize, now: Instant) -> Self {
        RateLimiter {
            per_second: per_second as f64,
            burst: burst.max(1) as f64,
            max_prefixes: max_prefixes.max(1),
            buckets: HashMap::new(),
            overflow: Bucket {
                tokens: burst.max(1) as f64,
                updated: now,
            },
            last_purge: None,
        }
    }

    fn refill(bucket: &mut Bucket, per_second: f64, burst: f64, now: Instant) {
        let dt = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + dt * per_second).min(burst);
        bucket.updated = now;
    }

    /// Whether one more query from `ip` may be answered now (and count it if so).
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let prefix = Prefix::of(ip);
        let (per_second, burst) = (self.per_second, self.burst);
        if !self.buckets.contains_key(&prefix) && self.buckets.len() >= self.max_prefixes {
            self.purge_idle(now);
        }
        let bucket = if let Some(b) = self.buckets.get_mut(&prefix) {
            b
        } else if self.buckets.len() < self.max_prefixes {
            self.buckets.entry(prefix).or_insert(Bucket {
                tokens: burst,
                updated: now,
            })
        } else {
            &mut self.overflow
        };
        Self::refill(bucket, per_second, burst, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forget prefixes whose bucket has refilled; at most once a second, because it walks
    /// the whole table.
    fn purge_idle(&mut self, now: Instant) {
        if self
            .last_purge
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_purge = Some(now);
        let (per_second, burst) = (self.per_second, self.burst);
        self.buckets.retain(|_, b| {
            Self::refill(b, per_second, burst, now);
            b.tokens < burst
        });
    }

    #[cfg(test)]
    pub fn tracked_prefixes(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_per_prefix() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(2, 5, 100, t0);
        let a: IpAddr = [10, 0, 0, 1].into();
        let same_net: IpAddr = [10, 0, 0, 99].into();
        let other: IpAddr = [10, 0, 1, 1].into();
        let allowed = (0..20).filter(|_| rl.allow(a, t0)).count();
        assert_eq!(allowed, 5, "the burst");
        assert!(!rl.allow(same_net, t0), "same /24 shares the bucket");
        assert!(rl.allow(other, t0), "another /24 has its own");
        let later = t0 + Duration::from_secs(1);
        let allowed = (0..20).filter(|_| rl.allow(a, later)).count();
        assert_eq!(allowed, 2, "refilled at 2/s");
    }

    #[test]
    fn table_is_bounded_and_flood_shares_overflow() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(1, 2, 16, t0);
        let mut allowed = 0;
        for i in 0..1000u32 {
            let ip: IpAddr = [11, (i >> 8) as u8, i as u8, 1].into();
            allowed += rl.allow(ip, t0) as usize;
        }
        assert!(rl.tracked_prefixes() <= 16);
        // One query from each of 16 tracked prefixes, then the overflow bucket's burst of 2
        // shared by the other 984.
        assert_eq!(allowed, 16 + 2);
        // Once everyone is idle again, new prefixes get their own bucket.
        let later = t0 + Duration::from_secs(10);
        assert!(rl.allow([12, 0, 0, 1].into(), later));
        assert!(rl.tracked_prefixes() <= 16);
    }

    #[test]
    fn ipv6_prefix_is_48_bits() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:ffff::1".parse().unwrap();
        let c: IpAddr = "2001:db8:2::1".parse().unwrap();
        assert_eq!(Prefix::of(a), Prefix::of(b));
        assert_ne!(Prefix::of(a), Prefix::of(c));
    }
}
