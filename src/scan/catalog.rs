//! The torrents being scanned: read-mostly, shared by every worker.
//!
//! A scan's catalog grows while it runs (`swarmscan add`): [`Catalog::with_added`] makes a new
//! snapshot that keeps every index of the old one and appends, and the session sends it to
//! every worker and to discovery through their channels. The probe path never takes a lock:
//! each thread reads its own `Arc<Catalog>`. A torrent's state that changes while it is
//! scanned (piece count learned, removed, metadata fetches under way) is shared by every
//! snapshot, so an old snapshot still held by a probe in flight sees the same values.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
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
/// The per-torrent counts live in each torrent's [`Entry`], so that they stay one count
/// across catalog snapshots.
#[derive(Debug, Default)]
pub struct MetadataBudget {
    limits: MetadataLimits,
    total: AtomicU32,
    /// Fetches started.
    pub started: AtomicU64,
    /// Claims above `max_bytes` (or 0) refused.
    pub refused_too_large: AtomicU64,
    /// Claims refused because enough fetches were under way.
    pub refused_busy: AtomicU64,
}

impl MetadataBudget {
    fn new(limits: MetadataLimits) -> MetadataBudget {
        MetadataBudget {
            limits,
            ..MetadataBudget::default()
        }
    }

    /// True for a claim that only the one large place of a torrent may take.
    fn is_large(&self, size: u64) -> bool {
        size > self.limits.max_bytes / 8
    }

    /// Takes a place for torrent `t` in the budgets, or none.
    fn take(&self, t: &Entry, size: u64) -> Result<(), MetadataRefusal> {
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
        if large && !inc(&t.metadata_large, 1) {
            return busy();
        }
        if !inc(&t.metadata_fetches, self.limits.per_torrent) {
            if large {
                t.metadata_large.fetch_sub(1, Ordering::AcqRel);
            }
            return busy();
        }
        if !inc(&self.total, self.limits.total) {
            t.metadata_fetches.fetch_sub(1, Ordering::AcqRel);
            if large {
                t.metadata_large.fetch_sub(1, Ordering::AcqRel);
            }
            return busy();
        }
        self.started.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn give_back(&self, t: &Entry, size: u64) {
        if self.is_large(size) {
            t.metadata_large.fetch_sub(1, Ordering::AcqRel);
        }
        t.metadata_fetches.fetch_sub(1, Ordering::AcqRel);
        self.total.fetch_sub(1, Ordering::AcqRel);
    }

    /// Fetches under way now.
    pub fn in_progress(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }
}

/// One torrent of the catalog with its state shared by every snapshot.
#[derive(Debug)]
struct Entry {
    torrent: CatalogTorrent,
    /// `swarmscan remove`: not probed, announced or answered until added again.
    removed: AtomicBool,
    /// Metadata fetches of this torrent under way.
    metadata_fetches: AtomicU32,
    /// Fetches of large claims under way (at most one).
    metadata_large: AtomicU32,
}

/// All torrents of a scan, indexed by position (the `torrent` of a peer) and by hash.
#[derive(Debug, Default)]
pub struct Catalog {
    entries: Vec<Arc<Entry>>,
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
        let empty = Catalog {
            metadata: Arc::new(MetadataBudget::new(limits)),
            ..Catalog::default()
        };
        empty.with_added(torrents)
    }

    /// A new snapshot: every torrent of this one at the same index (sharing its state), then
    /// `added`. A hash already in the catalog keeps its first index.
    pub fn with_added(&self, added: Vec<CatalogTorrent>) -> Arc<Catalog> {
        let mut next = Catalog {
            entries: self.entries.clone(),
            metadata: self.metadata.clone(),
            by_hash: self.by_hash.clone(),
            by_req2: self.by_req2.clone(),
        };
        for torrent in added {
            let i = next.entries.len() as u32;
            for h in std::iter::once(torrent.wire_hash).chain(torrent.alt_hash) {
                next.by_hash.entry(h).or_insert(i);
                next.by_req2
                    .entry(crate::proto::mse::req2_hash(&h))
                    .or_insert(h);
            }
            next.entries.push(Arc::new(Entry {
                torrent,
                removed: AtomicBool::new(false),
                metadata_fetches: AtomicU32::new(0),
                metadata_large: AtomicU32::new(0),
            }));
        }
        Arc::new(next)
    }

    /// The info-hash an MSE initiator asked for (by its `req2` hash), if we scan it.
    pub fn by_req2(&self, req2: &[u8; 20]) -> Option<[u8; 20]> {
        self.by_req2.get(req2).copied()
    }

    /// The index of the torrent with this wire hash, removed or not.
    pub fn index_of(&self, hash: &[u8; 20]) -> Option<u32> {
        self.by_hash.get(hash).copied()
    }

    /// The index of a torrent scanned now (not removed).
    pub fn active_index_of(&self, hash: &[u8; 20]) -> Option<u32> {
        self.index_of(hash).filter(|&i| !self.is_removed(i))
    }

    pub fn get(&self, idx: u32) -> &CatalogTorrent {
        &self.entries[idx as usize].torrent
    }

    /// The torrent at `idx`, if this snapshot has it.
    pub fn try_get(&self, idx: u32) -> Option<&CatalogTorrent> {
        self.entries.get(idx as usize).map(|e| &e.torrent)
    }

    /// Every torrent, in index order.
    pub fn iter(&self) -> impl Iterator<Item = &CatalogTorrent> + '_ {
        self.entries.iter().map(|e| &e.torrent)
    }

    /// True when `swarmscan remove` took the torrent out of the scan (or the index is not in
    /// this snapshot: nothing to do with it either).
    pub fn is_removed(&self, idx: u32) -> bool {
        self.entries
            .get(idx as usize)
            .is_none_or(|e| e.removed.load(Ordering::Relaxed))
    }

    /// Takes the torrent out of the scan (`true`) or back in; true when that changed it.
    pub fn set_removed(&self, idx: u32, removed: bool) -> bool {
        self.entries
            .get(idx as usize)
            .is_some_and(|e| e.removed.swap(removed, Ordering::Relaxed) != removed)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl crate::proto::probe::TorrentLookup for Catalog {
    fn piece_count(&self, info_hash: &[u8; 20]) -> Option<u32> {
        // A removed torrent is one we do not scan: incoming peers for it are turned away.
        self.active_index_of(info_hash)
            .map(|i| self.get(i).pieces())
    }

    fn metadata_permit(
        &self,
        info_hash: &[u8; 20],
        size: u64,
    ) -> Result<MetadataPermit, MetadataRefusal> {
        let Some(t) = self.active_index_of(info_hash) else {
            return Err(MetadataRefusal::Busy);
        };
        let entry = self.entries[t as usize].clone();
        self.metadata.take(&entry, size)?;
        let budget = self.metadata.clone();
        Ok(MetadataPermit::releasing(move || {
            budget.give_back(&entry, size)
        }))
    }

    fn info_hash_by_req2(&self, req2: &[u8; 20]) -> Option<[u8; 20]> {
        self.by_req2(req2)
            .filter(|h| self.active_index_of(h).is_some())
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

    #[test]
    fn a_grown_snapshot_keeps_indices_and_shares_state_with_the_old_one() {
        let limits = MetadataLimits {
            max_bytes: 1 << 20,
            per_torrent: 1,
            total: 2,
        };
        let old = Catalog::with_metadata_limits(vec![torrent(1)], limits);
        let held = old.metadata_permit(&[1; 20], 1000).unwrap();
        let new = old.with_added(vec![torrent(2), torrent(1)]);
        assert_eq!(new.len(), 3);
        assert_eq!(
            new.index_of(&[1; 20]),
            Some(0),
            "a known hash keeps its index"
        );
        assert_eq!(new.index_of(&[2; 20]), Some(1));
        assert_eq!(
            old.index_of(&[2; 20]),
            None,
            "the old snapshot is unchanged"
        );
        assert_eq!(old.try_get(1).map(|t| t.db_id), None);
        assert_eq!(
            new.metadata_permit(&[1; 20], 1000).unwrap_err(),
            MetadataRefusal::Busy,
            "a fetch taken through the old snapshot counts in the new one"
        );
        let _b = new.metadata_permit(&[2; 20], 1000).unwrap();
        assert_eq!(
            old.metadata_permit(&[1; 20], 1000).unwrap_err(),
            MetadataRefusal::Busy,
            "one total over every snapshot"
        );
        drop(held);
        assert_eq!(new.metadata.in_progress(), 1);
        assert!(old.get(0).learn_pieces(7));
        assert_eq!(new.get(0).pieces(), 7, "the piece count is shared");
    }

    #[test]
    fn a_removed_torrent_is_unknown_to_peers_until_added_again() {
        let old = Catalog::new(vec![torrent(1), torrent(2)]);
        let new = old.with_added(vec![torrent(3)]);
        assert!(new.set_removed(0, true));
        assert!(!new.set_removed(0, true), "already removed");
        assert!(old.is_removed(0), "every snapshot sees it");
        assert!(
            old.is_removed(9),
            "an index this snapshot lacks is never scanned"
        );
        assert_eq!(new.piece_count(&[1; 20]), None);
        assert_eq!(new.index_of(&[1; 20]), Some(0));
        assert_eq!(new.active_index_of(&[1; 20]), None);
        assert_eq!(
            new.info_hash_by_req2(&crate::proto::mse::req2_hash(&[1; 20])),
            None
        );
        assert!(new.metadata_permit(&[1; 20], 1000).is_err());
        assert_eq!(new.piece_count(&[2; 20]), Some(0));
        assert!(new.set_removed(0, false));
        assert_eq!(old.piece_count(&[1; 20]), Some(0), "added again");
    }
}
