//! The scan layer's side of one worker: owns that worker's shard of peers and its revisit
//! wheel, hands the engine the next due peer, and turns finished probes into observations.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::blocklist::Blocklist;
use super::catalog::Catalog;
use super::mse_budget::{random_bytes, worker_dh_key, IncomingDhBudget};
use super::peer_table::{flag, owner_worker, source, Inserted, PeerIdx, PeerTable, NOT_SCHEDULED};
use super::revisit::{RevisitPolicy, RevisitWheel, VisitResult};
use crate::config::Encryption;
use crate::engine::conversation::{Conversation, Millis, Verdict};
use crate::engine::worker::{Ending, ProbeDone, ProbeRequest, WorkerDriver};
use crate::proto::mse;
use crate::proto::probe::{Direction, Probe, ProbeEnd, ProbeReport, ProbeSettings, Step};
use crate::store::record::{
    DiscoveryRecord, ErrorClass, PeerSource, ProbeEvent, ProbeOutcome, ProbeResult, Progress,
    Record, TorrentRecord, TorrentSource, Transport,
};
use crate::store::writer::RecordSender;

/// Which kind of contact a probe was (thesis table 5.7 rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactKind {
    First,
    Later,
    Incoming,
}

/// The encryption layer between the socket and the probe.
enum Layer {
    /// Plain BitTorrent.
    Plain,
    /// Incoming: the first bytes decide between plain and MSE.
    Sniffing(Vec<u8>),
    /// Outgoing MSE handshake under way (our BitTorrent handshake rides in it as IA).
    Initiating(Box<mse::Initiator>),
    /// Incoming MSE handshake under way.
    Responding(Box<mse::Responder>),
    /// MSE done: everything passes through the stream's ciphers.
    Stream(Box<mse::MseStream>),
}

/// A probe adapted to the engine's conversation contract, with optional MSE/PE.
pub struct ProbeConv {
    probe: Probe,
    settings: Arc<ProbeSettings>,
    catalog: Arc<Catalog>,
    pub kind: ContactKind,
    layer: Layer,
    /// An outgoing MSE handshake was attempted.
    pub mse_attempted: bool,
    /// Incoming: the worker's budget of DH computations for MSE handshakes.
    mse_budget: Option<Arc<IncomingDhBudget>>,
}

/// A short random pad (0–31 bytes): obfuscation only, so keep the bytes on the wire small.
fn pad() -> Vec<u8> {
    let mut bytes = random_bytes(33);
    let len = bytes[32] as usize % 32;
    bytes.truncate(len);
    bytes
}

fn crypto_name(c: mse::Crypto) -> &'static str {
    match c {
        mse::Crypto::Rc4 => "rc4",
        mse::Crypto::Plaintext => "plaintext",
    }
}

impl ProbeConv {
    pub fn outgoing(
        settings: Arc<ProbeSettings>,
        catalog: Arc<Catalog>,
        torrent: u32,
        kind: ContactKind,
        now: Millis,
    ) -> ProbeConv {
        let t = catalog.get(torrent);
        let direction = Direction::Outgoing {
            info_hash: t.wire_hash,
            piece_count: t.pieces(),
        };
        ProbeConv {
            probe: Probe::new(direction, now),
            settings,
            catalog,
            kind,
            layer: Layer::Plain,
            mse_attempted: false,
            mse_budget: None,
        }
    }

    /// See [`Probe::with_peer_id_nonce`].
    pub fn with_peer_id_nonce(mut self, nonce: u64) -> ProbeConv {
        self.probe = self.probe.with_peer_id_nonce(nonce);
        self
    }

    /// Talk MSE/PE (BEP 8 style encryption) on this outgoing connection; the initiator is
    /// built at connect time, with our handshake as its initial payload.
    pub fn with_mse(mut self) -> ProbeConv {
        self.mse_attempted = true;
        self
    }

    pub fn incoming(settings: Arc<ProbeSettings>, catalog: Arc<Catalog>, now: Millis) -> ProbeConv {
        ProbeConv {
            probe: Probe::new(Direction::Incoming, now),
            settings,
            catalog,
            kind: ContactKind::Incoming,
            layer: Layer::Sniffing(Vec::new()),
            mse_attempted: false,
            mse_budget: None,
        }
    }

    /// Incoming MSE handshakes take one DH computation from `budget` (none: unlimited); over
    /// budget, the connection is closed before any is computed (and `budget` counts it).
    pub fn with_incoming_budget(mut self, budget: Arc<IncomingDhBudget>) -> ProbeConv {
        self.mse_budget = Some(budget);
        self
    }

    pub fn report(&self) -> &ProbeReport {
        self.probe.report()
    }

    pub fn into_report(self) -> ProbeReport {
        self.probe.into_report()
    }

    /// Feeds plaintext to the probe; what it sends goes through the stream's cipher.
    fn feed(&mut self, now: Millis, plain: &[u8], send: &mut Vec<u8>) -> Step {
        let start = send.len();
        let step = self
            .probe
            .on_bytes(&self.settings, &*self.catalog, now, plain, send);
        if let Layer::Stream(stream) = &mut self.layer {
            stream.encrypt(&mut send[start..]);
        }
        step
    }

    fn mse_failed(&mut self, now: Millis, e: mse::MseError) -> Verdict {
        self.probe.abort(now, ProbeEnd::MseFailed(e.to_string()));
        Verdict::Finished
    }
}

fn verdict(step: Step) -> Verdict {
    match step {
        Step::Continue => Verdict::Continue,
        Step::Finished => Verdict::Finished,
    }
}

impl Conversation for ProbeConv {
    fn on_connected(&mut self, now: Millis, send: &mut Vec<u8>) {
        if !self.mse_attempted {
            self.probe.on_connected(&self.settings, now, send);
            return;
        }
        let mut handshake = Vec::new();
        self.probe.on_connected(&self.settings, now, &mut handshake);
        let info_hash = self.probe.report().info_hash.unwrap_or_default();
        match mse::Initiator::new(
            info_hash,
            worker_dh_key(),
            pad(),
            Vec::new(),
            mse::CryptoSet::BOTH,
            handshake,
        ) {
            Ok(mut initiator) => {
                initiator.start(send);
                self.layer = Layer::Initiating(Box::new(initiator));
            }
            Err(e) => {
                self.mse_failed(now, e);
            }
        }
    }

    fn on_bytes(&mut self, now: Millis, bytes: &[u8], send: &mut Vec<u8>) -> Verdict {
        match &mut self.layer {
            Layer::Plain => verdict(self.feed(now, bytes, send)),
            Layer::Stream(stream) => {
                let mut plain = bytes.to_vec();
                stream.decrypt(&mut plain);
                verdict(self.feed(now, &plain, send))
            }
            Layer::Initiating(initiator) => match initiator.on_bytes(bytes, send) {
                Ok(mse::Progress::NeedMore) => Verdict::Continue,
                Ok(mse::Progress::Done(done)) => {
                    self.probe.set_mse(crypto_name(done.crypto));
                    self.layer = Layer::Stream(Box::new(done.stream));
                    verdict(self.feed(now, &done.payload, send))
                }
                Err(e) => self.mse_failed(now, e),
            },
            Layer::Sniffing(seen) => {
                seen.extend_from_slice(bytes);
                match mse::classify_incoming(seen) {
                    mse::IncomingKind::NeedMore => Verdict::Continue,
                    mse::IncomingKind::Plaintext => {
                        let seen = std::mem::take(seen);
                        self.layer = Layer::Plain;
                        verdict(self.feed(now, &seen, send))
                    }
                    mse::IncomingKind::Encrypted if seen.len() < mse::KEY_LEN => {
                        Verdict::Continue // the DH starts with the whole public key
                    }
                    mse::IncomingKind::Encrypted => {
                        let seen = std::mem::take(seen);
                        if self.mse_budget.as_ref().is_some_and(|b| !b.try_take(now)) {
                            let e = mse::MseError::Refused("incoming DH budget spent");
                            return self.mse_failed(now, e);
                        }
                        match mse::Responder::new(
                            worker_dh_key(),
                            pad(),
                            Vec::new(),
                            mse::CryptoSet::BOTH,
                            mse::Crypto::Rc4,
                        ) {
                            Ok(r) => {
                                self.layer =
                                    Layer::Responding(Box::new(r.with_max_initial_payload(4096)));
                                self.on_bytes(now, &seen, send)
                            }
                            Err(e) => self.mse_failed(now, e),
                        }
                    }
                }
            }
            Layer::Responding(responder) => {
                let catalog = self.catalog.clone();
                match responder.on_bytes(bytes, send, |req2| catalog.by_req2(req2)) {
                    Ok(mse::Progress::NeedMore) => Verdict::Continue,
                    Ok(mse::Progress::Done(done)) => {
                        self.probe.set_mse(crypto_name(done.crypto));
                        self.layer = Layer::Stream(Box::new(done.stream));
                        let mut plain = done.initial_payload;
                        plain.extend_from_slice(&done.payload);
                        verdict(self.feed(now, &plain, send))
                    }
                    Err(e) => self.mse_failed(now, e),
                }
            }
        }
    }

    fn deadline(&self) -> Millis {
        self.probe.deadline(&self.settings)
    }

    fn on_deadline(&mut self, now: Millis, send: &mut Vec<u8>) -> Verdict {
        let start = send.len();
        let step = self.probe.on_deadline(&self.settings, now, send);
        if let Layer::Stream(stream) = &mut self.layer {
            stream.encrypt(&mut send[start..]);
        } else if !matches!(self.layer, Layer::Plain) {
            // Still in an MSE handshake: nothing the probe says may go out in the clear.
            send.truncate(start);
        }
        verdict(step)
    }

    fn on_closed(&mut self, now: Millis, errno: Option<i32>) {
        self.probe.on_closed(now, errno);
    }
}

/// Messages between workers (and from discovery to workers).
pub enum WorkerMsg {
    /// Addresses for a torrent from one source.
    Peers {
        torrent: u32,
        source: u8,
        addrs: Vec<SocketAddr>,
    },
    /// An incoming connection evaluated a peer this worker owns.
    Visited {
        torrent: u32,
        addr: SocketAddr,
        report: Box<ProbeReport>,
        at_ms: Millis,
    },
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
    /// Incoming MSE handshakes closed because the worker's DH budget was spent.
    pub mse_incoming_refused: AtomicU64,
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
    mse_budget: Arc<IncomingDhBudget>,
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
            mse_budget: Arc::new(IncomingDhBudget::new(
                crate::config::NetConfig::default().mse_incoming_per_sec,
            )),
            counters: Arc::new(WorkerCounters::default()),
        }
    }

    /// When to talk MSE/PE to a peer (`net.encryption`).
    pub fn with_encryption(mut self, encryption: Encryption) -> ScanDriver {
        self.encryption = encryption;
        self
    }

    /// DH computations per second this worker spends on incoming MSE handshakes
    /// (`net.mse_incoming_per_sec`).
    pub fn with_mse_incoming_per_sec(mut self, per_sec: u32) -> ScanDriver {
        self.mse_budget = Arc::new(IncomingDhBudget::new(per_sec));
        self
    }

    /// Whether the next probe of a peer with these flags uses MSE.
    fn use_mse(&self, flags: u8) -> bool {
        match self.encryption {
            Encryption::Off => false,
            Encryption::Require => true,
            Encryption::Prefer => flags & flag::MSE_FAILED == 0,
            Encryption::Fallback => flags & flag::USE_MSE != 0 && flags & flag::MSE_FAILED == 0,
        }
    }

    pub fn table(&self) -> &PeerTable {
        &self.table
    }

    /// Adds a peer known from an earlier run, with its state and next visit.
    pub fn restore(&mut self, peer: RestoredPeer) {
        if let Inserted::New(idx) = self.table.insert(peer.torrent, peer.addr, peer.sources, 0) {
            let p = self.table.get_mut(idx);
            p.progress = peer.progress;
            p.flags = peer.flags & !flag::IN_FLIGHT;
            p.last_contact = peer.last_contact;
            match peer.next_visit {
                Some(t) => {
                    p.next_visit = t;
                    self.wheel.schedule(idx, t);
                }
                None => p.next_visit = NOT_SCHEDULED,
            }
        }
    }

    fn secs(now: Millis) -> u32 {
        (now / 1000) as u32
    }

    fn add_peers(&mut self, torrent: u32, src: u8, addrs: &[SocketAddr], now: Millis) {
        for &a in addrs {
            if self.blocklist.blocks(&a) {
                self.counters.blocked.fetch_add(1, Ordering::Relaxed);
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

    /// Applies a visit to a peer this worker owns and reports it.
    fn apply_visit(
        &mut self,
        idx: PeerIdx,
        report: ProbeReport,
        kind: ContactKind,
        at_ms: Millis,
        connect_ms: Option<Millis>,
    ) {
        let torrent = self.table.get(idx).torrent;
        self.learn_metadata(torrent, &report, at_ms);
        let now = Self::secs(at_ms);
        let entry = self.table.get_mut(idx);
        entry.flags &= !flag::IN_FLIGHT;
        let kind = match kind {
            ContactKind::Incoming => ContactKind::Incoming,
            _ if entry.has(flag::EVALUATED) || entry.failures > 0 => ContactKind::Later,
            _ => ContactKind::First,
        };
        // (The store computes speeds from the stored contacts; only confirmation matters here.)
        let newly_confirmed = match report.progress() {
            Some(p) => {
                self.policy
                    .apply(entry, now, VisitResult::Progress(p))
                    .newly_confirmed
            }
            None if report.handshake => {
                // Talked BitTorrent but progress is unknown (no piece count): keep visiting.
                entry.failures = 0;
                entry.next_visit = now.saturating_add(self.policy.revisit_secs as u32);
                false
            }
            None => {
                self.policy.apply(entry, now, VisitResult::Failed);
                false
            }
        };
        let next = entry.next_visit;
        let torrent = entry.torrent;
        let addr = entry.addr();
        if next != NOT_SCHEDULED {
            self.wheel.schedule(idx, next);
        }
        if report.succeeded() {
            self.counters.probes_ok.fetch_add(1, Ordering::Relaxed);
        }
        if newly_confirmed {
            self.counters.confirmed.fetch_add(1, Ordering::Relaxed);
        }
        self.counters.probes_done.fetch_add(1, Ordering::Relaxed);
        if !report.pex.is_empty() {
            let pex = report.pex.clone();
            self.records.send(Record::Discovery(DiscoveryRecord {
                at: self.unix_ms(at_ms),
                torrent_id: self.catalog.get(torrent).db_id,
                source: PeerSource::Pex,
                tracker: None,
                duration_ms: 0,
                error: None,
                peers: pex.clone(),
            }));
            self.route_peers(torrent, source::PEX, pex.into_iter());
        }
        let next_visit_at = (next != NOT_SCHEDULED).then(|| self.unix_ms(next as u64 * 1000));
        let outcome = outcome_record(
            self.catalog.get(torrent).db_id,
            addr,
            kind,
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

    fn on_incoming_done(&mut self, done: ProbeDone<ProbeConv>, now: Millis) {
        let report = done.conv.into_report();
        let Some(hash) = report.info_hash else {
            // Closed, or not BitTorrent (e.g. an encrypted handshake), before naming a torrent.
            self.records.send(Record::UnmatchedIncoming {
                at: self.unix_ms(now),
                error: error_class(&report),
            });
            return;
        };
        let Some(torrent) = self.catalog.index_of(&hash).filter(|_| report.handshake) else {
            // Counted (table 5.7, incoming × unknown info-hash); the peer itself is not
            // stored: it is not in the study. Dropped at once (the thesis tool held it 6 s).
            let _ = hash;
            self.counters
                .unknown_info_hash
                .fetch_add(1, Ordering::Relaxed);
            self.records.send(Record::UnmatchedIncoming {
                at: self.unix_ms(now),
                error: if report.handshake {
                    ErrorClass::UnknownInfoHash
                } else {
                    error_class(&report)
                },
            });
            return;
        };
        // Identity of an incoming peer: (torrent, ip, listen port from the extension
        // handshake). Without a listen port the peer cannot be dialled back (its source port
        // is ephemeral): its progress is stored under the source port, and it is not added to
        // the peers we probe.
        let Some(port) = report.listen_port else {
            if report.succeeded() {
                let outcome = outcome_record(
                    self.catalog.get(torrent).db_id,
                    done.peer,
                    ContactKind::Incoming,
                    self.unix_ms(now),
                    None,
                    &report,
                    None,
                );
                self.records.send(Record::Outcome(Box::new(outcome)));
            } else {
                self.records.send(Record::UnmatchedIncoming {
                    at: self.unix_ms(now),
                    error: error_class(&report),
                });
            }
            return;
        };
        let addr = SocketAddr::new(done.peer.ip(), port);
        let owner = owner_worker(torrent, addr, self.route.len());
        self.outbox[owner].push(WorkerMsg::Peers {
            torrent,
            source: source::INCOMING,
            addrs: vec![addr],
        });
        self.outbox[owner].push(WorkerMsg::Visited {
            torrent,
            addr,
            report: Box::new(report),
            at_ms: now,
        });
    }

    fn handle_inbox(&mut self, now: Millis) {
        for _ in 0..INBOX_PER_TICK {
            let Ok(msg) = self.inbox.try_recv() else {
                break;
            };
            match msg {
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
                } => {
                    if let Some(idx) = self.table.find(torrent, addr) {
                        if self.table.get(idx).has(flag::IN_FLIGHT) {
                            // An outgoing probe is running too; its result will follow.
                            continue;
                        }
                        self.apply_visit(idx, *report, ContactKind::Incoming, at_ms, None);
                    }
                }
            }
        }
    }
}

impl WorkerDriver for ScanDriver {
    type Conv = ProbeConv;

    fn next_probe(&mut self, now: Millis) -> Option<ProbeRequest<ProbeConv>> {
        if self.due.is_empty() {
            self.wheel
                .drain_due(&mut self.table, Self::secs(now), 1024, &mut self.due);
            self.due.reverse(); // pop() then serves them in due order
        }
        let idx = self.due.pop()?;
        let entry = self.table.get_mut(idx);
        entry.flags |= flag::IN_FLIGHT;
        let kind = if entry.has(flag::EVALUATED) || entry.failures > 0 {
            ContactKind::Later
        } else {
            ContactKind::First
        };
        let (torrent, addr, flags) = (entry.torrent, entry.addr(), entry.flags);
        let use_mse = self.use_mse(flags);
        self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        self.probe_seq += 1;
        let workers = self.route.len() as u64;
        let nonce = (self.epoch_unix_ms as u64)
            .wrapping_mul(1_000_003)
            .wrapping_add(self.probe_seq * workers + self.worker as u64);
        Some(ProbeRequest {
            addr,
            token: idx as u64,
            conv: ProbeConv::outgoing(
                self.settings.clone(),
                self.catalog.clone(),
                torrent,
                kind,
                now,
            )
            .with_peer_id_nonce(nonce),
        })
        .map(|mut r| {
            if use_mse {
                r.conv = r.conv.with_mse();
            }
            r
        })
    }

    fn probe_done(&mut self, now: Millis, done: ProbeDone<ProbeConv>) {
        if done.incoming {
            self.on_incoming_done(done, now);
            return;
        }
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        if matches!(done.ending, Ending::Closed(Some(libc::ECANCELED))) {
            // The engine stopped mid-probe: not a visit. Due again at once after a restart.
            let p = self.table.get_mut(done.token as PeerIdx);
            p.flags &= !flag::IN_FLIGHT;
            p.next_visit = Self::secs(now);
            return;
        }
        let kind = done.conv.kind;
        let mse_attempted = done.conv.mse_attempted;
        let report = done.conv.into_report();
        let idx = done.token as PeerIdx;
        // A peer that hangs up on our plaintext handshake right after connecting usually
        // requires encryption (libtorrent's "forced" policy does exactly this); one whose MSE
        // handshake fails gets plaintext. Either way it is retried at once, the other way.
        let hung_up = done.connect_ms.is_some()
            && !report.handshake
            && matches!(
                report.end,
                ProbeEnd::PeerClosed | ProbeEnd::SocketError(libc::ECONNRESET)
            );
        let mse_failed = mse_attempted
            && report.mse.is_none()
            && (hung_up || matches!(report.end, ProbeEnd::MseFailed(_)));
        self.apply_visit(idx, report, kind, done.started_at, done.connect_ms);
        let secs = Self::secs(now);
        let p = self.table.get_mut(idx);
        let retry = if mse_failed && self.encryption != Encryption::Require {
            p.flags |= flag::MSE_FAILED;
            true
        } else if hung_up
            && !mse_attempted
            && self.encryption == Encryption::Fallback
            && p.flags & (flag::USE_MSE | flag::MSE_FAILED) == 0
        {
            p.flags |= flag::USE_MSE;
            true
        } else {
            false
        };
        if retry {
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
        Some((
            u64::MAX,
            ProbeConv::incoming(self.settings.clone(), self.catalog.clone(), now)
                .with_incoming_budget(self.mse_budget.clone()),
        ))
    }

    fn tick(&mut self, now: Millis) {
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

    fn next_wakeup(&self) -> Option<Millis> {
        // Revisit times have one-second resolution; the inbox is polled at least this often.
        Some(self.last_tick + 50)
    }

    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

impl Drop for ScanDriver {
    fn drop(&mut self) {
        self.flush_outbox();
        self.counters
            .mse_incoming_refused
            .store(self.mse_budget.refused(), Ordering::Relaxed);
    }
}

/// The store's record of one finished probe.
pub fn outcome_record(
    torrent_id: i64,
    addr: SocketAddr,
    kind: ContactKind,
    at: i64,
    connect_ms: Option<Millis>,
    report: &ProbeReport,
    next_visit_at: Option<i64>,
) -> ProbeOutcome {
    let event = match kind {
        ContactKind::First => ProbeEvent::FirstContact,
        ContactKind::Later => ProbeEvent::LaterContact,
        ContactKind::Incoming => ProbeEvent::Incoming,
    };
    let result = if report.handshake && report.progress_source.is_some() {
        ProbeResult::Success(Progress {
            have: report.pieces_have,
            pieces: report.piece_count,
        })
    } else {
        ProbeResult::Failed(error_class(report))
    };
    let mut transport = Transport::TCP;
    if addr.is_ipv6() && addr.ip().to_canonical().is_ipv6() {
        transport = transport | Transport::IPV6;
    }
    if kind == ContactKind::Incoming {
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
        longest_gap_ms: (report.messages > 1)
            .then_some(report.longest_gap_ms.min(u32::MAX as u64) as u32),
        messages: report.messages,
        next_visit_at,
    }
}

/// The thesis' error classes (table 5.7) for a probe that learned no progress.
pub fn error_class(report: &ProbeReport) -> ErrorClass {
    match &report.end {
        ProbeEnd::SocketError(e) => ErrorClass::from_errno(*e),
        ProbeEnd::UnknownProtocol | ProbeEnd::ProtocolError(_) => ErrorClass::UnknownProtocol,
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
