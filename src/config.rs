//! Configuration: a TOML file plus `--set section.key=value` overrides.
//!
//! One source of truth: the structs below carry the defaults (`Default` impls) and
//! [`KEY_DOCS`] carries one documentation string per key. `swarmscan config` prints the
//! default configuration by serialising `Config::default()` and writing each key under its
//! documentation; a test checks that every key has a doc, every doc has a key, and that the
//! printed text parses back to `Config::default()`.
//!
//! Loading ([`Config::load`]) parses the file into a `toml::Table`, merges the overrides at their
//! dotted paths, checks every leaf against the known keys (so an unknown key is an error that
//! names it: "unknown config key `peer.treshold`"), deserialises leaf by leaf over the default
//! table (so a type error names its key and the expected type), then validates ranges.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// SQLite database file (created if missing).
    pub database: PathBuf,
    /// Worker threads and io_uring sizes.
    pub engine: EngineSection,
    /// Sockets: listeners, address families, transports.
    pub net: NetConfig,
    /// How peers are probed and revisited.
    pub peer: PeerConfig,
    /// Tracker announces and scrapes.
    pub tracker: TrackerConfig,
    /// The batched SQLite writer.
    pub store: StoreConfig,
    /// How peer IP addresses are stored.
    pub privacy: PrivacyConfig,
    /// GeoIP and ASN databases for peer descriptions.
    pub geo: GeoConfig,
    /// Periodic statistics.
    pub stats: StatsConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Our mainline DHT node(s).
    pub dht: DhtSection,
    /// `swarmscan bttest`: the BitTorrent blocking and throttling test.
    pub bttest: BttestConfig,
    /// `swarmscan sink`, the passive trace collector.
    pub sink: SinkConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database: PathBuf::from("swarmscan.sqlite"),
            engine: EngineSection::default(),
            net: NetConfig::default(),
            peer: PeerConfig::default(),
            tracker: TrackerConfig::default(),
            store: StoreConfig::default(),
            privacy: PrivacyConfig::default(),
            geo: GeoConfig::default(),
            stats: StatsConfig::default(),
            metrics: MetricsConfig::default(),
            dht: DhtSection::default(),
            bttest: BttestConfig::default(),
            sink: SinkConfig::default(),
        }
    }
}

/// `[engine]`: threads and io_uring sizes (the engine crate's runtime settings,
/// `swarmscan_engine::EngineConfig`, are derived from it in `settings.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// Worker threads; 0 = one per available core.
    pub workers: usize,
    /// Pin each worker to its own core.
    pub pin_workers: bool,
    /// Submission queue entries per worker ring (power of two).
    pub ring_entries: u32,
    /// Receive buffers in each worker's provided-buffer ring (power of two).
    pub recv_buffers: u32,
    /// Size of one receive buffer in bytes.
    pub recv_buffer_size: u32,
    /// Most known peers held in memory over all workers (about 52 bytes each); addresses
    /// beyond it are counted and dropped, so a huge swarm cannot exhaust memory.
    pub max_peers: u64,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            workers: 0,
            pin_workers: true,
            ring_entries: 4096,
            recv_buffers: 2048,
            recv_buffer_size: 16384,
            max_peers: 20_000_000,
        }
    }
}

/// How to use BitTorrent protocol encryption (MSE/PE, BEP 8) when probing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encryption {
    /// Plaintext only.
    Off,
    /// Plaintext first; MSE when plaintext fails; remember per peer what worked.
    Fallback,
    /// MSE first; plaintext when MSE fails; remember per peer what worked.
    Prefer,
    /// MSE only.
    Require,
}

/// When to probe peers over uTP (BEP 29) instead of TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UtpMode {
    /// TCP only; incoming uTP connections are not accepted either.
    Off,
    /// TCP first; uTP when TCP is refused or the peer hangs up on every try; remember per
    /// peer what worked.
    Fallback,
    /// uTP first; TCP when uTP gets no answer; remember per peer what worked.
    Prefer,
}

/// `[net]`: listeners and transports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetConfig {
    /// TCP listeners for incoming peers.
    pub listen: Vec<SocketAddr>,
    /// Probe IPv6 peers.
    pub ipv6: bool,
    /// MSE/PE use.
    pub encryption: Encryption,
    /// uTP use.
    pub utp: UtpMode,
    /// DH computations per second and worker for incoming MSE handshakes.
    pub mse_incoming_per_sec: u32,
    /// Port announced to trackers; 0 = the port of the
    /// first `listen` address.
    pub announce_port: u16,
    /// Opt-out blocklist file (one address or CIDR per line); "" = none.
    pub blocklist_file: PathBuf,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            // Loopback by default: a fresh install must not open a publicly reachable port
            // before its operator decided to run a measurement. Real scans set
            // ["0.0.0.0:6881", "[::]:6881"] (incoming peers are the only way to see NAT'd ones).
            listen: vec![
                SocketAddr::from(([127, 0, 0, 1], 6881)),
                "[::1]:6881".parse().expect("literal address"),
            ],
            ipv6: true,
            encryption: Encryption::Fallback,
            utp: UtpMode::Fallback,
            mse_incoming_per_sec: 1000,
            announce_port: 0,
            blocklist_file: PathBuf::new(),
        }
    }
}

/// `[peer]`: probing and revisiting peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerConfig {
    /// Completion fraction counted as "downloaded".
    pub threshold: f64,
    /// Base interval between visits of one peer, seconds.
    pub revisit_secs: f64,
    /// Stop revisiting a peer once it is at or above the threshold.
    pub stop_at_threshold: bool,
    /// End a probe after this long without a message, ms.
    pub quiet_timeout_ms: u64,
    /// Give up a connect after this long, ms.
    pub connect_timeout_ms: u64,
    /// End a probe after this many messages.
    pub message_cap: u32,
    /// End a probe after this long whatever happens, ms (bounds slow-drip peers).
    pub max_duration_ms: u64,
    /// After a bitfield, wait this long for trailing `have`s, ms.
    pub bitfield_grace_ms: u64,
    /// Concurrent probes, all workers together.
    pub max_in_flight: u32,
    /// Connections kept open to watch peers near the threshold, all workers together.
    pub max_watched: u32,
    /// Incoming connections alive at once (before they are watched), all workers together.
    pub max_incoming: u32,
    /// An incoming connection must complete its handshake this soon, ms.
    pub incoming_handshake_ms: u64,
    /// Largest metadata (info dictionary) size a peer may claim before we fetch it, bytes.
    pub metadata_max_bytes: u32,
    /// Metadata fetches of one torrent at once.
    pub metadata_fetches_per_torrent: u32,
    /// Metadata fetches at once, all torrents together.
    pub metadata_fetches: u32,
    /// New connections per second, all workers together.
    pub connects_per_sec: u32,
    /// First retry delay after a failed probe, seconds; 0 = `revisit_secs`.
    pub retry_backoff_secs: f64,
    /// Factor applied to the retry delay after each further failure.
    pub retry_backoff_factor: f64,
    /// Longest retry delay, seconds.
    pub retry_backoff_max_secs: f64,
    /// Drop a peer after this many consecutive failures; 0 = never.
    pub max_failures: u32,
    /// Read peer exchange (BEP 11) messages.
    pub pex: bool,
    /// First 8 bytes of our peer-id (Azureus style), so peers can tell what we are.
    pub peer_id_prefix: String,
}

impl PeerConfig {
    /// The delay before the first retry of a failed peer.
    pub fn first_retry_secs(&self) -> f64 {
        if self.retry_backoff_secs == 0.0 {
            self.revisit_secs
        } else {
            self.retry_backoff_secs
        }
    }
}

/// Longest duration any `*_secs` key accepts: a year.
pub use crate::limits::MAX_SECS;

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            threshold: 0.98,
            revisit_secs: 300.0,
            stop_at_threshold: true,
            quiet_timeout_ms: 6000,
            connect_timeout_ms: 5000,
            message_cap: 256,
            max_duration_ms: 30_000,
            bitfield_grace_ms: 500,
            max_in_flight: 4096,
            max_watched: 4096,
            max_incoming: 2048,
            incoming_handshake_ms: 3000,
            metadata_max_bytes: 8 << 20,
            metadata_fetches_per_torrent: 2,
            metadata_fetches: 8,
            connects_per_sec: 1000,
            retry_backoff_secs: 0.0,
            retry_backoff_factor: 2.0,
            retry_backoff_max_secs: 3600.0,
            max_failures: 0,
            pex: true,
            peer_id_prefix: "-SW0100-".to_string(),
        }
    }
}

/// `[tracker]`: announces and scrapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerConfig {
    /// Interval between announces to one tracker, seconds.
    pub announce_secs: f64,
    /// Use the tracker's `interval` when it asks for a longer one (its `min interval` is
    /// always respected).
    pub respect_interval: bool,
    /// Peers asked for per announce.
    pub numwant: u32,
    /// Interval between scrapes of one tracker, seconds; 0 = never scrape.
    pub scrape_secs: f64,
    /// Request timeout, ms (UDP: the wait before the first retransmission, doubling after).
    pub timeout_ms: u64,
    /// Retransmissions of an unanswered UDP tracker request before it fails (BEP 15: up to 8).
    pub udp_retransmits: u32,
    /// Extra CA certificate files (PEM) trusted for `https://` trackers, besides the web PKI roots.
    pub ca_files: Vec<PathBuf>,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            announce_secs: 300.0,
            respect_interval: true,
            numwant: 200,
            scrape_secs: 300.0,
            timeout_ms: 15000,
            udp_retransmits: 2,
            ca_files: Vec::new(),
        }
    }
}

/// `[dht]`: our mainline DHT node(s) (BEP 5) on the workers' UDP sockets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DhtSection {
    /// Run DHT nodes and look torrents up in the DHT.
    pub enabled: bool,
    /// `host:port` entries to join the DHT through (names resolved at start).
    pub bootstrap: Vec<String>,
    /// Nodes (node ids) in all; node i runs on worker i % workers.
    pub node_ids: u32,
    /// Interval between `get_peers` lookups of one torrent, seconds.
    pub lookup_secs: f64,
    /// Lookups of ours one node runs at once.
    pub max_lookups: u32,
    /// BEP 43 read-only node: ask, never answer.
    pub read_only: bool,
    /// `announce_peer` ourselves to the closest nodes after each lookup.
    pub announce: bool,
    /// `swarmscan crawl`: `sample_infohashes` queries per second, at most.
    pub crawl_rate: u32,
}

/// The well-known DHT routers, the default `dht.bootstrap`.
pub const DEFAULT_DHT_ROUTERS: [&str; 3] = [
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "router.utorrent.com:6881",
];

impl Default for DhtSection {
    fn default() -> Self {
        DhtSection {
            enabled: true,
            bootstrap: DEFAULT_DHT_ROUTERS.iter().map(|s| s.to_string()).collect(),
            node_ids: 1,
            lookup_secs: 900.0,
            max_lookups: 8,
            read_only: false,
            announce: false,
            crawl_rate: 50,
        }
    }
}

/// Checks one `dht.bootstrap` entry: `host:port` or `[v6]:port`, port 1–65535.
pub fn check_bootstrap_entry(entry: &str) -> Result<(), String> {
    if entry.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0) {
        return Ok(());
    }
    let (host, port) = entry
        .rsplit_once(':')
        .ok_or_else(|| format!("{entry:?} is not host:port"))?;
    if host.is_empty() || host.contains(['/', ' ', '[', ']']) {
        return Err(format!("{entry:?}: bad host name"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(format!("{entry:?}: port must be 1–65535")),
    }
}

/// `[store]`: the batched writer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Commit after this many records...
    pub batch_rows: usize,
    /// ...or this many milliseconds after the first uncommitted record, whichever first.
    pub batch_ms: u64,
    /// Records the channel to the writer holds before producers keep them in overflow.
    pub channel_capacity: usize,
    /// Seconds the database may refuse every commit (disk full, I/O errors) before the scan
    /// stops with an error; until then records are held and retried.
    pub unwritable_secs: f64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            batch_rows: 5000,
            batch_ms: 500,
            channel_capacity: 65536,
            unwritable_secs: 300.0,
        }
    }
}

pub use crate::store::anon::IpMode;

/// `[privacy]`: anonymisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// How IP addresses are stored.
    pub ip: IpMode,
    /// HMAC key file (32 random bytes, created if missing); "" = the database path + ".key".
    pub hmac_key_file: PathBuf,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            ip: IpMode::Hmac,
            hmac_key_file: PathBuf::new(),
        }
    }
}

impl Config {
    /// The HMAC key file actually used: `privacy.hmac_key_file`, or `<database>.key` when empty.
    pub fn hmac_key_path(&self) -> PathBuf {
        if self.privacy.hmac_key_file.as_os_str().is_empty() {
            let mut path = self.database.clone().into_os_string();
            path.push(".key");
            PathBuf::from(path)
        } else {
            self.privacy.hmac_key_file.clone()
        }
    }
}

/// `[geo]`: MaxMind-format databases peers are looked up in when first stored, and reverse
/// DNS of their addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoConfig {
    /// GeoIP2/GeoLite2 City or Country database (`.mmdb`); "" = no country, city, continent.
    pub city_db: PathBuf,
    /// GeoLite2 ASN (or GeoIP2 ISP) database (`.mmdb`); "" = no AS number and organisation.
    pub asn_db: PathBuf,
    /// Look peers' host domains up in reverse DNS (PTR).
    pub reverse_dns: bool,
    /// The resolver asked ("IP" or "IP:port"); "" = the first nameserver of /etc/resolv.conf.
    pub dns_resolver: String,
    /// PTR queries per second at most (retries included).
    pub reverse_dns_per_sec: u32,
}

impl Default for GeoConfig {
    fn default() -> Self {
        GeoConfig {
            city_db: PathBuf::new(),
            asn_db: PathBuf::new(),
            reverse_dns: false,
            dns_resolver: String::new(),
            reverse_dns_per_sec: 5,
        }
    }
}

impl GeoConfig {
    /// `geo.dns_resolver` as an address (port 53 unless given); `None` = the system's.
    pub fn resolver(&self) -> Result<Option<SocketAddr>, String> {
        let v = self.dns_resolver.trim();
        if v.is_empty() {
            return Ok(None);
        }
        if let Ok(ip) = v.parse::<std::net::IpAddr>() {
            return Ok(Some(SocketAddr::new(ip, 53)));
        }
        match v.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => Ok(Some(a)),
            _ => Err(format!(
                "must be an IP address, optionally with a port (\"127.0.0.53\", \"[::1]:5353\"), or \"\" \
                 for the first nameserver of /etc/resolv.conf; got {v:?}"
            )),
        }
    }
}

/// `[stats]`: periodic statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsConfig {
    /// Interval between statistics rows (and log lines), seconds.
    pub interval_secs: f64,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            interval_secs: 10.0,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP endpoint serving `GET /metrics`; "" = off. A bare port means
    /// 127.0.0.1:port.
    pub listen: String,
    /// Allow a `listen` address that is not loopback.
    pub allow_remote: bool,
}

impl MetricsConfig {
    /// The endpoint's address, `None` when off; an error names what is wrong with `listen`.
    pub fn address(&self) -> Result<Option<SocketAddr>, String> {
        let v = self.listen.trim();
        if v.is_empty() {
            return Ok(None);
        }
        let addr = match v.parse::<u16>() {
            Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
            Err(_) => v.parse::<SocketAddr>().map_err(|_| {
                format!("must be an address like \"127.0.0.1:9185\" or a port, got {v:?}")
            })?,
        };
        if !addr.ip().is_loopback() && !self.allow_remote {
            return Err(format!(
                "{addr} is not a loopback address: the metrics describe the scan to anyone who \
                 can connect; set metrics.allow_remote = true to serve it there anyway"
            ));
        }
        Ok(Some(addr))
    }
}

/// `[bttest]`: `swarmscan bttest server` (the client takes the ports from the server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BttestConfig {
    /// The server's control address; the test ports listen on its IP too. The client's
    /// default port when HOST has none.
    pub listen: SocketAddr,
    /// The two test ports: the well-known BitTorrent port first, then the other one.
    pub ports: Vec<u16>,
}

impl Default for BttestConfig {
    fn default() -> Self {
        BttestConfig {
            // Loopback by default, like net.listen: a test server is opened on purpose.
            listen: SocketAddr::from(([127, 0, 0, 1], 6880)),
            ports: vec![6881, 4711],
        }
    }
}

impl BttestConfig {
    /// The two test ports, checked: two, distinct, non-zero, not the control port.
    pub fn test_ports(&self) -> Result<[u16; 2], String> {
        match self.ports[..] {
            [a, b] if a != 0 && b != 0 && a != b => {
                if a == self.listen.port() || b == self.listen.port() {
                    Err(format!(
                        "the test ports must differ from bttest.listen's port {}",
                        self.listen.port()
                    ))
                } else {
                    Ok([a, b])
                }
            }
            _ => Err(format!(
                "must be two different non-zero ports (the BitTorrent port first, e.g. [6881, 4711]), got {:?}",
                self.ports
            )),
        }
    }
}

/// `[sink]`: `swarmscan sink`, which records whatever arrives at its addresses and answers
/// nothing (see `crate::sink`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// TCP addresses to accept on.
    pub tcp: Vec<SocketAddr>,
    /// UDP addresses to receive on.
    pub udp: Vec<SocketAddr>,
    /// A TCP connection or UDP flow that is quiet this long is over, seconds.
    pub idle_secs: f64,
    /// Bytes of each flow kept for classification (the rest is only counted).
    pub keep_bytes: u32,
    /// A TCP connection is closed after this many bytes (0 = only when idle).
    pub max_bytes: u64,
    /// TCP connections open at once over all workers; the oldest is closed for a new one.
    pub max_connections: u32,
    /// UDP flows tracked at once over all workers; the oldest is stored and closed for a new one.
    pub max_udp_flows: u32,
}

impl Default for SinkConfig {
    fn default() -> Self {
        let loopback: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 6881));
        SinkConfig {
            tcp: vec![loopback],
            udp: vec![loopback],
            idle_secs: 30.0,
            keep_bytes: 1024,
            max_bytes: 16 << 20,
            max_connections: 4096,
            max_udp_flows: 65536,
        }
    }
}

/// Documentation of every section (printed above `[section]`).
pub const SECTION_DOCS: &[(&str, &str)] = &[
    (
        "engine",
        "Worker threads (one io_uring each) and ring sizes.",
    ),
    (
        "net",
        "Sockets: listeners for incoming peers, address families, transports.",
    ),
    (
        "peer",
        "Probing peers: what counts as downloaded, when to revisit, how long to wait.",
    ),
    (
        "tracker",
        "HTTP, HTTPS and UDP tracker announces and scrapes.",
    ),
    (
        "store",
        "The SQLite writer thread: records are committed in batches.",
    ),
    ("privacy", "How peer addresses are stored."),
    (
        "geo",
        "Peer descriptions from MaxMind-format (.mmdb) databases and reverse DNS, looked up with the\n\
         real address when a peer is first stored (before privacy.ip anonymises it). Off unless a\n\
         path is set or reverse_dns = true.",
    ),
    ("stats", "Periodic statistics (stats table and log)."),
    (
        "metrics",
        "Prometheus endpoint (OpenMetrics text at GET /metrics); off unless listen is set.",
    ),
    (
        "dht",
        "Our mainline DHT node(s) (BEP 5) on the workers' UDP sockets (net.listen, port + worker):\n\
         torrents are looked up with get_peers (peers of source `dht`, BEP 33 estimates), magnets\n\
         resolved through the peers found. Good nodes are kept in the database for the next run.",
    ),
    (
        "bttest",
        "`swarmscan bttest server`: does a path block or throttle BitTorrent (see README, bttest).",
    ),
    (
        "sink",
        "`swarmscan sink`: the passive trace collector. It accepts and reads whatever arrives at its\n\
         addresses, answers nothing, and stores one row per flow (see tuning/sink-redirect.nft to\n\
         send every port of an address to it).",
    ),
];

/// Documentation of every key, in the order `swarmscan config` prints them.
pub const KEY_DOCS: &[(&str, &str)] = &[
    ("database", "SQLite database file; created if missing, resumed if present."),
    ("engine.workers", "Worker threads, each with its own io_uring and shard of peers; 0 = one per core."),
    ("engine.pin_workers", "Pin each worker to its own core."),
    ("engine.ring_entries", "Submission queue entries per worker ring (power of two)."),
    ("engine.recv_buffers", "Buffers in each worker's provided-buffer ring (power of two)."),
    ("engine.recv_buffer_size", "Size of one receive buffer, bytes."),
    ("engine.max_peers", "Most known peers kept in memory over all workers (about 52 bytes each: 20 million ≈ 1 GB); more are counted and dropped."),
    (
        "net.listen",
        "TCP listeners for incoming peers (the only way to see peers behind NAT).\n\
         Loopback by default so that nothing is reachable from outside until you decide;\n\
         for a real scan use [\"0.0.0.0:6881\", \"[::]:6881\"].",
    ),
    ("net.ipv6", "Probe IPv6 peers too; false = IPv6 addresses from any source are ignored (counted)."),
    (
        "net.encryption",
        "Protocol encryption (MSE/PE): \"off\", \"fallback\" (plaintext first, MSE when it fails),\n\
         \"prefer\" (MSE first, plaintext when it fails) or \"require\". What worked is remembered per peer.",
    ),
    (
        "net.utp",
        "uTP (BEP 29, on the workers' UDP sockets): \"off\", \"fallback\" (TCP first, uTP at once when TCP is\n\
         refused, times out or the peer hangs up on every try) or \"prefer\" (uTP first, TCP when uTP gets no\n\
         answer). What worked is remembered per peer. Incoming uTP is accepted unless \"off\".",
    ),
    (
        "net.mse_incoming_per_sec",
        "Incoming MSE handshakes each worker answers per second (burst: one second's worth). Each costs\n\
         one 768-bit DH exponentiation (≈ 55 µs of CPU on a 2-vCPU EPYC VM, see bench/README.md), so 1000\n\
         bounds a flood of random bytes to ≈ 5 % of a core; handshakes over the budget are closed before\n\
         the DH and counted (`mse_incoming_refused` in the run summary). 1..=100000.",
    ),
    (
        "net.announce_port",
        "TCP port announced to trackers (never to peers: our extension handshake has no `p`, see DESIGN.md); 0 = the port of\n\
         the first net.listen address (set it only when peers reach us on another port, e.g. behind a\n\
         port forward). With no listener and 0, port 0 is announced and no `p` is sent: nobody can\n\
         dial in (some HTTP trackers refuse port 0; give a port then). Addresses that are ours (our\n\
         listeners, the announced port at our own IPs) are never probed.",
    ),
    ("net.blocklist_file", "Opt-out blocklist: one address or CIDR per line, never contacted; \"\" = none."),
    ("peer.threshold", "Completion fraction in (0, 1] counted as downloaded (thesis: 0.98, since clients often quit on finishing)."),
    ("peer.revisit_secs", "Base interval between two visits of one peer, seconds (fractions allowed)."),
    ("peer.stop_at_threshold", "Stop revisiting a peer once it is at or above the threshold."),
    ("peer.quiet_timeout_ms", "End a probe after this long without a message, ms (6 s covered 93.9 % of message gaps in the thesis)."),
    ("peer.connect_timeout_ms", "Give up a connect after this long, ms."),
    ("peer.message_cap", "End a probe after this many messages."),
    ("peer.max_duration_ms", "End a probe after this long whatever happens, ms (a bound on slow-drip peers)."),
    ("peer.bitfield_grace_ms", "After the bitfield, wait this long for trailing `have` messages, ms."),
    ("peer.max_in_flight", "Concurrent probes, all workers together."),
    (
        "peer.max_watched",
        "Connections kept open after a probe to watch peers below the threshold, all workers together:\n\
         a connected peer sends `have` for every piece it finishes, so its crossing is seen the moment it\n\
         happens, even when it quits right after. Spent on incoming peers and on the peers expected to\n\
         cross soonest; the rest are revisited. Each costs one descriptor and about 6 KB: ~4.4 KB of\n\
         kernel socket memory plus ~1.4 KB of process memory for a 1 000-piece torrent (a 0.88 KB slot\n\
         reserved up front, used or not, and ~0.25 KB + pieces/4 bytes while held). Measured with\n\
         `swarmscan bench watch` (bench/README.md). 0 = never watch.",
    ),
    (
        "peer.max_incoming",
        "Connections peers open to us, alive at once, all workers together: a budget of its own, apart\n\
         from peer.max_in_flight (outgoing probes) and peer.max_watched, so no flood of incoming\n\
         connections takes a slot from a probe. Past it, a new connection is reset at once (counted:\n\
         `incoming_refused_full` in the run summary). One descriptor each: the three budgets plus a few\n\
         per worker must fit RLIMIT_NOFILE's hard limit (defaults 4096 + 4096 + 2048).",
    ),
    (
        "peer.incoming_handshake_ms",
        "An incoming connection must complete the BitTorrent handshake (inside MSE when it is\n\
         encrypted) this soon after it is accepted, ms; otherwise it is closed as timed out (counted:\n\
         `incoming_silent_closed`). A peer that dials us speaks first, so this is short; after the\n\
         handshake peer.quiet_timeout_ms applies.",
    ),
    (
        "peer.metadata_max_bytes",
        "Largest info dictionary fetched (BEP 9 ut_metadata) for a torrent known only by hash or\n\
         magnet, bytes: a larger claim in a peer's extension handshake is refused (counted:\n\
         `metadata_refused_too_large`). The buffer grows as pieces arrive (16 KiB each, 4 requested\n\
         at a time) and is checked against the info-hash at the end, so memory follows what a peer\n\
         really sends, never what it claims: at most peer.metadata_fetches times this limit.",
    ),
    (
        "peer.metadata_fetches_per_torrent",
        "Metadata fetches of one torrent under way at once; further offers wait for a later visit\n\
         (counted: `metadata_refused_busy`).",
    ),
    ("peer.metadata_fetches", "Metadata fetches under way at once, all torrents together (see peer.metadata_max_bytes)."),
    ("peer.connects_per_sec", "New outgoing connections per second, all workers together."),
    ("peer.retry_backoff_secs", "Retry delay after a failed probe, seconds; 0 = the revisit interval (peer.revisit_secs)."),
    ("peer.retry_backoff_factor", "Factor applied to the retry delay after each further consecutive failure (>= 1)."),
    ("peer.retry_backoff_max_secs", "Longest retry delay, seconds."),
    ("peer.max_failures", "Forget a peer after this many consecutive failures; 0 = keep retrying forever."),
    ("peer.pex", "Read peer exchange (BEP 11) messages as a peer source."),
    ("peer.peer_id_prefix", "First 8 bytes of our peer-id (Azureus style \"-XXnnnn-\"), so peers can see what we are."),
    ("tracker.announce_secs", "Interval between announces to one tracker, seconds (fractions allowed)."),
    (
        "tracker.respect_interval",
        "true: wait the tracker's own `interval` instead when it is longer than announce_secs (logged\n\
         once per tracker); false: announce every announce_secs whatever `interval` says. A tracker's\n\
         `min interval` is always respected. An interval over a day is capped at a day; a missing, 0 or\n\
         negative one is ignored (logged; `swarmscan report` shows each tracker's interval in use).",
    ),
    ("tracker.numwant", "Peers asked for per announce."),
    ("tracker.scrape_secs", "Interval between scrapes of one tracker, seconds; 0 = never scrape."),
    (
        "tracker.timeout_ms",
        "Timeout of one tracker request (connect, TLS handshake for https, response), ms. For udp://
         trackers the wait before a request is sent again, doubling each time (BEP 15: 15 s).",
    ),
    (
        "tracker.udp_retransmits",
        "Times an unanswered udp:// tracker request is sent again before it fails (0..=8). BEP 15 goes
         up to 8 (the last wait 3840 s); 2 fails a dead tracker's announce after 15 + 30 + 60 s on the
         default timeout_ms, before the next announce is due.",
    ),
    (
        "tracker.ca_files",
        "Extra CA certificates for https:// trackers: PEM files, each with one or more certificates,\n\
         trusted besides the built-in web PKI roots (Mozilla's, from webpki-roots). Certificates are\n\
         always verified. Relative paths are taken from the working directory. A file that is\n\
         missing, unreadable or holds no certificate stops `run` at startup (exit 2).",
    ),
    ("store.batch_rows", "Commit after this many records..."),
    ("store.batch_ms", "...or this many ms after the first uncommitted record, whichever comes first."),
    (
        "store.channel_capacity",
        "Records the channel to the writer holds; when it is full, producers keep records in their\n\
         own overflow and retry (counted as writer back-pressure), they never block or drop.",
    ),
    (
        "store.unwritable_secs",
        "When a commit fails (disk full, I/O error), the writer keeps the records (up to\n\
         channel_capacity of them in memory; past that the channel fills and workers stop starting\n\
         probes) and retries with back-off. When the database has refused every commit for this\n\
         many seconds, the scan stops probing, says why and exits non-zero.",
    ),
    (
        "privacy.ip",
        "How peer IP addresses are stored: \"full\", \"truncate\" (IPv4 /24, IPv6 /48; peers told apart\n\
         by a keyed hash) or \"hmac\" (keyed HMAC-SHA256, hex). A database keeps the mode it was made with.",
    ),
    ("privacy.hmac_key_file", "HMAC key file (32 random bytes, created if missing); \"\" = the database path + \".key\"."),
    (
        "geo.city_db",
        "City or Country database: GeoLite2-City / GeoIP2-City (country, city, continent) or a\n\
         Country edition (country, continent); \"\" = off. Read into memory at start (GeoLite2-City:\n\
         about 60 MB). A file that is missing, unreadable, not a MaxMind DB or of another kind stops\n\
         `run` at startup (exit 2). Peers stored while it is off stay without a country (`report`\n\
         says so); rows are filled when a probe next brings the address.",
    ),
    (
        "geo.asn_db",
        "ASN database: GeoLite2-ASN or GeoIP2-ISP (AS number and organisation); \"\" = off. Checked\n\
         and loaded like geo.city_db (GeoLite2-ASN: about 10 MB).",
    ),
    (
        "geo.reverse_dns",
        "Look up each peer's host domain (the registrable domain of its reverse DNS name, e.g.\n\
         example-isp.co.uk) with PTR queries from worker 0's UDP socket, before privacy.ip anonymises\n\
         the address; answers are cached in the database (a later run does not ask again). Off by\n\
         default: it tells the resolver (and the peers' networks' name servers) whom we scan.",
    ),
    (
        "geo.dns_resolver",
        "Resolver for geo.reverse_dns: \"IP\" or \"IP:port\" (port 53 if not given); \"\" = the first\n\
         nameserver of /etc/resolv.conf. Must be reachable from a net.listen address of its family.",
    ),
    (
        "geo.reverse_dns_per_sec",
        "PTR queries per second at most, retries included (1 to 10000).",
    ),
    ("stats.interval_secs", "Interval between statistics rows and log lines, seconds."),
    (
        "metrics.listen",
        "Serve Prometheus metrics at http://ADDRESS/metrics, e.g. \"127.0.0.1:9185\" (a bare port\n\
         means 127.0.0.1); \"\" = off. Loopback only unless metrics.allow_remote = true.",
    ),
    (
        "metrics.allow_remote",
        "Allow a metrics.listen address that is not loopback (put a firewall or proxy in front).",
    ),
    ("dht.enabled", "Run DHT nodes: look torrents up in the DHT and answer other nodes."),
    (
        "dht.bootstrap",
        "Nodes to join the DHT through, \"host:port\" (names resolved at start; a failure is logged,\n\
         never fatal), besides the nodes remembered in the database. A node bound to a loopback\n\
         address (net.listen 127.x or ::1) can reach only loopback addresses: it never resolves\n\
         names nor sends to any other address.",
    ),
    ("dht.node_ids", "DHT nodes (node ids) in all, 1–8; node i runs on worker i % workers."),
    (
        "dht.lookup_secs",
        "Interval between get_peers lookups of one torrent, seconds (first lookups staggered; a\n\
         torrent still waiting for metadata at least every 60 s). Every 4th lookup of a torrent is a\n\
         BEP 33 scrape (seeds/downloaders estimates in `swarmscan report`).",
    ),
    ("dht.max_lookups", "Lookups of torrents one node runs at once (1–64); the rest wait their turn."),
    ("dht.read_only", "BEP 43 read-only nodes: query the DHT, answer no one (others do not add us)."),
    (
        "dht.announce",
        "announce_peer our listen port to the closest nodes after each lookup. Off by default: a\n\
         measurement scanner does not need to be found, and announcing would put us in the swarms\n\
         we count.",
    ),
    (
        "dht.crawl_rate",
        "`swarmscan crawl`: BEP 51 sample_infohashes queries per second, at most (1–10000); the\n\
         crawl's --rate overrides it. The crawl is a DHT activity: it refuses to run when\n\
         dht.enabled = false.",
    ),
    (
        "bttest.listen",
        "Control address of `swarmscan bttest server`; the test ports listen on the same IP.\n\
         Loopback by default; a server for real paths uses e.g. \"0.0.0.0:6880\". Also the port\n\
         `bttest client HOST` uses when HOST gives none.",
    ),
    (
        "bttest.ports",
        "The server's two test ports: the well-known BitTorrent port first (flows there are compared\n\
         with the same flows on the second, to see throttling or blocking by port).",
    ),
    (
        "sink.tcp",
        "TCP addresses the sink accepts on (every worker, SO_REUSEPORT). Loopback by default; for a\n\
         study, the address taken over, with tuning/sink-redirect.nft sending every port to it.",
    ),
    (
        "sink.udp",
        "UDP addresses the sink receives on (every worker on the same port, SO_REUSEPORT).",
    ),
    (
        "sink.idle_secs",
        "A TCP connection or UDP flow quiet this long is over and stored (the study's T_c = 30 s).",
    ),
    ("sink.keep_bytes", "Bytes of each flow kept for classification; the rest is only counted."),
    ("sink.max_bytes", "Close a TCP connection after this many bytes (0 = only when idle)."),
    (
        "sink.max_connections",
        "TCP connections open at once over all workers; at the cap the oldest is closed (and stored).",
    ),
    (
        "sink.max_udp_flows",
        "UDP flows tracked at once over all workers; at the cap the oldest is stored and forgotten.",
    ),
];

/// Keys a running scan applies when SIGHUP reloads the configuration (see
/// `session::reload`); every other key is read only at start and needs a restart. Revisit
/// changes apply to every visit scheduled from then on (visits already scheduled keep their
/// time); tracker intervals from the next announce or scrape on.
pub const LIVE_KEYS: &[&str] = &[
    "peer.revisit_secs",
    "peer.stop_at_threshold",
    "peer.retry_backoff_secs",
    "peer.retry_backoff_factor",
    "peer.retry_backoff_max_secs",
    "peer.max_failures",
    "tracker.announce_secs",
    "tracker.scrape_secs",
    "stats.interval_secs",
];

/// A configuration error; the message names the key (or file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message.
        message: String,
    },
    /// A `--set` argument without `=`.
    #[error("--set {0:?}: expected KEY=VALUE, e.g. --set peer.threshold=0.9")]
    SetSyntax(String),
    /// A key that does not exist.
    #[error("unknown config key `{key}`{hint}")]
    UnknownKey {
        /// The dotted key.
        key: String,
        /// " (did you mean `...`?)" or "".
        hint: String,
    },
    /// A value of the wrong type or form.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// What was wrong.
        message: String,
    },
}

impl Config {
    /// Loads `file` (or the defaults when `None`) and applies `overrides` (`"section.key=value"`).
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        for set in overrides {
            let (key, value) = parse_set(set)?;
            insert_dotted(&mut table, &key, value)?;
        }
        Config::from_table(table)
    }

    /// Parses a configuration from TOML text (no overrides).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Syntax {
                path: PathBuf::from("<string>"),
                message: e.to_string(),
            })?;
        Config::from_table(table)
    }

    /// Builds a configuration from a parsed table: unknown keys and type errors name the key.
    pub fn from_table(table: toml::Table) -> Result<Config, ConfigError> {
        let defaults = default_table();
        let mut leaves = Vec::new();
        collect_leaves(&table, "", &mut leaves);
        let mut merged = defaults.clone();
        for (key, value) in leaves {
            let default_value = lookup(&defaults, &key).ok_or_else(|| unknown_key(&key))?;
            if default_value.is_table() {
                // Only reached for an empty table given for a section (`peer = {}`): nothing to set.
                if value.as_table().is_some_and(|t| t.is_empty()) {
                    continue;
                }
                return Err(ConfigError::Invalid {
                    key,
                    message: "expected a table (section)".to_string(),
                });
            }
            if default_value.is_integer() {
                let shown = match &value {
                    toml::Value::Integer(_) => None,
                    toml::Value::Float(f) => Some(crate::limits::show_f64(*f)),
                    toml::Value::String(s) => Some(format!("{s:?}")),
                    other => Some(other.type_str().to_string()),
                };
                if let Some(shown) = shown {
                    return Err(ConfigError::Invalid {
                        key,
                        message: format!("expected a whole number, got {shown}"),
                    });
                }
            }
            // Each leaf is tried alone over the defaults so that a deserialisation error can
            // name the key it came from (the TOML deserialiser of a table has no path).
            let mut trial = defaults.clone();
            insert_dotted(&mut trial, &key, value.clone())?;
            if let Err(e) = trial.try_into::<Config>() {
                return Err(ConfigError::Invalid {
                    key,
                    message: clean_serde_message(&e.to_string()),
                });
            }
            insert_dotted(&mut merged, &key, value)?;
        }
        let config: Config = merged.try_into().map_err(|e| ConfigError::Invalid {
            key: "<config>".to_string(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks value ranges (the bounds of [`crate::limits`]); the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use crate::limits::{
            check_count, check_secs, show_f64, MAX_CONNECTIONS, MAX_MS, MAX_SECS, MAX_THREADS,
            MIN_SECS,
        };
        fn bad(key: &str, message: &str) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key: key.to_string(),
                message: message.to_string(),
            })
        }
        let named = |key: &str| {
            let key = key.to_string();
            move |message: String| ConfigError::Invalid { key, message }
        };
        let p = &self.peer;
        let t = &self.tracker;
        let e = &self.engine;
        if !(p.threshold > 0.0 && p.threshold <= 1.0) {
            return bad(
                "peer.threshold",
                &format!("must be in (0, 1], got {}", show_f64(p.threshold)),
            );
        }
        // Seconds: 0 means "off" only where the key says so.
        for (key, v, zero_is_off) in [
            ("peer.revisit_secs", p.revisit_secs, false),
            ("peer.retry_backoff_secs", p.retry_backoff_secs, true),
            (
                "peer.retry_backoff_max_secs",
                p.retry_backoff_max_secs,
                false,
            ),
            ("tracker.announce_secs", t.announce_secs, false),
            ("tracker.scrape_secs", t.scrape_secs, true),
            ("stats.interval_secs", self.stats.interval_secs, false),
            ("store.unwritable_secs", self.store.unwritable_secs, false),
        ] {
            if !(zero_is_off && v == 0.0) {
                check_secs(v, MIN_SECS, MAX_SECS).map_err(|m| {
                    named(key)(if zero_is_off {
                        m.replacen(", got", ", or 0 (off), got", 1)
                    } else {
                        m
                    })
                })?;
            }
        }
        if !(p.retry_backoff_factor.is_finite() && (1.0..=1000.0).contains(&p.retry_backoff_factor))
        {
            return bad(
                "peer.retry_backoff_factor",
                &format!(
                    "must be from 1 to 1000, got {}",
                    show_f64(p.retry_backoff_factor)
                ),
            );
        }
        if p.retry_backoff_max_secs < p.first_retry_secs() {
            return bad(
                "peer.retry_backoff_max_secs",
                "must be >= the first retry delay (peer.retry_backoff_secs, or peer.revisit_secs when that is 0)",
            );
        }
        // Whole numbers: (key, value, lowest, highest).
        for (key, v, lo, hi) in [
            ("engine.workers", e.workers as u64, 0, MAX_THREADS),
            (
                "engine.recv_buffer_size",
                e.recv_buffer_size as u64,
                512,
                1 << 20,
            ),
            ("engine.max_peers", e.max_peers, 1, 1_000_000_000),
            ("peer.quiet_timeout_ms", p.quiet_timeout_ms, 1, MAX_MS),
            ("peer.connect_timeout_ms", p.connect_timeout_ms, 1, MAX_MS),
            ("peer.max_duration_ms", p.max_duration_ms, 1, MAX_MS),
            ("peer.bitfield_grace_ms", p.bitfield_grace_ms, 0, MAX_MS),
            ("peer.message_cap", p.message_cap as u64, 1, 1_000_000),
            (
                "peer.max_in_flight",
                p.max_in_flight as u64,
                1,
                MAX_CONNECTIONS,
            ),
            ("peer.max_watched", p.max_watched as u64, 0, MAX_CONNECTIONS),
            (
                "peer.max_incoming",
                p.max_incoming as u64,
                1,
                MAX_CONNECTIONS,
            ),
            (
                "peer.incoming_handshake_ms",
                p.incoming_handshake_ms,
                1,
                MAX_MS,
            ),
            (
                "peer.metadata_max_bytes",
                p.metadata_max_bytes as u64,
                1,
                64 << 20,
            ),
            (
                "peer.metadata_fetches_per_torrent",
                p.metadata_fetches_per_torrent as u64,
                1,
                1_000,
            ),
            (
                "peer.metadata_fetches",
                p.metadata_fetches as u64,
                1,
                100_000,
            ),
            (
                "peer.connects_per_sec",
                p.connects_per_sec as u64,
                1,
                MAX_CONNECTIONS,
            ),
            ("peer.max_failures", p.max_failures as u64, 0, 255),
            ("tracker.numwant", t.numwant as u64, 1, 100_000),
            ("tracker.timeout_ms", t.timeout_ms, 1, MAX_MS),
            ("tracker.udp_retransmits", t.udp_retransmits as u64, 0, 8),
            (
                "store.batch_rows",
                self.store.batch_rows as u64,
                1,
                1_000_000,
            ),
            ("store.batch_ms", self.store.batch_ms, 1, MAX_MS),
            (
                "store.channel_capacity",
                self.store.channel_capacity as u64,
                1,
                1 << 22,
            ),
            (
                "net.mse_incoming_per_sec",
                self.net.mse_incoming_per_sec as u64,
                1,
                100_000,
            ),
        ] {
            check_count(v, lo, hi).map_err(named(key))?;
        }
        for (key, v) in [
            ("engine.ring_entries", e.ring_entries),
            ("engine.recv_buffers", e.recv_buffers),
        ] {
            if !v.is_power_of_two() || v > 32768 {
                return bad(key, &format!("must be a power of two up to 32768, got {v}"));
            }
        }
        if e.recv_buffers as u64 * e.recv_buffer_size as u64 > 1 << 30 {
            return bad(
                "engine.recv_buffer_size",
                &format!(
                    "engine.recv_buffers × engine.recv_buffer_size must be at most 1 GiB per worker, got {} × {}",
                    e.recv_buffers, e.recv_buffer_size
                ),
            );
        }
        if p.peer_id_prefix.len() > 20 {
            return bad(
                "peer.peer_id_prefix",
                "must be at most 20 bytes (a peer-id is 20 bytes)",
            );
        }
        if self.database.as_os_str().is_empty() {
            return bad("database", "must not be empty");
        }
        if let Err(m) = self.metrics.address() {
            return bad("metrics.listen", &m);
        }
        let d = &self.dht;
        check_secs(d.lookup_secs, MIN_SECS, MAX_SECS).map_err(named("dht.lookup_secs"))?;
        check_count(d.node_ids as u64, 1, crate::dht::host::MAX_NODE_IDS as u64)
            .map_err(named("dht.node_ids"))?;
        check_count(d.max_lookups as u64, 1, 64).map_err(named("dht.max_lookups"))?;
        check_count(
            u64::from(d.crawl_rate),
            1,
            u64::from(crate::crawl::MAX_RATE),
        )
        .map_err(named("dht.crawl_rate"))?;
        for entry in &d.bootstrap {
            check_bootstrap_entry(entry).map_err(named("dht.bootstrap"))?;
        }
        if let Err(m) = self.bttest.test_ports() {
            return bad("bttest.ports", &m);
        }
        if let Err(m) = self.geo.resolver() {
            return bad("geo.dns_resolver", &m);
        }
        if self.geo.reverse_dns_per_sec == 0 || self.geo.reverse_dns_per_sec > 10_000 {
            return bad(
                "geo.reverse_dns_per_sec",
                &format!("must be 1 to 10000, got {}", self.geo.reverse_dns_per_sec),
            );
        }
        self.validate_sink()
    }

    /// The `sink.*` ranges.
    fn validate_sink(&self) -> Result<(), ConfigError> {
        use crate::limits::{check_count, check_secs, MAX_CONNECTIONS, MAX_SECS};
        let k = &self.sink;
        let named = |key: &str| {
            let key = key.to_string();
            move |message: String| ConfigError::Invalid { key, message }
        };
        check_secs(k.idle_secs, 0.01, MAX_SECS).map_err(named("sink.idle_secs"))?;
        check_count(u64::from(k.keep_bytes), 64, 1 << 20).map_err(named("sink.keep_bytes"))?;
        check_count(k.max_bytes, 0, 1 << 36).map_err(named("sink.max_bytes"))?;
        check_count(u64::from(k.max_connections), 1, MAX_CONNECTIONS)
            .map_err(named("sink.max_connections"))?;
        check_count(u64::from(k.max_udp_flows), 1, MAX_CONNECTIONS * 16)
            .map_err(named("sink.max_udp_flows"))?;
        Ok(())
    }

    /// The documented default configuration as TOML text (what `swarmscan config` prints).
    pub fn default_toml() -> String {
        let defaults = default_table();
        let mut out = String::new();
        out.push_str(
            "# swarmscan configuration. Every key is optional; shown here with its default.\n\
             # Override single keys on the command line: --set section.key=value\n\
             # Every number is bounded (seconds: 1 ms to a year; ms: up to a day; counts: each its\n\
             # own range); a value out of range is an error naming the key and the range.\n\
             # Keys marked \"SIGHUP: applied live\" change in a running scan on `kill -HUP` (systemctl\n\
             # reload); the others are read at start only (a reload names those that changed).\n",
        );
        let mut current_section = "";
        for (key, doc) in KEY_DOCS {
            let (section, name) = match key.split_once('.') {
                Some((s, n)) => (s, n),
                None => ("", *key),
            };
            if section != current_section {
                current_section = section;
                let section_doc = SECTION_DOCS
                    .iter()
                    .find(|(s, _)| *s == section)
                    .map(|(_, d)| *d)
                    .unwrap_or("");
                out.push('\n');
                for line in section_doc.lines() {
                    let _ = writeln!(out, "# {line}");
                }
                let _ = writeln!(out, "[{section}]");
            } else {
                out.push('\n');
            }
            for line in doc.lines() {
                let _ = writeln!(out, "# {line}");
            }
            if LIVE_KEYS.contains(key) {
                let _ = writeln!(out, "# SIGHUP: applied live.");
            }
            let value = lookup(&defaults, key).expect("KEY_DOCS names a key of Config");
            let _ = writeln!(out, "{name} = {value}");
        }
        out
    }
}

/// `Config::default()` as a TOML table.
fn default_table() -> toml::Table {
    toml::Table::try_from(Config::default()).expect("the default config serialises")
}

/// Splits `key=value`; the value is a TOML value, or a string when it is not valid TOML or
/// when the key holds a string and the value was not written as a TOML string.
pub fn parse_set(arg: &str) -> Result<(String, toml::Value), ConfigError> {
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| ConfigError::SetSyntax(arg.to_string()))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(ConfigError::SetSyntax(arg.to_string()));
    }
    let raw_trimmed = raw.trim();
    let parsed = format!("v = {raw_trimmed}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"));
    let target_is_string = lookup(&default_table(), key).is_some_and(|v| v.is_str());
    let value = match parsed {
        Some(v) if !target_is_string || v.is_str() => v,
        _ => toml::Value::String(raw.to_string()),
    };
    Ok((key.to_string(), value))
}

/// Sets `value` at the dotted path, creating sections as needed.
fn insert_dotted(
    table: &mut toml::Table,
    key: &str,
    value: toml::Value,
) -> Result<(), ConfigError> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("split yields at least one part");
    let mut current = table;
    let mut walked = String::new();
    for part in parts {
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(part);
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(match lookup(&default_table(), &walked) {
                    Some(v) if !v.is_table() => unknown_key(key),
                    _ => ConfigError::Invalid {
                        key: walked,
                        message: "expected a table (section)".to_string(),
                    },
                })
            }
        };
    }
    current.insert(last.to_string(), value);
    Ok(())
}

/// The value at a dotted path.
fn lookup<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// Every leaf (non-table value, or empty table) of `table` with its dotted path.
fn collect_leaves(table: &toml::Table, prefix: &str, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) if !t.is_empty() => collect_leaves(t, &path, out),
            _ => out.push((path, v.clone())),
        }
    }
}

fn unknown_key(key: &str) -> ConfigError {
    let best = KEY_DOCS
        .iter()
        .map(|(k, _)| (edit_distance(k, key), *k))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d);
    let hint = best
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default();
    ConfigError::UnknownKey {
        key: key.to_string(),
        hint,
    }
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// Drops the TOML deserialiser's line breaks (its location preamble is meaningless here).
fn clean_serde_message(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `--config FILE` and `--set KEY=VALUE`, shared by every subcommand that touches the database.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// TOML configuration file (see `swarmscan config` for every key and its default).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one key, e.g. --set peer.threshold=0.9 or --set database=scan.sqlite (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl ConfigArgs {
    /// Loads the file (if any) and applies the overrides.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.config.as_deref(), &self.set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn set(args: &[&str]) -> Result<Config, ConfigError> {
        Config::load(
            None,
            &args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn printed_default_parses_back_to_default() {
        let text = Config::default_toml();
        let parsed = Config::from_toml_str(&text).unwrap();
        assert_eq!(parsed, Config::default());
        // Every key line has a comment line right above it.
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.contains(" = ") && !line.starts_with('#') {
                assert!(lines[i - 1].starts_with('#'), "undocumented line {line:?}");
            }
        }
    }

    #[test]
    fn every_key_has_a_doc_and_every_doc_a_key() {
        let mut leaves = Vec::new();
        collect_leaves(&default_table(), "", &mut leaves);
        let keys: BTreeSet<String> = leaves.into_iter().map(|(k, _)| k).collect();
        let docs: BTreeSet<String> = KEY_DOCS.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(keys, docs);
        assert_eq!(docs.len(), KEY_DOCS.len(), "a key is documented twice");
        let sections: BTreeSet<&str> = KEY_DOCS
            .iter()
            .filter_map(|(k, _)| k.split_once('.'))
            .map(|(s, _)| s)
            .collect();
        let section_docs: BTreeSet<&str> = SECTION_DOCS.iter().map(|(s, _)| *s).collect();
        assert_eq!(sections, section_docs);
    }

    #[test]
    fn default_is_valid_and_has_the_briefed_values() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.database, PathBuf::from("swarmscan.sqlite"));
        assert_eq!(c.peer.threshold, 0.98);
        assert_eq!(c.peer.revisit_secs, 300.0);
        assert_eq!(c.peer.quiet_timeout_ms, 6000);
        assert_eq!(c.peer.message_cap, 256);
        assert_eq!(c.tracker.announce_secs, 300.0);
        assert!(c.tracker.respect_interval);
        // 0: announce the first listener's port (see session::announce_port).
        assert_eq!(c.net.announce_port, 0);
        assert_eq!(c.privacy.ip, IpMode::Hmac);
        assert!(c.net.listen.iter().all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn set_overrides_with_toml_values_and_bare_strings() {
        let c = set(&[
            "peer.threshold=0.9",
            "net.listen=[\"127.0.0.1:7000\"]",
            "database=\"scan.sqlite\"",
            "privacy.ip=truncate",
            "peer.revisit_secs=2",
            "stats.interval_secs=0.5",
            "tracker.ca_files=[\"ca.pem\", \"/etc/ssl/extra.pem\"]",
        ])
        .unwrap();
        assert_eq!(
            c.tracker.ca_files,
            vec![PathBuf::from("ca.pem"), PathBuf::from("/etc/ssl/extra.pem")]
        );
        assert!(Config::default().tracker.ca_files.is_empty());
        assert_eq!(c.peer.threshold, 0.9);
        assert_eq!(
            c.net.listen,
            vec!["127.0.0.1:7000".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.database, PathBuf::from("scan.sqlite"));
        assert_eq!(c.privacy.ip, IpMode::Truncate);
        assert_eq!(c.peer.revisit_secs, 2.0);
        assert_eq!(c.stats.interval_secs, 0.5);
        // Bare word that is not TOML → string; a number given to a string key → string.
        assert_eq!(
            set(&["database=scan.sqlite"]).unwrap().database,
            PathBuf::from("scan.sqlite")
        );
        assert_eq!(
            set(&["database=2024"]).unwrap().database,
            PathBuf::from("2024")
        );
        // Untouched keys keep their defaults.
        assert_eq!(c.peer.quiet_timeout_ms, 6000);
    }

    #[test]
    fn file_and_set_merge_and_set_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "database = \"a.sqlite\"\n[peer]\nthreshold = 0.5\nmessage_cap = 10\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), &["peer.threshold=0.75".to_string()]).unwrap();
        assert_eq!(c.database, PathBuf::from("a.sqlite"));
        assert_eq!(c.peer.threshold, 0.75);
        assert_eq!(c.peer.message_cap, 10);
        assert_eq!(c.peer.revisit_secs, 300.0);
    }

    #[test]
    fn metrics_listen_is_off_loopback_or_explicitly_remote() {
        assert_eq!(Config::default().metrics.address(), Ok(None));
        let c = set(&["metrics.listen=\"9185\""]).unwrap();
        assert_eq!(
            c.metrics.address(),
            Ok(Some("127.0.0.1:9185".parse().unwrap()))
        );
        let c = set(&["metrics.listen=\"[::1]:9185\""]).unwrap();
        assert_eq!(c.metrics.address(), Ok(Some("[::1]:9185".parse().unwrap())));
        let e = set(&["metrics.listen=\"0.0.0.0:9185\""])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("metrics.listen") && e.contains("allow_remote"),
            "{e}"
        );
        let c = set(&[
            "metrics.listen=\"0.0.0.0:9185\"",
            "metrics.allow_remote=true",
        ])
        .unwrap();
        assert_eq!(
            c.metrics.address(),
            Ok(Some("0.0.0.0:9185".parse().unwrap()))
        );
        let e = set(&["metrics.listen=\"localhost\""])
            .unwrap_err()
            .to_string();
        assert!(e.contains("metrics.listen"), "{e}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = set(&["peer.treshold=0.9"]).unwrap_err().to_string();
        assert!(e.contains("unknown config key `peer.treshold`"), "{e}");
        assert!(e.contains("did you mean `peer.threshold`"), "{e}");
        let e = Config::from_toml_str("[nope]\nx = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown config key `nope.x`"), "{e}");
        let e = Config::from_toml_str("databse = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`databse`"), "{e}");
        // A key below a non-section key.
        let e = set(&["database.x=1"]).unwrap_err().to_string();
        assert!(e.contains("unknown config key `database.x`"), "{e}");
    }

    #[test]
    fn type_errors_name_key_and_expected_type() {
        let e = set(&["peer.threshold=\"high\""]).unwrap_err().to_string();
        assert!(e.contains("`peer.threshold`") && e.contains("f64"), "{e}");
        let e = set(&["peer.message_cap=-1"]).unwrap_err().to_string();
        assert!(e.contains("`peer.message_cap`"), "{e}");
        let e = set(&["net.listen=[\"not an address\"]"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`net.listen`") && e.contains("socket address"),
            "{e}"
        );
        let e = set(&["privacy.ip=everything"]).unwrap_err().to_string();
        assert!(e.contains("`privacy.ip`") && e.contains("hmac"), "{e}");
        let e = set(&["net.utp=always"]).unwrap_err().to_string();
        assert!(e.contains("`net.utp`") && e.contains("prefer"), "{e}");
        assert_eq!(set(&["net.utp=off"]).unwrap().net.utp, UtpMode::Off);
        let e = Config::from_toml_str("peer = 3\n").unwrap_err().to_string();
        assert!(e.contains("`peer`") && e.contains("table"), "{e}");
    }

    #[test]
    fn ranges_are_checked_with_the_key_named() {
        for (arg, key) in [
            ("peer.threshold=0", "peer.threshold"),
            ("peer.threshold=1.5", "peer.threshold"),
            ("peer.revisit_secs=0", "peer.revisit_secs"),
            ("peer.revisit_secs=-3", "peer.revisit_secs"),
            ("peer.quiet_timeout_ms=0", "peer.quiet_timeout_ms"),
            ("store.batch_rows=0", "store.batch_rows"),
            ("engine.ring_entries=1000", "engine.ring_entries"),
            ("peer.retry_backoff_factor=0.5", "peer.retry_backoff_factor"),
            ("net.mse_incoming_per_sec=0", "net.mse_incoming_per_sec"),
            (
                "net.mse_incoming_per_sec=1000000",
                "net.mse_incoming_per_sec",
            ),
        ] {
            let e = set(&[arg]).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{arg}: {e}");
        }
        assert!(set(&["peer.threshold=1"]).is_ok());
        assert_eq!(
            set(&["net.mse_incoming_per_sec=50"])
                .unwrap()
                .net
                .mse_incoming_per_sec,
            50
        );
    }

    /// Every numeric key refuses negative, absurdly large and non-finite values with an
    /// error naming it: none reaches a `Duration`, an allocation or a deadline sum unchecked.
    #[test]
    fn every_numeric_key_is_bounded() {
        let defaults = default_table();
        let mut checked = 0;
        for (key, _) in KEY_DOCS {
            let default = lookup(&defaults, key).unwrap();
            if !(default.is_integer() || default.is_float()) {
                continue;
            }
            for bad in [
                "-1",
                "1099511627776",
                "1e300",
                "-1e300",
                "inf",
                "nan",
                "18446744073709551615",
            ] {
                let arg = format!("{key}={bad}");
                let e = set(&[arg.as_str()])
                    .map(|_| ())
                    .expect_err(&format!("--set {arg} was accepted"))
                    .to_string();
                assert!(e.contains(&format!("`{key}`")), "{arg}: {e}");
                assert!(e.len() < 300, "{arg}: message too long: {e}");
            }
            // Zero is refused unless the key gives it a meaning.
            let zero_means_something = [
                "engine.workers",          // one per core
                "net.announce_port",       // the first listener's port
                "peer.bitfield_grace_ms",  // no grace
                "peer.max_watched",        // never watch
                "peer.max_failures",       // never forget
                "peer.retry_backoff_secs", // the revisit interval
                "tracker.scrape_secs",     // never scrape
                "tracker.udp_retransmits", // one try
                "sink.max_bytes",          // close only when idle
            ];
            let zero = set(&[format!("{key}=0").as_str()]);
            if zero_means_something.contains(key) {
                assert!(zero.is_ok(), "{key}=0: {:?}", zero.err());
            } else {
                let e = zero.map(|_| ()).expect_err(&format!("{key}=0 accepted"));
                assert!(e.to_string().contains(&format!("`{key}`")), "{key}=0: {e}");
            }
            checked += 1;
        }
        assert!(checked >= 25, "only {checked} numeric keys");
    }

    #[test]
    fn malformed_set_and_file_errors() {
        assert!(matches!(
            set(&["peer.threshold"]),
            Err(ConfigError::SetSyntax(_))
        ));
        assert!(matches!(set(&["=1"]), Err(ConfigError::SetSyntax(_))));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[peer\n").unwrap();
        let e = Config::load(Some(&path), &[]).unwrap_err().to_string();
        assert!(
            e.contains("bad.toml") && e.contains("not valid TOML"),
            "{e}"
        );
        let e = Config::load(Some(&dir.path().join("missing.toml")), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.toml"), "{e}");
    }

    #[test]
    fn key_file_defaults_next_to_the_database() {
        let c = set(&["database=/tmp/x/scan.sqlite"]).unwrap();
        assert_eq!(c.hmac_key_path(), PathBuf::from("/tmp/x/scan.sqlite.key"));
        let c = set(&["privacy.hmac_key_file=/k"]).unwrap();
        assert_eq!(c.hmac_key_path(), PathBuf::from("/k"));
    }
}
