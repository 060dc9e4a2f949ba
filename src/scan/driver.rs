//! The scan layer's side of one worker: owns that worker's shard of peers and its revisit
//! wheel, hands the engine the next due peer, and turns finished probes into observations.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::blocklist::Blocklist;
use super::catalog::Catalog;
use super::mse_budget::{IncomingDhBudget, WorkerMse};
use super::own_addr::OwnAddresses;
use super::peer_ids::PeerIds;
use super::peer_table::{flag, owner_worker, Inserted, PeerIdx, PeerTable, NOT_SCHEDULED};
use super::revisit::{
    contact_time, speed_since_last_contact, RevisitPolicy, RevisitWheel, VisitResult,
};
use super::udp_counters::{DhtCounters, UdpTrackerCounters, UtpCounters};
use super::udp_demux::{classify, DatagramKind};
use super::udp_tracker::UdpTrackers;
use crate::config::Encryption;
use crate::engine::conversation::{Conversation, Millis, Verdict};
use crate::engine::worker::{Ending, ProbeDone, ProbeRequest, WorkerDriver};
use crate::engine::DatagramQueue;
use crate::proto::probe::{AskReason, ProbeEnd, ProbeReport, ProbeSettings, Step, WatchPlan};
use crate::proto::session::{Fallback, PeerSession, SessionEnv};
use crate::store::record::{
    DiscoveryRecord, ErrorClass, PeerSource, ProbeEvent, ProbeOutcome, ProbeResult, Progress,
    Record, TorrentRecord, TorrentSource, Transport,
};
use crate::store::writer::RecordSender;

pub mod utp_plane;
pub use utp_plane::UtpSettings;

/// A peer session ([`PeerSession`]: encryption layer and probe, sans-IO) adapted to the
/// engine's conversation contract: it supplies the session's settings, torrent lookup and
/// the worker's MSE key, pads and incoming DH budget, and maps its steps to verdicts.
pub struct ProbeConv {
    session: PeerSession,
    settings: Arc<ProbeSettings>,
    catalog: Arc<Catalog>,
    pub kind: ProbeEvent,
    /// Incoming: the worker's budget of DH computations for MSE handshakes.
    mse_budget: Option<Arc<IncomingDhBudget>>,
}

impl ProbeConv {
    pub fn outgoing(
        settings: Arc<ProbeSettings>,
        catalog: Arc<Catalog>,
        torrent: u32,
        kind: ProbeEvent,
        now: Millis,
    ) -> ProbeConv {
        let t = catalog.get(torrent);
        let session = PeerSession::outgoing(t.wire_hash, t.pieces(), now);
        ProbeConv {
            session,
            settings,
            catalog,
            kind,
            mse_budget: None,
        }
    }

    pub fn incoming(settings: Arc<ProbeSettings>, catalog: Arc<Catalog>, now: Millis) -> ProbeConv {
        ProbeConv {
            session: PeerSession::incoming(now),
            settings,
            catalog,
            kind: ProbeEvent::Incoming,
            mse_budget: None,
        }
    }

    /// See [`PeerSession::with_tap`].
    pub fn with_tap(mut self) -> ProbeConv {
        self.session = self.session.with_tap();
        self
    }

    /// See [`PeerSession::without_grace`].
    pub fn without_grace(mut self) -> ProbeConv {
        self.session = self.session.without_grace();
        self
    }

    /// See [`PeerSession::without_metadata_fetch`].
    pub fn without_metadata_fetch(mut self) -> ProbeConv {
        self.session = self.session.without_metadata_fetch();
        self
    }

    /// See [`PeerSession::with_peer_id_nonce`].
    pub fn with_peer_id_nonce(mut self, nonce: u64) -> ProbeConv {
        self.session = self.session.with_peer_id_nonce(nonce);
        self
    }

    /// See [`PeerSession::over_utp`].
    pub fn over_utp(mut self) -> ProbeConv {
        self.session = self.session.over_utp();
        self
    }

    /// See [`PeerSession::with_mse`].
    pub fn with_mse(mut self) -> ProbeConv {
        self.session = self.session.with_mse();
        self
    }

    /// Incoming MSE handshakes take one DH computation from `budget` (none: unlimited); over
    /// budget, the connection is closed before any is computed (and `budget` counts it).
    pub fn with_incoming_budget(mut self, budget: Arc<IncomingDhBudget>) -> ProbeConv {
        self.mse_budget = Some(budget);
        self
    }

    /// The session under this conversation.
    pub fn session(&self) -> &PeerSession {
        &self.session
    }

    /// An outgoing MSE handshake was attempted.
    pub fn mse_attempted(&self) -> bool {
        self.session.mse_attempted()
    }

    /// The owner kept it open to watch the peer (it stays true after the watch ends).
    pub fn was_watched(&self) -> bool {
        self.session.was_watched()
    }

    /// See [`PeerSession::take_ask`].
    pub fn take_ask(&mut self) -> Option<AskReason> {
        self.session.take_ask()
    }

    /// See [`PeerSession::snapshot`].
    pub fn snapshot(&mut self, now: Millis) -> ProbeReport {
        self.session.snapshot(now)
    }

    /// See [`PeerSession::unsnapshot`].
    pub fn unsnapshot(&mut self, report: ProbeReport) {
        self.session.unsnapshot(report);
    }

    /// See [`PeerSession::connect_ms`].
    pub fn connect_ms(&self) -> Option<Millis> {
        self.session.connect_ms()
    }

    /// See [`PeerSession::haves_batched`].
    pub fn haves_batched(&self) -> bool {
        self.session.haves_batched()
    }

    /// See [`PeerSession::watch`].
    pub fn watch(&mut self, now: Millis, plan: WatchPlan) {
        self.session.watch(now, plan);
    }

    /// See [`PeerSession::stop`].
    pub fn stop(&mut self, now: Millis, send: &mut Vec<u8>) {
        self.session.stop(&self.settings, now, send);
    }

    pub fn report(&self) -> &ProbeReport {
        self.session.report()
    }

    pub fn into_report(self) -> ProbeReport {
        self.session.into_report()
    }
}

fn verdict(step: Step) -> Verdict {
    match step {
        Step::Continue => Verdict::Continue,
        Step::Finished => Verdict::Finished,
        Step::Ask => Verdict::Ask,
    }
}

impl Conversation for ProbeConv {
    fn on_connected(&mut self, now: Millis, send: &mut Vec<u8>) {
        let mut mse = WorkerMse::new(self.mse_budget.as_deref());
        let mut env = SessionEnv {
            settings: &self.settings,
            lookup: &*self.catalog,
            mse: &mut mse,
        };
        self.session.on_connected(&mut env, now, send);
    }

    fn on_bytes(&mut self, now: Millis, bytes: &[u8], send: &mut Vec<u8>) -> Verdict {
        let mut mse = WorkerMse::new(self.mse_budget.as_deref());
        let mut env = SessionEnv {
            settings: &self.settings,
            lookup: &*self.catalog,
            mse: &mut mse,
        };
        verdict(self.session.on_bytes(&mut env, now, bytes, send))
    }

    fn deadline(&self) -> Millis {
        self.session.deadline(&self.settings)
    }

    fn on_deadline(&mut self, now: Millis, send: &mut Vec<u8>) -> Verdict {
        verdict(self.session.on_deadline(&self.settings, now, send))
    }

    fn on_closed(&mut self, now: Millis, errno: Option<i32>) {
        self.session.on_closed(now, errno);
    }

    fn held(&self) -> bool {
        self.session.is_watching()
    }
}

/// Messages between workers (and from discovery and the session to workers).
pub enum WorkerMsg {
    /// The catalog grew (`swarmscan add` while the scan runs): the same torrents at the same
    /// indices, then new ones. Sent to every worker before anyone else learns the new indices.
    Catalog(Arc<Catalog>),
    /// The revisit policy changed (SIGHUP): applies to every visit scheduled from now on.
    Policy(RevisitPolicy),
    /// Addresses for a torrent from one source.
    Peers {
        torrent: u32,
        source: u8,
        addrs: Vec<SocketAddr>,
    },
    /// A peer's `port` message named this DHT node: ping it (sent to a worker running a node).
    DhtNode(SocketAddr),
    /// An incoming connection evaluated a peer this worker owns (`Incoming`), or a watched
    /// incoming connection observed it live (`Watched`).
    Visited {
        torrent: u32,
        addr: SocketAddr,
        report: Box<ProbeReport>,
        at_ms: Millis,
        event: ProbeEvent,
        watch: IncomingWatch,
    },
}

/// Where an incoming connection's report stands in a watch (the owner does not probe a peer
/// while it is watched on an incoming connection: clients drop a second connection from us).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncomingWatch {
    /// Not watched: the answer at the end of the connection.
    No,
    /// The answer; the connection stays open to watch the peer.
    Started,
    /// A live observation while watched.
    Live,
    /// The watched connection ended.
    Ended,
}

/// Counters a worker publishes for the status line (relaxed atomics, read by the stats thread).
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub known_peers: AtomicU64,
    pub probes_done: AtomicU64,
    pub probes_ok: AtomicU64,
    pub confirmed: AtomicU64,
    pub in_flight: AtomicU64,
    pub table_full: AtomicU64,
    /// Addresses dropped because the blocklist names them.
    pub blocked: AtomicU64,
    pub unknown_info_hash: AtomicU64,
    pub writer_backlog: AtomicU64,
    /// Peers due for a visit and not started yet (updated about once a second).
    pub due_queue: AtomicU64,
    /// Incoming MSE handshakes closed because the worker's DH budget was spent.
    pub mse_incoming_refused: AtomicU64,
    /// Incoming connections closed because they did not complete the handshake within
    /// `peer.incoming_handshake_ms`.
    pub incoming_silent_closed: AtomicU64,
    /// Connections held open to watch peers, now.
    pub watched: AtomicU64,
    /// Threshold crossings seen live on a watched connection.
    pub crossed_live: AtomicU64,
    /// Watch candidates turned away because the budget was full of better ones.
    pub watch_refused: AtomicU64,
    /// IPv6 addresses ignored because `net.ipv6` is off.
    pub ipv6_ignored: AtomicU64,
    /// Probes the stop cut short before the peer stated its progress (not recorded).
    pub cancelled_at_stop: AtomicU64,
    /// Iterations of the worker's loop (one `tick` each): its heartbeat, read by the systemd
    /// watchdog check (`service::health`). A stuck worker stops it.
    pub loops: AtomicU64,
    /// Datagrams received on the worker's UDP sockets, by kind (see [`super::udp_demux`]).
    pub udp_krpc: AtomicU64,
    pub udp_utp: AtomicU64,
    pub udp_tracker: AtomicU64,
    pub udp_other: AtomicU64,
    /// uTP connections and probes (see [`utp_plane`]).
    pub utp: UtpCounters,
    /// The worker's DHT nodes and lookups (copied from them about once a second).
    pub dht: DhtCounters,
    /// UDP tracker requests and the replies dropped.
    pub udp_trackers: UdpTrackerCounters,
}

/// How the scan watches peers (connections kept open to see the threshold crossing live).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatchSettings {
    /// Watched connections this worker may hold.
    pub budget: usize,
    /// Completion fraction counted as downloaded.
    pub threshold: f64,
    /// Record a sample of a watched peer's progress this often, ms.
    pub sample_ms: Millis,
    /// Keep-alive after this long without sending, ms.
    pub keepalive_ms: Millis,
    /// End a watch after this long without a message from the peer, ms.
    pub silence_ms: Millis,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            budget: 0,
            threshold: 0.98,
            sample_ms: 300_000,
            keepalive_ms: KEEPALIVE_MS,
            silence_ms: SILENCE_MS,
        }
    }
}

/// Keep-alive interval on watched connections: BEP 3 peers drop a connection after about two
/// minutes without a message; libtorrent and Transmission send theirs every 60–120 s.
pub const KEEPALIVE_MS: Millis = 60_000;
/// A watched peer that sent nothing (not even a keep-alive) for this long is gone.
pub const SILENCE_MS: Millis = 300_000;
/// On a watched uTP connection, a keep-alive once neither side sent anything for this long
/// ([`WatchPlan::liveness_ms`]). A uTP path that loses a few datagrams in a row (loss, a
/// stalled host) makes libtorrent time its side out after three unanswered sends, and it then
/// ignores the connection's packets without a RESET: only our keep-alive going unacknowledged
/// (`proto::utp::MAX_TRANSMISSIONS` sends) shows the connection is dead, so that the watch
/// ends and the peer is visited again within seconds rather than after `SILENCE_MS`. TCP
/// needs none: the kernel retransmits for minutes and reports a dead connection itself.
/// Cost: one 24-byte datagram and its acknowledgement per idle watched uTP connection and 5 s.
pub const UTP_LIVENESS_MS: Millis = 5_000;

/// One watched connection.
#[derive(Debug, Clone, Copy)]
struct Watched {
    /// Expected seconds until the peer crosses the threshold (smaller = more worth watching).
    score: f64,
    /// Release at the next sample: a better candidate wants the place.
    evict: bool,
}

/// A peer's state from an earlier run (see [`ScanDriver::restore`]).
#[derive(Debug, Clone, Copy)]
pub struct RestoredPeer {
    pub torrent: u32,
    pub addr: SocketAddr,
    pub sources: u8,
    /// Fixed-point progress at the last contact.
    pub progress: u16,
    pub flags: u8,
    /// Seconds since this run's epoch (0 when it was before this run).
    pub last_contact: u32,
    /// Seconds since this run's epoch; None = not to be visited again.
    pub next_visit: Option<u32>,
}

/// One worker's scan state.
pub struct ScanDriver {
    worker: usize,
    catalog: Arc<Catalog>,
    settings: Arc<ProbeSettings>,
    policy: RevisitPolicy,
    table: PeerTable,
    wheel: RevisitWheel,
    due: Vec<PeerIdx>,
    /// Visits aimed at a predicted crossing, to the millisecond: (when, peer, the whole
    /// second its `next_visit` says). The wheel holds them too, a second late at most; an
    /// entry whose peer was rescheduled since is stale and skipped.
    aimed: BinaryHeap<Reverse<(Millis, PeerIdx, u32)>>,
    /// Aimed visits due now, served before `due`.
    due_aimed: Vec<PeerIdx>,
    inbox: Receiver<WorkerMsg>,
    /// One sender per worker, this one included, for routing PEX and incoming results.
    route: Vec<Sender<WorkerMsg>>,
    outbox: Vec<Vec<WorkerMsg>>,
    records: RecordSender,
    /// Unix milliseconds at engine time 0, to stamp records.
    epoch_unix_ms: i64,
    stop: Arc<AtomicBool>,
    blocklist: Arc<Blocklist>,
    last_tick: Millis,
    /// Outgoing probes started by this worker (makes each probe's peer-id unique).
    probe_seq: u64,
    encryption: Encryption,
    watch: WatchSettings,
    /// Probe IPv6 peers.
    ipv6: bool,
    /// Watched connections by engine token.
    watched: HashMap<u64, Watched>,
    /// Peers not to watch again: they batch their haves (see `AskReason::Progress`).
    no_watch: std::collections::HashSet<PeerIdx>,
    /// Peers whose metadata fetch failed (bad pieces, not the torrent's, or never finished):
    /// they do not get a place in the metadata budget again, so hostile peers can't keep it.
    no_metadata: std::collections::HashSet<PeerIdx>,
    /// Peers of removed torrents that came due, by torrent: due again at once if the torrent
    /// is added back (`swarmscan add`), never looked at otherwise.
    parked: HashMap<u32, Vec<PeerIdx>>,
    /// Incoming connections accepted (makes their tokens unique).
    incoming_seq: u64,
    /// Our own addresses: never probed when PEX names them.
    own: Arc<OwnAddresses>,
    /// Peer-ids of known peers, shared by the workers (identity of incoming peers that give
    /// no listen port).
    peer_ids: Arc<PeerIds>,
    mse_budget: Arc<IncomingDhBudget>,
    /// This worker's UDP sockets as bound (DHT, uTP and UDP trackers share them).
    udp_locals: Vec<SocketAddr>,
    /// UDP tracker requests routed to this worker (see `scan::udp_tracker`).
    udp_trackers: Option<UdpTrackers>,
    /// Our DHT nodes on this worker and the lookups of its torrents (`dht.enabled`).
    dht: Option<crate::dht::scan::ScanDht>,
    /// uTP connections and timers (see [`utp_plane`]).
    utp: utp_plane::UtpPlane,
    /// Transport memory (`net.utp`): the peers whose way differs from the setting's default
    /// (the peer table's flags byte is full).
    utp_ways: HashMap<PeerIdx, utp_plane::Way>,
    /// Reverse DNS of peers (worker 0 only, `geo.reverse_dns`).
    rdns: Option<super::rdns::ReverseDns>,
    pub counters: Arc<WorkerCounters>,
}

/// Most messages taken from the inbox per tick, so a flood of addresses can't stall probing.
const INBOX_PER_TICK: usize = 4096;

impl ScanDriver {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        worker: usize,
        catalog: Arc<Catalog>,
        settings: Arc<ProbeSettings>,
        policy: RevisitPolicy,
        max_peers: u32,
        inbox: Receiver<WorkerMsg>,
        route: Vec<Sender<WorkerMsg>>,
        records: RecordSender,
        epoch_unix_ms: i64,
        stop: Arc<AtomicBool>,
        blocklist: Arc<Blocklist>,
    ) -> ScanDriver {
        let workers = route.len();
        ScanDriver {
            worker,
            catalog,
            settings,
            policy,
            table: PeerTable::new(max_peers),
            wheel: RevisitWheel::new(0),
            due: Vec::new(),
            aimed: BinaryHeap::new(),
            due_aimed: Vec::new(),
            inbox,
            route,
            outbox: (0..workers).map(|_| Vec::new()).collect(),
            records,
            epoch_unix_ms,
            stop,
            blocklist,
            last_tick: 0,
            probe_seq: 0,
            encryption: Encryption::Fallback,
            watch: WatchSettings::default(),
            ipv6: true,
            watched: HashMap::new(),
            no_watch: std::collections::HashSet::new(),
            no_metadata: std::collections::HashSet::new(),
            parked: HashMap::new(),
            incoming_seq: 0,
            own: Arc::new(OwnAddresses::default()),
            peer_ids: Arc::new(PeerIds::default()),
            mse_budget: Arc::new(IncomingDhBudget::new(
                crate::config::NetConfig::default().mse_incoming_per_sec,
            )),
            udp_locals: Vec::new(),
            udp_trackers: None,
            dht: None,
            utp: utp_plane::UtpPlane::new(UtpSettings::default(), epoch_unix_ms as u64),
            utp_ways: HashMap::new(),
            rdns: None,
            counters: Arc::new(WorkerCounters::default()),
        }
    }

    /// Runs the UDP tracker requests discovery routes to this worker.
    pub fn with_udp_trackers(mut self, trackers: UdpTrackers) -> ScanDriver {
        self.udp_trackers = Some(trackers.with_counters(self.counters.clone()));
        self
    }

    /// Run this worker's DHT nodes and look its torrents up in the DHT (`[dht]`).
    pub fn with_dht(mut self, dht: crate::dht::scan::ScanDht) -> ScanDriver {
        self.dht = Some(dht);
        self
    }

    /// A peer's `port` message: its DHT node is pinged by a worker that runs a node (this
    /// one, or worker 0, which always runs node 0).
    fn dht_node_from_peer(&mut self, peer: SocketAddr, port: u16, now: Millis) {
        if port == 0 {
            return;
        }
        let node = SocketAddr::new(peer.ip(), port);
        let here = self
            .dht
            .as_mut()
            .is_some_and(|d| d.node_from_peer(node, now));
        if !here && self.worker != 0 && self.dht.is_some() {
            self.outbox[0].push(WorkerMsg::DhtNode(node));
        }
    }

    /// When to talk MSE/PE to a peer (`net.encryption`).
    pub fn with_encryption(mut self, encryption: Encryption) -> ScanDriver {
        self.encryption = encryption;
        self
    }

    /// Whether IPv6 peers are probed (`net.ipv6`); when not, their addresses are dropped.
    pub fn with_ipv6(mut self, ipv6: bool) -> ScanDriver {
        self.ipv6 = ipv6;
        self
    }

    /// Keep connections open to watch peers near the threshold (`peer.max_watched`).
    pub fn with_watch(mut self, watch: WatchSettings) -> ScanDriver {
        self.watch = watch;
        self
    }

    /// Peer-ids of known peers (shared by every worker of the scan).
    pub fn with_peer_ids(mut self, peer_ids: Arc<PeerIds>) -> ScanDriver {
        self.peer_ids = peer_ids;
        self
    }

    /// Our own addresses (shared with discovery), dropped from PEX.
    pub fn with_own_addresses(mut self, own: Arc<OwnAddresses>) -> ScanDriver {
        self.own = own;
        self
    }

    /// DH computations per second this worker spends on incoming MSE handshakes
    /// (`net.mse_incoming_per_sec`).
    pub fn with_mse_incoming_per_sec(mut self, per_sec: u32) -> ScanDriver {
        self.mse_budget = Arc::new(IncomingDhBudget::new(per_sec));
        self
    }

    /// Send the PTR queries of `geo.reverse_dns` from this worker (see [`super::rdns`]).
    pub fn with_reverse_dns(mut self, rdns: super::rdns::ReverseDns) -> ScanDriver {
        self.rdns = Some(rdns);
        self
    }

    /// Whether the next probe of a peer with these flags uses MSE.
    fn use_mse(&self, flags: u8) -> bool {
        use_mse(self.encryption, flags)
    }

    pub fn table(&self) -> &PeerTable {
        &self.table
    }

    /// Adds a peer known from an earlier run, with its state and next visit. False when the
    /// table is full (`engine.max_peers`): the peer is left out, counted as `peer_table_full`.
    pub fn restore(&mut self, peer: RestoredPeer) -> bool {
        let inserted = self.table.insert(peer.torrent, peer.addr, peer.sources, 0);
        if let Inserted::New(idx) = inserted {
            let p = self.table.get_mut(idx);
            p.progress = peer.progress;
            p.flags = peer.flags & !(flag::IN_FLIGHT | flag::WATCHED_INCOMING);
            p.last_contact_cs = if peer.last_contact == 0 {
                0
            } else {
                contact_time(u64::from(peer.last_contact) * 1000)
            };
            match peer.next_visit {
                Some(t) => {
                    p.next_visit = t;
                    self.wheel.schedule(idx, t);
                }
                None => p.next_visit = NOT_SCHEDULED,
            }
        }
        self.counters
            .known_peers
            .store(self.table.len() as u64, Ordering::Relaxed);
        if matches!(inserted, Inserted::Full) {
            self.counters.table_full.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn secs(now: Millis) -> u32 {
        (now / 1000) as u32
    }

    fn add_peers(&mut self, torrent: u32, src: u8, addrs: &[SocketAddr], now: Millis) {
        // Removed (or not in this worker's snapshot, which never happens: a new catalog
        // reaches every worker before its indices are used): nothing to probe.
        if self.catalog.is_removed(torrent) {
            return;
        }
        for &a in addrs {
            if self.blocklist.blocks(&a) {
                self.counters.blocked.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if !self.ipv6 && a.ip().to_canonical().is_ipv6() {
                self.counters.ipv6_ignored.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match self.table.insert(torrent, a, src, Self::secs(now)) {
                Inserted::New(idx) => self.wheel.schedule(idx, Self::secs(now)),
                Inserted::Existing(_) => {}
                Inserted::Full => {
                    self.counters.table_full.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.counters
            .known_peers
            .store(self.table.len() as u64, Ordering::Relaxed);
    }

    fn route_peers(&mut self, torrent: u32, src: u8, addrs: impl Iterator<Item = SocketAddr>) {
        let workers = self.route.len();
        for a in addrs {
            let w = owner_worker(torrent, a, workers);
            match self.outbox[w].last_mut() {
                Some(WorkerMsg::Peers {
                    torrent: t,
                    source: s,
                    addrs,
                }) if *t == torrent && *s == src => addrs.push(a),
                _ => self.outbox[w].push(WorkerMsg::Peers {
                    torrent,
                    source: src,
                    addrs: vec![a],
                }),
            }
        }
    }

    fn flush_outbox(&mut self) {
        for (w, msgs) in self.outbox.iter_mut().enumerate() {
            for m in msgs.drain(..) {
                // Unbounded channels between workers: a worker never blocks on another.
                let _ = self.route[w].send(m);
            }
        }
    }

    /// A probe fetched and verified the metadata of a torrent whose piece count was unknown:
    /// every later probe of it measures progress, and the store learns its name and size.
    fn learn_metadata(&mut self, torrent: u32, report: &ProbeReport, at_ms: Millis) {
        let Some(meta) = &report.metainfo else {
            return;
        };
        if !self.catalog.get(torrent).learn_pieces(report.piece_count) {
            return;
        }
        self.records.send(Record::Torrent(TorrentRecord {
            info_hash_v1: meta.info_hashes.v1.map(|h| h.0),
            info_hash_v2: meta.info_hashes.v2.map(|h| h.0),
            name: Some(meta.name.clone()),
            piece_count: Some(report.piece_count),
            piece_length: Some(meta.piece_length),
            total_size: Some(meta.total_size),
            source: TorrentSource::Magnet,
            added_at: self.unix_ms(at_ms),
            trackers: Vec::new(),
        }));
    }

    /// Applies a visit to a peer this worker owns and reports it. With `schedule` the peer is
    /// no longer in flight and its next visit is set by the revisit policy; without it (an
    /// observation while a connection to the peer stays open, or while an outgoing probe of
    /// it runs) its flight state and schedule are left as they are.
    fn apply_visit(
        &mut self,
        idx: PeerIdx,
        report: ProbeReport,
        event: ProbeEvent,
        at_ms: Millis,
        connect_ms: Option<Millis>,
        schedule: bool,
    ) {
        let torrent = self.table.get(idx).torrent;
        self.learn_metadata(torrent, &report, at_ms);
        let now = Self::secs(at_ms);
        let mut aim_ms = None;
        let entry = self.table.get_mut(idx);
        let (kept_flags, kept_next) = (entry.flags & flag::IN_FLIGHT, entry.next_visit);
        entry.flags &= !flag::IN_FLIGHT;
        let event = match event {
            ProbeEvent::Incoming | ProbeEvent::Watched => event,
            _ if entry.has(flag::EVALUATED) || entry.failures > 0 => ProbeEvent::LaterContact,
            _ => ProbeEvent::FirstContact,
        };
        // (The store computes speeds from the stored contacts; only confirmation matters here.)
        let newly_confirmed = match report.progress() {
            Some(p) => {
                let effect = self.policy.apply_answer(
                    entry,
                    at_ms,
                    VisitResult::Progress(p),
                    report.answer_ms.unwrap_or(0),
                );
                aim_ms = effect.aim_ms;
                effect.newly_confirmed
            }
            None if report.handshake && report.progress_source.is_some() => {
                // Stated its progress, but the torrent's piece count is not known yet (a
                // magnet whose metadata no peer has sent): an answer; keep visiting.
                entry.failures = 0;
                entry.next_visit = now.saturating_add(self.policy.revisit_secs as u32);
                false
            }
            None => {
                self.policy.apply(entry, at_ms, VisitResult::Failed);
                false
            }
        };
        if !schedule {
            entry.flags |= kept_flags;
            entry.next_visit = kept_next;
        }
        let next = entry.next_visit;
        let torrent = entry.torrent;
        let addr = entry.addr();
        if schedule && next != NOT_SCHEDULED {
            self.wheel.schedule(idx, next);
            if let Some(at) = aim_ms {
                self.aimed.push(Reverse((at, idx, next)));
            }
        }
        if stored_as_success(&report) && event != ProbeEvent::Watched {
            // Counted by the rule the store uses, so the summary matches the database.
            self.counters.probes_ok.fetch_add(1, Ordering::Relaxed);
        }
        if report.succeeded() && event != ProbeEvent::Watched {
            if let Some(peer_id) = report.peer_id {
                self.peer_ids.learn(torrent, peer_id, addr);
            }
        }
        if newly_confirmed {
            self.counters.confirmed.fetch_add(1, Ordering::Relaxed);
            if event == ProbeEvent::Watched {
                self.counters.crossed_live.fetch_add(1, Ordering::Relaxed);
            }
        }
        if event != ProbeEvent::Watched {
            self.counters.probes_done.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(ip) = report.yourip {
            self.own.learn_from_peer(ip); // how peers see us: PEX lists us under it
        }
        if let Some(port) = report.dht_port {
            self.dht_node_from_peer(addr, port, at_ms);
        }
        if !report.pex.is_empty() {
            let mut pex = report.pex.clone();
            self.own.drop_own_pex(&mut pex);
            self.records.send(Record::Discovery(DiscoveryRecord {
                at: self.unix_ms(at_ms),
                torrent_id: self.catalog.get(torrent).db_id,
                source: PeerSource::Pex,
                tracker: None,
                duration_ms: 0,
                error: None,
                peers: pex.clone(),
            }));
            self.route_peers(torrent, PeerSource::Pex.mask(), pex.into_iter());
        }
        let next_visit_at = if next != NOT_SCHEDULED {
            Some(self.unix_ms(next as u64 * 1000))
        } else if !schedule && kept_flags != 0 {
            // Watched or probed right now: due again at once should the scan stop meanwhile.
            Some(self.unix_ms(at_ms))
        } else {
            None
        };
        let outcome = outcome_record(
            self.catalog.get(torrent).db_id,
            addr,
            event,
            self.unix_ms(at_ms),
            connect_ms,
            &report,
            next_visit_at,
        );
        self.records.send(Record::Outcome(Box::new(outcome)));
    }

    fn unix_ms(&self, at_ms: Millis) -> i64 {
        self.epoch_unix_ms + at_ms as i64
    }

    /// The identity of an incoming peer: (torrent, ip, listen port from the extension
    /// handshake). Without a listen port the peer cannot be dialled back (its source port is
    /// ephemeral): None, and the caller stores its progress under the source port.
    fn incoming_identity(
        &mut self,
        now: Millis,
        peer: SocketAddr,
        report: &ProbeReport,
    ) -> Result<(u32, Option<SocketAddr>), ()> {
        let Some(hash) = report.info_hash else {
            // Closed, or not BitTorrent (e.g. an encrypted handshake), before naming a torrent.
            self.records.send(Record::UnmatchedIncoming {
                at: self.unix_ms(now),
                error: error_class(report),
            });
            return Err(());
        };
        let Some(torrent) = self.catalog.index_of(&hash).filter(|_| report.handshake) else {
            // Counted (table 5.7, incoming × unknown info-hash); the peer itself is not
            // stored: it is not in the study. Dropped at once (the thesis tool held it 6 s).
            self.counters
                .unknown_info_hash
                .fetch_add(1, Ordering::Relaxed);
            self.records.send(Record::UnmatchedIncoming {
                at: self.unix_ms(now),
                error: if report.handshake {
                    ErrorClass::UnknownInfoHash
                } else {
                    error_class(report)
                },
            });
            return Err(());
        };
        let identity = match (report.listen_port, report.peer_id) {
            (Some(port), _) => Some(SocketAddr::new(peer.ip(), port)),
            // No listen port: the known peer with this peer-id at this address, if any.
            (None, Some(id)) => self.peer_ids.find(torrent, &id, peer.ip()),
            (None, None) => None,
        };
        Ok((torrent, identity))
    }

    /// Hands what an incoming connection learned to the worker that owns the peer (`event`
    /// is `Incoming` for the answer and the end of the connection, `Watched` for live
    /// observations while it stays open).
    fn route_incoming(
        &mut self,
        now: Millis,
        peer: SocketAddr,
        report: ProbeReport,
        event: ProbeEvent,
        watch: IncomingWatch,
    ) {
        let Ok((torrent, identity)) = self.incoming_identity(now, peer, &report) else {
            return;
        };
        let Some(addr) = identity else {
            if report.succeeded() {
                let mut outcome = outcome_record(
                    self.catalog.get(torrent).db_id,
                    peer,
                    event,
                    self.unix_ms(now),
                    None,
                    &report,
                    None,
                );
                outcome.transport = outcome.transport.union(Transport::INCOMING);
                outcome.portless = true;
                self.records.send(Record::Outcome(Box::new(outcome)));
            } else if event == ProbeEvent::Incoming {
                self.records.send(Record::UnmatchedIncoming {
                    at: self.unix_ms(now),
                    error: error_class(&report),
                });
            }
            return;
        };
        let owner = owner_worker(torrent, addr, self.route.len());
        self.outbox[owner].push(WorkerMsg::Peers {
            torrent,
            source: PeerSource::Incoming.mask(),
            addrs: vec![addr],
        });
        self.outbox[owner].push(WorkerMsg::Visited {
            torrent,
            addr,
            report: Box::new(report),
            at_ms: now,
            event,
            watch,
        });
    }

    fn on_incoming_done(&mut self, done: ProbeDone<ProbeConv>, now: Millis) {
        let was_watched = done.conv.was_watched();
        let report = done.conv.report();
        if !report.handshake && report.end == ProbeEnd::QuietTimeout {
            self.counters
                .incoming_silent_closed
                .fetch_add(1, Ordering::Relaxed);
        }
        if was_watched {
            self.watched.remove(&done.token);
            self.watched_changed();
        }
        let report = done.conv.into_report();
        if was_watched {
            self.route_incoming(
                now,
                done.peer,
                report,
                ProbeEvent::Watched,
                IncomingWatch::Ended,
            );
        } else {
            self.route_incoming(
                seen_at(now.saturating_sub(report.total_ms), &report),
                done.peer,
                report,
                ProbeEvent::Incoming,
                IncomingWatch::No,
            );
        }
    }

    fn handle_inbox(&mut self, now: Millis) {
        for _ in 0..INBOX_PER_TICK {
            let Ok(msg) = self.inbox.try_recv() else {
                break;
            };
            match msg {
                WorkerMsg::Catalog(catalog) => {
                    if catalog.len() >= self.catalog.len() {
                        self.catalog = catalog;
                    }
                }
                WorkerMsg::Policy(policy) => self.policy = policy,
                WorkerMsg::DhtNode(node) => {
                    if let Some(d) = &mut self.dht {
                        d.node_from_peer(node, now);
                    }
                }
                WorkerMsg::Peers {
                    torrent,
                    source,
                    addrs,
                } => {
                    self.add_peers(torrent, source, &addrs, now);
                }
                WorkerMsg::Visited {
                    torrent,
                    addr,
                    report,
                    at_ms,
                    event,
                    watch,
                } => {
                    if self.catalog.try_get(torrent).is_none() {
                        continue;
                    }
                    if let Some(idx) = self.table.find(torrent, addr) {
                        // While an outgoing probe of the peer runs (or a connection watches
                        // it), its schedule is that connection's business.
                        let busy = self.table.get(idx).has(flag::IN_FLIGHT);
                        let report = *report;
                        let schedule = match watch {
                            IncomingWatch::No => !busy,
                            IncomingWatch::Started | IncomingWatch::Live => false,
                            IncomingWatch::Ended => true,
                        };
                        if watch == IncomingWatch::Ended {
                            self.table.get_mut(idx).flags &= !flag::WATCHED_INCOMING;
                        }
                        self.apply_visit(idx, report, event, at_ms, None, schedule);
                        if watch == IncomingWatch::Started {
                            // Watched on the incoming connection: no probes of ours meanwhile
                            // (one in flight now is not rescheduled when it comes back).
                            let p = self.table.get_mut(idx);
                            p.flags |= flag::WATCHED_INCOMING;
                            p.next_visit = NOT_SCHEDULED;
                        }
                    }
                }
            }
        }
    }

    /// Expected seconds until a peer at `progress` crosses the threshold, from its measured
    /// speed (fraction per second) when known; smaller means more worth watching.
    fn watch_score(&self, progress: f64, speed: Option<f64>, incoming: bool) -> f64 {
        let left = (self.watch.threshold - progress).max(0.0);
        let secs = match speed.filter(|s| *s > 0.0) {
            Some(s) => left / s,
            // Unknown speed: as if the whole download took an hour.
            None => left * 3600.0,
        };
        // NAT'd peers dial us rarely and cannot be revisited: their connection is worth more.
        if incoming {
            secs / 4.0
        } else {
            secs
        }
    }

    /// Whether to keep a connection open to watch a peer at `progress` with this score; when
    /// the budget is full, a worse watched peer is marked to make room at its next sample.
    fn admit_watch(&mut self, progress: f64, score: f64) -> bool {
        if self.watch.budget == 0 || progress >= self.watch.threshold {
            return false;
        }
        if self.watched.len() < self.watch.budget {
            return true;
        }
        let worst = self
            .watched
            .iter_mut()
            .filter(|(_, w)| !w.evict)
            .max_by(|a, b| a.1.score.total_cmp(&b.1.score));
        if let Some((_, w)) = worst {
            if w.score > score {
                w.evict = true;
            }
        }
        self.counters.watch_refused.fetch_add(1, Ordering::Relaxed);
        false
    }

    fn start_watch(
        &mut self,
        now: Millis,
        token: u64,
        conv: &mut ProbeConv,
        report: &ProbeReport,
        score: f64,
    ) {
        let notify_have = (self.watch.threshold * report.piece_count as f64).ceil() as u32;
        conv.watch(
            now,
            WatchPlan {
                notify_have: notify_have.max(1),
                sample_ms: self.watch.sample_ms,
                keepalive_ms: self.watch.keepalive_ms,
                silence_ms: self.watch.silence_ms,
                liveness_ms: conv.report().utp.then_some(UTP_LIVENESS_MS),
            },
        );
        self.watched.insert(
            token,
            Watched {
                score,
                evict: false,
            },
        );
        self.watched_changed();
    }

    /// A probe has its answer: record it, then watch the peer or let the probe end.
    fn on_answered(
        &mut self,
        now: Millis,
        token: u64,
        peer: SocketAddr,
        incoming: bool,
        conv: &mut ProbeConv,
        send: &mut Vec<u8>,
    ) -> Verdict {
        let report = conv.snapshot(now);
        let at = seen_at(now.saturating_sub(report.total_ms), &report);
        let progress = report.progress();
        if incoming {
            let score = progress.map(|p| self.watch_score(p, None, true));
            let watch = match (progress, score) {
                (Some(p), Some(score)) => self.admit_watch(p, score),
                _ => false,
            };
            if watch {
                self.start_watch(now, token, conv, &report, score.unwrap_or(0.0));
            }
            if watch {
                // The answer now; the end of the connection comes as `Ended`.
                self.route_incoming(
                    at,
                    peer,
                    report,
                    ProbeEvent::Incoming,
                    IncomingWatch::Started,
                );
                return Verdict::Continue;
            }
            // Recorded once, when the connection comes back through `probe_done` (with the
            // PEX and metadata the snapshot took).
            conv.unsnapshot(report);
            conv.stop(now, send);
            return Verdict::Finished;
        }
        let idx = token as PeerIdx;
        // A torrent removed while the probe ran: the probe ends, nothing is watched.
        let removed = self.catalog.is_removed(self.table.get(idx).torrent);
        if self.watched.contains_key(&token) || self.no_watch.contains(&idx) || removed {
            // A fresh look at a peer we watch already (it batches its haves): recorded when it
            // comes back through `probe_done`.
            conv.unsnapshot(report);
            conv.stop(now, send);
            return Verdict::Finished;
        }
        let watch = match progress {
            Some(p) => {
                let speed = speed_since_last_contact(self.table.get(idx), p, at);
                let score = self.watch_score(p, speed, false);
                self.admit_watch(p, score).then_some(score)
            }
            None => None,
        };
        let event = conv.kind;
        let connect_ms = conv.connect_ms();
        if let Some(score) = watch {
            self.start_watch(now, token, conv, &report, score);
            // Watched connections are counted apart from probes in flight.
            self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.apply_visit(idx, report, event, at, connect_ms, false);
            self.table.get_mut(idx).next_visit = NOT_SCHEDULED;
            return Verdict::Continue;
        }
        // Recorded when the probe comes back through `probe_done`.
        conv.unsnapshot(report);
        conv.stop(now, send);
        Verdict::Finished
    }

    /// Peers of torrents added back since they were removed become due now.
    fn unpark(&mut self, now: Millis) {
        if self.parked.is_empty() {
            return;
        }
        let back: Vec<u32> = self
            .parked
            .keys()
            .copied()
            .filter(|&t| !self.catalog.is_removed(t))
            .collect();
        let second = Self::secs(now);
        for t in back {
            for idx in self.parked.remove(&t).unwrap_or_default() {
                let p = self.table.get_mut(idx);
                // Scheduled meanwhile (an incoming visit) or in flight: already taken care of.
                if p.next_visit == NOT_SCHEDULED && !p.has(flag::IN_FLIGHT) {
                    p.next_visit = second;
                    self.wheel.schedule(idx, second);
                }
            }
        }
    }

    /// True when the torrent of a watched connection was removed from the scan (the watch
    /// ends at its next sample).
    fn watched_torrent_removed(&self, token: u64, incoming: bool, conv: &ProbeConv) -> bool {
        let torrent = if incoming {
            conv.report()
                .info_hash
                .and_then(|h| self.catalog.index_of(&h))
        } else {
            Some(self.table.get(token as PeerIdx).torrent)
        };
        torrent.is_some_and(|t| self.catalog.is_removed(t))
    }

    /// A live observation on a watched connection: recorded on the peer's owner.
    fn observe_watched(
        &mut self,
        token: u64,
        peer: SocketAddr,
        incoming: bool,
        report: ProbeReport,
        at: Millis,
    ) {
        if incoming {
            self.route_incoming(at, peer, report, ProbeEvent::Watched, IncomingWatch::Live);
        } else {
            self.apply_visit(
                token as PeerIdx,
                report,
                ProbeEvent::Watched,
                at,
                None,
                false,
            );
            self.table.get_mut(token as PeerIdx).next_visit = NOT_SCHEDULED;
        }
    }

    /// Stores what the watch of a peer that batches its haves last saw, without feeding it to
    /// the revisit policy: it lags the peer's real progress (by several seconds with
    /// Transmission), and the policy runs on fresh probes.
    fn store_stale(&mut self, idx: PeerIdx, report: &ProbeReport, at: Millis) {
        let entry = self.table.get(idx);
        let (torrent, addr) = (entry.torrent, entry.addr());
        let outcome = outcome_record(
            self.catalog.get(torrent).db_id,
            addr,
            ProbeEvent::Watched,
            self.unix_ms(at),
            None,
            report,
            None,
        );
        self.records.send(Record::Outcome(Box::new(outcome)));
    }

    /// Publishes the number of watched connections.
    fn watched_changed(&self) {
        self.counters
            .watched
            .store(self.watched.len() as u64, Ordering::Relaxed);
    }
}

impl ScanDriver {
    /// The next due peer, marked in flight, with its conversation (TCP or uTP: see
    /// [`ScanDriver::next_probe_any`]).
    fn pick_probe(&mut self, now: Millis) -> Option<ProbeRequest<ProbeConv>> {
        // Back-pressure: while the writer is behind (its channel is full and this worker's
        // records wait in the overflow queue), no new probe starts; probes in flight finish.
        if self.records.pending() > 0 && self.records.pump() > 0 {
            return None;
        }
        if self.due.is_empty() {
            self.wheel
                .drain_due(&mut self.table, Self::secs(now), 1024, &mut self.due);
            self.due.reverse(); // pop() then serves them in due order
        }
        // Aimed visits go first: they are due to the millisecond, the wheel's by the second.
        while let Some(&Reverse((at, idx, second))) = self.aimed.peek() {
            if at > now {
                break;
            }
            self.aimed.pop();
            let p = self.table.get_mut(idx);
            if p.next_visit == second && !p.has(flag::IN_FLIGHT) {
                p.next_visit = NOT_SCHEDULED;
                self.due_aimed.push(idx);
            }
        }
        let (idx, aimed) = loop {
            let (idx, aimed) = match self.due_aimed.pop() {
                Some(idx) => (idx, true),
                None => (self.due.pop()?, false),
            };
            let torrent = self.table.get(idx).torrent;
            if !self.catalog.is_removed(torrent) {
                break (idx, aimed);
            }
            // Removed from the scan: off the queues (each pop shrinks them), kept aside in
            // case the torrent is added back.
            self.parked.entry(torrent).or_default().push(idx);
        };
        let entry = self.table.get_mut(idx);
        entry.flags |= flag::IN_FLIGHT;
        let kind = if entry.has(flag::EVALUATED) || entry.failures > 0 {
            ProbeEvent::LaterContact
        } else {
            ProbeEvent::FirstContact
        };
        let (torrent, addr, flags) = (entry.torrent, entry.addr(), entry.flags);
        let use_mse = self.use_mse(flags);
        self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        self.probe_seq += 1;
        let workers = self.route.len() as u64;
        let nonce = (self.epoch_unix_ms as u64)
            .wrapping_mul(1_000_003)
            .wrapping_add(self.probe_seq * workers + self.worker as u64);
        let mut conv = ProbeConv::outgoing(
            self.settings.clone(),
            self.catalog.clone(),
            torrent,
            kind,
            now,
        )
        .with_peer_id_nonce(nonce);
        if use_mse {
            conv = conv.with_mse();
        }
        if aimed {
            conv = conv.without_grace();
        }
        if self.no_metadata.contains(&idx) {
            conv = conv.without_metadata_fetch();
        }
        Some(ProbeRequest {
            addr,
            token: idx as u64,
            conv,
        })
    }
}

impl WorkerDriver for ScanDriver {
    type Conv = ProbeConv;

    fn next_probe(&mut self, now: Millis) -> Option<ProbeRequest<ProbeConv>> {
        self.next_probe_any(now)
    }

    fn on_ask(
        &mut self,
        now: Millis,
        token: u64,
        peer: SocketAddr,
        incoming: bool,
        conv: &mut ProbeConv,
        send: &mut Vec<u8>,
    ) -> Verdict {
        match conv.take_ask() {
            Some(AskReason::Answered) => self.on_answered(now, token, peer, incoming, conv, send),
            Some(AskReason::Crossed(crossing)) => {
                // Two observations: the last message still below, and the one that crossed,
                // so the stored crossing time lies between two consecutive messages.
                let mut report = conv.snapshot(now);
                let mut below = report.clone();
                below.pex = Vec::new();
                below.metainfo = None;
                below.pieces_have = crossing.below_have;
                self.observe_watched(token, peer, incoming, below, crossing.below_at);
                report.pieces_have = report.pieces_have.max(crossing.have);
                self.observe_watched(token, peer, incoming, report, crossing.at);
                // At the threshold: nothing more to watch for.
                conv.stop(now, send);
                Verdict::Finished
            }
            Some(AskReason::Progress) => {
                if incoming {
                    let report = conv.snapshot(now);
                    self.observe_watched(token, peer, incoming, report, now);
                    return Verdict::Continue;
                }
                // A client that batches its haves shows its progress seconds late on this
                // connection and drops a second one from us (Transmission does both), so
                // watching it would only hide the fresh look a quitter needs: let it go (its
                // last progress is stored in `probe_done`), and revisit it from now on.
                self.no_watch.insert(token as PeerIdx);
                conv.stop(now, send);
                Verdict::Finished
            }
            Some(AskReason::Sample) => {
                let report = conv.snapshot(now);
                self.observe_watched(token, peer, incoming, report, now);
                if self.watched.get(&token).is_some_and(|w| w.evict)
                    || self.watched_torrent_removed(token, incoming, conv)
                {
                    conv.stop(now, send);
                    return Verdict::Finished;
                }
                Verdict::Continue
            }
            None => Verdict::Continue,
        }
    }

    fn probe_done(&mut self, now: Millis, done: ProbeDone<ProbeConv>) {
        tracing::trace!(
            peer = %done.peer,
            incoming = done.incoming,
            watched = done.conv.was_watched(),
            at_ms = now,
            started_ms = done.started_at,
            connect_ms = ?done.connect_ms,
            answer_ms = ?done.conv.report().answer_ms,
            progress = ?done.conv.report().progress(),
            end = ?done.conv.report().end,
            "connection ended"
        );
        if done.incoming {
            self.on_incoming_done(done, now);
            return;
        }
        let idx = done.token as PeerIdx;
        if !done.conv.was_watched() {
            self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        } else {
            // The watch ended (the peer closed or went silent, the scan stopped, or we let
            // it go): its last progress, then revisits as usual.
            self.watched.remove(&done.token);
            self.watched_changed();
            let batched = done.conv.haves_batched();
            let report = done.conv.into_report();
            if batched {
                // Its last progress is stale: store it, and look again with a fresh probe.
                self.store_stale(idx, &report, now);
                let p = self.table.get_mut(idx);
                p.flags &= !flag::IN_FLIGHT;
                let due = Self::secs(now) + 1;
                p.next_visit = due;
                self.wheel.schedule(idx, due);
                return;
            }
            self.apply_visit(idx, report, ProbeEvent::Watched, now, None, true);
            return;
        }
        if matches!(done.ending, Ending::Closed(Some(libc::ECANCELED)))
            && !done.conv.report().succeeded()
        {
            // The engine stopped mid-probe before the peer stated its progress: not a visit
            // (counted apart). Due again at once after a restart. A probe that had its answer
            // (in its grace) is recorded as the visit it was.
            self.counters
                .cancelled_at_stop
                .fetch_add(1, Ordering::Relaxed);
            let p = self.table.get_mut(idx);
            p.flags &= !flag::IN_FLIGHT;
            p.next_visit = Self::secs(now);
            return;
        }
        let kind = done.conv.kind;
        let tried = utp_plane::TransportTry::of(&done);
        let mse_attempted = done.conv.mse_attempted();
        // Retried at once the other way where the setting allows (see `retry_other_way`).
        let fallback = done.conv.session().fallback();
        let report = done.conv.into_report();
        if report.metadata_failed {
            self.no_metadata.insert(idx);
        }
        let at = seen_at(done.started_at + done.connect_ms.unwrap_or(0), &report);
        self.apply_visit(idx, report, kind, at, done.connect_ms, true);
        let secs = Self::secs(now);
        let p = self.table.get_mut(idx);
        let retry = if let Some(flags) =
            retry_other_way(self.encryption, p.flags, fallback, mse_attempted)
        {
            p.flags = flags;
            true
        } else {
            if fallback.silent && p.failures >= 2 && p.failures % 2 == 0 {
                // Transport memory is a guess: after two failures in a row on a connection
                // that came up, the other way is tried (at the back-off, not at once).
                p.flags = other_encryption(self.encryption, p.flags);
            }
            false
        };
        // TCP ↔ uTP (`net.utp`): the transport that works is remembered; one that fails is
        // left for the other at once.
        let retry = self.transport_after_probe(idx, tried, fallback, retry);
        let p = self.table.get_mut(idx);
        if p.has(flag::WATCHED_INCOMING) {
            // Its incoming connection is watched; visits resume when that ends.
            p.next_visit = NOT_SCHEDULED;
        } else if retry {
            p.next_visit = secs + 1;
            self.wheel.schedule(idx, secs + 1);
        }
    }

    fn incoming(
        &mut self,
        now: Millis,
        remote: SocketAddr,
        _local: SocketAddr,
    ) -> Option<(u64, ProbeConv)> {
        if self.blocklist.blocks(&remote) {
            self.counters.blocked.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // Tokens of incoming connections have the top bit set (peer indices never do), so a
        // watched one can be told apart.
        self.incoming_seq += 1;
        Some((
            INCOMING_TOKEN | self.incoming_seq,
            ProbeConv::incoming(self.settings.clone(), self.catalog.clone(), now)
                .with_incoming_budget(self.mse_budget.clone()),
        ))
    }

    fn tick(&mut self, now: Millis) {
        self.counters.loops.fetch_add(1, Ordering::Relaxed);
        crate::threads::debug_stall_point("engine");
        if now / 1000 != self.last_tick / 1000 {
            // Once a second: table size (restored peers too) and the due queue.
            self.counters
                .known_peers
                .store(self.table.len() as u64, Ordering::Relaxed);
            let due = self.due.len()
                + self.due_aimed.len()
                + self.wheel.due_count(&self.table, Self::secs(now));
            self.counters.due_queue.store(due as u64, Ordering::Relaxed);
            self.unpark(now);
            if let Some(d) = &self.dht {
                d.publish(&self.counters.dht, now);
            }
        }
        self.utp_publish_gauges();
        self.last_tick = now;
        self.handle_inbox(now);
        self.flush_outbox();
        let backlog = self.records.pump();
        self.counters
            .writer_backlog
            .store(backlog as u64, Ordering::Relaxed);
        self.counters
            .mse_incoming_refused
            .store(self.mse_budget.refused(), Ordering::Relaxed);
    }

    fn on_udp_bound(&mut self, udp: &[SocketAddr]) {
        self.udp_locals = udp.to_vec();
        self.utp.on_udp_bound(udp);
        if let Some(d) = &mut self.dht {
            d.on_udp_bound(udp, self.last_tick);
        }
    }

    fn datagram(
        &mut self,
        now: Millis,
        local: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
        out: &mut DatagramQueue,
    ) {
        // The resolver's answers, by source address, before any sorting by content.
        if let Some(rdns) = self.rdns.as_mut().filter(|r| r.is_resolver(from)) {
            if let Some(record) = rdns.datagram(now, bytes) {
                self.records.send(record);
            }
            return;
        }
        // Each protocol on the shared sockets gets its arm here; until it has a handler its
        // datagrams are only counted.
        let counter = match classify(bytes) {
            DatagramKind::Krpc => {
                if let Some(d) = &mut self.dht {
                    d.datagram(now, local, from, bytes);
                }
                &self.counters.udp_krpc
            }
            DatagramKind::Utp => {
                self.counters.udp_utp.fetch_add(1, Ordering::Relaxed);
                utp_plane::datagram(self, now, local, from, bytes, out);
                return;
            }
            DatagramKind::TrackerReply => {
                if let Some(trackers) = &mut self.udp_trackers {
                    trackers.on_datagram(now, from, bytes, out);
                }
                &self.counters.udp_tracker
            }
            DatagramKind::Other => &self.counters.udp_other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn poll_datagrams(&mut self, now: Millis, out: &mut DatagramQueue) {
        if let Some(trackers) = &mut self.udp_trackers {
            trackers.poll(now, out);
        }
        if let Some(d) = &mut self.dht {
            for (torrent, mut peers) in d.poll(now, &self.catalog, out) {
                self.own.drop_own_pex(&mut peers);
                self.route_peers(torrent, PeerSource::Dht.mask(), peers.into_iter());
            }
        }
        if let Some(rdns) = &mut self.rdns {
            let records = &mut self.records;
            rdns.poll(
                now,
                &self.udp_locals,
                |local, to, bytes| out.push(local, to, bytes).is_ok(),
                |record| records.send(record),
            );
        }
        utp_plane::poll(self, now, out);
    }

    fn datagram_error(
        &mut self,
        now: Millis,
        _local: SocketAddr,
        to: SocketAddr,
        errno: i32,
        out: &mut DatagramQueue,
    ) {
        if let Some(trackers) = &mut self.udp_trackers {
            trackers.on_error(to, errno, out);
        }
        utp_plane::datagram_error(self, now, to, errno);
    }

    fn next_wakeup(&self) -> Option<Millis> {
        // Revisit times have one-second resolution; the inbox is polled at least this often.
        let inbox = self.last_tick + 50;
        let deadlines = [
            self.dht.as_ref().and_then(|d| d.next_deadline()),
            self.utp.next_wakeup(),
        ];
        Some(deadlines.into_iter().flatten().fold(inbox, Millis::min))
    }

    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Whether the next probe of a peer with these encryption flags (`flag::USE_MSE`,
/// `flag::MSE_FAILED`) uses MSE under `net.encryption`.
pub fn use_mse(encryption: Encryption, flags: u8) -> bool {
    match encryption {
        Encryption::Off => false,
        Encryption::Require => true,
        Encryption::Prefer => flags & flag::MSE_FAILED == 0,
        Encryption::Fallback => flags & flag::USE_MSE != 0 && flags & flag::MSE_FAILED == 0,
    }
}

/// After a probe that ended as `fallback` says: the peer's new encryption flags when it is to
/// be tried again at once the other way, None when not. A peer that hangs up on our plaintext
/// handshake right after connecting usually requires encryption (libtorrent's "forced"
/// policy does exactly this); one whose MSE handshake fails gets plaintext.
pub fn retry_other_way(
    encryption: Encryption,
    flags: u8,
    fallback: Fallback,
    mse_attempted: bool,
) -> Option<u8> {
    if fallback.mse_failed && encryption != Encryption::Require {
        Some(flags | flag::MSE_FAILED)
    } else if fallback.hung_up
        && !mse_attempted
        && encryption == Encryption::Fallback
        && flags & (flag::USE_MSE | flag::MSE_FAILED) == 0
    {
        Some(flags | flag::USE_MSE)
    } else {
        None
    }
}

/// The peer's encryption flags switched to the other way of talking to it (see
/// [`ScanDriver::use_mse`]); unchanged where `net.encryption` allows only one.
fn other_encryption(encryption: Encryption, flags: u8) -> u8 {
    let both = flag::USE_MSE | flag::MSE_FAILED;
    match encryption {
        Encryption::Off | Encryption::Require => flags,
        Encryption::Prefer => flags ^ flag::MSE_FAILED,
        // Plaintext ↔ MSE; after MSE failed, back to plaintext-first (whose hang-up retries MSE).
        Encryption::Fallback if flags & both == flag::USE_MSE => flags | flag::MSE_FAILED,
        Encryption::Fallback if flags & both == 0 => flags | flag::USE_MSE,
        Encryption::Fallback => flags & !both,
    }
}

/// Top bit of the tokens of incoming connections.
const INCOMING_TOKEN: u64 = 1 << 63;

impl Drop for ScanDriver {
    fn drop(&mut self) {
        utp_plane::cancel_all(self, self.last_tick);
        self.utp_publish_gauges();
        tracing::debug!(worker = self.worker, counters = ?self.counters.utp, "uTP plane ended");
        if let Some(d) = &self.dht {
            d.publish(&self.counters.dht, self.last_tick);
        }
        self.flush_outbox();
        self.counters
            .mse_incoming_refused
            .store(self.mse_budget.refused(), Ordering::Relaxed);
    }
}

/// True when the probe's outcome is stored as a success: the peer completed the handshake and
/// stated its progress (even when the torrent's piece count is not known yet).
pub fn stored_as_success(report: &ProbeReport) -> bool {
    report.handshake && report.progress_source.is_some()
}

/// When a probe connected at `connected_at` saw the peer's progress: its first progress
/// message (the grace after it adds only trailing haves); without one, the connection's start.
/// Progress is timed by this, not by the probe's end: with Transmission the answer comes about
/// a second after connecting, and a crossing timed a second off is a crossing misplaced.
fn seen_at(connected_at: Millis, report: &ProbeReport) -> Millis {
    connected_at + report.answer_ms.unwrap_or(0)
}

/// The store's record of one finished probe.
pub fn outcome_record(
    torrent_id: i64,
    addr: SocketAddr,
    event: ProbeEvent,
    at: i64,
    connect_ms: Option<Millis>,
    report: &ProbeReport,
    next_visit_at: Option<i64>,
) -> ProbeOutcome {
    let result = if stored_as_success(report) {
        ProbeResult::Success(Progress {
            have: report.pieces_have,
            pieces: report.piece_count,
        })
    } else {
        ProbeResult::Failed(error_class(report))
    };
    let mut transport = if report.utp {
        Transport::UTP
    } else {
        Transport::TCP
    };
    if addr.is_ipv6() && addr.ip().to_canonical().is_ipv6() {
        transport = transport | Transport::IPV6;
    }
    if event == ProbeEvent::Incoming {
        transport = transport | Transport::INCOMING;
    }
    if report.mse.is_some() {
        transport = transport | Transport::MSE;
    }
    ProbeOutcome {
        torrent_id,
        addr,
        event,
        at,
        result,
        client: describe_client(report),
        peer_id: report.peer_id,
        transport,
        connect_ms: connect_ms.map(|c| c.min(u32::MAX as u64) as u32),
        duration_ms: report.total_ms.min(u32::MAX as u64) as u32,
        // A watched connection's gaps are not a probe's (thesis figure 5.1).
        longest_gap_ms: (report.messages > 1 && event != ProbeEvent::Watched)
            .then_some(report.longest_gap_ms.min(u32::MAX as u64) as u32),
        messages: report.messages,
        next_visit_at,
        portless: false,
    }
}

/// The thesis' error classes (table 5.7) for a probe that learned no progress.
pub fn error_class(report: &ProbeReport) -> ErrorClass {
    match &report.end {
        ProbeEnd::SocketError(e) if report.utp => ErrorClass::from_utp_errno(*e),
        ProbeEnd::SocketError(e) => ErrorClass::from_errno(*e),
        ProbeEnd::UnknownProtocol => ErrorClass::UnknownProtocol,
        // A BitTorrent peer that broke the protocol before stating its progress; before its
        // handshake was complete it is not known to speak BitTorrent.
        ProbeEnd::ProtocolError(_) if report.handshake => ErrorClass::ProtocolError,
        ProbeEnd::ProtocolError(_) => ErrorClass::UnknownProtocol,
        ProbeEnd::UnknownInfoHash => ErrorClass::UnknownInfoHash,
        ProbeEnd::MseFailed(_) => ErrorClass::MseFailed,
        // Closed by the peer, or quiet after a handshake that never completed.
        ProbeEnd::PeerClosed => ErrorClass::Broken,
        ProbeEnd::QuietTimeout | ProbeEnd::MaxDuration => {
            if report.handshake {
                ErrorClass::Broken
            } else {
                ErrorClass::TimedOut
            }
        }
        ProbeEnd::Answered | ProbeEnd::MessageCap => ErrorClass::Broken,
    }
}

/// "qBittorrent 4.1.3" from the extension handshake's `v`, else from the peer-id.
fn describe_client(report: &ProbeReport) -> Option<String> {
    if report.peer_id.is_none() && report.client.is_none() {
        return None;
    }
    let id = crate::proto::client_id::combine(
        report.peer_id.as_ref().map(|p| &p[..]),
        report.client.as_deref().map(str::as_bytes),
    );
    let text = id.client.to_string();
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The session reads resets by the errno value the engine passes on.
    #[test]
    fn session_errno_matches_libc() {
        assert_eq!(crate::proto::session::ECONNRESET, libc::ECONNRESET);
    }

    /// The ways a first visit tries, in order, against a peer that hangs up on plaintext
    /// (requires MSE) or on MSE (plaintext only), under each setting.
    #[test]
    fn immediate_retries_go_the_other_way_where_the_setting_allows() {
        let tries = |encryption, peer_wants_mse: bool| {
            let mut flags = 0;
            let mut ways = Vec::new();
            for _ in 0..5 {
                let mse = use_mse(encryption, flags);
                ways.push(if mse { "mse" } else { "plain" });
                if mse == peer_wants_mse {
                    break;
                }
                let fallback = Fallback {
                    hung_up: true,
                    mse_failed: mse,
                    silent: true,
                };
                match retry_other_way(encryption, flags, fallback, mse) {
                    Some(f) => flags = f,
                    None => break,
                }
            }
            ways
        };
        assert_eq!(tries(Encryption::Fallback, true), ["plain", "mse"]);
        assert_eq!(tries(Encryption::Fallback, false), ["plain"]);
        assert_eq!(tries(Encryption::Prefer, true), ["mse"]);
        assert_eq!(tries(Encryption::Prefer, false), ["mse", "plain"]);
        assert_eq!(tries(Encryption::Require, false), ["mse"]);
        assert_eq!(tries(Encryption::Off, true), ["plain"]);
    }

    #[test]
    fn transport_memory_alternates_where_the_setting_allows_both_ways() {
        let both = flag::USE_MSE | flag::MSE_FAILED;
        let ways = |encryption, start: u8| {
            let mut flags = start | flag::EVALUATED;
            let mut seen = Vec::new();
            for _ in 0..4 {
                flags = other_encryption(encryption, flags);
                assert!(flags & flag::EVALUATED != 0, "other flags kept");
                seen.push(flags & both);
            }
            seen
        };
        // Fallback: plaintext → MSE → plaintext (MSE failed) → plaintext-first again.
        assert_eq!(
            ways(Encryption::Fallback, 0),
            vec![flag::USE_MSE, both, 0, flag::USE_MSE]
        );
        assert_eq!(
            ways(Encryption::Prefer, 0),
            vec![flag::MSE_FAILED, 0, flag::MSE_FAILED, 0]
        );
        assert_eq!(ways(Encryption::Require, 0), vec![0; 4]);
        assert_eq!(ways(Encryption::Off, 0), vec![0; 4]);
        // Whichever way is chosen, `use_mse` follows it.
        let mut flags = 0;
        let mut mse = Vec::new();
        for _ in 0..3 {
            flags = other_encryption(Encryption::Fallback, flags);
            mse.push(flags & flag::USE_MSE != 0 && flags & flag::MSE_FAILED == 0);
        }
        assert_eq!(mse, vec![true, false, false]);
    }

    #[test]
    fn protocol_violations_after_the_handshake_have_their_own_class() {
        let direction = crate::proto::probe::Direction::Outgoing {
            info_hash: [1; 20],
            piece_count: 10,
        };
        let mut report = crate::proto::probe::Probe::new(direction, 0)
            .report()
            .clone();
        report.end = ProbeEnd::ProtocolError("bad bitfield length".into());
        assert_eq!(error_class(&report), ErrorClass::UnknownProtocol);
        report.handshake = true;
        assert_eq!(error_class(&report), ErrorClass::ProtocolError);
        report.end = ProbeEnd::QuietTimeout;
        assert_eq!(error_class(&report), ErrorClass::Broken, "silent after it");
    }
}
