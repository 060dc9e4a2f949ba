//! Our external address, learned from the `ip` field of replies (BEP 42): a vote among the
//! last replies from distinct sources, so one lying node cannot move our node id.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

/// How many recent votes count.
const WINDOW: usize = 32;

pub struct IpVote {
    min_votes: usize,
    /// (voter, the address it saw us at); one entry per voter address.
    votes: VecDeque<(IpAddr, IpAddr)>,
    decided: Option<IpAddr>,
}

impl IpVote {
    pub fn new(min_votes: usize) -> Self {
        IpVote {
            min_votes: min_votes.max(1),
            votes: VecDeque::with_capacity(WINDOW),
            decided: None,
        }
    }

    /// Record that `voter` saw us at `seen`; returns the new external address when the
    /// decision changes: the address with the most votes, if it has at least `min_votes`
    /// and a strict majority of the window.
    pub fn vote(&mut self, voter: SocketAddr, seen: IpAddr) -> Option<IpAddr> {
        let voter = voter.ip();
        if let Some(i) = self.votes.iter().position(|(v, _)| *v == voter) {
            self.votes.remove(i);
        }
        if self.votes.len() == WINDOW {
            self.votes.pop_front();
        }
        self.votes.push_back((voter, seen));
        let count = |ip: IpAddr| self.votes.iter().filter(|(_, s)| *s == ip).count();
        let top = self
            .votes
            .iter()
            .map(|(_, s)| (*s, count(*s)))
            .max_by_key(|(_, n)| *n)?;
        if top.1 >= self.min_votes && top.1 * 2 > self.votes.len() && self.decided != Some(top.0) {
            self.decided = Some(top.0);
            return Some(top.0);
        }
        None
    }

    pub fn external(&self) -> Option<IpAddr> {
        self.decided
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voter(n: u8) -> SocketAddr {
        ([10, 0, 0, n], 6881).into()
    }

    #[test]
    fn majority_of_distinct_voters_decides() {
        let ours: IpAddr = [1, 2, 3, 4].into();
        let lie: IpAddr = [6, 6, 6, 6].into();
        let mut v = IpVote::new(3);
        assert_eq!(v.vote(voter(1), lie), None);
        // The same voter repeating itself counts once.
        for _ in 0..10 {
            assert_eq!(v.vote(voter(1), lie), None);
        }
        assert_eq!(v.vote(voter(2), ours), None);
        assert_eq!(v.vote(voter(3), ours), None);
        assert_eq!(v.vote(voter(4), ours), Some(ours));
        assert_eq!(v.vote(voter(5), ours), None, "reported once");
        assert_eq!(v.external(), Some(ours));
    }
}
