//! A simulated network of our own nodes: deterministic (seeded), no sockets, a queue of
//! datagrams between nodes with loss. Nodes join by bootstrapping from one node, the routing
//! tables converge, announced peers are found by a lookup that converges on the true k
//! closest nodes.

use super::*;
use keyed::SeededRng;
use sha1::{Digest, Sha1};

const STEP: Duration = Duration::from_millis(50);

struct Sim {
    nodes: Vec<DhtNode>,
    addrs: Vec<SocketAddr>,
    index: HashMap<SocketAddr, usize>,
    /// Datagrams sent during the current step, delivered at the next.
    in_flight: Vec<(SocketAddr, Datagram)>,
    events: Vec<(usize, Event)>,
    rng: SeededRng,
    /// Datagrams lost, per 1000.
    loss_per_mille: usize,
    now: Instant,
    delivered: u64,
    lost: u64,
}

impl Sim {
    fn new(count: usize, loss_per_mille: usize, seed: u8) -> Sim {
        let now = Instant::now();
        let mut rng = SeededRng::new([seed; 32]);
        let mut nodes = Vec::with_capacity(count);
        let mut addrs = Vec::with_capacity(count);
        for i in 0..count {
            // One /24 each, as nodes on the Internet mostly are (the rate limit is per /24).
            let addr = SocketAddr::from(([127, (i >> 8) as u8, i as u8, 1], 6881));
            let config = DhtConfig {
                ipv6: false,
                query_timeout: Duration::from_secs(2),
                ..DhtConfig::default()
            };
            nodes.push(DhtNode::new(config, rng.bytes(), now));
            addrs.push(addr);
        }
        let index = addrs.iter().enumerate().map(|(i, a)| (*a, i)).collect();
        Sim {
            nodes,
            addrs,
            index,
            in_flight: Vec::new(),
            events: Vec::new(),
            rng,
            loss_per_mille,
            now,
            delivered: 0,
            lost: 0,
        }
    }

    fn collect(&mut self, i: usize) {
        while let Some(d) = self.nodes[i].poll_transmit() {
            self.in_flight.push((self.addrs[i], d));
        }
        while let Some(e) = self.nodes[i].poll_event() {
            self.events.push((i, e));
        }
    }

    /// Deliver what was sent in the last step, then let due nodes tick.
    fn step(&mut self) {
        self.now += STEP;
        let batch = std::mem::take(&mut self.in_flight);
        for (from, d) in batch {
            if (u16::from_be_bytes(self.rng.bytes()) % 1000) < self.loss_per_mille as u16 {
                self.lost += 1;
                continue;
            }
            let Some(&to) = self.index.get(&d.to) else {
                continue;
            };
            self.delivered += 1;
            self.nodes[to].handle_datagram(from, &d.bytes, self.now);
            self.collect(to);
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].next_deadline() <= self.now {
                self.nodes[i].tick(self.now);
                self.collect(i);
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let steps = d.as_millis() / STEP.as_millis();
        for _ in 0..steps {
            self.step();
        }
    }

    /// Step until `node` reports lookup `l` done (bounded).
    fn wait_lookup(&mut self, node: usize, l: LookupId) -> LookupResult {
        for _ in 0..2000 {
            if let Some(pos) = self
                .events
                .iter()
                .position(|(i, e)| *i == node && matches!(e, Event::LookupDone(r) if r.id == l))
            {
                let (_, Event::LookupDone(r)) = self.events.remove(pos) else {
                    unreachable!()
                };
                return r;
            }
            self.step();
        }
        panic!("lookup {l:?} of node {node} did not finish in 100 s");
    }

    /// The true `k` closest node ids to `target` (leaving out `except`).
    fn true_closest(&self, target: &Id20, k: usize, except: Option<usize>) -> Vec<Id20> {
        let mut ids: Vec<Id20> = (0..self.nodes.len())
            .filter(|i| Some(*i) != except)
            .map(|i| self.nodes[i].id())
            .collect();
        ids.sort_by_key(|id| id.distance(target));
        ids.truncate(k);
        ids
    }
}

fn run_network(
    count: usize,
    loss_per_mille: usize,
    seed: u8,
) -> (Sim, LookupResult, Vec<SocketAddr>, usize) {
    let mut sim = Sim::new(count, loss_per_mille, seed);
    // Everyone joins through node 0, one every 100 ms.
    let entry = sim.addrs[0];
    let mut joins = Vec::new();
    for i in 1..count {
        let l = sim.nodes[i].bootstrap(&[entry], sim.now).unwrap();
        joins.push((i, l));
        sim.collect(i);
        sim.step();
        sim.step();
    }
    // A join whose every query to node 0 was lost ends empty; the node bootstraps again by
    // itself (the small-table refresh).
    let mut failed_joins = 0;
    for (i, l) in joins {
        failed_joins += sim.wait_lookup(i, l).closest.is_empty() as usize;
    }
    if loss_per_mille == 0 {
        assert_eq!(failed_joins, 0);
    }
    // Upkeep pings confirm the queriers every node heard from.
    sim.run_for(Duration::from_secs(60));

    // Routing tables converge: each node knows its true k closest (the nodes it must know
    // for lookups of keys near it to end at it).
    let mut overlap_total = 0;
    let mut worst = K;
    for i in 0..count {
        let own = sim.nodes[i].id();
        let truth = sim.true_closest(&own, K, Some(i));
        let known: Vec<Id20> = sim.nodes[i]
            .table(false)
            .closest(&own, K, sim.now)
            .iter()
            .map(|e| e.id)
            .collect();
        let overlap = known.iter().filter(|id| truth.contains(id)).count();
        overlap_total += overlap;
        worst = worst.min(overlap);
        let t = sim.nodes[i].table(false);
        assert!(
            t.len() >= K,
            "node {i} has a table: {} nodes in {} buckets, stats {:?}",
            t.len(),
            t.bucket_count(),
            sim.nodes[i].stats()
        );
    }
    let mean = overlap_total as f64 / count as f64;
    eprintln!(
        "{count} nodes, loss {loss_per_mille}‰: {failed_joins} joins failed at first, mean {mean:.2}/{K} of the true closest known, worst {worst}; {} delivered, {} lost",
        sim.delivered, sim.lost
    );
    assert!(mean >= 7.5, "tables converge: mean overlap {mean}");

    // Five nodes announce an info-hash; another looks it up.
    let info_hash = Id20(Sha1::digest(b"simulated torrent").into());
    let announcers = [17usize, 123, 256, 389, 444].map(|i| i % count);
    let mut expected = Vec::new();
    let seeds = announcers.iter().filter(|a| *a % 2 == 0).count();
    for &a in &announcers {
        let options = GetPeersOptions {
            announce: Some(AnnounceOptions {
                port: 7000 + a as u16,
                implied_port: false,
                seed: a % 2 == 0,
            }),
            ..GetPeersOptions::default()
        };
        let l = sim.nodes[a].get_peers(info_hash, options, sim.now).unwrap();
        sim.collect(a);
        let r = sim.wait_lookup(a, l);
        assert!(r.announced_to > 0, "announcer {a} found nodes with tokens");
        expected.push(SocketAddr::new(sim.addrs[a].ip(), 7000 + a as u16));
    }
    sim.run_for(Duration::from_secs(2));
    let searcher = 77 % count;
    let options = GetPeersOptions {
        scrape: true,
        ..GetPeersOptions::default()
    };
    let l = sim.nodes[searcher]
        .get_peers(info_hash, options, sim.now)
        .unwrap();
    sim.collect(searcher);
    let result = sim.wait_lookup(searcher, l);
    expected.sort();
    (sim, result, expected, seeds)
}

fn check_lookup(
    sim: &Sim,
    result: &LookupResult,
    expected: &[SocketAddr],
    seeds: usize,
    min_exact: usize,
) {
    let mut found = result.peers.clone();
    found.sort();
    assert_eq!(found, expected, "every announced peer found, nothing else");
    let truth = sim.true_closest(&result.target, K, None);
    let got: Vec<Id20> = result.closest.iter().map(|c| c.id).collect();
    let exact = got.iter().filter(|id| truth.contains(id)).count();
    eprintln!(
        "lookup: {} queries, {} replies, {} timeouts, {exact}/{K} of the true closest, estimates seeds {:?} peers {:?}",
        result.queries, result.replies, result.timeouts, result.seeds_estimate, result.peers_estimate
    );
    assert!(exact >= min_exact, "{exact} of the true {K} closest");
    assert!(result.queries <= 64, "{} queries", result.queries);
    assert!(result.closest.iter().all(|c| c.token.is_some()));
    // BEP 33: the announcers with even indices announced as seeds.
    let seeds_estimate = result.seeds_estimate.expect("scrape filters");
    let peers_estimate = result.peers_estimate.expect("scrape filters");
    let others = expected.len() - seeds;
    assert!(
        (seeds_estimate - seeds as f64).abs() < 0.1,
        "{seeds_estimate} for {seeds}"
    );
    assert!(
        (peers_estimate - others as f64).abs() < 0.1,
        "{peers_estimate} for {others}"
    );
}

#[test]
fn simulated_network_of_500_lossless() {
    let (sim, result, expected, seeds) = run_network(500, 0, 1);
    check_lookup(&sim, &result, &expected, seeds, K);
    assert_eq!(result.closest.len(), K);
}

#[test]
fn simulated_network_of_500_with_loss() {
    let (sim, result, expected, seeds) = run_network(500, 30, 2);
    assert!(sim.lost > 0);
    check_lookup(&sim, &result, &expected, seeds, K - 1);
}
