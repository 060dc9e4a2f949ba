//! The torrents being scanned: read-mostly, shared by every worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::proto::probe::{MetadataPermit, MetadataRefusal};

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

/// Limits of metadata fetches (BEP 9 ut_metadata) for torrents known by hash or magnet
/// (`peer.metadata_max_bytes`, `peer.metadata_fetches_per_torrent`, `peer.metadata_fetches`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataLimits {
    /// Largest size a peer may claim, bytes.
    pub max_bytes: u64,
    /// Fetches of one torrent at once.
    pub per_torrent: u32,
    /// Fetches at once, all torrents together.
    pub total: u32,
}

impl Default for MetadataLimits {
    fn default() -> Self {
        MetadataLimits {
            max_bytes: crate::proto::probe::MAX_METADATA_SIZE as u64,
            per_torrent: 2,
            total: 8,
        }
    }
}

/// The metadata fetches under way, shared by every worker: what a peer's claim of a size may
/// start (see [`crate::proto::probe::TorrentLookup::metadata_permit`]).
///
/// A claim above `max_bytes` is refused. Of a torrent's `per_torrent` places, one may go to a
/// large claim (above `max_bytes / 8`, 1 MiB by default; real info dictionaries rarely are);
/// the others only to smaller ones. So peers that all claim the largest size allowed (the
/// cheapest attack) hold one place, and a peer with the real metadata finds another free.
/// A peer whose fetch fails does not get a place again (see `ScanDriver`).
#[derive(Debug, Default)]
pub struct MetadataBudget {
    limits: MetadataLimits,
    /// Fetches under way, per torrent and in all.
    per_torrent: Vec<AtomicU32>,
    /// Fetches of large claims under way, per torrent (at most one).
    large: Vec<AtomicU32>,
    total: AtomicU32,
    /// Fetches started.
    pub started: AtomicU64,
    /// Claims above `max_bytes` (or 0) refused.
    pub refused_too_large: AtomicU64,
    /// Claims refused because enough fetches were under way.
    pub refused_busy: AtomicU64,
}

impl MetadataBudget {
    fn new(limits: MetadataLimits, torrents: usize) -> MetadataBudget {
        MetadataBudget {
            limits,
            per_torrent: (0..torrents).map(|_| AtomicU32::new(0)).collect(),
            large: (0..torrents).map(|_| AtomicU32::new(0)).collect(),
            ..MetadataBudget::default()
        }
    }

    /// True for a claim that only the one large place of a torrent may take.
    fn is_large(&self, size: u64) -> bool {
        size > self.limits.max_bytes / 8
    }

    /// Takes a place for torrent `t` in the budgets, or none.
    fn take(&self, t: usize, size: u64) -> Result<(), MetadataRefusal> {
        if size == 0 || size > self.limits.max_bytes {
            self.refused_too_large.fetch_add(1, Ordering::Relaxed);
            return Err(MetadataRefusal::TooLarge);
        }
        let inc = |c: &AtomicU32, max: u32| {
            c.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
        };
        let large = self.is_large(size);
        let busy = || {
            self.refused_busy.fetch_add(1, Ordering::Relaxed);
            Err(MetadataRefusal::Busy)
        };
        if large && !inc(&self.large[t], 1) {
            return busy();
        }
        if !inc(&self.per_torrent[t], self.limits.per_torrent) {
            if large {
                self.large[t].fetch_sub(1, Ordering::AcqRel);
            }
            return busy();
        }
        if !inc(&self.total, self.limits.total) {
            self.per_torrent[t].fetch_sub(1, Ordering::AcqRel);
            if large {
                self.large[t].fetch_sub(1, Ordering::AcqRel);
            }
            return busy();
        }
        self.started.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn give_back(&self, t: usize, size: u64) {
        if self.is_large(size) {
            self.large[t].fetch_sub(1, Ordering::AcqRel);
        }
        self.per_torrent[t].fetch_sub(1, Ordering::AcqRel);
        self.total.fetch_sub(1, Ordering::AcqRel);
    }

    /// Fetches under way now.
    pub fn in_progress(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }
}

/// All torrents of a scan, indexed by position (the `torrent` of a peer) and by hash.
#[derive(Debug, Default)]
pub struct Catalog {
    pub torrents: Vec<CatalogTorrent>,
    /// Metadata fetches under way and refused.
    pub metadata: Arc<MetadataBudget>,
    by_hash: HashMap<[u8; 20], u32>,
    /// MSE's `HASH('req2', info-hash)` → info-hash, for encrypted incoming connections.
    by_req2: HashMap<[u8; 20], [u8; 20]>,
}

impl Catalog {
    pub fn new(torrents: Vec<CatalogTorrent>) -> Arc<Catalog> {
        Catalog::with_metadata_limits(torrents, MetadataLimits::default())
    }

    /// A catalog whose metadata fetches keep to `limits`.
    pub fn with_metadata_limits(
        torrents: Vec<CatalogTorrent>,
        limits: MetadataLimits,
    ) -> Arc<Catalog> {
        let mut by_hash = HashMap::new();
        let mut by_req2 = HashMap::new();
        for (i, t) in torrents.iter().enumerate() {
            for h in std::iter::once(t.wire_hash).chain(t.alt_hash) {
                by_hash.insert(h, i as u32);
                by_req2.insert(crate::proto::mse::req2_hash(&h), h);
            }
        }
        Arc::new(Catalog {
            metadata: Arc::new(MetadataBudget::new(limits, torrents.len())),
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

    fn metadata_permit(
        &self,
        info_hash: &[u8; 20],
        size: u64,
    ) -> Result<MetadataPermit, MetadataRefusal> {
        let Some(t) = self.index_of(info_hash) else {
            return Err(MetadataRefusal::Busy);
        };
        let t = t as usize;
        self.metadata.take(t, size)?;
        let budget = self.metadata.clone();
        Ok(MetadataPermit::releasing(move || budget.give_back(t, size)))
    }

    fn info_hash_by_req2(&self, req2: &[u8; 20]) -> Option<[u8; 20]> {
        self.by_req2(req2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::probe::TorrentLookup;

    fn torrent(hash: u8) -> CatalogTorrent {
        CatalogTorrent {
            db_id: i64::from(hash),
            wire_hash: [hash; 20],
            alt_hash: None,
            name: String::new(),
            piece_count: 0.into(),
            total_size: 0,
            trackers: Vec::new(),
        }
    }

    #[test]
    fn metadata_fetches_keep_to_both_budgets_and_the_size_limit() {
        let limits = MetadataLimits {
            max_bytes: 1 << 20,
            per_torrent: 2,
            total: 3,
        };
        let c = Catalog::with_metadata_limits(vec![torrent(1), torrent(2)], limits);
        let a1 = c.metadata_permit(&[1; 20], 1000).unwrap();
        let _a2 = c.metadata_permit(&[1; 20], 1000).unwrap();
        assert_eq!(
            c.metadata_permit(&[1; 20], 1000).unwrap_err(),
            MetadataRefusal::Busy,
            "two per torrent"
        );
        let _b1 = c.metadata_permit(&[2; 20], 1000).unwrap();
        assert_eq!(
            c.metadata_permit(&[2; 20], 1000).unwrap_err(),
            MetadataRefusal::Busy,
            "three in all"
        );
        assert_eq!(
            c.metadata_permit(&[2; 20], (1 << 20) + 1).unwrap_err(),
            MetadataRefusal::TooLarge
        );
        drop(a1);
        assert!(
            c.metadata_permit(&[2; 20], 1 << 20).is_ok(),
            "a place came back"
        );
        assert_eq!(c.metadata.refused_busy.load(Ordering::Relaxed), 2);
        assert_eq!(c.metadata.refused_too_large.load(Ordering::Relaxed), 1);
        assert_eq!(c.metadata.started.load(Ordering::Relaxed), 4);
        assert_eq!(
            c.metadata.in_progress(),
            2,
            "the last permit was dropped at once"
        );
    }

    #[test]
    fn one_place_per_torrent_for_large_claims() {
        let limits = MetadataLimits {
            max_bytes: 8 << 20,
            per_torrent: 3,
            total: 8,
        };
        let c = Catalog::with_metadata_limits(vec![torrent(1)], limits);
        let big = c.metadata_permit(&[1; 20], 8 << 20).unwrap();
        assert_eq!(
            c.metadata_permit(&[1; 20], (1 << 20) + 1).unwrap_err(),
            MetadataRefusal::Busy,
            "one large claim at a time"
        );
        let _small = c.metadata_permit(&[1; 20], 1 << 20).unwrap();
        let _small2 = c.metadata_permit(&[1; 20], 40_000).unwrap();
        assert_eq!(
            c.metadata_permit(&[1; 20], 40_000).unwrap_err(),
            MetadataRefusal::Busy
        );
        drop(big);
        assert_eq!(c.metadata.in_progress(), 2);
        assert!(
            c.metadata_permit(&[1; 20], 8 << 20).is_ok(),
            "the large place is free again"
        );
    }
}
