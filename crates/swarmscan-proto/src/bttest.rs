//! The sans-IO half of `swarmscan bttest`, a Glasnost-style test of whether a path blocks or
//! throttles BitTorrent (Dischinger et al.): the control protocol a client and a server speak
//! ([`control`]) and the two ends of one test flow ([`flow`]): a real BitTorrent transfer
//! (handshake, bitfield, interested, unchoke, request/piece with random payload) or its
//! plain-TCP twin (the same byte counts in the same order, every byte random).
//!
//! No sockets, threads or clocks: the application feeds received bytes in, takes bytes to
//! send out, and says when a flow's time is up; randomness comes from a seed the client
//! chooses ([`Rng`]).

pub mod control;
pub mod flow;

pub use control::{Control, ControlError, ControlReader, FlowKind, FlowOutcome, FlowReport};
pub use control::{Direction, FlowSpec, VERSION};
pub use flow::{FlowEndpoint, FlowError, FlowParams, Role};

/// A small deterministic generator (SplitMix64) for payload bytes and test identifiers.
/// Not a CSPRNG: the payload only has to look like incompressible data to a middlebox, and
/// both ends derive the same info-hash from the flow's seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator started at `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        let mut chunks = out.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let bytes = self.next_u64().to_le_bytes();
            let n = rest.len();
            rest.copy_from_slice(&bytes[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn rng_is_deterministic_per_seed_and_fills_every_length() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let mut c = Rng::new(8);
        assert_eq!(a.next_u64(), b.next_u64());
        assert_ne!(a.next_u64(), c.next_u64());
        for len in [0, 1, 7, 8, 9, 100] {
            let mut x = vec![0u8; len];
            let mut y = vec![0u8; len];
            Rng::new(len as u64).fill(&mut x);
            Rng::new(len as u64).fill(&mut y);
            assert_eq!(x, y);
            if len >= 8 {
                assert!(x.iter().any(|&v| v != 0));
            }
        }
    }
}
