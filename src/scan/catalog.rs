//! The torrents being scanned: read-mostly, shared by every worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// One torrent as the scan needs it.
#[derive(Debug)]
pub struct CatalogTorrent {
    /// Row id in the store.
    pub db_id: i64,
    /// The 20-byte hash used on the wire (v1, or the truncated v2 hash of a v2-only torrent).
    pub wire_hash: [u8; 20],
    /// Other hash a hybrid torrent is also known under on the wire (truncated v2).
    pub alt_hash: Option<[u8; 20]>,
    pub name: String,
    /// 0 when unknown (a bare info-hash or a magnet whose metadata we don't have yet);
    /// set once when a probe fetches the metadata (see [`CatalogTorrent::pieces`]).
    pub piece_count: AtomicU32,
    /// Total size in bytes (0 when unknown).
    pub total_size: u64,
    /// Tracker URLs by tier.
    pub trackers: Vec<Vec<String>>,
}

impl CatalogTorrent {
    /// Piece count, 0 when still unknown.
    pub fn pieces(&self) -> u32 {
        self.piece_count.load(Ordering::Relaxed)
    }

    /// Records the piece count learned from fetched metadata; true if it was unknown before.
    pub fn learn_pieces(&self, n: u32) -> bool {
        self.piece_count
            .compare_exchange(0, n, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// All torrents of a scan, indexed by position (the `torrent` of a peer) and by hash.
#[derive(Debug, Default)]
pub struct Catalog {
    pub torrents: Vec<CatalogTorrent>,
    by_hash: HashMap<[u8; 20], u32>,
    /// MSE's `HASH('req2', info-hash)` → info-hash, for encrypted incoming connections.
    by_req2: HashMap<[u8; 20], [u8; 20]>,
}

impl Catalog {
    pub fn new(torrents: Vec<CatalogTorrent>) -> Arc<Catalog> {
        let mut by_hash = HashMap::new();
        let mut by_req2 = HashMap::new();
        for (i, t) in torrents.iter().enumerate() {
            for h in std::iter::once(t.wire_hash).chain(t.alt_hash) {
                by_hash.insert(h, i as u32);
                by_req2.insert(crate::proto::mse::req2_hash(&h), h);
            }
        }
        Arc::new(Catalog {
            torrents,
            by_hash,
            by_req2,
        })
    }

    /// The info-hash an MSE initiator asked for (by its `req2` hash), if we scan it.
    pub fn by_req2(&self, req2: &[u8; 20]) -> Option<[u8; 20]> {
        self.by_req2.get(req2).copied()
    }

    pub fn index_of(&self, hash: &[u8; 20]) -> Option<u32> {
        self.by_hash.get(hash).copied()
    }

    pub fn get(&self, idx: u32) -> &CatalogTorrent {
        &self.torrents[idx as usize]
    }

    pub fn len(&self) -> usize {
        self.torrents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.torrents.is_empty()
    }
}

impl crate::proto::probe::TorrentLookup for Catalog {
    fn piece_count(&self, info_hash: &[u8; 20]) -> Option<u32> {
        self.index_of(info_hash).map(|i| self.get(i).pieces())
    }
}
