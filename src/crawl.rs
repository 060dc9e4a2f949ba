//! `swarmscan crawl`: walk the DHT with BEP 51 `sample_infohashes` and record the info-hashes
//! the nodes hold (no peer is probed).
//!
//! One engine worker runs our DHT node ([`DhtHost`], bootstrapped from `dht.bootstrap` and
//! the nodes the last scan kept) on the UDP sockets of `net.listen`. The crawl keeps a bounded
//! set of known nodes (the routing table's, and those the answers name) and asks each in turn
//! for a sample with a random target, so the answers' `nodes` spread the walk over the key
//! space. A node is asked again only after the `interval` it gave (BEP 51; at least
//! [`MIN_INTERVAL`]), a node that fails twice is dropped, and queries go out at most
//! `dht.crawl_rate` (or `--rate`) per second. Each (info-hash, node id) sighting is stored
//! with its first and last time; the worker hands sightings over in batches and this thread
//! (the only one writing) stores them, so a stop (`--for`, SIGINT, SIGTERM) loses nothing
//! already received.
//!
//! A database that refuses a commit (disk full, I/O error, locked) loses nothing either: the
//! sightings are held ([`Held`]) and stored again with back-off, as the scan's writer does;
//! when the database has refused every commit for `store.unwritable_secs` the crawl stops
//! and exits 1 saying why and how many sightings were not stored, rather than crawl on blind.
//!
//! The crawl is a DHT activity: with `dht.enabled = false` it refuses to start. Like `run`
//! and `sink` it holds the database's instance lock (`service::instance`) while it runs, and
//! ignores SIGUSR1 (which `add`/`remove` send only to a `run`); SIGHUP (a unit's reload, a
//! logrotate) is logged and changes nothing, its settings being read at start.
//!
//! A database path that stops naming the file the crawl writes (removed, replaced by another
//! file, renamed; see `store::place`) is noticed within [`PLACE_CHECK_EVERY`]: the crawl
//! stops, stores what it holds into its own file, saves that where the user will find it
//! (back at the path, or next to the other file) and exits 1 saying where.
//!
//! [`PLACE_CHECK_EVERY`]: crate::store::writer::PLACE_CHECK_EVERY

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ConfigArgs;
use crate::dht::host::{DhtHost, HostConfig, HostEvent};
use crate::engine::exchange::Exchange;
use crate::engine::{
    DatagramQueue, Millis, ProbeDone, ProbeRequest, Worker, WorkerConfig, WorkerDriver,
};
use crate::proto::dht::DhtConfig;
use crate::proto::krpc::Id20;
use crate::store::Store;

/// Least time before a node is asked again, whatever `interval` it gave.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);
/// Longest `interval` honoured (BEP 51's maximum, 6 hours).
const MAX_INTERVAL: Duration = Duration::from_secs(6 * 3600);
/// Nodes remembered at once; beyond that new ones are ignored until some are dropped.
const MAX_KNOWN: usize = 200_000;
/// Unanswered (or refused) samples before a node is dropped.
const MAX_FAILURES: u8 = 2;
/// A node that failed waits this long before it is asked again.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Sightings are handed to the storing thread this often (and at the end).
const FLUSH_EVERY_MS: Millis = 500;
/// Most `sample_infohashes` queries per second (`dht.crawl_rate`, `--rate`).
pub const MAX_RATE: u32 = 10_000;
/// Sightings held for a database that refuses commits before the crawl gives up early
/// (about 50 MB; at the default rate, hours of answers).
const MAX_HELD: usize = 1_000_000;
/// First and longest wait between two attempts to store held sightings.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

#[derive(clap::Args, Debug)]
pub struct CrawlArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Stop by itself after this long: 90s, 15m, 2h, 3d (or plain seconds). Without it the
    /// crawl runs until SIGINT/SIGTERM.
    #[arg(long = "for", value_name = "DURATION", value_parser = crate::cli::run_cmd::parse_duration)]
    pub duration: Option<Duration>,
    /// `sample_infohashes` queries per second, at most (1 to 10000); overrides
    /// `dht.crawl_rate` (default 50).
    #[arg(long, value_parser = crate::limits::count::<u32>(1, MAX_RATE as u64))]
    pub rate: Option<u32>,
    /// Print a JSON summary at the end.
    #[arg(long)]
    pub json: bool,
}

/// One info-hash reported by one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub info_hash: Id20,
    pub node_id: Id20,
    /// Unix milliseconds.
    pub at: i64,
}

/// Counters of a crawl.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CrawlStats {
    pub queries: u64,
    pub answers: u64,
    pub failures: u64,
    pub samples: u64,
    pub nodes_known: u64,
    pub nodes_dropped: u64,
}

enum ToStore {
    Sightings(Vec<Sighting>),
    Done(CrawlStats),
}

struct Known {
    id: Option<Id20>,
    failures: u8,
}

/// The crawl on a worker (see the module docs).
struct CrawlDriver {
    host: DhtHost,
    known: HashMap<SocketAddr, Known>,
    /// Nodes to ask now, in turn.
    due: VecDeque<SocketAddr>,
    /// Nodes waiting for their interval to pass.
    waiting: BinaryHeap<Reverse<(Millis, SocketAddr)>>,
    rate: f64,
    tokens: f64,
    last_refill: Millis,
    last_table_scan: Option<Millis>,
    last_flush: Millis,
    batch: Vec<Sighting>,
    tx: mpsc::Sender<ToStore>,
    /// Unix milliseconds at engine time 0.
    unix_origin: i64,
    next_target: u64,
    stats: CrawlStats,
}

impl CrawlDriver {
    fn learn(&mut self, addr: SocketAddr, id: Option<Id20>) {
        if self.known.len() >= MAX_KNOWN || addr.port() == 0 {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(v) = self.known.entry(addr) {
            v.insert(Known { id, failures: 0 });
            self.due.push_back(addr);
            self.stats.nodes_known += 1;
        }
    }

    fn target(&mut self) -> Id20 {
        // Spread over the key space: a hash of a counter and the origin.
        self.next_target += 1;
        let mut h = sha1::Sha1::default();
        sha1::Digest::update(&mut h, self.next_target.to_be_bytes());
        sha1::Digest::update(&mut h, self.unix_origin.to_be_bytes());
        Id20(sha1::Digest::finalize(h).into())
    }

    fn events(&mut self, now: Millis) {
        while let Some(e) = self.host.poll_event() {
            match e {
                HostEvent::Samples { samples, .. } => {
                    self.stats.answers += 1;
                    let at = self.unix_origin + now as i64;
                    for h in &samples.samples {
                        self.batch.push(Sighting {
                            info_hash: *h,
                            node_id: samples.id,
                            at,
                        });
                    }
                    self.stats.samples += samples.samples.len() as u64;
                    if let Some(k) = self.known.get_mut(&samples.from) {
                        k.failures = 0;
                        k.id = Some(samples.id);
                    }
                    let interval = Duration::from_secs(samples.interval.unwrap_or(0).max(0) as u64)
                        .clamp(MIN_INTERVAL, MAX_INTERVAL);
                    self.waiting.push(Reverse((
                        now + interval.as_millis() as Millis,
                        samples.from,
                    )));
                    for (id, addr) in &samples.nodes {
                        self.learn(*addr, Some(*id));
                    }
                }
                HostEvent::SamplesFailed { from, .. } => {
                    self.stats.failures += 1;
                    let Some(k) = self.known.get_mut(&from) else {
                        continue;
                    };
                    k.failures += 1;
                    if k.failures >= MAX_FAILURES {
                        self.known.remove(&from);
                        self.stats.nodes_dropped += 1;
                    } else {
                        self.waiting
                            .push(Reverse((now + RETRY_AFTER.as_millis() as Millis, from)));
                    }
                }
                _ => {}
            }
        }
    }

    fn flush(&mut self) {
        if !self.batch.is_empty() {
            let _ = self
                .tx
                .send(ToStore::Sightings(std::mem::take(&mut self.batch)));
        }
    }
}

impl WorkerDriver for CrawlDriver {
    type Conv = Exchange;
    fn next_probe(&mut self, _: Millis) -> Option<ProbeRequest<Exchange>> {
        None
    }
    fn probe_done(&mut self, _: Millis, _: ProbeDone<Exchange>) {}
    fn incoming(&mut self, _: Millis, _: SocketAddr, _: SocketAddr) -> Option<(u64, Exchange)> {
        None
    }
    fn on_udp_bound(&mut self, udp: &[SocketAddr]) {
        self.host.on_udp_bound(udp, 0);
    }
    fn datagram(
        &mut self,
        now: Millis,
        local: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
        _out: &mut DatagramQueue,
    ) {
        // Only KRPC (a bencoded dict) goes to the node; nothing else is ours to answer.
        if bytes.first() == Some(&b'd') {
            self.host.handle_datagram(now, local, from, bytes);
        }
    }
    fn poll_datagrams(&mut self, now: Millis, out: &mut DatagramQueue) {
        // The routing table's nodes join the walk (every second).
        if self.last_table_scan.is_none_or(|t| now >= t + 1000) {
            self.last_table_scan = Some(now);
            let nodes: Vec<(Id20, SocketAddr)> = self
                .host
                .node(0)
                .map(|n| {
                    n.table(false)
                        .nodes()
                        .chain(n.table(true).nodes())
                        .map(|e| (e.id, e.addr))
                        .collect()
                })
                .unwrap_or_default();
            for (id, addr) in nodes {
                self.learn(addr, Some(id));
            }
        }
        while let Some(&Reverse((at, addr))) = self.waiting.peek() {
            if at > now {
                break;
            }
            self.waiting.pop();
            if self.known.contains_key(&addr) {
                self.due.push_back(addr);
            }
        }
        let elapsed = now.saturating_sub(self.last_refill) as f64 / 1000.0;
        self.last_refill = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        while self.tokens >= 1.0 {
            let Some(addr) = self.due.pop_front() else {
                break;
            };
            let Some(id) = self.known.get(&addr).map(|k| k.id) else {
                continue;
            };
            let target = self.target();
            if self.host.sample_infohashes(0, addr, id, target, now) {
                self.tokens -= 1.0;
                self.stats.queries += 1;
            } else {
                // Unreachable from our socket, or the node's queues are full: later.
                self.waiting
                    .push(Reverse((now + RETRY_AFTER.as_millis() as Millis, addr)));
            }
        }
        self.host.poll_transmit(now, out);
        self.events(now);
        if now >= self.last_flush + FLUSH_EVERY_MS {
            self.last_flush = now;
            self.flush();
        }
    }
    fn next_wakeup(&self) -> Option<Millis> {
        // Queries go out in small steps so the rate is kept evenly.
        let step = (1000.0 / self.rate).clamp(1.0, 100.0) as Millis;
        let own = self.last_refill + step;
        Some(self.host.next_deadline().map_or(own, |d| d.min(own)))
    }
}

impl Drop for CrawlDriver {
    fn drop(&mut self) {
        self.flush();
        let _ = self.tx.send(ToStore::Done(self.stats.clone()));
    }
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Sightings received and not yet stored, tried again with back-off while the database
/// refuses commits (the whole set each time, in one transaction: storing is idempotent).
struct Held {
    database: std::path::PathBuf,
    unwritable: Duration,
    sightings: Vec<Sighting>,
    /// Sightings committed.
    stored: u64,
    /// Sightings dropped after giving up.
    not_stored: u64,
    failing: Option<Failing>,
    /// Why the crawl gave up on the database.
    gave_up: Option<String>,
}

struct Failing {
    since: Instant,
    retry_at: Instant,
    backoff: Duration,
}

impl Held {
    fn new(database: &std::path::Path, unwritable: Duration) -> Held {
        Held {
            database: database.to_path_buf(),
            unwritable,
            sightings: Vec::new(),
            stored: 0,
            not_stored: 0,
            failing: None,
            gave_up: None,
        }
    }

    fn take(&mut self, sightings: Vec<Sighting>) {
        if self.gave_up.is_some() {
            self.not_stored += sightings.len() as u64;
        } else {
            self.sightings.extend(sightings);
        }
    }

    /// Stores what is held, unless a retry is not due yet. Gives up when the database has
    /// refused every commit for `unwritable`, or sooner when it holds [`MAX_HELD`].
    fn store(&mut self, store: &Store, now: Instant) {
        if self.gave_up.is_some()
            || self.sightings.is_empty()
            || self.failing.as_ref().is_some_and(|f| now < f.retry_at)
        {
            return;
        }
        let e = match store_sightings(store, &self.sightings) {
            Ok(()) => {
                self.stored += self.sightings.len() as u64;
                self.sightings.clear();
                if let Some(f) = self.failing.take() {
                    tracing::warn!(
                        "crawl: the database {} is writable again after {:.1} s",
                        self.database.display(),
                        now.duration_since(f.since).as_secs_f64()
                    );
                }
                return;
            }
            Err(e) => e,
        };
        let f = self.failing.get_or_insert_with(|| {
            tracing::warn!(
                "crawl: the database {} refused a commit ({e}); holding the sightings and \
                 retrying (giving up after store.unwritable_secs = {:.0})",
                self.database.display(),
                self.unwritable.as_secs_f64()
            );
            Failing {
                since: now,
                retry_at: now,
                backoff: RETRY_FIRST / 2,
            }
        });
        f.backoff = (f.backoff * 2).min(RETRY_MAX);
        f.retry_at = now + f.backoff;
        let failed_for = now.duration_since(f.since);
        let too_many = self.sightings.len() >= MAX_HELD;
        if failed_for >= self.unwritable || too_many {
            let held = if too_many {
                format!(" and {MAX_HELD} sightings wait")
            } else {
                String::new()
            };
            self.gave_up = Some(format!(
                "the database {} stayed unwritable for {:.0} s (store.unwritable_secs = {}){held}: {e}",
                self.database.display(),
                failed_for.as_secs_f64(),
                self.unwritable.as_secs_f64(),
            ));
            self.not_stored += self.sightings.len() as u64;
            self.sightings = Vec::new();
        }
    }
}

/// Stores sightings: one row per (info-hash, node id), first and last time seen.
pub fn store_sightings(store: &Store, sightings: &[Sighting]) -> Result<(), String> {
    let tx = store
        .connection()
        .unchecked_transaction()
        .map_err(|e| e.to_string())?;
    {
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO crawl_sightings (info_hash, node_id, first_seen, last_seen)
                 VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (info_hash, node_id) DO UPDATE SET
                   first_seen = MIN(first_seen, excluded.first_seen),
                   last_seen = MAX(last_seen, excluded.last_seen)",
            )
            .map_err(|e| e.to_string())?;
        for s in sightings {
            stmt.execute(rusqlite::params![
                &s.info_hash.0[..],
                &s.node_id.0[..],
                s.at
            ])
            .map_err(|e| e.to_string())?;
        }
    }
    tx.commit().map_err(|e| e.to_string())
}

pub fn run(args: &CrawlArgs) -> i32 {
    crate::logging::init();
    let config = match args.config.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("swarmscan: crawl: {e}");
            return 2;
        }
    };
    if !config.dht.enabled {
        eprintln!(
            "swarmscan: crawl: dht.enabled = false: the crawl is a DHT activity (a DHT node of \
             ours queries other nodes) and does not run with the DHT turned off; set \
             dht.enabled = true to crawl"
        );
        return 2;
    }
    let rate = args.rate.unwrap_or(config.dht.crawl_rate);
    // Handlers before the lock file names this process: SIGUSR1's default action would end
    // it, and a SIGINT between the lock and the crawl must still stop it cleanly.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("swarmscan: crawl: signal handler: {e}");
            return 1;
        }
    }
    if let Err(e) = crate::service::instance::ignore_wake_signal() {
        eprintln!("swarmscan: crawl: {e}");
        return 1;
    }
    if let Err(e) = crate::service::instance::ignore_reload_signal("crawl") {
        eprintln!("swarmscan: crawl: {e}");
        return 1;
    }
    // One run, crawl or sink per database, held until this function returns.
    let _instance = match crate::service::instance::InstanceLock::acquire(
        &config.database,
        crate::service::instance::Holder::Crawl,
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("swarmscan: crawl: {e}");
            return 2;
        }
    };
    match crawl(args, &config, rate, stop) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("swarmscan: crawl: {e}");
            1
        }
    }
}

fn crawl(
    args: &CrawlArgs,
    config: &crate::config::Config,
    rate: u32,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let settings: crate::dht::DhtSettings = config.into();
    let mut store = Store::open(&config.database).map_err(|e| e.to_string())?;
    let remembered: Vec<(Id20, SocketAddr)> = store
        .dht_nodes()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|n| (Id20(n.id), n.addr))
        .collect();
    let udp: Vec<SocketAddr> = config.net.listen.clone();
    if udp.is_empty() {
        return Err("net.listen is empty: the DHT node needs a UDP address".into());
    }
    let bootstrap = crate::dht::bootstrap::resolve_bootstrap_system(&settings.bootstrap, &udp);
    if bootstrap.is_empty() && remembered.is_empty() {
        return Err(
            "no DHT node to start from: dht.bootstrap gives none this socket can reach, and the database remembers none".into(),
        );
    }
    let started = now_unix_ms();
    let (tx, rx) = mpsc::channel::<ToStore>();
    let host = DhtHost::new(HostConfig {
        node: DhtConfig {
            read_only: settings.read_only,
            ..DhtConfig::default()
        },
        bootstrap,
        remembered,
        ..HostConfig::default()
    });
    let driver = CrawlDriver {
        host,
        known: HashMap::new(),
        due: VecDeque::new(),
        waiting: BinaryHeap::new(),
        rate: f64::from(rate),
        tokens: 1.0,
        last_refill: 0,
        last_table_scan: None,
        last_flush: 0,
        batch: Vec::new(),
        tx,
        unix_origin: started,
        next_target: 0,
        stats: CrawlStats::default(),
    };
    let worker_stop = stop.clone();
    let cfg = WorkerConfig {
        max_in_flight: 1,
        ring_entries: 1024,
        recv_buffers: 16,
        udp,
        ..WorkerConfig::default()
    };
    let worker = std::thread::Builder::new()
        .name("crawl-worker".into())
        .spawn(move || -> Result<(), String> {
            let mut driver = driver;
            let mut worker = Worker::<Exchange>::new(cfg, Instant::now())
                .map_err(|e| format!("UDP worker: {e}"))?;
            worker
                .run(&mut driver, &worker_stop)
                .map_err(|e| format!("UDP worker: {e}"))?;
            Ok(())
        })
        .map_err(|e| format!("worker thread: {e}"))?;
    let deadline = args.duration.map(|d| Instant::now() + d);
    let mut stats = None;
    // Validated by `Config::validate` (at most a year).
    let unwritable = Duration::try_from_secs_f64(config.store.unwritable_secs)
        .unwrap_or(Duration::from_secs(300));
    let mut held = Held::new(&config.database, unwritable);
    // The database path stopped naming our file (removed, replaced, renamed): what happened.
    let mut moved: Option<String> = None;
    let mut last_place_check = Instant::now();
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            stop.store(true, Ordering::SeqCst);
        }
        // Keeps receiving after giving up: the worker must never block on us.
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(ToStore::Sightings(s)) => held.take(s),
            Ok(ToStore::Done(s)) => stats = Some(s),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        held.store(&store, Instant::now());
        if let Some(why) = &held.gave_up {
            if !stop.swap(true, Ordering::SeqCst) {
                tracing::error!("stopping the crawl: {why}");
            }
        }
        // As the scan's writer does (`store::place`): sightings go on into our own file
        // until the stop, which then saves it where it can be found.
        if moved.is_none() && last_place_check.elapsed() >= crate::store::writer::PLACE_CHECK_EVERY
        {
            last_place_check = Instant::now();
            if let Some(m) = store.check_place() {
                let why = m.describe(&config.database);
                tracing::error!(
                    "stopping the crawl: {why}; saving what it holds where it can be found"
                );
                stop.store(true, Ordering::SeqCst);
                moved = Some(why);
            }
        }
    }
    let worker_result = worker
        .join()
        .map_err(|_| "the crawl worker panicked".to_string())?;
    // What is still held waits for the database, at most `store.unwritable_secs` in all.
    while !held.sightings.is_empty() && held.gave_up.is_none() {
        let now = Instant::now();
        if let Some(f) = &held.failing {
            std::thread::sleep(f.retry_at.saturating_duration_since(now));
        }
        held.store(&store, Instant::now());
    }
    let stats = stats.unwrap_or_default();
    let ended = now_unix_ms();
    let run_row = store.connection().execute(
        "INSERT INTO crawl_runs (started, ended, queries, answers, failures, sightings, nodes_known)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        rusqlite::params![
            started,
            ended,
            stats.queries as i64,
            stats.answers as i64,
            stats.failures as i64,
            held.stored as i64,
            stats.nodes_known as i64
        ],
    );
    if let Some(why) = moved {
        let mut not_stored = held.not_stored;
        let saved = store.close_moved().unwrap_or_else(|e| {
            not_stored += held.stored;
            format!("{e}: what it held ends with this process")
        });
        let gave_up = held.gave_up.map(|g| format!("; {g}")).unwrap_or_default();
        return Err(format!(
            "{why}; {saved}{gave_up}; {not_stored} sightings not stored"
        ));
    }
    if let Some(why) = held.gave_up {
        return Err(format!("{why}; {} sightings not stored", held.not_stored));
    }
    run_row.map_err(|e| format!("database {}: {e}", config.database.display()))?;
    worker_result?;
    let stored = held.stored;
    let distinct: i64 = store
        .connection()
        .query_row(
            "SELECT COUNT(DISTINCT info_hash) FROM crawl_sightings",
            [],
            |r| r.get(0),
        )
        .map_err(|e| e.to_string())?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "seconds": (ended - started) as f64 / 1000.0,
                "rate": rate,
                "stats": stats,
                "sightings_stored": stored,
                "info_hashes_in_database": distinct,
            })
        );
    } else {
        println!(
            "swarmscan: crawled {:.0}s: {} sample_infohashes queries (at most {rate}/s), {} answers, {} failed, {} nodes known; {} sightings stored, {distinct} distinct info-hashes in {}",
            (ended - started) as f64 / 1000.0,
            stats.queries,
            stats.answers,
            stats.failures,
            stats.nodes_known,
            stored,
            config.database.display()
        );
    }
    Ok(())
}

/// The crawl section of `swarmscan report --crawl`.
pub fn report(store: &Store, json: bool) -> Result<String, String> {
    let conn = store.connection();
    let q = |sql: &str| -> Result<i64, String> {
        conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
            .map(|v| v.unwrap_or(0))
            .map_err(|e| e.to_string())
    };
    let runs = q("SELECT COUNT(*) FROM crawl_runs")?;
    let queries = q("SELECT SUM(queries) FROM crawl_runs")?;
    let answers = q("SELECT SUM(answers) FROM crawl_runs")?;
    let hashes = q("SELECT COUNT(DISTINCT info_hash) FROM crawl_sightings")?;
    let nodes = q("SELECT COUNT(DISTINCT node_id) FROM crawl_sightings")?;
    let sightings = q("SELECT COUNT(*) FROM crawl_sightings")?;
    let mut stmt = conn
        .prepare(
            "SELECT info_hash, COUNT(*) AS nodes, MIN(first_seen), MAX(last_seen)
             FROM crawl_sightings GROUP BY info_hash ORDER BY nodes DESC, info_hash LIMIT 20",
        )
        .map_err(|e| e.to_string())?;
    let top: Vec<(String, i64, i64, i64)> = stmt
        .query_map([], |r| {
            Ok((
                crate::proto::hex::encode(&r.get::<_, Vec<u8>>(0)?),
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
            ))
        })
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if json {
        let top: Vec<serde_json::Value> = top
            .iter()
            .map(|(h, n, f, l)| {
                serde_json::json!({"info_hash": h, "nodes": n, "first_seen": f, "last_seen": l})
            })
            .collect();
        return Ok(serde_json::json!({
            "crawl_runs": runs,
            "queries": queries,
            "answers": answers,
            "info_hashes": hashes,
            "reporting_nodes": nodes,
            "sightings": sightings,
            "top": top,
        })
        .to_string());
    }
    let mut out = format!(
        "DHT crawl (BEP 51 sample_infohashes)\n  runs {runs}, queries {queries}, answers {answers}\n  {hashes} distinct info-hashes from {nodes} nodes ({sightings} info-hash/node pairs)\n"
    );
    if !top.is_empty() {
        out.push_str("  most reported (nodes, info-hash):\n");
        for (h, n, _, _) in &top {
            out.push_str(&format!("  {n:>6}  {h}\n"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id20 {
        Id20([n; 20])
    }

    #[test]
    fn sightings_keep_first_and_last_time_per_node_and_the_report_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("crawl.sqlite")).unwrap();
        let seen = |h: u8, node: u8, at: i64| Sighting {
            info_hash: id(h),
            node_id: id(node),
            at,
        };
        // Out of order across batches: first is the earliest, last the latest.
        store_sightings(&store, &[seen(1, 10, 5_000), seen(1, 11, 6_000)]).unwrap();
        store_sightings(
            &store,
            &[seen(1, 10, 9_000), seen(1, 10, 2_000), seen(2, 10, 7_000)],
        )
        .unwrap();
        let rows: Vec<(Vec<u8>, Vec<u8>, i64, i64)> = store
            .connection()
            .prepare("SELECT info_hash, node_id, first_seen, last_seen FROM crawl_sightings ORDER BY 1, 2")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            rows,
            [
                (vec![1; 20], vec![10; 20], 2_000, 9_000),
                (vec![1; 20], vec![11; 20], 6_000, 6_000),
                (vec![2; 20], vec![10; 20], 7_000, 7_000),
            ]
        );
        let text = report(&store, false).unwrap();
        assert!(
            text.contains("2 distinct info-hashes from 2 nodes (3 info-hash/node pairs)"),
            "{text}"
        );
        // The info-hash two nodes reported comes first.
        let first = text.lines().find(|l| l.contains("0101010101")).unwrap();
        assert!(first.trim_start().starts_with("2 "), "{text}");
        let json: serde_json::Value = serde_json::from_str(&report(&store, true).unwrap()).unwrap();
        assert_eq!(json["info_hashes"], 2);
        assert_eq!(json["top"][0]["nodes"], 2);
        assert_eq!(json["top"][0]["first_seen"], 2_000);
    }

    #[test]
    fn sightings_a_locked_database_refuses_are_held_stored_later_or_given_up_on_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crawl.sqlite");
        let store = Store::open(&path).unwrap();
        // Refused at once rather than after SQLite's usual busy wait.
        store
            .connection()
            .busy_timeout(Duration::from_millis(1))
            .unwrap();
        let seen = |h: u8| Sighting {
            info_hash: id(h),
            node_id: id(100),
            at: 1_000,
        };
        let rows = || -> i64 {
            rusqlite::Connection::open(&path)
                .unwrap()
                .query_row("SELECT COUNT(*) FROM crawl_sightings", [], |r| r.get(0))
                .unwrap()
        };
        let mut held = Held::new(&path, Duration::from_millis(300));
        let blocker = rusqlite::Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let t0 = Instant::now();
        held.take(vec![seen(1), seen(2)]);
        held.store(&store, t0);
        assert_eq!(
            (held.sightings.len(), held.stored),
            (2, 0),
            "held, not lost"
        );
        assert!(held.failing.is_some() && held.gave_up.is_none());
        // Not retried before its back-off; retried (with what came meanwhile) after it.
        held.take(vec![seen(3)]);
        blocker.execute_batch("ROLLBACK").unwrap();
        held.store(&store, t0 + Duration::from_millis(10));
        assert_eq!(held.stored, 0);
        held.store(&store, t0 + Duration::from_millis(150));
        assert_eq!((held.sightings.len(), held.stored), (0, 3));
        assert!(held.failing.is_none());
        assert_eq!(rows(), 3);
        // Refused for longer than `unwritable`: given up, with the database and key named.
        blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        held.take(vec![seen(4), seen(5)]);
        held.store(&store, t0 + Duration::from_secs(1));
        assert!(held.gave_up.is_none());
        held.store(&store, t0 + Duration::from_secs(2));
        let why = held.gave_up.clone().expect("gave up");
        assert!(
            why.contains("crawl.sqlite")
                && why.contains("stayed unwritable")
                && why.contains("store.unwritable_secs = 0.3"),
            "{why}"
        );
        // What arrives afterwards is counted, not held.
        held.take(vec![seen(6)]);
        assert_eq!((held.sightings.len(), held.not_stored), (0, 3));
        blocker.execute_batch("ROLLBACK").unwrap();
        assert_eq!(rows(), 3, "what was stored before stays");
    }
}
