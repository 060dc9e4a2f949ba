//! The node's randomness and keyed hashes: a seeded generator (the caller supplies the seed,
//! so simulations are deterministic and production passes OS randomness), write tokens
//! (BEP 5) and transaction ids that prove we sent the query (zmap style).

use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// A deterministic generator: SHA-256 of the seed and a counter. Slow next to a plain PRNG
/// but the node draws few numbers (secrets, node ids, refresh targets), and its output
/// cannot be predicted by a peer who sees some of it.
#[derive(Clone)]
pub struct SeededRng {
    seed: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl SeededRng {
    pub fn new(seed: [u8; 32]) -> Self {
        SeededRng {
            seed,
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.used == self.block.len() {
                let mut h = Sha256::new();
                h.update(self.seed);
                h.update(self.counter.to_be_bytes());
                self.block = h.finalize().into();
                self.counter += 1;
                self.used = 0;
            }
            *b = self.block[self.used];
            self.used += 1;
        }
    }

    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        self.fill(&mut out);
        out
    }
}

fn put_addr(h: &mut Sha256, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => h.update(v4.octets()),
        IpAddr::V6(v6) => h.update(v6.octets()),
    }
}

/// Length of our write tokens.
pub const TOKEN_LEN: usize = 8;

/// Write tokens: a keyed hash of the requester's IP. The secret changes every
/// [`TOKEN_ROTATION`]; a token made with the previous secret is still accepted, so a token
/// lives between 5 and 10 minutes (BEP 5).
pub struct Tokens {
    current: [u8; 32],
    previous: [u8; 32],
    rotated_at: Instant,
}

/// How often the token secret changes.
pub const TOKEN_ROTATION: Duration = Duration::from_secs(5 * 60);

impl Tokens {
    pub fn new(rng: &mut SeededRng, now: Instant) -> Self {
        Tokens {
            current: rng.bytes(),
            previous: rng.bytes(),
            rotated_at: now,
        }
    }

    /// Rotate the secret if its time has come.
    pub fn tick(&mut self, rng: &mut SeededRng, now: Instant) {
        if now.saturating_duration_since(self.rotated_at) >= TOKEN_ROTATION {
            self.previous = self.current;
            self.current = rng.bytes();
            self.rotated_at = now;
        }
    }

    fn make(secret: &[u8; 32], ip: IpAddr) -> [u8; TOKEN_LEN] {
        let mut h = Sha256::new();
        h.update(secret);
        put_addr(&mut h, ip);
        let d = h.finalize();
        let mut t = [0u8; TOKEN_LEN];
        t.copy_from_slice(&d[..TOKEN_LEN]);
        t
    }

    /// The token to hand to `ip` now.
    pub fn issue(&self, ip: IpAddr) -> [u8; TOKEN_LEN] {
        Self::make(&self.current, ip)
    }

    /// Whether `token` was issued to `ip` with the current or the previous secret.
    pub fn check(&self, ip: IpAddr, token: &[u8]) -> bool {
        token == Self::make(&self.current, ip) || token == Self::make(&self.previous, ip)
    }

    /// When the next rotation is due.
    pub fn next_rotation(&self) -> Instant {
        self.rotated_at + TOKEN_ROTATION
    }
}

/// Length of our transaction ids: a 2-byte sequence number, then 4 bytes of keyed hash over
/// (destination, sequence number).
pub const TID_LEN: usize = 6;

/// Transaction ids keyed by destination: a reply is matched against our table of outstanding
/// queries only if its id is one we could have sent to the address it came from, so forged or
/// stray replies cost one hash and no table look-up.
pub struct TransactionIds {
    secret: [u8; 32],
    next_seq: u16,
}

impl TransactionIds {
    pub fn new(rng: &mut SeededRng) -> Self {
        TransactionIds {
            secret: rng.bytes(),
            next_seq: rng.bytes::<2>().iter().fold(0, |a, b| a << 8 | *b as u16),
        }
    }

    fn mac(&self, to: SocketAddr, seq: u16) -> [u8; 4] {
        let mut h = Sha256::new();
        h.update(self.secret);
        put_addr(&mut h, to.ip());
        h.update(to.port().to_be_bytes());
        h.update(seq.to_be_bytes());
        let d = h.finalize();
        [d[0], d[1], d[2], d[3]]
    }

    /// The next sequence number (the caller skips ones still outstanding to the same address).
    pub fn next_seq(&mut self) -> u16 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        s
    }

    /// The transaction id for query `seq` to `to`.
    pub fn encode(&self, to: SocketAddr, seq: u16) -> [u8; TID_LEN] {
        let m = self.mac(to, seq);
        let s = seq.to_be_bytes();
        [s[0], s[1], m[0], m[1], m[2], m[3]]
    }

    /// The sequence number, if `tid` is one we issued to `from`.
    pub fn verify(&self, from: SocketAddr, tid: &[u8]) -> Option<u16> {
        if tid.len() != TID_LEN {
            return None;
        }
        let seq = u16::from_be_bytes([tid[0], tid[1]]);
        (self.mac(from, seq) == tid[2..]).then_some(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_per_seed() {
        let mut a = SeededRng::new([1; 32]);
        let mut b = SeededRng::new([1; 32]);
        let mut c = SeededRng::new([2; 32]);
        let xa: [u8; 50] = a.bytes();
        assert_eq!(xa, b.bytes::<50>());
        assert_ne!(xa, c.bytes::<50>());
    }

    #[test]
    fn tokens_bind_ip_and_survive_one_rotation() {
        let t0 = Instant::now();
        let mut rng = SeededRng::new([3; 32]);
        let mut tokens = Tokens::new(&mut rng, t0);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let tok = tokens.issue(a);
        assert!(tokens.check(a, &tok));
        assert!(
            !tokens.check(b, &tok),
            "token is bound to the requester's IP"
        );
        tokens.tick(&mut rng, t0 + Duration::from_secs(299));
        assert_eq!(tokens.issue(a), tok, "no rotation before 5 minutes");
        tokens.tick(&mut rng, t0 + TOKEN_ROTATION);
        assert_ne!(tokens.issue(a), tok);
        assert!(tokens.check(a, &tok), "previous secret accepted");
        tokens.tick(&mut rng, t0 + 2 * TOKEN_ROTATION);
        assert!(
            !tokens.check(a, &tok),
            "two rotations later the token is dead"
        );
        assert!(!tokens.check(a, b"short"));
    }

    #[test]
    fn transaction_ids_only_verify_for_their_destination() {
        let mut rng = SeededRng::new([4; 32]);
        let mut tids = TransactionIds::new(&mut rng);
        let a: SocketAddr = ([127, 0, 0, 1], 6881).into();
        let b: SocketAddr = ([127, 0, 0, 1], 6882).into();
        let seq = tids.next_seq();
        let tid = tids.encode(a, seq);
        assert_eq!(tids.verify(a, &tid), Some(seq));
        assert_eq!(tids.verify(b, &tid), None, "same id from another address");
        let mut forged = tid;
        forged[5] ^= 1;
        assert_eq!(tids.verify(a, &forged), None);
        assert_eq!(tids.verify(a, &tid[..4]), None);
        assert_ne!(tids.next_seq(), seq);
    }
}
