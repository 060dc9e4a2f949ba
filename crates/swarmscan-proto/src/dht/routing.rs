//! The routing table (BEP 5): k-buckets over the XOR distance to our id. Only the bucket
//! that contains our own id splits, so the table holds many nodes near us and a few far
//! away, at most [`MAX_BUCKETS`] × ([`K`] nodes + [`K`] replacements).
//!
//! A node enters the buckets only once it has answered one of our queries; nodes that merely
//! queried us wait in the bucket's replacement cache until a ping confirms them, so a forged
//! source address never takes a place. Node states follow BEP 5: good if it answered us in
//! the last 15 minutes (or answered once and queried us in the last 15 minutes), bad after
//! [`MAX_FAILURES`] unanswered queries in a row, questionable otherwise.

use crate::krpc::Id20;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Nodes per bucket.
pub const K: usize = 8;
/// One bucket per bit of the id, at most.
pub const MAX_BUCKETS: usize = 160;
/// Unanswered queries in a row that make a node bad.
pub const MAX_FAILURES: u8 = 2;
/// BEP 5's 15 minutes: after that without news a node is questionable and a bucket stale.
pub const FRESH: Duration = Duration::from_secs(15 * 60);
/// Least time between two pings to the same node from table maintenance.
pub const PING_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeStatus {
    Good,
    Questionable,
    Bad,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub id: Id20,
    pub addr: SocketAddr,
    /// When it last answered one of our queries.
    pub last_reply: Option<Instant>,
    /// When it last sent us anything.
    pub last_seen: Instant,
    /// Unanswered queries since its last answer.
    pub failures: u8,
    /// Its id satisfies BEP 42 for its address (or the policy does not check).
    pub verified: bool,
    last_ping: Option<Instant>,
}

impl NodeEntry {
    pub fn status(&self, now: Instant) -> NodeStatus {
        if self.failures >= MAX_FAILURES {
            return NodeStatus::Bad;
        }
        let recent = |t: Instant| now.saturating_duration_since(t) < FRESH;
        match self.last_reply {
            Some(r) if recent(r) || recent(self.last_seen) => NodeStatus::Good,
            _ => NodeStatus::Questionable,
        }
    }
}

struct Bucket {
    nodes: Vec<NodeEntry>,
    /// Newest last; confirmed (answered) and unconfirmed (only queried us) candidates.
    replacements: Vec<NodeEntry>,
    last_changed: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Bucket {
            nodes: Vec::with_capacity(K),
            replacements: Vec::new(),
            last_changed: now,
        }
    }

    fn add_replacement(&mut self, entry: NodeEntry) {
        if let Some(i) = self.replacements.iter().position(|e| e.id == entry.id) {
            let old = self.replacements.remove(i);
            if old.addr != entry.addr && old.last_reply.is_some() {
                // A confirmed address is not overwritten by an unconfirmed one.
                self.replacements.push(old);
                return;
            }
        }
        if self.replacements.len() >= K {
            // Drop an unconfirmed candidate before a confirmed one.
            let i = self
                .replacements
                .iter()
                .position(|e| e.last_reply.is_none())
                .unwrap_or(0);
            self.replacements.remove(i);
        }
        self.replacements.push(entry);
    }

    /// Best replacement: the newest one that has answered us.
    fn take_confirmed_replacement(&mut self) -> Option<NodeEntry> {
        let i = self
            .replacements
            .iter()
            .rposition(|e| e.last_reply.is_some())?;
        Some(self.replacements.remove(i))
    }
}

/// What [`RoutingTable::heard_from`] did with a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// Already in a bucket: refreshed.
    Updated,
    /// Took a place in a bucket.
    Added,
    /// Waiting in the replacement cache.
    Replacement,
    /// Not taken (our own id, a changed address, or unverified under the strict policy).
    Ignored,
}

/// Maintenance work from [`RoutingTable::maintenance`].
#[derive(Debug, Default)]
pub struct Maintenance {
    /// Nodes to ping: questionable ones, and candidates waiting for a place.
    pub ping: Vec<(Id20, SocketAddr)>,
    /// Targets for `find_node` refreshes of buckets unchanged for 15 minutes.
    pub refresh: Vec<Id20>,
}

pub struct RoutingTable {
    own: Id20,
    require_verified: bool,
    buckets: Vec<Bucket>,
}

impl RoutingTable {
    /// An empty table around `own`. With `require_verified`, nodes whose id fails BEP 42
    /// never enter the buckets; otherwise they do but verified nodes displace them.
    pub fn new(own: Id20, require_verified: bool, now: Instant) -> Self {
        RoutingTable {
            own,
            require_verified,
            buckets: vec![Bucket::new(now)],
        }
    }

    pub fn own_id(&self) -> Id20 {
        self.own
    }

    fn bucket_index(&self, id: &Id20) -> usize {
        let cpl = self.own.distance(id).leading_zeros() as usize;
        cpl.min(self.buckets.len() - 1)
    }

    /// Number of nodes in buckets (not counting replacements).
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.nodes.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// All nodes in buckets.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeEntry> {
        self.buckets.iter().flat_map(|b| b.nodes.iter())
    }

    /// Whether `id` at `addr` is in a bucket.
    pub fn contains(&self, id: &Id20, addr: SocketAddr) -> bool {
        let b = &self.buckets[self.bucket_index(id)];
        b.nodes.iter().any(|n| n.id == *id && n.addr == addr)
    }

    /// Record news from a node: `replied` when it answered one of our queries (then it may
    /// take a place), otherwise it queried us (then it waits among the replacements).
    pub fn heard_from(
        &mut self,
        id: Id20,
        addr: SocketAddr,
        verified: bool,
        replied: bool,
        now: Instant,
    ) -> Inserted {
        if id == self.own {
            return Inserted::Ignored;
        }
        // Bounded: each pass either returns or splits, and splits stop at MAX_BUCKETS.
        for _ in 0..=MAX_BUCKETS {
            let last = self.buckets.len() - 1;
            let idx = self.bucket_index(&id);
            let bucket = &mut self.buckets[idx];
            if let Some(n) = bucket.nodes.iter_mut().find(|n| n.id == id) {
                if n.addr != addr {
                    if n.status(now) != NodeStatus::Bad || !replied {
                        // Someone else claiming a known id: keep what we confirmed.
                        return Inserted::Ignored;
                    }
                    n.addr = addr;
                    n.verified = verified;
                }
                n.last_seen = now;
                if replied {
                    n.last_reply = Some(now);
                    n.failures = 0;
                    bucket.last_changed = now;
                }
                return Inserted::Updated;
            }
            let entry = NodeEntry {
                id,
                addr,
                last_reply: replied.then_some(now),
                last_seen: now,
                failures: 0,
                verified,
                last_ping: None,
            };
            if !replied {
                bucket.add_replacement(entry);
                return Inserted::Replacement;
            }
            if self.require_verified && !verified {
                return Inserted::Ignored;
            }
            if bucket.nodes.len() < K {
                bucket.replacements.retain(|e| e.id != id);
                bucket.nodes.push(entry);
                bucket.last_changed = now;
                return Inserted::Added;
            }
            if idx == last && self.buckets.len() < MAX_BUCKETS {
                self.split_last(now);
                continue;
            }
            let bucket = &mut self.buckets[idx];
            let victim = bucket
                .nodes
                .iter()
                .position(|n| n.status(now) == NodeStatus::Bad)
                .or_else(|| {
                    // BEP 42 preference: a verified node displaces an unverified one.
                    if verified {
                        bucket.nodes.iter().position(|n| !n.verified)
                    } else {
                        None
                    }
                });
            if let Some(v) = victim {
                let old = std::mem::replace(&mut bucket.nodes[v], entry);
                bucket.replacements.retain(|e| e.id != id);
                if old.status(now) != NodeStatus::Bad {
                    bucket.add_replacement(old);
                }
                bucket.last_changed = now;
                return Inserted::Added;
            }
            bucket.add_replacement(entry);
            return Inserted::Replacement;
        }
        Inserted::Ignored
    }

    fn split_last(&mut self, now: Instant) {
        let i = self.buckets.len() - 1;
        let own = self.own;
        let further = |id: &Id20| own.distance(id).leading_zeros() as usize > i;
        let old = &mut self.buckets[i];
        let mut new = Bucket::new(now);
        new.last_changed = old.last_changed;
        let (move_nodes, keep): (Vec<_>, Vec<_>) =
            old.nodes.drain(..).partition(|n| further(&n.id));
        old.nodes = keep;
        new.nodes = move_nodes;
        let (move_rep, keep): (Vec<_>, Vec<_>) =
            old.replacements.drain(..).partition(|n| further(&n.id));
        old.replacements = keep;
        new.replacements = move_rep;
        self.buckets.push(new);
    }

    /// A query to the node timed out. A node that turns bad is replaced by a confirmed
    /// replacement if the bucket has one.
    pub fn failed(&mut self, id: &Id20, addr: SocketAddr, now: Instant) {
        let idx = self.bucket_index(id);
        let bucket = &mut self.buckets[idx];
        let Some(i) = bucket
            .nodes
            .iter()
            .position(|n| n.id == *id && n.addr == addr)
        else {
            bucket
                .replacements
                .retain(|e| !(e.id == *id && e.addr == addr));
            return;
        };
        let node = &mut bucket.nodes[i];
        node.failures = node.failures.saturating_add(1);
        if node.status(now) == NodeStatus::Bad {
            if let Some(r) = bucket.take_confirmed_replacement() {
                bucket.nodes[i] = r;
                bucket.last_changed = now;
            }
        }
    }

    /// Up to `n` nodes in buckets closest to `target`, bad ones left out.
    pub fn closest(&self, target: &Id20, n: usize, now: Instant) -> Vec<NodeEntry> {
        let mut all: Vec<NodeEntry> = self
            .nodes()
            .filter(|e| e.status(now) != NodeStatus::Bad)
            .copied()
            .collect();
        all.sort_unstable_by_key(|e| e.id.distance(target));
        all.truncate(n);
        all
    }

    /// A random id that falls in bucket `idx` (shares exactly `idx` leading bits with our id,
    /// or at least that many for the last bucket).
    pub fn random_id_in_bucket(&self, idx: usize, random: [u8; 20]) -> Id20 {
        let mut id = random;
        let own = self.own.0;
        for bit in 0..idx.min(159) {
            let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
            id[byte] = (id[byte] & !mask) | (own[byte] & mask);
        }
        if idx < self.buckets.len() - 1 && idx < 160 {
            let (byte, mask) = (idx / 8, 0x80u8 >> (idx % 8));
            id[byte] = (id[byte] & !mask) | (!own[byte] & mask);
        }
        Id20(id)
    }

    /// Table upkeep, bounded to `max_pings` pings: ping questionable nodes (when their
    /// bucket has candidates waiting) and unconfirmed candidates (when there may be room for
    /// them), and name buckets unchanged for 15 minutes to refresh. `random` gives the
    /// refresh targets' random bits.
    pub fn maintenance(
        &mut self,
        now: Instant,
        max_pings: usize,
        mut random: impl FnMut() -> [u8; 20],
    ) -> Maintenance {
        let mut out = Maintenance::default();
        let mut stale: Vec<usize> = Vec::new();
        let may_ping = |last: Option<Instant>| {
            last.is_none_or(|t| now.saturating_duration_since(t) >= PING_INTERVAL)
        };
        let count = self.buckets.len();
        for idx in 0..count {
            let bucket = &mut self.buckets[idx];
            // Our own bucket always has room: a confirmed candidate splits it.
            let splittable = idx == count - 1 && count < MAX_BUCKETS;
            let room = splittable
                || bucket.nodes.len() < K
                || bucket
                    .nodes
                    .iter()
                    .any(|n| n.status(now) != NodeStatus::Good);
            if !bucket.replacements.is_empty() {
                for n in bucket.nodes.iter_mut() {
                    if out.ping.len() < max_pings
                        && n.status(now) == NodeStatus::Questionable
                        && may_ping(n.last_ping)
                    {
                        n.last_ping = Some(now);
                        out.ping.push((n.id, n.addr));
                    }
                }
            }
            if room {
                for r in bucket.replacements.iter_mut().rev() {
                    if out.ping.len() < max_pings && r.last_reply.is_none() && may_ping(r.last_ping)
                    {
                        r.last_ping = Some(now);
                        out.ping.push((r.id, r.addr));
                    }
                }
            }
            if now.saturating_duration_since(bucket.last_changed) >= FRESH {
                bucket.last_changed = now;
                stale.push(idx);
            }
        }
        Maintenance {
            ping: out.ping,
            refresh: stale
                .into_iter()
                .map(|idx| self.random_id_in_bucket(idx, random()))
                .collect(),
        }
    }

    /// One random target in every bucket but the last (ours), for the refresh that follows a
    /// join (Kademlia §2.3: a new node refreshes the buckets further than its closest
    /// neighbour). The buckets count as refreshed now.
    pub fn refresh_all(&mut self, now: Instant, mut random: impl FnMut() -> [u8; 20]) -> Vec<Id20> {
        let far = self.buckets.len() - 1;
        for b in &mut self.buckets[..far] {
            b.last_changed = now;
        }
        (0..far)
            .map(|idx| self.random_id_in_bucket(idx, random()))
            .collect()
    }

    /// Re-root the table at a new own id (after BEP 42 gave us one): nodes are re-inserted.
    pub fn rebuild(&mut self, own: Id20, now: Instant) {
        let old: Vec<NodeEntry> = self
            .buckets
            .drain(..)
            .flat_map(|b| b.nodes.into_iter().chain(b.replacements))
            .collect();
        self.own = own;
        self.buckets = vec![Bucket::new(now)];
        for e in old {
            let replied = e.last_reply.is_some();
            self.heard_from(e.id, e.addr, e.verified, replied, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Id20 {
        Id20([0; 20])
    }

    /// An id sharing exactly `prefix` leading bits with the zero id, `n` in its last bytes.
    fn id_at(prefix: usize, n: u16) -> Id20 {
        let mut b = [0u8; 20];
        b[prefix / 8] |= 0x80 >> (prefix % 8);
        b[18] |= (n >> 8) as u8;
        b[19] |= n as u8;
        Id20(b)
    }

    fn addr(n: u16) -> SocketAddr {
        ([127, 0, (n >> 8) as u8, n as u8], 6881).into()
    }

    #[test]
    fn only_our_bucket_splits_and_far_buckets_stay_at_k() {
        let now = Instant::now();
        let mut t = RoutingTable::new(own(), false, now);
        // 20 nodes in the far half (prefix 0): one bucket of K, the rest waiting.
        for n in 0..20 {
            t.heard_from(id_at(0, n), addr(n), true, true, now);
        }
        // 20 nodes at each of prefix 1..=5.
        for p in 1..=5 {
            for n in 0..20 {
                let a = addr(1000 + (p * 20 + n as usize) as u16);
                t.heard_from(id_at(p, n), a, true, true, now);
            }
        }
        assert!(t.bucket_count() >= 6, "split down to our id");
        assert_eq!(t.len(), 6 * K, "K per bucket");
        for e in t.nodes() {
            assert_eq!(e.status(now), NodeStatus::Good);
        }
        let closest = t.closest(&own(), 3, now);
        assert!(closest
            .iter()
            .all(|e| own().distance(&e.id).leading_zeros() == 5));
    }

    #[test]
    fn queriers_wait_until_confirmed() {
        let now = Instant::now();
        let mut t = RoutingTable::new(own(), false, now);
        assert_eq!(
            t.heard_from(id_at(0, 1), addr(1), true, false, now),
            Inserted::Replacement
        );
        assert!(t.is_empty());
        let m = t.maintenance(now, 8, || [7; 20]);
        assert_eq!(m.ping, [(id_at(0, 1), addr(1))], "the candidate is pinged");
        assert!(
            t.maintenance(now, 8, || [7; 20]).ping.is_empty(),
            "once per interval"
        );
        assert_eq!(
            t.heard_from(id_at(0, 1), addr(1), true, true, now),
            Inserted::Added
        );
        assert!(t.contains(&id_at(0, 1), addr(1)));
        // Our own id never enters.
        assert_eq!(
            t.heard_from(own(), addr(2), true, true, now),
            Inserted::Ignored
        );
        // A known id from another address does not move it.
        assert_eq!(
            t.heard_from(id_at(0, 1), addr(3), true, true, now),
            Inserted::Ignored
        );
        assert!(t.contains(&id_at(0, 1), addr(1)));
    }

    #[test]
    fn fifteen_minute_rule_and_bad_nodes_replaced() {
        let t0 = Instant::now();
        let mut t = RoutingTable::new(own(), false, t0);
        // Fill the far bucket after a split so it cannot split again.
        t.heard_from(id_at(3, 0), addr(500), true, true, t0);
        for n in 0..K as u16 {
            t.heard_from(id_at(0, n), addr(n), true, true, t0);
        }
        for n in 0..K as u16 {
            t.heard_from(id_at(2, n), addr(100 + n), true, true, t0);
        }
        assert!(t.bucket_count() > 1);
        let late = t0 + FRESH;
        let far = t.nodes().find(|e| e.id == id_at(0, 0)).unwrap();
        assert_eq!(far.status(late), NodeStatus::Questionable);
        // A query from it within 15 minutes keeps it good (it answered once).
        t.heard_from(
            id_at(0, 0),
            addr(0),
            true,
            false,
            t0 + Duration::from_secs(800),
        );
        let far = t.nodes().find(|e| e.id == id_at(0, 0)).unwrap();
        assert_eq!(far.status(late), NodeStatus::Good);
        // A newcomer to the full far bucket waits; maintenance pings the questionable ones.
        assert_eq!(
            t.heard_from(id_at(0, 99), addr(99), true, true, late),
            Inserted::Replacement
        );
        let m = t.maintenance(late, 100, || [0; 20]);
        assert!(m.ping.contains(&(id_at(0, 1), addr(1))));
        assert!(
            !m.ping.contains(&(id_at(0, 0), addr(0))),
            "good nodes are not pinged"
        );
        assert_eq!(m.refresh.len(), t.bucket_count(), "every bucket is stale");
        assert!(
            t.maintenance(late, 100, || [0; 20]).refresh.is_empty(),
            "refreshed once"
        );
        // Two unanswered queries make it bad; the confirmed replacement takes its place.
        t.failed(&id_at(0, 1), addr(1), late);
        assert!(t.contains(&id_at(0, 1), addr(1)));
        t.failed(&id_at(0, 1), addr(1), late);
        assert!(!t.contains(&id_at(0, 1), addr(1)));
        assert!(t.contains(&id_at(0, 99), addr(99)));
    }

    #[test]
    fn verified_nodes_displace_unverified_and_strict_policy_refuses() {
        let now = Instant::now();
        let mut t = RoutingTable::new(own(), false, now);
        t.heard_from(id_at(3, 0), addr(500), true, true, now);
        for n in 0..K as u16 {
            t.heard_from(id_at(0, n), addr(n), n != 0, true, now);
        }
        t.heard_from(id_at(2, 0), addr(501), true, true, now);
        assert!(t.contains(&id_at(0, 0), addr(0)), "unverified still used");
        assert_eq!(
            t.heard_from(id_at(0, 50), addr(50), true, true, now),
            Inserted::Added
        );
        assert!(
            !t.contains(&id_at(0, 0), addr(0)),
            "displaced by a verified node"
        );
        assert_eq!(
            t.heard_from(id_at(0, 51), addr(51), false, true, now),
            Inserted::Replacement
        );

        let mut strict = RoutingTable::new(own(), true, now);
        assert_eq!(
            strict.heard_from(id_at(0, 1), addr(1), false, true, now),
            Inserted::Ignored
        );
        assert!(strict.is_empty());
    }

    #[test]
    fn random_ids_fall_in_their_bucket_and_rebuild_keeps_nodes() {
        let now = Instant::now();
        let mut t = RoutingTable::new(Id20([0x5a; 20]), false, now);
        for n in 0..200u16 {
            let mut b = [0u8; 20];
            b[0] = n as u8;
            b[1] = (n >> 8) as u8 ^ 0x33;
            b[19] = n as u8;
            t.heard_from(Id20(b), addr(n), true, true, now);
        }
        let buckets = t.bucket_count();
        assert!(buckets > 2);
        for idx in 0..buckets {
            for r in [[0u8; 20], [0xff; 20], [0x33; 20]] {
                let id = t.random_id_in_bucket(idx, r);
                let cpl = t.own_id().distance(&id).leading_zeros() as usize;
                assert_eq!(cpl.min(buckets - 1), idx);
            }
        }
        let before = t.len();
        t.rebuild(Id20([0xa5; 20]), now);
        assert_eq!(t.own_id(), Id20([0xa5; 20]));
        assert!(t.len() >= before.min(K), "{} of {before}", t.len());
        assert!(t.len() <= MAX_BUCKETS * K);
    }
}
