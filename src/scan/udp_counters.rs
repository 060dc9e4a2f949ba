//! Counters of the UDP plane one worker runs (uTP probes, DHT nodes, UDP tracker requests):
//! relaxed atomics in each worker's `WorkerCounters`, summed over the workers by `/metrics`
//! (`service::prometheus`) and by the run summary. Written by the worker thread only.
//!
//! The protocol cores keep their own plain counters (`proto::dht::DhtStats`); the worker
//! copies those here about once a second and when it ends ([`DhtCounters`]), so a scrape may
//! be a second behind the nodes. The uTP plane and the tracker adapter count here directly.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Most DHT nodes a scan runs (`dht.node_ids`), so the per-node gauges fit a fixed array.
pub const MAX_DHT_NODES: usize = crate::dht::host::MAX_NODE_IDS;

/// The uTP plane of one worker (see `scan::driver::utp_plane`).
#[derive(Debug, Default)]
pub struct UtpCounters {
    /// Outgoing uTP connects started (SYN sent).
    pub connects_started: AtomicU64,
    /// How outgoing connects ended: each started connect lands in exactly one of these
    /// (once it is over; the ones under way are in `open_outgoing`).
    pub connected: AtomicU64,
    /// No answer to the SYN within the connect deadline (or uTP's own retransmissions).
    pub connect_timed_out: AtomicU64,
    /// The peer answered the SYN with RESET, or an ICMP port unreachable came back.
    pub connect_refused: AtomicU64,
    /// Another ICMP error (host or network unreachable, …) or a protocol failure.
    pub connect_failed: AtomicU64,
    /// The scan stopped before the peer answered.
    pub connect_cancelled: AtomicU64,
    /// Incoming SYNs accepted.
    pub accepted: AtomicU64,
    /// Incoming SYNs ignored because the worker's share of `peer.max_incoming` was alive.
    pub incoming_refused: AtomicU64,
    /// Established connections (either direction) the peer ended with RESET.
    pub reset_by_peer: AtomicU64,
    /// RESETs we sent for packets of no connection of ours.
    pub resets_sent: AtomicU64,
    /// Such RESETs not sent: over `MAX_RESETS_PER_SEC`.
    pub resets_suppressed: AtomicU64,
    /// Packets of known connections that broke the protocol (ignored).
    pub ignored_packets: AtomicU64,
    /// Connections carrying a probe now (gauges).
    pub open_outgoing: AtomicU64,
    pub open_incoming: AtomicU64,
    /// Connections whose probe is over, still delivering our FIN (gauge).
    pub closing: AtomicU64,
}

/// One DHT node's routing table, by family and status (gauges, set once a second).
#[derive(Debug, Default)]
pub struct DhtNodeGauges {
    /// This worker runs the node (only running nodes are exported).
    pub running: AtomicBool,
    /// [ipv4, ipv6] × [good, questionable, bad].
    pub routing: [[AtomicU64; 3]; 2],
}

/// The DHT nodes of one worker and the scan's lookups on them (see `dht::scan`).
#[derive(Debug, Default)]
pub struct DhtCounters {
    /// Queries our nodes sent (lookups, pings, announces; retries included).
    pub queries_sent: AtomicU64,
    /// Replies (answers or errors) to our queries.
    pub replies: AtomicU64,
    /// Queries of ours that got no reply in time.
    pub timeouts: AtomicU64,
    /// Replies whose transaction id we never gave their sender (forged, or very late).
    pub replies_unmatched: AtomicU64,
    /// Queries other nodes sent us: answered, answered with an error, dropped (rate limit,
    /// size budget, read-only mode, full queue).
    pub queries_answered: AtomicU64,
    pub queries_errors: AtomicU64,
    pub queries_dropped: AtomicU64,
    /// KRPC datagrams that were not KRPC after all, or came on a socket no node uses.
    pub garbage: AtomicU64,
    pub datagrams_in: AtomicU64,
    pub datagrams_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Datagrams our nodes made but that were not sent: a loopback-bound node addressed a
    /// non-loopback address; the send queue was full (the engine's or the node's).
    pub unsent_unreachable: AtomicU64,
    pub unsent_queue_full: AtomicU64,
    /// `get_peers` lookups of the scan's torrents.
    pub lookups_started: AtomicU64,
    pub lookups_finished: AtomicU64,
    /// Finished lookups no node answered.
    pub lookups_failed: AtomicU64,
    /// Lookups that could not start: the node knew no other node yet (retried shortly).
    pub lookups_no_nodes: AtomicU64,
    /// Lookups under way now (gauge).
    pub lookups_running: AtomicU64,
    /// Distinct peers each finished lookup found, summed over lookups.
    pub peers_found: AtomicU64,
    /// `announce_peer` queries other nodes sent to ours.
    pub announces_received: AtomicU64,
    /// Per node (global node number).
    pub nodes: [DhtNodeGauges; MAX_DHT_NODES],
}

impl DhtCounters {
    /// Good nodes in every routing table of this worker's nodes.
    pub fn good_nodes(&self) -> u64 {
        self.nodes
            .iter()
            .flat_map(|n| &n.routing)
            .map(|family| family[0].load(Ordering::Relaxed))
            .sum()
    }
}

/// UDP tracker requests on one worker (see `scan::udp_tracker`).
#[derive(Debug, Default)]
pub struct UdpTrackerCounters {
    /// Replies dropped: the transaction id is not one we issue to the sender (forged, or
    /// from another address than the one asked).
    pub replies_forged: AtomicU64,
    /// Replies with a valid transaction id that nothing waits for (late or repeated).
    pub replies_late: AtomicU64,
    /// Datagrams shorter than a reply header.
    pub replies_short: AtomicU64,
    /// Requests the worker's send queue refused (resent on their retransmission timer).
    pub requests_unsent: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Sum of one counter over every worker.
pub fn total(
    workers: &[std::sync::Arc<crate::scan::driver::WorkerCounters>],
    f: impl Fn(&crate::scan::driver::WorkerCounters) -> &AtomicU64,
) -> u64 {
    workers.iter().map(|c| f(c).load(Ordering::Relaxed)).sum()
}

/// The uTP plane in the run summary (`utp` in `run --json`; see [`UtpCounters`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UtpSummary {
    pub connects_started: u64,
    pub connected: u64,
    pub connect_timed_out: u64,
    pub connect_refused: u64,
    pub connect_failed: u64,
    pub connect_cancelled: u64,
    pub accepted: u64,
    pub incoming_refused: u64,
    pub reset_by_peer: u64,
    pub resets_sent: u64,
    pub resets_suppressed: u64,
    pub ignored_packets: u64,
}

/// The DHT in the run summary (`dht` in `run --json`; see [`DhtCounters`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DhtSummary {
    pub queries_sent: u64,
    pub replies: u64,
    pub timeouts: u64,
    pub replies_unmatched: u64,
    pub queries_answered: u64,
    pub queries_errors: u64,
    pub queries_dropped: u64,
    pub lookups_started: u64,
    pub lookups_finished: u64,
    pub lookups_failed: u64,
    pub lookups_no_nodes: u64,
    pub peers_found: u64,
    pub announces_received: u64,
    /// Good nodes in the routing tables when the scan stopped.
    pub good_nodes: u64,
}

/// UDP tracker replies dropped and requests not sent (`udp_trackers` in `run --json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UdpTrackerSummary {
    pub replies_forged: u64,
    pub replies_late: u64,
    pub replies_short: u64,
    pub requests_unsent: u64,
}

/// Datagrams received on the workers' UDP sockets, by what they looked like
/// (`udp_datagrams` in `run --json`; see `scan::udp_demux`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UdpDatagramSummary {
    pub krpc: u64,
    pub utp: u64,
    pub tracker: u64,
    pub other: u64,
}

type Workers = [std::sync::Arc<crate::scan::driver::WorkerCounters>];

impl UtpSummary {
    pub fn of(w: &Workers) -> UtpSummary {
        UtpSummary {
            connects_started: total(w, |c| &c.utp.connects_started),
            connected: total(w, |c| &c.utp.connected),
            connect_timed_out: total(w, |c| &c.utp.connect_timed_out),
            connect_refused: total(w, |c| &c.utp.connect_refused),
            connect_failed: total(w, |c| &c.utp.connect_failed),
            connect_cancelled: total(w, |c| &c.utp.connect_cancelled),
            accepted: total(w, |c| &c.utp.accepted),
            incoming_refused: total(w, |c| &c.utp.incoming_refused),
            reset_by_peer: total(w, |c| &c.utp.reset_by_peer),
            resets_sent: total(w, |c| &c.utp.resets_sent),
            resets_suppressed: total(w, |c| &c.utp.resets_suppressed),
            ignored_packets: total(w, |c| &c.utp.ignored_packets),
        }
    }
}

impl DhtSummary {
    pub fn of(w: &Workers) -> DhtSummary {
        DhtSummary {
            queries_sent: total(w, |c| &c.dht.queries_sent),
            replies: total(w, |c| &c.dht.replies),
            timeouts: total(w, |c| &c.dht.timeouts),
            replies_unmatched: total(w, |c| &c.dht.replies_unmatched),
            queries_answered: total(w, |c| &c.dht.queries_answered),
            queries_errors: total(w, |c| &c.dht.queries_errors),
            queries_dropped: total(w, |c| &c.dht.queries_dropped),
            lookups_started: total(w, |c| &c.dht.lookups_started),
            lookups_finished: total(w, |c| &c.dht.lookups_finished),
            lookups_failed: total(w, |c| &c.dht.lookups_failed),
            lookups_no_nodes: total(w, |c| &c.dht.lookups_no_nodes),
            peers_found: total(w, |c| &c.dht.peers_found),
            announces_received: total(w, |c| &c.dht.announces_received),
            good_nodes: w.iter().map(|c| c.dht.good_nodes()).sum(),
        }
    }
}

impl UdpTrackerSummary {
    pub fn of(w: &Workers) -> UdpTrackerSummary {
        UdpTrackerSummary {
            replies_forged: total(w, |c| &c.udp_trackers.replies_forged),
            replies_late: total(w, |c| &c.udp_trackers.replies_late),
            replies_short: total(w, |c| &c.udp_trackers.replies_short),
            requests_unsent: total(w, |c| &c.udp_trackers.requests_unsent),
        }
    }
}

impl UdpDatagramSummary {
    pub fn of(w: &Workers) -> UdpDatagramSummary {
        UdpDatagramSummary {
            krpc: total(w, |c| &c.udp_krpc),
            utp: total(w, |c| &c.udp_utp),
            tracker: total(w, |c| &c.udp_tracker),
            other: total(w, |c| &c.udp_other),
        }
    }
}
