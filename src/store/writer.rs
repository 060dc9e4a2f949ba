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
//!
//! A record is never dropped because a commit failed. Every record stays in the writer's
//! spool until the transaction holding it commits; when the database refuses (disk full, I/O
//! error, locked), the transaction is rolled back and the whole spool is applied again, in
//! arrival order, at the next attempt (back-off from 100 ms doubling to 2 s). So torrent and
//! peer rows are always written before the rows that refer to them, in the same transaction,
//! and a retried batch keeps them. While commits fail the spool takes up to
//! `max(channel_capacity, batch_rows)` records; past that the thread stops taking records,
//! the channel fills, records wait in the producers' overflow queues, and the workers start no
//! new probe (see `ScanDriver::next_probe`) until the writer catches up. When the database has
//! refused every commit for `unwritable` (`store.unwritable_secs`), the writer gives up: it
//! logs why, sets [`WriterMetrics::failure`] (the scan, or the sink, watches it and stops),
//! counts what it held as lost, and [`Writer::finish`] returns [`StoreError::Unwritable`]
//! (non-zero exit).
//!
//! The database's path is checked after every commit and at least every
//! [`PLACE_CHECK_EVERY`] (see [`super::place`]): when it no longer names the file the writer
//! has open (removed, replaced by another file, renamed, its `-wal` removed), the writer logs
//! what happened and sets [`WriterMetrics::failure`] (the scan or sink stops), goes on
//! committing into its own file until the stop, and then saves that file where the user will
//! find it: put back at the path when removed, next to the other file when replaced (never
//! into it), left at its new name when renamed. [`Writer::finish`] returns
//! [`StoreError::Moved`] saying where everything is and how many records were not stored.
//!
//! Counts (`committed`, [`WriterCounts`], the `runs.records` column) are what committed
//! transactions hold, never what was sent. A torrent registration commits what is pending and
//! then the torrent row in a transaction of its own before answering.
//!
//! A crash (`kill -9`) loses at most what was not committed yet: the open batch (at most
//! `batch_rows` records or `batch_ms` of them) plus what waited in the channel, which the
//! thread drains continuously. WAL mode keeps the database intact.

use super::anon::Anonymizer;
use super::confirmation::{apply_contact, Contact, ProgressState};
use super::geo::{GeoDb, GeoPaths};
use super::host_domain::{HostLookups, LOOKED_UP};
use super::record::*;
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
    /// Give up (and stop the scan) when the database has refused every commit for this long.
    pub unwritable: Duration,
    /// GeoIP and ASN databases (`geo.*`) peers are looked up in when first stored.
    pub geo: GeoPaths,
    /// Ask worker 0 for the host domain of peers not in the `host_domains` cache
    /// (`geo.reverse_dns`; see [`super::host_domain`]).
    pub reverse_dns: bool,
}

#[cfg(test)]
impl WriterOptions {
    /// Every record committed within 10 ms, for tests that read back what they sent.
    pub(crate) fn immediate() -> WriterOptions {
        WriterOptions {
            batch_rows: 1,
            batch_ms: 10,
            channel_capacity: 1024,
            threshold: 0.98,
            unwritable: Duration::from_secs(60),
            geo: Default::default(),
            reverse_dns: false,
        }
    }
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

/// Commit latency bounds of [`WriterMetrics::commit_seconds`], seconds.
pub const COMMIT_SECONDS_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Batch size bounds of [`WriterMetrics::batch_records`], records.
pub const BATCH_RECORDS_BOUNDS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 50000.0,
];
/// The writer checks at least this often (and after every commit) that the database path
/// still names the file it writes.
pub const PLACE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// The writer thread wakes at least this often when idle, so its heartbeat
/// ([`WriterMetrics::loops`]) moves while it is healthy (the systemd watchdog reads it).
pub const IDLE_BEAT: Duration = Duration::from_millis(250);

/// A histogram of commit latencies (the default for [`WriterMetrics::commit_seconds`]).
#[derive(Debug)]
pub struct CommitSeconds(pub crate::metrics::AtomicHistogram);

impl Default for CommitSeconds {
    fn default() -> Self {
        CommitSeconds(crate::metrics::AtomicHistogram::new(COMMIT_SECONDS_BOUNDS))
    }
}

/// A histogram of batch sizes (the default for [`WriterMetrics::batch_records`]).
#[derive(Debug)]
pub struct BatchRecords(pub crate::metrics::AtomicHistogram);

impl Default for BatchRecords {
    fn default() -> Self {
        BatchRecords(crate::metrics::AtomicHistogram::new(BATCH_RECORDS_BOUNDS))
    }
}

/// Counters shared between producers, the writer thread and the stats thread.
#[derive(Debug, Default)]
pub struct WriterMetrics {
    /// Iterations of the writer thread's loop: its heartbeat (a stuck writer stops it).
    pub loops: AtomicU64,
    /// Messages waiting in the channel, as the writer or a producer last saw it (producers
    /// update it too, so a writer stuck in a commit does not freeze the gauge at its last value).
    pub queued: AtomicU64,
    /// How long each successful commit attempt took (records applied, aggregates, COMMIT).
    pub commit_seconds: CommitSeconds,
    /// Records per committed transaction.
    pub batch_records: BatchRecords,
    /// What the records handed to the writer say (outcomes, discovery, clients), for the
    /// metrics endpoint; each record counted once, however often a failing commit is retried.
    pub tally: crate::metrics::RecordTally,
    /// Records that found the channel full and waited in a producer's overflow queue.
    pub backpressure: AtomicU64,
    /// Records currently held in producers' overflow queues.
    pub overflow: AtomicI64,
    /// Records committed.
    pub committed: AtomicU64,
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Records not stored: the writer was gone (only after [`Writer::finish`] or a crash), or
    /// it gave up on a database that stayed unwritable past `store.unwritable_secs`.
    pub lost: AtomicU64,
    /// Commit attempts the database refused (disk full, I/O error, locked); each is retried.
    pub failed_commits: AtomicU64,
    /// Records held in the writer's spool while the database refuses commits.
    pub spooled: AtomicU64,
    /// Set when the writer gave up, or when the database path stopped naming the database it
    /// writes: why. The scan (or sink) stops and exits non-zero.
    pub failure: std::sync::Mutex<Option<String>>,
    /// Fault injection for tests: while set, every commit attempt fails as if the disk were
    /// full (the open transaction is rolled back and the spool kept, as for a real failure).
    #[doc(hidden)]
    pub inject_disk_full: std::sync::atomic::AtomicBool,
}

impl WriterMetrics {
    /// Why the writer gave up, once it has (the database stayed unwritable too long), or
    /// why it wants the scan stopped (the database path no longer names its file).
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
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
    /// Flows recorded by `swarmscan sink`.
    pub sink_flows: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Records that failed to apply for a reason of their own (a constraint; logged). Errors of
    /// the database itself (disk full, I/O) are retried, not counted here.
    pub errors: u64,
    /// Producer back-pressure events (channel full).
    pub backpressure: u64,
}

/// How the writer thread ended.
struct ThreadEnd {
    counts: WriterCounts,
    /// The connection to close; None when it was closed after the database moved.
    conn: Option<Connection>,
    /// The database moved: what happened, and where its content is now (or why it could not
    /// be saved).
    moved: Option<(String, Result<String, String>)>,
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
    thread: Option<JoinHandle<Result<ThreadEnd, StoreError>>>,
    metrics: Arc<WriterMetrics>,
    /// Addresses to look up in reverse DNS, for worker 0 (`reverse_dns` on).
    host_lookups: Option<crossbeam_channel::Receiver<std::net::IpAddr>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl Writer {
    /// Starts the writer thread on `store` after checking the database's privacy settings and
    /// opening the `geo.*` databases (an error names the key and the file).
    pub fn start(
        store: Store,
        anonymizer: Anonymizer,
        options: WriterOptions,
    ) -> Result<Writer, StoreError> {
        store.check_privacy(&anonymizer)?;
        let geo = GeoDb::open(&options.geo)?;
        // The databases in use, for reports (a later run with other files replaces them).
        for (key, source) in geo.sources() {
            store
                .conn
                .execute(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![key, serde_json::to_string(&source).unwrap_or_default()],
                )
                .map_err(|e| store.err(e))?;
        }
        // A bigger page cache than SQLite's 2 MB default: peer lookups hit random index pages.
        store
            .conn
            .pragma_update(None, "cache_size", -65_536)
            .map_err(|e| store.err(e))?;
        let (tx, rx) = bounded(options.channel_capacity.max(1));
        let metrics = Arc::new(WriterMetrics::default());
        let thread_metrics = metrics.clone();
        let (lookups, host_lookups) = match options.reverse_dns {
            true => {
                let (l, rx) = HostLookups::new(crate::inputs::now_unix_ms());
                (Some(l), Some(rx))
            }
            false => (None, None),
        };
        let thread = std::thread::Builder::new()
            .name("swarmscan-writer".into())
            .spawn(move || {
                let mut state = WriterThread::new(store, anonymizer, geo, options, thread_metrics)?;
                state.host_lookups = lookups;
                state.run(rx);
                let counts = state.counts.clone();
                let committed = state.run_records;
                match state.moved.take() {
                    None => Ok(ThreadEnd {
                        counts,
                        conn: Some(state.store.conn),
                        moved: None,
                    }),
                    Some(why) => {
                        let saved = state.store.close_moved().map_err(|e| {
                            format!(
                                "{e}: what it held ends with this process ({committed} records \
                                 of this run among them)"
                            )
                        });
                        if let Err(e) = &saved {
                            state
                                .metrics
                                .lost
                                .fetch_add(committed.max(0) as u64, Ordering::Relaxed);
                            tracing::error!("writer: {why}; {e}");
                        }
                        Ok(ThreadEnd {
                            counts,
                            conn: None,
                            moved: Some((why, saved)),
                        })
                    }
                }
            })
            .map_err(StoreError::Io)?;
        Ok(Writer {
            tx,
            thread: Some(thread),
            metrics,
            host_lookups,
        })
    }

    /// The addresses to look up in reverse DNS (once; `None` when `reverse_dns` is off).
    pub fn take_host_lookups(&mut self) -> Option<crossbeam_channel::Receiver<std::net::IpAddr>> {
        self.host_lookups.take()
    }

    /// Opens `database`, loads the anonymiser key from `key_file` (`privacy.ip` = `mode`),
    /// starts the writer.
    pub fn start_with(
        database: &std::path::Path,
        mode: super::anon::IpMode,
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
        let end = thread.join().map_err(|p| {
            let message = crate::threads::panic_message(&*p);
            StoreError::Io(std::io::Error::other(format!(
                "thread 'swarmscan-writer' panicked: {message}"
            )))
        })??;
        let mut counts = end.counts;
        let lost = self.metrics.lost.load(Ordering::Relaxed);
        if let Some((why, saved)) = end.moved {
            let saved = saved.unwrap_or_else(|e| e);
            return Err(StoreError::Moved(format!(
                "{why}; {saved}; {lost} records not stored"
            )));
        }
        let Some(conn) = end.conn else {
            return Err(StoreError::Io(std::io::Error::other(
                "the writer closed the database early",
            )));
        };
        if let Some(why) = self.metrics.failure() {
            let _ = conn.close();
            return Err(StoreError::Unwritable(format!(
                "{why}; {lost} records not stored"
            )));
        }
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
            Ok(()) => {
                self.metrics
                    .queued
                    .store(self.tx.len() as u64, Ordering::Relaxed);
            }
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

/// What applying the records of the open batch did; added to the totals only when the batch
/// commits, and rebuilt from the spool when a failed batch is tried again.
#[derive(Default)]
struct BatchSums {
    counts: WriterCounts,
    /// Outcome counts of the open batch: (torrent, event, class) → count.
    outcome_counts: HashMap<(TorrentId, ProbeEvent, String), OutcomeSums>,
    /// Gap histogram of the open batch: bucket → count.
    gaps: HashMap<i64, i64>,
    /// Earliest and latest activity of the batch's records.
    window: Option<(UnixMs, UnixMs)>,
    /// New peers and confirmed downloads by country (for the metrics, after the commit).
    countries: HashMap<Option<String>, (u64, u64)>,
}

/// The database has refused commits since `since`.
struct Failing {
    since: Instant,
    retry_at: Instant,
    backoff: Duration,
    last_error: String,
    attempts: u64,
}

/// First and longest wait between two attempts to commit a failed batch.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

struct WriterThread {
    store: Store,
    anonymizer: Anonymizer,
    /// Looks new peers up (with the real address, before anonymisation).
    geo: GeoDb,
    /// Reverse DNS requests and answers (`reverse_dns` on).
    host_lookups: Option<HostLookups>,
    options: WriterOptions,
    metrics: Arc<WriterMetrics>,
    /// What committed transactions did.
    counts: WriterCounts,
    in_transaction: bool,
    /// Every record not committed yet, in arrival order: the open batch, and while the
    /// database refuses commits, every record since the first failed one (the spool).
    spool: Vec<Record>,
    /// Records of `spool` already applied to the open transaction.
    applied: usize,
    /// What applying them did.
    sums: BatchSums,
    /// The spool's bound while commits fail; past it the thread stops taking records.
    spool_cap: usize,
    failing: Option<Failing>,
    /// Why the writer gave up (the database stayed unwritable past `options.unwritable`).
    gave_up: Option<String>,
    /// The database path stopped naming our file: what happened (the file is saved at the end).
    moved: Option<String>,
    last_place_check: Instant,
    run_id: i64,
    /// Committed activity window and record count of this run (the `runs` row).
    run_window: Option<(UnixMs, UnixMs)>,
    run_records: i64,
}

/// True for errors that say nothing about the record itself (disk full, I/O, locks, memory):
/// the batch is kept and tried again. Constraint and type errors are the record's own.
fn is_transient(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    match e {
        rusqlite::Error::SqliteFailure(f, _) => !matches!(
            f.code,
            C::ConstraintViolation | C::TypeMismatch | C::TooBig | C::ParameterOutOfRange
        ),
        _ => false,
    }
}

impl WriterCounts {
    fn add(&mut self, o: &WriterCounts) {
        self.records += o.records;
        self.torrents += o.torrents;
        self.discoveries += o.discoveries;
        self.addresses += o.addresses;
        self.new_peers += o.new_peers;
        self.outcomes += o.outcomes;
        self.scrapes += o.scrapes;
        self.stats += o.stats;
        self.sink_flows += o.sink_flows;
        self.batches += o.batches;
        self.errors += o.errors;
    }
}

fn merge_window(
    a: Option<(UnixMs, UnixMs)>,
    b: Option<(UnixMs, UnixMs)>,
) -> Option<(UnixMs, UnixMs)> {
    match (a, b) {
        (Some((l1, h1)), Some((l2, h2))) => Some((l1.min(l2), h1.max(h2))),
        (x, None) | (None, x) => x,
    }
}

impl WriterThread {
    fn new(
        store: Store,
        anonymizer: Anonymizer,
        geo: GeoDb,
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
        let spool_cap = options.channel_capacity.max(options.batch_rows).max(1);
        Ok(WriterThread {
            store,
            anonymizer,
            geo,
            host_lookups: None,
            options,
            metrics,
            counts: WriterCounts::default(),
            in_transaction: false,
            spool: Vec::new(),
            applied: 0,
            sums: BatchSums::default(),
            spool_cap,
            failing: None,
            gave_up: None,
            moved: None,
            last_place_check: Instant::now(),
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
            if self.last_place_check.elapsed() >= PLACE_CHECK_EVERY {
                self.check_place();
            }
            if self.gave_up.is_some() {
                self.discard_until_shutdown(&rx);
                return;
            }
            // While commits fail, the next attempt is due at `retry_at`; the spool takes
            // records up to its bound, then the channel fills and producers hold back.
            let deadline = match &self.failing {
                Some(f) => Some(f.retry_at),
                None => batch_started.map(|s| s + batch_time),
            };
            if self.failing.is_some() && self.spool.len() >= self.spool_cap {
                if let Some(d) = deadline {
                    std::thread::sleep(d.saturating_duration_since(Instant::now()));
                }
                self.commit();
                continue;
            }
            let msg = match deadline {
                Some(d) => match rx.recv_deadline(d) {
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
                    if self.spool.is_empty() {
                        batch_started = None;
                    }
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
                    if batch_started.is_none() {
                        batch_started = Some(Instant::now());
                    }
                    self.handle(m);
                    // Checked here too: under a steady stream `recv_deadline` may never time out.
                    let due = match &self.failing {
                        Some(f) => Instant::now() >= f.retry_at,
                        None => {
                            self.spool.len() >= self.options.batch_rows
                                || batch_started.is_some_and(|s| s.elapsed() >= batch_time)
                        }
                    };
                    if due {
                        self.commit();
                    }
                    if self.spool.is_empty() {
                        batch_started = None;
                    }
                }
            }
        }
        // Shutdown: what is left is committed, retrying until it is or the writer gives up.
        self.commit_blocking();
    }

    /// After giving up: takes every message so no producer blocks, counts records as lost,
    /// answers requests with an error, until the shutdown request.
    fn discard_until_shutdown(&mut self, rx: &Receiver<Msg>) {
        let mut shutdown = false;
        loop {
            let msg = if shutdown {
                match rx.try_recv() {
                    Ok(m) => m,
                    Err(_) => return,
                }
            } else {
                match rx.recv() {
                    Ok(m) => m,
                    Err(_) => return,
                }
            };
            match msg {
                Msg::Record(_) => {
                    self.metrics.lost.fetch_add(1, Ordering::Relaxed);
                }
                Msg::Register(_, reply) => {
                    let _ = reply.send(Err(self.gave_up.clone().unwrap_or_default()));
                }
                Msg::Flush(_) => {} // the reply channel drops: "writer stopped"
                Msg::Shutdown => shutdown = true,
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Record(record) => {
                if self.gave_up.is_some() {
                    self.metrics.lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.metrics.tally.observe(&record);
                self.spool.push(record);
                if self.failing.is_some() {
                    self.metrics.spooled.fetch_add(1, Ordering::Relaxed);
                    return; // applied with the next attempt
                }
                if let Err(e) = self.apply_pending() {
                    self.abort();
                    self.note_failure(&e);
                }
            }
            Msg::Register(torrent, reply) => {
                let _ = reply.send(self.register(&torrent));
            }
            Msg::Flush(reply) => {
                if self.commit_blocking() {
                    let _ = reply.send(());
                }
            }
            Msg::Shutdown => {}
        }
    }

    /// Commits what is pending, then registers the torrent in a transaction of its own (a
    /// torrent row is committed before any record that refers to it), retrying like a batch.
    fn register(&mut self, torrent: &TorrentRecord) -> Result<TorrentId, String> {
        if !self.commit_blocking() {
            return Err(self.gave_up.clone().unwrap_or_default());
        }
        loop {
            let attempt = (|| {
                let conn = &self.store.conn;
                conn.execute_batch("BEGIN IMMEDIATE")?;
                let id = upsert_torrent(conn, torrent)?;
                conn.execute_batch("COMMIT")?;
                Ok(id)
            })();
            match attempt {
                Ok(id) => {
                    self.counts.torrents += 1;
                    self.recovered();
                    return Ok(id);
                }
                Err(e) => {
                    if !self.store.conn.is_autocommit() {
                        let _ = self.store.conn.execute_batch("ROLLBACK");
                    }
                    if !is_transient(&e) {
                        return Err(e.to_string());
                    }
                    self.note_failure(&e);
                    if self.gave_up.is_some() {
                        return Err(self.gave_up.clone().unwrap_or_default());
                    }
                    self.wait_for_retry();
                }
            }
        }
    }

    fn wait_for_retry(&self) {
        if let Some(f) = &self.failing {
            std::thread::sleep(f.retry_at.saturating_duration_since(Instant::now()));
        }
    }

    /// Commits until the spool is empty (true) or the writer gives up (false).
    fn commit_blocking(&mut self) -> bool {
        loop {
            if self.gave_up.is_some() {
                return false;
            }
            if self.spool.is_empty() && !self.in_transaction {
                return true;
            }
            self.commit();
            if self.failing.is_none() {
                return true;
            }
            if self.gave_up.is_some() {
                return false;
            }
            self.wait_for_retry();
        }
    }

    /// Applies the spooled records not yet in the open transaction. A transient error ends
    /// the attempt (the caller rolls back and keeps the spool); a record's own error (a
    /// constraint) is logged and counted, and the record is skipped.
    fn apply_pending(&mut self) -> rusqlite::Result<()> {
        if !self.in_transaction {
            self.store.conn.execute_batch("BEGIN")?;
            self.in_transaction = true;
        }
        let spool = std::mem::take(&mut self.spool);
        let mut result = Ok(());
        while self.applied < spool.len() {
            let record = &spool[self.applied];
            match self.apply(record) {
                Ok(()) => {
                    self.sums.counts.records += 1;
                    if let Some(at) = record.activity_at() {
                        self.sums.window = merge_window(self.sums.window, Some((at, at)));
                    }
                }
                Err(e) if is_transient(&e) => {
                    result = Err(e);
                    break;
                }
                Err(e) => {
                    if self.store.conn.is_autocommit() {
                        // SQLite ended the transaction itself: nothing of the batch is left.
                        result = Err(e);
                        break;
                    }
                    self.sums.counts.errors += 1;
                    tracing::error!(database = %self.store.path.display(), "writer: a record was not stored: {e}");
                }
            }
            self.applied += 1;
        }
        self.spool = spool;
        result
    }

    /// Rolls the open transaction back; the spool is applied again from its start next time.
    fn abort(&mut self) {
        if self.in_transaction && !self.store.conn.is_autocommit() {
            let _ = self.store.conn.execute_batch("ROLLBACK");
        }
        self.in_transaction = false;
        self.applied = 0;
        self.sums = BatchSums::default();
    }

    /// A commit failed: back off, and give up when the database has refused commits for
    /// longer than `options.unwritable`.
    fn note_failure(&mut self, e: &rusqlite::Error) {
        let now = Instant::now();
        self.metrics.failed_commits.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .spooled
            .store(self.spool.len() as u64, Ordering::Relaxed);
        let f = self.failing.get_or_insert_with(|| {
            tracing::warn!(
                database = %self.store.path.display(),
                "writer: the database refused a commit ({e}); holding {} records and retrying \
                 (giving up after store.unwritable_secs = {:.0})",
                self.spool.len(),
                self.options.unwritable.as_secs_f64()
            );
            Failing {
                since: now,
                retry_at: now,
                backoff: RETRY_FIRST / 2,
                last_error: String::new(),
                attempts: 0,
            }
        });
        f.backoff = (f.backoff * 2).min(RETRY_MAX);
        f.retry_at = now + f.backoff;
        f.last_error = e.to_string();
        f.attempts += 1;
        let since = f.since;
        if now.duration_since(since) >= self.options.unwritable {
            let lost = self.spool.len() as u64;
            let why = format!(
                "the database {} stayed unwritable for {:.0} s (store.unwritable_secs = {}): {}",
                self.store.path.display(),
                now.duration_since(since).as_secs_f64(),
                self.options.unwritable.as_secs_f64(),
                f.last_error,
            );
            tracing::error!("writer: {why}; the {lost} records held are not stored");
            self.metrics.lost.fetch_add(lost, Ordering::Relaxed);
            self.metrics.spooled.store(0, Ordering::Relaxed);
            self.spool.clear();
            if let Ok(mut slot) = self.metrics.failure.lock() {
                *slot = Some(why.clone());
            }
            self.gave_up = Some(why);
        }
    }

    /// Notices a database path that no longer names our file (see [`super::place`]): logs it
    /// once and asks for the stop. Commits go on into our own file, which is saved at the end.
    fn check_place(&mut self) {
        self.last_place_check = Instant::now();
        if self.moved.is_some() {
            return;
        }
        let Some(moved) = self.store.check_place() else {
            return;
        };
        let why = moved.describe(&self.store.path);
        tracing::error!("writer: {why}; stopping, then saving what it holds where it can be found");
        if let Ok(mut slot) = self.metrics.failure.lock() {
            slot.get_or_insert_with(|| why.clone());
        }
        self.moved = Some(why);
    }

    /// A commit went through after failures.
    fn recovered(&mut self) {
        if let Some(f) = self.failing.take() {
            tracing::warn!(
                database = %self.store.path.display(),
                "writer: the database is writable again after {:.1} s and {} failed attempts",
                f.since.elapsed().as_secs_f64(),
                f.attempts
            );
            self.metrics.spooled.store(0, Ordering::Relaxed);
        }
    }

    fn apply(&mut self, record: &Record) -> rusqlite::Result<()> {
        match record {
            Record::Torrent(t) => {
                upsert_torrent(&self.store.conn, t)?;
                self.sums.counts.torrents += 1;
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
                self.sums.counts.scrapes += 1;
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
            Record::DhtLookup(l) => {
                self.store
                    .conn
                    .prepare_cached(
                        "INSERT INTO dht_lookups (at, torrent_id, duration_ms, queried, replies, timeouts, peers,
                            scrape, seeds_estimate, peers_estimate)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    )?
                    .execute(params![
                        l.at,
                        l.torrent_id,
                        l.duration_ms,
                        l.queried,
                        l.replies,
                        l.timeouts,
                        l.peers,
                        l.scrape,
                        l.seeds_estimate,
                        l.peers_estimate
                    ])?;
            }
            Record::DhtNodes(nodes) => {
                // Each worker sends its own nodes: upserted; nodes not seen for a day, and
                // all but the 1024 most recently seen, are dropped.
                let conn = &self.store.conn;
                for n in nodes {
                    conn.prepare_cached(
                        "INSERT OR REPLACE INTO dht_nodes (ip, port, node_id, seen_at) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![n.addr.ip().to_string(), n.addr.port(), &n.id[..], n.seen_at])?;
                }
                conn.execute(
                    "DELETE FROM dht_nodes WHERE seen_at < (SELECT max(seen_at) FROM dht_nodes) - 86400000
                        OR (ip, port) NOT IN (SELECT ip, port FROM dht_nodes ORDER BY seen_at DESC LIMIT 1024)",
                    [],
                )?;
            }
            Record::DhtNodeIds(ids) => {
                for n in ids {
                    self.store
                        .conn
                        .prepare_cached(
                            "INSERT OR REPLACE INTO dht_node_ids (node, node_id, external_ip, updated_at)
                                VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![
                            n.node,
                            &n.id[..],
                            n.external_ip.map(|ip| ip.to_string()),
                            n.updated_at
                        ])?;
                }
            }
            Record::UnmatchedIncoming { error, .. } => {
                self.sums
                    .outcome_counts
                    .entry((0, ProbeEvent::Incoming, error.name()))
                    .or_default()
                    .count += 1;
                self.sums.counts.outcomes += 1;
            }
            Record::SinkFlow(f) => self.apply_sink_flow(f)?,
            Record::HostDomain(h) => {
                if let Some(lookups) = &mut self.host_lookups {
                    let key = self.anonymizer.anonymize(h.ip).key;
                    lookups.store_answer(&self.store.conn, &key, h)?;
                }
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
                self.sums.counts.stats += 1;
            }
        }
        Ok(())
    }

    /// One `sink_flows` row: the source anonymised, described from the real address.
    fn apply_sink_flow(&mut self, f: &SinkFlowRecord) -> rusqlite::Result<()> {
        let ip = self.anonymizer.anonymize(f.source.ip());
        let info = if self.geo.is_on() {
            self.geo.lookup(f.source.ip())
        } else {
            Default::default()
        };
        self.store
            .conn
            .prepare_cached(
                "INSERT INTO sink_flows (transport, protocol, src_ip_key, src_ip, src_port, ipv6,
                    dst_ip, dst_port, first_at, last_at, bytes, packets, ending, details,
                    country, continent, time_zone, longitude, asn, as_org)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                    ?17, ?18, ?19, ?20)",
            )?
            .execute(params![
                f.transport,
                f.protocol,
                ip.key,
                ip.shown,
                f.source.port(),
                is_ipv6(&f.source),
                super::anon::canonical_ip(f.destination.ip()).to_string(),
                f.destination.port(),
                f.first_at,
                f.last_at,
                f.bytes as i64,
                f.packets as i64,
                f.ending,
                f.details,
                info.country,
                info.continent,
                info.time_zone,
                info.longitude,
                info.asn,
                info.as_org,
            ])?;
        self.sums.counts.sink_flows += 1;
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
                let id = conn.last_insert_rowid();
                let country = match self.geo.is_on() {
                    true => store_geo(conn, &mut self.geo, id, addr.ip())?,
                    false => None,
                };
                self.sums.countries.entry(country).or_default().0 += 1;
                if let Some(lookups) = &mut self.host_lookups {
                    lookups.fill_or_request(conn, id, &ip.key, addr.ip())?;
                }
            } else {
                conn.prepare_cached(
                    "UPDATE peers SET sources = sources | ?4
                     WHERE torrent_id = ?1 AND ip_key = ?2 AND port = ?3 AND sources & ?4 = 0",
                )?
                .execute(params![d.torrent_id, ip.key, addr.port(), bit])?;
                if let Some(lookups) = &mut self.host_lookups {
                    lookups.known_peer(conn, d.torrent_id, &ip.key, addr.port(), addr.ip())?;
                }
            }
        }
        let received = d.peers.len() as i64;
        conn.prepare_cached(
            "INSERT INTO discovery_requests (at, torrent_id, source, tracker, received, new, duplicate, duration_ms, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![d.at, d.torrent_id, bit, d.tracker, received, new, received - new, d.duration_ms, d.error])?;
        self.sums.counts.discoveries += 1;
        self.sums.counts.addresses += received as u64;
        self.sums.counts.new_peers += new as u64;
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
                        below_at, below_progress, above_at, above_progress, crossed_at, confirmed, max_speed,
                        geo_lookup
                 FROM peers WHERE torrent_id = ?1 AND ip_key = ?2 AND port = ?3",
            )?
            .query_row(params![o.torrent_id, ip.key, o.addr.port()], |r| {
                Ok((
                    (r.get::<_, i64>(0)?, (r.get::<_, i64>(13)? & 0xff) as u8),
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
        let new_row = row.is_none();
        let ((id, consulted), state) = match row {
            Some(found) => found,
            None => {
                conn.prepare_cached(
                    "INSERT INTO peers (torrent_id, ip_key, ip, port, ipv6, sources, first_source, first_seen_at, portless)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8)",
                )?
                .execute(params![o.torrent_id, ip.key, ip.shown, o.addr.port(), is_ipv6(&o.addr), incoming_bit, o.at, o.portless])?;
                self.sums.counts.new_peers += 1;
                ((conn.last_insert_rowid(), 0), ProgressState::default())
            }
        };
        // A new row, or one stored while a database was off: the record has the real address.
        let country = if consulted & self.geo.consults() != self.geo.consults() {
            store_geo(conn, &mut self.geo, id, o.addr.ip())?
        } else {
            None
        };
        if new_row {
            self.sums.countries.entry(country).or_default().0 += 1;
        }
        if let (Some(lookups), 0) = (&mut self.host_lookups, consulted & LOOKED_UP) {
            lookups.fill_or_request(conn, id, &ip.key, o.addr.ip())?;
        }
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
            // Counted unless settling made it the duplicate of another row's download.
            let (country, confirmed): (Option<String>, bool) = conn
                .prepare_cached("SELECT country, confirmed FROM peers WHERE id = ?1")?
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            if confirmed {
                self.sums.countries.entry(country).or_default().1 += 1;
            }
        }
        let sums = self
            .sums
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
            *self.sums.gaps.entry(bucket).or_insert(0) += 1;
        }
        self.sums.counts.outcomes += 1;
        Ok(())
    }

    /// Applies what is pending, writes the batch's aggregates and the run row, and commits.
    /// On failure the transaction is rolled back and the spool kept for the next attempt.
    fn commit(&mut self) {
        if self.gave_up.is_some() || (self.spool.is_empty() && !self.in_transaction) {
            return;
        }
        let started = Instant::now();
        let result = self
            .apply_pending()
            .and_then(|()| {
                if self.metrics.inject_disk_full.load(Ordering::Relaxed) {
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                        Some("injected: database or disk is full".into()),
                    ));
                }
                Ok(())
            })
            .and_then(|()| self.write_aggregates())
            .and_then(|()| self.store.conn.execute_batch("COMMIT"));
        match result {
            Ok(()) => {
                self.in_transaction = false;
                let mut sums = std::mem::take(&mut self.sums);
                sums.counts.batches = 1;
                self.metrics
                    .commit_seconds
                    .0
                    .observe(started.elapsed().as_secs_f64());
                self.metrics
                    .batch_records
                    .0
                    .observe(sums.counts.records as f64);
                self.counts.add(&sums.counts);
                self.metrics.tally.add_countries(&sums.countries);
                self.run_records += sums.counts.records as i64;
                self.run_window = merge_window(self.run_window, sums.window);
                self.metrics.batches.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .committed
                    .fetch_add(sums.counts.records, Ordering::Relaxed);
                self.spool.clear();
                self.applied = 0;
                self.recovered();
                self.check_place();
            }
            Err(e) => {
                self.abort();
                self.note_failure(&e);
            }
        }
    }

    /// Writes the open batch's aggregates and the run row (inside its transaction).
    fn write_aggregates(&mut self) -> rusqlite::Result<()> {
        let conn = &self.store.conn;
        for ((torrent, event, class), sums) in &self.sums.outcome_counts {
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
        for (bucket, count) in &self.sums.gaps {
            conn.prepare_cached(
                "INSERT INTO gap_histogram (bucket_ms, count) VALUES (?1, ?2)
                 ON CONFLICT (bucket_ms) DO UPDATE SET count = count + excluded.count",
            )?
            .execute(params![bucket, count])?;
        }
        let (start, end) = match merge_window(self.run_window, self.sums.window) {
            Some((lo, hi)) => (Some(lo), Some(hi)),
            None => (None, None),
        };
        let records = self.run_records + self.sums.counts.records as i64;
        conn.prepare_cached(
            "UPDATE runs SET started_at = ?2, ended_at = ?3, records = ?4 WHERE id = ?1",
        )?
        .execute(params![self.run_id, start, end, records])?;
        Ok(())
    }
}

/// Looks `ip` up and stores what the databases say on peer row `id`. Fields a database now
/// consulted has no value for are cleared; those of a database not consulted are kept.
/// Returns the country found.
fn store_geo(
    conn: &Connection,
    geo: &mut GeoDb,
    id: i64,
    ip: std::net::IpAddr,
) -> rusqlite::Result<Option<String>> {
    use super::geo::{CONSULTED_ASN, CONSULTED_CITY};
    let info = geo.lookup(ip);
    let city = info.consulted & CONSULTED_CITY != 0;
    let asn = info.consulted & CONSULTED_ASN != 0;
    conn.prepare_cached(
        "UPDATE peers SET
            country = CASE WHEN ?2 THEN ?4 ELSE country END,
            city = CASE WHEN ?2 THEN ?5 ELSE city END,
            continent = CASE WHEN ?2 THEN ?6 ELSE continent END,
            asn = CASE WHEN ?3 THEN ?7 ELSE asn END,
            as_org = CASE WHEN ?3 THEN ?8 ELSE as_org END,
            geo_lookup = geo_lookup | ?9
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        city,
        asn,
        info.country,
        info.city,
        info.continent,
        info.asn,
        info.as_org,
        info.consulted
    ])?;
    Ok(info.country)
}

fn is_ipv6(addr: &std::net::SocketAddr) -> bool {
    matches!(
        super::anon::canonical_ip(addr.ip()),
        std::net::IpAddr::V6(_)
    )
}
