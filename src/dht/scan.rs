//! [`ScanDht`]: what the scan does with a worker's DHT nodes ([`DhtHost`]).
//!
//! - **Lookups**: torrent `t` is looked up by node `t % dht.node_ids` (so by the worker that
//!   runs it), a `get_peers` every `dht.lookup_secs`; every [`SCRAPE_EVERY`]th lookup of a
//!   torrent asks for BEP 33 bloom filters instead (libtorrent answers a scrape with the
//!   filters *instead of* peers, as BEP 33 allows, so the two can't be one lookup). The first lookups
//!   start a few seconds after the start (the nodes bootstrap meanwhile) and are staggered
//!   over `min(lookup_secs, 250 ms × torrents)`; a node runs at most `dht.max_lookups` of
//!   them at once, the others wait their turn. A torrent still without metadata (a magnet or
//!   bare info-hash) is looked up at least every [`WAITING_FOR_METADATA_SECS`]: the peers
//!   found are where its metadata comes from.
//! - **Results**: each finished peers lookup gives one `Discovery` record (source `dht`:
//!   every distinct peer received, the duration, an error when no node answered); every
//!   lookup gives one `DhtLookup` record (nodes queried, replies, timeouts, peers, and for a
//!   scrape lookup the BEP 33 seeds/downloaders estimates);
//!   its peers are handed back to the driver, which routes them to their owning workers.
//! - **Nodes from peers**: a peer's `port` message names its DHT node; it is pinged once
//!   (and enters the routing table when it answers).
//! - **Our address**: the nodes' BEP 42 ids follow the `ip` our queries' answers name (a
//!   vote of distinct nodes, in the node core); a tracker's BEP 24 `external ip` (from
//!   [`OwnAddresses`]) is one more vote, all trackers together counting as one voter.
//! - **Persistence**: the good nodes go to the database (`DhtNodes`) every
//!   [`PERSIST_SECS`] and when the worker stops; the next run feeds them to its nodes. The
//!   nodes' ids (`DhtNodeIds`) go with them, and at once when one changes; the next run
//!   starts each node number with its id (BEP 42 replaces it if our address moved).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::net::SocketAddr;

use super::host::{DatagramSink, DhtHost, HostConfig, HostEvent, KeptNodeId};
use super::DhtSettings;
use crate::engine::Millis;
use crate::proto::dht::{AnnounceOptions, DhtConfig, GetPeersOptions, LookupError, LookupKind};
use crate::proto::krpc::Id20;
use crate::scan::catalog::Catalog;
use crate::scan::own_addr::OwnAddresses;
use crate::scan::udp_counters::DhtCounters;
use crate::store::record::{
    DhtLookupRecord, DhtNodeIdRecord, DhtNodeRecord, DiscoveryRecord, PeerSource, Record,
};
use crate::store::writer::RecordSender;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Every this many lookups of a torrent, one is a BEP 33 scrape (the first is not).
pub const SCRAPE_EVERY: u32 = 4;
/// A torrent without metadata is looked up at least this often.
pub const WAITING_FOR_METADATA_SECS: u64 = 60;
/// Good nodes are written to the database this often (and at stop).
pub const PERSIST_SECS: u64 = 600;
/// First lookups wait this long after the start, for the bootstrap.
const FIRST_LOOKUP_MS: Millis = 3_000;
/// Spacing of the first lookups of many torrents, at most.
const STAGGER_MS: Millis = 250;
/// A lookup that could not start (no node known yet) is tried again after this long.
const RETRY_MS: Millis = 2_000;
/// `port` message senders remembered (each pinged once).
const MAX_PINGED: usize = 8192;
/// Nodes kept for the next run, at most.
const MAX_PERSISTED: usize = 256;

/// The scan's use of one worker's DHT nodes (see the module docs).
pub struct ScanDht {
    host: DhtHost,
    settings: DhtSettings,
    worker: usize,
    workers: usize,
    /// Lookups due: (when, torrent), for the torrents whose node runs here.
    due: BinaryHeap<Reverse<(Millis, u32)>>,
    /// Catalog entries already scheduled (the catalog only grows).
    scheduled: usize,
    /// Port announced with `dht.announce`.
    announce_port: u16,
    pinged: HashSet<SocketAddr>,
    /// Lookups started per torrent (every [`SCRAPE_EVERY`]th is a scrape).
    lookups_started: std::collections::HashMap<u32, u32>,
    records: RecordSender,
    epoch_unix_ms: i64,
    next_persist: Millis,
    now: Millis,
    /// Where trackers' `external ip` is learned, and those voted for already.
    own: Option<Arc<OwnAddresses>>,
    tracker_ips_voted: Vec<std::net::IpAddr>,
    next_own_check: Millis,
    lookups: LookupCounts,
}

/// The scan's lookups so far (published with [`ScanDht::publish`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LookupCounts {
    pub started: u64,
    pub finished: u64,
    /// Finished with no reply from any node.
    pub failed: u64,
    /// Could not start: the node knew no other node.
    pub no_nodes: u64,
    /// Distinct peers of each finished lookup, summed.
    pub peers_found: u64,
    /// `announce_peer` queries other nodes sent ours.
    pub announces_received: u64,
}

impl ScanDht {
    /// Worker `worker`'s DHT side. `bootstrap` is resolved already
    /// ([`super::bootstrap::resolve_bootstrap_system`]); `remembered` are the nodes the last
    /// run kept, `kept_ids` its nodes' ids.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: DhtSettings,
        worker: usize,
        workers: usize,
        bootstrap: Vec<SocketAddr>,
        remembered: &[DhtNodeRecord],
        kept_ids: &[DhtNodeIdRecord],
        announce_port: u16,
        records: RecordSender,
        epoch_unix_ms: i64,
    ) -> ScanDht {
        let node = DhtConfig {
            read_only: settings.read_only,
            version: Some(*b"SW\x01\x00"),
            ..DhtConfig::default()
        };
        let host = DhtHost::new(HostConfig {
            worker,
            workers,
            node_ids: settings.node_ids,
            node,
            bootstrap,
            remembered: remembered.iter().map(|n| (Id20(n.id), n.addr)).collect(),
            kept_ids: kept_ids
                .iter()
                .map(|k| KeptNodeId {
                    node: k.node as usize,
                    id: Id20(k.id),
                    external_ip: k.external_ip,
                })
                .collect(),
            seed: None,
        });
        ScanDht {
            host,
            settings,
            worker,
            workers,
            due: BinaryHeap::new(),
            scheduled: 0,
            announce_port,
            pinged: HashSet::new(),
            lookups_started: std::collections::HashMap::new(),
            records,
            epoch_unix_ms,
            next_persist: PERSIST_SECS * 1000,
            now: 0,
            own: None,
            tracker_ips_voted: Vec::new(),
            next_own_check: 0,
            lookups: LookupCounts::default(),
        }
    }

    /// Trackers' `external ip` reports (in `own`) become votes on our external address.
    pub fn with_own_addresses(mut self, own: Arc<OwnAddresses>) -> ScanDht {
        self.own = Some(own);
        self
    }

    /// New tracker-reported addresses, at most once a second: one vote each, under the
    /// trackers' voter address (unspecified, port 0: no node has it).
    fn vote_tracker_addresses(&mut self, now: Millis) {
        let Some(own) = &self.own else {
            return;
        };
        if now < self.next_own_check {
            return;
        }
        self.next_own_check = now + 1000;
        for ip in own.from_trackers() {
            if self.tracker_ips_voted.contains(&ip) {
                continue;
            }
            if self.tracker_ips_voted.len() >= 64 {
                self.tracker_ips_voted.remove(0);
            }
            self.tracker_ips_voted.push(ip);
            let voter = if ip.is_ipv6() {
                SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
            } else {
                SocketAddr::from(([0, 0, 0, 0], 0))
            };
            self.host.external_address_hint(voter, ip, now);
        }
    }

    /// The host under this (its nodes, stats).
    pub fn host(&self) -> &DhtHost {
        &self.host
    }

    /// The scan's lookups so far.
    pub fn lookup_counts(&self) -> LookupCounts {
        self.lookups
    }

    /// Copies the nodes' counters, their routing tables and the lookup counts into `c` (the
    /// worker's metrics; cheap enough for once a second: a few hundred table entries).
    pub fn publish(&self, c: &DhtCounters, now: Millis) {
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        let node = self.host.node_stats();
        let host = self.host.stats();
        set(&c.queries_sent, node.queries_sent);
        set(&c.replies, node.replies);
        set(&c.timeouts, node.timeouts);
        set(
            &c.replies_unmatched,
            node.replies_unmatched.saturating_sub(host.passed_on),
        );
        set(&c.queries_answered, node.queries_answered);
        set(&c.queries_errors, node.errors_sent);
        set(&c.queries_dropped, node.queries_dropped);
        set(&c.garbage, node.garbage + host.no_node);
        set(&c.datagrams_in, node.datagrams_in);
        set(&c.datagrams_out, node.datagrams_out);
        set(&c.bytes_in, node.bytes_in);
        set(&c.bytes_out, node.bytes_out);
        set(&c.unsent_unreachable, host.unreachable_dropped);
        set(&c.unsent_queue_full, node.queue_full + host.send_refused);
        let l = &self.lookups;
        set(&c.lookups_started, l.started);
        set(&c.lookups_finished, l.finished);
        set(&c.lookups_failed, l.failed);
        set(&c.lookups_no_nodes, l.no_nodes);
        set(&c.peers_found, l.peers_found);
        set(&c.announces_received, l.announces_received);
        set(&c.lookups_running, self.host.lookups_running_all() as u64);
        for (index, counts) in self.host.routing_status(now) {
            let Some(gauges) = c.nodes.get(index) else {
                continue;
            };
            gauges.running.store(true, Ordering::Relaxed);
            for (family, statuses) in counts.iter().enumerate() {
                for (status, n) in statuses.iter().enumerate() {
                    set(&gauges.routing[family][status], *n);
                }
            }
        }
    }

    /// The worker's sockets are bound: start the nodes.
    pub fn on_udp_bound(&mut self, udp: &[SocketAddr], now: Millis) {
        self.host.on_udp_bound(udp, now);
        // The ids are kept from the start: a run killed before its first persist keeps them.
        self.now = now;
        self.persist_ids();
    }

    /// A KRPC datagram.
    pub fn datagram(&mut self, now: Millis, local: SocketAddr, from: SocketAddr, bytes: &[u8]) {
        self.now = now;
        self.host.handle_datagram(now, local, from, bytes);
    }

    /// When [`ScanDht::poll`] has work next.
    pub fn next_deadline(&self) -> Option<Millis> {
        let lookups = self.due.peek().map(|Reverse((t, _))| *t);
        match (self.host.next_deadline(), lookups) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A peer's `port` message named a DHT node at `node`: ping it once (true when this
    /// worker's nodes can reach it; false: route it to a worker that runs a node).
    pub fn node_from_peer(&mut self, node: SocketAddr, now: Millis) -> bool {
        if !self.host.is_running() {
            return false;
        }
        if self.pinged.contains(&node) {
            return true;
        }
        if self.pinged.len() >= MAX_PINGED {
            self.pinged.clear();
        }
        self.pinged.insert(node);
        self.host.ping(node, now);
        true
    }

    /// Whether this worker runs a node.
    pub fn runs_a_node(&self) -> bool {
        self.host.is_running()
    }

    fn node_of(&self, torrent: u32) -> usize {
        torrent as usize % self.settings.node_ids.max(1)
    }

    fn hosted_here(&self, torrent: u32) -> bool {
        self.node_of(torrent) % self.workers.max(1) == self.worker
    }

    fn interval_ms(&self, catalog: &Catalog, torrent: u32) -> Millis {
        let interval = self.settings.lookup_interval.as_millis() as Millis;
        let waiting = catalog.try_get(torrent).is_some_and(|t| t.pieces() == 0);
        if waiting {
            interval.min(WAITING_FOR_METADATA_SECS * 1000)
        } else {
            interval
        }
    }

    /// Runs lookups and the nodes' timers, queues datagrams in `out`, records finished
    /// lookups. Returns the peers found, by torrent, for the driver to route.
    pub fn poll(
        &mut self,
        now: Millis,
        catalog: &Catalog,
        out: &mut impl DatagramSink,
    ) -> Vec<(u32, Vec<SocketAddr>)> {
        self.now = now;
        if !self.host.is_running() {
            return Vec::new();
        }
        self.vote_tracker_addresses(now);
        self.schedule_new(now, catalog);
        self.start_due(now, catalog);
        self.host.poll_transmit(now, out);
        let mut found = Vec::new();
        while let Some(e) = self.host.poll_event() {
            match e {
                HostEvent::LookupDone { key, node, result } => {
                    let torrent = key as u32;
                    let next = now + self.interval_ms(catalog, torrent);
                    self.due.push(Reverse((next, torrent)));
                    self.lookups.finished += 1;
                    self.lookups.failed += u64::from(result.replies == 0);
                    self.lookups.peers_found += result.peers.len() as u64;
                    let Some(t) = catalog.try_get(torrent) else {
                        continue;
                    };
                    let duration_ms = result
                        .finished
                        .saturating_duration_since(result.started)
                        .as_millis()
                        .min(u32::MAX as u128) as u32;
                    let at = self.epoch_unix_ms + now as i64;
                    let scrape = matches!(
                        result.kind,
                        LookupKind::GetPeers(GetPeersOptions { scrape: true, .. })
                    );
                    tracing::debug!(
                        node,
                        torrent = %t.name,
                        peers = result.peers.len(),
                        queries = result.queries,
                        replies = result.replies,
                        "DHT lookup done"
                    );
                    if !scrape {
                        self.records.send(Record::Discovery(DiscoveryRecord {
                            at,
                            torrent_id: t.db_id,
                            source: PeerSource::Dht,
                            tracker: None,
                            duration_ms,
                            error: (result.replies == 0)
                                .then(|| "no DHT node answered".to_string()),
                            peers: result.peers.clone(),
                        }));
                    }
                    self.records.send(Record::DhtLookup(DhtLookupRecord {
                        at,
                        torrent_id: t.db_id,
                        duration_ms,
                        queried: result.queries,
                        replies: result.replies,
                        timeouts: result.timeouts,
                        peers: result.peers.len().min(u32::MAX as usize) as u32,
                        scrape,
                        seeds_estimate: result.seeds_estimate,
                        peers_estimate: result.peers_estimate,
                    }));
                    if !result.peers.is_empty() {
                        found.push((torrent, result.peers));
                    }
                }
                HostEvent::ExternalAddress { node, ip } => {
                    tracing::info!(node, %ip, "DHT: our external address, as other nodes see it")
                }
                HostEvent::NodeIdChanged { node, new, .. } => {
                    tracing::info!(
                        node,
                        id = %crate::proto::hex::encode(&new.0),
                        "DHT: node id now derived from our external address (BEP 42)"
                    );
                    // Kept at once: a crash before the next persist must not lose it.
                    self.persist_ids();
                }
                HostEvent::Announced { .. } => self.lookups.announces_received += 1,
                HostEvent::Peers { .. }
                | HostEvent::Samples { .. }
                | HostEvent::SamplesFailed { .. } => {}
            }
        }
        if now >= self.next_persist {
            self.next_persist = now + PERSIST_SECS * 1000;
            self.persist();
        }
        found
    }

    fn schedule_new(&mut self, now: Millis, catalog: &Catalog) {
        if catalog.len() <= self.scheduled {
            return;
        }
        let new: Vec<u32> = (self.scheduled as u32..catalog.len() as u32)
            .filter(|&t| self.hosted_here(t))
            .collect();
        self.scheduled = catalog.len();
        let n = new.len().max(1) as Millis;
        let interval = self.settings.lookup_interval.as_millis() as Millis;
        let spread = interval.min(STAGGER_MS * n);
        let first = if now < FIRST_LOOKUP_MS {
            FIRST_LOOKUP_MS
        } else {
            now
        };
        for (k, t) in new.into_iter().enumerate() {
            self.due
                .push(Reverse((first + k as Millis * spread / n, t)));
        }
    }

    fn start_due(&mut self, now: Millis, catalog: &Catalog) {
        let mut later = Vec::new();
        while let Some(&Reverse((at, torrent))) = self.due.peek() {
            if at > now {
                break;
            }
            self.due.pop();
            let Some(t) = catalog.try_get(torrent) else {
                continue;
            };
            if catalog.is_removed(torrent) {
                later.push((now + self.interval_ms(catalog, torrent), torrent));
                continue;
            }
            let node = self.node_of(torrent);
            if self.host.lookups_running(node) >= self.settings.max_lookups {
                later.push((now + 100, torrent));
                continue;
            }
            let started = self.lookups_started.entry(torrent).or_insert(0);
            let scrape = *started % SCRAPE_EVERY == SCRAPE_EVERY - 1;
            let options = GetPeersOptions {
                scrape,
                noseed: false,
                announce: (self.settings.announce && self.announce_port != 0).then_some(
                    AnnounceOptions {
                        port: self.announce_port,
                        implied_port: false,
                        seed: false,
                    },
                ),
            };
            match self
                .host
                .get_peers(node, u64::from(torrent), Id20(t.wire_hash), options, now)
            {
                Ok(_) => {
                    *self.lookups_started.entry(torrent).or_insert(0) += 1;
                    self.lookups.started += 1;
                }
                Err(LookupError::NoNodes) => {
                    self.lookups.no_nodes += 1;
                    later.push((now + RETRY_MS, torrent));
                }
                Err(LookupError::TooManyLookups(_)) => later.push((now + 500, torrent)),
            }
        }
        for (at, t) in later {
            self.due.push(Reverse((at, t)));
        }
    }

    /// Sends this worker's node ids to the database.
    fn persist_ids(&mut self) {
        let updated_at = self.epoch_unix_ms + self.now as i64;
        let ids: Vec<DhtNodeIdRecord> = self
            .host
            .node_ids()
            .into_iter()
            .map(|k| DhtNodeIdRecord {
                node: k.node as u32,
                id: k.id.0,
                external_ip: k.external_ip,
                updated_at,
            })
            .collect();
        if !ids.is_empty() {
            self.records.send(Record::DhtNodeIds(ids));
        }
    }

    /// Sends the node ids and the good nodes to the database.
    fn persist(&mut self) {
        self.persist_ids();
        let seen_at = self.epoch_unix_ms + self.now as i64;
        let nodes: Vec<DhtNodeRecord> = self
            .host
            .good_nodes(self.now)
            .into_iter()
            .take(MAX_PERSISTED)
            .map(|(id, addr)| DhtNodeRecord {
                id: id.0,
                addr,
                seen_at,
            })
            .collect();
        // An empty table (a node that never joined) does not wipe what an earlier run kept.
        if !nodes.is_empty() {
            self.records.send(Record::DhtNodes(nodes));
        }
    }
}

impl Drop for ScanDht {
    /// The worker stops: its good nodes are kept for the next run (the record sender
    /// flushes when it is dropped, after this).
    fn drop(&mut self) {
        if self.host.is_running() {
            self.persist();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::krpc::{Body, Message, QueryKind, Response};
    use crate::scan::catalog::CatalogTorrent;
    use crate::store::anon::{Anonymizer, IpMode};
    use crate::store::record::{TorrentRecord, TorrentSource};
    use crate::store::writer::{Writer, WriterOptions};
    use crate::store::Store;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    type Sent = Vec<(SocketAddr, SocketAddr, Vec<u8>)>;

    /// One fake DHT node at every address: it answers find_node with no nodes and get_peers
    /// with `peers` (or, asked to scrape, with bloom filters only, as libtorrent does).
    fn answer(dht: &mut ScanDht, sent: Sent, now: Millis, peers: &[SocketAddr]) -> (u32, u32) {
        let (mut get_peers, mut scrapes) = (0, 0);
        for (local, to, bytes) in sent {
            let msg = crate::proto::krpc::decode(&bytes).unwrap();
            let Body::Query(q) = &msg.body else { continue };
            let mut r = Response::with_id(Id20([to.port() as u8; 20]));
            match &q.kind {
                QueryKind::GetPeers { scrape: true, .. } => {
                    scrapes += 1;
                    r.token = Some(b"t".to_vec());
                    r.seeds_filter = Some(Box::default());
                    r.peers_filter = Some(Box::default());
                }
                QueryKind::GetPeers { .. } => {
                    get_peers += 1;
                    r.token = Some(b"t".to_vec());
                    r.values = Some(peers.to_vec());
                }
                QueryKind::FindNode { .. } => r.nodes = Some(Vec::new()),
                _ => {}
            }
            let reply = Message::new(msg.transaction_id.clone(), Body::Response(r)).encode();
            dht.datagram(now, local, to, &reply);
        }
        (get_peers, scrapes)
    }

    #[test]
    fn torrents_are_looked_up_staggered_on_their_own_node_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scan.sqlite");
        let store = Store::open(&path).unwrap();
        let mut torrents = Vec::new();
        for (i, pieces) in [(1u8, 10u32), (2, 0), (3, 10)] {
            let db_id = store
                .upsert_torrent(&TorrentRecord {
                    info_hash_v1: Some([i; 20]),
                    info_hash_v2: None,
                    name: None,
                    piece_count: None,
                    piece_length: None,
                    total_size: None,
                    source: TorrentSource::Hash,
                    added_at: 1,
                    trackers: Vec::new(),
                })
                .unwrap();
            torrents.push(CatalogTorrent {
                db_id,
                wire_hash: [i; 20],
                alt_hash: None,
                name: format!("t{i}"),
                piece_count: AtomicU32::new(pieces),
                total_size: 0,
                trackers: Vec::new(),
            });
        }
        let catalog = Catalog::new(torrents);
        let options = WriterOptions::immediate();
        let writer = Writer::start(store, Anonymizer::new(IpMode::Full, [1; 32]), options).unwrap();
        let settings = DhtSettings {
            enabled: true,
            bootstrap: Vec::new(),
            // Two nodes over two workers: worker 0 runs node 0, which looks up torrents 0, 2.
            node_ids: 2,
            lookup_interval: Duration::from_secs(3600),
            max_lookups: 8,
            read_only: false,
            announce: false,
            crawl_rate: 50,
        };
        let mut dht = ScanDht::new(
            settings,
            0,
            2,
            vec!["127.0.0.9:7000".parse().unwrap()],
            &[],
            &[],
            0,
            writer.sender(),
            1_000_000,
        );
        dht.on_udp_bound(&["127.0.0.5:6881".parse().unwrap()], 0);
        let peers: Vec<SocketAddr> = vec!["127.0.1.1:6000".parse().unwrap()];
        let mut found: Vec<(u32, Vec<SocketAddr>)> = Vec::new();
        let (mut get_peers, mut scrapes) = (0, 0);
        let mut first_lookup_at = None;
        // Five minutes in 100 ms steps: the torrent without metadata is looked up every
        // minute, the others once (their interval is an hour).
        for step in 0..3000u64 {
            let now = step * 100;
            let mut sent: Sent = Vec::new();
            found.extend(dht.poll(now, &catalog, &mut sent));
            let (g, s) = answer(&mut dht, sent, now, &peers);
            if g + s > 0 && first_lookup_at.is_none() {
                first_lookup_at = Some(now);
            }
            get_peers += g;
            scrapes += s;
            assert!(dht.next_deadline().is_some());
        }
        assert!(
            first_lookup_at.is_some_and(|t| t >= FIRST_LOOKUP_MS),
            "{first_lookup_at:?}"
        );
        // Torrent 1 is node 1's (worker 1): never looked up here.
        assert!(found.iter().all(|(t, _)| *t == 0 || *t == 2), "{found:?}");
        assert!(found.iter().all(|(_, p)| *p == peers));
        let lookups_of = |t: u32| found.iter().filter(|(x, _)| *x == t).count();
        // Torrent 0 (metadata known): one lookup. Torrent 2 has metadata too.
        assert_eq!(lookups_of(0), 1);
        assert_eq!(lookups_of(2), 1);
        assert!(get_peers >= 2 && scrapes == 0, "{get_peers} {scrapes}");
        // What the worker's metrics get: two lookups, one peer each, the answering node good.
        let counters = DhtCounters::default();
        dht.publish(&counters, 3000 * 100);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(
            dht.lookup_counts(),
            LookupCounts {
                started: 2,
                finished: 2,
                failed: 0,
                no_nodes: 0,
                peers_found: 2,
                announces_received: 0,
            }
        );
        assert_eq!(load(&counters.lookups_started), 2);
        assert_eq!(load(&counters.lookups_finished), 2);
        assert_eq!(load(&counters.peers_found), 2);
        assert_eq!(load(&counters.lookups_running), 0);
        assert!(
            load(&counters.queries_sent) >= 3,
            "bootstrap and two lookups"
        );
        assert_eq!(load(&counters.replies), load(&counters.queries_sent));
        assert_eq!(load(&counters.timeouts), 0);
        assert_eq!(counters.good_nodes(), 1, "the one answering address");
        assert!(counters.nodes[0].running.load(Ordering::Relaxed));
        assert!(
            !counters.nodes[1].running.load(Ordering::Relaxed),
            "node 1 is worker 1's"
        );
        drop(dht);
        writer.finish().unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        let rows: i64 = conn
            .query_row(
                "SELECT count(*) FROM discovery_requests WHERE source = 4",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(rows, 2);
        let kept: i64 = conn
            .query_row("SELECT count(*) FROM dht_nodes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 1, "the answering node is kept at stop");
    }

    #[test]
    fn a_node_named_by_a_port_message_is_pinged_once_and_joins_when_it_answers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("p.sqlite")).unwrap();
        let writer = Writer::start(
            store,
            Anonymizer::new(IpMode::Full, [1; 32]),
            WriterOptions::immediate(),
        )
        .unwrap();
        let settings = DhtSettings {
            enabled: true,
            bootstrap: Vec::new(),
            node_ids: 1,
            lookup_interval: Duration::from_secs(900),
            max_lookups: 8,
            read_only: false,
            announce: false,
            crawl_rate: 50,
        };
        let mut dht = ScanDht::new(settings, 0, 1, Vec::new(), &[], &[], 0, writer.sender(), 0);
        let catalog = Catalog::new(Vec::new());
        let peer_node: SocketAddr = "127.0.0.7:6881".parse().unwrap();
        assert!(
            !dht.node_from_peer(peer_node, 0),
            "no node runs before the sockets are bound"
        );
        dht.on_udp_bound(&["127.0.0.5:6881".parse().unwrap()], 0);
        assert!(dht.node_from_peer(peer_node, 10));
        assert!(
            dht.node_from_peer(peer_node, 20),
            "known already: not pinged again"
        );
        // A public node named by a peer is not reachable from loopback: never pinged.
        assert!(dht.node_from_peer("203.0.113.9:6881".parse().unwrap(), 20));
        let mut sent: Sent = Vec::new();
        dht.poll(30, &catalog, &mut sent);
        let pings: Vec<&SocketAddr> = sent.iter().map(|(_, to, _)| to).collect();
        assert_eq!(pings, vec![&peer_node]);
        assert_eq!(dht.host().routing_nodes(), 0);
        answer(&mut dht, sent, 40, &[]);
        assert_eq!(
            dht.host().routing_nodes(),
            1,
            "it answered: in the routing table"
        );
        let counters = DhtCounters::default();
        dht.publish(&counters, 50);
        assert_eq!(counters.queries_sent.load(Ordering::Relaxed), 1, "one ping");
        assert_eq!(counters.replies.load(Ordering::Relaxed), 1);
        assert_eq!(counters.good_nodes(), 1);
        drop(dht);
        writer.finish().unwrap();
    }

    #[test]
    fn the_next_run_starts_with_the_node_ids_this_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.sqlite");
        // One run of `node_ids` nodes on one worker; the ids it started with and the rows
        // it left.
        let run = |node_ids: usize| {
            let store = Store::open(&path).unwrap();
            let kept = store.dht_node_ids().unwrap();
            let writer = Writer::start(
                store,
                Anonymizer::new(IpMode::Hmac, [1; 32]),
                WriterOptions::immediate(),
            )
            .unwrap();
            let settings = DhtSettings {
                enabled: true,
                bootstrap: Vec::new(),
                node_ids,
                lookup_interval: Duration::from_secs(900),
                max_lookups: 8,
                read_only: false,
                announce: false,
                crawl_rate: 50,
            };
            let mut dht = ScanDht::new(
                settings,
                0,
                1,
                Vec::new(),
                &[],
                &kept,
                0,
                writer.sender(),
                0,
            );
            dht.on_udp_bound(&["127.0.0.5:6881".parse().unwrap()], 0);
            let ids: Vec<Id20> = dht.host().nodes().iter().map(|n| n.1).collect();
            drop(dht);
            writer.finish().unwrap();
            (ids, Store::open(&path).unwrap().dht_node_ids().unwrap())
        };
        let (first, rows) = run(2);
        assert_eq!(first.len(), 2);
        assert_ne!(first[0], first[1]);
        assert_eq!(
            rows.iter()
                .map(|r| (r.node, Id20(r.id), r.external_ip))
                .collect::<Vec<_>>(),
            [(0, first[0], None), (1, first[1], None)],
            "on loopback the ids are random, derived from no address"
        );
        let (second, _) = run(1);
        assert_eq!(second, [first[0]], "fewer nodes: node 0 keeps its id");
        let (third, rows) = run(3);
        assert_eq!(
            &third[..2],
            &first[..],
            "node 1's id waited in the database"
        );
        assert!(
            !first.contains(&third[2]),
            "a new node number gets a new id"
        );
        assert_eq!(rows.len(), 3);
    }

    #[test]
    fn a_torrent_waiting_for_metadata_is_looked_up_every_minute_with_scrapes_between() {
        let catalog = Catalog::new(vec![CatalogTorrent {
            db_id: 1,
            wire_hash: [7; 20],
            alt_hash: None,
            name: "magnet".into(),
            piece_count: AtomicU32::new(0),
            total_size: 0,
            trackers: Vec::new(),
        }]);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.sqlite")).unwrap();
        store
            .upsert_torrent(&TorrentRecord {
                info_hash_v1: Some([7; 20]),
                info_hash_v2: None,
                name: None,
                piece_count: None,
                piece_length: None,
                total_size: None,
                source: TorrentSource::Magnet,
                added_at: 1,
                trackers: Vec::new(),
            })
            .unwrap();
        let options = WriterOptions::immediate();
        let writer = Writer::start(store, Anonymizer::new(IpMode::Full, [1; 32]), options).unwrap();
        let settings = DhtSettings {
            enabled: true,
            bootstrap: Vec::new(),
            node_ids: 1,
            lookup_interval: Duration::from_secs(900),
            max_lookups: 8,
            read_only: false,
            announce: false,
            crawl_rate: 50,
        };
        let mut dht = ScanDht::new(
            settings,
            0,
            1,
            vec!["127.0.0.9:7000".parse().unwrap()],
            &[],
            &[],
            0,
            writer.sender(),
            0,
        );
        dht.on_udp_bound(&["127.0.0.5:6881".parse().unwrap()], 0);
        let (mut get_peers, mut scrapes) = (0, 0);
        for step in 0..(4 * 60 * 10 - 50) {
            let now = step * 100;
            let mut sent: Sent = Vec::new();
            dht.poll(now, &catalog, &mut sent);
            let (g, s) = answer(&mut dht, sent, now, &[]);
            get_peers += g;
            scrapes += s;
        }
        // Lookups at 3 s, 63 s, 123 s, 183 s: the fourth is a scrape.
        assert_eq!((get_peers, scrapes), (3, 1));
        drop(dht);
        writer.finish().unwrap();
    }
}
