//! The scan layer's side of one worker: owns that worker's shard of peers and its revisit
//! wheel, hands the engine the next due peer, and turns finished probes into observations.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::catalog::Catalog;
use super::peer_table::{flag, owner_worker, source, Inserted, PeerIdx, PeerTable, NOT_SCHEDULED};
use super::revisit::{RevisitPolicy, RevisitWheel, VisitResult};
use crate::engine::conversation::{Conversation, Millis, Verdict};
use crate::engine::worker::{Ending, ProbeDone, ProbeRequest, WorkerDriver};
use crate::proto::probe::{Direction, Probe, ProbeReport, ProbeSettings, Step};

/// Which kind of contact a probe was (thesis table 5.7 rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactKind {
    First,
    Later,
    Incoming,
}

/// A probe adapted to the engine's conversation contract.
pub struct ProbeConv {
    probe: Probe,
    settings: Arc<ProbeSettings>,
    catalog: Arc<Catalog>,
    pub kind: ContactKind,
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
            piece_count: t.piece_count,
        };
        ProbeConv {
            probe: Probe::new(direction, now),
            settings,
            catalog,
            kind,
        }
    }

    pub fn incoming(settings: Arc<ProbeSettings>, catalog: Arc<Catalog>, now: Millis) -> ProbeConv {
        ProbeConv {
            probe: Probe::new(Direction::Incoming, now),
            settings,
            catalog,
            kind: ContactKind::Incoming,
        }
    }

    pub fn report(&self) -> &ProbeReport {
        self.probe.report()
    }

    pub fn into_report(self) -> ProbeReport {
        self.probe.into_report()
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
        self.probe.on_connected(&self.settings, now, send);
    }
    fn on_bytes(&mut self, now: Millis, bytes: &[u8], send: &mut Vec<u8>) -> Verdict {
        verdict(
            self.probe
                .on_bytes(&self.settings, &*self.catalog, now, bytes, send),
        )
    }
    fn deadline(&self) -> Millis {
        self.probe.deadline(&self.settings)
    }
    fn on_deadline(&mut self, now: Millis, send: &mut Vec<u8>) -> Verdict {
        verdict(self.probe.on_deadline(&self.settings, now, send))
    }
    fn on_closed(&mut self, now: Millis, errno: Option<i32>) {
        self.probe.on_closed(now, errno);
    }
}

/// Messages between workers (and from discovery to workers).
pub enum WorkerMsg {
    /// Addresses for a torrent from one source. `request` ties them to a discovery request
    /// so the owner can report how many were new.
    Peers {
        torrent: u32,
        source: u8,
        addrs: Vec<SocketAddr>,
        request: Option<u64>,
    },
    /// An incoming connection evaluated a peer this worker owns.
    Visited {
        torrent: u32,
        addr: SocketAddr,
        report: Box<ProbeReport>,
        at_ms: Millis,
    },
}

/// What a worker tells the store. One per finished probe, plus discovery bookkeeping.
#[derive(Debug, Clone)]
pub enum Observation {
    Probe(Box<ProbeObservation>),
    /// How many addresses of a discovery request were new to the scan.
    DiscoveryCounts { request: u64, new: u32, duplicate: u32 },
    /// An incoming connection asked for a torrent we do not scan.
    UnknownInfoHash { remote: SocketAddr, info_hash: Option<[u8; 20]>, at_ms: Millis },
    /// One tracker announce.
    Discovery(Box<super::discovery::DiscoveryObservation>),
    /// One tracker scrape result for one torrent.
    Scrape(Box<super::discovery::ScrapeObservation>),
}

/// One finished probe.
#[derive(Debug, Clone)]
pub struct ProbeObservation {
    pub torrent: u32,
    pub addr: SocketAddr,
    pub kind: ContactKind,
    pub sources: u8,
    pub at_ms: Millis,
    pub connect_ms: Option<Millis>,
    pub report: ProbeReport,
    /// Progress after this visit, and whether this visit confirmed a download.
    pub newly_confirmed: bool,
    pub speed: Option<f64>,
    /// Seconds since the scan epoch of the next visit (None = not scheduled).
    pub next_visit_secs: Option<u32>,
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
    pub sink_backlog: AtomicU64,
}

/// Where observations go: a bounded channel to the store writer. A full channel never blocks
/// the probe loop and never loses a record: the driver keeps a backlog and retries each tick.
pub struct ObservationSink {
    tx: Sender<Observation>,
    backlog: std::collections::VecDeque<Observation>,
}

impl ObservationSink {
    pub fn new(tx: Sender<Observation>) -> Self {
        ObservationSink {
            tx,
            backlog: Default::default(),
        }
    }
    pub fn send(&mut self, o: Observation) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(o);
            return;
        }
        match self.tx.try_send(o) {
            Ok(()) => {}
            Err(TrySendError::Full(o)) => self.backlog.push_back(o),
            Err(TrySendError::Disconnected(_)) => {} // the writer is gone: shutting down
        }
    }
    /// Retries the backlog; returns how many are still waiting.
    pub fn flush(&mut self) -> usize {
        while let Some(o) = self.backlog.pop_front() {
            match self.tx.try_send(o) {
                Ok(()) => {}
                Err(TrySendError::Full(o)) => {
                    self.backlog.push_front(o);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => self.backlog.clear(),
            }
        }
        self.backlog.len()
    }
    /// Blocks until the backlog is delivered (shutdown only).
    pub fn flush_blocking(&mut self) {
        while let Some(o) = self.backlog.pop_front() {
            if self.tx.send(o).is_err() {
                break;
            }
        }
    }
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
    sink: ObservationSink,
    stop: Arc<AtomicBool>,
    last_tick: Millis,
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
        sink: Sender<Observation>,
        stop: Arc<AtomicBool>,
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
            sink: ObservationSink::new(sink),
            stop,
            last_tick: 0,
            counters: Arc::new(WorkerCounters::default()),
        }
    }

    pub fn table(&self) -> &PeerTable {
        &self.table
    }

    /// Adds a peer known from an earlier run, with its state and next visit.
    pub fn restore(&mut self, torrent: u32, addr: SocketAddr, sources: u8, progress: u16, flags: u8, last_contact: u32, next_visit: Option<u32>) {
        if let Inserted::New(idx) = self.table.insert(torrent, addr, sources, 0) {
            let p = self.table.get_mut(idx);
            p.progress = progress;
            p.flags = flags & !flag::IN_FLIGHT;
            p.last_contact = last_contact;
            match next_visit {
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

    fn add_peers(&mut self, torrent: u32, src: u8, addrs: &[SocketAddr], now: Millis) -> (u32, u32) {
        let (mut new, mut dup) = (0, 0);
        for &a in addrs {
            match self.table.insert(torrent, a, src, Self::secs(now)) {
                Inserted::New(idx) => {
                    new += 1;
                    self.wheel.schedule(idx, Self::secs(now));
                }
                Inserted::Existing(_) => dup += 1,
                Inserted::Full => {
                    self.counters.table_full.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.counters
            .known_peers
            .store(self.table.len() as u64, Ordering::Relaxed);
        (new, dup)
    }

    fn route_peers(&mut self, torrent: u32, src: u8, addrs: impl Iterator<Item = SocketAddr>) {
        let workers = self.route.len();
        for a in addrs {
            let w = owner_worker(torrent, a, workers);
            match self.outbox[w].last_mut() {
                Some(WorkerMsg::Peers { torrent: t, source: s, addrs, .. }) if *t == torrent && *s == src => addrs.push(a),
                _ => self.outbox[w].push(WorkerMsg::Peers {
                    torrent,
                    source: src,
                    addrs: vec![a],
                    request: None,
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

    /// Applies a visit to a peer this worker owns and reports it.
    fn apply_visit(&mut self, idx: PeerIdx, report: ProbeReport, kind: ContactKind, at_ms: Millis, connect_ms: Option<Millis>) {
        let now = Self::secs(at_ms);
        let entry = self.table.get_mut(idx);
        entry.flags &= !flag::IN_FLIGHT;
        let kind = match kind {
            ContactKind::Incoming => ContactKind::Incoming,
            _ if entry.has(flag::EVALUATED) || entry.failures > 0 => ContactKind::Later,
            _ => ContactKind::First,
        };
        let (newly_confirmed, speed) = match report.progress() {
            Some(p) => {
                let e = self.policy.apply(entry, now, VisitResult::Progress(p));
                (e.newly_confirmed, e.speed)
            }
            None if report.handshake => {
                // Talked BitTorrent but progress is unknown (no piece count): keep visiting.
                entry.failures = 0;
                entry.next_visit = now.saturating_add(self.policy.revisit_secs as u32);
                (false, None)
            }
            None => {
                self.policy.apply(entry, now, VisitResult::Failed);
                (false, None)
            }
        };
        let next = entry.next_visit;
        let torrent = entry.torrent;
        let addr = entry.addr();
        let sources = entry.sources;
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
            self.route_peers(torrent, source::PEX, pex.into_iter());
        }
        self.sink.send(Observation::Probe(Box::new(ProbeObservation {
            torrent,
            addr,
            kind,
            sources,
            at_ms,
            connect_ms,
            report,
            newly_confirmed,
            speed,
            next_visit_secs: (next != NOT_SCHEDULED).then_some(next),
        })));
    }

    fn on_incoming_done(&mut self, done: ProbeDone<ProbeConv>, now: Millis) {
        let report = done.conv.into_report();
        let Some(hash) = report.info_hash else {
            return; // closed before a handshake: nothing to attribute
        };
        let Some(torrent) = self.catalog.index_of(&hash).filter(|_| report.handshake) else {
            self.sink.send(Observation::UnknownInfoHash {
                remote: done.peer,
                info_hash: Some(hash),
                at_ms: now,
            });
            return;
        };
        // Identity of an incoming peer: its listen port from the extension handshake, else
        // the (ephemeral) source port.
        let port = report.listen_port.unwrap_or(done.peer.port());
        let addr = SocketAddr::new(done.peer.ip(), port);
        let owner = owner_worker(torrent, addr, self.route.len());
        self.outbox[owner].push(WorkerMsg::Peers {
            torrent,
            source: source::INCOMING,
            addrs: vec![addr],
            request: None,
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
            let Ok(msg) = self.inbox.try_recv() else { break };
            match msg {
                WorkerMsg::Peers { torrent, source, addrs, request } => {
                    let (new, duplicate) = self.add_peers(torrent, source, &addrs, now);
                    if let Some(request) = request {
                        self.sink.send(Observation::DiscoveryCounts { request, new, duplicate });
                    }
                }
                WorkerMsg::Visited { torrent, addr, report, at_ms } => {
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
        let (torrent, addr) = (entry.torrent, entry.addr());
        self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(ProbeRequest {
            addr,
            token: idx as u64,
            conv: ProbeConv::outgoing(self.settings.clone(), self.catalog.clone(), torrent, kind, now),
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
        let report = done.conv.into_report();
        self.apply_visit(done.token as PeerIdx, report, kind, done.started_at, done.connect_ms);
    }

    fn incoming(&mut self, now: Millis, _remote: SocketAddr, _local: SocketAddr) -> Option<(u64, ProbeConv)> {
        Some((u64::MAX, ProbeConv::incoming(self.settings.clone(), self.catalog.clone(), now)))
    }

    fn tick(&mut self, now: Millis) {
        self.last_tick = now;
        self.handle_inbox(now);
        self.flush_outbox();
        let backlog = self.sink.flush();
        self.counters.sink_backlog.store(backlog as u64, Ordering::Relaxed);
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
        self.sink.flush_blocking();
        let _ = self.worker;
    }
}
