//! One worker's shard of known peers: a compact, chunked arena plus a hash index.
//!
//! Memory per known peer is what limits a long study of many torrents, so an entry is a
//! 36-byte plain struct, the arena grows in fixed chunks (no doubling slack), and the index
//! stores only a `u32` per peer. Everything else about a peer lives in SQLite.

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use hashbrown::HashTable;

/// Index of a peer in its worker's table.
pub type PeerIdx = u32;

/// Progress as a fixed-point fraction: `PROGRESS_ONE` means all pieces.
pub const PROGRESS_ONE: u16 = u16::MAX;

/// `next_visit` value of a peer that is not scheduled (done, or waiting for a probe result).
pub const NOT_SCHEDULED: u32 = u32::MAX;

/// Per-peer state flags.
pub mod flag {
    /// Seen at least once with progress below the threshold.
    pub const SEEN_BELOW: u8 = 1;
    /// Seen below the threshold and later at or above it: a confirmed download.
    pub const CONFIRMED: u8 = 2;
    /// Last successful contact was at or above the threshold.
    pub const AT_THRESHOLD: u8 = 4;
    /// At least one successful contact.
    pub const EVALUATED: u8 = 8;
    /// A probe is in flight for this peer.
    pub const IN_FLIGHT: u8 = 16;
    /// Plaintext failed in a way that says "encryption required": talk MSE to this peer.
    pub const USE_MSE: u8 = 32;
    /// MSE failed with this peer: talk plaintext.
    pub const MSE_FAILED: u8 = 64;
    /// A connection the peer opened to us is being watched: no probes of ours meanwhile
    /// (clients drop a second connection from the same address).
    pub const WATCHED_INCOMING: u8 = 128;
}

/// One known peer. Times are since the scan's epoch: whole seconds unless named otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct PeerEntry {
    /// IPv6, or IPv4 as an IPv4-mapped IPv6 address.
    pub ip: [u8; 16],
    pub port: u16,
    /// Progress at the last successful contact.
    pub progress: u16,
    /// Index of the torrent in the catalog.
    pub torrent: u32,
    /// When the peer is due for a visit, or [`NOT_SCHEDULED`].
    pub next_visit: u32,
    /// Time of the last successful contact in hundredths of a second (0 = never): speeds
    /// measured over a few seconds need better than whole seconds.
    pub last_contact_cs: u32,
    pub flags: u8,
    /// [`PeerSource`](crate::store::record::PeerSource) bits, one per source seen.
    pub sources: u8,
    /// Consecutive failed probes (saturating); drives the retry back-off.
    pub failures: u8,
    /// Successful contacts so far (saturating); small, used only for scheduling.
    pub contacts: u8,
}

impl PeerEntry {
    pub fn addr(&self) -> SocketAddr {
        let v6 = Ipv6Addr::from(self.ip);
        let ip = match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        };
        SocketAddr::new(ip, self.port)
    }
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// Canonical 16-byte form of an IP (IPv4 mapped into IPv6).
pub fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

const CHUNK_BITS: u32 = 16;
const CHUNK_LEN: usize = 1 << CHUNK_BITS;

/// Which worker owns the peer (torrent, addr) among `workers`.
pub fn owner_worker(torrent: u32, addr: SocketAddr, workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    // A fixed-key hash, so that the same peer always lands on the same worker, across runs too.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    torrent.hash(&mut h);
    ip_bytes(addr.ip()).hash(&mut h);
    addr.port().hash(&mut h);
    (h.finish() % workers as u64) as usize
}

/// The result of [`PeerTable::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New(PeerIdx),
    Existing(PeerIdx),
    /// The table is at its configured capacity; the address was not stored.
    Full,
}

/// A worker's known peers.
pub struct PeerTable {
    chunks: Vec<Box<[PeerEntry]>>,
    len: u32,
    max_peers: u32,
    index: HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl PeerTable {
    /// A table that refuses new peers beyond `max_peers` (a memory bound, counted as a metric).
    pub fn new(max_peers: u32) -> Self {
        PeerTable {
            chunks: Vec::new(),
            len: 0,
            max_peers,
            index: HashTable::new(),
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn key_hash(&self, torrent: u32, ip: &[u8; 16], port: u16) -> u64 {
        self.hasher.hash_one((torrent, ip, port))
    }

    pub fn get(&self, idx: PeerIdx) -> &PeerEntry {
        &self.chunks[(idx >> CHUNK_BITS) as usize][idx as usize & (CHUNK_LEN - 1)]
    }

    pub fn get_mut(&mut self, idx: PeerIdx) -> &mut PeerEntry {
        &mut self.chunks[(idx >> CHUNK_BITS) as usize][idx as usize & (CHUNK_LEN - 1)]
    }

    /// Looks a peer up by identity.
    pub fn find(&self, torrent: u32, addr: SocketAddr) -> Option<PeerIdx> {
        let ip = ip_bytes(addr.ip());
        let port = addr.port();
        let hash = self.key_hash(torrent, &ip, port);
        self.index
            .find(hash, |&i| {
                let e = self.get(i);
                e.torrent == torrent && e.port == port && e.ip == ip
            })
            .copied()
    }

    /// Adds a peer (or finds it), recording `source`. A new peer is due at `now`.
    pub fn insert(&mut self, torrent: u32, addr: SocketAddr, source: u8, now: u32) -> Inserted {
        if let Some(idx) = self.find(torrent, addr) {
            self.get_mut(idx).sources |= source;
            return Inserted::Existing(idx);
        }
        if self.len >= self.max_peers {
            return Inserted::Full;
        }
        let idx = self.len;
        let entry = PeerEntry {
            ip: ip_bytes(addr.ip()),
            port: addr.port(),
            progress: 0,
            torrent,
            next_visit: now,
            last_contact_cs: 0,
            flags: 0,
            sources: source,
            failures: 0,
            contacts: 0,
        };
        let chunk = (idx >> CHUNK_BITS) as usize;
        if chunk == self.chunks.len() {
            self.chunks.push(vec![entry; CHUNK_LEN].into_boxed_slice());
        }
        *self.get_mut(idx) = entry;
        self.len += 1;
        let hash = self.key_hash(torrent, &entry.ip, entry.port);
        let chunks = &self.chunks;
        let hasher = &self.hasher;
        self.index.insert_unique(hash, idx, |&i| {
            let e = &chunks[(i >> CHUNK_BITS) as usize][i as usize & (CHUNK_LEN - 1)];
            hasher.hash_one((e.torrent, &e.ip, e.port))
        });
        Inserted::New(idx)
    }

    /// Bytes of heap this table holds (arena + index), for the memory benchmark and metrics.
    pub fn heap_bytes(&self) -> usize {
        self.chunks.len() * CHUNK_LEN * std::mem::size_of::<PeerEntry>()
            + self.index.capacity() * (std::mem::size_of::<u32>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::PeerSource;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn entry_is_compact() {
        assert_eq!(std::mem::size_of::<PeerEntry>(), 36);
    }

    #[test]
    fn identity_is_torrent_ip_port() {
        let mut t = PeerTable::new(1000);
        let a = t.insert(1, addr("1.2.3.4:6881"), PeerSource::TrackerHttp.mask(), 5);
        assert_eq!(a, Inserted::New(0));
        assert_eq!(
            t.insert(1, addr("1.2.3.4:6881"), PeerSource::Dht.mask(), 9),
            Inserted::Existing(0)
        );
        assert_eq!(
            t.get(0).sources,
            PeerSource::TrackerHttp.mask() | PeerSource::Dht.mask()
        );
        assert_eq!(t.get(0).next_visit, 5, "a duplicate does not reschedule");
        assert_eq!(
            t.insert(2, addr("1.2.3.4:6881"), PeerSource::Dht.mask(), 9),
            Inserted::New(1)
        );
        assert_eq!(
            t.insert(1, addr("1.2.3.4:6882"), PeerSource::Dht.mask(), 9),
            Inserted::New(2)
        );
        assert_eq!(
            t.insert(1, addr("[::1]:6881"), PeerSource::Dht.mask(), 9),
            Inserted::New(3)
        );
        assert_eq!(t.get(3).addr(), addr("[::1]:6881"));
        assert_eq!(t.get(0).addr(), addr("1.2.3.4:6881"));
        assert_eq!(t.find(1, addr("[::ffff:1.2.3.4]:6881")), Some(0));
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn capacity_is_enforced_and_chunks_grow() {
        let mut t = PeerTable::new(70_000);
        for i in 0..70_000u32 {
            let a = SocketAddr::new(IpAddr::V4(i.to_be_bytes().into()), 1);
            assert_eq!(t.insert(0, a, 0, 0), Inserted::New(i));
        }
        let extra = SocketAddr::new(IpAddr::V4([9, 9, 9, 9].into()), 9);
        assert_eq!(t.insert(0, extra, 0, 0), Inserted::Full);
        for i in (0..70_000u32).step_by(997) {
            let a = SocketAddr::new(IpAddr::V4(i.to_be_bytes().into()), 1);
            assert_eq!(t.find(0, a), Some(i));
            assert_eq!(t.get(i).addr(), a);
        }
    }

    #[test]
    fn routing_is_stable_and_spread() {
        let mut counts = [0usize; 4];
        for i in 0..4000u32 {
            let a = SocketAddr::new(IpAddr::V4((i * 7919).to_be_bytes().into()), 6881);
            let w = owner_worker(i % 10, a, 4);
            assert_eq!(w, owner_worker(i % 10, a, 4));
            counts[w] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
