//! The DHT part of `swarmscan report`: per torrent, our `get_peers` lookups (nodes queried,
//! peers received) and the latest BEP 33 seeds/downloaders estimates, and which torrents are
//! still waiting for their metadata (known by magnet or info-hash, no peer has sent it yet).

use rusqlite::params;
use serde::Serialize;

use super::{Store, StoreError};

/// One torrent's DHT line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DhtTorrentReport {
    /// Info-hash, hex (v1, else v2).
    pub info_hash: String,
    pub name: Option<String>,
    /// Lookups finished, nodes queried in them, peers received (distinct per lookup).
    pub lookups: i64,
    pub nodes_queried: i64,
    pub peers_received: i64,
    /// Lookups in which no node answered.
    pub failed: i64,
    /// The latest BEP 33 estimates (None: no node sent bloom filters).
    pub seeds_estimate: Option<f64>,
    pub peers_estimate: Option<f64>,
    /// No peer has sent the metadata yet (the piece count is unknown).
    pub waiting_for_metadata: bool,
}

/// The DHT section of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct DhtReport {
    /// Torrents with DHT lookups or still waiting for metadata, by info-hash.
    pub torrents: Vec<DhtTorrentReport>,
    /// Nodes kept for the next run.
    pub nodes_kept: i64,
}

impl Store {
    /// The DHT section (see the module docs).
    pub fn dht_report(&self) -> Result<DhtReport, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT coalesce(t.info_hash_v1, t.info_hash_v2), t.name, t.piece_count IS NULL,
                        count(l.id), coalesce(sum(l.queried), 0), coalesce(sum(l.peers), 0),
                        coalesce(sum(l.replies = 0), 0),
                        (SELECT seeds_estimate FROM dht_lookups x WHERE x.torrent_id = t.id
                           AND x.seeds_estimate IS NOT NULL ORDER BY x.at DESC LIMIT 1),
                        (SELECT peers_estimate FROM dht_lookups x WHERE x.torrent_id = t.id
                           AND x.peers_estimate IS NOT NULL ORDER BY x.at DESC LIMIT 1)
                 FROM torrents t LEFT JOIN dht_lookups l ON l.torrent_id = t.id
                 GROUP BY t.id
                 HAVING count(l.id) > 0 OR t.piece_count IS NULL
                 ORDER BY 1",
            )
            .map_err(|e| self.err(e))?;
        let torrents = stmt
            .query_map(params![], |r| {
                Ok(DhtTorrentReport {
                    info_hash: r.get(0)?,
                    name: r.get(1)?,
                    waiting_for_metadata: r.get(2)?,
                    lookups: r.get(3)?,
                    nodes_queried: r.get(4)?,
                    peers_received: r.get(5)?,
                    failed: r.get(6)?,
                    seeds_estimate: r.get(7)?,
                    peers_estimate: r.get(8)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        let nodes_kept = self
            .conn
            .query_row("SELECT count(*) FROM dht_nodes", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(DhtReport {
            torrents,
            nodes_kept,
        })
    }
}
