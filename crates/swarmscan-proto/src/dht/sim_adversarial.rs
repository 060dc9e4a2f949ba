//! A simulated network of 10,000 nodes in which a share misbehave: deterministic (seeded), no
//! sockets, datagrams queued between nodes with loss, time stepped by the simulation.
//!
//! - honest nodes are our own `DhtNode`s; a share of them go dark after the join (they time
//!   out from then on, like nodes that left without a word);
//! - liars answer pings truthfully (so they enter routing tables), but answer `find_node` and
//!   `get_peers` with fabricated nodes next to the target (at addresses where no one listens,
//!   or at other nodes' addresses), sometimes under a wrong id, and with fake peers;
//! - silent nodes query others (so they are heard of) but never answer;
//! - garbage nodes answer pings truthfully, everything else with malformed bencode, replies
//!   under a wrong transaction id, oversized replies, replies without the fields the query
//!   asks for, or errors.
//!
//! The checks: every live honest node's table fills and holds its true closest honest
//! neighbours, no silent node ever takes a place, bad nodes are not preferred, `get_peers`
//! lookups find every honest announced peer and end at the true closest answering nodes within
//! a bounded number of queries, tables and lookups stay within their bounds.
//!
//! 10,000 nodes take a few seconds in an optimised build and minutes unoptimised: the test
//! runs in release builds (`cargo test --release -p swarmscan-proto dht::sim_adversarial`,
//! which `scripts/test` does); unoptimised builds run the same checks at 300 nodes, optimised
//! ones also at 1,000.

use super::*;
use sha1::{Digest, Sha1};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

const STEP: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Role {
    Honest,
    /// Honest until the join is over, then never answers again.
    GoesDark,
    Liar,
    Silent,
    Garbage,
}

/// splitmix64: cheap deterministic randomness for the simulation's own choices.
struct SimRng(u64);

impl SimRng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        out
    }
}

struct Sim {
    roles: Vec<Role>,
    /// `Some` for honest nodes (and those going dark), `None` for the simulated bad ones.
    nodes: Vec<Option<DhtNode>>,
    ids: Vec<Id20>,
    addrs: Vec<SocketAddr>,
    index: HashMap<SocketAddr, usize>,
    dark: bool,
    in_flight: Vec<(SocketAddr, Datagram)>,
    wakeups: BinaryHeap<Reverse<(Instant, usize)>>,
    events: HashMap<usize, Vec<Event>>,
    rng: SimRng,
    loss_per_mille: u64,
    now: Instant,
    delivered: u64,
    lost: u64,
    /// Datagrams the bad nodes sent, by role.
    bad_sent: HashMap<&'static str, u64>,
}

fn addr_of(i: usize) -> SocketAddr {
    // One /24 each, as nodes on the Internet mostly are (answers are rate-limited per /24).
    SocketAddr::from(([127, (i >> 8) as u8, i as u8, 1], 6881))
}

/// An address where no node listens.
fn void_addr(r: u64) -> SocketAddr {
    SocketAddr::from(([127, 200 + (r % 50) as u8, (r >> 8) as u8, 9], 6881))
}

impl Sim {
    fn new(count: usize, shares: &[(Role, usize)], loss_per_mille: u64, seed: u64) -> Sim {
        let now = Instant::now();
        let mut rng = SimRng(seed);
        let mut roles = vec![Role::Honest; count];
        // Node 0 (everyone's first bootstrap address) stays honest.
        let mut next = 1;
        for &(role, per_mille) in shares {
            for _ in 0..count * per_mille / 1000 {
                roles[next] = role;
                next += 1;
            }
        }
        // Shuffle the roles (but keep node 0 honest) so ids and addresses say nothing.
        for i in (2..count).rev() {
            let j = 1 + rng.below(i);
            roles.swap(i, j);
        }
        let mut nodes = Vec::with_capacity(count);
        let mut ids = Vec::with_capacity(count);
        let mut addrs = Vec::with_capacity(count);
        for (i, role) in roles.iter().enumerate() {
            let node = match role {
                Role::Honest | Role::GoesDark => {
                    let config = DhtConfig {
                        ipv6: false,
                        query_timeout: Duration::from_secs(2),
                        ..DhtConfig::default()
                    };
                    Some(DhtNode::new(config, rng.bytes(), now))
                }
                _ => None,
            };
            ids.push(node.as_ref().map_or_else(|| Id20(rng.bytes()), |n| n.id()));
            nodes.push(node);
            addrs.push(addr_of(i));
        }
        let index = addrs.iter().enumerate().map(|(i, a)| (*a, i)).collect();
        Sim {
            roles,
            nodes,
            ids,
            addrs,
            index,
            dark: false,
            in_flight: Vec::new(),
            wakeups: BinaryHeap::new(),
            events: HashMap::new(),
            rng,
            loss_per_mille,
            now,
            delivered: 0,
            lost: 0,
            bad_sent: HashMap::new(),
        }
    }

    fn honest(&self, i: usize) -> bool {
        self.roles[i] == Role::Honest || (self.roles[i] == Role::GoesDark && !self.dark)
    }

    fn node(&mut self, i: usize) -> &mut DhtNode {
        self.nodes[i].as_mut().expect("an honest node")
    }

    /// Take what node `i` sent and said, and note when it next wants a tick.
    fn collect(&mut self, i: usize) {
        let from = self.addrs[i];
        let node = self.nodes[i].as_mut().expect("an honest node");
        while let Some(d) = node.poll_transmit() {
            self.in_flight.push((from, d));
        }
        while let Some(e) = node.poll_event() {
            self.events.entry(i).or_default().push(e);
        }
        self.wakeups.push(Reverse((node.next_deadline(), i)));
    }

    fn step(&mut self) {
        self.now += STEP;
        let batch = std::mem::take(&mut self.in_flight);
        for (from, d) in batch {
            if self.rng.next() % 1000 < self.loss_per_mille {
                self.lost += 1;
                continue;
            }
            let Some(&to) = self.index.get(&d.to) else {
                continue;
            };
            self.delivered += 1;
            match self.roles[to] {
                Role::Honest | Role::GoesDark if self.honest(to) => {
                    let now = self.now;
                    self.node(to).handle_datagram(from, &d.bytes, now);
                    self.collect(to);
                }
                Role::Liar | Role::Garbage => self.misbehave(to, from, &d.bytes),
                _ => {}
            }
        }
        while let Some(&Reverse((at, i))) = self.wakeups.peek() {
            if at > self.now {
                break;
            }
            self.wakeups.pop();
            // Entries go stale when the node's deadline moved; its current one is queued too.
            if self.honest(i) && self.node(i).next_deadline() <= self.now {
                let now = self.now;
                self.node(i).tick(now);
                self.collect(i);
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        for _ in 0..d.as_millis() / STEP.as_millis() {
            self.step();
        }
    }

    fn send_bad(&mut self, from: usize, to: SocketAddr, bytes: Vec<u8>) {
        let role = match self.roles[from] {
            Role::Liar => "liar",
            Role::Garbage => "garbage",
            _ => "silent",
        };
        *self.bad_sent.entry(role).or_default() += 1;
        self.in_flight
            .push((self.addrs[from], Datagram { to, bytes }));
    }

    /// A bad node makes itself known: a `find_node` for its own id to a few live nodes.
    fn bad_node_queries(&mut self, i: usize, joined: &[usize]) {
        for _ in 0..8 {
            let to = joined[self.rng.below(joined.len())];
            let msg = Message::new(
                self.rng.bytes::<2>().to_vec(),
                Body::Query(Query {
                    id: self.ids[i],
                    want: Want::default(),
                    kind: QueryKind::FindNode {
                        target: self.ids[i],
                    },
                }),
            );
            let to = self.addrs[to];
            self.send_bad(i, to, msg.encode());
        }
    }

    /// A liar or garbage node answers a datagram.
    fn misbehave(&mut self, me: usize, from: SocketAddr, bytes: &[u8]) {
        let Ok(msg) = krpc::decode(bytes) else {
            return;
        };
        let Body::Query(q) = msg.body else {
            return;
        };
        let tid = msg.transaction_id;
        let own = self.ids[me];
        let target = match q.kind {
            QueryKind::Ping => {
                // Pings are answered truthfully: that is how bad nodes enter tables.
                let reply = Message::new(tid, Body::Response(Response::with_id(own)));
                return self.send_bad(me, from, reply.encode());
            }
            QueryKind::FindNode { target } | QueryKind::SampleInfohashes { target } => target,
            QueryKind::GetPeers { info_hash, .. } => info_hash,
            _ => return,
        };
        let is_get_peers = matches!(q.kind, QueryKind::GetPeers { .. });
        let reply = if self.roles[me] == Role::Liar {
            self.lie(own, tid, target, is_get_peers)
        } else {
            self.garbage(own, tid, target)
        };
        self.send_bad(me, from, reply);
    }

    fn lie(&mut self, own: Id20, tid: Vec<u8>, target: Id20, get_peers: bool) -> Vec<u8> {
        let mut r = Response::with_id(own);
        // Now and then under a wrong id.
        if self.rng.below(10) == 0 {
            r.id = Id20(self.rng.bytes());
        }
        let mut nodes = Vec::new();
        for _ in 0..K {
            // An id next to the target (sharing its first 15 bytes).
            let mut id = target.0;
            let tail: [u8; 5] = self.rng.bytes();
            id[15..].copy_from_slice(&tail);
            let addr = match self.rng.below(3) {
                // Where no one listens.
                0 => void_addr(self.rng.next()),
                // Some other node, under an id that is not its own.
                _ => addr_of(self.rng.below(self.addrs.len())),
            };
            let SocketAddr::V4(addr) = addr else {
                unreachable!("the simulation is IPv4")
            };
            nodes.push(NodeV4 { id: Id20(id), addr });
        }
        r.nodes = Some(nodes);
        if get_peers {
            r.token = Some(self.rng.bytes::<8>().to_vec());
            let fake = (0..20)
                .map(|_| SocketAddr::from(([10, 66, self.rng.next() as u8, 1], 1)))
                .collect();
            r.values = Some(fake);
        }
        Message::new(tid, Body::Response(r)).encode()
    }

    fn garbage(&mut self, own: Id20, tid: Vec<u8>, target: Id20) -> Vec<u8> {
        match self.rng.below(6) {
            // Not bencode at all.
            0 => self.rng.bytes::<64>().to_vec(),
            // A well-formed reply cut short.
            1 => {
                let mut r = Response::with_id(own);
                r.nodes = Some(Vec::new());
                let mut b = Message::new(tid, Body::Response(r)).encode();
                b.truncate(b.len() / 2);
                b
            }
            // A right answer under a transaction id we did not issue.
            2 => {
                let mut r = Response::with_id(own);
                r.nodes = Some(Vec::new());
                let mut t = tid;
                t.iter_mut().for_each(|b| *b ^= 0x5a);
                Message::new(t, Body::Response(r)).encode()
            }
            // Oversized: 2,000 nodes (52 kB).
            3 => {
                let mut r = Response::with_id(own);
                let nodes = (0..2000u32)
                    .map(|n| {
                        let mut id = target.0;
                        id[16..].copy_from_slice(&n.to_be_bytes());
                        let SocketAddr::V4(addr) = void_addr(n as u64) else {
                            unreachable!()
                        };
                        NodeV4 { id: Id20(id), addr }
                    })
                    .collect();
                r.nodes = Some(nodes);
                r.token = Some(vec![0; 4096]);
                Message::new(tid, Body::Response(r)).encode()
            }
            // A reply without the `nodes` the query asks for.
            4 => Message::new(tid, Body::Response(Response::with_id(own))).encode(),
            // An error.
            _ => Message::new(
                tid,
                Body::Error(ErrorReply {
                    code: error_code::SERVER,
                    message: b"go away".to_vec(),
                    id: Some(own),
                }),
            )
            .encode(),
        }
    }

    /// Step until node `i` reports lookup `l` done (bounded).
    fn wait_lookup(&mut self, i: usize, l: LookupId) -> LookupResult {
        for _ in 0..4000 {
            if let Some(events) = self.events.get_mut(&i) {
                if let Some(pos) = events
                    .iter()
                    .position(|e| matches!(e, Event::LookupDone(r) if r.id == l))
                {
                    let Event::LookupDone(r) = events.remove(pos) else {
                        unreachable!()
                    };
                    return r;
                }
            }
            self.step();
        }
        panic!("lookup {l:?} of node {i} did not finish in 200 s");
    }
}

/// Node ids sorted, to find the closest to a target without sorting them all each time.
struct SortedIds(Vec<Id20>);

impl SortedIds {
    fn new(mut ids: Vec<Id20>) -> SortedIds {
        ids.sort_unstable();
        SortedIds(ids)
    }

    /// The `k` ids closest to `target` (XOR), leaving out `except`. Exact: the ids sharing
    /// the first `bits` bits with the target are a contiguous range of the sorted ids, and
    /// the `k` closest lie in the longest shared prefix whose range holds more than `k`.
    fn closest(&self, target: &Id20, k: usize, except: Option<Id20>) -> Vec<Id20> {
        let range = |bits: usize| {
            let (mut low, mut high) = (target.0, target.0);
            for bit in bits..160 {
                let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
                low[byte] &= !mask;
                high[byte] |= mask;
            }
            let lo = self.0.partition_point(|id| id.0 < low);
            let hi = self.0.partition_point(|id| id.0 <= high);
            &self.0[lo..hi]
        };
        let mut bits = 160;
        while bits > 0 && range(bits).len() <= k {
            bits -= 1;
        }
        let mut near: Vec<Id20> = range(bits)
            .iter()
            .filter(|id| Some(**id) != except)
            .copied()
            .collect();
        near.sort_by_key(|id| id.distance(target));
        near.truncate(k);
        near
    }
}

struct Outcome {
    mean_overlap: f64,
    lookups: usize,
    all_found: usize,
    exact_closest: usize,
    mean_queries: f64,
    max_queries: u32,
}

fn run(count: usize, joins_per_step: usize, seed: u64) -> Outcome {
    // Per mille of the network: 5 % liars, 5 % silent, 5 % garbage, 5 % honest nodes that
    // go dark after the join.
    let shares = [
        (Role::Liar, 50),
        (Role::Silent, 50),
        (Role::Garbage, 50),
        (Role::GoesDark, 50),
    ];
    let mut sim = Sim::new(count, &shares, 10, seed);
    let entry = sim.addrs[0];

    // Join: a few nodes every step, each through node 0 and a node that joined before.
    let mut joined: Vec<usize> = vec![0];
    let mut joins = Vec::new();
    for batch in (1..count).collect::<Vec<_>>().chunks(joins_per_step) {
        for &i in batch {
            if sim.nodes[i].is_some() {
                let other = sim.addrs[joined[sim.rng.below(joined.len())]];
                let now = sim.now;
                let l = sim.node(i).bootstrap(&[entry, other], now).unwrap();
                joins.push((i, l));
                sim.collect(i);
                joined.push(i);
            } else {
                let live: Vec<usize> = joined.clone();
                sim.bad_node_queries(i, &live);
            }
        }
        sim.step();
    }
    for (i, l) in joins {
        sim.wait_lookup(i, l);
    }
    // Upkeep confirms the nodes every node heard from.
    sim.run_for(Duration::from_secs(60));
    sim.dark = true;
    let honest_joined: Vec<usize> = (0..count).filter(|&i| sim.honest(i)).collect();
    let live_honest = SortedIds::new(honest_joined.iter().map(|&i| sim.ids[i]).collect());
    // The bad nodes keep querying: they stay heard of.
    for i in 0..count {
        if matches!(sim.roles[i], Role::Liar | Role::Silent | Role::Garbage) {
            sim.bad_node_queries(i, &honest_joined);
        }
    }
    sim.run_for(Duration::from_secs(30));

    // Tables: every live honest node knows nodes, and its closest honest neighbours.
    let mut overlap_total = 0;
    let mut silent_in_tables = 0;
    let mut entries_by_role: HashMap<Role, usize> = HashMap::new();
    let mut bad_status_dark = 0;
    let mut all_entries = 0;
    for &i in &honest_joined {
        let own = sim.ids[i];
        let table = sim.nodes[i].as_ref().unwrap().table(false);
        assert!(
            table.len() >= K,
            "node {i}: {} nodes in its table",
            table.len()
        );
        assert!(table.bucket_count() <= routing::MAX_BUCKETS);
        assert!(table.len() <= routing::MAX_BUCKETS * K);
        let mut entries = 0;
        for e in table.nodes() {
            let Some(&j) = sim.index.get(&e.addr) else {
                panic!("node {i} has a fabricated address {} in its table", e.addr);
            };
            entries += 1;
            *entries_by_role.entry(sim.roles[j]).or_default() += 1;
            silent_in_tables += (sim.roles[j] == Role::Silent) as usize;
            if sim.roles[j] == Role::GoesDark && e.status(sim.now) == NodeStatus::Bad {
                bad_status_dark += 1;
            }
            assert_eq!(
                e.id, sim.ids[j],
                "node {i} lists {} under a wrong id",
                e.addr
            );
        }
        all_entries += entries;
        let truth = live_honest.closest(&own, K, Some(own));
        let known: Vec<Id20> = table
            .closest(&own, 4 * K, sim.now)
            .iter()
            .map(|e| e.id)
            .filter(|id| truth.contains(id))
            .collect();
        overlap_total += known.len();
    }
    let mean_overlap = overlap_total as f64 / honest_joined.len() as f64;
    let share =
        |r: Role| entries_by_role.get(&r).copied().unwrap_or(0) as f64 / all_entries as f64 * 100.0;
    eprintln!(
        "{count} nodes: {} live honest; tables hold {all_entries} entries: honest {:.1} %, gone dark {:.1} % ({bad_status_dark} marked bad), liars {:.1} %, garbage {:.1} %, silent {silent_in_tables}; mean {mean_overlap:.2}/{K} of the true closest live honest neighbours known; {} delivered, {} lost, bad nodes sent {:?}",
        honest_joined.len(),
        share(Role::Honest),
        share(Role::GoesDark),
        share(Role::Liar),
        share(Role::Garbage),
        sim.delivered,
        sim.lost,
        sim.bad_sent,
    );
    assert_eq!(
        silent_in_tables, 0,
        "a node that never answered took a place"
    );
    // Not preferred: liars and garbage nodes answer pings, so they may enter tables, but no
    // more than their 5 % share of the network each.
    assert!(share(Role::Liar) <= 5.0, "liars {:.1} %", share(Role::Liar));
    assert!(
        share(Role::Garbage) <= 5.0,
        "garbage {:.1} %",
        share(Role::Garbage)
    );

    // Five honest nodes announce an info-hash, twenty others look it up.
    let info_hash = Id20(Sha1::digest(b"simulated torrent, adversarial network").into());
    let mut expected = Vec::new();
    for n in 0..5 {
        let a = honest_joined[(n * 97 + 13) % honest_joined.len()];
        let options = GetPeersOptions {
            announce: Some(AnnounceOptions {
                port: 7000 + n as u16,
                implied_port: false,
                seed: false,
            }),
            ..GetPeersOptions::default()
        };
        let now = sim.now;
        let l = sim.node(a).get_peers(info_hash, options, now).unwrap();
        sim.collect(a);
        let r = sim.wait_lookup(a, l);
        assert!(r.announced_to > 0, "announcer {a} found nodes with tokens");
        expected.push(SocketAddr::new(sim.addrs[a].ip(), 7000 + n as u16));
    }
    sim.run_for(Duration::from_secs(2));
    // The closest nodes a lookup can end at: those that answer get_peers correctly.
    let truth = live_honest.closest(&info_hash, K, None);
    let mut outcome = Outcome {
        mean_overlap,
        lookups: 0,
        all_found: 0,
        exact_closest: 0,
        mean_queries: 0.0,
        max_queries: 0,
    };
    let mut queries = 0;
    let mut fake_peers = 0;
    for n in 0..20 {
        let s = honest_joined[(n * 389 + 77) % honest_joined.len()];
        let now = sim.now;
        let l = sim
            .node(s)
            .get_peers(info_hash, GetPeersOptions::default(), now)
            .unwrap();
        sim.collect(s);
        let r = sim.wait_lookup(s, l);
        let found: HashSet<SocketAddr> = r.peers.iter().copied().collect();
        outcome.lookups += 1;
        outcome.all_found += expected.iter().all(|p| found.contains(p)) as usize;
        fake_peers += found.iter().filter(|p| !expected.contains(p)).count();
        let got: Vec<Id20> = r.closest.iter().map(|c| c.id).collect();
        let exact = got.iter().filter(|id| truth.contains(id)).count();
        outcome.exact_closest += exact;
        queries += r.queries;
        outcome.max_queries = outcome.max_queries.max(r.queries);
        // Only nodes that answered get_peers correctly are in the result.
        for c in &r.closest {
            let j = sim.index[&c.addr];
            assert!(
                matches!(sim.roles[j], Role::Honest | Role::Liar),
                "a {:?} node in a lookup's result",
                sim.roles[j]
            );
            assert_eq!(c.id, sim.ids[j]);
        }
    }
    outcome.mean_queries = queries as f64 / outcome.lookups as f64;
    eprintln!(
        "{} get_peers lookups: {} found all 5 announced peers ({fake_peers} fake peers from liars besides), {:.2}/{K} of the true closest honest nodes on average, {:.1} queries on average, at most {}",
        outcome.lookups,
        outcome.all_found,
        outcome.exact_closest as f64 / outcome.lookups as f64,
        outcome.mean_queries,
        outcome.max_queries
    );

    // Bounds: nothing left running, nothing grew past its limits.
    sim.run_for(Duration::from_secs(10));
    for &i in &honest_joined {
        let node = sim.nodes[i].as_ref().unwrap();
        assert!(node.table(false).len() <= routing::MAX_BUCKETS * K);
        assert!(node.lookup_count() <= node.config().max_lookups);
        assert!(node.stored_torrents() <= node.config().store_torrents);
    }
    outcome
}

fn check(o: &Outcome) {
    assert!(o.mean_overlap >= 7.0, "tables converge: {}", o.mean_overlap);
    assert_eq!(
        o.all_found, o.lookups,
        "every lookup finds every announced peer"
    );
    assert!(
        o.exact_closest as f64 / o.lookups as f64 >= 7.0,
        "lookups end at the true closest: {} of {}",
        o.exact_closest,
        o.lookups * K
    );
    assert!(o.max_queries <= DhtConfig::default().lookup_max_queries);
    assert!(
        o.mean_queries <= 60.0,
        "{} queries per lookup",
        o.mean_queries
    );
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "10,000 nodes need an optimised build: cargo test --release"
)]
fn adversarial_network_of_10000() {
    check(&run(10_000, 10, 0x5eed_0001));
}

/// The same checks on a small network, joining one node per step: 1,000 nodes optimised,
/// 300 unoptimised (a few seconds either way).
#[test]
fn adversarial_network_small() {
    let count = if cfg!(debug_assertions) { 300 } else { 1_000 };
    check(&run(count, 1, 0x5eed_0002));
}
