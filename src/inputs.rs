//! Torrents to scan, however they were given: `.torrent` files, directories of them, magnet
//! links, bare info-hashes and `.txt` lists of any of these, or a torrent already in the
//! database.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::proto::magnet::TorrentRef;
use crate::proto::metainfo::Metainfo;
use crate::store::record::{TorrentRecord, TorrentSource};

/// One torrent to scan, however it was given.
#[derive(Debug, Clone)]
pub struct TorrentInput {
    pub record: TorrentRecord,
    pub name: String,
    pub wire_hash: [u8; 20],
    pub alt_hash: Option<[u8; 20]>,
    pub piece_count: u32,
    pub total_size: u64,
    pub trackers: Vec<Vec<String>>,
    /// Peers named by the input itself (magnet `x.pe`).
    pub peers: Vec<SocketAddr>,
}

pub(crate) fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl TorrentInput {
    pub fn from_metainfo(m: &Metainfo) -> Result<TorrentInput, String> {
        let ids = m.info_hashes.wire_ids();
        let wire_hash = *ids.first().ok_or("torrent has no info-hash")?;
        Ok(TorrentInput {
            record: TorrentRecord {
                info_hash_v1: m.info_hashes.v1.map(|h| h.0),
                info_hash_v2: m.info_hashes.v2.map(|h| h.0),
                name: Some(m.name.clone()),
                piece_count: u32::try_from(m.piece_count).ok(),
                piece_length: Some(m.piece_length),
                total_size: Some(m.total_size),
                source: TorrentSource::File,
                added_at: now_unix_ms(),
                trackers: m.trackers.clone(),
            },
            name: m.name.clone(),
            wire_hash,
            alt_hash: ids.get(1).copied(),
            piece_count: u32::try_from(m.piece_count).map_err(|_| "too many pieces")?,
            total_size: m.total_size,
            trackers: m.trackers.clone(),
            peers: Vec::new(),
        })
    }

    pub fn from_ref(r: &TorrentRef) -> Result<TorrentInput, String> {
        let hashes = r.info_hashes();
        let ids = hashes.wire_ids();
        let wire_hash = *ids.first().ok_or("no info-hash")?;
        let (name, trackers, peers, source) = match r {
            TorrentRef::Magnet(m) => (
                m.display_name.clone(),
                if m.trackers.is_empty() {
                    vec![]
                } else {
                    vec![m.trackers.clone()]
                },
                m.peers.clone(),
                TorrentSource::Magnet,
            ),
            TorrentRef::InfoHash(_) => (None, vec![], vec![], TorrentSource::Hash),
        };
        Ok(TorrentInput {
            record: TorrentRecord {
                info_hash_v1: hashes.v1.map(|h| h.0),
                info_hash_v2: hashes.v2.map(|h| h.0),
                name: name.clone(),
                piece_count: None,
                piece_length: None,
                total_size: None,
                source,
                added_at: now_unix_ms(),
                trackers: trackers.clone(),
            },
            name: name.unwrap_or_else(|| crate::proto::hex::encode(&wire_hash)),
            wire_hash,
            alt_hash: ids.get(1).copied(),
            piece_count: 0,
            total_size: 0,
            trackers,
            peers,
        })
    }

    /// A torrent already in the database (from `add` or an earlier run).
    pub fn from_row(row: crate::store::TorrentRow) -> Option<TorrentInput> {
        let v1 = row
            .info_hash_v1
            .as_deref()
            .and_then(crate::proto::hex::decode_array::<20>);
        let v2 = row
            .info_hash_v2
            .as_deref()
            .and_then(crate::proto::hex::decode_array::<32>);
        let hashes = crate::proto::metainfo::InfoHashes {
            v1: v1.map(crate::proto::metainfo::InfoHashV1),
            v2: v2.map(crate::proto::metainfo::InfoHashV2),
        };
        let ids = hashes.wire_ids();
        let wire_hash = *ids.first()?;
        Some(TorrentInput {
            record: TorrentRecord {
                info_hash_v1: v1,
                info_hash_v2: v2,
                name: row.name.clone(),
                piece_count: row.piece_count,
                piece_length: row.piece_length.map(|v| v as u64),
                total_size: row.total_size.map(|v| v as u64),
                source: match row.source.as_str() {
                    "magnet" => TorrentSource::Magnet,
                    "hash" => TorrentSource::Hash,
                    _ => TorrentSource::File,
                },
                added_at: row.added_at,
                trackers: row.trackers.clone(),
            },
            name: row
                .name
                .clone()
                .unwrap_or_else(|| crate::proto::hex::encode(&wire_hash)),
            wire_hash,
            alt_hash: ids.get(1).copied(),
            piece_count: row.piece_count.unwrap_or(0),
            total_size: row.total_size.unwrap_or(0).max(0) as u64,
            trackers: row.trackers,
            peers: Vec::new(),
        })
    }
}

/// Reads torrent inputs: `.torrent` files, directories of them, magnet links, info-hashes, and
/// text files with one magnet link or info-hash per line. Every problem names its input.
pub fn load_inputs(args: &[String]) -> Result<Vec<TorrentInput>, String> {
    let mut out = Vec::new();
    for arg in args {
        if TorrentRef::looks_like_input(arg) {
            let r = TorrentRef::parse_input(arg).map_err(|e| format!("{arg}: {e}"))?;
            out.push(TorrentInput::from_ref(&r).map_err(|e| format!("{arg}: {e}"))?);
            continue;
        }
        let path = Path::new(arg);
        let meta = std::fs::metadata(path).map_err(|e| format!("{arg}: {e}"))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("{arg}: {e}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "torrent"))
                .collect();
            entries.sort();
            if entries.is_empty() {
                return Err(format!("{arg}: directory has no .torrent files"));
            }
            for p in entries {
                out.push(load_torrent_file(&p)?);
            }
        } else if path
            .extension()
            .is_some_and(|x| x == "txt" || x == "magnets")
        {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{arg}: {e}"))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let r =
                    TorrentRef::parse_input(line).map_err(|e| format!("{arg}:{}: {e}", n + 1))?;
                out.push(TorrentInput::from_ref(&r).map_err(|e| format!("{arg}:{}: {e}", n + 1))?);
            }
        } else {
            out.push(load_torrent_file(path)?);
        }
    }
    Ok(out)
}

fn load_torrent_file(path: &Path) -> Result<TorrentInput, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown}: not a regular file"));
    }
    if meta.len() > 64 << 20 {
        return Err(format!("{shown}: larger than 64 MiB, not a torrent file"));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{shown}: {e}"))?;
    let m = Metainfo::from_bytes(&bytes).map_err(|e| format!("{shown}: not a torrent: {e}"))?;
    TorrentInput::from_metainfo(&m).map_err(|e| format!("{shown}: {e}"))
}
