//! The application side of our mainline DHT node (the node itself is sans-IO:
//! [`crate::proto::dht`]): [`host`] runs a worker's nodes on its UDP sockets.

pub mod bootstrap;
pub mod host;
pub mod scan;

use std::time::Duration;

/// What the scan runs its DHT nodes with (from `[dht]`, see `settings.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct DhtSettings {
    pub enabled: bool,
    /// `host:port` entries (checked by `Config::validate`), resolved at start.
    pub bootstrap: Vec<String>,
    /// Nodes in all (node i on worker i % workers).
    pub node_ids: usize,
    /// Interval between lookups of one torrent.
    pub lookup_interval: Duration,
    /// Lookups of torrents one node runs at once.
    pub max_lookups: usize,
    pub read_only: bool,
    /// Announce our listen port after each lookup.
    pub announce: bool,
    /// `swarmscan crawl`'s queries per second (`--rate` overrides it).
    pub crawl_rate: u32,
}
