//! A scan, end to end: torrents in → discovery → workers probing over io_uring → the store.
//!
//! Threads: one engine worker per core (its own ring, peers and wheel), a discovery pool, the
//! store's writer thread, and this thread, which prints the status line, writes periodic
//! statistics, talks to systemd and watches for SIGINT/SIGTERM or the `--for` duration.
//! Stopping: workers hand back every live probe (not counted as visits), every producer
//! flushes its records, the writer commits them and closes the database.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::engine::{EngineConfig, Worker};
use crate::proto::magnet::TorrentRef;
use crate::proto::metainfo::Metainfo;
use crate::proto::probe::ProbeSettings;
use crate::scan::catalog::{Catalog, CatalogTorrent};
use crate::scan::discovery::{Discovery, DiscoveryConfig};
use crate::scan::driver::{RestoredPeer, ScanDriver, WatchSettings, WorkerCounters, WorkerMsg};
use crate::scan::own_addr::OwnAddresses;
use crate::scan::peer_table::{flag, owner_worker, source};
use crate::scan::revisit::progress_fixed;
use crate::settings::ScanSettings;
use crate::store::record::{Record, StatsRecord, TorrentRecord, TorrentSource};
use crate::store::writer::Writer;
use crate::store::Store;

/// One torrent to scan, however it was given.
#[derive(Debug, Clone)]
pub struct TorrentInput {
    pub record: TorrentRecord,
    pub name: String,
    pub wire_hash: [u8; 20],
    pub alt_hash: Option<[u8; 20]>,
    pub piece_count: u32,
    pub total_size: u64,
    pub trackers: Vec<Vec<String>>,
    /// Peers named by the input itself (magnet `x.pe`).
    pub peers: Vec<SocketAddr>,
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl TorrentInput {
    pub fn from_metainfo(m: &Metainfo) -> Result<TorrentInput, String> {
        let ids = m.info_hashes.wire_ids();
        let wire_hash = *ids.first().ok_or("torrent has no info-hash")?;
        Ok(TorrentInput {
            record: TorrentRecord {
                info_hash_v1: m.info_hashes.v1.map(|h| h.0),
                info_hash_v2: m.info_hashes.v2.map(|h| h.0),
                name: Some(m.name.clone()),
                piece_count: u32::try_from(m.piece_count).ok(),
                piece_length: Some(m.piece_length),
                total_size: Some(m.total_size),
                source: TorrentSource::File,
                added_at: now_unix_ms(),
                trackers: m.trackers.clone(),
            },
            name: m.name.clone(),
            wire_hash,
            alt_hash: ids.get(1).copied(),
            piece_count: u32::try_from(m.piece_count).map_err(|_| "too many pieces")?,
            total_size: m.total_size,
            trackers: m.trackers.clone(),
            peers: Vec::new(),
        })
    }

    pub fn from_ref(r: &TorrentRef) -> Result<TorrentInput, String> {
        let hashes = r.info_hashes();
        let ids = hashes.wire_ids();
        let wire_hash = *ids.first().ok_or("no info-hash")?;
        let (name, trackers, peers, source) = match r {
            TorrentRef::Magnet(m) => (
                m.display_name.clone(),
                if m.trackers.is_empty() {
                    vec![]
                } else {
                    vec![m.trackers.clone()]
                },
                m.peers.clone(),
                TorrentSource::Magnet,
            ),
            TorrentRef::InfoHash(_) => (None, vec![], vec![], TorrentSource::Hash),
        };
        Ok(TorrentInput {
            record: TorrentRecord {
                info_hash_v1: hashes.v1.map(|h| h.0),
                info_hash_v2: hashes.v2.map(|h| h.0),
                name: name.clone(),
                piece_count: None,
                piece_length: None,
                total_size: None,
                source,
                added_at: now_unix_ms(),
                trackers: trackers.clone(),
            },
            name: name.unwrap_or_else(|| crate::proto::hex::encode(&wire_hash)),
            wire_hash,
            alt_hash: ids.get(1).copied(),
            piece_count: 0,
            total_size: 0,
            trackers,
            peers,
        })
    }

    /// A torrent already in the database (from `add` or an earlier run).
    pub fn from_row(row: crate::store::TorrentRow) -> Option<TorrentInput> {
        let v1 = row
            .info_hash_v1
            .as_deref()
            .and_then(crate::proto::hex::decode_array::<20>);
        let v2 = row
            .info_hash_v2
            .as_deref()
            .and_then(crate::proto::hex::decode_array::<32>);
        let hashes = crate::proto::metainfo::InfoHashes {
            v1: v1.map(crate::proto::metainfo::InfoHashV1),
            v2: v2.map(crate::proto::metainfo::InfoHashV2),
        };
        let ids = hashes.wire_ids();
        let wire_hash = *ids.first()?;
        Some(TorrentInput {
            record: TorrentRecord {
                info_hash_v1: v1,
                info_hash_v2: v2,
                name: row.name.clone(),
                piece_count: row.piece_count,
                piece_length: row.piece_length.map(|v| v as u64),
                total_size: row.total_size.map(|v| v as u64),
                source: match row.source.as_str() {
                    "magnet" => TorrentSource::Magnet,
                    "hash" => TorrentSource::Hash,
                    _ => TorrentSource::File,
                },
                added_at: row.added_at,
                trackers: row.trackers.clone(),
            },
            name: row
                .name
                .clone()
                .unwrap_or_else(|| crate::proto::hex::encode(&wire_hash)),
            wire_hash,
            alt_hash: ids.get(1).copied(),
            piece_count: row.piece_count.unwrap_or(0),
            total_size: row.total_size.unwrap_or(0).max(0) as u64,
            trackers: row.trackers,
            peers: Vec::new(),
        })
    }
}

/// Reads torrent inputs: `.torrent` files, directories of them, magnet links, info-hashes, and
/// text files with one magnet link or info-hash per line. Every problem names its input.
pub fn load_inputs(args: &[String]) -> Result<Vec<TorrentInput>, String> {
    let mut out = Vec::new();
    for arg in args {
        if TorrentRef::looks_like_input(arg) {
            let r = TorrentRef::parse_input(arg).map_err(|e| format!("{arg}: {e}"))?;
            out.push(TorrentInput::from_ref(&r).map_err(|e| format!("{arg}: {e}"))?);
            continue;
        }
        let path = Path::new(arg);
        let meta = std::fs::metadata(path).map_err(|e| format!("{arg}: {e}"))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("{arg}: {e}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "torrent"))
                .collect();
            entries.sort();
            if entries.is_empty() {
                return Err(format!("{arg}: directory has no .torrent files"));
            }
            for p in entries {
                out.push(load_torrent_file(&p)?);
            }
        } else if path
            .extension()
            .is_some_and(|x| x == "txt" || x == "magnets")
        {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{arg}: {e}"))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let r =
                    TorrentRef::parse_input(line).map_err(|e| format!("{arg}:{}: {e}", n + 1))?;
                out.push(TorrentInput::from_ref(&r).map_err(|e| format!("{arg}:{}: {e}", n + 1))?);
            }
        } else {
            out.push(load_torrent_file(path)?);
        }
    }
    Ok(out)
}

fn load_torrent_file(path: &Path) -> Result<TorrentInput, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown}: not a regular file"));
    }
    if meta.len() > 64 << 20 {
        return Err(format!("{shown}: larger than 64 MiB, not a torrent file"));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{shown}: {e}"))?;
    let m = Metainfo::from_bytes(&bytes).map_err(|e| format!("{shown}: not a torrent: {e}"))?;
    TorrentInput::from_metainfo(&m).map_err(|e| format!("{shown}: {e}"))
}

/// How a scan is run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
    /// Print the live one-line status (default: when stderr is a terminal).
    pub status_line: Option<bool>,
    /// TLS configuration for https trackers, when the caller already built it from
    /// `tracker.ca_files` (`swarmscan run` does, to fail with exit code 2 before anything
    /// starts); None = built here.
    pub tracker_tls: Option<Arc<rustls::ClientConfig>>,
}

/// What a finished scan did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    pub seconds: f64,
    pub torrents: usize,
    pub peers_known: u64,
    pub probes: u64,
    pub probes_ok: u64,
    pub confirmed_this_run: u64,
    pub records_committed: u64,
    /// Incoming MSE handshakes closed unanswered: the workers' DH budget was spent
    /// (`net.mse_incoming_per_sec`).
    pub mse_incoming_refused: u64,
    pub listen: Vec<SocketAddr>,
    /// The TCP port announced to trackers and peers (0 = none).
    pub announce_port: u16,
    /// Addresses from trackers and PEX that were our own (never probed).
    pub own_address_dropped: u64,
    /// Threshold crossings seen live, on a watched connection (part of `confirmed_this_run`).
    pub crossed_live: u64,
    /// Watch candidates that found `peer.max_watched` full of better ones.
    pub watch_refused: u64,
    /// IPv6 addresses ignored because `net.ipv6 = false`.
    pub ipv6_ignored: u64,
    /// Probes the stop cut short before the peer stated its progress (not recorded; those
    /// that had it are recorded as the visits they were).
    pub cancelled_at_stop: u64,
    /// Log lines dropped because stderr could not be written (e.g. its file system is full).
    pub log_writes_dropped: u64,
    /// Incoming connections reset at once: `peer.max_incoming` were alive.
    pub incoming_refused_full: u64,
    /// Incoming connections closed without a handshake after `peer.incoming_handshake_ms`.
    pub incoming_silent_closed: u64,
    /// Metadata fetches started (torrents known by hash or magnet).
    pub metadata_fetches: u64,
    /// Metadata claims above `peer.metadata_max_bytes` (or 0) refused.
    pub metadata_refused_too_large: u64,
    /// Metadata offers turned away while `peer.metadata_fetches_per_torrent` /
    /// `peer.metadata_fetches` were under way.
    pub metadata_refused_busy: u64,
}

/// Listen addresses with port 0 get a concrete free port, so that every worker listens on the
/// same port and that port can be announced.
fn resolve_listen_ports(listen: &[SocketAddr]) -> Result<Vec<SocketAddr>, String> {
    listen
        .iter()
        .map(|&a| {
            if a.port() != 0 {
                return Ok(a);
            }
            let probe = std::net::TcpListener::bind(a)
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("net.listen: {a}: {e}"))?;
            Ok(SocketAddr::new(a.ip(), probe.port()))
        })
        .collect()
}

/// The port announced to trackers and peers: `net.announce_port`, or else the port of the first
/// listener, or 0 (nothing listens) when there is none.
pub fn announce_port(configured: u16, listen: &[SocketAddr]) -> u16 {
    if configured != 0 {
        configured
    } else {
        listen.first().map_or(0, |a| a.port())
    }
}

/// Set by SIGINT/SIGTERM.
fn register_signals(stop: &Arc<AtomicBool>) -> Result<(), String> {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    Ok(())
}

fn our_peer_id(prefix: &str) -> [u8; 20] {
    let mut id = [b'0'; 20];
    let p = prefix.as_bytes();
    id[..p.len().min(20)].copy_from_slice(&p[..p.len().min(20)]);
    // The rest: random-looking digits so two scanners don't share a peer-id.
    let mut x = now_unix_ms() as u64 ^ (std::process::id() as u64).rotate_left(32);
    for b in id.iter_mut().skip(p.len().min(20)) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = b'0' + (x % 10) as u8;
    }
    id
}

/// Runs a scan of `inputs` (plus the torrents already in the database) until the duration
/// passes or a signal arrives.
pub fn run_scan(
    config: &Config,
    inputs: Vec<TorrentInput>,
    opts: RunOptions,
) -> Result<RunSummary, String> {
    let stop = Arc::new(AtomicBool::new(false));
    register_signals(&stop)?;
    let started = Instant::now();
    // Every setting below comes from here: one translation of the config, tested key by key.
    let s = ScanSettings::from_config(config);
    // Checked before anything is opened: a bad blocklist or CA file is an error that
    // touches nothing.
    let blocklist = Arc::new(crate::scan::blocklist::Blocklist::load(&s.blocklist_file)?);
    let tracker_tls = match opts.tracker_tls.clone() {
        Some(t) => t,
        None => crate::scan::tls::client_config(&s.tracker.ca_files).map_err(|e| e.to_string())?,
    };
    let notifier = crate::service::notify::Notifier::from_env();
    // Bound before anything is opened: a taken port is an error that touches nothing.
    let metrics_listener = match s.metrics_listen {
        Some(addr) => {
            if !addr.ip().is_loopback() && s.metrics_allow_remote {
                tracing::warn!(%addr, "metrics.allow_remote: serving metrics beyond loopback");
            }
            Some(crate::service::prometheus::bind(addr)?)
        }
        None => None,
    };

    // Resume state, read before the writer takes the database: the torrents already in it
    // (from `add` or an earlier run) and their peers.
    let (resume, known_torrents) = {
        let store = Store::open(&s.database).map_err(|e| e.to_string())?;
        (
            store.load_peers().map_err(|e| e.to_string())?,
            store.torrents().map_err(|e| e.to_string())?,
        )
    };
    let mut inputs = inputs;
    for row in known_torrents {
        let Some(t) = TorrentInput::from_row(row) else {
            continue;
        };
        let given = inputs
            .iter()
            .any(|i| i.wire_hash == t.wire_hash || i.alt_hash == Some(t.wire_hash));
        if !given {
            inputs.push(t);
        }
    }

    let writer = Writer::start_with(&s.database, s.privacy.0, &s.privacy.1, s.writer.clone())
        .map_err(|e| e.to_string())?;
    let handle = writer.handle();
    let mut torrents = Vec::new();
    for t in &inputs {
        let db_id = handle.register_torrent(t.record.clone())?;
        torrents.push(CatalogTorrent {
            db_id,
            wire_hash: t.wire_hash,
            alt_hash: t.alt_hash,
            name: t.name.clone(),
            piece_count: t.piece_count.into(),
            total_size: t.total_size,
            trackers: t.trackers.clone(),
        });
    }
    if torrents.is_empty() {
        return Err(format!(
            "nothing to scan: give .torrent files, magnet links or info-hashes (the database {} has no torrents yet)",
            s.database.display()
        ));
    }
    let catalog = Catalog::with_metadata_limits(torrents, s.metadata);

    let listen_addrs = resolve_listen_ports(&s.engine.listen)?;
    let workers = if s.engine.workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        s.engine.workers
    };
    let engine_cfg = EngineConfig {
        workers,
        listen: listen_addrs.clone(),
        ..s.engine.clone()
    };
    crate::engine::net::raise_nofile_limit(
        engine_cfg.descriptors_needed(),
        &format!(
            "peer.max_in_flight = {} + peer.max_watched = {} + peer.max_incoming = {}",
            engine_cfg.max_in_flight, engine_cfg.max_held, engine_cfg.max_incoming
        ),
    )?;

    // The configured prefix (also in `s.probe.peer_id`), then digits unique to this run.
    let peer_id = our_peer_id(&config.peer.peer_id_prefix);
    let listen_port = announce_port(s.probe.listen_port, &listen_addrs);
    if listen_port == 0 {
        tracing::warn!(
            "net.listen is empty and net.announce_port = 0: announcing port 0, so no peer can dial \
             in (some HTTP trackers refuse port 0; set net.announce_port if yours does)"
        );
    } else {
        tracing::info!(
            port = listen_port,
            "announcing this TCP port to trackers and peers"
        );
    }
    let own = Arc::new(OwnAddresses::new(&listen_addrs, listen_port));
    let peer_ids = Arc::new(crate::scan::peer_ids::PeerIds::default());
    // No `p` (listen port) in our extension handshake: Transmission and libtorrent map a
    // connection that names one to their entry for (our ip, p) and drop a new connection while
    // the old one is still registered (a second or so after we closed it), which blocks the
    // quick fresh look a peer that quits on finishing needs. Peers learn our listen port from
    // the trackers we announce it to.
    let settings = Arc::new(ProbeSettings {
        peer_id,
        listen_port: 0,
        ..s.probe.clone()
    });
    let policy = s.policy;

    let epoch = Instant::now();
    let epoch_unix_ms = now_unix_ms();
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..workers)
        .map(|_| crossbeam_channel::unbounded::<WorkerMsg>())
        .unzip();
    let mut drivers: Vec<ScanDriver> = rxs
        .into_iter()
        .enumerate()
        .map(|(i, rx)| {
            ScanDriver::new(
                i,
                catalog.clone(),
                settings.clone(),
                policy,
                (s.max_peers / workers as u64).min(u32::MAX as u64) as u32,
                rx,
                txs.clone(),
                writer.sender(),
                epoch_unix_ms,
                stop.clone(),
                blocklist.clone(),
            )
            .with_encryption(s.encryption)
            .with_mse_incoming_per_sec(s.mse_incoming_per_sec)
            .with_ipv6(s.ipv6)
            .with_watch(WatchSettings {
                budget: engine_cfg.worker(i).max_held,
                ..s.watch
            })
            .with_own_addresses(own.clone())
            .with_peer_ids(peer_ids.clone())
        })
        .collect();

    // Resume: peers of this database come back with their state and next visit time. In an
    // anonymised database the addresses are not stored; those peers return through discovery.
    let by_db_id: std::collections::HashMap<i64, u32> = catalog
        .torrents
        .iter()
        .enumerate()
        .map(|(i, t)| (t.db_id, i as u32))
        .collect();
    let mut resumed = 0u64;
    for p in resume {
        let (Some(&t), Some(addr)) = (by_db_id.get(&p.torrent_id), p.addr) else {
            continue;
        };
        let w = owner_worker(t, addr, workers);
        let mut flags = 0;
        if p.contacted {
            flags |= flag::EVALUATED;
        }
        if p.confirmed {
            flags |= flag::CONFIRMED | flag::SEEN_BELOW | flag::AT_THRESHOLD;
        } else if p.last_progress.is_some_and(|x| x < s.policy.threshold) {
            flags |= flag::SEEN_BELOW;
        }
        let next = p
            .next_visit_at
            .map(|at| ((at - epoch_unix_ms).max(0) / 1000) as u32)
            .or((!p.confirmed).then_some(0));
        let progress = progress_fixed(p.last_progress.unwrap_or(0.0));
        drivers[w].restore(RestoredPeer {
            torrent: t,
            addr,
            sources: source::CONFIG,
            progress,
            flags,
            last_contact: 0,
            next_visit: next,
        });
        resumed += 1;
    }
    if resumed > 0 {
        tracing::info!(resumed, "peers resumed from the database");
    }
    for (i, t) in inputs.iter().enumerate() {
        for &a in &t.peers {
            let _ = txs[owner_worker(i as u32, a, workers)].send(WorkerMsg::Peers {
                torrent: i as u32,
                source: source::CONFIG,
                addrs: vec![a],
            });
        }
    }

    let counters: Vec<Arc<WorkerCounters>> = drivers.iter().map(|d| d.counters.clone()).collect();
    let discovery = Discovery::start(
        DiscoveryConfig {
            announce_secs: s.tracker.announce_secs,
            respect_interval: s.tracker.respect_interval,
            scrape_secs: s.tracker.scrape_secs,
            numwant: s.tracker.numwant,
            listen_port,
            own: own.clone(),
            peer_id,
            timeout: s.tracker.timeout,
            threads: 4,
            user_agent: concat!("swarmscan/", env!("CARGO_PKG_VERSION")).to_string(),
            tls: tracker_tls,
        },
        catalog.clone(),
        txs.clone(),
        writer.sender(),
        epoch_unix_ms,
        epoch,
        stop.clone(),
    )
    .map_err(|e| format!("starting discovery: {e}"))?;

    // Workers.
    let (listen_tx, listen_rx) = crossbeam_channel::unbounded::<Vec<SocketAddr>>();
    let mut worker_threads = Vec::new();
    for (i, mut driver) in drivers.into_iter().enumerate() {
        let wcfg = engine_cfg.worker(i);
        let stop = stop.clone();
        let listen_tx = listen_tx.clone();
        worker_threads.push(
            std::thread::Builder::new()
                .name(format!("engine-{i}"))
                .spawn(move || -> Result<crate::engine::WorkerStats, String> {
                    let mut worker = Worker::<crate::scan::driver::ProbeConv>::new(wcfg, epoch)
                        .map_err(|e| {
                            stop.store(true, Ordering::SeqCst);
                            format!("worker {i}: {e}")
                        })?;
                    let _ = listen_tx.send(worker.listen_addrs());
                    // Dropped now, so a worker that dies before sending cannot leave the
                    // collection of listen addresses below waiting for the others forever.
                    drop(listen_tx);
                    crate::threads::debug_panic_point("engine");
                    let r = worker
                        .run(&mut driver, &stop)
                        .map_err(|e| format!("worker {i}: {e}"));
                    drop(driver); // flushes its records
                    r
                })
                .map_err(|e| format!("spawning worker: {e}"))?,
        );
    }
    drop(listen_tx);
    drop(txs);
    let mut listen: Vec<SocketAddr> = Vec::new();
    for addrs in listen_rx.iter().take(workers) {
        for a in addrs {
            if !listen.contains(&a) {
                listen.push(a);
            }
        }
    }
    // Metrics endpoint, then READY: the database is open and every worker is up.
    let stalled_threads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let metrics_thread = match metrics_listener {
        Some(l) => {
            let addr = l.local_addr().map_err(|e| format!("metrics.listen: {e}"))?;
            let registry =
                crate::service::prometheus::registry(crate::service::prometheus::ScanMetrics {
                    workers: counters.clone(),
                    writer: writer.metrics(),
                    own: own.clone(),
                    stalled: stalled_threads.clone(),
                    torrents: catalog.len(),
                    start_time: crate::service::prometheus::unix_now(),
                });
            let t = crate::service::prometheus::serve(l, registry, stop.clone())
                .map_err(|e| format!("spawning the metrics thread: {e}"))?;
            tracing::info!(%addr, "metrics at http://{addr}/metrics");
            Some(t)
        }
        None => None,
    };
    let _ = notifier.notify("READY=1\nSTATUS=scanning");
    // The watchdog rule (service::health): pings only while every worker loop and the writer
    // make progress.
    let mut heartbeats = crate::service::health::Heartbeats::default();
    for (i, c) in counters.iter().enumerate() {
        let c = c.clone();
        heartbeats.add(
            format!("engine-{i}"),
            Instant::now(),
            Box::new(move || c.loops.load(Ordering::Relaxed)),
        );
    }
    {
        let m = writer.metrics();
        heartbeats.add(
            "swarmscan-writer",
            Instant::now(),
            Box::new(move || m.loops.load(Ordering::Relaxed)),
        );
    }
    let watchdog = notifier.watchdog();
    let stall_limit = crate::service::health::stall_limit(watchdog.unwrap_or(Duration::ZERO));
    let mut last_ping: Option<Instant> = None;
    let mut stalled_before = false;
    if let Some(wd) = watchdog {
        tracing::info!(
            timeout_ms = wd.as_millis() as u64,
            "systemd watchdog: pinging while every worker and the writer make progress"
        );
    }

    // Status, statistics, stop conditions.
    let show_status = opts
        .status_line
        .unwrap_or_else(|| std::io::stderr().is_terminal());
    let mut stats_sender = writer.sender();
    let stats_every = s.stats_interval;
    let mut next_stats = Instant::now() + stats_every;
    let mut last_probes = 0u64;
    let mut last_at = Instant::now();
    let mut rate = 0.0;
    let sum = |f: fn(&WorkerCounters) -> u64| counters.iter().map(|c| f(c)).sum::<u64>();
    let mut cpu = crate::metrics::CpuMeter::default();
    let writer_metrics = writer.metrics();
    let mut ended: Option<String> = None;
    let mut errors_before_join: Vec<String> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        if opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        // Every thread runs until `stop`: one that ended has failed (a panic, or a worker that
        // could not go on). Stop everything and report it below, never a half-run.
        ended = crate::threads::first_finished(&worker_threads)
            .or_else(|| crate::threads::first_finished(&metrics_thread))
            .or_else(|| discovery.ended_thread())
            .or_else(|| writer.ended().then(|| "swarmscan-writer".to_string()));
        if ended.is_some() {
            // Read after the thread was seen ended: a signal (or a worker that failed to
            // start) set it first, and the threads ended because of it.
            if stop.load(Ordering::SeqCst) {
                ended = None;
            }
            break;
        }
        if let Some(why) = writer_metrics.failure() {
            // The database stayed unwritable: stop probing; `finish` below reports it.
            tracing::error!("stopping the scan: {why}");
            break;
        }
        crate::threads::debug_panic_point("status");
        let stalled = heartbeats.stalled(Instant::now(), stall_limit);
        stalled_threads.store(stalled.len() as u64, Ordering::Relaxed);
        if !stalled.is_empty() && !stalled_before {
            let names: Vec<String> = stalled
                .iter()
                .map(|(n, d)| format!("{n} ({:.1} s)", d.as_secs_f64()))
                .collect();
            let consequence = if watchdog.is_some() {
                "watchdog pings withheld"
            } else {
                "no systemd watchdog to tell"
            };
            tracing::error!("no progress from {}: {consequence}", names.join(", "));
            let _ = notifier.notify(&crate::service::notify::status_line(&format!(
                "stalled: {}",
                names.join(", ")
            )));
        } else if stalled.is_empty() && stalled_before {
            tracing::warn!("every worker and the writer make progress again");
        }
        stalled_before = !stalled.is_empty();
        if let Some(wd) = watchdog {
            if stalled.is_empty() && last_ping.is_none_or(|t| t.elapsed() >= wd / 4) {
                let _ = notifier.notify("WATCHDOG=1");
                last_ping = Some(Instant::now());
            }
        }
        let probes = sum(|c| c.probes_done.load(Ordering::Relaxed));
        if last_at.elapsed() >= Duration::from_secs(1) {
            rate = (probes - last_probes) as f64 / last_at.elapsed().as_secs_f64();
            last_probes = probes;
            last_at = Instant::now();
            let known = sum(|c| c.known_peers.load(Ordering::Relaxed));
            let in_flight = sum(|c| c.in_flight.load(Ordering::Relaxed));
            let watched = sum(|c| c.watched.load(Ordering::Relaxed));
            let confirmed = sum(|c| c.confirmed.load(Ordering::Relaxed));
            if show_status {
                eprint!(
                    "\r\x1b[2K{:>6.0}s  peers {known}  in flight {in_flight}  watched {watched}  {rate:.0} probes/s  probes {probes}  confirmed {confirmed}",
                    started.elapsed().as_secs_f64()
                );
            }
            if !stalled_before {
                let m = writer.metrics();
                let queue = m.queued.load(Ordering::Relaxed) as i64
                    + m.overflow.load(Ordering::Relaxed).max(0);
                let _ = notifier.notify(&crate::service::notify::status_line(&format!(
                    "peers {known}, in flight {in_flight}, watched {watched}, {rate:.0} probes/s, confirmed {confirmed}, writer queue {queue}"
                )));
            }
        }
        if Instant::now() >= next_stats {
            next_stats += stats_every;
            let metrics = writer.metrics();
            stats_sender.send(Record::Stats(StatsRecord {
                at: now_unix_ms(),
                peers_known: sum(|c| c.known_peers.load(Ordering::Relaxed)) as i64,
                in_flight: sum(|c| c.in_flight.load(Ordering::Relaxed)) as i64,
                probes_per_sec: rate,
                confirmed: sum(|c| c.confirmed.load(Ordering::Relaxed)) as i64,
                due_queue: sum(|c| c.due_queue.load(Ordering::Relaxed)) as i64,
                writer_overflow: metrics.overflow.load(Ordering::Relaxed),
                writer_backpressure: metrics.backpressure.load(Ordering::Relaxed) as i64,
                rss_bytes: crate::metrics::rss_bytes() as i64,
                cpu_percent: cpu.percent(),
            }));
            stats_sender.pump();
            // One log line per statistics interval (journald's view of the scan), never one
            // per probe.
            tracing::info!(
                peers = sum(|c| c.known_peers.load(Ordering::Relaxed)),
                in_flight = sum(|c| c.in_flight.load(Ordering::Relaxed)),
                watched = sum(|c| c.watched.load(Ordering::Relaxed)),
                probes_per_sec = format_args!("{rate:.0}"),
                probes = sum(|c| c.probes_done.load(Ordering::Relaxed)),
                confirmed = sum(|c| c.confirmed.load(Ordering::Relaxed)),
                writer_queue = metrics.queued.load(Ordering::Relaxed) as i64
                    + metrics.overflow.load(Ordering::Relaxed).max(0),
                "scan"
            );
        }
    }
    if show_status {
        eprintln!();
    }
    let _ = notifier.notify("STOPPING=1\nSTATUS=stopping: flushing records to the database");
    stop.store(true, Ordering::SeqCst);
    if let Some(t) = metrics_thread {
        if let Err(e) = crate::threads::join(t) {
            errors_before_join.push(e);
        }
    }
    let mut errors = errors_before_join;
    let mut incoming_refused_full = 0;
    for t in worker_threads {
        match crate::threads::join(t).and_then(|r| r) {
            Ok(stats) => incoming_refused_full += stats.incoming_budget_full,
            Err(e) => errors.push(e),
        }
    }
    if let Err(e) = discovery.join() {
        errors.push(e);
    }
    stats_sender.close();
    let counts = writer.finish().map_err(|e| e.to_string());
    if let Err(e) = &counts {
        errors.push(e.clone());
    }
    if let (Some(name), true) = (&ended, errors.is_empty()) {
        errors.push(format!("thread '{name}' ended unexpectedly"));
    }
    if !errors.is_empty() {
        let stopped = if ended.is_some() {
            "; the scan was stopped"
        } else {
            ""
        };
        return Err(format!("{}{stopped}", errors.join("; ")));
    }
    let counts = counts?;
    Ok(RunSummary {
        seconds: started.elapsed().as_secs_f64(),
        torrents: catalog.len(),
        peers_known: sum(|c| c.known_peers.load(Ordering::Relaxed)),
        probes: sum(|c| c.probes_done.load(Ordering::Relaxed)),
        probes_ok: sum(|c| c.probes_ok.load(Ordering::Relaxed)),
        confirmed_this_run: sum(|c| c.confirmed.load(Ordering::Relaxed)),
        records_committed: counts.records,
        mse_incoming_refused: sum(|c| c.mse_incoming_refused.load(Ordering::Relaxed)),
        listen,
        announce_port: listen_port,
        own_address_dropped: own.dropped(),
        crossed_live: sum(|c| c.crossed_live.load(Ordering::Relaxed)),
        watch_refused: sum(|c| c.watch_refused.load(Ordering::Relaxed)),
        ipv6_ignored: sum(|c| c.ipv6_ignored.load(Ordering::Relaxed)),
        cancelled_at_stop: sum(|c| c.cancelled_at_stop.load(Ordering::Relaxed)),
        log_writes_dropped: crate::logging::dropped_writes(),
        incoming_refused_full,
        incoming_silent_closed: sum(|c| c.incoming_silent_closed.load(Ordering::Relaxed)),
        metadata_fetches: catalog.metadata.started.load(Ordering::Relaxed),
        metadata_refused_too_large: catalog.metadata.refused_too_large.load(Ordering::Relaxed),
        metadata_refused_busy: catalog.metadata.refused_busy.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_port_follows_the_first_listener_unless_set() {
        let listen: Vec<SocketAddr> = vec![
            "127.0.0.1:7001".parse().unwrap(),
            "[::1]:7002".parse().unwrap(),
        ];
        assert_eq!(announce_port(0, &listen), 7001);
        assert_eq!(announce_port(51413, &listen), 51413);
        assert_eq!(
            announce_port(0, &[]),
            0,
            "nothing listens: nothing announced"
        );
        assert_eq!(announce_port(6881, &[]), 6881);
    }

    #[test]
    fn listen_port_zero_becomes_a_concrete_free_port() {
        let given: Vec<SocketAddr> = vec![
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:7003".parse().unwrap(),
        ];
        let resolved = resolve_listen_ports(&given).unwrap();
        assert_eq!(resolved.len(), 2);
        assert_ne!(resolved[0].port(), 0);
        assert_eq!(resolved[0].ip(), given[0].ip());
        assert_eq!(resolved[1], given[1]);
        let e = resolve_listen_ports(&["192.0.2.1:0".parse().unwrap()]).unwrap_err();
        assert!(e.contains("net.listen") && e.contains("192.0.2.1"), "{e}");
    }
}
