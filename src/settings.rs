//! Everything a scan takes from the configuration, derived in one place.
//!
//! One `From<&Config>` per runtime settings struct (the engine's, the probes', the revisit
//! policy's, the watch's, metadata limits, discovery's, the writer's), gathered by
//! `ScanSettings::from(&Config)`: the only translation from [`Config`] (what the user writes)
//! to what the scan runs with. Keeping it in one place lets a test walk every documented key,
//! change it, and check that the derived settings change: a key that nothing reads fails that
//! test. The layers below (`store`, `scan`, the engine and protocol crates) never read the
//! config themselves.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, Encryption, IpMode, UtpMode};
use crate::engine::EngineConfig;
use crate::proto::probe::ProbeSettings;
use crate::scan::catalog::MetadataLimits;
use crate::scan::driver::WatchSettings;
use crate::scan::revisit::RevisitPolicy;
use crate::store::geo::GeoPaths;
use crate::store::writer::{Writer, WriterOptions};
use crate::store::StoreError;

/// The `tracker.*` settings discovery runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackerSettings {
    /// Our announce interval.
    pub announce_secs: f64,
    /// Use a tracker's longer `interval`.
    pub respect_interval: bool,
    /// Scrape interval (0 = never).
    pub scrape_secs: f64,
    /// Peers asked for per announce.
    pub numwant: u32,
    /// One request, connect to response (UDP: the first retransmission's wait).
    pub timeout: Duration,
    /// Retransmissions of a UDP tracker request before it fails.
    pub udp_retransmits: u32,
    /// Extra CA files for https trackers.
    pub ca_files: Vec<PathBuf>,
}

/// The settings of one scan.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanSettings {
    /// SQLite database.
    pub database: PathBuf,
    /// Engine: workers (0 = one per core, resolved at start), in-flight and held budgets,
    /// connect rate and deadline, listeners (port 0 resolved at start), rings.
    pub engine: EngineConfig,
    /// Every probe's settings; `peer_id` holds the configured prefix (the rest is made
    /// unique at start) and `listen_port` the configured `net.announce_port` (0 = resolved
    /// from the listeners at start).
    pub probe: ProbeSettings,
    /// When to visit peers again.
    pub policy: RevisitPolicy,
    /// Watched connections (`budget` is the total over all workers).
    pub watch: WatchSettings,
    /// Metadata fetches (BEP 9) for torrents known by hash or magnet.
    pub metadata: MetadataLimits,
    /// MSE/PE use.
    pub encryption: Encryption,
    /// uTP use (`net.utp`).
    pub utp: UtpMode,
    /// DH computations per second and worker for incoming MSE handshakes.
    pub mse_incoming_per_sec: u32,
    /// Probe IPv6 peers.
    pub ipv6: bool,
    /// Known peers kept in memory, over all workers.
    pub max_peers: u64,
    /// Opt-out blocklist file ("" = none).
    pub blocklist_file: PathBuf,
    /// Discovery.
    pub tracker: TrackerSettings,
    /// The batched writer.
    pub writer: WriterOptions,
    /// How addresses are stored, and the HMAC key file.
    pub privacy: (IpMode, PathBuf),
    /// Statistics rows and log lines.
    pub stats_interval: Duration,
    /// The Prometheus endpoint's address (`None` = off), checked by `Config::validate`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `metrics.allow_remote` (already applied to `metrics_listen`; kept to be shown).
    pub metrics_allow_remote: bool,
    /// Our DHT nodes.
    pub dht: crate::dht::DhtSettings,
    /// `swarmscan bttest server`'s addresses.
    pub bttest: BttestSettings,
    /// What `swarmscan sink` runs with (`sink.*`).
    pub sink: crate::sink::SinkSettings,
    /// Reverse DNS of peers (`geo.reverse_dns`, `geo.dns_resolver`, `geo.reverse_dns_per_sec`).
    pub reverse_dns: ReverseDnsSettings,
}

/// The `bttest.*` settings `swarmscan bttest` runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BttestSettings {
    /// The server's control address (and the client's default port).
    pub listen: std::net::SocketAddr,
    /// The test ports: the well-known BitTorrent port, then the other one.
    pub ports: [u16; 2],
}

impl From<&Config> for BttestSettings {
    /// Validated configs only (`bttest.ports` checked by `Config::validate`).
    fn from(config: &Config) -> BttestSettings {
        BttestSettings {
            listen: config.bttest.listen,
            ports: config.bttest.test_ports().unwrap_or([6881, 4711]),
        }
    }
}

/// The `geo.*` reverse DNS settings; the system resolver is read at start.
#[derive(Debug, Clone, PartialEq)]
pub struct ReverseDnsSettings {
    /// `geo.reverse_dns`.
    pub on: bool,
    /// `geo.dns_resolver`, checked by `Config::validate`; `None` = /etc/resolv.conf's.
    pub resolver: Option<std::net::SocketAddr>,
    /// Queries per second at most.
    pub per_sec: u32,
}

impl From<&Config> for EngineConfig {
    /// `[engine]` and the `peer.*` budgets; workers 0 and listen port 0 are resolved at start.
    fn from(config: &Config) -> EngineConfig {
        let peer = &config.peer;
        EngineConfig {
            workers: config.engine.workers,
            max_in_flight: peer.max_in_flight as usize,
            max_held: peer.max_watched as usize,
            max_incoming: peer.max_incoming as usize,
            connects_per_sec: u64::from(peer.connects_per_sec),
            connect_timeout_ms: peer.connect_timeout_ms,
            listen: config.net.listen.clone(),
            pin_cores: config.engine.pin_workers,
            recv_buffers: config.engine.recv_buffers.min(32768) as u16,
            recv_buffer_size: config.engine.recv_buffer_size,
            ring_entries: config.engine.ring_entries,
            // No UDP sockets until the application has a UDP plane (issue 9).
            ..EngineConfig::default()
        }
    }
}

impl From<&Config> for ProbeSettings {
    /// Every probe's settings; `peer_id` holds the configured prefix (the rest is made unique
    /// at start) and `listen_port` the configured `net.announce_port`.
    fn from(config: &Config) -> ProbeSettings {
        let peer = &config.peer;
        let mut peer_id = [b'0'; 20];
        let prefix = peer.peer_id_prefix.as_bytes();
        let n = prefix.len().min(20);
        peer_id[..n].copy_from_slice(&prefix[..n]);
        ProbeSettings {
            peer_id,
            listen_port: config.net.announce_port,
            // Resolved at start from the listen addresses when `dht.enabled` (session::build).
            dht_port: 0,
            client: concat!("swarmscan/", env!("CARGO_PKG_VERSION")).to_string(),
            quiet_timeout_ms: peer.quiet_timeout_ms,
            incoming_handshake_ms: peer.incoming_handshake_ms,
            grace_ms: peer.bitfield_grace_ms,
            message_cap: peer.message_cap,
            max_duration_ms: peer.max_duration_ms,
            ext_handshake_cache: Default::default(),
            fetch_metadata: true,
            pex: peer.pex,
        }
    }
}

impl From<&Config> for RevisitPolicy {
    fn from(config: &Config) -> RevisitPolicy {
        let peer = &config.peer;
        RevisitPolicy {
            revisit_secs: peer.revisit_secs,
            retry_secs: peer.first_retry_secs(),
            retry_factor: peer.retry_backoff_factor,
            max_failures: peer.max_failures,
            min_revisit_secs: (peer.revisit_secs / 10.0).max(1.0),
            max_backoff_secs: peer.retry_backoff_max_secs,
            threshold: peer.threshold,
            done_revisit_secs: if peer.stop_at_threshold {
                0.0
            } else {
                peer.revisit_secs
            },
        }
    }
}

impl From<&Config> for WatchSettings {
    /// `budget` is the total over all workers.
    fn from(config: &Config) -> WatchSettings {
        let peer = &config.peer;
        WatchSettings {
            budget: peer.max_watched as usize,
            threshold: peer.threshold,
            sample_ms: (peer.revisit_secs * 1000.0) as u64,
            ..WatchSettings::default()
        }
    }
}

impl From<&Config> for MetadataLimits {
    fn from(config: &Config) -> MetadataLimits {
        let peer = &config.peer;
        MetadataLimits {
            max_bytes: u64::from(peer.metadata_max_bytes),
            per_torrent: peer.metadata_fetches_per_torrent,
            total: peer.metadata_fetches,
        }
    }
}

impl From<&Config> for TrackerSettings {
    fn from(config: &Config) -> TrackerSettings {
        let tracker = &config.tracker;
        TrackerSettings {
            announce_secs: tracker.announce_secs,
            respect_interval: tracker.respect_interval,
            scrape_secs: tracker.scrape_secs,
            numwant: tracker.numwant,
            timeout: Duration::from_millis(tracker.timeout_ms),
            udp_retransmits: tracker.udp_retransmits,
            ca_files: tracker.ca_files.clone(),
        }
    }
}

impl From<&Config> for WriterOptions {
    /// `[store]` and `peer.threshold`.
    fn from(config: &Config) -> WriterOptions {
        WriterOptions {
            batch_rows: config.store.batch_rows,
            batch_ms: config.store.batch_ms,
            channel_capacity: config.store.channel_capacity,
            threshold: config.peer.threshold,
            unwritable: Duration::try_from_secs_f64(config.store.unwritable_secs)
                .unwrap_or(Duration::from_secs(365 * 86_400)),
            geo: config.into(),
            reverse_dns: config.geo.reverse_dns,
        }
    }
}

impl From<&Config> for GeoPaths {
    /// The `geo.*` keys.
    fn from(config: &Config) -> GeoPaths {
        GeoPaths {
            city_db: config.geo.city_db.clone(),
            asn_db: config.geo.asn_db.clone(),
        }
    }
}

impl From<&Config> for ScanSettings {
    /// The settings `config` asks for (validated configs only: see [`Config::load`]).
    fn from(config: &Config) -> ScanSettings {
        ScanSettings {
            database: config.database.clone(),
            engine: config.into(),
            probe: config.into(),
            policy: config.into(),
            watch: config.into(),
            metadata: config.into(),
            encryption: config.net.encryption,
            utp: config.net.utp,
            mse_incoming_per_sec: config.net.mse_incoming_per_sec,
            ipv6: config.net.ipv6,
            max_peers: config.engine.max_peers,
            blocklist_file: config.net.blocklist_file.clone(),
            tracker: config.into(),
            writer: config.into(),
            privacy: (config.privacy.ip, config.hmac_key_path()),
            stats_interval: Duration::from_secs_f64(config.stats.interval_secs.max(1.0)),
            metrics_listen: config.metrics.address().ok().flatten(),
            metrics_allow_remote: config.metrics.allow_remote,
            reverse_dns: ReverseDnsSettings {
                on: config.geo.reverse_dns,
                resolver: config.geo.resolver().ok().flatten(),
                per_sec: config.geo.reverse_dns_per_sec,
            },
            sink: config.into(),
            bttest: config.into(),
            dht: config.into(),
        }
    }
}

impl From<&Config> for crate::dht::DhtSettings {
    /// `[dht]`.
    fn from(config: &Config) -> crate::dht::DhtSettings {
        let d = &config.dht;
        crate::dht::DhtSettings {
            enabled: d.enabled,
            bootstrap: d.bootstrap.clone(),
            node_ids: d.node_ids as usize,
            lookup_interval: Duration::from_secs_f64(d.lookup_secs.max(0.001)),
            max_lookups: d.max_lookups as usize,
            read_only: d.read_only,
            announce: d.announce,
            crawl_rate: d.crawl_rate,
        }
    }
}

/// Opens `config.database`, loads the anonymiser key and starts the writer.
pub fn start_writer(config: &Config) -> Result<Writer, StoreError> {
    Writer::start_with(
        &config.database,
        config.privacy.ip,
        &config.hmac_key_path(),
        config.into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KEY_DOCS;

    /// A valid value for `key` other than its default.
    fn another_value(key: &str, default: &toml::Value) -> String {
        match key {
            "peer.threshold" => return "0.5".into(),
            "peer.peer_id_prefix" => return "\"-XX0001-\"".into(),
            "net.encryption" => return "\"require\"".into(),
            "net.utp" => return "\"prefer\"".into(),
            "privacy.ip" => return "\"full\"".into(),
            "net.listen" => return "[\"127.0.0.1:7001\"]".into(),
            "dht.bootstrap" => return "[\"127.0.0.1:6881\"]".into(),
            "tracker.ca_files" => return "[\"ca.pem\"]".into(),
            "metrics.listen" => return "\"127.0.0.1:9185\"".into(),
            "bttest.listen" => return "\"127.0.0.1:7880\"".into(),
            "bttest.ports" => return "[6882, 4711]".into(),
            "sink.tcp" | "sink.udp" => return "[\"127.0.0.1:7002\"]".into(),
            "geo.dns_resolver" => return "\"127.0.0.53\"".into(),
            // Must stay at least the first retry delay.
            "peer.retry_backoff_max_secs" => return "7200.0".into(),
            _ => {}
        }
        match default {
            toml::Value::Boolean(b) => (!b).to_string(),
            // Powers of two stay powers of two; everything else gets one more.
            toml::Value::Integer(i) if *i > 1 && (*i as u64).is_power_of_two() => {
                (i / 2).to_string()
            }
            toml::Value::Integer(i) => (i + 1).to_string(),
            toml::Value::Float(f) if *f == 0.0 => "2.0".into(),
            toml::Value::Float(f) => (f * 2.0).to_string(),
            toml::Value::String(s) => format!("\"{s}.other\""),
            other => panic!("no alternative value for {key} = {other}"),
        }
    }

    #[test]
    fn every_documented_key_changes_what_the_scan_runs_with() {
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        let base = ScanSettings::from(&Config::default());
        let mut unread = Vec::new();
        for (key, _) in KEY_DOCS {
            let mut value = &toml::Value::Table(defaults.clone());
            for part in key.split('.') {
                value = &value.as_table().unwrap()[part];
            }
            let set = format!("{key}={}", another_value(key, value));
            let config = Config::load(None, std::slice::from_ref(&set))
                .unwrap_or_else(|e| panic!("--set {set}: {e}"));
            if ScanSettings::from(&config) == base {
                unread.push(*key);
            }
        }
        assert!(
            unread.is_empty(),
            "documented keys that change nothing: {unread:?}"
        );
    }
}
