//! A built-in simulated swarm on loopback (peers whose progress grows over time, some
//! finishing, some misbehaving, plus an HTTP and a UDP tracker), used by `swarmscan demo` and
//! the end-to-end tests. Its ground truth (who crossed the threshold, when) is known exactly.

pub mod peers;
pub mod tracker;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::proto::bencode::OwnedValue;
use crate::proto::metainfo::Metainfo;
use peers::{plan, Behaviour, SimPeer, SimPeers, SimTorrent};
use tracker::{SimTracker, SimTrackerOptions, SwarmView};

/// The swarm as the tracker sees it.
struct View {
    state: OnceLock<(Vec<SimTorrent>, Vec<SimPeer>, Instant)>,
}

impl SwarmView for View {
    fn torrent(&self, info_hash: &[u8; 20]) -> Option<usize> {
        let (torrents, _, _) = self.state.get()?;
        torrents.iter().position(|t| &t.info_hash == info_hash)
    }

    fn peers(&self, torrent: usize, max: usize) -> (Vec<SocketAddr>, u64, u64, u64) {
        let Some((_, peers, epoch)) = self.state.get() else {
            return (Vec::new(), 0, 0, 0);
        };
        let now = epoch.elapsed().as_secs_f64();
        let mut list = Vec::new();
        let (mut seeders, mut leechers, mut finished) = (0, 0, 0);
        for p in peers.iter().filter(|p| p.torrent == torrent) {
            let progress = p.progress_at(now);
            if p.behaviour == Behaviour::LeavesWhenDone && progress >= 1.0 {
                finished += 1;
                continue; // gone from the swarm
            }
            if progress >= 1.0 {
                seeders += 1;
            } else {
                leechers += 1;
            }
            if p.start_progress < 1.0 && progress >= 1.0 {
                finished += 1;
            }
            if list.len() < max {
                list.push(p.addr);
            }
        }
        // Trackers count every completion they were told of, including peers nobody can
        // reach (behind NAT, gone before a visit): here 2× the finishers plus earlier ones.
        let downloaded = 25 + 2 * finished;
        (list, seeders, leechers, downloaded)
    }
}

/// A running simulated swarm.
pub struct SimSwarm {
    pub tracker: SimTracker,
    pub peers: SimPeers,
    /// The generated .torrent files' bytes.
    pub torrent_files: Vec<Vec<u8>>,
    pub metainfo: Vec<Metainfo>,
}

/// Size of the simulated swarm.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub torrents: usize,
    pub peers_per_torrent: usize,
    /// Seconds over which the finishing leechers finish.
    pub horizon_secs: f64,
    /// TCP port every simulated peer listens on (each on its own 127.77.x.y address).
    pub peer_port: u16,
    /// Second octet of the peers' addresses (127.<this>.<torrent>.<n>): simulations that run
    /// at the same time need different values.
    pub addr_octet: u8,
    /// The tracker's `interval`.
    pub tracker_interval_secs: u32,
    /// The HTTP tracker's `min interval` (`None` = not sent).
    pub tracker_min_interval_secs: Option<u32>,
    /// The tracker lists the announcer itself among the peers.
    pub tracker_lists_announcer: bool,
    pub seed: u64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            torrents: 3,
            peers_per_torrent: 40,
            horizon_secs: 60.0,
            peer_port: 6881,
            addr_octet: 77,
            tracker_interval_secs: 10,
            tracker_min_interval_secs: Some(5),
            tracker_lists_announcer: false,
            seed: 2015,
        }
    }
}

/// Builds a v1 torrent whose pieces are random: the content never exists, only its shape.
pub(crate) fn make_torrent(
    name: &str,
    pieces: u32,
    piece_length: u64,
    trackers: &[String],
    seed: u64,
) -> Vec<u8> {
    let mut x = seed | 1;
    let mut hashes = Vec::with_capacity(pieces as usize * 20);
    for _ in 0..pieces * 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        hashes.push(x as u8);
    }
    let info = OwnedValue::dict()
        .with("name", name)
        .with("piece length", piece_length as i64)
        .with(
            "length",
            (pieces as u64 * piece_length - piece_length / 2) as i64,
        )
        .with("pieces", hashes);
    let tiers: Vec<OwnedValue> = trackers
        .iter()
        .map(|t| OwnedValue::List(vec![OwnedValue::from(t.as_str())]))
        .collect();
    OwnedValue::dict()
        .with(
            "announce",
            trackers.first().map(String::as_str).unwrap_or(""),
        )
        .with("announce-list", tiers)
        .with("created by", "swarmscan demo")
        .with("info", info)
        .encode()
}

impl SimSwarm {
    /// The name of a simulation thread (trackers, peers) that has ended: it panicked, and the
    /// swarm no longer behaves as simulated.
    pub fn ended_thread(&self) -> Option<String> {
        self.tracker
            .ended_thread()
            .or_else(|| self.peers.ended_thread())
    }

    pub fn start(opts: &SimOptions) -> Result<SimSwarm, String> {
        let view = Arc::new(View {
            state: OnceLock::new(),
        });
        let tracker = SimTracker::start_with(
            view.clone(),
            SimTrackerOptions {
                interval_secs: opts.tracker_interval_secs,
                min_interval_secs: opts.tracker_min_interval_secs,
                list_announcer: opts.tracker_lists_announcer,
            },
        )
        .map_err(|e| format!("simulated tracker: {e}"))?;
        let trackers = vec![tracker.http_url(), tracker.udp_url()];
        let mut torrent_files = Vec::new();
        let mut metainfo = Vec::new();
        let mut torrents = Vec::new();
        for i in 0..opts.torrents {
            let pieces = [200u32, 500, 1000, 1500][i % 4];
            let bytes = make_torrent(
                &format!("demo-torrent-{}", i + 1),
                pieces,
                256 * 1024,
                &trackers,
                opts.seed + i as u64,
            );
            let m = Metainfo::from_bytes(&bytes).map_err(|e| format!("generated torrent: {e}"))?;
            torrents.push(SimTorrent {
                info_hash: m.info_hashes.v1.expect("v1 torrent").0,
                piece_count: m.piece_count as u32,
            });
            torrent_files.push(bytes);
            metainfo.push(m);
        }
        let planned = plan(
            &torrents,
            opts.peers_per_torrent,
            opts.horizon_secs,
            opts.addr_octet,
            opts.peer_port,
            opts.seed,
        );
        let peers =
            SimPeers::start(torrents.clone(), planned.clone()).map_err(|e| e.to_string())?;
        let _ = view.state.set((torrents, planned, peers.epoch()));
        Ok(SimSwarm {
            tracker,
            peers,
            torrent_files,
            metainfo,
        })
    }

    /// Ground truth per torrent: peers that were *answered below the threshold* and later
    /// reached it while still answering — the downloads a perfect scanner confirms.
    pub fn observable_confirmations(&self, threshold: f64) -> Vec<usize> {
        let answers = self
            .peers
            .answers
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default();
        let mut per = vec![0; self.metainfo.len()];
        for (i, p) in self.peers.peers.iter().enumerate() {
            let seen = &answers[i];
            let below = seen.iter().position(|&(_, pr)| pr < threshold);
            if let Some(b) = below {
                if seen[b..].iter().any(|&(_, pr)| pr >= threshold) {
                    per[p.torrent] += 1;
                }
            }
        }
        per
    }

    /// Peers that crossed the threshold within `secs` of the start (whether or not anyone saw).
    pub fn crossings(&self, threshold: f64, secs: f64) -> Vec<usize> {
        let mut per = vec![0; self.metainfo.len()];
        for p in &self.peers.peers {
            if p.crossing_time(threshold, secs).is_some() && p.behaviour != Behaviour::Refuses {
                per[p.torrent] += 1;
            }
        }
        per
    }
}
