//! One iterative lookup (BEP 5 / Kademlia): query the α closest candidates not yet asked,
//! add the nodes they return, until the k closest candidates that still answer have all
//! answered. The candidate set is bounded (the furthest are forgotten), and so is the number
//! of queries.

use crate::krpc::{BloomFilter, Id20, BLOOM_BYTES};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Instant;

/// Identifies a lookup in events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(pub u64);

/// What a lookup asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupKind {
    /// `find_node`: bootstrap and bucket refresh; the result is the closest nodes.
    FindNode,
    /// `get_peers` for the target as info-hash.
    GetPeers(GetPeersOptions),
}

/// Options of a `get_peers` lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GetPeersOptions {
    /// BEP 33: ask for the seeds/peers bloom filters.
    pub scrape: bool,
    /// BEP 33: ask for non-seeds first.
    pub noseed: bool,
    /// When done, `announce_peer` to the closest nodes that gave a token.
    pub announce: Option<AnnounceOptions>,
}

/// What to announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnnounceOptions {
    /// The port peers should connect to; ignored with `implied_port`.
    pub port: u16,
    /// Let nodes use our UDP source port (for NAT'd hosts, and uTP).
    pub implied_port: bool,
    /// BEP 33: we are a seed.
    pub seed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Fresh,
    InFlight { attempts: u8 },
    Replied,
    Failed,
}

#[derive(Clone, Debug)]
struct Candidate {
    /// Unknown for bootstrap addresses until they answer.
    id: Option<Id20>,
    addr: SocketAddr,
    /// Distance to the target; zero (first in line) while the id is unknown.
    key: Id20,
    state: State,
    token: Option<Vec<u8>>,
}

/// A node of the result: among the k closest that answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClosestNode {
    pub id: Id20,
    pub addr: SocketAddr,
    /// The write token it gave (get_peers only).
    pub token: Option<Vec<u8>>,
}

/// A finished lookup.
#[derive(Clone, Debug, PartialEq)]
pub struct LookupResult {
    pub id: LookupId,
    pub target: Id20,
    pub kind: LookupKind,
    /// Every distinct peer (`values`) received.
    pub peers: Vec<SocketAddr>,
    /// The k closest nodes that answered, closest first.
    pub closest: Vec<ClosestNode>,
    pub queries: u32,
    pub replies: u32,
    pub timeouts: u32,
    /// BEP 33 estimates from the union of the filters received, when asked and any came.
    pub seeds_estimate: Option<f64>,
    pub peers_estimate: Option<f64>,
    /// `announce_peer` queries sent after the lookup.
    pub announced_to: u32,
    pub started: Instant,
    pub finished: Instant,
}

pub struct Lookup {
    pub id: LookupId,
    pub target: Id20,
    pub kind: LookupKind,
    candidates: Vec<Candidate>,
    peers: Vec<SocketAddr>,
    peers_seen: HashSet<SocketAddr>,
    seeds_filter: Option<BloomFilter>,
    peers_filter: Option<BloomFilter>,
    pub queries: u32,
    pub replies: u32,
    pub timeouts: u32,
    pub started: Instant,
    limits: LookupLimits,
}

#[derive(Clone, Copy, Debug)]
pub struct LookupLimits {
    pub alpha: usize,
    pub k: usize,
    pub max_candidates: usize,
    pub max_queries: u32,
    pub max_peers: usize,
    /// Tries per candidate before it counts as failed.
    pub attempts: u8,
}

impl Lookup {
    pub fn new(
        id: LookupId,
        target: Id20,
        kind: LookupKind,
        limits: LookupLimits,
        now: Instant,
    ) -> Self {
        Lookup {
            id,
            target,
            kind,
            candidates: Vec::new(),
            peers: Vec::new(),
            peers_seen: HashSet::new(),
            seeds_filter: None,
            peers_filter: None,
            queries: 0,
            replies: 0,
            timeouts: 0,
            started: now,
            limits,
        }
    }

    /// Add a candidate (a node from a reply, the routing table or a bootstrap address).
    pub fn add_candidate(&mut self, id: Option<Id20>, addr: SocketAddr) {
        if self
            .candidates
            .iter()
            .any(|c| c.addr == addr || (id.is_some() && c.id == id))
        {
            return;
        }
        let key = id.map_or(Id20::default(), |i| i.distance(&self.target));
        let pos = self.candidates.partition_point(|c| c.key <= key);
        if pos >= self.limits.max_candidates {
            return;
        }
        self.candidates.insert(
            pos,
            Candidate {
                id,
                addr,
                key,
                state: State::Fresh,
                token: None,
            },
        );
        while self.candidates.len() > self.limits.max_candidates {
            // Forget the furthest candidate not waiting for an answer.
            match self
                .candidates
                .iter()
                .rposition(|c| !matches!(c.state, State::InFlight { .. }))
            {
                Some(i) => {
                    self.candidates.remove(i);
                }
                None => break,
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.candidates
            .iter()
            .filter(|c| matches!(c.state, State::InFlight { .. }))
            .count()
    }

    /// Candidates to query now (their state becomes in-flight): fresh ones among the k
    /// closest still alive, keeping at most α in flight.
    pub fn next_queries(&mut self, budget: usize) -> Vec<(Option<Id20>, SocketAddr)> {
        let mut out = Vec::new();
        let mut in_flight = self.in_flight();
        let mut alive = 0;
        for c in self.candidates.iter_mut() {
            if alive >= self.limits.k
                || in_flight >= self.limits.alpha
                || out.len() >= budget
                || self.queries >= self.limits.max_queries
            {
                break;
            }
            if c.state == State::Failed {
                continue;
            }
            alive += 1;
            if c.state == State::Fresh {
                c.state = State::InFlight { attempts: 1 };
                in_flight += 1;
                self.queries += 1;
                out.push((c.id, c.addr));
            }
        }
        out
    }

    /// Done when nothing is in flight and no fresh candidate is among the k closest alive
    /// (or the query budget is spent).
    pub fn is_done(&self) -> bool {
        if self.in_flight() > 0 {
            return false;
        }
        if self.queries >= self.limits.max_queries {
            return true;
        }
        !self
            .candidates
            .iter()
            .filter(|c| c.state != State::Failed)
            .take(self.limits.k)
            .any(|c| c.state == State::Fresh)
    }

    fn find(&mut self, addr: SocketAddr) -> Option<usize> {
        self.candidates.iter().position(|c| c.addr == addr)
    }

    /// An answer from `addr` whose node id is `id`. Returns the peers new to this lookup.
    #[allow(clippy::too_many_arguments)]
    pub fn on_reply(
        &mut self,
        addr: SocketAddr,
        id: Id20,
        nodes: impl Iterator<Item = (Id20, SocketAddr)>,
        values: &[SocketAddr],
        token: Option<&[u8]>,
        seeds: Option<&BloomFilter>,
        peers: Option<&BloomFilter>,
    ) -> Vec<SocketAddr> {
        self.replies += 1;
        if let Some(i) = self.find(addr) {
            let mut c = self.candidates.remove(i);
            c.state = State::Replied;
            c.token = token.map(|t| t.to_vec());
            c.key = id.distance(&self.target);
            c.id = Some(id);
            // Another candidate may already hold this id (learned from a reply); keep one.
            self.candidates.retain(|o| o.id != Some(id));
            let pos = self.candidates.partition_point(|o| o.key <= c.key);
            self.candidates.insert(pos, c);
        }
        for (nid, naddr) in nodes {
            self.add_candidate(Some(nid), naddr);
        }
        if let Some(f) = seeds {
            self.seeds_filter
                .get_or_insert_with(BloomFilter::new)
                .union_with(f);
        }
        if let Some(f) = peers {
            self.peers_filter
                .get_or_insert_with(BloomFilter::new)
                .union_with(f);
        }
        let mut new = Vec::new();
        for p in values {
            if self.peers.len() >= self.limits.max_peers {
                break;
            }
            if self.peers_seen.insert(*p) {
                self.peers.push(*p);
                new.push(*p);
            }
        }
        new
    }

    /// A query to `addr` went unanswered (or was answered with an error or garbage, when
    /// `final_` says so). Returns whether to send it again.
    pub fn on_failure(&mut self, addr: SocketAddr, final_: bool) -> bool {
        let Some(i) = self.find(addr) else {
            return false;
        };
        let c = &mut self.candidates[i];
        if let State::InFlight { attempts } = c.state {
            if !final_ && attempts < self.limits.attempts {
                c.state = State::InFlight {
                    attempts: attempts + 1,
                };
                return true;
            }
            self.timeouts += !final_ as u32;
            c.state = State::Failed;
        }
        false
    }

    /// A query [`Lookup::next_queries`] handed out could not be sent: the candidate is fresh
    /// again.
    pub fn unsend(&mut self, addr: SocketAddr) {
        if let Some(i) = self.find(addr) {
            if let State::InFlight { attempts: 1 } = self.candidates[i].state {
                self.candidates[i].state = State::Fresh;
                self.queries -= 1;
            }
        }
    }

    /// The k closest nodes that answered.
    pub fn closest(&self) -> Vec<ClosestNode> {
        self.candidates
            .iter()
            .filter(|c| c.state == State::Replied)
            .filter_map(|c| {
                Some(ClosestNode {
                    id: c.id?,
                    addr: c.addr,
                    token: c.token.clone(),
                })
            })
            .take(self.limits.k)
            .collect()
    }

    pub fn finish(&self, announced_to: u32, now: Instant) -> LookupResult {
        LookupResult {
            id: self.id,
            target: self.target,
            kind: self.kind.clone(),
            peers: self.peers.clone(),
            closest: self.closest(),
            queries: self.queries,
            replies: self.replies,
            timeouts: self.timeouts,
            seeds_estimate: self.seeds_filter.as_ref().map(estimate),
            peers_estimate: self.peers_filter.as_ref().map(estimate),
            announced_to,
            started: self.started,
            finished: now,
        }
    }
}

/// BEP 33 estimate, 0 for an empty filter (the formula's clamp reads 0.5 there).
fn estimate(f: &BloomFilter) -> f64 {
    if f.count_zero_bits() == BLOOM_BYTES * 8 {
        0.0
    } else {
        f.estimate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LookupLimits {
        LookupLimits {
            alpha: 3,
            k: 8,
            max_candidates: 16,
            max_queries: 100,
            max_peers: 10,
            attempts: 2,
        }
    }

    fn id(n: u8) -> Id20 {
        let mut b = [0u8; 20];
        b[19] = n;
        Id20(b)
    }

    fn addr(n: u8) -> SocketAddr {
        ([127, 0, 0, n], 6881).into()
    }

    #[test]
    fn alpha_in_flight_and_convergence() {
        let now = Instant::now();
        let mut l = Lookup::new(LookupId(1), id(0), LookupKind::FindNode, limits(), now);
        for n in 1..=20 {
            l.add_candidate(Some(id(n)), addr(n));
        }
        assert_eq!(l.candidates.len(), 16, "bounded candidate set");
        let q = l.next_queries(100);
        assert_eq!(
            q,
            [
                (Some(id(1)), addr(1)),
                (Some(id(2)), addr(2)),
                (Some(id(3)), addr(3))
            ]
        );
        assert!(l.next_queries(100).is_empty(), "α = 3 in flight");
        assert!(!l.is_done());
        // id 1 answers, id 2 times out twice, id 3 answers with a closer... none closer exist.
        l.on_reply(
            addr(1),
            id(1),
            std::iter::empty(),
            &[],
            Some(b"tok"),
            None,
            None,
        );
        assert!(l.on_failure(addr(2), false), "retried once");
        assert!(!l.on_failure(addr(2), false), "then failed");
        l.on_reply(addr(3), id(3), std::iter::empty(), &[], None, None, None);
        let mut rounds = 0;
        while !l.is_done() {
            rounds += 1;
            assert!(rounds < 20);
            for (nid, a) in l.next_queries(100) {
                l.on_reply(a, nid.unwrap(), std::iter::empty(), &[], None, None, None);
            }
        }
        let closest: Vec<Id20> = l.closest().into_iter().map(|c| c.id).collect();
        assert_eq!(
            closest,
            [1, 3, 4, 5, 6, 7, 8, 9].map(id),
            "k closest that answered"
        );
        assert_eq!(l.closest()[0].token.as_deref(), Some(&b"tok"[..]));
        assert_eq!(
            l.queries, 9,
            "the 9th node asked was needed to make up 8 after a failure"
        );
    }

    #[test]
    fn unknown_bootstrap_id_goes_first_and_peers_dedup() {
        let now = Instant::now();
        let mut l = Lookup::new(LookupId(1), id(0), LookupKind::FindNode, limits(), now);
        l.add_candidate(Some(id(5)), addr(5));
        l.add_candidate(None, addr(99));
        let q = l.next_queries(1);
        assert_eq!(q, [(None, addr(99))]);
        let nodes = [(id(2), addr(2))];
        let new = l.on_reply(
            addr(99),
            id(200),
            nodes.into_iter(),
            &[addr(50), addr(50), addr(51)],
            None,
            None,
            None,
        );
        assert_eq!(new, [addr(50), addr(51)]);
        let new = l.on_reply(
            addr(99),
            id(200),
            std::iter::empty(),
            &[addr(50)],
            None,
            None,
            None,
        );
        assert!(new.is_empty());
        assert_eq!(
            l.next_queries(10)[0],
            (Some(id(2)), addr(2)),
            "closest first"
        );
    }
}
