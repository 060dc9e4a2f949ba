//! [`DhtHost`]: the DHT nodes one worker runs, glued to that worker's UDP sockets.
//!
//! The node itself is sans-IO ([`crate::proto::dht::DhtNode`]); this is the thin layer
//! between it and the engine: engine time ([`Millis`]) becomes `Instant`s, datagrams from
//! the worker's sockets go to the right node, the nodes' datagrams go into the worker's send
//! queue from the right local address, and lookups started here come back as [`HostEvent`]s
//! tagged with the caller's key (the scan uses the torrent index).
//!
//! # Nodes and sockets
//! `dht.node_ids` = n nodes in all; node `i` lives on worker `i % workers`
//! ([`nodes_of_worker`]). A node speaks each address family the worker has a UDP socket for
//! (its first socket of each family), so worker `w`'s node keeps the stable port
//! `listen port + w`. When a worker hosts more nodes than it has sockets of a family, they
//! share the socket: a query goes to the first of them, a reply to the one whose keyed
//! transaction id it carries (each node tries it in turn; the others drop it after one hash).
//!
//! # Reachability (the loopback rule)
//! A socket bound to a loopback address cannot reach anyone outside the machine, so a node
//! on such a socket never sends to a non-loopback address: those datagrams are dropped here
//! before they reach the engine (counted in [`HostStats::unreachable_dropped`]; the node
//! sees a timeout). [`reachable`] is the rule; session code uses the same rule to resolve
//! the default bootstrap names only when some socket is not bound to loopback
//! (`crate::dht::bootstrap`).
//!
//! # API (stable: the KRPC benchmark and `swarmscan crawl` build on it)
//! - [`DhtHost::new`] with a [`HostConfig`], then [`DhtHost::on_udp_bound`] with the
//!   worker's bound UDP addresses (creates the nodes and bootstraps them).
//! - [`DhtHost::handle_datagram`] for every KRPC datagram the worker receives.
//! - [`DhtHost::poll_transmit`] once per loop iteration: runs the nodes' timers and moves
//!   their datagrams into a [`DatagramSink`] (the engine's `DatagramQueue`, or a `Vec` in
//!   tests); [`DhtHost::next_deadline`] says when it must be called again at the latest.
//! - [`DhtHost::get_peers`] / [`DhtHost::find_node`] start lookups; [`DhtHost::ping`] and
//!   [`DhtHost::add_node`] feed nodes learned elsewhere (a peer's `port` message, the
//!   database).
//! - [`DhtHost::poll_event`]: peers found, lookups finished (with counts and BEP 33
//!   estimates), external address and node id changes.
//! - [`DhtHost::good_nodes`]: the nodes worth remembering for the next run.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::engine::{DatagramQueue, Millis};
use crate::proto::dht::{
    DhtConfig, DhtNode, DhtStats, Event, GetPeersOptions, LookupError, LookupId, LookupResult,
    NodeStatus, Samples,
};
use crate::proto::krpc::{bep42_exempt, bep42_id_matches, Id20};

/// Most nodes one host runs in all (`dht.node_ids` is checked against it).
pub const MAX_NODE_IDS: usize = 8;

/// Where the host's datagrams go: the engine's send queue, or a vector in tests.
pub trait DatagramSink {
    /// Queue `bytes` from the socket bound to `local` to `to`; false if refused.
    fn send_datagram(&mut self, local: SocketAddr, to: SocketAddr, bytes: &[u8]) -> bool;
}

impl DatagramSink for DatagramQueue {
    fn send_datagram(&mut self, local: SocketAddr, to: SocketAddr, bytes: &[u8]) -> bool {
        self.push(local, to, bytes).is_ok()
    }
}

/// (local, to, bytes) for each datagram sent.
impl DatagramSink for Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    fn send_datagram(&mut self, local: SocketAddr, to: SocketAddr, bytes: &[u8]) -> bool {
        self.push((local, to, bytes.to_vec()));
        true
    }
}

/// Whether a socket bound to `local` can reach `to`: a loopback-bound socket reaches only
/// loopback addresses; any other (a public or private address, or unspecified) reaches all.
pub fn reachable(local: &SocketAddr, to: &SocketAddr) -> bool {
    let to_ip = to.ip().to_canonical();
    if to.port() == 0 || to_ip.is_unspecified() || to_ip.is_multicast() {
        return false;
    }
    if local.ip().to_canonical().is_loopback() {
        to_ip.is_loopback()
    } else {
        true
    }
}

/// The global node numbers worker `worker` of `workers` runs, of `node_ids` in all.
pub fn nodes_of_worker(worker: usize, workers: usize, node_ids: usize) -> Vec<usize> {
    (0..node_ids)
        .filter(|i| i % workers.max(1) == worker)
        .collect()
}

/// Settings of a worker's DHT host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// This worker's index and the worker count.
    pub worker: usize,
    pub workers: usize,
    /// Nodes in all, over every worker (`dht.node_ids`, 1..=[`MAX_NODE_IDS`]).
    pub node_ids: usize,
    /// Template for each node (read-only mode, lookup limits, …). `ipv4`/`ipv6` are set
    /// from the sockets; `node_id` is used for node 0 only (tests), others get random ids.
    pub node: DhtConfig,
    /// Addresses to bootstrap from (resolved; those a node cannot reach are skipped).
    pub bootstrap: Vec<SocketAddr>,
    /// Nodes remembered from an earlier run: (id, address), fed to every node of the family.
    pub remembered: Vec<(Id20, SocketAddr)>,
    /// Our nodes' ids from an earlier run, by node number: each node this host runs starts
    /// with its number's id (BEP 42 replaces it if our external address turns out to be
    /// another); numbers without one get a random id. Ignored for node 0 when
    /// `node.node_id` fixes its id.
    pub kept_ids: Vec<KeptNodeId>,
    /// 32 random bytes per node (keys its transaction ids and tokens); `None`: from the OS.
    pub seed: Option<[u8; 32]>,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            worker: 0,
            workers: 1,
            node_ids: 1,
            node: DhtConfig::default(),
            bootstrap: Vec::new(),
            remembered: Vec::new(),
            kept_ids: Vec::new(),
            seed: None,
        }
    }
}

/// A node id kept from an earlier run (see [`HostConfig::kept_ids`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptNodeId {
    /// Global node number.
    pub node: usize,
    pub id: Id20,
    /// Our external address the id was derived from (BEP 42); `None`: not derived.
    pub external_ip: Option<IpAddr>,
}

/// What the host reports.
#[derive(Debug, Clone, PartialEq)]
pub enum HostEvent {
    /// Peers a `get_peers` lookup found that it had not reported yet.
    Peers {
        key: u64,
        info_hash: Id20,
        peers: Vec<SocketAddr>,
    },
    /// A lookup started with [`DhtHost::get_peers`] or [`DhtHost::find_node`] ended.
    /// `result` has every distinct peer, the counts (queries, replies, timeouts), the BEP 33
    /// estimates and the start and end times.
    LookupDone {
        key: u64,
        node: usize,
        result: Box<LookupResult>,
    },
    /// A node's replies agree on our external address.
    ExternalAddress { node: usize, ip: IpAddr },
    /// A node's id changed (BEP 42, after it learned our external address).
    NodeIdChanged { node: usize, old: Id20, new: Id20 },
    /// Another node announced a peer to one of ours.
    Announced {
        node: usize,
        info_hash: Id20,
        peer: SocketAddr,
        seed: bool,
    },
    /// A node answered one of our `sample_infohashes` queries (BEP 51; `swarmscan crawl`).
    Samples { node: usize, samples: Box<Samples> },
    /// A `sample_infohashes` query of ours failed (no answer, an error or garbage).
    SamplesFailed { node: usize, from: SocketAddr },
}

/// Counters of the host, beyond the nodes' own [`DhtStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Datagrams not sent: a loopback-bound node addressed a non-loopback address.
    pub unreachable_dropped: u64,
    /// Datagrams the engine's send queue refused (full).
    pub send_refused: u64,
    /// KRPC datagrams on a socket no node of ours uses.
    pub no_node: u64,
    /// Replies one node on a shared socket did not match and passed to the next (counted
    /// in that node's `replies_unmatched`, yet not unmatched by the host).
    pub passed_on: u64,
}

struct HostedNode {
    /// Global node number (0..node_ids).
    index: usize,
    node: DhtNode,
    /// The worker's socket this node uses for IPv4 and for IPv6.
    local4: Option<SocketAddr>,
    local6: Option<SocketAddr>,
    /// Our lookups: their caller's key.
    lookups: HashMap<LookupId, u64>,
    /// The id kept from an earlier run this node started with, if any.
    kept: Option<KeptNodeId>,
}

impl HostedNode {
    fn local_for(&self, to: &SocketAddr) -> Option<SocketAddr> {
        if to.is_ipv6() {
            self.local6
        } else {
            self.local4
        }
    }

    fn uses(&self, local: &SocketAddr) -> bool {
        self.local4.as_ref() == Some(local) || self.local6.as_ref() == Some(local)
    }
}

/// The DHT nodes of one worker (see the module docs).
pub struct DhtHost {
    config: HostConfig,
    /// `Instant` at engine time 0 (any fixed origin: only differences matter to the nodes).
    origin: Instant,
    nodes: Vec<HostedNode>,
    events: VecDeque<HostEvent>,
    stats: HostStats,
}

impl DhtHost {
    /// A host with no node yet: nodes start in [`DhtHost::on_udp_bound`].
    pub fn new(config: HostConfig) -> DhtHost {
        DhtHost {
            config,
            origin: Instant::now(),
            nodes: Vec::new(),
            events: VecDeque::new(),
            stats: HostStats::default(),
        }
    }

    /// Engine time as an `Instant`.
    pub fn instant(&self, now: Millis) -> Instant {
        self.origin + Duration::from_millis(now)
    }

    fn millis(&self, t: Instant) -> Millis {
        t.saturating_duration_since(self.origin).as_millis() as Millis
    }

    /// The worker's UDP sockets are bound (`udp` as given to `WorkerDriver::on_udp_bound`):
    /// start this worker's nodes on them and bootstrap. Without a socket of either family
    /// the worker runs no node.
    pub fn on_udp_bound(&mut self, udp: &[SocketAddr], now: Millis) {
        let now_i = self.instant(now);
        let v4: Vec<SocketAddr> = udp.iter().copied().filter(|a| a.is_ipv4()).collect();
        let v6: Vec<SocketAddr> = udp.iter().copied().filter(|a| a.is_ipv6()).collect();
        if v4.is_empty() && v6.is_empty() {
            return;
        }
        let mine = nodes_of_worker(
            self.config.worker,
            self.config.workers,
            self.config.node_ids,
        );
        for (k, index) in mine.into_iter().enumerate() {
            let local4 = (!v4.is_empty()).then(|| v4[k % v4.len()]);
            let local6 = (!v6.is_empty()).then(|| v6[k % v6.len()]);
            let mut cfg = self.config.node.clone();
            cfg.ipv4 = local4.is_some();
            cfg.ipv6 = local6.is_some();
            if index != 0 {
                cfg.node_id = None;
            }
            let kept = self
                .config
                .kept_ids
                .iter()
                .find(|k| k.node == index && cfg.node_id.is_none())
                .copied();
            cfg.initial_node_id = kept.map(|k| k.id);
            let seed = match self.config.seed {
                Some(mut s) => {
                    s[0] ^= index as u8;
                    s
                }
                None => os_seed(),
            };
            let mut node = DhtNode::new(cfg, seed, now_i);
            let reach = |a: &SocketAddr| {
                let local = if a.is_ipv6() { local6 } else { local4 };
                local.is_some_and(|l| reachable(&l, a))
            };
            for (id, addr) in &self.config.remembered {
                if reach(addr) {
                    node.add_node(*id, *addr, now_i);
                }
            }
            let boot: Vec<SocketAddr> = self
                .config
                .bootstrap
                .iter()
                .copied()
                .filter(|a| reach(a))
                .collect();
            match node.bootstrap(&boot, now_i) {
                Ok(_) => {}
                // Nothing to start from yet: the node answers whoever finds it (a peer's
                // `port` message, another node), and bootstraps again later.
                Err(e) => tracing::info!(node = index, "DHT node not bootstrapped: {e}"),
            }
            tracing::info!(
                node = index,
                id = %crate::proto::hex::encode(&node.id().0),
                kept = kept.is_some(),
                derived_for = ?kept.and_then(|k| k.external_ip),
                ipv4 = ?local4,
                ipv6 = ?local6,
                bootstrap = boot.len(),
                "DHT node started"
            );
            self.nodes.push(HostedNode {
                index,
                node,
                local4,
                local6,
                lookups: HashMap::new(),
                kept,
            });
        }
    }

    /// The nodes this host runs: (global number, node id, IPv4 socket, IPv6 socket).
    pub fn nodes(&self) -> Vec<(usize, Id20, Option<SocketAddr>, Option<SocketAddr>)> {
        self.nodes
            .iter()
            .map(|n| (n.index, n.node.id(), n.local4, n.local6))
            .collect()
    }

    /// The ids of the nodes this host runs, to keep for the next run, each with the external
    /// address it was derived from: the one the node's vote names if the id fits it (BEP 42,
    /// not an exempt address), else, while the node still has the id it started with, the
    /// address that id was kept with (no vote yet, or an exempt one), else none.
    pub fn node_ids(&self) -> Vec<KeptNodeId> {
        self.nodes
            .iter()
            .map(|n| {
                let id = n.node.id();
                let primary_v6 = !n.node.config().ipv4;
                let voted = n
                    .node
                    .external_ip(primary_v6)
                    .filter(|ip| !bep42_exempt(*ip) && bep42_id_matches(&id, *ip));
                let kept = n.kept.filter(|k| k.id == id).and_then(|k| k.external_ip);
                KeptNodeId {
                    node: n.index,
                    id,
                    external_ip: voted.or(kept),
                }
            })
            .collect()
    }

    /// True when this host runs at least one node.
    pub fn is_running(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// The node with global number `index`, if this host runs it (read-only access: its
    /// routing tables, stats, external address).
    pub fn node(&self, index: usize) -> Option<&DhtNode> {
        self.nodes
            .iter()
            .find(|n| n.index == index)
            .map(|n| &n.node)
    }

    /// A KRPC datagram arrived on the socket bound to `local`.
    pub fn handle_datagram(
        &mut self,
        now: Millis,
        local: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
    ) {
        let now_i = self.instant(now);
        let sharing: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].uses(&local))
            .collect();
        let Some((&last, rest)) = sharing.split_last() else {
            self.stats.no_node += 1;
            return;
        };
        for &i in rest {
            // Shared socket: a reply another node issued counts as unmatched here; then the
            // next node tries it. Anything else (a query, a matched reply) stops here.
            let unmatched = self.nodes[i].node.stats().replies_unmatched;
            self.nodes[i].node.handle_datagram(from, bytes, now_i);
            if self.nodes[i].node.stats().replies_unmatched == unmatched {
                self.collect_events(i);
                return;
            }
            self.stats.passed_on += 1;
        }
        self.nodes[last].node.handle_datagram(from, bytes, now_i);
        self.collect_events(last);
    }

    /// Runs the nodes' timers and moves their datagrams to `out`. Call once per loop
    /// iteration (cheap when nothing is due).
    pub fn poll_transmit(&mut self, now: Millis, out: &mut impl DatagramSink) {
        let now_i = self.instant(now);
        for i in 0..self.nodes.len() {
            if self.nodes[i].node.next_deadline() <= now_i {
                self.nodes[i].node.tick(now_i);
            }
            self.flush(i, out);
            self.collect_events(i);
        }
    }

    fn flush(&mut self, i: usize, out: &mut impl DatagramSink) {
        while let Some(d) = self.nodes[i].node.poll_transmit() {
            let Some(local) = self.nodes[i].local_for(&d.to) else {
                self.stats.unreachable_dropped += 1;
                continue;
            };
            if !reachable(&local, &d.to) {
                self.stats.unreachable_dropped += 1;
                continue;
            }
            if !out.send_datagram(local, d.to, &d.bytes) {
                // The query times out in the node like a lost datagram.
                self.stats.send_refused += 1;
            }
        }
    }

    fn collect_events(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        while let Some(e) = n.node.poll_event() {
            let ev = match e {
                Event::Peers {
                    lookup,
                    info_hash,
                    peers,
                } => {
                    let Some(&key) = n.lookups.get(&lookup) else {
                        continue; // a node's own lookups (refresh) find no peers
                    };
                    HostEvent::Peers {
                        key,
                        info_hash,
                        peers,
                    }
                }
                Event::LookupDone(result) => {
                    let Some(key) = n.lookups.remove(&result.id) else {
                        continue; // bootstrap and refresh lookups are the node's business
                    };
                    HostEvent::LookupDone {
                        key,
                        node: n.index,
                        result: Box::new(result),
                    }
                }
                Event::ExternalAddress(ip) => HostEvent::ExternalAddress { node: n.index, ip },
                Event::NodeIdChanged { old, new } => HostEvent::NodeIdChanged {
                    node: n.index,
                    old,
                    new,
                },
                Event::Announced {
                    info_hash,
                    peer,
                    seed,
                } => HostEvent::Announced {
                    node: n.index,
                    info_hash,
                    peer,
                    seed,
                },
                Event::Samples(samples) => HostEvent::Samples {
                    node: n.index,
                    samples: Box::new(samples),
                },
                Event::SamplesFailed { from } => HostEvent::SamplesFailed {
                    node: n.index,
                    from,
                },
            };
            self.events.push_back(ev);
        }
    }

    /// When [`DhtHost::poll_transmit`] has work next (None: no node runs).
    pub fn next_deadline(&self) -> Option<Millis> {
        self.nodes
            .iter()
            .map(|n| self.millis(n.node.next_deadline()))
            .min()
    }

    fn position(&self, node: usize) -> Option<usize> {
        self.nodes.iter().position(|n| n.index == node)
    }

    /// Starts a `get_peers` lookup for `info_hash` on node `node` (a global number this host
    /// runs); its peers and end come back as events with `key`.
    pub fn get_peers(
        &mut self,
        node: usize,
        key: u64,
        info_hash: Id20,
        options: GetPeersOptions,
        now: Millis,
    ) -> Result<LookupId, LookupError> {
        let now_i = self.instant(now);
        let i = self.position(node).ok_or(LookupError::NoNodes)?;
        let id = self.nodes[i].node.get_peers(info_hash, options, now_i)?;
        self.nodes[i].lookups.insert(id, key);
        // A lookup can end at once (every candidate unreachable): report it.
        self.collect_events(i);
        Ok(id)
    }

    /// Starts a `find_node` lookup for `target` on node `node`; its end comes back as
    /// [`HostEvent::LookupDone`] with `key`.
    pub fn find_node(
        &mut self,
        node: usize,
        key: u64,
        target: Id20,
        now: Millis,
    ) -> Result<LookupId, LookupError> {
        let now_i = self.instant(now);
        let i = self.position(node).ok_or(LookupError::NoNodes)?;
        let id = self.nodes[i].node.find_node(target, now_i)?;
        self.nodes[i].lookups.insert(id, key);
        self.collect_events(i);
        Ok(id)
    }

    /// Sends a BEP 51 `sample_infohashes` for `target` from node `node` to `addr` (id, if
    /// known, must match the answer); the answer comes back as [`HostEvent::Samples`] or
    /// [`HostEvent::SamplesFailed`]. False when it could not be sent (no such node, the
    /// address unreachable from its socket, its queues full).
    pub fn sample_infohashes(
        &mut self,
        node: usize,
        addr: SocketAddr,
        id: Option<Id20>,
        target: Id20,
        now: Millis,
    ) -> bool {
        let now_i = self.instant(now);
        let Some(i) = self.position(node) else {
            return false;
        };
        let n = &mut self.nodes[i];
        n.local_for(&addr).is_some_and(|l| reachable(&l, &addr))
            && n.node.sample_infohashes(addr, id, target, now_i)
    }

    /// Lookups running on node `node` that this host started (not its upkeep).
    pub fn lookups_running(&self, node: usize) -> usize {
        self.position(node)
            .map_or(0, |i| self.nodes[i].lookups.len())
    }

    /// Pings `addr` from the first node that can reach it (a node learned from a peer's
    /// `port` message: it enters the routing table when it answers). False when no node can.
    pub fn ping(&mut self, addr: SocketAddr, now: Millis) -> bool {
        let now_i = self.instant(now);
        for n in &mut self.nodes {
            if n.local_for(&addr).is_some_and(|l| reachable(&l, &addr)) {
                return n.node.ping(addr, None, now_i);
            }
        }
        false
    }

    /// A node known from elsewhere: every node of ours that can reach it remembers it (it
    /// enters a routing table once a ping confirms it).
    pub fn add_node(&mut self, id: Id20, addr: SocketAddr, now: Millis) {
        let now_i = self.instant(now);
        for n in &mut self.nodes {
            if n.local_for(&addr).is_some_and(|l| reachable(&l, &addr)) {
                n.node.add_node(id, addr, now_i);
            }
        }
    }

    /// Another source says our address is `ip` (see `DhtNode::external_address_hint`): a
    /// vote for every node of ours, under the voter address `voter`.
    pub fn external_address_hint(&mut self, voter: SocketAddr, ip: IpAddr, now: Millis) {
        let now_i = self.instant(now);
        for n in &mut self.nodes {
            n.node.external_address_hint(voter, ip, now_i);
            // Events (a decided address, a new node id) come with the next poll.
        }
        for i in 0..self.nodes.len() {
            self.collect_events(i);
        }
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<HostEvent> {
        self.events.pop_front()
    }

    /// The good nodes (answered within 15 minutes) of every routing table here, once each:
    /// worth remembering for the next run.
    pub fn good_nodes(&self, now: Millis) -> Vec<(Id20, SocketAddr)> {
        let now_i = self.instant(now);
        let mut out: Vec<(Id20, SocketAddr)> = Vec::new();
        for n in &self.nodes {
            for v6 in [false, true] {
                for e in n.node.table(v6).nodes() {
                    if e.status(now_i) == NodeStatus::Good && !out.iter().any(|(_, a)| *a == e.addr)
                    {
                        out.push((e.id, e.addr));
                    }
                }
            }
        }
        out
    }

    /// The host's own counters.
    pub fn stats(&self) -> &HostStats {
        &self.stats
    }

    /// The nodes' counters, summed.
    pub fn node_stats(&self) -> DhtStats {
        let mut s = DhtStats::default();
        for n in &self.nodes {
            let x = n.node.stats();
            s.datagrams_in += x.datagrams_in;
            s.bytes_in += x.bytes_in;
            s.datagrams_out += x.datagrams_out;
            s.bytes_out += x.bytes_out;
            s.queries_answered += x.queries_answered;
            s.errors_sent += x.errors_sent;
            s.queries_dropped += x.queries_dropped;
            s.garbage += x.garbage;
            s.replies_unmatched += x.replies_unmatched;
            s.queries_sent += x.queries_sent;
            s.replies += x.replies;
            s.timeouts += x.timeouts;
            s.queue_full += x.queue_full;
        }
        s
    }

    /// Each node's routing tables by status: (global node number, [ipv4, ipv6] × [good,
    /// questionable, bad] entries).
    pub fn routing_status(&self, now: Millis) -> Vec<(usize, [[u64; 3]; 2])> {
        let now_i = self.instant(now);
        self.nodes
            .iter()
            .map(|n| {
                let mut counts = [[0u64; 3]; 2];
                for (family, v6) in [false, true].into_iter().enumerate() {
                    for e in n.node.table(v6).nodes() {
                        let status = match e.status(now_i) {
                            NodeStatus::Good => 0,
                            NodeStatus::Questionable => 1,
                            NodeStatus::Bad => 2,
                        };
                        counts[family][status] += 1;
                    }
                }
                (n.index, counts)
            })
            .collect()
    }

    /// Lookups this host started that are still running, on all its nodes.
    pub fn lookups_running_all(&self) -> usize {
        self.nodes.iter().map(|n| n.lookups.len()).sum()
    }

    /// Routing table entries of all nodes here.
    pub fn routing_nodes(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| n.node.table(false).len() + n.node.table(true).len())
            .sum()
    }
}

/// 32 bytes of OS randomness (a node's secrets must not be guessable).
fn os_seed() -> [u8; 32] {
    let bytes = crate::scan::mse_budget::random_bytes(32);
    let mut seed = [0u8; 32];
    for (s, b) in seed.iter_mut().zip(bytes) {
        *s = b;
    }
    seed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::krpc::{Body, Message, Query, QueryKind, Response, Want};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    type Sent = Vec<(SocketAddr, SocketAddr, Vec<u8>)>;

    /// Answers every query in `sent` as a node at its destination with id `id_of(dest)`,
    /// naming `nodes` in find_node / get_peers answers and `values` in get_peers answers.
    fn answer_all(
        host: &mut DhtHost,
        sent: Sent,
        now: Millis,
        nodes: &[(Id20, std::net::SocketAddrV4)],
        values: &[SocketAddr],
    ) {
        for (local, to, bytes) in sent {
            let msg = crate::proto::krpc::decode(&bytes).unwrap();
            let Body::Query(q) = &msg.body else { continue };
            let mut id = [0u8; 20];
            id[..2].copy_from_slice(&to.port().to_be_bytes());
            id[2] = match to.ip() {
                IpAddr::V4(v4) => v4.octets()[3],
                IpAddr::V6(_) => 6,
            };
            let mut r = Response::with_id(Id20(id));
            match &q.kind {
                QueryKind::FindNode { .. } => {
                    r.nodes = Some(
                        nodes
                            .iter()
                            .map(|(id, a)| crate::proto::krpc::NodeV4 { id: *id, addr: *a })
                            .collect(),
                    )
                }
                QueryKind::GetPeers { .. } => {
                    r.token = Some(b"tok".to_vec());
                    r.nodes = Some(Vec::new());
                    r.values = Some(values.to_vec());
                }
                _ => {}
            }
            let reply = Message::new(msg.transaction_id.clone(), Body::Response(r)).encode();
            host.handle_datagram(now, local, to, &reply);
        }
    }

    #[test]
    fn nodes_are_spread_over_workers_round_robin() {
        assert_eq!(nodes_of_worker(0, 2, 5), vec![0, 2, 4]);
        assert_eq!(nodes_of_worker(1, 2, 5), vec![1, 3]);
        assert_eq!(nodes_of_worker(2, 3, 2), Vec::<usize>::new());
    }

    #[test]
    fn reachability_keeps_loopback_sockets_on_loopback() {
        let lo = addr("127.0.0.5:6881");
        assert!(reachable(&lo, &addr("127.0.0.9:7000")));
        assert!(!reachable(&lo, &addr("67.215.246.10:6881")));
        assert!(!reachable(&lo, &addr("10.0.0.1:6881")));
        assert!(!reachable(&addr("[::1]:6881"), &addr("[2001:db8::1]:6881")));
        assert!(reachable(&addr("[::1]:6881"), &addr("[::1]:7000")));
        let any = addr("0.0.0.0:6881");
        assert!(reachable(&any, &addr("67.215.246.10:6881")));
        assert!(reachable(
            &addr("192.0.2.4:6881"),
            &addr("67.215.246.10:6881")
        ));
        assert!(!reachable(&any, &addr("67.215.246.10:0")));
    }

    #[test]
    fn a_loopback_node_never_sends_beyond_loopback() {
        let mut host = DhtHost::new(HostConfig {
            bootstrap: vec![addr("67.215.246.10:6881"), addr("127.0.0.9:7000")],
            seed: Some([7; 32]),
            ..HostConfig::default()
        });
        let local = addr("127.0.0.5:6881");
        host.on_udp_bound(&[local], 0);
        let mut sent: Sent = Vec::new();
        host.poll_transmit(0, &mut sent);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!((sent[0].0, sent[0].1), (local, addr("127.0.0.9:7000")));
        // The loopback node names a public node: it is never queried.
        let public = std::net::SocketAddrV4::new([203, 0, 113, 7].into(), 6881);
        answer_all(&mut host, sent, 10, &[(Id20([9; 20]), public)], &[]);
        let mut sent: Sent = Vec::new();
        for t in (10..20_000).step_by(500) {
            host.poll_transmit(t, &mut sent);
        }
        assert!(
            sent.iter().all(|(_, to, _)| to.ip().is_loopback()),
            "{sent:?}"
        );
        assert!(host.stats().unreachable_dropped > 0);
    }

    #[test]
    fn get_peers_reports_peers_and_the_end_under_the_callers_key() {
        let mut host = DhtHost::new(HostConfig {
            bootstrap: vec![addr("127.0.0.9:7000")],
            seed: Some([1; 32]),
            ..HostConfig::default()
        });
        let local = addr("127.0.0.5:6881");
        host.on_udp_bound(&[local], 0);
        assert!(host.next_deadline().is_some());
        let mut sent: Sent = Vec::new();
        host.poll_transmit(0, &mut sent);
        let others: Vec<(Id20, std::net::SocketAddrV4)> = (10..14u8)
            .map(|i| {
                let mut id = [0u8; 20];
                id[..2].copy_from_slice(&7000u16.to_be_bytes());
                id[2] = i;
                (
                    Id20(id),
                    std::net::SocketAddrV4::new([127, 0, 0, i].into(), 7000),
                )
            })
            .collect();
        answer_all(&mut host, sent, 5, &others, &[]);
        // The bootstrap ends once the nodes named have answered too.
        for t in 0..20 {
            let mut sent: Sent = Vec::new();
            host.poll_transmit(10 + t * 100, &mut sent);
            answer_all(&mut host, sent, 10 + t * 100, &others, &[]);
        }
        assert!(host.routing_nodes() >= 4, "{}", host.routing_nodes());
        let hash = Id20([0xab; 20]);
        let peers = vec![addr("127.0.1.1:6000"), addr("127.0.1.2:6000")];
        host.get_peers(0, 42, hash, GetPeersOptions::default(), 3000)
            .unwrap();
        assert_eq!(host.lookups_running(0), 1);
        for t in 0..20 {
            let mut sent: Sent = Vec::new();
            host.poll_transmit(3000 + t * 100, &mut sent);
            answer_all(&mut host, sent, 3000 + t * 100, &others, &peers);
        }
        let mut found = Vec::new();
        let mut done = None;
        while let Some(e) = host.poll_event() {
            match e {
                HostEvent::Peers { key, peers, .. } => {
                    assert_eq!(key, 42);
                    found.extend(peers);
                }
                HostEvent::LookupDone { key, result, .. } => {
                    assert_eq!(key, 42);
                    done = Some(result);
                }
                _ => {}
            }
        }
        assert_eq!(found, peers);
        let done = done.expect("lookup finished");
        assert_eq!(done.peers, peers);
        assert!(done.replies >= 4 && done.queries >= done.replies);
        assert_eq!(host.lookups_running(0), 0);
        assert!(host.good_nodes(3000).len() >= 4);
    }

    #[test]
    fn a_tracker_reported_address_is_one_vote_for_the_bep42_id() {
        let mut host = DhtHost::new(HostConfig {
            seed: Some([2; 32]),
            ..HostConfig::default()
        });
        host.on_udp_bound(&[addr("0.0.0.0:6881")], 0);
        let before = host.nodes()[0].1;
        let ours: IpAddr = [198, 51, 100, 7].into();
        let trackers = addr("0.0.0.0:0");
        // Trackers alone (one voter, however often they say it) do not decide.
        for _ in 0..5 {
            host.external_address_hint(trackers, ours, 10);
        }
        assert_eq!(host.nodes()[0].1, before);
        assert!(host.poll_event().is_none());
        // Two DHT nodes agreeing with them do: the id follows BEP 42.
        host.external_address_hint(addr("192.0.2.1:6881"), ours, 20);
        host.external_address_hint(addr("192.0.2.2:6881"), ours, 30);
        let after = host.nodes()[0].1;
        assert_ne!(after, before);
        assert!(crate::proto::krpc::bep42_id_matches(&after, ours));
        let events: Vec<HostEvent> = std::iter::from_fn(|| host.poll_event()).collect();
        assert!(
            events.contains(&HostEvent::ExternalAddress { node: 0, ip: ours }),
            "{events:?}"
        );
        assert!(events.contains(&HostEvent::NodeIdChanged {
            node: 0,
            old: before,
            new: after
        }));
    }

    /// Three voters (a tracker and two DHT nodes) name `ip` as our address.
    fn vote(host: &mut DhtHost, ip: IpAddr, now: Millis) {
        for voter in ["0.0.0.0:0", "192.0.2.1:6881", "192.0.2.2:6881"] {
            host.external_address_hint(addr(voter), ip, now);
        }
    }

    #[test]
    fn kept_ids_start_their_nodes_and_new_numbers_get_new_ids() {
        let ours: IpAddr = [198, 51, 100, 7].into();
        let derived = crate::proto::krpc::bep42_node_id(ours, 1, [4; 17]);
        let random = Id20([0x55; 20]);
        let kept = |node, id, external_ip| KeptNodeId {
            node,
            id,
            external_ip,
        };
        let kept_ids = vec![
            kept(0, derived, Some(ours)),
            kept(2, random, None),
            // From a run with more nodes: not used, not lost (the store keeps it).
            kept(5, Id20([0x66; 20]), None),
        ];
        let mut host = DhtHost::new(HostConfig {
            node_ids: 3,
            kept_ids: kept_ids.clone(),
            seed: Some([5; 32]),
            ..HostConfig::default()
        });
        host.on_udp_bound(&[addr("0.0.0.0:6881")], 0);
        let ids = host.node_ids();
        assert_eq!(ids.len(), 3);
        assert_eq!(ids[0], kept_ids[0], "no vote yet: kept with its address");
        assert_eq!(ids[2], kept_ids[1]);
        assert_eq!(ids[1].node, 1);
        assert!(
            !kept_ids.iter().any(|k| k.id == ids[1].id),
            "a new number gets a new id"
        );
        assert_eq!(ids[1].external_ip, None);

        // The vote names the address node 0's id was derived for: it stays; the random ids
        // of nodes 1 and 2 give way to BEP 42 ones for it.
        vote(&mut host, ours, 10);
        let after = host.node_ids();
        assert_eq!(after[0], kept_ids[0]);
        for n in &after[1..] {
            assert!(crate::proto::krpc::bep42_id_matches(&n.id, ours));
            assert_eq!(n.external_ip, Some(ours));
        }

        // A node id fixed by the configuration wins over a kept one.
        let fixed = Id20([0x77; 20]);
        let mut host = DhtHost::new(HostConfig {
            node: DhtConfig {
                node_id: Some(fixed),
                ..DhtConfig::default()
            },
            kept_ids,
            ..HostConfig::default()
        });
        host.on_udp_bound(&[addr("0.0.0.0:6881")], 0);
        assert_eq!(host.node_ids()[0].id, fixed);
    }

    #[test]
    fn a_kept_id_gives_way_when_our_address_changed() {
        let old_ip: IpAddr = [198, 51, 100, 7].into();
        let new_ip: IpAddr = [203, 0, 113, 9].into();
        let derived = crate::proto::krpc::bep42_node_id(old_ip, 1, [4; 17]);
        let mut host = DhtHost::new(HostConfig {
            kept_ids: vec![KeptNodeId {
                node: 0,
                id: derived,
                external_ip: Some(old_ip),
            }],
            ..HostConfig::default()
        });
        host.on_udp_bound(&[addr("0.0.0.0:6881")], 0);
        vote(&mut host, new_ip, 10);
        let now = host.node_ids()[0];
        assert_ne!(now.id, derived);
        assert!(crate::proto::krpc::bep42_id_matches(&now.id, new_ip));
        assert_eq!(now.external_ip, Some(new_ip));

        // An exempt (private) address keeps the id, and is not what it was derived from.
        let mut host = DhtHost::new(HostConfig {
            kept_ids: vec![KeptNodeId {
                node: 0,
                id: derived,
                external_ip: Some(old_ip),
            }],
            ..HostConfig::default()
        });
        host.on_udp_bound(&[addr("0.0.0.0:6881")], 0);
        vote(&mut host, [192, 168, 1, 20].into(), 10);
        assert_eq!(
            host.node_ids()[0],
            KeptNodeId {
                node: 0,
                id: derived,
                external_ip: Some(old_ip)
            }
        );
    }

    #[test]
    fn nodes_sharing_a_socket_each_get_their_replies() {
        let local = addr("127.0.0.5:6881");
        let mut host = DhtHost::new(HostConfig {
            node_ids: 2,
            bootstrap: vec![addr("127.0.0.9:7000")],
            seed: Some([3; 32]),
            ..HostConfig::default()
        });
        host.on_udp_bound(&[local], 0);
        assert_eq!(host.nodes().len(), 2);
        let mut sent: Sent = Vec::new();
        host.poll_transmit(0, &mut sent);
        assert_eq!(sent.len(), 2, "each node bootstraps");
        answer_all(&mut host, sent, 5, &[], &[]);
        let s = host.node_stats();
        assert_eq!(s.replies, 2, "{s:?}");
        // Node 0 saw node 1's reply first and passed it on: not unmatched for the host.
        assert_eq!(
            (s.replies_unmatched, host.stats().passed_on),
            (1, 1),
            "{s:?}"
        );
        // A query to the shared socket is answered once.
        let q = Message::new(
            b"aa".to_vec(),
            Body::Query(Query {
                id: Id20([5; 20]),
                want: Want::default(),
                kind: QueryKind::Ping,
            }),
        )
        .encode();
        host.handle_datagram(10, local, addr("127.0.0.7:9000"), &q);
        let mut sent: Sent = Vec::new();
        host.poll_transmit(10, &mut sent);
        let answers = sent
            .iter()
            .filter(|(_, to, _)| *to == addr("127.0.0.7:9000"))
            .count();
        assert_eq!(answers, 1);
    }
}
