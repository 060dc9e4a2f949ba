//! The handshake bytes the benchmark's fake swarm and kernel floor exchange (the engine side
//! runs the real probe, `scan::driver::ProbeConv`).

/// Length of a BitTorrent handshake.
pub const HANDSHAKE_LEN: usize = 68;
const PSTR: &[u8; 20] = b"\x13BitTorrent protocol";

/// Builds a handshake for `info_hash` and `peer_id`.
pub fn handshake(info_hash: &[u8; 20], peer_id: &[u8; 20]) -> [u8; HANDSHAKE_LEN] {
    let mut hs = [0u8; HANDSHAKE_LEN];
    hs[..20].copy_from_slice(PSTR);
    // Reserved: extension protocol (BEP 10), fast extension (BEP 6), DHT (BEP 5).
    hs[25] = 0x10;
    hs[27] = 0x05;
    hs[28..48].copy_from_slice(info_hash);
    hs[48..68].copy_from_slice(peer_id);
    hs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_is_one_the_probe_accepts() {
        let mut reader = crate::proto::peer_wire::MessageReader::default();
        reader.feed(&handshake(&[9; 20], &[7; 20]));
        let parsed = reader.read_handshake().unwrap().expect("a whole handshake");
        assert_eq!(parsed.info_hash, [9; 20]);
        assert_eq!(parsed.peer_id, [7; 20]);
    }
}
