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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::anon::{Anonymizer, IpMode};
    use crate::store::record::{
        DhtLookupRecord, DhtNodeIdRecord, DhtNodeRecord, Record, TorrentRecord, TorrentSource,
    };
    use crate::store::writer::{Writer, WriterOptions};

    fn torrent(byte: u8, pieces: Option<u32>) -> TorrentRecord {
        TorrentRecord {
            info_hash_v1: Some([byte; 20]),
            info_hash_v2: None,
            name: pieces.map(|_| format!("torrent {byte}")),
            piece_count: pieces,
            piece_length: pieces.map(|_| 16_384),
            total_size: pieces.map(|p| u64::from(p) * 16_384),
            source: TorrentSource::Magnet,
            added_at: 1,
            trackers: Vec::new(),
        }
    }

    fn lookup(torrent_id: i64, at: i64, scrape: bool, est: Option<(f64, f64)>) -> Record {
        Record::DhtLookup(DhtLookupRecord {
            at,
            torrent_id,
            duration_ms: 800,
            queried: 10,
            replies: if at == 3 { 0 } else { 8 },
            timeouts: 2,
            peers: if scrape { 0 } else { 4 },
            scrape,
            seeds_estimate: est.map(|e| e.0),
            peers_estimate: est.map(|e| e.1),
        })
    }

    #[test]
    fn lookups_estimates_waiting_torrents_and_kept_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dht.sqlite");
        let store = Store::open(&path).unwrap();
        let known = store.upsert_torrent(&torrent(0xaa, Some(10))).unwrap();
        store.upsert_torrent(&torrent(0xbb, None)).unwrap();
        let _untouched = store.upsert_torrent(&torrent(0xcc, Some(5))).unwrap();
        let options = WriterOptions::immediate();
        let writer = Writer::start(store, Anonymizer::new(IpMode::Hmac, [1; 32]), options).unwrap();
        let mut tx = writer.sender();
        tx.send(lookup(known, 1, false, None));
        tx.send(lookup(known, 2, true, Some((12.4, 30.0))));
        tx.send(lookup(known, 3, false, None));
        tx.send(lookup(known, 4, true, Some((15.6, 31.0))));
        let node = |last: u8, seen_at| DhtNodeRecord {
            id: [last; 20],
            addr: format!("192.0.2.{last}:6881").parse().unwrap(),
            seen_at,
        };
        // Two workers' nodes: both kept; a node seen again is updated, not doubled.
        tx.send(Record::DhtNodes(vec![node(1, 100), node(2, 100)]));
        tx.send(Record::DhtNodes(vec![node(2, 200), node(3, 200)]));
        drop(tx);
        writer.finish().unwrap();

        let store = Store::open(&path).unwrap();
        let r = store.dht_report().unwrap();
        assert_eq!(r.nodes_kept, 3);
        assert_eq!(r.torrents.len(), 2, "{r:?}");
        let k = &r.torrents[0];
        assert_eq!(k.info_hash, "aa".repeat(20));
        assert_eq!(
            (k.lookups, k.nodes_queried, k.peers_received, k.failed),
            (4, 40, 8, 1)
        );
        assert_eq!(
            (k.seeds_estimate, k.peers_estimate),
            (Some(15.6), Some(31.0))
        );
        assert!(!k.waiting_for_metadata);
        let w = &r.torrents[1];
        assert!(w.waiting_for_metadata && w.lookups == 0, "{w:?}");
        let text = crate::cli::report_cmd::render_report(&store.report().unwrap());
        assert!(text.contains("(waiting for metadata)"), "{text}");
        assert!(
            text.contains("DHT nodes kept for the next run: 3"),
            "{text}"
        );
        let mut nodes = store.dht_nodes().unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].seen_at, 200);
        nodes.sort_by_key(|n| n.id);
        assert_eq!(nodes[1].addr, "192.0.2.2:6881".parse().unwrap());
        assert_eq!(nodes[1].seen_at, 200);
    }

    #[test]
    fn node_ids_are_kept_by_node_number_with_the_address_they_were_derived_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.sqlite");
        let store = Store::open(&path).unwrap();
        assert!(store.dht_node_ids().unwrap().is_empty(), "a new database");
        let options = WriterOptions::immediate();
        // Anonymised database: our own address is stored as it is (it is not a peer's).
        let writer = Writer::start(store, Anonymizer::new(IpMode::Hmac, [1; 32]), options).unwrap();
        let mut tx = writer.sender();
        let ours: std::net::IpAddr = "203.0.113.7".parse().unwrap();
        let id = |node: u32, byte: u8, external_ip, updated_at| DhtNodeIdRecord {
            node,
            id: [byte; 20],
            external_ip,
            updated_at,
        };
        // A run of three nodes, then one of two (dht.node_ids lowered) whose node 1 moved.
        tx.send(Record::DhtNodeIds(vec![
            id(0, 1, Some(ours), 100),
            id(1, 2, None, 100),
            id(2, 3, None, 100),
        ]));
        tx.send(Record::DhtNodeIds(vec![
            id(0, 1, Some(ours), 200),
            id(1, 4, Some(ours), 200),
        ]));
        drop(tx);
        writer.finish().unwrap();

        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.dht_node_ids().unwrap(),
            [
                id(0, 1, Some(ours), 200),
                id(1, 4, Some(ours), 200),
                id(2, 3, None, 100),
            ],
            "upserted by node number; node 2's id stays for a run with three nodes again"
        );
        // Rows edited into something that is no id are skipped, not fatal.
        store
            .conn
            .execute_batch(
                "INSERT INTO dht_node_ids VALUES (3, x'0102', NULL, 1);
                 INSERT INTO dht_node_ids VALUES (4, zeroblob(20), 'not an address', 1);
                 INSERT INTO dht_node_ids VALUES (-1, zeroblob(20), NULL, 1);",
            )
            .unwrap();
        assert_eq!(store.dht_node_ids().unwrap().len(), 3);
    }
}
