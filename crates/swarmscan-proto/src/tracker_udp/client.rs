//! The client side of BEP 15 as a sans-IO state machine: connect, announce and scrape
//! requests to any number of trackers, over whatever socket the caller owns.
//!
//! * Connection ids: one per tracker address, reused for every request made within
//!   [`CONNECTION_ID_LIFETIME_MS`] of receiving it (BEP 15: a client may use one for a
//!   minute); after that the next request connects again. A request that failed makes the
//!   tracker's id forgotten (a stale id is the usual cause of an error reply).
//! * Retransmission (BEP 15 "time outs"): a request not answered `retransmit_ms · 2ⁿ` after
//!   its n-th transmission (n from 0) is sent again, at most `max_retransmits` times; then
//!   it fails as timed out. BEP 15 says 15 s and up to n = 8 ([`ClientSettings::default`]).
//!   A request whose connection id expired while it waited connects again first.
//! * Keyed transaction ids (zmap style): the top [`SEQ_BITS`] bits are a per-tracker
//!   sequence number, the rest a keyed hash (SHA-256 of the client's secret, the tracker's
//!   address and port, and the sequence number). A reply whose id does not verify for its
//!   source address is dropped before any state is looked at ([`Dropped::Forged`]); an
//!   off-path forger passes that check once in 2²⁰ tries and must then still hit a sequence
//!   number that is in flight to that address.
//! * Bounded: at most `max_in_flight` requests on the wire per tracker (more wait their
//!   turn), at most `max_queued` waiting (more fail at once), and a tracker's state is
//!   dropped once nothing is pending and its connection id has expired.
//!
//! Time is milliseconds on the caller's clock; randomness (the secret) is an argument.
//!
//! ```
//! use std::net::SocketAddr;
//! use swarmscan_proto::tracker_udp::client::{Answer, Client, ClientSettings, Query};
//! use swarmscan_proto::tracker_udp::{AddressFamily, Request, Response};
//!
//! let tracker: SocketAddr = "127.0.0.1:6969".parse().unwrap();
//! let mut client = Client::new([7; 32], ClientSettings::default());
//! let id = client.request(0, tracker, Query::Scrape(vec![[1; 20]]));
//! // The caller sends what the client wants sent: a connect first.
//! let (to, bytes) = client.poll_transmit().unwrap();
//! assert_eq!(to, tracker);
//! let Ok(Request::Connect { transaction_id }) = Request::decode(&bytes) else { panic!() };
//! let reply = Response::Connect { transaction_id, connection_id: 42 };
//! client.handle_datagram(5, tracker, &reply.to_bytes(AddressFamily::V4)).unwrap();
//! // Then the scrape with the connection id.
//! let (_, bytes) = client.poll_transmit().unwrap();
//! let Ok(Request::Scrape(s)) = Request::decode(&bytes) else { panic!() };
//! assert_eq!(s.connection_id, 42);
//! let reply = Response::Scrape { transaction_id: s.transaction_id, stats: vec![] };
//! client.handle_datagram(9, tracker, &reply.to_bytes(AddressFamily::V4)).unwrap();
//! assert_eq!(client.poll_event(), Some((id, Ok(Answer::Scrape(vec![])))));
//! ```

use super::{
    peek_transaction_id, AddressFamily, AnnounceRequest, AnnounceResponse, Request, Response,
    ScrapeRequest, ScrapeStats, UdpError, CONNECTION_ID_LIFETIME_MS, MAX_SCRAPE_HASHES,
};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

/// Milliseconds on the caller's clock.
pub type Millis = u64;

/// Bits of a transaction id that carry the per-tracker sequence number.
pub const SEQ_BITS: u32 = 12;
const SEQ_COUNT: u16 = 1 << SEQ_BITS;
const MAC_BITS: u32 = 32 - SEQ_BITS;
const MAC_MASK: u32 = (1 << MAC_BITS) - 1;

/// How the client paces its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSettings {
    /// Wait after the first transmission of a request before sending it again, ms; doubles
    /// after every transmission (BEP 15: 15 s).
    pub retransmit_ms: Millis,
    /// Retransmissions before a request fails (BEP 15: up to n = 8, 3840 s after the last).
    pub max_retransmits: u32,
    /// Requests on the wire to one tracker at once (at most 2¹² − 1); more wait.
    pub max_in_flight: usize,
    /// Requests waiting for one tracker; more fail at once ([`Failure::Overloaded`]).
    pub max_queued: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            retransmit_ms: 15_000,
            max_retransmits: 8,
            max_in_flight: 64,
            max_queued: 100_000,
        }
    }
}

/// What to ask a tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// An announce; its `connection_id` and `transaction_id` are filled in by the client.
    Announce(AnnounceRequest),
    /// A scrape of at most [`MAX_SCRAPE_HASHES`] info-hashes.
    Scrape(Vec<[u8; 20]>),
}

/// A request's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Announce(AnnounceResponse),
    /// One entry per info-hash asked, in order (a tracker that sent fewer gives fewer;
    /// entries past the hashes asked are ignored).
    Scrape(Vec<ScrapeStats>),
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("timed out")]
    TimedOut,
    /// The tracker's error reply (action 3).
    #[error("tracker error: {0}")]
    Tracker(String),
    /// A reply to this request that could not be read, or of another kind.
    #[error("{0}")]
    Malformed(UdpError),
    /// An ICMP error (or a failed send) for the tracker's address, as the caller words it.
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("too many requests queued for this tracker")]
    Overloaded,
    #[error("{0} info-hashes in one scrape, more than the {MAX_SCRAPE_HASHES} that fit a reply")]
    TooManyHashes(usize),
}

/// Identifies a request in [`Client::poll_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// Why [`Client::handle_datagram`] did not use a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Shorter than a reply header.
    TooShort,
    /// Its transaction id is not one we issue to that address (checked without state).
    Forged,
    /// A valid id, but nothing waits for it (a late or repeated reply).
    NotPending,
}

/// One transmission in flight: sequence number, how often sent, when to act again.
#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u16,
    sent: u32,
    deadline: Millis,
}

#[derive(Debug)]
struct Pending {
    id: RequestId,
    query: Query,
    /// Transmissions so far (kept across a reconnect, so the total stays bounded).
    sent: u32,
    deadline: Millis,
}

#[derive(Debug, Default)]
struct TrackerState {
    /// Connection id and when it was received.
    connection: Option<(u64, Millis)>,
    /// The connect request in flight.
    connect: Option<Sent>,
    /// Requests sent, by sequence number.
    in_flight: HashMap<u16, Pending>,
    /// Requests waiting for a connection id or a free place in flight, oldest first.
    queued: VecDeque<Pending>,
    next_seq: u16,
}

impl TrackerState {
    fn connection_id(&self, now: Millis) -> Option<u64> {
        self.connection
            .filter(|(_, at)| now.saturating_sub(*at) < CONNECTION_ID_LIFETIME_MS)
            .map(|(id, _)| id)
    }

    fn idle(&self, now: Millis) -> bool {
        self.connect.is_none()
            && self.in_flight.is_empty()
            && self.queued.is_empty()
            && self.connection_id(now).is_none()
    }

    /// A sequence number not in use by this tracker's transactions.
    fn alloc_seq(&mut self) -> u16 {
        loop {
            let seq = self.next_seq;
            self.next_seq = (self.next_seq + 1) % SEQ_COUNT;
            let used =
                self.connect.is_some_and(|c| c.seq == seq) || self.in_flight.contains_key(&seq);
            if !used {
                return seq;
            }
        }
    }

    /// The earliest time this tracker needs attention.
    fn deadline(&self) -> Option<Millis> {
        let requests = self.in_flight.values().map(|p| p.deadline);
        let connect = self.connect.map(|c| c.deadline);
        let expiry = self
            .connection
            .filter(|_| self.in_flight.is_empty() && self.queued.is_empty())
            .map(|(_, at)| at + CONNECTION_ID_LIFETIME_MS);
        requests.chain(connect).chain(expiry).min()
    }
}

/// The UDP tracker client (see the module docs).
pub struct Client {
    secret: [u8; 32],
    settings: ClientSettings,
    trackers: HashMap<SocketAddr, TrackerState>,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<(RequestId, Result<Answer, Failure>)>,
    next_id: u64,
    /// No deadline of any tracker is earlier (recomputed when one passes).
    earliest: Option<Millis>,
}

impl Client {
    /// A client whose transaction ids are keyed with `secret` (random, never sent).
    pub fn new(secret: [u8; 32], settings: ClientSettings) -> Client {
        Client {
            secret,
            settings: ClientSettings {
                max_in_flight: settings.max_in_flight.clamp(1, usize::from(SEQ_COUNT) - 1),
                ..settings
            },
            trackers: HashMap::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            next_id: 0,
            earliest: None,
        }
    }

    /// Asks `tracker` `query`; the answer comes from [`Client::poll_event`] under the id
    /// returned, and what to send from [`Client::poll_transmit`].
    pub fn request(&mut self, now: Millis, tracker: SocketAddr, query: Query) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        if let Query::Scrape(hashes) = &query {
            if hashes.len() > MAX_SCRAPE_HASHES {
                self.events
                    .push_back((id, Err(Failure::TooManyHashes(hashes.len()))));
                return id;
            }
        }
        let t = self.trackers.entry(tracker).or_default();
        if t.queued.len() >= self.settings.max_queued {
            self.events.push_back((id, Err(Failure::Overloaded)));
            return id;
        }
        t.queued.push_back(Pending {
            id,
            query,
            sent: 0,
            deadline: now,
        });
        self.drive(now, tracker);
        id
    }

    /// A datagram from `from`: a reply to one of our requests, or dropped (and why).
    pub fn handle_datagram(
        &mut self,
        now: Millis,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), Dropped> {
        let tid = peek_transaction_id(bytes).ok_or(Dropped::TooShort)?;
        let seq = (tid >> MAC_BITS) as u16;
        if tid & MAC_MASK != mac(&self.secret, from, seq) {
            return Err(Dropped::Forged);
        }
        let t = self.trackers.get_mut(&from).ok_or(Dropped::NotPending)?;
        let family = AddressFamily::of(&from);
        if t.connect.is_some_and(|c| c.seq == seq) {
            t.connect = None;
            let request = Request::Connect {
                transaction_id: tid,
            };
            match Response::decode(bytes, family).and_then(|r| r.check_answers(&request)) {
                Ok(Response::Connect { connection_id, .. }) => {
                    t.connection = Some((connection_id, now));
                    self.drive(now, from);
                }
                other => {
                    // Everything waiting for this connect fails with its reason.
                    let failure = match other {
                        Ok(reply) => unexpected(&request, &reply),
                        Err(e) => failure_of(e),
                    };
                    for p in std::mem::take(&mut t.queued) {
                        self.events.push_back((p.id, Err(failure.clone())));
                    }
                    t.connection = None;
                }
            }
            return Ok(());
        }
        let p = t.in_flight.remove(&seq).ok_or(Dropped::NotPending)?;
        let request = match &p.query {
            Query::Announce(a) => Request::Announce(AnnounceRequest {
                transaction_id: tid,
                ..a.clone()
            }),
            Query::Scrape(h) => Request::Scrape(ScrapeRequest {
                connection_id: 0,
                transaction_id: tid,
                info_hashes: h.clone(),
            }),
        };
        let result = match Response::decode(bytes, family).and_then(|r| r.check_answers(&request)) {
            Ok(Response::Announce(a)) => Ok(Answer::Announce(a)),
            Ok(Response::Scrape { mut stats, .. }) => {
                if let Query::Scrape(h) = &p.query {
                    stats.truncate(h.len());
                }
                Ok(Answer::Scrape(stats))
            }
            Ok(reply) => Err(unexpected(&request, &reply)),
            Err(e) => Err(failure_of(e)),
        };
        if result.is_err() {
            t.connection = None;
        }
        self.events.push_back((p.id, result));
        // A place in flight is free.
        self.drive(now, from);
        Ok(())
    }

    /// A datagram to `tracker` failed (an ICMP error such as port unreachable, or the send
    /// itself): every request to it fails with `why`.
    pub fn handle_unreachable(&mut self, tracker: SocketAddr, why: &str) {
        let Some(t) = self.trackers.remove(&tracker) else {
            return;
        };
        let failed = t.in_flight.into_values().chain(t.queued);
        for p in failed {
            self.events
                .push_back((p.id, Err(Failure::Unreachable(why.to_string()))));
        }
    }

    /// Retransmits and fails what is due at `now`; call when [`Client::next_timeout`] has
    /// passed (calling more often is harmless).
    pub fn handle_timeout(&mut self, now: Millis) {
        if self.earliest.is_none_or(|e| e > now) {
            return;
        }
        let addrs: Vec<SocketAddr> = self.trackers.keys().copied().collect();
        for addr in addrs {
            self.expire(now, addr);
        }
        self.trackers.retain(|_, t| !t.idle(now));
        self.earliest = self
            .trackers
            .values()
            .filter_map(TrackerState::deadline)
            .min();
    }

    /// When [`Client::handle_timeout`] has work next (looks at every pending request).
    pub fn next_timeout(&self) -> Option<Millis> {
        self.trackers
            .values()
            .filter_map(TrackerState::deadline)
            .min()
    }

    /// The next datagram to send: destination and bytes.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.outbox.pop_front()
    }

    /// The next finished request.
    pub fn poll_event(&mut self) -> Option<(RequestId, Result<Answer, Failure>)> {
        self.events.pop_front()
    }

    /// Trackers with state (pending requests or a live connection id).
    pub fn trackers(&self) -> usize {
        self.trackers.len()
    }

    fn wait(&self, sent: u32) -> Millis {
        // sent ≥ 1: the wait after the n-th transmission is retransmit_ms · 2ⁿ, n = sent − 1.
        let n = sent.saturating_sub(1).min(30);
        self.settings.retransmit_ms.saturating_mul(1 << n)
    }

    fn note_deadline(&mut self, at: Millis) {
        self.earliest = Some(self.earliest.map_or(at, |e| e.min(at)));
    }

    /// Timeouts of one tracker's transactions at `now`.
    fn expire(&mut self, now: Millis, addr: SocketAddr) {
        let max = self.settings.max_retransmits;
        let Some(t) = self.trackers.get_mut(&addr) else {
            return;
        };
        let mut resend_connect = None;
        if let Some(c) = t.connect.as_mut().filter(|c| c.deadline <= now) {
            if c.sent > max {
                t.connect = None;
                for p in std::mem::take(&mut t.queued) {
                    self.events.push_back((p.id, Err(Failure::TimedOut)));
                }
            } else {
                c.sent += 1;
                resend_connect = Some(*c);
            }
        }
        let late: Vec<u16> = t
            .in_flight
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        let cid = t.connection_id(now);
        let mut again = Vec::new();
        for seq in late {
            let Some(mut p) = t.in_flight.remove(&seq) else {
                continue;
            };
            if p.sent > max {
                t.connection = None;
                self.events.push_back((p.id, Err(Failure::TimedOut)));
            } else if let Some(cid) = cid {
                p.sent += 1;
                again.push((seq, cid, p));
            } else {
                // Its connection id expired: connect again first, then send it.
                t.queued.push_front(p);
            }
        }
        for (seq, cid, mut p) in again {
            p.deadline = now + self.wait(p.sent);
            let bytes = encode(&p.query, cid, self.tid(addr, seq));
            self.outbox.push_back((addr, bytes));
            self.note_deadline(p.deadline);
            if let Some(t) = self.trackers.get_mut(&addr) {
                t.in_flight.insert(seq, p);
            }
        }
        if let Some(mut c) = resend_connect {
            c.deadline = now + self.wait(c.sent);
            let tid = self.tid(addr, c.seq);
            self.outbox.push_back((addr, connect_bytes(tid)));
            self.note_deadline(c.deadline);
            if let Some(t) = self.trackers.get_mut(&addr) {
                t.connect = Some(c);
            }
        }
        self.drive(now, addr);
    }

    /// Sends what can be sent to `addr`: queued requests while a connection id is valid and
    /// places are free in flight, else a connect if one is needed and none is under way.
    fn drive(&mut self, now: Millis, addr: SocketAddr) {
        let max_in_flight = self.settings.max_in_flight;
        let Some(t) = self.trackers.get_mut(&addr) else {
            return;
        };
        if t.queued.is_empty() {
            return;
        }
        let mut sends = Vec::new();
        match t.connection_id(now) {
            Some(cid) => {
                while t.in_flight.len() < max_in_flight {
                    let Some(mut p) = t.queued.pop_front() else {
                        break;
                    };
                    let seq = t.alloc_seq();
                    p.sent += 1;
                    sends.push((seq, Some(cid), p.sent));
                    t.in_flight.insert(seq, p);
                }
            }
            None if t.connect.is_none() => {
                let seq = t.alloc_seq();
                t.connect = Some(Sent {
                    seq,
                    sent: 1,
                    deadline: 0,
                });
                sends.push((seq, None, 1));
            }
            None => {}
        }
        for (seq, cid, sent) in sends {
            let tid = self.tid(addr, seq);
            let deadline = now + self.wait(sent);
            let Some(t) = self.trackers.get_mut(&addr) else {
                return;
            };
            let bytes = match cid {
                None => {
                    if let Some(c) = &mut t.connect {
                        c.deadline = deadline;
                    }
                    connect_bytes(tid)
                }
                Some(cid) => {
                    let Some(p) = t.in_flight.get_mut(&seq) else {
                        continue;
                    };
                    p.deadline = deadline;
                    encode(&p.query, cid, tid)
                }
            };
            self.outbox.push_back((addr, bytes));
            self.note_deadline(deadline);
        }
    }

    fn tid(&self, addr: SocketAddr, seq: u16) -> u32 {
        (u32::from(seq) << MAC_BITS) | mac(&self.secret, addr, seq)
    }
}

/// The keyed part of a transaction id for `seq` to `addr`.
fn mac(secret: &[u8; 32], addr: SocketAddr, seq: u16) -> u32 {
    let mut h = Sha256::new();
    h.update(secret);
    match addr.ip() {
        IpAddr::V4(v4) => h.update(v4.octets()),
        IpAddr::V6(v6) => h.update(v6.octets()),
    }
    h.update(addr.port().to_be_bytes());
    h.update(seq.to_be_bytes());
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]]) & MAC_MASK
}

fn encode(query: &Query, connection_id: u64, transaction_id: u32) -> Vec<u8> {
    match query {
        Query::Announce(a) => Request::Announce(AnnounceRequest {
            connection_id,
            transaction_id,
            ..a.clone()
        }),
        Query::Scrape(h) => Request::Scrape(ScrapeRequest {
            connection_id,
            transaction_id,
            info_hashes: h.clone(),
        }),
    }
    .to_bytes()
}

fn connect_bytes(transaction_id: u32) -> Vec<u8> {
    Request::Connect { transaction_id }.to_bytes()
}

fn failure_of(e: UdpError) -> Failure {
    match e {
        UdpError::Tracker(message) => Failure::Tracker(message),
        e => Failure::Malformed(e),
    }
}

/// A reply `check_answers` let through that is not of the request's action (it lets none
/// through; kept as an error rather than a panic on network data).
fn unexpected(request: &Request, reply: &Response) -> Failure {
    Failure::Malformed(UdpError::UnexpectedAction {
        expected: request.action(),
        found: reply.action(),
    })
}

#[cfg(test)]
mod tests;
