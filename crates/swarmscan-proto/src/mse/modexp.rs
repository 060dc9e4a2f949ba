//! Fixed-size modular exponentiation modulo MSE's 768-bit prime, in Montgomery form.
//!
//! Numbers are 12 little-endian 64-bit limbs on the stack; the modulus constants (P, −P⁻¹ mod
//! 2⁶⁴, R mod P and R² mod P with R = 2⁷⁶⁸) are computed at compile time. Exponentiation is
//! left-to-right sliding-window over the odd powers of the base ([`WINDOW`] bits, chosen by
//! measurement: see bench/README.md). It is *not* constant-time: the exponent is our private
//! key, which is reused across connections and whose secrecy protects nothing for a
//! measurement client (MSE only obfuscates), so timing leaks are accepted for speed.
//!
//! Why our own and not a crate: in the same runs on this 2-vCPU VM, `crypto-bigint` 0.6
//! (`MontyForm`) took 117–150 µs per 768-bit exponentiation, 0.7 took 81–86 µs (and needs a
//! newer Rust than we require), `num-bigint` 179–187 µs, this code 57–68 µs; the DH is most of
//! an encrypted probe's CPU (bench/README.md).

/// Limbs of a 768-bit number.
pub(crate) const LIMBS: usize = 12;
/// A 768-bit number, least significant limb first.
pub(crate) type Limbs = [u64; LIMBS];

/// The 768-bit safe prime of the specification, big-endian hex.
pub(crate) const PRIME_HEX: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563";

/// Sliding-window width used for every exponentiation (8 precomputed odd powers).
pub const WINDOW: u32 = 4;

const fn hex_digit(c: u8) -> u64 {
    match c {
        b'0'..=b'9' => (c - b'0') as u64,
        b'a'..=b'f' => (c - b'a' + 10) as u64,
        b'A'..=b'F' => (c - b'A' + 10) as u64,
        _ => panic!("not a hex digit"),
    }
}

const fn limbs_from_hex(hex: &str) -> Limbs {
    let h = hex.as_bytes();
    assert!(h.len() == LIMBS * 16);
    let mut out = [0u64; LIMBS];
    let mut i = 0;
    while i < h.len() {
        // Digit i (from the most significant end) lands in limb (len-1-i)/16.
        let from_low = h.len() - 1 - i;
        out[from_low / 16] |= hex_digit(h[i]) << (4 * (from_low % 16));
        i += 1;
    }
    out
}

/// P.
pub(crate) const P: Limbs = limbs_from_hex(PRIME_HEX);

/// −P⁻¹ mod 2⁶⁴ (Newton's iteration doubles the correct low bits each step).
const N0: u64 = {
    let mut inv: u64 = 1;
    let mut i = 0;
    while i < 7 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(P[0].wrapping_mul(inv)));
        i += 1;
    }
    inv.wrapping_neg()
};

const fn geq(a: &Limbs, b: &Limbs) -> bool {
    let mut i = LIMBS;
    while i > 0 {
        i -= 1;
        if a[i] != b[i] {
            return a[i] > b[i];
        }
    }
    true
}

/// `a - b` modulo 2⁷⁶⁸.
const fn sub(a: &Limbs, b: &Limbs) -> Limbs {
    let mut out = [0u64; LIMBS];
    let mut borrow = 0u64;
    let mut i = 0;
    while i < LIMBS {
        let (d, b1) = a[i].overflowing_sub(b[i]);
        let (d, b2) = d.overflowing_sub(borrow);
        out[i] = d;
        borrow = (b1 | b2) as u64;
        i += 1;
    }
    out
}

/// R mod P = 2⁷⁶⁸ − P (P > 2⁷⁶⁷): the Montgomery form of 1.
const ONE: Limbs = sub(&[0; LIMBS], &P);

/// R² mod P, by doubling R mod P 768 times.
const R2: Limbs = {
    let mut r = ONE;
    let mut n = 0;
    while n < 768 {
        let carry = r[LIMBS - 1] >> 63;
        let mut i = LIMBS - 1;
        while i > 0 {
            r[i] = (r[i] << 1) | (r[i - 1] >> 63);
            i -= 1;
        }
        r[0] <<= 1;
        if carry == 1 || geq(&r, &P) {
            r = sub(&r, &P);
        }
        n += 1;
    }
    r
};

#[inline(always)]
fn mac(t: u64, a: u64, b: u64, carry: u64) -> (u64, u64) {
    let s = t as u128 + (a as u128) * (b as u128) + carry as u128;
    (s as u64, (s >> 64) as u64)
}

/// Montgomery product `a·b·R⁻¹ mod P` (CIOS), for `a, b < P`; the result is below P.
#[inline(always)]
fn mont_mul(a: &Limbs, b: &Limbs) -> Limbs {
    let mut t = [0u64; LIMBS + 2];
    for &bi in b {
        let mut c = 0u64;
        for j in 0..LIMBS {
            (t[j], c) = mac(t[j], a[j], bi, c);
        }
        let s = t[LIMBS] as u128 + c as u128;
        t[LIMBS] = s as u64;
        t[LIMBS + 1] = (s >> 64) as u64;
        let m = t[0].wrapping_mul(N0);
        let (_, mut c) = mac(t[0], m, P[0], 0);
        for j in 1..LIMBS {
            (t[j - 1], c) = mac(t[j], m, P[j], c);
        }
        let s = t[LIMBS] as u128 + c as u128;
        t[LIMBS - 1] = s as u64;
        t[LIMBS] = t[LIMBS + 1] + (s >> 64) as u64;
    }
    let mut r = [0u64; LIMBS];
    r.copy_from_slice(&t[..LIMBS]);
    if t[LIMBS] != 0 || geq(&r, &P) {
        r = sub(&r, &P);
    }
    r
}

/// Big-endian bytes to limbs.
pub(crate) fn from_be_bytes(bytes: &[u8; LIMBS * 8]) -> Limbs {
    let mut out = [0u64; LIMBS];
    for (i, chunk) in bytes.rchunks_exact(8).enumerate() {
        out[i] = u64::from_be_bytes(chunk.try_into().expect("8 bytes"));
    }
    out
}

/// Limbs to big-endian bytes.
pub(crate) fn to_be_bytes(limbs: &Limbs) -> [u8; LIMBS * 8] {
    let mut out = [0u8; LIMBS * 8];
    for (chunk, limb) in out.rchunks_exact_mut(8).zip(limbs) {
        chunk.copy_from_slice(&limb.to_be_bytes());
    }
    out
}

/// Whether `a < b`.
pub(crate) fn less(a: &Limbs, b: &Limbs) -> bool {
    !geq(a, b)
}

/// `base^exp mod P` with a sliding window of `window` bits (1..=6). `exp` is big-endian;
/// `base` may be any 768-bit number (it is reduced first).
pub(crate) fn pow_mod_p(base: &Limbs, exp: &[u8], window: u32) -> Limbs {
    assert!((1..=6).contains(&window), "window of 1..=6 bits");
    // 2⁷⁶⁸ < 2P, so one subtraction reduces any 768-bit base.
    let base = if geq(base, &P) { sub(base, &P) } else { *base };
    let b = mont_mul(&base, &R2);
    // Odd powers b, b³, b⁵, ... (2^(window-1) of them).
    let mut table = [ONE; 32];
    table[0] = b;
    let count = 1usize << (window - 1);
    if count > 1 {
        let b2 = mont_mul(&b, &b);
        for i in 1..count {
            table[i] = mont_mul(&table[i - 1], &b2);
        }
    }
    let bits = exp.len() * 8;
    let bit = |i: usize| (exp[exp.len() - 1 - i / 8] >> (i % 8)) & 1;
    let mut acc = ONE;
    let mut started = false;
    let mut i = bits;
    while i > 0 {
        let top = i - 1;
        if bit(top) == 0 {
            if started {
                acc = mont_mul(&acc, &acc);
            }
            i -= 1;
            continue;
        }
        // The longest run top..=low of at most `window` bits that ends in a 1.
        let mut low = (top + 1).saturating_sub(window as usize);
        while bit(low) == 0 {
            low += 1;
        }
        let mut digit = 0usize;
        for k in (low..=top).rev() {
            digit = (digit << 1) | bit(k) as usize;
            if started {
                acc = mont_mul(&acc, &acc);
            }
        }
        acc = if started {
            mont_mul(&acc, &table[digit >> 1])
        } else {
            table[digit >> 1]
        };
        started = true;
        i = low;
    }
    // Out of Montgomery form: multiply by 1.
    let mut one = [0u64; LIMBS];
    one[0] = 1;
    mont_mul(&acc, &one)
}

/// `base^exp mod P` on big-endian bytes with a chosen window (for benchmarks and tests).
#[doc(hidden)]
pub fn modexp_with_window(base: &[u8; LIMBS * 8], exp: &[u8], window: u32) -> [u8; LIMBS * 8] {
    to_be_bytes(&pow_mod_p(&from_be_bytes(base), exp, window))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants() {
        let hex: String = to_be_bytes(&P).iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(hex, PRIME_HEX);
        assert_eq!(P[0].wrapping_mul(N0.wrapping_neg()), 1);
        // R·R⁻¹: mont_mul(R², 1) = R mod P.
        let mut one = [0u64; LIMBS];
        one[0] = 1;
        assert_eq!(mont_mul(&R2, &one), ONE);
        assert_eq!(mont_mul(&ONE, &one), one);
    }
}
