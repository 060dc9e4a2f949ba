//! Node ids (160-bit, XOR metric) and the BEP 42 rule tying a node id to its IP address.

use std::fmt;
use std::net::IpAddr;

/// A 160-bit DHT key: a node id, an info-hash or a lookup target.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id20(pub [u8; 20]);

impl Id20 {
    /// The id from exactly 20 bytes; `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Id20> {
        bytes.try_into().ok().map(Id20)
    }

    /// Kademlia distance: the XOR of both ids. Distances compare as big-endian integers,
    /// which is exactly the derived `Ord` on the byte array.
    pub fn distance(&self, other: &Id20) -> Id20 {
        let mut out = [0u8; 20];
        for (o, (a, b)) in out.iter_mut().zip(self.0.iter().zip(other.0.iter())) {
            *o = a ^ b;
        }
        Id20(out)
    }

    /// Number of leading zero bits (160 for the zero id); with [`Id20::distance`] this is the
    /// length of the common prefix, i.e. the routing-table bucket index.
    pub fn leading_zeros(&self) -> u32 {
        let mut n = 0;
        for b in self.0 {
            if b == 0 {
                n += 8;
            } else {
                return n + b.leading_zeros();
            }
        }
        n
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.0)
    }
}

impl fmt::Debug for Id20 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id20({})", self.to_hex())
    }
}

impl fmt::Display for Id20 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl From<[u8; 20]> for Id20 {
    fn from(b: [u8; 20]) -> Self {
        Id20(b)
    }
}

/// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), as BEP 42 requires.
pub fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = crc32c_table();
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0x82F6_3B78 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

const V4_MASK: [u8; 4] = [0x03, 0x0f, 0x3f, 0xff];
const V6_MASK: [u8; 8] = [0x01, 0x03, 0x07, 0x0f, 0x1f, 0x3f, 0x7f, 0xff];

/// The BEP 42 hash for `ip` and `r` (only the low 3 bits of `r` count): CRC32C of the masked
/// address (IPv4: all 4 bytes; IPv6: the high 8 bytes) with `r` in the top 3 bits.
/// A valid node id starts with the top 21 bits of this value.
pub fn bep42_hash(ip: IpAddr, r: u8) -> u32 {
    let r = r & 7;
    match ip {
        IpAddr::V4(v4) => {
            let mut b = v4.octets();
            for (x, m) in b.iter_mut().zip(V4_MASK) {
                *x &= m;
            }
            b[0] |= r << 5;
            crc32c(&b)
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut b = [0u8; 8];
            for i in 0..8 {
                b[i] = o[i] & V6_MASK[i];
            }
            b[0] |= r << 5;
            crc32c(&b)
        }
    }
}

/// A BEP 42 node id for `ip`: the 21-bit prefix from [`bep42_hash`], then `random` bytes,
/// and `rand_byte` last (its low 3 bits are the `r` used for the prefix).
/// The caller supplies the randomness (this module has no random source).
pub fn bep42_node_id(ip: IpAddr, rand_byte: u8, random: [u8; 17]) -> Id20 {
    let crc = bep42_hash(ip, rand_byte);
    let mut id = [0u8; 20];
    id[0] = (crc >> 24) as u8;
    id[1] = (crc >> 16) as u8;
    id[2] = ((crc >> 8) as u8 & 0xf8) | (random[0] & 0x07);
    id[3..19].copy_from_slice(&random[1..17]);
    id[19] = rand_byte;
    Id20(id)
}

/// Whether `id` satisfies BEP 42 for `ip` (its first 21 bits match the hash computed with
/// the `r` taken from its last byte). Does not apply the local-network exemption; see
/// [`bep42_exempt`].
pub fn bep42_id_matches(id: &Id20, ip: IpAddr) -> bool {
    let crc = bep42_hash(ip, id.0[19]);
    id.0[0] == (crc >> 24) as u8
        && id.0[1] == (crc >> 16) as u8
        && id.0[2] & 0xf8 == (crc >> 8) as u8 & 0xf8
}

/// Addresses BEP 42 exempts from the check: 10/8, 172.16/12, 192.168/16, 169.254/16,
/// 127/8 (and, by the same reasoning, IPv6 loopback, link-local and unique-local).
pub fn bep42_exempt(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local() || v4.is_loopback(),
        IpAddr::V6(v6) => {
            let seg0 = v6.segments()[0];
            v6.is_loopback() || (seg0 & 0xffc0) == 0xfe80 || (seg0 & 0xfe00) == 0xfc00
        }
    }
}

/// BEP 42 verification as a node applies it: exempt addresses always pass.
pub fn bep42_verify(id: &Id20, ip: IpAddr) -> bool {
    bep42_exempt(ip) || bep42_id_matches(id, ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;

    /// The test vectors from BEP 42 (IP, rand, example node id).
    const VECTORS: [(&str, u8, &str); 5] = [
        (
            "124.31.75.21",
            1,
            "5fbfbff10c5d6a4ec8a88e4c6ab4c28b95eee401",
        ),
        (
            "21.75.31.124",
            86,
            "5a3ce9c14e7a08645677bbd1cfe7d8f956d53256",
        ),
        (
            "65.23.51.170",
            22,
            "a5d43220bc8f112a3d426c84764f8c2a1150e616",
        ),
        (
            "84.124.73.14",
            65,
            "1b0321dd1bb1fe518101ceef99462b947a01ff41",
        ),
        (
            "43.213.53.83",
            90,
            "e56f6cbf5b7c4be0237986d5243b87aa6d51305a",
        ),
    ];

    #[test]
    fn crc32c_check_value() {
        // The standard CRC-32C check value.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn bep42_test_vectors_verify() {
        for (ip, rand, id) in VECTORS {
            let ip: IpAddr = ip.parse().unwrap();
            let id = Id20(hex::decode_array::<20>(id).unwrap());
            assert_eq!(id.0[19], rand);
            assert!(bep42_id_matches(&id, ip), "{ip}");
            assert!(bep42_verify(&id, ip));
            // The same id does not belong to a different public address...
            let other: IpAddr = "8.8.8.8".parse().unwrap();
            assert!(!bep42_id_matches(&id, other), "{ip}");
            // ...and flipping a bit of the 21-bit prefix breaks it.
            let mut bad = id;
            bad.0[2] ^= 0x08;
            assert!(!bep42_id_matches(&bad, ip));
            // The low 3 bits of byte 2 are free.
            let mut free = id;
            free.0[2] ^= 0x07;
            assert!(bep42_id_matches(&free, ip));
        }
    }

    #[test]
    fn bep42_generated_ids_match_vectors_prefix() {
        for (ip, rand, id) in VECTORS {
            let ip: IpAddr = ip.parse().unwrap();
            let want = hex::decode_array::<20>(id).unwrap();
            let mut random = [0u8; 17];
            random[0] = want[2] & 7;
            random[1..].copy_from_slice(&want[3..19]);
            assert_eq!(bep42_node_id(ip, rand, random).0, want);
        }
    }

    #[test]
    fn bep42_v6_and_exemptions() {
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        for r in 0..8u8 {
            let id = bep42_node_id(ip, r | 0xa0, [0x5a; 17]);
            assert!(bep42_id_matches(&id, ip));
            // Only the high 64 bits count for IPv6.
            assert!(bep42_id_matches(&id, "2001:db8::ffff:1".parse().unwrap()));
        }
        let zero = Id20([0; 20]);
        for local in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.3.4",
            "127.0.0.1",
            "::1",
        ] {
            assert!(bep42_verify(&zero, local.parse().unwrap()), "{local}");
        }
        assert!(!bep42_exempt("172.32.0.1".parse().unwrap()));
    }

    #[test]
    fn xor_distance() {
        let a = Id20([0xff; 20]);
        let mut b = a;
        b.0[19] = 0xfe;
        assert_eq!(a.distance(&b).leading_zeros(), 159);
        assert_eq!(a.distance(&a).leading_zeros(), 160);
        assert_eq!(a.distance(&Id20([0; 20])), a);
        let mut c = a;
        c.0[0] = 0x7f;
        assert_eq!(a.distance(&c).leading_zeros(), 0);
        assert!(a.distance(&b) < a.distance(&c));
    }
}
