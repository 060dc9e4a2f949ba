//! Records producers send to the writer thread.
//!
//! Times are Unix time in milliseconds ([`UnixMs`]); the producer takes them from its own clock,
//! so the store never reads a clock for data it records.

use serde::Serialize;
use std::net::SocketAddr;

/// Unix time in milliseconds.
pub type UnixMs = i64;

/// Row id of a torrent in the `torrents` table.
pub type TorrentId = i64;

/// Where a torrent came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TorrentSource {
    /// A .torrent file.
    File,
    /// A magnet link.
    Magnet,
    /// A bare info-hash.
    Hash,
}

impl TorrentSource {
    /// Name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            TorrentSource::File => "file",
            TorrentSource::Magnet => "magnet",
            TorrentSource::Hash => "hash",
        }
    }
}

/// A torrent to register (or update once its metadata is known; matched by info-hash).
#[derive(Debug, Clone, PartialEq)]
pub struct TorrentRecord {
    /// BitTorrent v1 info-hash (SHA-1), if the torrent has one.
    pub info_hash_v1: Option<[u8; 20]>,
    /// BitTorrent v2 info-hash (SHA-256), if the torrent has one.
    pub info_hash_v2: Option<[u8; 32]>,
    /// Display name, when known.
    pub name: Option<String>,
    /// Number of pieces, when the metadata is known.
    pub piece_count: Option<u32>,
    /// Piece length in bytes, when known.
    pub piece_length: Option<u64>,
    /// Total content size in bytes, when known.
    pub total_size: Option<u64>,
    /// Where it came from.
    pub source: TorrentSource,
    /// When it was added.
    pub added_at: UnixMs,
    /// Tracker URLs by tier (BEP 12), so a later `run` on the database can announce.
    pub trackers: Vec<Vec<String>>,
}

/// A peer source. The values are bits of the `peers.sources` mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum PeerSource {
    /// HTTP(S) tracker announce.
    TrackerHttp = 1,
    /// UDP tracker announce.
    TrackerUdp = 2,
    /// DHT get_peers.
    Dht = 4,
    /// Peer exchange (BEP 11).
    Pex = 8,
    /// The peer connected to us.
    Incoming = 16,
    /// Named by the input itself (a magnet's `x.pe`) or resumed from the database: not a
    /// discovery source, so not in [`PeerSource::ALL`] nor in reports.
    Config = 32,
}

impl PeerSource {
    /// All sources, in report order.
    pub const ALL: [PeerSource; 5] = [
        PeerSource::TrackerHttp,
        PeerSource::TrackerUdp,
        PeerSource::Dht,
        PeerSource::Pex,
        PeerSource::Incoming,
    ];

    /// The bit in `peers.sources`.
    pub fn bit(self) -> i64 {
        self as u8 as i64
    }

    /// The bit in an in-memory source mask ([`PeerEntry::sources`](crate::scan::peer_table::PeerEntry)).
    pub const fn mask(self) -> u8 {
        self as u8
    }

    /// Name used in reports and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerSource::TrackerHttp => "tracker_http",
            PeerSource::TrackerUdp => "tracker_udp",
            PeerSource::Dht => "dht",
            PeerSource::Pex => "pex",
            PeerSource::Incoming => "incoming",
            PeerSource::Config => "config",
        }
    }

    /// The source with this bit value.
    pub fn from_bit(bit: i64) -> Option<PeerSource> {
        PeerSource::ALL.into_iter().find(|s| s.bit() == bit)
    }

    /// Names of every source in a mask, joined by `+`.
    pub fn mask_names(mask: i64) -> String {
        let names: Vec<&str> = PeerSource::ALL
            .iter()
            .filter(|s| mask & s.bit() != 0)
            .map(|s| s.as_str())
            .collect();
        names.join("+")
    }
}

/// One discovery request (announce, DHT lookup, PEX message, incoming connection) and the
/// addresses it returned. The writer decides which addresses are new (it is the only place that
/// knows every peer), so `discovery_requests.new/duplicate` are exact.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryRecord {
    /// When the request finished.
    pub at: UnixMs,
    /// The torrent asked about.
    pub torrent_id: TorrentId,
    /// Which source.
    pub source: PeerSource,
    /// Tracker URL (trackers only).
    pub tracker: Option<String>,
    /// How long the request took.
    pub duration_ms: u32,
    /// Why it failed, if it did (then `peers` is usually empty).
    pub error: Option<String>,
    /// Addresses received (duplicates within one answer count as duplicates).
    pub peers: Vec<SocketAddr>,
}

/// How a tracker's next announce was scheduled after a successful announce (the latest one
/// per torrent and tracker is kept in `tracker_state`).
#[derive(Debug, Clone, PartialEq)]
pub struct TrackerScheduleRecord {
    /// When the announce finished.
    pub at: UnixMs,
    /// Which torrent.
    pub torrent_id: TorrentId,
    /// Tracker URL.
    pub tracker: String,
    /// The tracker's `interval` as sent, seconds (`None` = not sent).
    pub interval: Option<i64>,
    /// The tracker's `min interval` as sent, seconds (`None` = not sent).
    pub min_interval: Option<i64>,
    /// The wait actually used until the next announce, seconds.
    pub next_secs: f64,
    /// What decided it: "ours", "interval" or "min_interval".
    pub decided_by: &'static str,
    /// Tracker values that were capped or ignored, if any.
    pub notes: Option<String>,
}

/// A tracker scrape result.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeRecord {
    /// When.
    pub at: UnixMs,
    /// Which torrent.
    pub torrent_id: TorrentId,
    /// Tracker URL.
    pub tracker: String,
    /// Seeders.
    pub complete: i64,
    /// Leechers.
    pub incomplete: i64,
    /// Completed downloads as counted by the tracker.
    pub downloaded: i64,
}

/// One DHT `get_peers` lookup of a torrent (table `dht_lookups`).
#[derive(Debug, Clone, PartialEq)]
pub struct DhtLookupRecord {
    /// When it finished.
    pub at: UnixMs,
    pub torrent_id: TorrentId,
    pub duration_ms: u32,
    /// Nodes queried (queries sent), replies, timeouts.
    pub queried: u32,
    pub replies: u32,
    pub timeouts: u32,
    /// Distinct peers received.
    pub peers: u32,
    /// A BEP 33 scrape lookup (asks for bloom filters; libtorrent then sends no peers).
    pub scrape: bool,
    /// BEP 33 estimates of seeds and downloaders from the nodes' bloom filters (None when no
    /// node sent filters).
    pub seeds_estimate: Option<f64>,
    pub peers_estimate: Option<f64>,
}

/// A DHT node to contact again in the next run (table `dht_nodes`).
#[derive(Debug, Clone, PartialEq)]
pub struct DhtNodeRecord {
    pub id: [u8; 20],
    pub addr: SocketAddr,
    /// When it last answered us.
    pub seen_at: UnixMs,
}

/// One of our DHT nodes' id, to start the next run with (table `dht_node_ids`).
#[derive(Debug, Clone, PartialEq)]
pub struct DhtNodeIdRecord {
    /// The node's number, 0..`dht.node_ids`.
    pub node: u32,
    pub id: [u8; 20],
    /// Our external address the id was derived from (BEP 42); `None`: not derived from one
    /// (random, or our address is exempt: loopback, private).
    pub external_ip: Option<std::net::IpAddr>,
    /// When it was written.
    pub updated_at: UnixMs,
}

/// Periodic statistics from the engine.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatsRecord {
    /// When.
    pub at: UnixMs,
    /// Peers in the engine's tables.
    pub peers_known: i64,
    /// Probes in flight.
    pub in_flight: i64,
    /// Probes finished per second since the last stats record.
    pub probes_per_sec: f64,
    /// Confirmed downloads so far.
    pub confirmed: i64,
    /// Peers due but waiting for a connect token or slot.
    pub due_queue: i64,
    /// Records waiting in producers' overflow buffers.
    pub writer_overflow: i64,
    /// Times a producer found the writer channel full (cumulative).
    pub writer_backpressure: i64,
    /// Resident memory, bytes.
    pub rss_bytes: i64,
    /// CPU use since the last stats record, percent of one core.
    pub cpu_percent: f64,
}

/// What kind of evaluation attempt a probe was (thesis table 5.7 rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeEvent {
    /// First attempt to reach this peer.
    FirstContact,
    /// Any later attempt.
    LaterContact,
    /// The peer connected to us.
    Incoming,
    /// A live observation on a watched connection (kept open after the answer): not an
    /// evaluation attempt of the thesis' table 5.7, reported apart.
    Watched,
}

impl ProbeEvent {
    /// All events, in report order.
    pub const ALL: [ProbeEvent; 4] = [
        ProbeEvent::FirstContact,
        ProbeEvent::LaterContact,
        ProbeEvent::Incoming,
        ProbeEvent::Watched,
    ];

    /// Name used in reports and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeEvent::FirstContact => "first_contact",
            ProbeEvent::LaterContact => "later_contact",
            ProbeEvent::Incoming => "incoming",
            ProbeEvent::Watched => "watched",
        }
    }

    /// How a crossing confirmed by a contact of this kind was seen: `live` on a watched
    /// connection, `incoming` on a connection the peer opened, `revisit` by a probe of ours.
    pub fn crossing_seen(self) -> &'static str {
        match self {
            ProbeEvent::Watched => "live",
            ProbeEvent::Incoming => "incoming",
            ProbeEvent::FirstContact | ProbeEvent::LaterContact => "revisit",
        }
    }
}

/// Why a probe failed (thesis table 5.7 columns, plus the classes we add).
///
/// Mapping from a probe's end without progress: socket errors by errno
/// ([`ErrorClass::from_errno`]); quiet timeout, message cap or duration bound → `TimedOut`;
/// orderly EOF before progress → `Broken`; wrong handshake → `UnknownProtocol`; another
/// torrent → `UnknownInfoHash`; a malformed message → `ProtocolError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Connect or quiet timeout with no usable answer.
    TimedOut,
    /// Connection refused (RST to SYN).
    Refused,
    /// Reset by peer.
    Reset,
    /// EOF or EPIPE in the middle of the conversation.
    Broken,
    /// No route to host.
    NoRoute,
    /// Network unreachable.
    NetUnreachable,
    /// The peer does not speak BitTorrent.
    UnknownProtocol,
    /// The peer does not know the torrent (or an incoming peer asked for one we do not scan).
    UnknownInfoHash,
    /// MSE/PE handshake failed.
    MseFailed,
    /// The peer sent a malformed message before telling its progress.
    ProtocolError,
    /// uTP: the SYN went unanswered, or data stayed unacked through every retransmission.
    UtpTimedOut,
    /// uTP: the peer answered our SYN with RESET, or its port is closed (ICMP unreachable).
    UtpRefused,
    /// uTP: the peer sent RESET on an established connection.
    UtpReset,
    /// uTP: the peer's packets broke the protocol too often (we reset the connection).
    UtpProtocol,
    /// Any other OS error (errno).
    Other(i32),
}

impl ErrorClass {
    /// Name stored in the database and shown in reports (`other:<errno>` for [`ErrorClass::Other`]).
    pub fn name(self) -> String {
        match self {
            ErrorClass::TimedOut => "timed_out".into(),
            ErrorClass::Refused => "refused".into(),
            ErrorClass::Reset => "reset".into(),
            ErrorClass::Broken => "broken".into(),
            ErrorClass::NoRoute => "no_route".into(),
            ErrorClass::NetUnreachable => "net_unreachable".into(),
            ErrorClass::UnknownProtocol => "unknown_protocol".into(),
            ErrorClass::UnknownInfoHash => "unknown_info_hash".into(),
            ErrorClass::MseFailed => "mse_failed".into(),
            ErrorClass::ProtocolError => "protocol_error".into(),
            ErrorClass::UtpTimedOut => "utp_timed_out".into(),
            ErrorClass::UtpRefused => "utp_refused".into(),
            ErrorClass::UtpReset => "utp_reset".into(),
            ErrorClass::UtpProtocol => "utp_protocol".into(),
            ErrorClass::Other(errno) => format!("other:{errno}"),
        }
    }

    /// Classifies an OS error number (Linux values) from a failed connect/send/recv.
    pub fn from_errno(errno: i32) -> ErrorClass {
        match errno {
            libc::ETIMEDOUT => ErrorClass::TimedOut,
            libc::ECONNREFUSED => ErrorClass::Refused,
            libc::ECONNRESET => ErrorClass::Reset,
            libc::EPIPE => ErrorClass::Broken,
            libc::EHOSTUNREACH => ErrorClass::NoRoute,
            libc::ENETUNREACH => ErrorClass::NetUnreachable,
            other => ErrorClass::Other(other),
        }
    }

    /// Classifies the error number a uTP connection ended with (see `scan::driver::utp_plane`:
    /// ETIMEDOUT, ECONNREFUSED, ECONNRESET, EPROTO); others as for TCP.
    pub fn from_utp_errno(errno: i32) -> ErrorClass {
        match errno {
            libc::ETIMEDOUT => ErrorClass::UtpTimedOut,
            libc::ECONNREFUSED => ErrorClass::UtpRefused,
            libc::ECONNRESET => ErrorClass::UtpReset,
            libc::EPROTO => ErrorClass::UtpProtocol,
            other => ErrorClass::from_errno(other),
        }
    }
}

/// Name of a successful probe in the outcome-count table.
pub const SUCCESS_CLASS: &str = "success";

/// Pieces a peer advertised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Pieces the peer has (bitfield + haves, or all for have_all).
    pub have: u32,
    /// Pieces in the torrent; 0 when the metadata is not known yet (progress unknown).
    pub pieces: u32,
}

impl Progress {
    /// have / pieces, or `None` when the piece count is unknown.
    pub fn fraction(self) -> Option<f64> {
        (self.pieces > 0).then(|| f64::from(self.have.min(self.pieces)) / f64::from(self.pieces))
    }
}

/// How a probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    /// The peer answered; what it advertised.
    Success(Progress),
    /// It did not.
    Failed(ErrorClass),
}

/// Transport flags of a contact (bits of `peers.transport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Transport(pub u8);

impl Transport {
    /// TCP.
    pub const TCP: Transport = Transport(1);
    /// uTP.
    pub const UTP: Transport = Transport(2);
    /// MSE/PE encrypted.
    pub const MSE: Transport = Transport(4);
    /// IPv6.
    pub const IPV6: Transport = Transport(8);
    /// The peer connected to us.
    pub const INCOMING: Transport = Transport(16);

    /// Both sets of flags.
    pub fn union(self, other: Transport) -> Transport {
        Transport(self.0 | other.0)
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: Transport) -> bool {
        self.0 & other.0 == other.0
    }

    /// "tcp+mse+ipv6" style names.
    pub fn names(self) -> String {
        let all = [
            (Self::TCP, "tcp"),
            (Self::UTP, "utp"),
            (Self::MSE, "mse"),
            (Self::IPV6, "ipv6"),
            (Self::INCOMING, "incoming"),
        ];
        let names: Vec<&str> = all
            .iter()
            .filter(|(f, _)| self.contains(*f))
            .map(|(_, n)| *n)
            .collect();
        names.join("+")
    }
}

impl std::ops::BitOr for Transport {
    type Output = Transport;
    fn bitor(self, rhs: Transport) -> Transport {
        self.union(rhs)
    }
}

/// The result of one peer evaluation attempt, filled by the scan code.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOutcome {
    /// The torrent.
    pub torrent_id: TorrentId,
    /// The peer's identity address: for outgoing probes the address dialled; for incoming
    /// peers the IP with the listen port from the extension handshake (`p`) when known.
    pub addr: SocketAddr,
    /// First contact, later contact or incoming.
    pub event: ProbeEvent,
    /// When the peer's progress was seen (its first progress message; for a watched
    /// connection, the message observed); without progress, when the connection started.
    pub at: UnixMs,
    /// Progress or error class.
    pub result: ProbeResult,
    /// Client name (from peer-id or extension handshake `v`).
    pub client: Option<String>,
    /// The peer's 20-byte peer-id.
    pub peer_id: Option<[u8; 20]>,
    /// Transport flags of this contact.
    pub transport: Transport,
    /// Time to connect, ms (outgoing).
    pub connect_ms: Option<u32>,
    /// Whole probe, ms.
    pub duration_ms: u32,
    /// Longest gap between two messages, ms (thesis figure 5.1).
    pub longest_gap_ms: Option<u32>,
    /// Messages received.
    pub messages: u32,
    /// When the scheduler wants to visit again (None = not again); stored for restart resume.
    pub next_visit_at: Option<UnixMs>,
    /// An incoming peer that gave no listen port (BEP 10 `p`): `addr` is the connection's
    /// source address, an identity of this connection only. When the same download is
    /// confirmed under the peer's listen address too, it is counted there (see the writer).
    pub portless: bool,
}

/// Everything the writer accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Register or update a torrent (matched by info-hash).
    Torrent(TorrentRecord),
    /// A discovery request and the addresses it returned.
    Discovery(DiscoveryRecord),
    /// A probe outcome.
    Outcome(Box<ProbeOutcome>),
    /// A scrape result.
    Scrape(ScrapeRecord),
    /// A tracker's announce schedule.
    TrackerSchedule(TrackerScheduleRecord),
    /// Periodic statistics.
    Stats(StatsRecord),
    /// A DHT `get_peers` lookup's counts and BEP 33 estimates (its peers come as a
    /// `Discovery` record of source `dht`).
    DhtLookup(DhtLookupRecord),
    /// The DHT nodes worth contacting in the next run (replaces those kept before).
    DhtNodes(Vec<DhtNodeRecord>),
    /// Our DHT nodes' ids, kept for the next run (upserted by node number; other numbers'
    /// rows stay).
    DhtNodeIds(Vec<DhtNodeIdRecord>),
    /// An incoming connection that could not be tied to a torrent we scan (unknown info-hash,
    /// or no BitTorrent handshake): counted in table 5.7 under `incoming`, no peer row.
    UnmatchedIncoming {
        /// When.
        at: UnixMs,
        /// Why it could not be matched.
        error: ErrorClass,
    },
    /// A flow recorded by `swarmscan sink`.
    SinkFlow(Box<SinkFlowRecord>),
    /// The answer to a reverse DNS (PTR) query for a peer's address (`geo.reverse_dns`).
    HostDomain(HostDomainRecord),
}

/// One TCP connection or UDP flow the sink recorded (`sink_flows`).
#[derive(Debug, Clone, PartialEq)]
pub struct SinkFlowRecord {
    /// `tcp` or `udp`.
    pub transport: &'static str,
    /// The classifier's protocol name.
    pub protocol: &'static str,
    /// The sender (anonymised by the writer per `privacy.ip`).
    pub source: SocketAddr,
    /// Where it was sent: the original destination (before a REDIRECT).
    pub destination: SocketAddr,
    /// First byte or datagram.
    pub first_at: UnixMs,
    /// Last byte or datagram.
    pub last_at: UnixMs,
    /// Payload bytes received.
    pub bytes: u64,
    /// Datagrams (UDP) or reads (TCP).
    pub packets: u64,
    /// How it ended: idle | closed | reset | evicted | byte_cap | stopped.
    pub ending: &'static str,
    /// What the classifier kept, as JSON (`None` = nothing).
    pub details: Option<String>,
}

/// What the resolver said about an address (see [`crate::scan::rdns`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAnswer {
    /// The registrable domain of the address's PTR name (the name itself is not kept).
    Domain(String),
    /// NXDOMAIN, no PTR record, or a name with no registrable domain: not asked again.
    NoName,
    /// No usable answer (timeouts, SERVFAIL, REFUSED): asked again in a later run.
    Failed,
}

/// A reverse DNS answer for the writer: stored in `host_domains` under the anonymised address
/// and copied to the address's peer rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDomainRecord {
    /// When the answer came.
    pub at: UnixMs,
    /// The address asked about (anonymised by the writer like every other).
    pub ip: std::net::IpAddr,
    /// The answer.
    pub answer: HostAnswer,
}

impl Record {
    /// The time of the scan activity the record reports (used to track the scan window);
    /// `None` for torrent registrations, which are not scan activity.
    pub fn activity_at(&self) -> Option<UnixMs> {
        match self {
            Record::Torrent(_) => None,
            Record::Discovery(d) => Some(d.at),
            Record::Outcome(o) => Some(o.at),
            Record::Scrape(s) => Some(s.at),
            Record::TrackerSchedule(s) => Some(s.at),
            Record::Stats(s) => Some(s.at),
            Record::UnmatchedIncoming { at, .. } => Some(*at),
            Record::DhtLookup(l) => Some(l.at),
            Record::DhtNodes(_) | Record::DhtNodeIds(_) => None,
            Record::SinkFlow(f) => Some(f.last_at),
            Record::HostDomain(h) => Some(h.at),
        }
    }
}

impl From<ProbeOutcome> for Record {
    fn from(o: ProbeOutcome) -> Record {
        Record::Outcome(Box::new(o))
    }
}
