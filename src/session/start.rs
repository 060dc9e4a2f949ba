//! Step 2: drivers (peers resumed and seeded), discovery, worker threads, metrics, READY.

use std::net::SocketAddr;
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
    ProbeConv, RestoredPeer, ScanDriver, WatchSettings, WorkerCounters, WorkerMsg,
};
use crate::scan::own_addr::OwnAddresses;
use crate::scan::peer_table::{flag, owner_worker};
use crate::scan::revisit::progress_fixed;
use crate::service::notify::Notifier;
use crate::store::record::PeerSource;
use crate::store::writer::Writer;

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
            resume,
            writer,
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
                .with_mse_incoming_per_sec(s.mse_incoming_per_sec)
                .with_ipv6(s.ipv6)
                .with_watch(WatchSettings {
                    budget: engine.worker(i).max_held,
                    ..s.watch
                })
                .with_own_addresses(own.clone())
                .with_peer_ids(peer_ids.clone())
            })
            .collect();

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
            tracing::info!(
                bootstrap = bootstrap.len(),
                remembered = remembered.len(),
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
                            listen_port,
                            writer.sender(),
                            epoch_unix_ms,
                        )
                        .with_own_addresses(own.clone()),
                    )
                })
                .collect();
        }

        // Resume: peers of this database come back with their state and next visit time. In
        // an anonymised database the addresses are not stored; those peers return through
        // discovery.
        let by_db_id: std::collections::HashMap<i64, u32> = catalog
            .iter()
            .enumerate()
            .map(|(i, t)| (t.db_id, i as u32))
            .collect();
        let mut resumed = 0u64;
        for p in resume {
            let (Some(&t), Some(addr)) = (by_db_id.get(&p.torrent_id), p.addr) else {
                continue;
            };
            let mut flags = 0;
            if p.contacted {
                flags |= flag::EVALUATED;
            }
            if p.confirmed {
                flags |= flag::CONFIRMED | flag::SEEN_BELOW | flag::AT_THRESHOLD;
            } else if p.last_progress.is_some_and(|x| x < s.policy.threshold) {
                flags |= flag::SEEN_BELOW;
            }
            let next_visit = p
                .next_visit_at
                .map(|at| ((at - epoch_unix_ms).max(0) / 1000) as u32)
                .or((!p.confirmed).then_some(0));
            drivers[owner_worker(t, addr, workers)].restore(RestoredPeer {
                torrent: t,
                addr,
                sources: PeerSource::Config.mask(),
                progress: progress_fixed(p.last_progress.unwrap_or(0.0)),
                flags,
                last_contact: 0,
                next_visit,
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
