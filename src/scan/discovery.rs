//! Peer discovery from HTTP, HTTPS and UDP trackers: announces on an interval (ours, or the tracker's
//! `interval` when `tracker.respect_interval` says so; never sooner than its `min interval`, see
//! [`super::announce_schedule`]), scrapes for the reported download counts, and hands the
//! addresses to the workers that own them, minus our own addresses ([`OwnAddresses`]).
//!
//! HTTP(S) tracker traffic is a few requests per torrent every few minutes, far from the hot
//! path, so it runs on a small pool of threads with blocking sockets and timeouts (bounded:
//! every request ends within its timeout, and the pool stops with the scan). `udp://`
//! trackers are asked from the workers' UDP sockets on their rings ([`super::udp_tracker`]):
//! the pool only resolves their host names ([`DnsCache`]) and hands the request to the
//! worker; the answer comes back to the scheduler thread, which records it exactly as an
//! HTTP answer is recorded. `https://` trackers
//! speak the same protocol over TLS (rustls, certificates verified against the web PKI roots
//! plus `tracker.ca_files`); a TLS failure is recorded like any other failed announce.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::announce_schedule::{self, DecidedBy, NextAnnounce};
use super::catalog::Catalog;
use super::driver::WorkerMsg;
use super::own_addr::OwnAddresses;
use super::peer_table::owner_worker;
use super::udp_tracker::{UdpTrackerJob, UdpTrackerRoute};
use crate::proto::http::{self, ResponseLimits, ResponseReader};
use crate::proto::tracker_http::{self, AnnounceParams, Event, HttpTrackerUrl};
use crate::proto::tracker_udp::client::{Answer, Query};
use crate::proto::tracker_udp::{self, AnnounceRequest};
use crate::store::record::{
    DiscoveryRecord, PeerSource, Record, ScrapeRecord, TrackerScheduleRecord,
};
use crate::store::writer::RecordSender;
use rustls::pki_types::ServerName;

use super::tls;

/// Settings of discovery (from the `tracker.*` config keys).
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// Our announce interval in seconds (the tracker's min interval wins if longer).
    pub announce_secs: f64,
    /// Wait the tracker's `interval` instead of `announce_secs` when it is longer.
    pub respect_interval: bool,
    /// Scrape interval in seconds (0 = never scrape).
    pub scrape_secs: f64,
    pub numwant: u32,
    /// Port announced to trackers (where incoming peers reach us); 0 = none listening.
    pub listen_port: u16,
    /// Our own addresses: dropped from tracker answers, counted.
    pub own: Arc<OwnAddresses>,
    pub peer_id: [u8; 20],
    /// Timeout of one HTTP(S) tracker request (connect, TLS handshake, response); UDP
    /// requests are paced by the workers' client (`tracker.timeout_ms` there too).
    pub timeout: Duration,
    /// Request threads: HTTP(S) requests, and the name lookups of UDP trackers.
    pub threads: usize,
    pub user_agent: String,
    /// TLS client configuration for `https://` trackers (roots: web PKI plus
    /// `tracker.ca_files`, see [`tls::client_config`]).
    pub tls: Arc<rustls::ClientConfig>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            announce_secs: 300.0,
            respect_interval: true,
            scrape_secs: 300.0,
            numwant: 200,
            listen_port: 0,
            own: Arc::new(OwnAddresses::default()),
            peer_id: *b"-SW0100-000000000000",
            timeout: Duration::from_secs(15),
            threads: 4,
            user_agent: concat!("swarmscan/", env!("CARGO_PKG_VERSION")).to_string(),
            tls: tls::client_config(&[])
                .expect("the web PKI roots alone always make a valid TLS configuration"),
        }
    }
}

/// A torrent's row id and wire hash.
type TorrentHash = (i64, [u8; 20]);
/// Seeders, leechers and completed downloads, as far as the tracker says.
type ScrapeCounts = (Option<u64>, Option<u64>, Option<u64>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `http://` or `https://` (BEP 3 over HTTP, TLS for https).
    Http,
    Udp,
}

/// The protocol of a tracker URL (scheme case-insensitive); None for one we do not speak.
fn kind_of(url: &str) -> Option<Kind> {
    let scheme = url.split_once("://")?.0;
    if scheme.eq_ignore_ascii_case("udp") {
        Some(Kind::Udp)
    } else if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") {
        Some(Kind::Http)
    } else {
        None
    }
}

/// One (torrent, tracker URL) pair with its schedule.
struct Target {
    torrent: u32,
    url: String,
    kind: Kind,
    next_announce: Instant,
    started: bool,
    failures: u32,
    busy: bool,
    /// The announce under way is the `stopped` one of a removed torrent.
    stopping: bool,
}

/// What the session tells discovery while the scan runs.
pub enum DiscoveryMsg {
    /// The catalog grew: announce the new torrents too.
    Catalog(Arc<Catalog>),
    /// `tracker.announce_secs` and `tracker.scrape_secs` changed (SIGHUP): used from the next
    /// announce and scrape on.
    Intervals {
        announce_secs: f64,
        scrape_secs: f64,
    },
}

/// One target per (torrent, tracker URL) of the torrents from index `from` on.
fn targets_of(catalog: &Catalog, from: usize, now: Instant) -> Vec<Target> {
    let mut targets = Vec::new();
    for (i, t) in catalog.iter().enumerate().skip(from) {
        let mut seen = std::collections::HashSet::new();
        // Every tracker of every tier: a measurement wants all the peers it can get.
        for url in t.trackers.iter().flatten() {
            let Some(kind) = kind_of(url) else {
                // Not a tracker protocol we speak (e.g. wss://): nothing to announce to.
                tracing::debug!(url, "tracker URL scheme not supported; skipped");
                continue;
            };
            if seen.insert(url.clone()) {
                targets.push(Target {
                    torrent: i as u32,
                    url: url.clone(),
                    kind,
                    next_announce: now,
                    started: false,
                    failures: 0,
                    busy: false,
                    stopping: false,
                });
            }
        }
    }
    targets
}

enum Job {
    Announce {
        target: usize,
        torrent: u32,
        db_id: i64,
        url: String,
        params: AnnounceParams,
        /// `tracker.announce_secs` when the job was made (SIGHUP may change it).
        announce_secs: f64,
    },
    Scrape {
        url: String,
        kind: Kind,
        torrents: Vec<TorrentHash>,
    },
}

enum JobResult {
    Announce {
        target: usize,
        /// The schedule after a successful announce; `None` when it failed.
        next: Option<NextAnnounce>,
    },
    Scraped,
    /// A UDP tracker's answer from a worker, to be recorded (by the scheduler thread).
    UdpAnswered(Box<UdpAnswered>),
}

/// What an announce was for, kept until its answer is recorded.
struct AnnounceJob {
    target: usize,
    torrent: u32,
    db_id: i64,
    url: String,
    /// `tracker.announce_secs` when the job was made (SIGHUP may change it).
    announce_secs: f64,
}

/// The UDP request a worker answered, with when it started (its duration counts from the
/// moment a request thread took it, name lookup included, as for HTTP).
struct UdpAnswered {
    what: UdpJob,
    at_ms: u64,
    duration_ms: u64,
    answer: Result<Answer, String>,
}

enum UdpJob {
    Announce(AnnounceJob),
    Scrape {
        url: String,
        torrents: Vec<TorrentHash>,
    },
}

/// Handle to the running discovery threads.
pub struct Discovery {
    threads: Vec<JoinHandle<()>>,
    control: Sender<DiscoveryMsg>,
}

impl Discovery {
    /// Starts discovery for every tracker of every torrent in `catalog`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        cfg: DiscoveryConfig,
        catalog: Arc<Catalog>,
        route: Vec<Sender<WorkerMsg>>,
        records: RecordSender,
        udp: UdpTrackerRoute,
        epoch_unix_ms: i64,
        epoch: Instant,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Discovery> {
        let targets = targets_of(&catalog, 0, Instant::now());
        let mut threads = Vec::new();
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<Job>();
        let (res_tx, res_rx) = crossbeam_channel::unbounded::<JobResult>();
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            route,
            records: Mutex::new(records),
            epoch_unix_ms,
            epoch,
            stop: stop.clone(),
            udp,
            answers: res_tx.clone(),
            dns: DnsCache::default(),
        });
        for n in 0..cfg.threads.max(1) {
            let (shared, job_rx, res_tx) = (shared.clone(), job_rx.clone(), res_tx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("discovery-{n}"))
                    .spawn(move || {
                        while let Ok(job) = job_rx.recv() {
                            if shared.stop.load(Ordering::Relaxed) {
                                break;
                            }
                            // A UDP request handed to a worker answers later (UdpAnswered).
                            if let Some(r) = shared.run(job) {
                                let _ = res_tx.send(r);
                            }
                        }
                    })?,
            );
        }
        let (control, control_rx) = crossbeam_channel::unbounded::<DiscoveryMsg>();
        threads.push(
            std::thread::Builder::new()
                .name("discovery".into())
                .spawn(move || {
                    schedule_loop(cfg, catalog, targets, job_tx, res_rx, control_rx, shared)
                })?,
        );
        Ok(Discovery { threads, control })
    }

    /// Tells the scheduler something changed (see [`DiscoveryMsg`]); it acts within 0.1 s.
    pub fn tell(&self, msg: DiscoveryMsg) {
        let _ = self.control.send(msg);
    }

    /// The name of a discovery thread that has ended. Before the stop flag is set every one
    /// of them runs, so an ended one has failed (panicked): the scan must stop, not go on
    /// without discovery.
    pub fn ended_thread(&self) -> Option<String> {
        crate::threads::first_finished(&self.threads)
    }

    /// Waits for the threads (they end within one request timeout of the stop flag); the
    /// first thread that panicked is the error, named.
    pub fn join(self) -> Result<(), String> {
        let mut result = Ok(());
        for t in self.threads {
            if let (Err(e), Ok(())) = (crate::threads::join(t), &result) {
                result = Err(e);
            }
        }
        result
    }
}

fn schedule_loop(
    mut cfg: DiscoveryConfig,
    mut catalog: Arc<Catalog>,
    mut targets: Vec<Target>,
    jobs: Sender<Job>,
    results: Receiver<JobResult>,
    control: Receiver<DiscoveryMsg>,
    shared: Arc<Shared>,
) {
    let stop = shared.stop.clone();
    let mut next_scrape = Instant::now() + Duration::from_secs(5);
    // What the log has said already, once per tracker URL.
    let mut told: std::collections::HashSet<(String, Told)> = std::collections::HashSet::new();
    while !stop.load(Ordering::Relaxed) {
        crate::threads::debug_panic_point("discovery");
        while let Ok(msg) = control.try_recv() {
            match msg {
                DiscoveryMsg::Catalog(grown) if grown.len() >= catalog.len() => {
                    targets.extend(targets_of(&grown, catalog.len(), Instant::now()));
                    catalog = grown;
                }
                DiscoveryMsg::Catalog(_) => {}
                DiscoveryMsg::Intervals {
                    announce_secs,
                    scrape_secs,
                } => {
                    if scrape_secs != cfg.scrape_secs {
                        next_scrape = Instant::now() + Duration::from_secs_f64(scrape_secs);
                    }
                    cfg.announce_secs = announce_secs;
                    cfg.scrape_secs = scrape_secs;
                }
            }
        }
        let now = Instant::now();
        for (i, t) in targets.iter_mut().enumerate() {
            if t.busy {
                continue;
            }
            let torrent = catalog.get(t.torrent);
            let removed = catalog.is_removed(t.torrent);
            if removed && !t.started {
                continue;
            }
            if !removed && t.next_announce > now {
                continue;
            }
            let mut params = AnnounceParams::new(torrent.wire_hash, cfg.peer_id, cfg.listen_port);
            // Announce as a leecher so trackers hand out seeders too.
            params.left = torrent.total_size.max(1);
            params.numwant = Some(cfg.numwant);
            params.event = if removed {
                // `swarmscan remove`: the tracker may forget us (BEP 3 `stopped`), once.
                params.numwant = Some(0);
                t.started = false;
                t.stopping = true;
                Event::Stopped
            } else if t.started {
                Event::None
            } else {
                Event::Started
            };
            params.key = Some(0x5353_0001);
            t.busy = true;
            let _ = jobs.send(Job::Announce {
                target: i,
                torrent: t.torrent,
                db_id: torrent.db_id,
                url: t.url.clone(),
                params,
                announce_secs: cfg.announce_secs,
            });
        }
        if cfg.scrape_secs > 0.0 && now >= next_scrape {
            next_scrape = now + Duration::from_secs_f64(cfg.scrape_secs);
            let mut by_url: HashMap<(String, bool), Vec<TorrentHash>> = HashMap::new();
            for t in targets.iter().filter(|t| !catalog.is_removed(t.torrent)) {
                let torrent = catalog.get(t.torrent);
                by_url
                    .entry((t.url.clone(), t.kind == Kind::Udp))
                    .or_default()
                    .push((torrent.db_id, torrent.wire_hash));
            }
            for ((url, udp), torrents) in by_url {
                let chunk = if udp {
                    tracker_udp::MAX_SCRAPE_HASHES
                } else {
                    50
                };
                for part in torrents.chunks(chunk) {
                    let kind = if udp { Kind::Udp } else { Kind::Http };
                    let _ = jobs.send(Job::Scrape {
                        url: url.clone(),
                        kind,
                        torrents: part.to_vec(),
                    });
                }
            }
        }
        while let Ok(r) = results.recv_timeout(Duration::from_millis(100)) {
            let r = match r {
                JobResult::UdpAnswered(a) => shared.finish_udp(*a),
                r => r,
            };
            if let JobResult::Announce { target, next } = r {
                let t = &mut targets[target];
                t.busy = false;
                if std::mem::take(&mut t.stopping) {
                    // The `stopped` announce: done whatever came back; if the torrent is added
                    // again, its next announce is a `started` one, at once.
                    t.next_announce = Instant::now();
                    continue;
                }
                match next {
                    Some(next) => {
                        t.started = true;
                        t.failures = 0;
                        t.next_announce = Instant::now() + Duration::from_secs_f64(next.secs);
                        tell_once(&mut told, &t.url, &next, &cfg);
                    }
                    None => {
                        t.failures += 1;
                        let wait =
                            announce_schedule::retry_after_failure(cfg.announce_secs, t.failures);
                        t.next_announce = Instant::now() + Duration::from_secs_f64(wait);
                    }
                }
            }
        }
    }
    // UDP answers the workers handed over before they stopped are recorded too (nothing
    // collected is lost); the workers stop within a loop iteration of the flag, after which
    // nothing more comes.
    while let Ok(r) = results.recv_timeout(Duration::from_millis(250)) {
        if let JobResult::UdpAnswered(a) = r {
            shared.finish_udp(*a);
        }
    }
    // Dropping `jobs` ends the pool threads once their current request is done.
}

/// What the log already said about a tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Told {
    Decided(DecidedBy),
    Note(std::mem::Discriminant<announce_schedule::Note>),
}

/// Logs, once per tracker URL, when the tracker's interval (or min interval) wins over ours and
/// when a value it sent was capped or ignored.
fn tell_once(
    told: &mut std::collections::HashSet<(String, Told)>,
    url: &str,
    next: &NextAnnounce,
    cfg: &DiscoveryConfig,
) {
    if next.decided_by != DecidedBy::Ours
        && told.insert((url.to_string(), Told::Decided(next.decided_by)))
    {
        let what = match next.decided_by {
            DecidedBy::Interval => "interval (tracker.respect_interval = true)",
            _ => "min interval (always respected)",
        };
        tracing::info!(
            tracker = %url,
            "the tracker asks for {} s between announces, longer than tracker.announce_secs = {} s: \
             announcing every {} s, its {what}",
            next.secs,
            cfg.announce_secs,
            next.secs
        );
    }
    for note in &next.notes {
        if told.insert((url.to_string(), Told::Note(std::mem::discriminant(note)))) {
            tracing::warn!(tracker = %url, "tracker answer not obeyed as given: {note}");
        }
    }
}

struct Shared {
    cfg: DiscoveryConfig,
    route: Vec<Sender<WorkerMsg>>,
    records: Mutex<RecordSender>,
    epoch_unix_ms: i64,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    /// UDP tracker requests go to the workers (see `scan::udp_tracker`).
    udp: UdpTrackerRoute,
    /// Where the workers' UDP answers go: the scheduler records them.
    answers: Sender<JobResult>,
    dns: DnsCache,
}

/// Tracker host names resolved on the request threads (never on a worker's ring), each
/// kept for [`DNS_CACHE_SECS`]: a name is looked up again at the first request after
/// that, so a tracker that moves is followed within minutes. Failures are not kept.
#[derive(Default)]
struct DnsCache {
    entries: Mutex<HashMap<(String, u16), (SocketAddr, Instant)>>,
}

/// How long a resolved tracker address is used before the name is looked up again.
const DNS_CACHE_SECS: u64 = 300;

impl DnsCache {
    fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let key = (host.to_ascii_lowercase(), port);
        let fresh = |at: &Instant| at.elapsed() < Duration::from_secs(DNS_CACHE_SECS);
        if let Some((addr, _)) = self
            .entries
            .lock()
            .ok()
            .and_then(|e| e.get(&key).copied())
            .filter(|(_, at)| fresh(at))
        {
            return Ok(addr);
        }
        let addr = resolve(host, port)?;
        if let Ok(mut e) = self.entries.lock() {
            e.retain(|_, (_, at)| fresh(at));
            e.insert(key, (addr, Instant::now()));
        }
        Ok(addr)
    }
}

/// An announce's outcome in one shape for both protocols.
struct Announced {
    peers: Vec<SocketAddr>,
    /// As sent (UDP's is a signed 32-bit field).
    interval: Option<i64>,
    min_interval: Option<i64>,
    /// BEP 24: our address as the tracker saw it.
    external_ip: Option<IpAddr>,
    complete: Option<u64>,
    incomplete: Option<u64>,
    downloaded: Option<u64>,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs one job; None when it went to a worker (UDP), whose answer comes back later.
    fn run(&self, job: Job) -> Option<JobResult> {
        match job {
            Job::Announce {
                target,
                torrent,
                db_id,
                url,
                params,
                announce_secs,
            } => {
                let job = AnnounceJob {
                    target,
                    torrent,
                    db_id,
                    url,
                    announce_secs,
                };
                let started = Instant::now();
                let at_ms = self.now_ms();
                let result = match kind_of(&job.url).unwrap_or(Kind::Http) {
                    Kind::Http => self.announce_http(&job.url, &params),
                    Kind::Udp => {
                        let url_data = |u: &tracker_udp::UdpTrackerUrl| {
                            Query::Announce(AnnounceRequest::from_params(
                                0,
                                0,
                                &params,
                                u.path_and_query.as_bytes(),
                            ))
                        };
                        let url = job.url.clone();
                        self.ask_udp(&url, url_data, UdpJob::Announce(job), started, at_ms);
                        return None;
                    }
                };
                let duration_ms = started.elapsed().as_millis() as u64;
                Some(self.finish_announce(job, at_ms, duration_ms, result))
            }
            Job::Scrape {
                url,
                kind,
                torrents,
            } => {
                let at_ms = self.now_ms();
                match kind {
                    Kind::Http => {
                        let rows = self.scrape_http(&url, &torrents);
                        self.finish_scrape(&url, &torrents, at_ms, rows);
                    }
                    Kind::Udp => {
                        let hashes: Vec<[u8; 20]> = torrents.iter().map(|t| t.1).collect();
                        let job = UdpJob::Scrape {
                            url: url.clone(),
                            torrents,
                        };
                        let query = move |_: &tracker_udp::UdpTrackerUrl| Query::Scrape(hashes);
                        self.ask_udp(&url, query, job, Instant::now(), at_ms);
                    }
                }
                Some(JobResult::Scraped)
            }
        }
    }

    /// Resolves the UDP tracker of `url` (on this request thread) and hands the request to
    /// the tracker's worker. Its answer, or why it could not be asked, reaches the scheduler
    /// as [`JobResult::UdpAnswered`].
    fn ask_udp(
        &self,
        url: &str,
        query: impl FnOnce(&tracker_udp::UdpTrackerUrl) -> Query,
        what: UdpJob,
        started: Instant,
        at_ms: u64,
    ) {
        let answers = self.answers.clone();
        let reply = move |answer| {
            let _ = answers.send(JobResult::UdpAnswered(Box::new(UdpAnswered {
                what,
                at_ms,
                duration_ms: started.elapsed().as_millis() as u64,
                answer,
            })));
        };
        let u = match tracker_udp::parse_udp_url(url) {
            Ok(u) => u,
            Err(e) => return reply(Err(e.to_string())),
        };
        let tracker = match self.dns.resolve(&u.host, u.port) {
            Ok(a) => a,
            Err(e) => return reply(Err(e)),
        };
        let job = UdpTrackerJob {
            tracker,
            query: query(&u),
            reply: Box::new(reply),
        };
        if let Err(reply) = self.udp.send(job) {
            reply(Err("the worker for this tracker has stopped".into()));
        }
    }

    /// Records a worker's UDP answer as an HTTP answer is recorded.
    fn finish_udp(&self, a: UdpAnswered) -> JobResult {
        match a.what {
            UdpJob::Announce(job) => {
                let result = match a.answer {
                    Ok(Answer::Announce(r)) => Ok(Announced {
                        peers: r.peers,
                        // BEP 15 sends a signed 32-bit interval.
                        interval: Some(i64::from(r.interval as i32)),
                        min_interval: None,
                        external_ip: None,
                        complete: Some(u64::from(r.seeders)),
                        incomplete: Some(u64::from(r.leechers)),
                        downloaded: None,
                    }),
                    Ok(Answer::Scrape(_)) => Err("unexpected reply to announce".into()),
                    Err(e) => Err(e),
                };
                self.finish_announce(job, a.at_ms, a.duration_ms, result)
            }
            UdpJob::Scrape { url, torrents } => {
                let rows = match a.answer {
                    Ok(Answer::Scrape(stats)) => Ok(stats
                        .iter()
                        .map(|s| {
                            (
                                Some(u64::from(s.seeders)),
                                Some(u64::from(s.leechers)),
                                Some(u64::from(s.completed)),
                            )
                        })
                        .collect()),
                    Ok(Answer::Announce(_)) => Err("unexpected reply to scrape".into()),
                    Err(e) => Err(e),
                };
                self.finish_scrape(&url, &torrents, a.at_ms, rows);
                JobResult::Scraped
            }
        }
    }

    /// The records, routing and schedule of one finished announce (either protocol).
    fn finish_announce(
        &self,
        job: AnnounceJob,
        at_ms: u64,
        duration_ms: u64,
        result: Result<Announced, String>,
    ) -> JobResult {
        let AnnounceJob {
            target,
            torrent,
            db_id,
            url,
            announce_secs,
        } = job;
        let kind = kind_of(&url).unwrap_or(Kind::Http);
        let src = if kind == Kind::Udp {
            PeerSource::TrackerUdp.mask()
        } else {
            PeerSource::TrackerHttp.mask()
        };
        let next = result.as_ref().ok().map(|a| {
            announce_schedule::next_announce(
                announce_secs,
                self.cfg.respect_interval,
                a.interval,
                a.min_interval,
            )
        });
        let (interval_sent, min_interval_sent) = result
            .as_ref()
            .map_or((None, None), |a| (a.interval, a.min_interval));
        let (peers, error) = match result {
            Ok(mut a) => {
                let own = &self.cfg.own;
                if let Some(ip) = a.external_ip {
                    if own.learn_from_tracker(ip) {
                        tracing::info!(tracker = %url, %ip, "the tracker sees us at this address");
                    }
                }
                // The tracker lists us too: never probe ourselves.
                own.drop_own(&mut a.peers);
                self.route_peers(torrent, src, &a.peers);
                if let Some(downloaded) = a.downloaded {
                    // Many HTTP trackers put scrape counts in the announce reply too.
                    self.send(Record::Scrape(ScrapeRecord {
                        at: self.epoch_unix_ms + at_ms as i64,
                        torrent_id: db_id,
                        tracker: url.clone(),
                        complete: a.complete.unwrap_or(0) as i64,
                        incomplete: a.incomplete.unwrap_or(0) as i64,
                        downloaded: downloaded as i64,
                    }));
                }
                (a.peers, None)
            }
            Err(e) => (Vec::new(), Some(e)),
        };
        let record = DiscoveryRecord {
            at: self.epoch_unix_ms + at_ms as i64,
            torrent_id: db_id,
            source: if kind == Kind::Udp {
                PeerSource::TrackerUdp
            } else {
                PeerSource::TrackerHttp
            },
            tracker: Some(url.clone()),
            duration_ms: duration_ms.min(u32::MAX as u64) as u32,
            error,
            peers,
        };
        self.send(Record::Discovery(record));
        if let Some(n) = &next {
            self.send(Record::TrackerSchedule(TrackerScheduleRecord {
                at: self.epoch_unix_ms + at_ms as i64,
                torrent_id: db_id,
                tracker: url,
                interval: interval_sent,
                min_interval: min_interval_sent,
                next_secs: n.secs,
                decided_by: n.decided_by.as_str(),
                notes: (!n.notes.is_empty()).then(|| n.notes_text()),
            }));
        }
        JobResult::Announce { target, next }
    }

    fn send(&self, record: Record) {
        if let Ok(mut r) = self.records.lock() {
            r.send(record);
            r.pump();
        }
    }

    fn route_peers(&self, torrent: u32, src: u8, peers: &[SocketAddr]) {
        let workers = self.route.len();
        let mut per: Vec<Vec<SocketAddr>> = vec![Vec::new(); workers];
        for &p in peers {
            if p.port() == 0 || p.ip().is_unspecified() {
                continue;
            }
            per[owner_worker(torrent, p, workers)].push(p);
        }
        for (w, addrs) in per.into_iter().enumerate() {
            if !addrs.is_empty() {
                let _ = self.route[w].send(WorkerMsg::Peers {
                    torrent,
                    source: src,
                    addrs,
                });
            }
        }
    }

    fn announce_http(&self, url: &str, params: &AnnounceParams) -> Result<Announced, String> {
        let full = tracker_http::announce_url(url, params).map_err(|e| e.to_string())?;
        let body = http_get(&self.cfg, &full)?;
        let r = tracker_http::parse_announce_response(&body).map_err(|e| e.to_string())?;
        Ok(Announced {
            peers: r.peers,
            interval: r.interval.map(i64::from),
            min_interval: r.min_interval.map(i64::from),
            external_ip: r.external_ip,
            complete: r.complete,
            incomplete: r.incomplete,
            downloaded: r.downloaded,
        })
    }

    fn scrape_http(
        &self,
        url: &str,
        torrents: &[TorrentHash],
    ) -> Result<Vec<ScrapeCounts>, String> {
        let hashes: Vec<[u8; 20]> = torrents.iter().map(|t| t.1).collect();
        let surl =
            tracker_http::scrape_url(url).ok_or("tracker URL does not support scrape (BEP 48)")?;
        let body = http_get(&self.cfg, &tracker_http::scrape_request_url(&surl, &hashes))?;
        let r = tracker_http::parse_scrape_response(&body).map_err(|e| e.to_string())?;
        Ok(hashes
            .iter()
            .map(|h| match r.get(h) {
                Some(e) => (Some(e.complete), Some(e.incomplete), Some(e.downloaded)),
                None => (None, None, None),
            })
            .collect())
    }

    /// The scrape records of one finished scrape (either protocol).
    fn finish_scrape(
        &self,
        url: &str,
        torrents: &[TorrentHash],
        at_ms: u64,
        result: Result<Vec<ScrapeCounts>, String>,
    ) {
        let Ok(rows) = result else {
            // A failed scrape has nothing to compare; it shows in the logs only.
            tracing::debug!(url, "scrape failed");
            return;
        };
        for ((db_id, _), (complete, incomplete, downloaded)) in torrents.iter().zip(rows) {
            // Only a tracker that reports `downloaded` can be compared with confirmations.
            let Some(downloaded) = downloaded else {
                continue;
            };
            self.send(Record::Scrape(ScrapeRecord {
                at: self.epoch_unix_ms + at_ms as i64,
                torrent_id: *db_id,
                tracker: url.to_string(),
                complete: complete.unwrap_or(0) as i64,
                incomplete: incomplete.unwrap_or(0) as i64,
                downloaded: downloaded as i64,
            }));
        }
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolving {host}: no address"))
}

/// GETs `url` (`http://` or `https://`), following at most 4 redirects (an https
/// tracker may not redirect to plain http). Each hop ends within the request timeout.
fn http_get(cfg: &DiscoveryConfig, url: &str) -> Result<Vec<u8>, String> {
    let mut target = tracker_http::parse_http_url(url).map_err(|e| e.to_string())?;
    for _redirect in 0..4 {
        let resp = http_exchange(cfg, &target)?;
        if let Some(loc) = resp.redirect_location() {
            target = tracker_http::redirect_target(&target, loc)
                .map_err(|e| format!("redirect: {e}"))?;
            continue;
        }
        if !resp.is_success() {
            return Err(format!("HTTP {} {}", resp.status, resp.reason));
        }
        return Ok(resp.body);
    }
    Err("too many redirects".into())
}

/// One request and its response. Connect, TLS handshake (https), request and response
/// share one deadline of `timeout`; the response is read with the same size limits for
/// both schemes. TLS failures (certificate, handshake) come back as `tls: ...` text.
fn http_exchange(cfg: &DiscoveryConfig, u: &HttpTrackerUrl) -> Result<http::Response, String> {
    let deadline = Instant::now() + cfg.timeout;
    let addr = resolve(&u.host, u.port)?;
    let left = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or("timed out resolving the tracker")?;
    let tcp =
        TcpStream::connect_timeout(&addr, left).map_err(|e| format!("connect {addr}: {e}"))?;
    let req = http::build_get_request(&u.host, u.port, &u.path_and_query, &cfg.user_agent)
        .map_err(|e| e.to_string())?;
    if !u.tls {
        let mut s = tcp;
        return exchange(&mut s, &req, deadline);
    }
    // The server name is the URL's host: SNI and the name checked against the
    // certificate (an address literal is checked against the certificate's addresses).
    let name = ServerName::try_from(u.host.clone())
        .map_err(|e| format!("tls: invalid server name {:?}: {e}", u.host))?;
    let conn =
        rustls::ClientConnection::new(cfg.tls.clone(), name).map_err(|e| format!("tls: {e}"))?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    // The handshake first, so that its failures are reported as such.
    while s.conn.is_handshaking() {
        set_deadline(&s.sock, deadline).map_err(|e| format!("tls handshake: {e}"))?;
        s.conn
            .complete_io(&mut s.sock)
            .map_err(|e| tls::error_text("handshake", &e))?;
    }
    let resp = exchange(&mut s, &req, deadline);
    // A polite close (best effort: the socket may be gone).
    s.conn.send_close_notify();
    let _ = s.conn.write_tls(&mut s.sock);
    resp
}

/// A byte stream to a tracker (plain TCP or TLS over TCP) whose socket takes the timeouts.
trait TrackerStream: Read + Write {
    fn tcp(&self) -> &TcpStream;
    /// The error text for an I/O error in `stage` (`send`, `receive`).
    fn error_text(&self, stage: &str, e: &std::io::Error) -> String {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            format!("{stage}: timed out")
        } else {
            format!("{stage}: {e}")
        }
    }
}

impl TrackerStream for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl TrackerStream for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
    fn error_text(&self, stage: &str, e: &std::io::Error) -> String {
        tls::error_text(stage, e)
    }
}

/// Sets the socket's read and write timeouts to what is left until `deadline`.
fn set_deadline(tcp: &TcpStream, deadline: Instant) -> Result<(), String> {
    let left = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or("timed out")?;
    tcp.set_read_timeout(Some(left))
        .and_then(|_| tcp.set_write_timeout(Some(left)))
        .map_err(|e| e.to_string())
}

/// Sends `req` and reads one response (bounded by [`ResponseLimits::default`]) before
/// `deadline`.
fn exchange<S: TrackerStream>(
    s: &mut S,
    req: &[u8],
    deadline: Instant,
) -> Result<http::Response, String> {
    set_deadline(s.tcp(), deadline).map_err(|e| format!("send: {e}"))?;
    s.write_all(req)
        .and_then(|_| s.flush())
        .map_err(|e| s.error_text("send", &e))?;
    let mut reader = ResponseReader::new(ResponseLimits::default());
    let mut buf = [0u8; 16384];
    loop {
        set_deadline(s.tcp(), deadline).map_err(|_| "timed out reading the response")?;
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            // A TLS peer that closes without close_notify: the end of the stream, as for
            // plain HTTP; the response framing (length, chunks) still says if it is complete.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(s.error_text("receive", &e)),
        };
        let progress = if n == 0 {
            reader.finish().map_err(|e| e.to_string())?
        } else {
            reader.feed(&buf[..n]).map_err(|e| e.to_string())?
        };
        if progress == http::Progress::Done {
            break;
        }
        if n == 0 {
            return Err("connection closed before the response was complete".into());
        }
    }
    reader
        .into_response()
        .ok_or_else(|| "incomplete response".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_names_are_resolved_once_and_literals_never() {
        let dns = DnsCache::default();
        let literal = dns.resolve("127.0.0.5", 80).unwrap();
        assert_eq!(literal, SocketAddr::from(([127, 0, 0, 5], 80)));
        assert!(dns.entries.lock().unwrap().is_empty());
        let a = dns.resolve("localhost", 6969).unwrap();
        assert!(a.ip().is_loopback() && a.port() == 6969, "{a}");
        assert_eq!(dns.entries.lock().unwrap().len(), 1);
        // Within its lifetime the cached address is used (the name is not looked up).
        let cached = SocketAddr::from(([127, 0, 0, 77], 6969));
        dns.entries
            .lock()
            .unwrap()
            .insert(("localhost".into(), 6969), (cached, Instant::now()));
        assert_eq!(dns.resolve("LOCALHOST", 6969).unwrap(), cached);
        // After it, the name is looked up again.
        let Some(old) = Instant::now().checked_sub(Duration::from_secs(DNS_CACHE_SECS + 1)) else {
            return; // a clock younger than the cache lifetime (just booted)
        };
        dns.entries
            .lock()
            .unwrap()
            .insert(("localhost".into(), 6969), (cached, old));
        assert!(dns.resolve("localhost", 6969).unwrap().ip().is_loopback());
        assert_ne!(dns.resolve("localhost", 6969).unwrap(), cached);
        assert!(dns.resolve("no-such-host.invalid", 1).is_err());
    }

    #[test]
    fn tracker_kinds_by_scheme() {
        assert_eq!(kind_of("udp://t:1/announce"), Some(Kind::Udp));
        assert_eq!(kind_of("http://t/announce"), Some(Kind::Http));
        assert_eq!(
            kind_of("https://torrent.ubuntu.com/announce"),
            Some(Kind::Http)
        );
        assert_eq!(kind_of("HTTPS://T/announce"), Some(Kind::Http));
        assert_eq!(kind_of("wss://t/announce"), None);
        assert_eq!(kind_of("t/announce"), None);
    }

    /// A test CA (PEM file in the returned directory) and a TLS server on 127.0.0.1 with a
    /// certificate for `names` issued by it, answering `reply` to one request. The server
    /// thread ends after one connection or 10 s.
    fn tls_server(names: &[&str], reply: &'static [u8]) -> (u16, tempfile::TempDir) {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(10);
            let tcp = loop {
                match listener.accept() {
                    Ok((tcp, _)) => break tcp,
                    Err(_) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(_) => return,
                }
            };
            tcp.set_nonblocking(false).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(server)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => return, // e.g. the client refused our certificate
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tls.write_all(reply);
            tls.conn.send_close_notify();
            let _ = tls.flush();
        });
        (port, dir)
    }

    fn cfg_trusting(dir: &tempfile::TempDir) -> DiscoveryConfig {
        DiscoveryConfig {
            tls: tls::client_config(&[dir.path().join("ca.pem")]).unwrap(),
            timeout: Duration::from_secs(5),
            ..DiscoveryConfig::default()
        }
    }

    #[test]
    fn https_get_verifies_against_the_configured_ca() {
        let (port, dir) = tls_server(
            &["127.0.0.1", "localhost"],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        );
        let body = http_get(
            &cfg_trusting(&dir),
            &format!("https://127.0.0.1:{port}/announce"),
        );
        assert_eq!(body.as_deref(), Ok(&b"hello"[..]));
    }

    #[test]
    fn untrusted_or_misnamed_certificates_are_tls_errors() {
        let (port, _dir) = tls_server(&["127.0.0.1"], b"HTTP/1.1 200 OK\r\n\r\n");
        let e = http_get(
            &DiscoveryConfig::default(),
            &format!("https://127.0.0.1:{port}/announce"),
        )
        .unwrap_err();
        assert_eq!(e, "tls: invalid peer certificate: UnknownIssuer");
        // Trusted CA, but the certificate names another host than the URL's.
        let (port, dir) = tls_server(&["localhost"], b"HTTP/1.1 200 OK\r\n\r\n");
        let e = http_get(
            &cfg_trusting(&dir),
            &format!("https://127.0.0.1:{port}/announce"),
        )
        .unwrap_err();
        assert!(e.starts_with("tls: invalid peer certificate"), "{e}");
    }

    #[test]
    fn https_never_redirects_to_plain_http() {
        let (port, dir) = tls_server(
            &["127.0.0.1"],
            b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/announce\r\nContent-Length: 0\r\n\r\n",
        );
        let e = http_get(
            &cfg_trusting(&dir),
            &format!("https://127.0.0.1:{port}/announce"),
        )
        .unwrap_err();
        assert!(
            e.starts_with("redirect: redirect from https to plain http refused"),
            "{e}"
        );
    }

    #[test]
    fn a_silent_tls_server_times_out_within_the_request_timeout() {
        // Accepted by the kernel (backlog), never answered.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cfg = DiscoveryConfig {
            timeout: Duration::from_millis(300),
            ..DiscoveryConfig::default()
        };
        let started = Instant::now();
        let e = http_get(&cfg, &format!("https://127.0.0.1:{port}/announce")).unwrap_err();
        assert!(
            e.starts_with("tls handshake") && e.contains("timed out"),
            "{e}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        drop(listener);
    }

    #[test]
    fn deadline_in_the_past_is_a_timeout_not_a_zero_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(set_deadline(&tcp, Instant::now() + Duration::from_secs(5)).is_ok());
        assert_eq!(
            set_deadline(&tcp, Instant::now() - Duration::from_millis(1)),
            Err("timed out".to_string())
        );
    }
}
