//! The writer thread: the only owner of the SQLite connection while a scan runs.
//!
//! Producers (engine workers, discovery, stats) each hold a [`RecordSender`]. It `try_send`s
//! into a bounded channel; when the channel is full the record goes into the sender's own
//! overflow queue (order kept), a `backpressure` event is counted, and the queue is retried on
//! the producer's next `send` or [`RecordSender::pump`] (call it once per loop tick). So a
//! full channel never blocks a probe loop and never loses a row; the producer sees
//! [`RecordSender::pending`] grow and should delay new connects until it shrinks. Dropping or
//! closing a sender hands its overflow over with blocking sends: nothing is lost on shutdown.
//!
//! The thread commits in batches: after `batch_rows` records or `batch_ms` after the first
//! uncommitted one, whichever comes first, using cached prepared statements in one transaction.
//! [`Writer::finish`] drains the channel, commits, closes the database and returns counts.

use super::anon::Anonymizer;
use super::record::*;
use super::rules::{apply_contact, Contact, ProgressState};
use super::{upsert_torrent, Store, StoreError};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Writer settings.
#[derive(Debug, Clone, PartialEq)]
pub struct WriterOptions {
    /// Commit after this many records...
    pub batch_rows: usize,
    /// ...or this long after the first uncommitted record.
    pub batch_ms: u64,
    /// Channel capacity (records).
    pub channel_capacity: usize,
    /// Completion threshold for the confirmation rule.
    pub threshold: f64,
}

/// How far apart two crossings at one address may be to be one download seen twice.
pub const SAME_CROSSING_MS: i64 = 10_000;

/// A download confirmed on two rows of one address, one of them a portless incoming row (a
/// client that dialled us without naming its listen port: libtorrent on IPv6 before it knows
/// its external address; its peer-id differs per connection, so nothing else links the
/// rows), is counted once, on the row with the listen port. The crossings must lie within
/// [`SAME_CROSSING_MS`]: the same crossing seen on two connections. Two peers behind one
/// address that cross within seconds of each other, one of them portless, would be counted
/// once; that is the rarer error.
fn settle_same_download(
    conn: &rusqlite::Connection,
    torrent_id: i64,
    ip_key: &str,
    id: i64,
    portless: bool,
    crossed_at: i64,
) -> rusqlite::Result<()> {
    if portless {
        let counted: Option<i64> = conn
            .prepare_cached(
                "SELECT id FROM peers
                 WHERE torrent_id = ?1 AND ip_key = ?2 AND id != ?3 AND confirmed AND NOT portless
                   AND abs(crossed_at - ?4) <= ?5
                 ORDER BY abs(crossed_at - ?4) LIMIT 1",
            )?
            .query_row(
                params![torrent_id, ip_key, id, crossed_at, SAME_CROSSING_MS],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(counted) = counted {
            conn.prepare_cached("UPDATE peers SET confirmed = 0, duplicate_of = ?2 WHERE id = ?1")?
                .execute(params![id, counted])?;
        }
    } else {
        conn.prepare_cached(
            "UPDATE peers SET confirmed = 0, duplicate_of = ?3
             WHERE torrent_id = ?1 AND ip_key = ?2 AND portless AND confirmed
               AND abs(crossed_at - ?4) <= ?5",
        )?
        .execute(params![
            torrent_id,
            ip_key,
            id,
            crossed_at,
            SAME_CROSSING_MS
        ])?;
    }
    Ok(())
}

impl WriterOptions {
    /// Settings from `[store]` and `peer.threshold`.
    pub fn from_config(config: &crate::config::Config) -> WriterOptions {
        WriterOptions {
            batch_rows: config.store.batch_rows,
            batch_ms: config.store.batch_ms,
            channel_capacity: config.store.channel_capacity,
            threshold: config.peer.threshold,
        }
    }
}

/// Commit latency bounds of [`WriterMetrics::commit_seconds`], seconds.
pub const COMMIT_SECONDS_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Batch size bounds of [`WriterMetrics::batch_records`], records.
pub const BATCH_RECORDS_BOUNDS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 50000.0,
];
/// The writer thread wakes at least this often when idle, so its heartbeat
/// ([`WriterMetrics::loops`]) moves while it is healthy (the systemd watchdog reads it).
pub const IDLE_BEAT: Duration = Duration::from_millis(250);

/// Counters shared between producers, the writer thread and the stats thread.
#[derive(Debug)]
pub struct WriterMetrics {
    /// Iterations of the writer thread's loop: its heartbeat (a stuck writer stops it).
    pub loops: AtomicU64,
    /// Messages waiting in the channel, as the writer last saw it.
    pub queued: AtomicU64,
    /// How long each COMMIT took (aggregates included), seconds.
    pub commit_seconds: crate::metrics::AtomicHistogram,
    /// Records per committed transaction.
    pub batch_records: crate::metrics::AtomicHistogram,
    /// What the applied records say (outcomes, discovery, clients), for the metrics endpoint.
    pub tally: crate::metrics::RecordTally,
    /// Records that found the channel full and waited in a producer's overflow queue.
    pub backpressure: AtomicU64,
    /// Records currently held in producers' overflow queues.
    pub overflow: AtomicI64,
    /// Records committed.
    pub committed: AtomicU64,
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Records lost because the writer was gone (only after [`Writer::finish`] or a crash).
    pub lost: AtomicU64,
}

impl Default for WriterMetrics {
    fn default() -> Self {
        WriterMetrics {
            loops: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            commit_seconds: crate::metrics::AtomicHistogram::new(COMMIT_SECONDS_BOUNDS),
            batch_records: crate::metrics::AtomicHistogram::new(BATCH_RECORDS_BOUNDS),
            tally: crate::metrics::RecordTally::default(),
            backpressure: AtomicU64::new(0),
            overflow: AtomicI64::new(0),
            committed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }
}

/// What the writer did, returned by [`Writer::finish`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WriterCounts {
    /// Records applied.
    pub records: u64,
    /// Torrent registrations and updates.
    pub torrents: u64,
    /// Discovery requests.
    pub discoveries: u64,
    /// Addresses received in discovery requests.
    pub addresses: u64,
    /// Peers seen for the first time.
    pub new_peers: u64,
    /// Probe outcomes.
    pub outcomes: u64,
    /// Scrapes.
    pub scrapes: u64,
    /// Statistics rows.
    pub stats: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Records that failed to apply (SQLite errors; logged).
    pub errors: u64,
    /// Producer back-pressure events (channel full).
    pub backpressure: u64,
}

enum Msg {
    Record(Record),
    Register(TorrentRecord, Sender<Result<TorrentId, String>>),
    Flush(Sender<()>),
    Shutdown,
}

/// The running writer thread.
pub struct Writer {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<Result<(WriterCounts, Connection), StoreError>>>,
    metrics: Arc<WriterMetrics>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl Writer {
    /// Starts the writer thread on `store` after checking the database's privacy settings.
    pub fn start(
        store: Store,
        anonymizer: Anonymizer,
        options: WriterOptions,
    ) -> Result<Writer, StoreError> {
        store.check_privacy(&anonymizer)?;
        // A bigger page cache than SQLite's 2 MB default: peer lookups hit random index pages.
        store
            .conn
            .pragma_update(None, "cache_size", -65_536)
            .map_err(|e| store.err(e))?;
        let (tx, rx) = bounded(options.channel_capacity.max(1));
        let metrics = Arc::new(WriterMetrics::default());
        let thread_metrics = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("swarmscan-writer".into())
            .spawn(move || {
                let mut state = WriterThread::new(store, anonymizer, options, thread_metrics)?;
                state.run(rx);
                let counts = state.counts.clone();
                Ok((counts, state.store.conn))
            })
            .map_err(StoreError::Io)?;
        Ok(Writer {
            tx,
            thread: Some(thread),
            metrics,
        })
    }

    /// Opens `config.database`, loads the anonymiser key, starts the writer.
    pub fn start_from_config(config: &crate::config::Config) -> Result<Writer, StoreError> {
        Writer::start_with(
            &config.database,
            config.privacy.ip,
            &config.hmac_key_path(),
            WriterOptions::from_config(config),
        )
    }

    /// Opens `database`, loads the anonymiser key from `key_file` (`privacy.ip` = `mode`),
    /// starts the writer.
    pub fn start_with(
        database: &std::path::Path,
        mode: crate::config::IpMode,
        key_file: &std::path::Path,
        options: WriterOptions,
    ) -> Result<Writer, StoreError> {
        let store = Store::open(database)?;
        let anonymizer = Anonymizer::from_key_file(mode, key_file)?;
        Writer::start(store, anonymizer, options)
    }

    /// A new non-blocking sender for one producer.
    pub fn sender(&self) -> RecordSender {
        RecordSender {
            tx: self.tx.clone(),
            overflow: VecDeque::new(),
            metrics: self.metrics.clone(),
        }
    }

    /// A handle for blocking requests (torrent registration, flush), not for the probe loop.
    pub fn handle(&self) -> WriterHandle {
        WriterHandle {
            tx: self.tx.clone(),
        }
    }

    /// Shared counters.
    pub fn metrics(&self) -> Arc<WriterMetrics> {
        self.metrics.clone()
    }

    /// The writer thread has ended before [`Writer::finish`]: it failed (panicked, or could not
    /// start), and nothing sent from now on reaches the database.
    pub fn ended(&self) -> bool {
        match &self.thread {
            Some(t) => t.is_finished(),
            None => true,
        }
    }

    /// Stops the writer: every record already sent (and every sender's overflow handed over by
    /// dropping or closing it first) is applied and committed, then the database is closed.
    pub fn finish(mut self) -> Result<WriterCounts, StoreError> {
        let _ = self.tx.send(Msg::Shutdown);
        let thread = self.thread.take().expect("finish is called once");
        let (mut counts, conn) = thread.join().map_err(|p| {
            let message = crate::threads::panic_message(&*p);
            StoreError::Io(std::io::Error::other(format!(
                "thread 'swarmscan-writer' panicked: {message}"
            )))
        })??;
        counts.backpressure = self.metrics.backpressure.load(Ordering::Relaxed);
        if let Err((_, e)) = conn.close() {
            tracing::warn!("closing the database: {e}");
        }
        Ok(counts)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.tx.send(Msg::Shutdown);
            let _ = thread.join();
        }
    }
}

/// Blocking requests to the writer (outside the probe loop).
#[derive(Clone, Debug)]
pub struct WriterHandle {
    tx: Sender<Msg>,
}

impl WriterHandle {
    /// Registers or updates a torrent and waits for its id.
    pub fn register_torrent(&self, torrent: TorrentRecord) -> Result<TorrentId, String> {
        let (reply_tx, reply_rx) = bounded(1);
        self.tx
            .send(Msg::Register(torrent, reply_tx))
            .map_err(|_| "writer stopped".to_string())?;
        reply_rx.recv().map_err(|_| "writer stopped".to_string())?
    }

    /// Waits until everything sent before is committed.
    pub fn flush(&self) -> Result<(), String> {
        let (reply_tx, reply_rx) = bounded(1);
        self.tx
            .send(Msg::Flush(reply_tx))
            .map_err(|_| "writer stopped".to_string())?;
        reply_rx.recv().map_err(|_| "writer stopped".to_string())
    }
}

/// A producer's non-blocking sender with its own overflow queue (see the module docs).
#[derive(Debug)]
pub struct RecordSender {
    tx: Sender<Msg>,
    overflow: VecDeque<Record>,
    metrics: Arc<WriterMetrics>,
}

impl Clone for RecordSender {
    /// A new sender to the same writer, with an empty overflow queue.
    fn clone(&self) -> RecordSender {
        RecordSender {
            tx: self.tx.clone(),
            overflow: VecDeque::new(),
            metrics: self.metrics.clone(),
        }
    }
}

impl RecordSender {
    /// Queues a record without blocking. Order is kept: while older records wait in the
    /// overflow queue, new ones go behind them. Every record that has to wait in the overflow
    /// queue counts once in [`WriterMetrics::backpressure`].
    pub fn send(&mut self, record: Record) {
        if !self.overflow.is_empty() && self.pump() > 0 {
            self.metrics.backpressure.fetch_add(1, Ordering::Relaxed);
            self.push_overflow(record);
            return;
        }
        match self.tx.try_send(Msg::Record(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(Msg::Record(r))) => {
                self.metrics.backpressure.fetch_add(1, Ordering::Relaxed);
                self.push_overflow(r);
            }
            Err(_) => {
                self.metrics.lost.fetch_add(1, Ordering::Relaxed);
                tracing::error!("writer stopped; a record was lost");
            }
        }
    }

    fn push_overflow(&mut self, record: Record) {
        self.overflow.push_back(record);
        self.metrics.overflow.fetch_add(1, Ordering::Relaxed);
    }

    /// Moves as much of the overflow queue into the channel as fits, without blocking;
    /// returns how many records still wait. Call once per loop tick.
    pub fn pump(&mut self) -> usize {
        while let Some(record) = self.overflow.pop_front() {
            match self.tx.try_send(Msg::Record(record)) {
                Ok(()) => {
                    self.metrics.overflow.fetch_sub(1, Ordering::Relaxed);
                }
                Err(TrySendError::Full(Msg::Record(r))) => {
                    self.overflow.push_front(r);
                    break;
                }
                Err(_) => {
                    self.metrics.overflow.fetch_sub(1, Ordering::Relaxed);
                    self.metrics.lost.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.overflow.len()
    }

    /// Records waiting in this sender's overflow queue (a back-pressure signal).
    pub fn pending(&self) -> usize {
        self.overflow.len()
    }

    /// Hands the overflow queue over with blocking sends (shutdown path).
    pub fn close(mut self) {
        self.drain_blocking();
    }

    fn drain_blocking(&mut self) {
        while let Some(record) = self.overflow.pop_front() {
            self.metrics.overflow.fetch_sub(1, Ordering::Relaxed);
            if self.tx.send(Msg::Record(record)).is_err() {
                self.metrics.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for RecordSender {
    fn drop(&mut self) {
        self.drain_blocking();
    }
}

/// Sums of one (torrent, event, class) cell of the open batch.
#[derive(Default)]
struct OutcomeSums {
    count: i64,
    duration_ms: i64,
    connects: i64,
    connect_ms: i64,
    messages: i64,
}

/// Width of a longest-gap histogram bucket, ms.
pub(crate) const GAP_BUCKET_MS: i64 = 100;
/// The last bucket holds every gap of at least this many ms.
pub(crate) const GAP_LAST_BUCKET_MS: i64 = 60_000;

struct WriterThread {
    store: Store,
    anonymizer: Anonymizer,
    options: WriterOptions,
    metrics: Arc<WriterMetrics>,
    counts: WriterCounts,
    in_transaction: bool,
    uncommitted: usize,
    /// Outcome counts of the open batch: (torrent, event, class) → count.
    outcome_counts: HashMap<(TorrentId, ProbeEvent, String), OutcomeSums>,
    /// Gap histogram of the open batch: bucket → count.
    gaps: HashMap<i64, i64>,
    run_id: i64,
    run_window: Option<(UnixMs, UnixMs)>,
    run_records: i64,
}

impl WriterThread {
    fn new(
        store: Store,
        anonymizer: Anonymizer,
        options: WriterOptions,
        metrics: Arc<WriterMetrics>,
    ) -> Result<Self, StoreError> {
        store
            .conn
            .execute(
                "INSERT INTO runs (version) VALUES (?1)",
                [env!("CARGO_PKG_VERSION")],
            )
            .map_err(|e| store.err(e))?;
        let run_id = store.conn.last_insert_rowid();
        Ok(WriterThread {
            store,
            anonymizer,
            options,
            metrics,
            counts: WriterCounts::default(),
            in_transaction: false,
            uncommitted: 0,
            outcome_counts: HashMap::new(),
            gaps: HashMap::new(),
            run_id,
            run_window: None,
            run_records: 0,
        })
    }

    fn run(&mut self, rx: Receiver<Msg>) {
        let batch_time = Duration::from_millis(self.options.batch_ms);
        let mut batch_started: Option<Instant> = None;
        loop {
            self.metrics.loops.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .queued
                .store(rx.len() as u64, Ordering::Relaxed);
            crate::threads::debug_stall_point("writer");
            let msg = match batch_started {
                Some(start) => match rx.recv_deadline(start + batch_time) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                // Idle: wake now and then so the heartbeat above keeps moving.
                None => match rx.recv_timeout(IDLE_BEAT) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            match msg {
                None => {
                    self.commit();
                    batch_started = None;
                }
                Some(Msg::Shutdown) => {
                    // Everything queued before and after the shutdown request still goes in.
                    loop {
                        match rx.try_recv() {
                            Ok(Msg::Shutdown) => {}
                            Ok(m) => self.handle(m),
                            Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
                        }
                    }
                    break;
                }
                Some(m) => {
                    let is_flush = matches!(m, Msg::Flush(_));
                    if batch_started.is_none() {
                        batch_started = Some(Instant::now());
                    }
                    self.handle(m);
                    if is_flush || self.uncommitted >= self.options.batch_rows {
                        self.commit();
                        batch_started = None;
                    }
                }
            }
        }
        self.commit();
    }

    fn begin(&mut self) {
        if !self.in_transaction {
            match self.store.conn.execute_batch("BEGIN") {
                Ok(()) => self.in_transaction = true,
                Err(e) => self.fail("BEGIN", &e),
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Record(record) => {
                self.begin();
                self.metrics.tally.observe(&record);
                if let Some(at) = record.activity_at() {
                    self.run_window = Some(match self.run_window {
                        None => (at, at),
                        Some((lo, hi)) => (lo.min(at), hi.max(at)),
                    });
                }
                self.run_records += 1;
                let result = self.apply(&record);
                self.counts.records += 1;
                self.uncommitted += 1;
                if let Err(e) = result {
                    self.fail("applying a record", &e);
                }
            }
            Msg::Register(torrent, reply) => {
                self.begin();
                let result = upsert_torrent(&self.store.conn, &torrent).map_err(|e| e.to_string());
                if result.is_ok() {
                    self.counts.torrents += 1;
                    self.uncommitted += 1;
                }
                let _ = reply.send(result);
            }
            Msg::Flush(reply) => {
                self.commit();
                let _ = reply.send(());
            }
            Msg::Shutdown => {}
        }
    }

    fn fail(&mut self, what: &str, e: &rusqlite::Error) {
        self.counts.errors += 1;
        tracing::error!(database = %self.store.path.display(), "writer: {what}: {e}");
    }

    fn apply(&mut self, record: &Record) -> rusqlite::Result<()> {
        match record {
            Record::Torrent(t) => {
                upsert_torrent(&self.store.conn, t)?;
                self.counts.torrents += 1;
            }
            Record::Discovery(d) => self.apply_discovery(d)?,
            Record::Outcome(o) => self.apply_outcome(o)?,
            Record::Scrape(s) => {
                self.store
                    .conn
                    .prepare_cached(
                        "INSERT INTO scrapes (at, torrent_id, tracker, complete, incomplete, downloaded)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![s.at, s.torrent_id, s.tracker, s.complete, s.incomplete, s.downloaded])?;
                self.counts.scrapes += 1;
            }
            Record::TrackerSchedule(s) => {
                self.store
                    .conn
                    .prepare_cached(
                        "INSERT INTO tracker_state (torrent_id, tracker, updated_at, interval_secs, min_interval_secs,
                            next_secs, decided_by, notes)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT (torrent_id, tracker) DO UPDATE SET updated_at = excluded.updated_at,
                            interval_secs = excluded.interval_secs, min_interval_secs = excluded.min_interval_secs,
                            next_secs = excluded.next_secs, decided_by = excluded.decided_by, notes = excluded.notes",
                    )?
                    .execute(params![
                        s.torrent_id,
                        s.tracker,
                        s.at,
                        s.interval,
                        s.min_interval,
                        s.next_secs,
                        s.decided_by,
                        s.notes
                    ])?;
            }
            Record::UnmatchedIncoming { error, .. } => {
                self.outcome_counts
                    .entry((0, ProbeEvent::Incoming, error.name()))
                    .or_default()
                    .count += 1;
                self.counts.outcomes += 1;
            }
            Record::Stats(s) => {
                crate::threads::debug_panic_point("writer");
                self.store
                    .conn
                    .prepare_cached(
                        "INSERT INTO stats (at, peers_known, in_flight, probes_per_sec, confirmed, due_queue,
                            writer_overflow, writer_backpressure, rss_bytes, cpu_percent)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    )?
                    .execute(params![
                        s.at,
                        s.peers_known,
                        s.in_flight,
                        s.probes_per_sec,
                        s.confirmed,
                        s.due_queue,
                        s.writer_overflow,
                        s.writer_backpressure,
                        s.rss_bytes,
                        s.cpu_percent
                    ])?;
                self.counts.stats += 1;
            }
        }
        Ok(())
    }

    /// Inserts every address that is new to the torrent; counts new and duplicate addresses.
    fn apply_discovery(&mut self, d: &DiscoveryRecord) -> rusqlite::Result<()> {
        let conn = &self.store.conn;
        let bit = d.source.bit();
        let mut new = 0i64;
        for addr in &d.peers {
            let ip = self.anonymizer.anonymize(addr.ip());
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO peers (torrent_id, ip_key, ip, port, ipv6, sources, first_source, first_seen_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)
                     ON CONFLICT (torrent_id, ip_key, port) DO NOTHING",
                )?
                .execute(params![d.torrent_id, ip.key, ip.shown, addr.port(), is_ipv6(addr), bit, d.at])?;
            if inserted == 1 {
                new += 1;
            } else {
                conn.prepare_cached(
                    "UPDATE peers SET sources = sources | ?4
                     WHERE torrent_id = ?1 AND ip_key = ?2 AND port = ?3 AND sources & ?4 = 0",
                )?
                .execute(params![d.torrent_id, ip.key, addr.port(), bit])?;
            }
        }
        let received = d.peers.len() as i64;
        conn.prepare_cached(
            "INSERT INTO discovery_requests (at, torrent_id, source, tracker, received, new, duplicate, duration_ms, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![d.at, d.torrent_id, bit, d.tracker, received, new, received - new, d.duration_ms, d.error])?;
        self.counts.discoveries += 1;
        self.counts.addresses += received as u64;
        self.counts.new_peers += new as u64;
        Ok(())
    }

    /// Updates the peer's row (creating it for an unannounced incoming peer) and the counts.
    fn apply_outcome(&mut self, o: &ProbeOutcome) -> rusqlite::Result<()> {
        let conn = &self.store.conn;
        let ip = self.anonymizer.anonymize(o.addr.ip());
        let incoming_bit =
            if o.event == ProbeEvent::Incoming || o.transport.0 & Transport::INCOMING.0 != 0 {
                PeerSource::Incoming.bit()
            } else {
                0
            };
        let row = conn
            .prepare_cached(
                "SELECT id, first_contact_at, first_progress, last_contact_at, last_progress, last_have,
                        below_at, below_progress, above_at, above_progress, crossed_at, confirmed, max_speed
                 FROM peers WHERE torrent_id = ?1 AND ip_key = ?2 AND port = ?3",
            )?
            .query_row(params![o.torrent_id, ip.key, o.addr.port()], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    ProgressState {
                        first_contact_at: r.get(1)?,
                        first_progress: r.get(2)?,
                        last_contact_at: r.get(3)?,
                        last_progress: r.get(4)?,
                        last_have: r.get(5)?,
                        below_at: r.get(6)?,
                        below_progress: r.get(7)?,
                        above_at: r.get(8)?,
                        above_progress: r.get(9)?,
                        crossed_at: r.get(10)?,
                        confirmed: r.get(11)?,
                        max_speed: r.get(12)?,
                    },
                ))
            })
            .optional()?;
        let (id, state) = match row {
            Some(found) => found,
            None => {
                conn.prepare_cached(
                    "INSERT INTO peers (torrent_id, ip_key, ip, port, ipv6, sources, first_source, first_seen_at, portless)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8)",
                )?
                .execute(params![o.torrent_id, ip.key, ip.shown, o.addr.port(), is_ipv6(&o.addr), incoming_bit, o.at, o.portless])?;
                self.counts.new_peers += 1;
                (conn.last_insert_rowid(), ProgressState::default())
            }
        };
        let (success, class, next) = match o.result {
            ProbeResult::Success(progress) => {
                let next = match progress.fraction() {
                    Some(fraction) => apply_contact(
                        &state,
                        Contact {
                            at: o.at,
                            have: progress.have,
                            progress: fraction,
                        },
                        self.options.threshold,
                    ),
                    None => state,
                };
                (true, SUCCESS_CLASS.to_string(), next)
            }
            ProbeResult::Failed(class) => (false, class.name(), state),
        };
        conn.prepare_cached(
            "UPDATE peers SET
                first_contact_at = ?2, first_progress = ?3, last_contact_at = ?4, last_progress = ?5, last_have = ?6,
                below_at = ?7, below_progress = ?8, above_at = ?9, above_progress = ?10, crossed_at = ?11,
                confirmed = ?12, max_speed = ?13,
                attempts = attempts + 1,
                contacts = contacts + ?14,
                failures = failures + (1 - ?14),
                consecutive_failures = CASE WHEN ?14 THEN 0 ELSE consecutive_failures + 1 END,
                last_attempt_at = ?15,
                client = coalesce(?16, client),
                peer_id = coalesce(?17, peer_id),
                transport = transport | CASE WHEN ?14 THEN ?18 ELSE 0 END,
                last_error = CASE WHEN ?14 THEN last_error ELSE ?19 END,
                next_visit_at = ?20,
                sources = sources | ?21,
                crossing_seen = coalesce(crossing_seen, ?22)
             WHERE id = ?1",
        )?
        .execute(params![
            id,
            next.first_contact_at,
            next.first_progress,
            next.last_contact_at,
            next.last_progress,
            next.last_have,
            next.below_at,
            next.below_progress,
            next.above_at,
            next.above_progress,
            next.crossed_at,
            next.confirmed,
            next.max_speed,
            success,
            o.at,
            o.client,
            o.peer_id.map(|p| crate::proto::hex::encode(&p)),
            i64::from(o.transport.0),
            class,
            o.next_visit_at,
            incoming_bit,
            (next.confirmed && !state.confirmed).then(|| o.event.crossing_seen()),
        ])?;
        if let (true, false, Some(crossed_at)) = (next.confirmed, state.confirmed, next.crossed_at)
        {
            settle_same_download(conn, o.torrent_id, &ip.key, id, o.portless, crossed_at)?;
        }
        let sums = self
            .outcome_counts
            .entry((o.torrent_id, o.event, class))
            .or_default();
        sums.count += 1;
        sums.duration_ms += i64::from(o.duration_ms);
        sums.messages += i64::from(o.messages);
        if let Some(connect_ms) = o.connect_ms {
            sums.connects += 1;
            sums.connect_ms += i64::from(connect_ms);
        }
        if let (true, Some(gap)) = (success, o.longest_gap_ms) {
            let bucket = (i64::from(gap).min(GAP_LAST_BUCKET_MS) / GAP_BUCKET_MS) * GAP_BUCKET_MS;
            *self.gaps.entry(bucket).or_insert(0) += 1;
        }
        self.counts.outcomes += 1;
        Ok(())
    }

    /// Writes the batch's aggregates and the run window, then commits.
    fn commit(&mut self) {
        if !self.in_transaction {
            return;
        }
        let started = Instant::now();
        if let Err(e) = self.write_aggregates() {
            self.fail("writing aggregates", &e);
        }
        match self.store.conn.execute_batch("COMMIT") {
            Ok(()) => {
                self.metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.batch_records.observe(self.uncommitted as f64);
                self.counts.batches += 1;
                self.metrics.batches.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .committed
                    .fetch_add(self.uncommitted as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.fail("COMMIT", &e);
                let _ = self.store.conn.execute_batch("ROLLBACK");
            }
        }
        self.in_transaction = false;
        self.uncommitted = 0;
    }

    fn write_aggregates(&mut self) -> rusqlite::Result<()> {
        let conn = &self.store.conn;
        for ((torrent, event, class), sums) in self.outcome_counts.drain() {
            conn.prepare_cached(
                "INSERT INTO outcome_counts (torrent_id, event, class, count, duration_ms, connects, connect_ms, messages)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (torrent_id, event, class) DO UPDATE SET
                    count = count + excluded.count, duration_ms = duration_ms + excluded.duration_ms,
                    connects = connects + excluded.connects, connect_ms = connect_ms + excluded.connect_ms,
                    messages = messages + excluded.messages",
            )?
            .execute(params![
                torrent,
                event.as_str(),
                class,
                sums.count,
                sums.duration_ms,
                sums.connects,
                sums.connect_ms,
                sums.messages
            ])?;
        }
        for (bucket, count) in self.gaps.drain() {
            conn.prepare_cached(
                "INSERT INTO gap_histogram (bucket_ms, count) VALUES (?1, ?2)
                 ON CONFLICT (bucket_ms) DO UPDATE SET count = count + excluded.count",
            )?
            .execute(params![bucket, count])?;
        }
        let (start, end) = match self.run_window {
            Some((lo, hi)) => (Some(lo), Some(hi)),
            None => (None, None),
        };
        conn.prepare_cached(
            "UPDATE runs SET started_at = ?2, ended_at = ?3, records = ?4 WHERE id = ?1",
        )?
        .execute(params![self.run_id, start, end, self.run_records])?;
        Ok(())
    }
}

fn is_ipv6(addr: &std::net::SocketAddr) -> bool {
    matches!(
        super::anon::canonical_ip(addr.ip()),
        std::net::IpAddr::V6(_)
    )
}
