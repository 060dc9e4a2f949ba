//! A mainline DHT node (BEP 5, 32, 33, 42, 43, 51), sans-IO: datagrams come in with their
//! source address and the time ([`DhtNode::handle_datagram`]), datagrams to send and events
//! go out ([`DhtNode::poll_transmit`], [`DhtNode::poll_event`]); [`DhtNode::tick`] runs
//! timeouts and upkeep. Randomness comes from the seed given to [`DhtNode::new`].
//!
//! One `DhtNode` is one node id; a host running several ids (`dht.node_ids`) runs several
//! values, each with its own socket address or sharing one and demultiplexed by the caller.
//!
//! Bounds: the routing tables ([`routing`]), the peer store, the outstanding-query table,
//! the lookups and their candidate sets, the rate-limit table and the output queues all have
//! fixed maxima ([`DhtConfig`]). An answer is never longer than
//! [`DhtConfig::max_amplification`] times the query it answers, and answers per source
//! prefix are rate-limited, so the node cannot be used to amplify traffic. Only
//! [`DhtNode::tick`] and the caller's own lookups make the node send queries.

mod ip_vote;
mod keyed;
mod lookup;
mod peer_store;
mod rate_limit;
pub mod routing;

#[cfg(test)]
mod sim_adversarial;
#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;

pub use keyed::{TID_LEN, TOKEN_LEN};
pub use lookup::{
    AnnounceOptions, ClosestNode, GetPeersOptions, LookupId, LookupKind, LookupResult,
};
pub use peer_store::PEER_TTL;
pub use routing::{NodeEntry, NodeStatus, K};

use crate::bencode;
use crate::krpc::{
    self, bep42_exempt, bep42_id_matches, bep42_node_id, error_code, Body, ErrorReply, Id20,
    Message, Method, NodeV4, NodeV6, Query, QueryKind, Response, Want,
};
use ip_vote::IpVote;
use keyed::{SeededRng, Tokens, TransactionIds};
use lookup::{Lookup, LookupLimits};
use peer_store::PeerStore;
use rate_limit::RateLimiter;
use routing::RoutingTable;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How node ids are checked against addresses (BEP 42).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bep42Policy {
    /// No check: every node counts as verified.
    Off,
    /// Unverified nodes are used, but verified ones displace them in full buckets
    /// (libtorrent's `dht_prefer_verified_node_ids`).
    PreferVerified,
    /// Unverified nodes never enter the routing table.
    RequireVerified,
}

/// Settings of one node. The defaults are what a well-behaved public node uses.
#[derive(Clone, Debug)]
pub struct DhtConfig {
    /// Address families this node speaks; datagrams of the other are dropped.
    pub ipv4: bool,
    pub ipv6: bool,
    /// BEP 43: send `ro=1`, answer no queries.
    pub read_only: bool,
    /// A fixed node id; `None`: random, then BEP 42-derived once our external address is
    /// known (and not exempt).
    pub node_id: Option<Id20>,
    /// The id to start with when `node_id` is `None` (one kept from an earlier run); unlike
    /// `node_id` it is not fixed: BEP 42 replaces it once the vote names an external address
    /// it was not derived from. `None`: random.
    pub initial_node_id: Option<Id20>,
    pub bep42: Bep42Policy,
    /// BEP 42's exemption of loopback and private addresses from the check (and from
    /// deriving our own id). Off only to test the check itself on 127.x.
    pub bep42_exempt_local: bool,
    /// Replies from distinct sources that must agree before we believe our external address.
    pub external_ip_votes: usize,
    /// `v` we send (client and version), if any.
    pub version: Option<[u8; 4]>,
    /// Parallel queries per lookup (α).
    pub alpha: usize,
    /// Nodes a lookup converges on (k).
    pub lookup_k: usize,
    /// Candidates a lookup remembers (the closest ones).
    pub lookup_candidates: usize,
    /// Queries one lookup may send.
    pub lookup_max_queries: u32,
    /// Distinct peers one lookup collects.
    pub lookup_max_peers: usize,
    /// Lookups at once; more are refused.
    pub max_lookups: usize,
    /// Time before an unanswered query counts as failed.
    pub query_timeout: Duration,
    /// Tries per lookup candidate.
    pub query_attempts: u8,
    /// Our queries awaiting an answer, at most.
    pub max_outstanding: usize,
    /// Answered queries per second per source prefix, and the burst.
    pub rate_per_second: u32,
    pub rate_burst: u32,
    /// Source prefixes tracked by the rate limiter.
    pub rate_prefixes: usize,
    /// An answer is at most this many times longer than its query.
    pub max_amplification: usize,
    /// Peers in one `values` answer.
    pub max_values: usize,
    /// Peer store bounds.
    pub store_torrents: usize,
    pub store_peers_per_torrent: usize,
    /// How often the routing table upkeep runs, and how many pings it may send each time.
    pub maintenance_interval: Duration,
    pub maintenance_pings: usize,
    /// Datagrams and events waiting to be taken; beyond that new ones are dropped (counted).
    pub max_queued: usize,
}

impl Default for DhtConfig {
    fn default() -> Self {
        DhtConfig {
            ipv4: true,
            ipv6: true,
            read_only: false,
            node_id: None,
            initial_node_id: None,
            bep42: Bep42Policy::PreferVerified,
            bep42_exempt_local: true,
            external_ip_votes: 3,
            version: None,
            alpha: 3,
            lookup_k: K,
            lookup_candidates: 64,
            lookup_max_queries: 128,
            lookup_max_peers: 2000,
            max_lookups: 64,
            query_timeout: Duration::from_secs(4),
            query_attempts: 2,
            max_outstanding: 1024,
            rate_per_second: 20,
            rate_burst: 50,
            rate_prefixes: 4096,
            max_amplification: 8,
            max_values: 50,
            store_torrents: 2000,
            store_peers_per_torrent: 100,
            maintenance_interval: Duration::from_secs(1),
            maintenance_pings: 8,
            max_queued: 4096,
        }
    }
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

/// What the node tells its owner.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Peers a lookup found that it had not reported yet.
    Peers {
        lookup: LookupId,
        info_hash: Id20,
        peers: Vec<SocketAddr>,
    },
    /// A lookup finished (and its announces, if any, were sent).
    LookupDone(LookupResult),
    /// Replies agree on a new external address for us.
    ExternalAddress(IpAddr),
    /// Our node id changed (BEP 42, after learning the external address).
    NodeIdChanged { old: Id20, new: Id20 },
    /// A node announced a peer to us (token checked).
    Announced {
        info_hash: Id20,
        peer: SocketAddr,
        seed: bool,
    },
    /// A node answered our [`DhtNode::sample_infohashes`] (BEP 51).
    Samples(Samples),
    /// A `sample_infohashes` query went unanswered (or was answered with an error or
    /// garbage).
    SamplesFailed { from: SocketAddr },
}

/// One `sample_infohashes` answer (BEP 51).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Samples {
    pub from: SocketAddr,
    pub id: Id20,
    /// Info-hashes the node stores (a sample of them).
    pub samples: Vec<Id20>,
    /// How many info-hashes it stores in all, if it said.
    pub num: Option<i64>,
    /// Seconds before its sample changes (BEP 51: do not ask again sooner), if it said.
    pub interval: Option<i64>,
    /// Nodes close to the target (IPv4 and IPv6), to walk on.
    pub nodes: Vec<(Id20, SocketAddr)>,
}

/// Why a lookup was not started.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("{0} lookups already running (dht lookup limit)")]
    TooManyLookups(usize),
    #[error("no DHT nodes known yet: bootstrap first")]
    NoNodes,
}

/// Counters, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DhtStats {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    pub queries_answered: u64,
    pub errors_sent: u64,
    /// Queries not answered: rate limit, size budget, read-only mode, full queue.
    pub queries_dropped: u64,
    /// Datagrams that are not KRPC.
    pub garbage: u64,
    /// Replies whose transaction id we did not issue to their source.
    pub replies_unmatched: u64,
    /// Queries we sent (lookups, pings, announces, samples; retries included).
    pub queries_sent: u64,
    pub replies: u64,
    pub timeouts: u64,
    pub queue_full: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Lookup(LookupId),
    Ping,
    Announce,
    /// A BEP 51 `sample_infohashes` the owner asked for.
    Sample,
}

#[derive(Clone, Debug)]
struct Outstanding {
    node_id: Option<Id20>,
    method: Method,
    purpose: Purpose,
    deadline: Instant,
    /// What to send again if the lookup retries.
    query: QueryKind,
}

/// Info-hashes in one `sample_infohashes` answer.
const SAMPLE_MAX: usize = 20;
/// BEP 51 `interval` we advertise (seconds before our sample changes).
const SAMPLE_INTERVAL_SECS: i64 = 6 * 3600;
/// Bootstrap addresses remembered for re-bootstrapping.
const MAX_BOOTSTRAP_ADDRS: usize = 32;
/// While a table holds fewer than K nodes (just joined, or the network around us was
/// empty when we did), look ourselves up this often instead of every 15 minutes; with
/// empty tables, bootstrap again.
const SMALL_TABLE_REFRESH: Duration = Duration::from_secs(30);

pub struct DhtNode {
    config: DhtConfig,
    id: Id20,
    rng: SeededRng,
    table4: RoutingTable,
    table6: RoutingTable,
    tokens: Tokens,
    tids: TransactionIds,
    outstanding: HashMap<(SocketAddr, u16), Outstanding>,
    /// Deadlines in send order (the timeout is constant, so this is sorted).
    deadlines: VecDeque<(Instant, SocketAddr, u16)>,
    lookups: HashMap<LookupId, Lookup>,
    next_lookup: u64,
    peer_store: PeerStore,
    rate: RateLimiter,
    votes4: IpVote,
    votes6: IpVote,
    transmit: VecDeque<Datagram>,
    events: VecDeque<Event>,
    next_maintenance: Instant,
    next_store_expiry: Instant,
    /// The last bootstrap addresses, used again while the tables are empty.
    bootstrap_addrs: Vec<SocketAddr>,
    /// Next self-lookup allowed while the tables are small.
    next_self_refresh: Instant,
    stats: DhtStats,
}

impl DhtNode {
    /// A node with no known nodes. `seed` must be random in production (it keys the
    /// transaction ids and tokens) and fixed in simulations.
    pub fn new(config: DhtConfig, seed: [u8; 32], now: Instant) -> Self {
        let mut rng = SeededRng::new(seed);
        let id = config
            .node_id
            .or(config.initial_node_id)
            .unwrap_or_else(|| Id20(rng.bytes()));
        let require = config.bep42 == Bep42Policy::RequireVerified;
        DhtNode {
            table4: RoutingTable::new(id, require, now),
            table6: RoutingTable::new(id, require, now),
            tokens: Tokens::new(&mut rng, now),
            tids: TransactionIds::new(&mut rng),
            outstanding: HashMap::new(),
            deadlines: VecDeque::new(),
            lookups: HashMap::new(),
            next_lookup: 1,
            peer_store: PeerStore::new(config.store_torrents, config.store_peers_per_torrent),
            rate: RateLimiter::new(
                config.rate_per_second,
                config.rate_burst,
                config.rate_prefixes,
                now,
            ),
            votes4: IpVote::new(config.external_ip_votes),
            votes6: IpVote::new(config.external_ip_votes),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            next_maintenance: now,
            next_store_expiry: now + Duration::from_secs(60),
            bootstrap_addrs: Vec::new(),
            next_self_refresh: now + SMALL_TABLE_REFRESH,
            stats: DhtStats::default(),
            id,
            rng,
            config,
        }
    }

    pub fn id(&self) -> Id20 {
        self.id
    }

    pub fn config(&self) -> &DhtConfig {
        &self.config
    }

    pub fn stats(&self) -> &DhtStats {
        &self.stats
    }

    /// The routing table for IPv4 or IPv6 nodes.
    pub fn table(&self, v6: bool) -> &RoutingTable {
        if v6 {
            &self.table6
        } else {
            &self.table4
        }
    }

    fn table_mut(&mut self, v6: bool) -> &mut RoutingTable {
        if v6 {
            &mut self.table6
        } else {
            &mut self.table4
        }
    }

    /// Our external address, once replies agree on one.
    pub fn external_ip(&self, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.votes6.external()
        } else {
            self.votes4.external()
        }
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        self.transmit.pop_front()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Info-hashes other nodes announced to us (live or not yet expired).
    pub fn stored_torrents(&self) -> usize {
        self.peer_store.torrent_count()
    }

    /// Lookups running.
    pub fn lookup_count(&self) -> usize {
        self.lookups.len()
    }

    /// When [`DhtNode::tick`] next has work (a query timing out, table upkeep).
    pub fn next_deadline(&self) -> Instant {
        let mut t = self.next_maintenance.min(self.tokens.next_rotation());
        if let Some((d, _, _)) = self.deadlines.front() {
            t = t.min(*d);
        }
        t
    }

    fn family_enabled(&self, addr: &SocketAddr) -> bool {
        if addr.is_ipv6() {
            self.config.ipv6
        } else {
            self.config.ipv4
        }
    }

    fn verified(&self, id: &Id20, ip: IpAddr) -> bool {
        match self.config.bep42 {
            Bep42Policy::Off => true,
            _ => bep42_id_matches(id, ip) || (self.config.bep42_exempt_local && bep42_exempt(ip)),
        }
    }

    fn push_datagram(&mut self, to: SocketAddr, bytes: Vec<u8>) -> bool {
        if self.transmit.len() >= self.config.max_queued {
            self.stats.queue_full += 1;
            return false;
        }
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += bytes.len() as u64;
        self.transmit.push_back(Datagram { to, bytes });
        true
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= self.config.max_queued {
            self.stats.queue_full += 1;
            return;
        }
        self.events.push_back(e);
    }

    // --- Input ---------------------------------------------------------------------------

    /// One datagram from `from`. Never panics, whatever the bytes.
    pub fn handle_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        if !self.family_enabled(&from) || from.port() == 0 {
            self.stats.garbage += 1;
            return;
        }
        match krpc::decode(bytes) {
            Ok(msg) => match msg.body {
                Body::Query(ref q) => self.on_query(from, &msg, q, bytes.len(), now),
                Body::Response(_) | Body::Error(_) => self.on_reply(from, msg, now),
            },
            Err(e) => self.on_malformed(from, bytes, &e, now),
        }
    }

    /// A datagram that is not a valid KRPC message: if it is recognisably a query (a dict
    /// with `y` = `q` and a usable `t`), answer with a protocol error naming the problem.
    fn on_malformed(&mut self, from: SocketAddr, bytes: &[u8], e: &krpc::KrpcError, now: Instant) {
        let Ok(root) = bencode::decode_with(bytes, krpc::LIMITS) else {
            self.stats.garbage += 1;
            return;
        };
        let is_query = root.get("y").and_then(|y| y.as_bytes()) == Some(b"q");
        let tid = root.get("t").and_then(|t| t.as_bytes());
        match (is_query, tid) {
            (true, Some(tid)) if tid.len() <= krpc::MAX_TRANSACTION_ID_LEN => {
                let tid = tid.to_vec();
                let text = format!("invalid query: {e}");
                self.send_error(from, tid, error_code::PROTOCOL, text, bytes.len(), now);
            }
            _ => self.stats.garbage += 1,
        }
    }

    fn may_answer(&mut self, from: SocketAddr, now: Instant) -> bool {
        if self.config.read_only || !self.rate.allow(from.ip(), now) {
            self.stats.queries_dropped += 1;
            return false;
        }
        true
    }

    fn send_error(
        &mut self,
        from: SocketAddr,
        tid: Vec<u8>,
        code: i64,
        text: String,
        query_len: usize,
        now: Instant,
    ) {
        if !self.may_answer(from, now) {
            return;
        }
        let mut msg = Message::new(
            tid,
            Body::Error(ErrorReply {
                code,
                message: text.into_bytes(),
                id: Some(self.id),
            }),
        );
        msg.version = self.config.version.map(|v| v.to_vec());
        let budget = query_len.saturating_mul(self.config.max_amplification);
        let mut bytes = msg.encode();
        if bytes.len() > budget {
            // Keep the code, drop the explanation.
            if let Body::Error(e) = &mut msg.body {
                e.message = b"error".to_vec();
                e.id = None;
            }
            msg.version = None;
            bytes = msg.encode();
        }
        if bytes.len() > budget {
            self.stats.queries_dropped += 1;
            return;
        }
        if self.push_datagram(from, bytes) {
            self.stats.errors_sent += 1;
        }
    }

    fn on_query(&mut self, from: SocketAddr, msg: &Message, q: &Query, len: usize, now: Instant) {
        if self.config.read_only {
            // BEP 43: read-only nodes do not answer.
            self.stats.queries_dropped += 1;
            return;
        }
        if !msg.read_only {
            let verified = self.verified(&q.id, from.ip());
            self.table_mut(from.is_ipv6())
                .heard_from(q.id, from, verified, false, now);
        }
        let tid = msg.transaction_id.clone();
        let mut response = Response::with_id(self.id);
        match &q.kind {
            QueryKind::Ping => {}
            QueryKind::FindNode { target } => {
                self.fill_nodes(&mut response, target, from, q.want, now)
            }
            QueryKind::GetPeers {
                info_hash,
                noseed,
                scrape,
            } => {
                response.token = Some(self.tokens.issue(from.ip()).to_vec());
                let values = self.peer_store.values(
                    info_hash,
                    from.is_ipv6(),
                    *noseed,
                    self.config.max_values,
                    now,
                );
                if !values.is_empty() {
                    response.values = Some(values);
                }
                if *scrape {
                    if let Some((seeds, peers)) = self.peer_store.scrape(info_hash, now) {
                        response.seeds_filter = Some(Box::new(seeds));
                        response.peers_filter = Some(Box::new(peers));
                    }
                }
                self.fill_nodes(&mut response, info_hash, from, q.want, now);
            }
            QueryKind::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
                seed,
            } => {
                if !self.tokens.check(from.ip(), token) {
                    let text = "bad token".to_string();
                    return self.send_error(from, tid, error_code::PROTOCOL, text, len, now);
                }
                let port = if *implied_port { from.port() } else { *port };
                if port == 0 {
                    let text = "port 0".to_string();
                    return self.send_error(from, tid, error_code::PROTOCOL, text, len, now);
                }
                if !self.may_answer(from, now) {
                    return;
                }
                let peer = SocketAddr::new(from.ip(), port);
                self.peer_store.announce(*info_hash, peer, *seed, now);
                self.push_event(Event::Announced {
                    info_hash: *info_hash,
                    peer,
                    seed: *seed,
                });
                return self.send_response(from, tid, response, len);
            }
            QueryKind::SampleInfohashes { target } => {
                let (samples, num) = self.peer_store.samples(SAMPLE_MAX);
                response.samples = Some(samples);
                response.num = Some(num as i64);
                response.interval = Some(SAMPLE_INTERVAL_SECS);
                self.fill_nodes(&mut response, target, from, q.want, now);
            }
            QueryKind::Other {
                target, info_hash, ..
            } => match target.or(*info_hash) {
                // BEP 5: unknown methods with a target are answered like find_node.
                Some(t) => self.fill_nodes(&mut response, &t, from, q.want, now),
                None => {
                    let text = "method unknown".to_string();
                    return self.send_error(from, tid, error_code::METHOD_UNKNOWN, text, len, now);
                }
            },
        }
        if !self.may_answer(from, now) {
            return;
        }
        self.send_response(from, tid, response, len);
    }

    /// `nodes`/`nodes6` closest to `target`: the families `want` asks, or the query's own.
    fn fill_nodes(
        &self,
        response: &mut Response,
        target: &Id20,
        from: SocketAddr,
        want: Want,
        now: Instant,
    ) {
        let (n4, n6) = if want.n4 || want.n6 {
            (want.n4, want.n6)
        } else {
            (!from.is_ipv6(), from.is_ipv6())
        };
        if n4 && self.config.ipv4 {
            let nodes = self
                .table4
                .closest(target, K, now)
                .into_iter()
                .filter_map(|e| match e.addr {
                    SocketAddr::V4(a) => Some(NodeV4 { id: e.id, addr: a }),
                    SocketAddr::V6(_) => None,
                })
                .collect();
            response.nodes = Some(nodes);
        }
        if n6 && self.config.ipv6 {
            let nodes = self
                .table6
                .closest(target, K, now)
                .into_iter()
                .filter_map(|e| match e.addr {
                    SocketAddr::V6(a) => Some(NodeV6 { id: e.id, addr: a }),
                    SocketAddr::V4(_) => None,
                })
                .collect();
            response.nodes6 = Some(nodes);
        }
    }

    /// Send an answer no longer than the amplification budget: trimmed (nodes6, then nodes,
    /// then values, then the filters) until it fits, or dropped.
    fn send_response(
        &mut self,
        to: SocketAddr,
        tid: Vec<u8>,
        response: Response,
        query_len: usize,
    ) {
        let budget = query_len.saturating_mul(self.config.max_amplification);
        let mut msg = Message::new(tid, Body::Response(response));
        msg.external_ip = Some(to);
        msg.version = self.config.version.map(|v| v.to_vec());
        // Bounded: every pass removes something or ends.
        for _ in 0..64 {
            let bytes = msg.encode();
            if bytes.len() <= budget {
                if self.push_datagram(to, bytes) {
                    self.stats.queries_answered += 1;
                }
                return;
            }
            let Body::Response(r) = &mut msg.body else {
                break;
            };
            if !trim_one(r) {
                break;
            }
        }
        self.stats.queries_dropped += 1;
    }

    fn on_reply(&mut self, from: SocketAddr, msg: Message, now: Instant) {
        // Keyed transaction id: no table look-up for ids we never sent to this address.
        let Some(seq) = self.tids.verify(from, &msg.transaction_id) else {
            self.stats.replies_unmatched += 1;
            return;
        };
        let Some(out) = self.outstanding.remove(&(from, seq)) else {
            self.stats.replies_unmatched += 1;
            return;
        };
        self.stats.replies += 1;
        let sender = msg.sender_id();
        let is_error = matches!(msg.body, Body::Error(_));
        let v6 = from.is_ipv6();
        let response = match msg.body {
            Body::Response(r) => {
                if r.check_answers(out.method).is_ok() && out.node_id.is_none_or(|id| id == r.id) {
                    Some(r)
                } else {
                    // Garbage, or a different node at that address: the query failed.
                    None
                }
            }
            Body::Error(_) | Body::Query(_) => None,
        };
        let Some(r) = response else {
            match (is_error, sender, out.node_id) {
                // An error is an answer: the node is alive, it refused.
                (true, Some(id), expected)
                    if !msg.read_only && expected.is_none_or(|n| n == id) =>
                {
                    let verified = self.verified(&id, from.ip());
                    self.table_mut(v6).heard_from(id, from, verified, true, now);
                }
                // A garbage answer counts as no answer.
                (false, _, Some(expected)) => self.table_mut(v6).failed(&expected, from, now),
                _ => {}
            }
            if let Purpose::Lookup(l) = out.purpose {
                if let Some(lookup) = self.lookups.get_mut(&l) {
                    lookup.on_failure(from, true);
                }
                self.advance(l, now);
            }
            if out.purpose == Purpose::Sample {
                self.push_event(Event::SamplesFailed { from });
            }
            return;
        };
        if let Some(ip) = msg.external_ip {
            self.vote_external(from, ip.ip(), now);
        }
        if !msg.read_only {
            let verified = self.verified(&r.id, from.ip());
            self.table_mut(v6)
                .heard_from(r.id, from, verified, true, now);
        }
        if let Purpose::Lookup(l) = out.purpose {
            self.lookup_reply(l, from, &r);
            self.advance(l, now);
        }
        if out.purpose == Purpose::Sample {
            let nodes4 = r
                .nodes
                .iter()
                .flatten()
                .map(|n| (n.id, SocketAddr::V4(n.addr)));
            let nodes6 = r
                .nodes6
                .iter()
                .flatten()
                .map(|n| (n.id, SocketAddr::V6(n.addr)));
            let nodes = nodes4
                .chain(nodes6)
                .filter(|(id, a)| *id != self.id && a.port() != 0 && self.family_enabled(a))
                .collect();
            self.push_event(Event::Samples(Samples {
                from,
                id: r.id,
                samples: r.samples.unwrap_or_default(),
                num: r.num,
                interval: r.interval,
                nodes,
            }));
        }
    }

    fn lookup_reply(&mut self, l: LookupId, from: SocketAddr, r: &Response) {
        let (ipv4, ipv6) = (self.config.ipv4, self.config.ipv6);
        let Some(lookup) = self.lookups.get_mut(&l) else {
            return;
        };
        let own = self.id;
        let nodes4 = r
            .nodes
            .iter()
            .flatten()
            .filter(|_| ipv4)
            .map(|n| (n.id, SocketAddr::V4(n.addr)));
        let nodes6 = r
            .nodes6
            .iter()
            .flatten()
            .filter(|_| ipv6)
            .map(|n| (n.id, SocketAddr::V6(n.addr)));
        let nodes = nodes4
            .chain(nodes6)
            .filter(|(id, addr)| *id != own && addr.port() != 0);
        let values = r.values.as_deref().unwrap_or(&[]);
        let new_peers = lookup.on_reply(
            from,
            r.id,
            nodes,
            values,
            r.token.as_deref(),
            r.seeds_filter.as_deref(),
            r.peers_filter.as_deref(),
        );
        let info_hash = lookup.target;
        if !new_peers.is_empty() {
            self.push_event(Event::Peers {
                lookup: l,
                info_hash,
                peers: new_peers,
            });
        }
    }

    fn vote_external(&mut self, voter: SocketAddr, seen: IpAddr, now: Instant) {
        let decided = if seen.is_ipv6() {
            self.votes6.vote(voter, seen)
        } else {
            self.votes4.vote(voter, seen)
        };
        let Some(ip) = decided else {
            return;
        };
        self.push_event(Event::ExternalAddress(ip));
        // The id follows the address of the family we use first (IPv4 when both).
        let primary = if self.config.ipv4 {
            !ip.is_ipv6()
        } else {
            ip.is_ipv6()
        };
        let exempt = self.config.bep42_exempt_local && bep42_exempt(ip);
        if self.config.node_id.is_none()
            && self.config.bep42 != Bep42Policy::Off
            && primary
            && !exempt
            && !bep42_id_matches(&self.id, ip)
        {
            let rand_byte = self.rng.bytes::<1>()[0];
            let new = bep42_node_id(ip, rand_byte, self.rng.bytes());
            let old = std::mem::replace(&mut self.id, new);
            self.table4.rebuild(new, now);
            self.table6.rebuild(new, now);
            self.push_event(Event::NodeIdChanged { old, new });
        }
    }

    // --- Output: our queries -------------------------------------------------------------

    fn send_query(
        &mut self,
        to: SocketAddr,
        node_id: Option<Id20>,
        kind: QueryKind,
        purpose: Purpose,
        now: Instant,
    ) -> bool {
        if self.outstanding.len() >= self.config.max_outstanding {
            return false;
        }
        // A sequence number not outstanding to this address (the table is smaller than
        // 2^16, so a handful of tries suffice).
        let mut seq = self.tids.next_seq();
        for _ in 0..16 {
            if !self.outstanding.contains_key(&(to, seq)) {
                break;
            }
            seq = self.tids.next_seq();
        }
        if self.outstanding.contains_key(&(to, seq)) {
            return false;
        }
        let Some(method) = kind.method() else {
            return false;
        };
        let want = if self.config.ipv4 && self.config.ipv6 {
            Want { n4: true, n6: true }
        } else {
            Want::default()
        };
        let mut msg = Message::new(
            self.tids.encode(to, seq).to_vec(),
            Body::Query(Query {
                id: self.id,
                want,
                kind: kind.clone(),
            }),
        );
        msg.read_only = self.config.read_only;
        msg.version = self.config.version.map(|v| v.to_vec());
        if !self.push_datagram(to, msg.encode()) {
            return false;
        }
        self.stats.queries_sent += 1;
        let deadline = now + self.config.query_timeout;
        self.outstanding.insert(
            (to, seq),
            Outstanding {
                node_id,
                method,
                purpose,
                deadline,
                query: kind,
            },
        );
        self.deadlines.push_back((deadline, to, seq));
        if self.deadlines.len() > 4 * self.config.max_outstanding.max(16) {
            // Answered queries leave their deadline behind until it passes; at high query
            // rates drop those early (amortised: the queue is at least 3/4 stale here).
            let outstanding = &self.outstanding;
            self.deadlines
                .retain(|(d, a, s)| outstanding.get(&(*a, *s)).is_some_and(|o| o.deadline == *d));
        }
        true
    }

    /// Another source (a tracker's BEP 24 `external ip`) says our address is `ip`: one vote
    /// in the same election as the replies' `ip` fields, under the voter address `voter`
    /// (one vote per voter, so one source alone never decides).
    pub fn external_address_hint(&mut self, voter: SocketAddr, ip: IpAddr, now: Instant) {
        if !ip.is_unspecified() && !ip.is_multicast() {
            self.vote_external(voter, ip, now);
        }
    }

    /// Ping a node (its id, if known, must match the answer).
    pub fn ping(&mut self, addr: SocketAddr, id: Option<Id20>, now: Instant) -> bool {
        self.family_enabled(&addr) && self.send_query(addr, id, QueryKind::Ping, Purpose::Ping, now)
    }

    /// Ask `addr` for a sample of the info-hashes it stores (BEP 51), and nodes close to
    /// `target`; the answer comes as [`Event::Samples`], a failure as
    /// [`Event::SamplesFailed`]. False when the query could not be sent (family disabled,
    /// outstanding table or queue full).
    pub fn sample_infohashes(
        &mut self,
        addr: SocketAddr,
        id: Option<Id20>,
        target: Id20,
        now: Instant,
    ) -> bool {
        self.family_enabled(&addr)
            && addr.port() != 0
            && self.send_query(
                addr,
                id,
                QueryKind::SampleInfohashes { target },
                Purpose::Sample,
                now,
            )
    }

    /// Remember a node from elsewhere (the database, a peer's `port` message): it waits among
    /// the replacements until a ping confirms it.
    pub fn add_node(&mut self, id: Id20, addr: SocketAddr, now: Instant) {
        if self.family_enabled(&addr) && addr.port() != 0 {
            let verified = self.verified(&id, addr.ip());
            self.table_mut(addr.is_ipv6())
                .heard_from(id, addr, verified, false, now);
        }
    }

    /// Join the DHT: a `find_node` lookup for our own id through the `addrs` (ids unknown)
    /// and whatever nodes the tables hold.
    pub fn bootstrap(
        &mut self,
        addrs: &[SocketAddr],
        now: Instant,
    ) -> Result<LookupId, LookupError> {
        self.bootstrap_addrs = addrs
            .iter()
            .filter(|a| self.family_enabled(a))
            .take(MAX_BOOTSTRAP_ADDRS)
            .copied()
            .collect();
        self.start_lookup(self.id, LookupKind::FindNode, addrs, now)
    }

    /// A `find_node` lookup for `target`.
    pub fn find_node(&mut self, target: Id20, now: Instant) -> Result<LookupId, LookupError> {
        self.start_lookup(target, LookupKind::FindNode, &[], now)
    }

    /// A `get_peers` lookup for `info_hash`; peers arrive as [`Event::Peers`], the end as
    /// [`Event::LookupDone`].
    pub fn get_peers(
        &mut self,
        info_hash: Id20,
        options: GetPeersOptions,
        now: Instant,
    ) -> Result<LookupId, LookupError> {
        self.start_lookup(info_hash, LookupKind::GetPeers(options), &[], now)
    }

    fn start_lookup(
        &mut self,
        target: Id20,
        kind: LookupKind,
        extra: &[SocketAddr],
        now: Instant,
    ) -> Result<LookupId, LookupError> {
        if self.lookups.len() >= self.config.max_lookups {
            return Err(LookupError::TooManyLookups(self.lookups.len()));
        }
        let limits = LookupLimits {
            alpha: self.config.alpha.max(1),
            k: self.config.lookup_k.max(1),
            max_candidates: self
                .config
                .lookup_candidates
                .max(self.config.lookup_k.max(1)),
            max_queries: self.config.lookup_max_queries,
            max_peers: self.config.lookup_max_peers,
            attempts: self.config.query_attempts.max(1),
        };
        let id = LookupId(self.next_lookup);
        let mut lookup = Lookup::new(id, target, kind, limits, now);
        for e in self
            .table4
            .closest(&target, limits.max_candidates, now)
            .into_iter()
            .chain(self.table6.closest(&target, limits.max_candidates, now))
        {
            lookup.add_candidate(Some(e.id), e.addr);
        }
        for a in extra {
            if self.family_enabled(a) && a.port() != 0 {
                lookup.add_candidate(None, *a);
            }
        }
        if lookup.is_done() {
            return Err(LookupError::NoNodes);
        }
        self.next_lookup += 1;
        self.lookups.insert(id, lookup);
        self.advance(id, now);
        Ok(id)
    }

    /// Send what lookup `l` may send now; finish it if it has converged.
    fn advance(&mut self, l: LookupId, now: Instant) {
        let budget = self
            .config
            .max_outstanding
            .saturating_sub(self.outstanding.len());
        let Some(lookup) = self.lookups.get_mut(&l) else {
            return;
        };
        let to_send = lookup.next_queries(budget);
        let kind = lookup_query(lookup);
        for (node_id, addr) in to_send {
            if !self.send_query(addr, node_id, kind.clone(), Purpose::Lookup(l), now) {
                // Not the node's fault (a full queue): it stays a candidate.
                if let Some(lookup) = self.lookups.get_mut(&l) {
                    lookup.unsend(addr);
                }
            }
        }
        let done = self.lookups.get(&l).is_some_and(|x| x.is_done());
        if done {
            if let Some(lookup) = self.lookups.remove(&l) {
                let mut announced = 0;
                if let LookupKind::GetPeers(GetPeersOptions {
                    announce: Some(a), ..
                }) = lookup.kind
                {
                    for c in lookup.closest() {
                        let Some(token) = c.token else { continue };
                        let q = QueryKind::AnnouncePeer {
                            info_hash: lookup.target,
                            port: a.port,
                            implied_port: a.implied_port,
                            token,
                            seed: a.seed,
                        };
                        if self.send_query(c.addr, Some(c.id), q, Purpose::Announce, now) {
                            announced += 1;
                        }
                    }
                }
                let result = lookup.finish(announced, now);
                if lookup.kind == LookupKind::FindNode
                    && lookup.target == self.id
                    && !result.closest.is_empty()
                {
                    self.refresh_after_join(now);
                }
                self.push_event(Event::LookupDone(result));
            }
        }
    }

    // --- Time ----------------------------------------------------------------------------

    /// Time passes: queries time out, lookups move on, the token secret rotates, the
    /// routing table is kept up.
    pub fn tick(&mut self, now: Instant) {
        self.tokens.tick(&mut self.rng, now);
        let mut touched: Vec<LookupId> = Vec::new();
        while let Some(&(deadline, addr, seq)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            // The query may have been answered and its sequence number reused since.
            if self
                .outstanding
                .get(&(addr, seq))
                .is_none_or(|o| o.deadline != deadline)
            {
                continue;
            }
            let Some(out) = self.outstanding.remove(&(addr, seq)) else {
                continue;
            };
            self.stats.timeouts += 1;
            if let Some(id) = out.node_id {
                self.table_mut(addr.is_ipv6()).failed(&id, addr, now);
            }
            if out.purpose == Purpose::Sample {
                self.push_event(Event::SamplesFailed { from: addr });
            }
            if let Purpose::Lookup(l) = out.purpose {
                let retry = self
                    .lookups
                    .get_mut(&l)
                    .is_some_and(|lookup| lookup.on_failure(addr, false));
                if retry && !self.send_query(addr, out.node_id, out.query, out.purpose, now) {
                    if let Some(lookup) = self.lookups.get_mut(&l) {
                        lookup.on_failure(addr, true);
                    }
                }
                touched.push(l);
            }
        }
        if now >= self.next_maintenance {
            self.next_maintenance = now + self.config.maintenance_interval;
            self.maintain(now);
            // Lookups held back by a full outstanding table get their turn.
            touched.extend(self.lookups.keys().copied());
        }
        touched.sort_unstable();
        touched.dedup();
        for l in touched {
            self.advance(l, now);
        }
        if now >= self.next_store_expiry {
            self.next_store_expiry = now + Duration::from_secs(60);
            self.peer_store.expire(now);
        }
    }

    /// After a lookup of our own id, refresh the buckets further away: they hold only the
    /// few nodes met on the way.
    fn refresh_after_join(&mut self, now: Instant) {
        let mut targets = Vec::new();
        for v6 in [false, true] {
            let rng = &mut self.rng;
            let table = if v6 {
                &mut self.table6
            } else {
                &mut self.table4
            };
            if !table.is_empty() {
                targets.extend(table.refresh_all(now, || rng.bytes()));
            }
        }
        for target in targets {
            // Refreshes wait when lookups are at their limit.
            let _ = self.find_node(target, now);
        }
    }

    fn maintain(&mut self, now: Instant) {
        if now >= self.next_self_refresh {
            self.next_self_refresh = now + SMALL_TABLE_REFRESH;
            let size = self.table4.len() + self.table6.len();
            if size == 0 && !self.bootstrap_addrs.is_empty() {
                let addrs = self.bootstrap_addrs.clone();
                let _ = self.start_lookup(self.id, LookupKind::FindNode, &addrs, now);
            } else if size < K {
                let _ = self.find_node(self.id, now);
            }
        }
        let pings = self.config.maintenance_pings;
        for v6 in [false, true] {
            if !(if v6 {
                self.config.ipv6
            } else {
                self.config.ipv4
            }) {
                continue;
            }
            let rng = &mut self.rng;
            let table = if v6 {
                &mut self.table6
            } else {
                &mut self.table4
            };
            let work = table.maintenance(now, pings, || rng.bytes());
            for (id, addr) in work.ping {
                self.send_query(addr, Some(id), QueryKind::Ping, Purpose::Ping, now);
            }
            for target in work.refresh {
                if self.table(v6).is_empty() {
                    break;
                }
                // Refreshes wait when lookups are at their limit.
                let _ = self.find_node(target, now);
            }
        }
    }
}

/// The query a lookup sends to each candidate.
fn lookup_query(lookup: &Lookup) -> QueryKind {
    match &lookup.kind {
        LookupKind::FindNode => QueryKind::FindNode {
            target: lookup.target,
        },
        LookupKind::GetPeers(o) => QueryKind::GetPeers {
            info_hash: lookup.target,
            noseed: o.noseed,
            scrape: o.scrape,
        },
    }
}

/// Remove one part of an answer that is too long; false when nothing is left to remove.
fn trim_one(r: &mut Response) -> bool {
    if let Some(n) = r.nodes6.as_mut().filter(|n| !n.is_empty()) {
        n.truncate(n.len() / 2);
        return true;
    }
    if let Some(n) = r.nodes.as_mut().filter(|n| !n.is_empty()) {
        n.truncate(n.len() / 2);
        return true;
    }
    if let Some(v) = r.values.as_mut().filter(|v| !v.is_empty()) {
        v.truncate(v.len() * 2 / 3);
        if v.is_empty() {
            r.values = None;
        }
        return true;
    }
    if r.seeds_filter.is_some() || r.peers_filter.is_some() {
        r.seeds_filter = None;
        r.peers_filter = None;
        return true;
    }
    if r.samples.as_ref().is_some_and(|s| !s.is_empty()) {
        r.samples = Some(Vec::new());
        return true;
    }
    false
}
