//! Which protocol a datagram on a worker's UDP socket belongs to. One socket per worker and
//! family carries the DHT (KRPC), uTP and UDP tracker traffic, so the scan driver sorts each
//! datagram by its content before any state lookup: KRPC messages are bencoded dictionaries
//! (first byte `d`), uTP packets carry version 1 in the low nibble of the first byte and a
//! known type in the high one, and UDP tracker replies start with a 32-bit action 0–3 (first
//! byte 0) followed by the transaction id we issued.

use crate::proto::utp::looks_like_utp;

/// The protocol a datagram's first bytes name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    /// A bencoded dictionary: a DHT query, reply or error.
    Krpc,
    /// A uTP packet (BEP 29).
    Utp,
    /// A UDP tracker reply (BEP 15): connect, announce, scrape or error.
    TrackerReply,
    /// None of the above.
    Other,
}

/// Sorts a datagram by content (see the module docs). Cheap: looks at a few header bytes.
pub fn classify(bytes: &[u8]) -> DatagramKind {
    match bytes.first() {
        Some(b'd') => DatagramKind::Krpc,
        // action 0..=3 as a big-endian u32, then the 32-bit transaction id.
        Some(0) if bytes.len() >= 8 && bytes[1] == 0 && bytes[2] == 0 && bytes[3] <= 3 => {
            DatagramKind::TrackerReply
        }
        Some(_) if looks_like_utp(bytes).is_some() => DatagramKind::Utp,
        _ => DatagramKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_protocol_is_told_apart_by_its_first_bytes() {
        assert_eq!(
            classify(b"d1:ad2:id20:aaaaaaaaaaaaaaaaaaaae1:q4:ping1:t2:aa1:y1:qe"),
            DatagramKind::Krpc
        );
        // BEP 15 connect reply: action 0, transaction id, connection id.
        let mut connect = vec![0, 0, 0, 0, 1, 2, 3, 4];
        connect.extend_from_slice(&[9; 8]);
        assert_eq!(classify(&connect), DatagramKind::TrackerReply);
        // Action 4 does not exist.
        let mut bad_action = connect.clone();
        bad_action[3] = 4;
        assert_ne!(classify(&bad_action), DatagramKind::TrackerReply);
        // A uTP SYN (type 4, version 1) with a 20-byte header.
        let mut syn = vec![0x41, 0];
        syn.extend_from_slice(&[0; 18]);
        assert_eq!(classify(&syn), DatagramKind::Utp);
        assert_eq!(classify(b""), DatagramKind::Other);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), DatagramKind::Other);
    }
}
