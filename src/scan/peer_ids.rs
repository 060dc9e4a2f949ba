//! Which known peer a peer-id belongs to, shared by the workers.
//!
//! An incoming connection names its peer by (ip, listen port from the extension handshake).
//! Some clients send no listen port (libtorrent on IPv6 until it learns its external IPv6
//! address); their connection comes from an ephemeral port. When the same client was reached
//! by a probe of ours, its peer-id tells which known peer it is, so it is not counted twice.
//! Bounded: when full, new peer-ids are not remembered (counted).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Most peer-ids remembered (about 60 bytes each).
pub const MAX_PEER_IDS: usize = 1 << 20;

/// (torrent, peer-id) → the peer's listen address, as our probes found it.
#[derive(Debug, Default)]
pub struct PeerIds {
    map: Mutex<HashMap<(u32, [u8; 20]), SocketAddr>>,
    /// Peer-ids not remembered because the map was full.
    pub full: AtomicU64,
}

impl PeerIds {
    /// Remembers that `peer_id` answered at `addr` for `torrent`.
    pub fn learn(&self, torrent: u32, peer_id: [u8; 20], addr: SocketAddr) {
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        if map.len() >= MAX_PEER_IDS && !map.contains_key(&(torrent, peer_id)) {
            self.full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        map.insert((torrent, peer_id), addr);
    }

    /// The known listen address of the peer that sent `peer_id` from `ip`, if a probe found it
    /// there (same torrent, same IP).
    pub fn find(
        &self,
        torrent: u32,
        peer_id: &[u8; 20],
        ip: std::net::IpAddr,
    ) -> Option<SocketAddr> {
        let map = self.map.lock().ok()?;
        map.get(&(torrent, *peer_id))
            .copied()
            .filter(|a| a.ip().to_canonical() == ip.to_canonical())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_known_peer_by_peer_id_at_the_same_ip_only() {
        let ids = PeerIds::default();
        let addr: SocketAddr = "[::1]:40001".parse().unwrap();
        ids.learn(3, *b"-LT2110-aaaaaaaaaaaa", addr);
        assert_eq!(
            ids.find(3, b"-LT2110-aaaaaaaaaaaa", "::1".parse().unwrap()),
            Some(addr)
        );
        assert_eq!(
            ids.find(4, b"-LT2110-aaaaaaaaaaaa", "::1".parse().unwrap()),
            None
        );
        assert_eq!(
            ids.find(3, b"-LT2110-bbbbbbbbbbbb", "::1".parse().unwrap()),
            None
        );
        assert_eq!(
            ids.find(3, b"-LT2110-aaaaaaaaaaaa", "127.0.0.1".parse().unwrap()),
            None,
            "another address with the same peer-id is another peer"
        );
    }
}
