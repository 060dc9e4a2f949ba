//! Step 2: drivers (peers resumed and seeded), discovery, worker threads, metrics, READY.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::build::{Built, RunOptions};
use crate::engine::{Worker, WorkerStats};
use crate::inputs::now_unix_ms;
use crate::scan::catalog::Catalog;
use crate::scan::discovery::{Discovery, DiscoveryConfig};
use crate::scan::driver::{
    ProbeConv, RestoredPeer, ScanDriver, UtpSettings, WatchSettings, WorkerCounters, WorkerMsg,
};
use crate::scan::own_addr::OwnAddresses;
use crate::scan::peer_table::{flag, owner_worker};
use crate::scan::revisit::progress_fixed;
use crate::scan::udp_tracker;
use crate::service::notify::Notifier;
use crate::store::record::PeerSource;
use crate::store::writer::Writer;
use crate::store::{Store, StoreError};

/// A scan whose threads run; [`Running::monitor`] watches it, [`Running::shutdown`] ends it.
pub(super) struct Running {
    pub(super) opts: RunOptions,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) started: Instant,
    /// The configuration as started (see `session::reload`).
    pub(super) config: crate::config::Config,
    pub(super) stats_interval: Duration,
    pub(super) notifier: Notifier,
    pub(super) writer: Writer,
    /// The newest catalog snapshot (grows with `swarmscan add`, see `session::live`).
    pub(super) catalog: Arc<Catalog>,
    /// Each worker's inbox: new catalog snapshots and revisit policies go there.
    pub(super) worker_inboxes: Vec<crossbeam_channel::Sender<WorkerMsg>>,
    pub(super) own: Arc<OwnAddresses>,
    pub(super) counters: Vec<Arc<WorkerCounters>>,
    pub(super) discovery: Discovery,
    pub(super) worker_threads: Vec<JoinHandle<Result<WorkerStats, String>>>,
    pub(super) metrics_thread: Option<JoinHandle<()>>,
    /// Threads the watchdog rule sees stalled (shown by the metrics endpoint).
    pub(super) stalled_threads: Arc<AtomicU64>,
    /// Torrents scanned now (the metrics endpoint's `torrents`), kept by `session::live`.
    pub(super) scanned_torrents: Arc<AtomicU64>,
    /// Where the workers listen, as bound.
    pub(super) listen: Vec<SocketAddr>,
    pub(super) listen_port: u16,
}

impl Built {
    /// Starts every thread of the scan; READY goes to systemd once the workers are up.
    pub(super) fn start(self) -> Result<Running, String> {
        let Built {
            opts,
            stop,
            started,
            config,
            settings: s,
            blocklist,
            tracker_tls,
            notifier,
            metrics_listener,
            inputs,
            mut writer,
            catalog,
            engine,
            peer_id,
            listen_port,
            own,
            peer_ids,
            probe,
        } = self;
        let workers = engine.workers;
        let epoch = Instant::now();
        let epoch_unix_ms = now_unix_ms();
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| crossbeam_channel::unbounded::<WorkerMsg>())
            .unzip();
        // UDP tracker requests run on the workers' sockets (`scan::udp_tracker`).
        let (udp_trackers, mut udp_tracker_workers) = udp_tracker::channels(
            workers,
            crate::proto::tracker_udp::client::ClientSettings {
                retransmit_ms: s.tracker.timeout.as_millis().min(u64::MAX as u128) as u64,
                max_retransmits: s.tracker.udp_retransmits,
                ..Default::default()
            },
            rand_secret,
        );
        let mut drivers: Vec<ScanDriver> = rxs
            .into_iter()
            .enumerate()
            .map(|(i, rx)| {
                ScanDriver::new(
                    i,
                    catalog.clone(),
                    probe.clone(),
                    s.policy,
                    (s.max_peers / workers as u64).min(u32::MAX as u64) as u32,
                    rx,
                    txs.clone(),
                    writer.sender(),
                    epoch_unix_ms,
                    stop.clone(),
                    blocklist.clone(),
                )
                .with_encryption(s.encryption)
                .with_utp(UtpSettings::for_worker(s.utp, &engine.worker(i)))
                .with_mse_incoming_per_sec(s.mse_incoming_per_sec)
                .with_ipv6(s.ipv6)
                .with_watch(WatchSettings {
                    budget: engine.worker(i).max_held,
                    ..s.watch
                })
                .with_own_addresses(own.clone())
                .with_peer_ids(peer_ids.clone())
                .with_udp_trackers(udp_tracker_workers.remove(0))
            })
            .collect();
        // Reverse DNS from worker 0 alone: one rate limit, one socket the answers come back to.
        if let (Some(requests), Some(resolver)) =
            (writer.take_host_lookups(), s.reverse_dns.resolver)
        {
            tracing::info!(%resolver, per_sec = s.reverse_dns.per_sec, "reverse DNS of peers on");
            let rdns = crate::scan::rdns::ReverseDns::new(
                resolver,
                s.reverse_dns.per_sec,
                requests,
                epoch_unix_ms,
            );
            let first = drivers.remove(0).with_reverse_dns(rdns);
            drivers.insert(0, first);
        }

        if s.dht.enabled {
            // Bootstrap names are resolved only when a socket reaches beyond loopback; the
            // nodes the last run kept come back too (a failure to read them is not fatal).
            let bootstrap =
                crate::dht::bootstrap::resolve_bootstrap_system(&s.dht.bootstrap, &engine.udp);
            let remembered = crate::store::Store::open(&s.database)
                .and_then(|store| store.dht_nodes())
                .unwrap_or_else(|e| {
                    tracing::warn!("DHT nodes of the last run not read: {e}");
                    Vec::new()
                });
            let kept_ids = crate::store::Store::open(&s.database)
                .and_then(|store| store.dht_node_ids())
                .unwrap_or_else(|e| {
                    tracing::warn!("DHT node ids of the last run not read (new ids): {e}");
                    Vec::new()
                });
            tracing::info!(
                bootstrap = bootstrap.len(),
                remembered = remembered.len(),
                kept_ids = kept_ids.len(),
                nodes = s.dht.node_ids,
                "DHT: starting nodes"
            );
            drivers = drivers
                .into_iter()
                .enumerate()
                .map(|(i, d)| {
                    d.with_dht(
                        crate::dht::scan::ScanDht::new(
                            s.dht.clone(),
                            i,
                            workers,
                            bootstrap.clone(),
                            &remembered,
                            &kept_ids,
                            listen_port,
                            writer.sender(),
                            epoch_unix_ms,
                        )
                        .with_own_addresses(own.clone()),
                    )
                })
                .collect();
        }

        // Resume: peers of this database come back with their state and next visit time.
        let resumed = resume_peers(
            &s.database,
            &catalog,
            &mut drivers,
            s.policy.threshold,
            epoch_unix_ms,
        )
        .map_err(|e| format!("resuming the peers of the database: {e}"))?;
        if resumed.peers > 0 {
            tracing::info!(resumed = resumed.peers, "peers resumed from the database");
        }
        if resumed.over_max_peers > 0 {
            tracing::warn!(
                not_resumed = resumed.over_max_peers,
                max_peers = s.max_peers,
                "peers of the database not resumed: engine.max_peers reached (their rows stay \
                 as they are; they are not scanned in this run)"
            );
        }
        for (i, t) in inputs.iter().enumerate() {
            for &a in &t.peers {
                let _ = txs[owner_worker(i as u32, a, workers)].send(WorkerMsg::Peers {
                    torrent: i as u32,
                    source: PeerSource::Config.mask(),
                    addrs: vec![a],
                });
            }
        }

        let counters: Vec<Arc<WorkerCounters>> =
            drivers.iter().map(|d| d.counters.clone()).collect();
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
            udp_trackers,
            epoch_unix_ms,
            epoch,
            stop.clone(),
        )
        .map_err(|e| format!("starting discovery: {e}"))?;

        let (listen_tx, listen_rx) = crossbeam_channel::unbounded::<Vec<SocketAddr>>();
        let mut worker_threads = Vec::new();
        for (i, mut driver) in drivers.into_iter().enumerate() {
            let wcfg = engine.worker(i);
            let stop = stop.clone();
            let listen_tx = listen_tx.clone();
            worker_threads.push(
                std::thread::Builder::new()
                    .name(format!("engine-{i}"))
                    .spawn(move || -> Result<WorkerStats, String> {
                        let mut worker = Worker::<ProbeConv>::new(wcfg, epoch).map_err(|e| {
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
        let mut listen: Vec<SocketAddr> = Vec::new();
        for addrs in listen_rx.iter().take(workers) {
            for a in addrs {
                if !listen.contains(&a) {
                    listen.push(a);
                }
            }
        }

        // Metrics endpoint, then READY: the database is open and every worker is up.
        let stalled_threads = Arc::new(AtomicU64::new(0));
        let scanned_torrents = Arc::new(AtomicU64::new(catalog.len() as u64));
        let metrics_thread = match metrics_listener {
            Some(l) => {
                use crate::service::prometheus;
                let addr = l.local_addr().map_err(|e| format!("metrics.listen: {e}"))?;
                let registry = prometheus::registry(prometheus::ScanMetrics {
                    workers: counters.clone(),
                    writer: writer.metrics(),
                    own: own.clone(),
                    stalled: stalled_threads.clone(),
                    torrents: scanned_torrents.clone(),
                    start_time: prometheus::unix_now(),
                });
                let t = prometheus::serve(l, registry, stop.clone())
                    .map_err(|e| format!("spawning the metrics thread: {e}"))?;
                tracing::info!(%addr, "metrics at http://{addr}/metrics");
                Some(t)
            }
            None => None,
        };
        let _ = notifier.notify("READY=1\nSTATUS=scanning");
        Ok(Running {
            opts,
            stop,
            started,
            config,
            stats_interval: s.stats_interval,
            notifier,
            writer,
            catalog,
            worker_inboxes: txs,
            own,
            counters,
            discovery,
            worker_threads,
            metrics_thread,
            stalled_threads,
            scanned_torrents,
            listen,
            listen_port,
        })
    }
}

/// What [`resume_peers`] put into the peer tables.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Resumed {
    /// Peers in a table now (with their state, or already there).
    peers: u64,
    /// Peers left out because their worker's table was full (`engine.max_peers`).
    over_max_peers: u64,
}

/// Streams the peer rows of `database` into the drivers' tables: one row at a time, so the
/// start holds no list of every peer (at `engine.max_peers` = 4 M, such a list cost more than
/// the tables themselves). Rows of torrents not in `catalog` (removed) are skipped, and so is
/// every row of an anonymised database, which stores no addresses: those peers come back
/// through discovery.
///
/// The writer already runs on its own connection; this one only reads, and the database is
/// WAL, so the rows are one consistent snapshot and the writer is never blocked. Nothing that
/// finds peers runs yet (discovery and the workers start after), so the snapshot is the
/// peers of the earlier runs.
fn resume_peers(
    database: &Path,
    catalog: &Catalog,
    drivers: &mut [ScanDriver],
    threshold: f64,
    epoch_unix_ms: i64,
) -> Result<Resumed, StoreError> {
    let by_db_id: HashMap<i64, u32> = catalog
        .iter()
        .enumerate()
        .map(|(i, t)| (t.db_id, i as u32))
        .collect();
    let workers = drivers.len();
    let mut resumed = Resumed::default();
    let store = Store::open_existing(database)?;
    store.for_each_peer_resume(|p| {
        let (Some(&t), Some(addr)) = (by_db_id.get(&p.torrent_id), p.addr) else {
            return;
        };
        let mut flags = 0;
        if p.contacted {
            flags |= flag::EVALUATED;
        }
        if p.confirmed {
            flags |= flag::CONFIRMED | flag::SEEN_BELOW | flag::AT_THRESHOLD;
        } else if p.last_progress.is_some_and(|x| x < threshold) {
            flags |= flag::SEEN_BELOW;
        }
        let next_visit = p
            .next_visit_at
            .map(|at| ((at - epoch_unix_ms).max(0) / 1000) as u32)
            .or((!p.confirmed).then_some(0));
        let restored = drivers[owner_worker(t, addr, workers)].restore(RestoredPeer {
            torrent: t,
            addr,
            sources: PeerSource::Config.mask(),
            progress: progress_fixed(p.last_progress.unwrap_or(0.0)),
            flags,
            last_contact: 0,
            next_visit,
        });
        if restored {
            resumed.peers += 1;
        } else {
            resumed.over_max_peers += 1;
        }
    })?;
    Ok(resumed)
}

/// A secret for a worker's UDP tracker transaction ids (never sent; new every run).
fn rand_secret() -> [u8; 32] {
    let mut secret = [0u8; 32];
    secret.copy_from_slice(&crate::scan::mse_budget::random_bytes(32));
    secret
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IpMode;
    use crate::scan::catalog::CatalogTorrent;
    use crate::scan::peer_table::{PeerEntry, NOT_SCHEDULED};
    use crate::scan::revisit::RevisitPolicy;
    use crate::store::anon::Anonymizer;
    use crate::store::record::{TorrentRecord, TorrentSource};
    use crate::store::writer::WriterOptions;

    const THRESHOLD: f64 = 0.98;
    /// Peers per kind of row below (six kinds).
    const PER_KIND: u32 = 600;

    fn torrent(byte: u8) -> TorrentRecord {
        TorrentRecord {
            info_hash_v1: Some([byte; 20]),
            info_hash_v2: None,
            name: Some(format!("torrent {byte}")),
            piece_count: Some(100),
            piece_length: Some(262_144),
            total_size: Some(100 * 262_144),
            source: TorrentSource::File,
            added_at: 1,
            trackers: Vec::new(),
        }
    }

    fn writer_options() -> WriterOptions {
        WriterOptions {
            batch_rows: 100,
            batch_ms: 50,
            channel_capacity: 1024,
            threshold: THRESHOLD,
            unwritable: Duration::from_secs(300),
            geo: Default::default(),
            reverse_dns: false,
        }
    }

    /// What one row of the test database should come back as.
    struct Expected {
        torrent: u32,
        addr: SocketAddr,
        flags: u8,
        progress: f64,
        next_visit: u32,
    }

    /// A database of earlier runs: torrents A and B scanned, C not (removed), and
    /// `6 * PER_KIND` peer rows of six kinds, written as the writer stores them, while a
    /// writer runs on it (as at a scan's start). Returns the rows expected back.
    struct Fixture {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        writer: Writer,
        catalog: Arc<Catalog>,
        epoch_unix_ms: i64,
        expected: Vec<Expected>,
        rows: u32,
    }

    fn fixture(mode: IpMode) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resume.sqlite");
        let store = Store::open(&path).unwrap();
        let ids: Vec<i64> = (1..=3)
            .map(|b| store.upsert_torrent(&torrent(b)).unwrap())
            .collect();
        let epoch_unix_ms = now_unix_ms();
        let mut expected = Vec::new();
        let mut rows = 0;
        {
            let mut insert = store
                .connection()
                .prepare(
                    "INSERT INTO peers (torrent_id, ip_key, ip, port, ipv6, sources, first_source,
                                        first_seen_at, contacts, last_progress, confirmed,
                                        next_visit_at)
                     VALUES (?1, ?2, ?2, ?3, ?4, 1, 1, 1, ?5, ?6, ?7, ?8)",
                )
                .unwrap();
            let mut row = |torrent: usize,
                           addr: SocketAddr,
                           contacts: i64,
                           progress: Option<f64>,
                           confirmed: bool,
                           next_visit_in_secs: Option<i64>| {
                let next = next_visit_in_secs.map(|s| epoch_unix_ms + s * 1000);
                insert
                    .execute(rusqlite::params![
                        ids[torrent],
                        addr.ip().to_string(),
                        addr.port(),
                        addr.is_ipv6(),
                        contacts,
                        progress,
                        confirmed,
                        next
                    ])
                    .unwrap();
                rows += 1;
            };
            let v4 = |i: u32| SocketAddr::from(([127, 1, (i >> 8) as u8, i as u8], 6881));
            for i in 0..PER_KIND {
                // Never reached yet: due now.
                row(0, v4(i), 0, None, false, None);
                expected.push(Expected {
                    torrent: 0,
                    addr: v4(i),
                    flags: 0,
                    progress: 0.0,
                    next_visit: 0,
                });
                // Reached below the threshold, next visit in 100 s (torrent B).
                row(1, v4(i), 1, Some(0.3), false, Some(100));
                expected.push(Expected {
                    torrent: 1,
                    addr: v4(i),
                    flags: flag::EVALUATED | flag::SEEN_BELOW,
                    progress: 0.3,
                    next_visit: 100,
                });
                // Confirmed: not visited again.
                let a = SocketAddr::from(([127, 2, (i >> 8) as u8, i as u8], 51413));
                row(0, a, 3, Some(1.0), true, None);
                expected.push(Expected {
                    torrent: 0,
                    addr: a,
                    flags: flag::EVALUATED
                        | flag::CONFIRMED
                        | flag::SEEN_BELOW
                        | flag::AT_THRESHOLD,
                    progress: 1.0,
                    next_visit: NOT_SCHEDULED,
                });
                // Seen only at the threshold (a seeder), its visit already overdue: due now.
                let a = SocketAddr::from(([127, 3, (i >> 8) as u8, i as u8], 6881));
                row(1, a, 2, Some(0.99), false, Some(-600));
                expected.push(Expected {
                    torrent: 1,
                    addr: a,
                    flags: flag::EVALUATED,
                    progress: 0.99,
                    next_visit: 0,
                });
                // IPv6, next visit in an hour.
                let a = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 10_000 + i as u16));
                row(0, a, 1, Some(0.5), false, Some(3600));
                expected.push(Expected {
                    torrent: 0,
                    addr: a,
                    flags: flag::EVALUATED | flag::SEEN_BELOW,
                    progress: 0.5,
                    next_visit: 3600,
                });
                // Torrent C is not in the catalog (removed): not resumed.
                row(2, v4(i), 1, Some(0.3), false, Some(100));
            }
        }
        // The writer records the database's privacy mode and runs while the rows are read.
        let writer =
            Writer::start(store, Anonymizer::new(mode, [9; 32]), writer_options()).unwrap();
        let catalog = Catalog::new(
            ids[..2]
                .iter()
                .map(|&db_id| CatalogTorrent {
                    db_id,
                    wire_hash: [db_id as u8; 20],
                    alt_hash: None,
                    name: format!("torrent {db_id}"),
                    piece_count: 100.into(),
                    total_size: 100 * 262_144,
                    trackers: Vec::new(),
                })
                .collect(),
        );
        Fixture {
            _dir: dir,
            path,
            writer,
            catalog,
            epoch_unix_ms,
            expected,
            rows,
        }
    }

    fn drivers(f: &Fixture, workers: usize, max_peers_each: u32) -> Vec<ScanDriver> {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| crossbeam_channel::unbounded::<WorkerMsg>())
            .unzip();
        rxs.into_iter()
            .enumerate()
            .map(|(i, rx)| {
                ScanDriver::new(
                    i,
                    f.catalog.clone(),
                    Arc::new(crate::proto::probe::ProbeSettings::default()),
                    RevisitPolicy {
                        threshold: THRESHOLD,
                        ..RevisitPolicy::default()
                    },
                    max_peers_each,
                    rx,
                    txs.clone(),
                    f.writer.sender(),
                    f.epoch_unix_ms,
                    Arc::new(AtomicBool::new(false)),
                    Arc::new(crate::scan::blocklist::Blocklist::default()),
                )
            })
            .collect()
    }

    fn entry(drivers: &[ScanDriver], torrent: u32, addr: SocketAddr) -> Option<PeerEntry> {
        let table = drivers[owner_worker(torrent, addr, drivers.len())].table();
        table.find(torrent, addr).map(|idx| *table.get(idx))
    }

    fn known(drivers: &[ScanDriver]) -> u64 {
        drivers.iter().map(|d| d.table().len() as u64).sum()
    }

    #[test]
    fn every_peer_comes_back_with_its_state_and_next_visit() {
        let f = fixture(IpMode::Full);
        let mut drivers = drivers(&f, 3, 1_000_000);
        let resumed = resume_peers(
            &f.path,
            &f.catalog,
            &mut drivers,
            THRESHOLD,
            f.epoch_unix_ms,
        )
        .unwrap();
        assert_eq!(
            resumed,
            Resumed {
                peers: f.expected.len() as u64,
                over_max_peers: 0
            }
        );
        assert_eq!(f.expected.len() as u32, 5 * PER_KIND);
        assert_eq!(
            known(&drivers),
            f.expected.len() as u64,
            "no more, no fewer"
        );
        for e in &f.expected {
            let p = entry(&drivers, e.torrent, e.addr)
                .unwrap_or_else(|| panic!("{} of torrent {} not resumed", e.addr, e.torrent));
            assert_eq!(
                (p.flags, p.progress, p.next_visit, p.addr()),
                (e.flags, progress_fixed(e.progress), e.next_visit, e.addr),
                "{} of torrent {}",
                e.addr,
                e.torrent
            );
        }
        // Every worker got its share (peers are routed by their owner, not all to one).
        let shares: Vec<usize> = drivers.iter().map(|d| d.table().len()).collect();
        assert!(
            shares.iter().all(|&n| n > f.expected.len() / 3 / 2),
            "{shares:?}"
        );
        drop(drivers);
        f.writer.finish().unwrap();
    }

    #[test]
    fn peers_beyond_max_peers_are_left_out_and_counted() {
        let f = fixture(IpMode::Full);
        let mut drivers = drivers(&f, 2, 1000);
        let resumed = resume_peers(
            &f.path,
            &f.catalog,
            &mut drivers,
            THRESHOLD,
            f.epoch_unix_ms,
        )
        .unwrap();
        assert_eq!(known(&drivers), 2000, "each table full at its bound");
        assert_eq!(resumed.peers, 2000);
        assert_eq!(
            resumed.over_max_peers,
            f.expected.len() as u64 - 2000,
            "every other row is counted"
        );
        let full: u64 = drivers
            .iter()
            .map(|d| d.counters.table_full.load(Ordering::Relaxed))
            .sum();
        assert_eq!(full, resumed.over_max_peers, "and shown as peer_table_full");
        // The rows came in row order: the first rows are the ones kept.
        assert!(entry(&drivers, 0, f.expected[0].addr).is_some());
        drop(drivers);
        f.writer.finish().unwrap();
    }

    #[test]
    fn an_anonymised_database_resumes_no_address() {
        let f = fixture(IpMode::Hmac);
        let mut drivers = drivers(&f, 2, 1_000_000);
        let resumed = resume_peers(
            &f.path,
            &f.catalog,
            &mut drivers,
            THRESHOLD,
            f.epoch_unix_ms,
        )
        .unwrap();
        assert_eq!(resumed, Resumed::default());
        assert_eq!(known(&drivers), 0);
        assert!(f.rows > 0);
        drop(drivers);
        f.writer.finish().unwrap();
    }

    #[test]
    fn a_row_that_cannot_be_read_is_an_error_naming_the_database() {
        let f = fixture(IpMode::Full);
        // Another connection, as a hand edit would: a port that is no number.
        let edit = rusqlite::Connection::open(&f.path).unwrap();
        edit.busy_timeout(Duration::from_secs(5)).unwrap();
        edit.execute(
            "UPDATE peers SET port = 'eighty' WHERE id = (SELECT max(id) FROM peers)",
            [],
        )
        .unwrap();
        drop(edit);
        let mut drivers = drivers(&f, 2, 1_000_000);
        let e = resume_peers(
            &f.path,
            &f.catalog,
            &mut drivers,
            THRESHOLD,
            f.epoch_unix_ms,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(&f.path.display().to_string()) && e.contains("port"),
            "{e}"
        );
        drop(drivers);
        f.writer.finish().unwrap();
    }
}
