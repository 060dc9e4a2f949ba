//! SQLite store: schema and migrations, the batched writer thread, report queries.
//!
//! * [`Store`] opens (or creates) a database, migrates it to the current schema, registers
//!   torrents, and answers read queries ([`Store::for_each_peer_resume`] for restart resume, the
//!   [`report`] functions, [`Store::for_each_peer`]).
//! * [`Writer`] takes the connection over and runs it on one thread; producers send
//!   [`Record`]s through [`RecordSender`]s (never blocking, never dropping).
//!
//! Times are Unix milliseconds (`INTEGER`). Progress values are fractions 0..=1 (`REAL`).
//! Peer addresses are stored as the configured [`anon::Anonymizer`] says (`privacy.ip`); a
//! database remembers the mode and key fingerprint it was made with and refuses another.
//! Peers are described (country, city, continent, AS) from the `geo.*` databases ([`geo`])
//! with the real address when first stored, before it is anonymised.
//!
//! How a scan uses it:
//!
//! ```no_run
//! use swarmscan::config::Config;
//! use swarmscan::store::*;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::load(None, &["database=scan.sqlite".to_string()])?;
//! let writer = swarmscan::settings::start_writer(&config)?;
//! // Registration waits for the row id (not on the probe loop).
//! let torrent = writer.handle().register_torrent(TorrentRecord {
//!     info_hash_v1: Some([0xab; 20]),
//!     info_hash_v2: None,
//!     name: None,
//!     piece_count: None,
//!     piece_length: None,
//!     total_size: None,
//!     source: TorrentSource::Hash,
//!     added_at: 1_700_000_000_000,
//!     trackers: vec![],
//! })?;
//! // Each worker owns a sender; `send` never blocks, `pump` once per loop tick.
//! let mut records = writer.sender();
//! records.send(ProbeOutcome {
//!     torrent_id: torrent,
//!     addr: "192.0.2.1:6881".parse()?,
//!     event: ProbeEvent::FirstContact,
//!     at: 1_700_000_010_000,
//!     result: ProbeResult::Success(Progress { have: 12, pieces: 100 }),
//!     client: Some("qBittorrent 4.6.0".into()),
//!     peer_id: None,
//!     transport: Transport::TCP,
//!     connect_ms: Some(40),
//!     duration_ms: 900,
//!     longest_gap_ms: Some(120),
//!     messages: 3,
//!     next_visit_at: Some(1_700_000_310_000),
//!     portless: false,
//! }.into());
//! if records.pump() > 0 { /* writer behind: delay new connects */ }
//! // Shutdown: hand over overflow, then drain, commit and close.
//! records.close();
//! let counts = writer.finish()?;
//! println!("{} outcomes stored", counts.outcomes);
//! # Ok(()) }
//! ```

pub mod anon;
pub mod confirmation;
pub mod dht_report;
pub mod export;
pub mod geo;
pub mod host_domain;
pub mod place;
pub mod record;
pub mod report;
pub mod study;
pub mod synth;
pub mod writer;

pub use record::*;
pub use writer::{RecordSender, Writer, WriterCounts, WriterHandle, WriterMetrics, WriterOptions};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Migration steps: `MIGRATIONS[i]` takes a database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // v1: initial schema.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE torrents (
        id           INTEGER PRIMARY KEY,
        info_hash_v1 TEXT UNIQUE,            -- 40 hex digits
        info_hash_v2 TEXT UNIQUE,            -- 64 hex digits
        name         TEXT,
        piece_count  INTEGER,
        piece_length INTEGER,
        total_size   INTEGER,
        source       TEXT NOT NULL,          -- file | magnet | hash
        added_at     INTEGER NOT NULL,
        trackers     TEXT NOT NULL DEFAULT '[]', -- JSON list of tiers, each a list of URLs
        CHECK (info_hash_v1 IS NOT NULL OR info_hash_v2 IS NOT NULL)
    );
    CREATE TABLE peers (
        id                   INTEGER PRIMARY KEY,
        torrent_id           INTEGER NOT NULL REFERENCES torrents(id),
        ip_key               TEXT NOT NULL,  -- identity (address, or keyed hash)
        ip                   TEXT NOT NULL,  -- as shown: address, network or keyed hash
        port                 INTEGER NOT NULL,
        ipv6                 INTEGER NOT NULL,
        peer_id              TEXT,           -- hex
        client               TEXT,
        sources              INTEGER NOT NULL, -- bit mask of PeerSource
        first_source         INTEGER NOT NULL, -- PeerSource bit, 0 = unknown
        first_seen_at        INTEGER NOT NULL,
        first_contact_at     INTEGER,
        first_progress       REAL,
        last_contact_at      INTEGER,
        last_progress        REAL,
        last_have            INTEGER,
        below_at             INTEGER,        -- last contact below the threshold (before crossing)
        below_progress       REAL,
        above_at             INTEGER,        -- first contact at or above the threshold
        above_progress       REAL,
        crossed_at           INTEGER,        -- interpolated crossing time (confirmed peers)
        confirmed            INTEGER NOT NULL DEFAULT 0,
        attempts             INTEGER NOT NULL DEFAULT 0,
        contacts             INTEGER NOT NULL DEFAULT 0,
        failures             INTEGER NOT NULL DEFAULT 0,
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        last_attempt_at      INTEGER,
        max_speed            REAL,           -- pieces per second between two contacts
        transport            INTEGER NOT NULL DEFAULT 0, -- union of Transport flags of successful contacts
        last_error           TEXT,
        next_visit_at        INTEGER,
        UNIQUE (torrent_id, ip_key, port)
    );
    CREATE INDEX peers_by_torrent_confirmed ON peers (torrent_id, confirmed);
    CREATE INDEX peers_by_sources ON peers (sources);
    CREATE TABLE discovery_requests (
        id          INTEGER PRIMARY KEY,
        at          INTEGER NOT NULL,
        torrent_id  INTEGER NOT NULL REFERENCES torrents(id),
        source      INTEGER NOT NULL,        -- PeerSource bit
        tracker     TEXT,
        received    INTEGER NOT NULL,
        new         INTEGER NOT NULL,
        duplicate   INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        error       TEXT
    );
    CREATE INDEX discovery_by_source_time ON discovery_requests (source, at);
    CREATE TABLE scrapes (
        id         INTEGER PRIMARY KEY,
        at         INTEGER NOT NULL,
        torrent_id INTEGER NOT NULL REFERENCES torrents(id),
        tracker    TEXT NOT NULL,
        complete   INTEGER NOT NULL,
        incomplete INTEGER NOT NULL,
        downloaded INTEGER NOT NULL
    );
    CREATE INDEX scrapes_by_torrent_tracker_time ON scrapes (torrent_id, tracker, at);
    CREATE TABLE outcome_counts (
        torrent_id INTEGER NOT NULL,         -- 0 = incoming connection for no torrent we scan
        event      TEXT NOT NULL,            -- first_contact | later_contact | incoming
        class      TEXT NOT NULL,            -- success | ErrorClass name
        count       INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL DEFAULT 0, -- sum over the attempts
        connects    INTEGER NOT NULL DEFAULT 0, -- attempts with a measured connect time
        connect_ms  INTEGER NOT NULL DEFAULT 0, -- sum of those connect times
        messages    INTEGER NOT NULL DEFAULT 0, -- sum of messages received
        PRIMARY KEY (torrent_id, event, class)
    ) WITHOUT ROWID;
    CREATE TABLE gap_histogram (
        bucket_ms INTEGER PRIMARY KEY,       -- longest message gap per contact, 100 ms buckets
        count     INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE stats (
        at                  INTEGER NOT NULL,
        peers_known         INTEGER NOT NULL,
        in_flight           INTEGER NOT NULL,
        probes_per_sec      REAL NOT NULL,
        confirmed           INTEGER NOT NULL,
        due_queue           INTEGER NOT NULL,
        writer_overflow     INTEGER NOT NULL,
        writer_backpressure INTEGER NOT NULL,
        rss_bytes           INTEGER NOT NULL,
        cpu_percent         REAL NOT NULL
    );
    CREATE INDEX stats_by_time ON stats (at);
    CREATE TABLE runs (
        id         INTEGER PRIMARY KEY,
        started_at INTEGER,                  -- earliest activity record of this run
        ended_at   INTEGER,                  -- latest activity record of this run
        version    TEXT NOT NULL,
        records    INTEGER NOT NULL DEFAULT 0
    );
    "#,
    // v2: each tracker's announce schedule (latest per torrent and tracker).
    r#"
    CREATE TABLE tracker_state (
        torrent_id        INTEGER NOT NULL REFERENCES torrents(id),
        tracker           TEXT NOT NULL,
        updated_at        INTEGER NOT NULL,  -- the latest successful announce
        interval_secs     INTEGER,           -- the tracker's `interval` as sent (NULL = not sent)
        min_interval_secs INTEGER,           -- its `min interval` as sent (NULL = not sent)
        next_secs         REAL NOT NULL,     -- the wait used until the next announce
        decided_by        TEXT NOT NULL,     -- ours | interval | min_interval
        notes             TEXT,              -- tracker values capped or ignored
        PRIMARY KEY (torrent_id, tracker)
    ) WITHOUT ROWID;
    "#,
    // v3: how each confirmed crossing was seen.
    r#"
    ALTER TABLE peers ADD COLUMN crossing_seen TEXT; -- live | revisit | incoming (confirmed peers)
    "#,
    // v4: incoming peers that gave no listen port, and the one download two rows can share.
    r#"
    ALTER TABLE peers ADD COLUMN portless INTEGER NOT NULL DEFAULT 0; -- port = an incoming connection's source port
    ALTER TABLE peers ADD COLUMN duplicate_of INTEGER REFERENCES peers(id); -- same download, counted there
    "#,
    // v5: peer descriptions, looked up in geo.city_db / geo.asn_db with the real address when
    // the peer is first stored (before privacy.ip anonymises it); NULL = unknown.
    r#"
    ALTER TABLE peers ADD COLUMN country TEXT;     -- ISO 3166-1 alpha-2 code
    ALTER TABLE peers ADD COLUMN city TEXT;        -- English name
    ALTER TABLE peers ADD COLUMN continent TEXT;   -- two-letter code (EU, NA, ...)
    ALTER TABLE peers ADD COLUMN asn INTEGER;      -- autonomous system number
    ALTER TABLE peers ADD COLUMN as_org TEXT;      -- the autonomous system's organisation
    ALTER TABLE peers ADD COLUMN host_domain TEXT; -- registrable domain of the reverse DNS name (geo.reverse_dns, v8)
    ALTER TABLE peers ADD COLUMN geo_lookup INTEGER NOT NULL DEFAULT 0; -- databases consulted: 1 geo.city_db, 2 geo.asn_db
    "#,
    // v6: torrents taken out of the scan by `swarmscan remove` (rows and peers are kept).
    r#"
    ALTER TABLE torrents ADD COLUMN removed_at INTEGER; -- NULL = scanned; cleared when added again
    "#,
    // v7: torrent labels (the study's torrent sets; reports group by them).
    r#"
    CREATE TABLE torrent_labels (
        torrent_id INTEGER NOT NULL REFERENCES torrents(id),
        label      TEXT NOT NULL,
        PRIMARY KEY (torrent_id, label)
    ) WITHOUT ROWID;
    "#,
    // v8: our DHT nodes: each get_peers lookup (counts, BEP 33 seeds/peers estimates; its peers
    // are a discovery_requests row of source dht), and the good nodes kept for the next run.
    r#"
    CREATE TABLE dht_lookups (
        id             INTEGER PRIMARY KEY,
        at             INTEGER NOT NULL,
        torrent_id     INTEGER NOT NULL REFERENCES torrents(id),
        duration_ms    INTEGER NOT NULL,
        queried        INTEGER NOT NULL,
        replies        INTEGER NOT NULL,
        timeouts       INTEGER NOT NULL,
        peers          INTEGER NOT NULL,
        scrape         INTEGER NOT NULL,     -- 1: a BEP 33 scrape (filters instead of peers)
        seeds_estimate REAL,
        peers_estimate REAL
    );
    CREATE INDEX dht_lookups_by_torrent_time ON dht_lookups (torrent_id, at);
    CREATE TABLE dht_nodes (
        ip      TEXT NOT NULL,
        port    INTEGER NOT NULL,
        node_id BLOB NOT NULL,
        seen_at INTEGER NOT NULL,
        PRIMARY KEY (ip, port)
    ) WITHOUT ROWID;
    "#,
    // v9: `swarmscan bttest client` runs (is BitTorrent blocked or throttled on this path?)
    // and their flows; the server's address is stored as given (it is ours, not a peer).
    r#"
    CREATE TABLE bttest_runs (
        id                    INTEGER PRIMARY KEY,
        test_id               TEXT NOT NULL,    -- 16 hex digits, also in the server's log
        server                TEXT NOT NULL,    -- as given on the command line
        server_addr           TEXT NOT NULL,    -- the address connected to
        bittorrent_port       INTEGER NOT NULL,
        other_port            INTEGER NOT NULL,
        started_at            INTEGER NOT NULL,
        ended_at              INTEGER NOT NULL,
        version               TEXT NOT NULL,
        repeats               INTEGER NOT NULL,
        flow_bytes            INTEGER NOT NULL,
        complete              INTEGER NOT NULL, -- 0: the control connection broke off
        error                 TEXT,             -- why, when not complete
        blocked_protocol      INTEGER NOT NULL,
        blocked_direction     INTEGER NOT NULL,
        blocked_port          INTEGER NOT NULL,
        blocked_any           INTEGER NOT NULL,
        rate_limited_upload   INTEGER NOT NULL,
        rate_limited_download INTEGER NOT NULL,
        rate_limited_port     INTEGER NOT NULL,
        verdict               TEXT NOT NULL     -- the whole verdict as JSON (rates included)
    );
    CREATE TABLE bttest_flows (
        run_id            INTEGER NOT NULL REFERENCES bttest_runs(id),
        idx               INTEGER NOT NULL,     -- position in the schedule
        repeat            INTEGER NOT NULL,
        kind              TEXT NOT NULL,        -- bittorrent | tcp
        direction         TEXT NOT NULL,        -- upload | download (seen from the client)
        port              INTEGER NOT NULL,
        bytes             INTEGER NOT NULL,     -- payload bytes the receiving end got
        duration_ms       REAL NOT NULL,        -- the receiving end's
        rate              REAL,                 -- bytes/s; NULL = did not end cleanly
        failed            INTEGER NOT NULL,     -- reset that neither end caused
        client_outcome    TEXT NOT NULL,
        client_rst_sent   INTEGER NOT NULL,
        client_rst_seen   INTEGER NOT NULL,
        client_detail     TEXT NOT NULL,
        server_outcome    TEXT,                 -- NULL: no report from the server
        server_rst_sent   INTEGER,
        server_rst_seen   INTEGER,
        server_detail     TEXT,
        PRIMARY KEY (run_id, idx)
    ) WITHOUT ROWID;
    "#,
    // v10: flows recorded by `swarmscan sink` (one row per TCP connection or UDP flow).
    r#"
    CREATE TABLE sink_flows (
        id          INTEGER PRIMARY KEY,
        transport   TEXT NOT NULL,           -- tcp | udp
        protocol    TEXT NOT NULL,           -- bittorrent | mse | krpc | utp | udp_tracker | gnutella | edonkey | http | tls | other
        src_ip_key  TEXT NOT NULL,           -- identity (address, or keyed hash), per privacy.ip
        src_ip      TEXT NOT NULL,           -- as shown: address, network or keyed hash
        src_port    INTEGER NOT NULL,
        ipv6        INTEGER NOT NULL,
        dst_ip      TEXT NOT NULL,           -- the sink's address the flow was sent to (original destination)
        dst_port    INTEGER NOT NULL,        -- original destination port (before a REDIRECT)
        first_at    INTEGER NOT NULL,
        last_at     INTEGER NOT NULL,
        bytes       INTEGER NOT NULL,        -- payload bytes received
        packets     INTEGER NOT NULL,        -- datagrams (UDP) or reads (TCP)
        ending      TEXT NOT NULL,           -- idle | closed | reset | evicted | byte_cap | stopped
        details     TEXT,                    -- JSON: info_hash, peer_id, kind, target, host, path, first_bytes ...
        country     TEXT,                    -- from geo.city_db when configured (real address)
        continent   TEXT,
        time_zone   TEXT,                    -- IANA name (location.time_zone)
        longitude   REAL,
        asn         INTEGER,
        as_org      TEXT
    );
    CREATE INDEX sink_flows_by_protocol ON sink_flows (protocol);
    CREATE INDEX sink_flows_by_source ON sink_flows (src_ip_key);
    "#,
    // v11: reverse DNS answers (geo.reverse_dns), by anonymised address, so that a later run
    // does not ask again; peers.host_domain holds the domain, geo_lookup bit 4 says "answered".
    r#"
    CREATE TABLE host_domains (
        ip_key       TEXT PRIMARY KEY,  -- as peers.ip_key (privacy.ip applies)
        domain       TEXT,              -- registrable domain of the PTR name; NULL = none
        result       TEXT NOT NULL,     -- name | no_name (NXDOMAIN, no PTR) | failed (asked again next run)
        looked_up_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // v12: `swarmscan crawl` (BEP 51 sample_infohashes): each info-hash a node reported, by node
    // id (no address is stored), first and last time; one row per crawl run.
    r#"
    CREATE TABLE crawl_sightings (
        info_hash  BLOB NOT NULL,
        node_id    BLOB NOT NULL,
        first_seen INTEGER NOT NULL,
        last_seen  INTEGER NOT NULL,
        PRIMARY KEY (info_hash, node_id)
    ) WITHOUT ROWID;
    CREATE TABLE crawl_runs (
        id          INTEGER PRIMARY KEY,
        started     INTEGER NOT NULL,
        ended       INTEGER NOT NULL,
        queries     INTEGER NOT NULL,
        answers     INTEGER NOT NULL,
        failures    INTEGER NOT NULL,
        sightings   INTEGER NOT NULL,
        nodes_known INTEGER NOT NULL
    );
    "#,
    // v13: each DHT node's id (by node number, 0..dht.node_ids), so a restart keeps the ids
    // other nodes know us by, with the external address a BEP 42 id was derived for (ours,
    // not a peer's: stored as is whatever privacy.ip says; NULL when the id is not derived).
    r#"
    CREATE TABLE dht_node_ids (
        node        INTEGER PRIMARY KEY,
        node_id     BLOB NOT NULL,
        external_ip TEXT,
        updated_at  INTEGER NOT NULL
    );
    "#,
];

/// A store error; messages name the database file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file does not exist (read-only commands do not create one).
    #[error("database {0} does not exist (set `database` in the config or --set database=FILE)")]
    Missing(PathBuf),
    /// The file is not an SQLite database.
    #[error("{0} is not an SQLite database")]
    NotADatabase(PathBuf),
    /// Written by a newer swarmscan.
    #[error("database schema version {found} is newer than this swarmscan ({supported}); upgrade swarmscan")]
    TooNew {
        /// Version in the file.
        found: u32,
        /// Version this build writes.
        supported: u32,
    },
    /// Made with another `privacy.ip` mode or key.
    #[error("database {path} was made with {what} {stored}, the configuration gives {configured}; peers would not match — use another database")]
    PrivacyMismatch {
        /// The database.
        path: PathBuf,
        /// "privacy.ip" or "HMAC key fingerprint".
        what: &'static str,
        /// What the database says.
        stored: String,
        /// What the configuration says.
        configured: String,
    },
    /// A torrent label that cannot be used (see [`check_label`]).
    #[error("{0}")]
    BadLabel(String),
    /// No torrent with this info-hash.
    #[error("no torrent with info-hash {0} in the database")]
    UnknownTorrent(String),
    /// Key file problem.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The database refused every commit for longer than `store.unwritable_secs`.
    #[error("{0}")]
    Unwritable(String),
    /// The database path stopped naming the open database (removed, replaced, renamed, its
    /// log removed): the message says what happened and where the data are now.
    #[error("{0}")]
    Moved(String),
    /// A `geo.*` database cannot be used (the message names the key and the file).
    #[error("{0}")]
    Geo(#[from] geo::GeoError),
    /// SQLite said no.
    #[error("database {path}: {source}")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
}

/// An open, migrated database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The files the path named when it was opened (see [`place`]).
    place: place::Placement,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// A peer's resume information (see [`Store::load_peers`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerResume {
    /// Torrent.
    pub torrent_id: TorrentId,
    /// Stored identity of the address ([`anon::StoredIp::key`]); compare it with the
    /// anonymiser's output for a rediscovered address.
    pub ip_key: String,
    /// Port.
    pub port: u16,
    /// The address itself: only in `privacy.ip = "full"` databases (otherwise peers come back
    /// through discovery and are matched by `ip_key`).
    pub addr: Option<SocketAddr>,
    /// When the next visit was due.
    pub next_visit_at: Option<UnixMs>,
    /// Whether the peer was ever reached.
    pub contacted: bool,
    /// Latest known progress.
    pub last_progress: Option<f64>,
    /// Confirmed download.
    pub confirmed: bool,
    /// Consecutive failed attempts (for back-off).
    pub consecutive_failures: u32,
}

/// A torrent row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TorrentRow {
    /// Row id.
    pub id: TorrentId,
    /// v1 info-hash, hex.
    pub info_hash_v1: Option<String>,
    /// v2 info-hash, hex.
    pub info_hash_v2: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// Pieces.
    pub piece_count: Option<u32>,
    /// Piece length.
    pub piece_length: Option<i64>,
    /// Size.
    pub total_size: Option<i64>,
    /// file | magnet | hash.
    pub source: String,
    /// When added.
    pub added_at: UnixMs,
    /// Tracker URLs by tier.
    pub trackers: Vec<Vec<String>>,
    /// Labels given when the torrent was added (`swarmscan add --label`), sorted.
    pub labels: Vec<String>,
}

impl TorrentRow {
    /// The v1 info-hash if there is one, else the v2 one.
    pub fn info_hash(&self) -> String {
        self.info_hash_v1
            .clone()
            .or_else(|| self.info_hash_v2.clone())
            .unwrap_or_default()
    }
}

/// One line of `swarmscan peers`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PeerRow {
    /// Torrent info-hash (v1, else v2).
    pub info_hash: String,
    /// Address as stored (full, network or keyed hash).
    pub ip: String,
    /// Port.
    pub port: u16,
    /// First time any source reported the peer.
    pub first_seen_at: UnixMs,
    /// Latest successful contact with known progress.
    pub last_seen_at: Option<UnixMs>,
    /// First successful contact with known progress.
    pub first_contact_at: Option<UnixMs>,
    /// Its progress (0..1).
    pub first_progress: Option<f64>,
    /// Latest progress (0..1).
    pub last_progress: Option<f64>,
    /// Estimated threshold crossing time.
    pub crossed_at: Option<UnixMs>,
    /// Confirmed download.
    pub confirmed: bool,
    /// Every source that reported it, "+"-joined.
    pub sources: String,
    /// The first source.
    pub first_source: String,
    /// Client name.
    pub client: Option<String>,
    /// Transports of successful contacts, "+"-joined.
    pub transport: String,
    /// Successful contacts.
    pub contacts: i64,
    /// Failed attempts.
    pub failures: i64,
    /// Highest speed between two contacts, pieces per second.
    pub max_speed: Option<f64>,
    /// Latest error class.
    pub last_error: Option<String>,
    /// How the crossing of a confirmed peer was seen: `live` (a watched connection),
    /// `revisit` (a probe of ours) or `incoming` (a connection the peer opened).
    pub crossing_seen: Option<String>,
    /// An incoming peer that gave no listen port: `port` is its connection's source port.
    pub portless: bool,
    /// The port of the row at the same address that counts this row's download (a portless
    /// row whose crossing was also seen there); this row is then not confirmed itself.
    pub duplicate_of_port: Option<u16>,
    /// Country (ISO 3166-1 alpha-2) from `geo.city_db`; `None`: not looked up or no entry.
    pub country: Option<String>,
    /// City (English name) from `geo.city_db`.
    pub city: Option<String>,
    /// Continent code from `geo.city_db`.
    pub continent: Option<String>,
    /// Autonomous system number from `geo.asn_db`.
    pub asn: Option<u32>,
    /// Its organisation.
    pub as_org: Option<String>,
    /// Registrable domain of the address's reverse DNS name (not filled yet).
    pub host_domain: Option<String>,
}

/// The group of torrents without a label in reports.
pub const NO_LABEL: &str = "(none)";
/// The group of all torrents in reports (shown when some torrents have labels).
pub const ALL_LABELS: &str = "(all)";

/// Checks a torrent label: 1 to 64 characters, no control characters, no leading or trailing
/// space, and not one of the report's own group names ([`NO_LABEL`], [`ALL_LABELS`]).
pub fn check_label(label: &str) -> Result<(), String> {
    let problem = if label.is_empty() {
        Some("is empty")
    } else if label.chars().count() > 64 {
        Some("is longer than 64 characters")
    } else if label.chars().any(char::is_control) {
        Some("contains a control character")
    } else if label.trim() != label {
        Some("starts or ends with a space")
    } else if label == NO_LABEL || label == ALL_LABELS {
        Some("is a name reports use for their own groups")
    } else {
        None
    };
    match problem {
        Some(p) => Err(format!("label {label:?} {p}")),
        None => Ok(()),
    }
}

fn is_not_a_database(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase)
}

impl Store {
    /// Opens `path`, creating the database if it does not exist, and migrates it.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, true)
    }

    /// Opens an existing database (error [`StoreError::Missing`] if there is none) and migrates it.
    pub fn open_existing(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.to_path_buf()));
        }
        Store::open_with(path, false)
    }

    fn open_with(path: &Path, create: bool) -> Result<Store, StoreError> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let sql_err = |source: rusqlite::Error| {
            if is_not_a_database(&source) {
                StoreError::NotADatabase(path.to_path_buf())
            } else {
                StoreError::Sqlite {
                    path: path.to_path_buf(),
                    source,
                }
            }
        };
        let conn = Connection::open_with_flags(path, flags).map_err(sql_err)?;
        // Reading the version is the first access to the file: a non-SQLite file fails here.
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql_err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql_err)?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            place: place::Placement::record(path),
        };
        store.migrate(version)?;
        // The log and shared-memory files exist now: remembered with the main file.
        let _ = store.place.check();
        Ok(store)
    }

    fn migrate(&mut self, from: u32) -> Result<(), StoreError> {
        for (step, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            let path = self.path.clone();
            let err = |source| StoreError::Sqlite {
                path: path.clone(),
                source,
            };
            let tx = self.conn.transaction().map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(None, "user_version", step as u32 + 1)
                .map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(())
    }

    pub(crate) fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// None while the path still names the database this store has open (and its `-wal` the
    /// log it writes); otherwise what happened (see [`place`]).
    pub fn check_place(&mut self) -> Option<place::Moved> {
        self.place.check()
    }

    /// Closes a database whose path no longer names it, saving it where the user will find
    /// it (see [`place::save_moved`]): where everything is now, or why it could not be saved.
    pub fn close_moved(self) -> Result<String, String> {
        place::save_moved(self.conn, self.place)
    }

    /// The underlying connection (for tests and ad-hoc queries).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Checks that the database was made with this anonymiser's mode and key, recording them
    /// in a fresh database.
    pub fn check_privacy(&self, anonymizer: &anon::Anonymizer) -> Result<(), StoreError> {
        let mode = anonymizer.mode();
        let checks: [(&'static str, &str, String); 2] = [
            ("privacy.ip", "privacy.ip", mode.as_str().to_string()),
            (
                "HMAC key fingerprint",
                "privacy.key_fingerprint",
                if mode == anon::IpMode::Full {
                    String::new()
                } else {
                    anonymizer.key_fingerprint()
                },
            ),
        ];
        for (what, key, configured) in checks {
            let stored: Option<String> = self
                .conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
                .map_err(|e| self.err(e))?;
            match stored {
                Some(stored) if stored != configured => {
                    return Err(StoreError::PrivacyMismatch {
                        path: self.path.clone(),
                        what,
                        stored,
                        configured,
                    })
                }
                Some(_) => {}
                None => {
                    self.conn
                        .execute(
                            "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                            params![key, configured],
                        )
                        .map_err(|e| self.err(e))?;
                }
            }
        }
        Ok(())
    }

    /// Registers a torrent or updates it (matched by either info-hash); returns its id.
    pub fn upsert_torrent(&self, torrent: &TorrentRecord) -> Result<TorrentId, StoreError> {
        upsert_torrent(&self.conn, torrent).map_err(|e| self.err(e))
    }

    /// Marks torrents removed at `at` (`swarmscan remove`): a running scan stops probing and
    /// announcing them, a later `run` does not resume them, their rows stay. Already removed
    /// ones keep their time. Returns how many were marked now.
    pub fn mark_removed(&self, ids: &[TorrentId], at: UnixMs) -> Result<usize, StoreError> {
        let mut marked = 0;
        for id in ids {
            marked += self
                .conn
                .execute(
                    "UPDATE torrents SET removed_at = ?2 WHERE id = ?1 AND removed_at IS NULL",
                    params![id, at],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(marked)
    }

    /// Takes a removed torrent back into the scan (`swarmscan add` or `run` naming it again);
    /// true when it had been removed.
    pub fn mark_added(&self, id: TorrentId) -> Result<bool, StoreError> {
        let changed = self
            .conn
            .execute(
                "UPDATE torrents SET removed_at = NULL WHERE id = ?1 AND removed_at IS NOT NULL",
                params![id],
            )
            .map_err(|e| self.err(e))?;
        Ok(changed > 0)
    }

    /// Every torrent's row id and, for those taken out of the scan, when: the cheap query a
    /// running scan polls to see `add` and `remove`.
    pub fn torrent_states(&self) -> Result<Vec<(TorrentId, Option<UnixMs>)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, removed_at FROM torrents ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Every torrent.
    pub fn torrents(&self) -> Result<Vec<TorrentRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, info_hash_v1, info_hash_v2, name, piece_count, piece_length, total_size, source, added_at, trackers
                 FROM torrents ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(TorrentRow {
                    id: r.get(0)?,
                    info_hash_v1: r.get(1)?,
                    info_hash_v2: r.get(2)?,
                    name: r.get(3)?,
                    piece_count: r.get(4)?,
                    piece_length: r.get(5)?,
                    total_size: r.get(6)?,
                    source: r.get(7)?,
                    added_at: r.get(8)?,
                    // Written by us as JSON; an unreadable value means "no trackers".
                    trackers: serde_json::from_str(&r.get::<_, String>(9)?).unwrap_or_default(),
                    labels: Vec::new(),
                })
            })
            .map_err(|e| self.err(e))?;
        let mut torrents = rows
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        let mut labels = self.labels()?;
        for t in &mut torrents {
            t.labels = labels.remove(&t.id).unwrap_or_default();
        }
        Ok(torrents)
    }

    /// Gives a torrent labels (kept with those it has). Each label is checked with
    /// [`check_label`] first; nothing is stored if one is refused.
    pub fn add_labels(&self, torrent: TorrentId, labels: &[String]) -> Result<(), StoreError> {
        for label in labels {
            check_label(label).map_err(StoreError::BadLabel)?;
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO torrent_labels (torrent_id, label) VALUES (?1, ?2)",
            )
            .map_err(|e| self.err(e))?;
        for label in labels {
            stmt.execute(params![torrent, label])
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Every torrent's labels, sorted (torrents without labels are absent).
    pub fn labels(&self) -> Result<std::collections::BTreeMap<TorrentId, Vec<String>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT torrent_id, label FROM torrent_labels ORDER BY torrent_id, label")
            .map_err(|e| self.err(e))?;
        let mut out: std::collections::BTreeMap<TorrentId, Vec<String>> = Default::default();
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let id: TorrentId = r.get(0).map_err(|e| self.err(e))?;
            out.entry(id)
                .or_default()
                .push(r.get(1).map_err(|e| self.err(e))?);
        }
        Ok(out)
    }

    /// The torrent with this hex info-hash (v1 or v2, any case).
    pub fn torrent_by_hash(&self, hash: &str) -> Result<TorrentRow, StoreError> {
        let wanted = hash.trim().to_ascii_lowercase();
        self.torrents()?
            .into_iter()
            .find(|t| {
                t.info_hash_v1.as_deref() == Some(&wanted)
                    || t.info_hash_v2.as_deref() == Some(&wanted)
            })
            .ok_or_else(|| StoreError::UnknownTorrent(hash.to_string()))
    }

    /// Every peer with its next visit time, in one list (tests and small databases; a scan
    /// resumes with [`Store::for_each_peer_resume`], which streams).
    pub fn load_peers(&self) -> Result<Vec<PeerResume>, StoreError> {
        let mut peers = Vec::new();
        self.for_each_peer_resume(|p| peers.push(p))?;
        Ok(peers)
    }

    /// The DHT nodes kept by the last run (`Record::DhtNodes`), most recently seen first.
    pub fn dht_nodes(&self) -> Result<Vec<record::DhtNodeRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT ip, port, node_id, seen_at FROM dht_nodes ORDER BY seen_at DESC")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u16>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (ip, port, id, seen_at) = row.map_err(|e| self.err(e))?;
            // A row that is not a node (edited by hand) is skipped, not fatal.
            let (Ok(ip), Ok(id)) = (ip.parse::<std::net::IpAddr>(), <[u8; 20]>::try_from(id))
            else {
                continue;
            };
            out.push(record::DhtNodeRecord {
                id,
                addr: std::net::SocketAddr::new(ip, port),
                seen_at,
            });
        }
        Ok(out)
    }

    /// The DHT node ids kept by the last run (`Record::DhtNodeIds`), by node number. Rows
    /// that are not an id (edited by hand) are skipped.
    pub fn dht_node_ids(&self) -> Result<Vec<record::DhtNodeIdRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT node, node_id, external_ip, updated_at FROM dht_node_ids ORDER BY node",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (node, id, external_ip, updated_at) = row.map_err(|e| self.err(e))?;
            let (Ok(node), Ok(id)) = (u32::try_from(node), <[u8; 20]>::try_from(id)) else {
                continue;
            };
            let external_ip = match external_ip {
                None => None,
                Some(text) => match text.parse::<std::net::IpAddr>() {
                    Ok(ip) => Some(ip),
                    Err(_) => continue,
                },
            };
            out.push(record::DhtNodeIdRecord {
                node,
                id,
                external_ip,
                updated_at,
            });
        }
        Ok(out)
    }

    /// Calls `f` with every peer's resume information, in row order, without holding all rows.
    /// The rows are one snapshot (a read transaction): a writer committing meanwhile on another
    /// connection (WAL) is not seen halfway.
    pub fn for_each_peer_resume(&self, mut f: impl FnMut(PeerResume)) -> Result<(), StoreError> {
        // Dropped at the end: a rollback, which for a read transaction only ends the snapshot.
        let snapshot = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let full = snapshot
            .query_row("SELECT value FROM meta WHERE key = 'privacy.ip'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map_err(|e| self.err(e))?
            .is_some_and(|m| m == "full");
        let mut stmt = snapshot
            .prepare(
                "SELECT torrent_id, ip_key, port, next_visit_at, contacts > 0, last_progress, confirmed, consecutive_failures
                 FROM peers ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let read = || -> rusqlite::Result<PeerResume> {
                let ip_key: String = r.get(1)?;
                let port: u16 = r.get(2)?;
                // Only a `full` database holds addresses; elsewhere peers come back through
                // discovery and are matched by `ip_key`.
                let addr = if full {
                    ip_key
                        .parse::<IpAddr>()
                        .ok()
                        .map(|ip| SocketAddr::new(ip, port))
                } else {
                    None
                };
                Ok(PeerResume {
                    torrent_id: r.get(0)?,
                    ip_key,
                    port,
                    addr,
                    next_visit_at: r.get(3)?,
                    contacted: r.get(4)?,
                    last_progress: r.get(5)?,
                    confirmed: r.get(6)?,
                    consecutive_failures: r.get(7)?,
                })
            };
            f(read().map_err(|e| self.err(e))?);
        }
        Ok(())
    }

    /// Calls `f` for every peer (of one torrent, if given), in row order, without holding all
    /// rows in memory.
    pub fn for_each_peer(
        &self,
        torrent: Option<TorrentId>,
        mut f: impl FnMut(PeerRow),
    ) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT coalesce(t.info_hash_v1, t.info_hash_v2), p.ip, p.port, p.first_seen_at, p.last_contact_at,
                        p.first_contact_at, p.first_progress, p.last_progress, p.crossed_at, p.confirmed, p.sources,
                        p.first_source, p.client, p.transport, p.contacts, p.failures, p.max_speed, p.last_error,
                        p.crossing_seen, p.portless, d.port,
                        p.country, p.city, p.continent, p.asn, p.as_org, p.host_domain
                 FROM peers p JOIN torrents t ON t.id = p.torrent_id
                 LEFT JOIN peers d ON d.id = p.duplicate_of
                 WHERE ?1 IS NULL OR p.torrent_id = ?1
                 ORDER BY p.id",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([torrent]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let read = || -> rusqlite::Result<PeerRow> {
                Ok(PeerRow {
                    info_hash: r.get(0)?,
                    ip: r.get(1)?,
                    port: r.get(2)?,
                    first_seen_at: r.get(3)?,
                    last_seen_at: r.get(4)?,
                    first_contact_at: r.get(5)?,
                    first_progress: r.get(6)?,
                    last_progress: r.get(7)?,
                    crossed_at: r.get(8)?,
                    confirmed: r.get(9)?,
                    sources: PeerSource::mask_names(r.get(10)?),
                    first_source: PeerSource::from_bit(r.get(11)?)
                        .map_or("unknown", |s| s.as_str())
                        .to_string(),
                    client: r.get(12)?,
                    transport: Transport(r.get::<_, i64>(13)? as u8).names(),
                    contacts: r.get(14)?,
                    failures: r.get(15)?,
                    max_speed: r.get(16)?,
                    last_error: r.get(17)?,
                    crossing_seen: r.get(18)?,
                    portless: r.get(19)?,
                    duplicate_of_port: r.get(20)?,
                    country: r.get(21)?,
                    city: r.get(22)?,
                    continent: r.get(23)?,
                    asn: r.get(24)?,
                    as_org: r.get(25)?,
                    host_domain: r.get(26)?,
                })
            };
            f(read().map_err(|e| self.err(e))?);
        }
        Ok(())
    }
}

/// Inserts or updates a torrent row; known fields are never overwritten by unknown ones.
pub(crate) fn upsert_torrent(conn: &Connection, t: &TorrentRecord) -> rusqlite::Result<TorrentId> {
    let v1 = t.info_hash_v1.map(|h| crate::proto::hex::encode(&h));
    let v2 = t.info_hash_v2.map(|h| crate::proto::hex::encode(&h));
    // SQLite integers are i64; sizes beyond 8 EiB are not torrents.
    let piece_length = t.piece_length.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
    let total_size = t.total_size.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
    // Known trackers are kept unless the new record names some.
    let trackers = (!t.trackers.is_empty())
        .then(|| serde_json::to_string(&t.trackers).unwrap_or_else(|_| "[]".into()));
    let existing: Option<TorrentId> = conn
        .prepare_cached("SELECT id FROM torrents WHERE info_hash_v1 = ?1 OR info_hash_v2 = ?2")?
        .query_row(params![v1, v2], |r| r.get(0))
        .optional()?;
    match existing {
        Some(id) => {
            conn.prepare_cached(
                "UPDATE torrents SET info_hash_v1 = coalesce(info_hash_v1, ?2), info_hash_v2 = coalesce(info_hash_v2, ?3),
                    name = coalesce(?4, name), piece_count = coalesce(?5, piece_count),
                    piece_length = coalesce(?6, piece_length), total_size = coalesce(?7, total_size),
                    trackers = coalesce(?8, trackers)
                 WHERE id = ?1",
            )?
            .execute(params![id, v1, v2, t.name, t.piece_count, piece_length, total_size, trackers])?;
            Ok(id)
        }
        None => {
            conn.prepare_cached(
                "INSERT INTO torrents (info_hash_v1, info_hash_v2, name, piece_count, piece_length, total_size, source, added_at, trackers)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, coalesce(?9, '[]'))",
            )?
            .execute(params![v1, v2, t.name, t.piece_count, piece_length, total_size, t.source.as_str(), t.added_at, trackers])?;
            Ok(conn.last_insert_rowid())
        }
    }
}

#[cfg(test)]
mod tests;
