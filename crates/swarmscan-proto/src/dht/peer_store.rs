//! The peers other nodes announced to us (`announce_peer`), bounded: at most
//! `max_torrents` info-hashes and `max_peers_per_torrent` peers each, entries expiring after
//! [`PEER_TTL`]; when full, the oldest announcement makes room.

use crate::krpc::{BloomFilter, Id20};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long an announcement is kept (BEP 5 does not say; libtorrent keeps 30 minutes).
pub const PEER_TTL: Duration = Duration::from_secs(30 * 60);

#[derive(Clone, Copy, Debug)]
struct StoredPeer {
    addr: SocketAddr,
    seed: bool,
    announced: Instant,
}

struct Torrent {
    peers: Vec<StoredPeer>,
    last_announce: Instant,
}

pub struct PeerStore {
    max_torrents: usize,
    max_peers: usize,
    torrents: HashMap<Id20, Torrent>,
}

impl PeerStore {
    pub fn new(max_torrents: usize, max_peers: usize) -> Self {
        PeerStore {
            max_torrents: max_torrents.max(1),
            max_peers: max_peers.max(1),
            torrents: HashMap::new(),
        }
    }

    pub fn announce(&mut self, info_hash: Id20, addr: SocketAddr, seed: bool, now: Instant) {
        if !self.torrents.contains_key(&info_hash) && self.torrents.len() >= self.max_torrents {
            self.expire(now);
            if self.torrents.len() >= self.max_torrents {
                // Walks the table, but only when it is full of live torrents.
                if let Some(oldest) = self
                    .torrents
                    .iter()
                    .min_by_key(|(_, t)| t.last_announce)
                    .map(|(k, _)| *k)
                {
                    self.torrents.remove(&oldest);
                }
            }
        }
        let t = self.torrents.entry(info_hash).or_insert(Torrent {
            peers: Vec::new(),
            last_announce: now,
        });
        t.last_announce = now;
        let entry = StoredPeer {
            addr,
            seed,
            announced: now,
        };
        if let Some(p) = t.peers.iter_mut().find(|p| p.addr == addr) {
            *p = entry;
        } else if t.peers.len() < self.max_peers {
            t.peers.push(entry);
        } else if let Some(oldest) = t.peers.iter_mut().min_by_key(|p| p.announced) {
            *oldest = entry;
        }
    }

    /// Drop announcements older than [`PEER_TTL`].
    pub fn expire(&mut self, now: Instant) {
        self.torrents.retain(|_, t| {
            t.peers
                .retain(|p| now.saturating_duration_since(p.announced) < PEER_TTL);
            !t.peers.is_empty()
        });
    }

    /// Up to `max` live peers of the same address family as `v6` says; non-seeds first when
    /// `noseed` (BEP 33).
    pub fn values(
        &self,
        info_hash: &Id20,
        v6: bool,
        noseed: bool,
        max: usize,
        now: Instant,
    ) -> Vec<SocketAddr> {
        let Some(t) = self.torrents.get(info_hash) else {
            return Vec::new();
        };
        let live = t.peers.iter().filter(|p| {
            p.addr.is_ipv6() == v6 && now.saturating_duration_since(p.announced) < PEER_TTL
        });
        let mut out: Vec<SocketAddr> = Vec::new();
        if noseed {
            out.extend(live.clone().filter(|p| !p.seed).map(|p| p.addr).take(max));
            let room = max - out.len();
            out.extend(live.filter(|p| p.seed).map(|p| p.addr).take(room));
        } else {
            out.extend(live.map(|p| p.addr).take(max));
        }
        out
    }

    /// BEP 33 filters (seeds, non-seeds) over the live peers of `info_hash`, or `None` when
    /// we know none.
    pub fn scrape(&self, info_hash: &Id20, now: Instant) -> Option<(BloomFilter, BloomFilter)> {
        let t = self.torrents.get(info_hash)?;
        let mut seeds = BloomFilter::new();
        let mut peers = BloomFilter::new();
        let mut any = false;
        for p in &t.peers {
            if now.saturating_duration_since(p.announced) < PEER_TTL {
                any = true;
                if p.seed {
                    seeds.insert_ip(p.addr.ip());
                } else {
                    peers.insert_ip(p.addr.ip());
                }
            }
        }
        any.then_some((seeds, peers))
    }

    /// Up to `max` info-hashes we hold (BEP 51 samples), and how many there are.
    pub fn samples(&self, max: usize) -> (Vec<Id20>, usize) {
        (
            self.torrents.keys().take(max).copied().collect(),
            self.torrents.len(),
        )
    }

    pub fn torrent_count(&self) -> usize {
        self.torrents.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ih(n: u8) -> Id20 {
        Id20([n; 20])
    }

    fn peer(n: u16) -> SocketAddr {
        ([127, 0, (n >> 8) as u8, n as u8], 6881).into()
    }

    #[test]
    fn bounded_and_expiring() {
        let t0 = Instant::now();
        let mut s = PeerStore::new(3, 4);
        for n in 0..10 {
            s.announce(ih(1), peer(n), false, t0 + Duration::from_secs(n as u64));
        }
        let v = s.values(&ih(1), false, false, 100, t0 + Duration::from_secs(10));
        assert_eq!(v.len(), 4, "per-torrent bound");
        assert!(
            v.contains(&peer(9)) && !v.contains(&peer(0)),
            "oldest replaced"
        );
        for n in 2..6 {
            s.announce(
                ih(n),
                peer(1),
                false,
                t0 + Duration::from_secs(20 + n as u64),
            );
        }
        assert_eq!(s.torrent_count(), 3, "torrent bound");
        assert!(
            s.values(&ih(1), false, false, 10, t0).is_empty(),
            "oldest torrent gone"
        );
        let late = t0 + Duration::from_secs(30) + PEER_TTL;
        assert!(
            s.values(&ih(5), false, false, 10, late).is_empty(),
            "expired"
        );
        s.expire(late);
        assert_eq!(s.torrent_count(), 0);
    }

    #[test]
    fn noseed_family_and_scrape() {
        let t0 = Instant::now();
        let mut s = PeerStore::new(10, 10);
        let v6: SocketAddr = "[::1]:7000".parse().unwrap();
        s.announce(ih(1), peer(1), true, t0);
        s.announce(ih(1), peer(2), false, t0);
        s.announce(ih(1), v6, false, t0);
        assert_eq!(s.values(&ih(1), false, true, 1, t0), [peer(2)]);
        assert_eq!(s.values(&ih(1), true, false, 10, t0), [v6]);
        let (seeds, peers) = s.scrape(&ih(1), t0).unwrap();
        assert!((seeds.estimate() - 1.0).abs() < 0.01);
        assert!((peers.estimate() - 2.0).abs() < 0.05);
        assert!(s.scrape(&ih(2), t0).is_none());
        assert_eq!(s.samples(5), (vec![ih(1)], 1));
    }
}
