//! BEP 33 scrape bloom filters (`BFsd` seeds, `BFpe` peers): 2048 bits, k = 2, SHA-1 of the
//! IP address bytes (4 for IPv4, 16 for IPv6; never the port).

use sha1::{Digest, Sha1};
use std::fmt;
use std::net::IpAddr;

/// Size of a BEP 33 filter on the wire, in bytes.
pub const BLOOM_BYTES: usize = 256;
const BITS: usize = BLOOM_BYTES * 8;

/// A BEP 33 bloom filter.
#[derive(Clone, PartialEq, Eq)]
pub struct BloomFilter(pub [u8; BLOOM_BYTES]);

impl Default for BloomFilter {
    fn default() -> Self {
        BloomFilter([0; BLOOM_BYTES])
    }
}

impl fmt::Debug for BloomFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BloomFilter(bits set: {}, estimate: {:.1})",
            BITS - self.count_zero_bits(),
            self.estimate()
        )
    }
}

impl BloomFilter {
    /// An empty filter.
    pub fn new() -> Self {
        Self::default()
    }

    /// The filter from exactly 256 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(BloomFilter)
    }

    /// Insert an address (its bytes in network order, as BEP 33 prescribes).
    pub fn insert_ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.insert_bytes(&v4.octets()),
            IpAddr::V6(v6) => self.insert_bytes(&v6.octets()),
        }
    }

    /// Insert raw address bytes.
    pub fn insert_bytes(&mut self, ip: &[u8]) {
        for index in Self::indices(ip) {
            self.0[index / 8] |= 1 << (index % 8);
        }
    }

    /// Whether the address may be in the filter (false positives possible).
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        let indices = match ip {
            IpAddr::V4(v4) => Self::indices(&v4.octets()),
            IpAddr::V6(v6) => Self::indices(&v6.octets()),
        };
        indices
            .iter()
            .all(|&index| self.0[index / 8] & (1 << (index % 8)) != 0)
    }

    fn indices(ip: &[u8]) -> [usize; 2] {
        let hash = Sha1::digest(ip);
        let index1 = (hash[0] as usize | (hash[1] as usize) << 8) % BITS;
        let index2 = (hash[2] as usize | (hash[3] as usize) << 8) % BITS;
        [index1, index2]
    }

    /// OR another filter into this one (the union of both sets).
    pub fn union_with(&mut self, other: &BloomFilter) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a |= b;
        }
    }

    /// Number of zero bits.
    pub fn count_zero_bits(&self) -> usize {
        self.0.iter().map(|b| b.count_zeros() as usize).sum()
    }

    /// BEP 33 size estimate: `log(c/m) / (k * log(1 - 1/m))` with `c = min(m-1, zero bits)`.
    /// Unreliable beyond ~6000 items, where the filter saturates. Because of the clamp an
    /// empty filter reads 0.5; callers that need 0 check [`BloomFilter::count_zero_bits`]. A
    /// saturated filter (no zero bits) gives infinity.
    pub fn estimate(&self) -> f64 {
        let m = BITS as f64;
        let c = self.count_zero_bits().min(BITS - 1) as f64;
        (c / m).ln() / (2.0 * (1.0 - 1.0 / m).ln())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// The filter BEP 33 gives for 192.0.2.0-192.0.2.255 and 2001:DB8::-2001:DB8::3E7.
    const BEP33_FILTER_HEX: &str = "\
        F6C3F5EAA07FFD91BDE89F777F26FB2BFF37BDB8FB2BBAA2FD3DDDE7BACFFF75EE7CCBAE\
        FE5EEDB1FBFAFF67F6ABFF5E43DDBCA3FD9B9FFDF4FFD3E9DFF12D1BDF59DB53DBE9FA5B\
        7FF3B8FDFCDE1AFB8BEDD7BE2F3EE71EBBBFE93BCDEEFE148246C2BC5DBFF7E7EFDCF24F\
        D8DC7ADFFD8FFFDFDDFFF7A4BBEEDF5CB95CE81FC7FCFF1FF4FFFFDFE5F7FDCBB7FD79B3\
        FA1FC77BFE07FFF905B7B7FFC7FEFEFFE0B8370BB0CD3F5B7F2BD93FEB4386CFDD6F7FD5\
        BFAF2E9EBFFFFEECD67ADBF7C67F17EFD5D75EBA6FFEBA7FFF47A91EB1BFBB53E8ABFB57\
        62ABE8FF237279BFEFBFEEF5FFC5FEBFDFE5ADFFADFEE1FB737FFFFBFD9F6AEFFEEE76B6\
        FD8F72EF";

    fn bep33_sets() -> (BloomFilter, BloomFilter) {
        let mut v4 = BloomFilter::new();
        for last in 0..=255u8 {
            v4.insert_ip(Ipv4Addr::new(192, 0, 2, last).into());
        }
        let mut v6 = BloomFilter::new();
        for low in 0..=0x3e7u16 {
            v6.insert_ip(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, low).into());
        }
        (v4, v6)
    }

    #[test]
    fn bep33_test_vector() {
        let expected = crate::hex::decode_array::<256>(BEP33_FILTER_HEX).unwrap();
        let (v4, v6) = bep33_sets();
        let mut both = v4.clone();
        both.union_with(&v6);
        assert_eq!(both.0, expected);
        // "For the 1256 inserted values the calculated estimate should be 1224.9308"
        assert!(
            (both.estimate() - 1224.9308).abs() < 0.0001,
            "{}",
            both.estimate()
        );
        // Inserting everything into one filter gives the same bits as the union.
        let mut one = BloomFilter::new();
        for last in 0..=255u8 {
            one.insert_ip(Ipv4Addr::new(192, 0, 2, last).into());
        }
        for low in 0..=0x3e7u16 {
            one.insert_ip(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, low).into());
        }
        assert_eq!(one, both);
        assert!(both.contains_ip(Ipv4Addr::new(192, 0, 2, 7).into()));
    }

    #[test]
    fn estimate_edges() {
        // The clamp c = min(m - 1, zero bits) makes an empty filter read 0.5, not 0; kept
        // as the BEP writes it so estimates compare across implementations.
        assert!((BloomFilter::new().estimate() - 0.5).abs() < 0.001);
        let mut one = BloomFilter::new();
        one.insert_ip(Ipv4Addr::new(1, 2, 3, 4).into());
        assert!((one.estimate() - 1.0).abs() < 0.01, "{}", one.estimate());
        // A saturated filter has no zero bits: the formula gives infinity.
        let full = BloomFilter([0xff; 256]);
        assert_eq!(full.estimate(), f64::INFINITY);
        let mut one_zero = full.clone();
        one_zero.0[0] = 0xfe;
        assert!(one_zero.estimate().is_finite() && one_zero.estimate() > 7000.0);
    }
}
