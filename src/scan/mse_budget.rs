//! What MSE/PE costs a worker: one Diffie-Hellman key pair per worker thread, and a budget
//! of shared-secret computations per second for incoming handshakes.
//!
//! One DH exponentiation is the expensive part of an MSE handshake (see bench/README.md).
//! Reusing our key pair leaves one per handshake (the shared secret). Incoming connections
//! are not ours to pace: a flood of random bytes would otherwise buy one exponentiation per
//! 96 bytes, so each worker allows `net.mse_incoming_per_sec` of them and closes the rest
//! before computing anything.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::conversation::Millis;
use crate::proto::mse;
use crate::proto::session::MseSource;

/// `n` bytes from the kernel's CSPRNG.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        // Safety: the pointer and length describe the unfilled tail of `buf`.
        let r = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), n - filled, 0) };
        if r <= 0 {
            break; // getrandom(2) does not fail for small requests; keep what we have
        }
        filled += r as usize;
    }
    buf
}

/// Bits of our private DH exponent: the specification's minimum (128; "anything beyond 180
/// bit is not believed to add any further security"). The cost of a shared secret grows with
/// it (one squaring per bit): 128 bits take ≈ 20 % less than 160 (bench/README.md).
pub const PRIVATE_KEY_BITS: usize = 128;

/// This thread's DH key pair, made on first use from the kernel's CSPRNG and kept for the
/// thread's life (a worker is a thread). Cloning it is a reference count on a per-thread
/// allocation, so workers share nothing.
pub fn worker_dh_key() -> mse::DhKey {
    thread_local! {
        static KEY: mse::DhKey = {
            let mut private = [0u8; mse::PRIVATE_KEY_LEN];
            let random = PRIVATE_KEY_BITS / 8;
            private[mse::PRIVATE_KEY_LEN - random..].copy_from_slice(&random_bytes(random));
            mse::DhKey::new(private)
        };
    }
    KEY.with(|k| k.clone())
}

/// A short random pad (0–31 bytes): obfuscation only, so keep the bytes on the wire small.
pub fn pad() -> Vec<u8> {
    let mut bytes = random_bytes(33);
    let len = bytes[32] as usize % 32;
    bytes.truncate(len);
    bytes
}

/// What a worker gives a peer session for MSE ([`mse`]'s sans-IO handshake takes them as
/// arguments): this thread's DH key pair, pads from the kernel's CSPRNG, and the worker's
/// budget of DH computations for incoming handshakes (none: unlimited).
pub struct WorkerMse<'a> {
    budget: Option<&'a IncomingDhBudget>,
}

impl<'a> WorkerMse<'a> {
    pub fn new(budget: Option<&'a IncomingDhBudget>) -> WorkerMse<'a> {
        WorkerMse { budget }
    }
}

impl MseSource for WorkerMse<'_> {
    fn dh_key(&mut self) -> mse::DhKey {
        worker_dh_key()
    }

    fn pad(&mut self) -> Vec<u8> {
        pad()
    }

    fn admit_incoming(&mut self, now: Millis) -> bool {
        self.budget.is_none_or(|b| b.try_take(now))
    }
}

/// A per-worker budget of DH computations per second for incoming MSE handshakes, with a
/// burst of one second's worth. Shared between the worker's driver and its conversations
/// (same thread; atomics only so that both may hold it).
#[derive(Debug)]
pub struct IncomingDhBudget {
    /// Microseconds between two computations at the steady rate.
    interval_us: u64,
    /// Theoretical arrival time (GCRA) in microseconds of engine time.
    tat_us: AtomicU64,
    /// Handshakes closed because the budget was spent.
    refused: AtomicU64,
}

/// How far ahead of now the theoretical arrival time may run: the burst (one second).
const BURST_US: u64 = 1_000_000;

impl IncomingDhBudget {
    /// `per_sec` computations per second (at least 1).
    pub fn new(per_sec: u32) -> IncomingDhBudget {
        IncomingDhBudget {
            interval_us: (1_000_000 / per_sec.max(1) as u64).max(1),
            tat_us: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Takes one computation at `now`; false (and counted) when the budget is spent.
    pub fn try_take(&self, now: Millis) -> bool {
        let now_us = now.saturating_mul(1000);
        let tat = self.tat_us.load(Ordering::Relaxed).max(now_us);
        let next = tat + self.interval_us;
        if next > now_us + BURST_US {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.tat_us.store(next, Ordering::Relaxed);
        true
    }

    /// Handshakes refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_a_burst_then_the_rate() {
        let b = IncomingDhBudget::new(100);
        let burst = (0..1000).filter(|_| b.try_take(5_000)).count();
        assert_eq!(burst, 100);
        assert_eq!(b.refused(), 900);
        // Over the next 10 s: 100 per second.
        let later = (5_001..=15_000).filter(|&t| b.try_take(t)).count();
        assert!((999..=1001).contains(&later), "{later}");
    }

    /// Incoming connections through the real conversation: over budget, an MSE handshake is
    /// closed before the DH (nothing sent) and counted; under budget it is answered with our
    /// public key; short inputs and plaintext handshakes take nothing from the budget.
    #[test]
    fn incoming_budget_closes_excess_handshakes_and_counts_them() {
        use crate::engine::conversation::{Conversation, Verdict};
        use crate::proto::probe::{ProbeEnd, ProbeSettings};
        use crate::scan::catalog::{Catalog, CatalogTorrent};
        use crate::scan::driver::ProbeConv;
        use std::sync::Arc;

        let ih = [0xAB; 20];
        let catalog = Catalog::new(vec![CatalogTorrent {
            db_id: 1,
            wire_hash: ih,
            alt_hash: None,
            name: "t".into(),
            piece_count: 100.into(),
            total_size: 0,
            trackers: Vec::new(),
        }]);
        let settings = Arc::new(ProbeSettings::default());
        let budget = Arc::new(IncomingDhBudget::new(2));
        let conv = || {
            ProbeConv::incoming(settings.clone(), catalog.clone(), 1000)
                .with_incoming_budget(budget.clone())
        };
        // Step 1 of a real initiator: Ya and PadA.
        let mut step1 = Vec::new();
        let mut initiator = mse::Initiator::new(
            ih,
            [7; 20],
            vec![1; 10],
            Vec::new(),
            mse::CryptoSet::BOTH,
            Vec::new(),
        )
        .unwrap();
        initiator.start(&mut step1);

        // Fewer than 96 bytes: waits, no DH, nothing taken.
        let mut short = conv();
        let mut out = Vec::new();
        assert!(matches!(
            short.on_bytes(1000, &step1[..95], &mut out),
            Verdict::Continue
        ));
        assert!(out.is_empty());
        // A plaintext handshake is not MSE.
        let mut plain = conv();
        let hs = crate::proto::peer_wire::encode_handshake(&ih, &[1; 20], Default::default());
        assert!(matches!(
            plain.on_bytes(1000, &hs, &mut out),
            Verdict::Continue
        ));
        assert_eq!(budget.refused(), 0);

        let mut answered = 0;
        let mut closed = 0;
        for _ in 0..5 {
            let mut c = conv();
            let mut out = Vec::new();
            match c.on_bytes(1000, &step1, &mut out) {
                Verdict::Continue => {
                    // Yb (+ PadB) came back: the DH was computed.
                    assert!(out.len() >= mse::KEY_LEN);
                    answered += 1;
                }
                Verdict::Finished => {
                    assert!(out.is_empty(), "nothing is sent to a refused peer");
                    assert!(
                        matches!(c.report().end, ProbeEnd::MseFailed(ref m) if m.contains("budget"))
                    );
                    closed += 1;
                }
                Verdict::Ask => panic!("no answer before the handshake"),
            }
        }
        assert_eq!((answered, closed), (2, 3));
        assert_eq!(budget.refused(), 3);
        // A second later the budget has refilled.
        let mut c = ProbeConv::incoming(settings.clone(), catalog.clone(), 2000)
            .with_incoming_budget(budget.clone());
        let mut out = Vec::new();
        assert!(matches!(
            c.on_bytes(2000, &step1, &mut out),
            Verdict::Continue
        ));
        assert_eq!(budget.refused(), 3);
    }

    #[test]
    fn worker_key_is_made_once_per_thread() {
        let a = worker_dh_key();
        let b = worker_dh_key();
        assert_eq!(a.public_key(), b.public_key());
        let other = std::thread::spawn(|| *worker_dh_key().public_key())
            .join()
            .unwrap();
        assert_ne!(&other, a.public_key());
    }
}
