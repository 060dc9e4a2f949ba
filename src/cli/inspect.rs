//! `swarmscan inspect`: show what a .torrent file, magnet link or info-hash contains.

use std::io::Read;
use std::path::Path;

use serde_json::{json, Value as Json};

use crate::proto::magnet::{Magnet, TorrentRef};
use crate::proto::metainfo::{InfoHashes, Metainfo};

/// Largest .torrent file we read (the bencode decoder's own limit).
const MAX_TORRENT_SIZE: u64 = 64 << 20;

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// A .torrent file, a magnet link or a 40-hex info-hash.
    pub input: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What the input turned out to be.
enum Inspected {
    Torrent(Box<Metainfo>),
    Ref(TorrentRef),
}

/// Runs the command; returns the exit code (0 ok, 2 bad input).
pub fn run(args: &InspectArgs) -> i32 {
    match load(&args.input) {
        Ok(found) => {
            let out = if args.json {
                to_json(&found).to_string()
            } else {
                to_text(&found)
            };
            println!("{out}");
            0
        }
        Err(msg) => {
            // One line, whatever the error text contains.
            let msg = msg.replace(['\n', '\r'], " ");
            eprintln!("swarmscan: inspect: {}: {msg}", args.input.trim());
            2
        }
    }
}

fn load(input: &str) -> Result<Inspected, String> {
    let path = Path::new(input);
    // A magnet or hash is only taken as such when no file of that name exists.
    if TorrentRef::looks_like_input(input) && std::fs::symlink_metadata(path).is_err() {
        return TorrentRef::parse_input(input)
            .map(Inspected::Ref)
            .map_err(|e| e.to_string());
    }
    let bytes = read_torrent_file(path)?;
    Metainfo::from_bytes(&bytes)
        .map(|m| Inspected::Torrent(Box::new(m)))
        .map_err(|e| e.to_string())
}

fn io_problem(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => format!("cannot read: {e}"),
    }
}

/// Reads a regular file of at most [`MAX_TORRENT_SIZE`] bytes. FIFOs, devices and
/// directories are refused before they are opened for reading, so nothing can block.
fn read_torrent_file(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| io_problem(&e))?;
    if meta.is_dir() {
        return Err("is a directory, not a torrent file".into());
    }
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_TORRENT_SIZE {
        return Err(format!(
            "file too large ({} bytes, limit {MAX_TORRENT_SIZE})",
            meta.len()
        ));
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK: if the path was swapped for a FIFO after the check, open() must not wait.
        opts.custom_flags(0o4000);
    }
    let file = opts.open(path).map_err(|e| io_problem(&e))?;
    let meta = file.metadata().map_err(|e| io_problem(&e))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut bytes = Vec::new();
    file.take(MAX_TORRENT_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_problem(&e))?;
    if bytes.len() as u64 > MAX_TORRENT_SIZE {
        return Err(format!("file too large (limit {MAX_TORRENT_SIZE} bytes)"));
    }
    Ok(bytes)
}

/// `1.5 MiB`-style size.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn hashes_json(h: &InfoHashes) -> (Json, Json, Json) {
    (
        h.v1.map_or(Json::Null, |v| json!(v.to_string())),
        h.v2.map_or(Json::Null, |v| json!(v.to_string())),
        h.v2.map_or(Json::Null, |v| {
            json!(crate::proto::hex::encode(&v.truncated()))
        }),
    )
}

fn to_json(found: &Inspected) -> Json {
    match found {
        Inspected::Torrent(m) => {
            let (v1, v2, v2t) = hashes_json(&m.info_hashes);
            json!({
                "source": "torrent",
                "version": m.version.as_str(),
                "info_hash_v1": v1,
                "info_hash_v2": v2,
                "info_hash_v2_truncated": v2t,
                "name": m.name,
                "piece_length": m.piece_length,
                "pieces": m.piece_count,
                "total_size": m.total_size,
                "padding_size": m.padding_size,
                "pad_files": m.pad_file_count,
                "single_file": m.single_file,
                "files": m.files.iter().map(|f| json!({"path": f.display_path(), "length": f.length})).collect::<Vec<_>>(),
                "trackers": m.trackers,
                "url_list": m.url_list,
                "peers": Vec::<String>::new(),
                "private": m.private,
                "creation_date": m.creation_date,
                "comment": m.comment,
                "created_by": m.created_by,
                "info_size": m.info_size,
                "magnet": Magnet::from_metainfo(m).to_string(),
            })
        }
        Inspected::Ref(r) => {
            let (v1, v2, v2t) = hashes_json(&r.info_hashes());
            let (source, name, trackers, url_list, peers, magnet) = match r {
                TorrentRef::Magnet(m) => (
                    "magnet",
                    json!(m.display_name),
                    if m.trackers.is_empty() {
                        json!([])
                    } else {
                        // A magnet's trackers form one tier (BEP 9 has no tiers).
                        json!([m.trackers])
                    },
                    json!(m.web_seeds),
                    json!(m.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>()),
                    m.to_string(),
                ),
                TorrentRef::InfoHash(h) => (
                    "info-hash",
                    Json::Null,
                    json!([]),
                    json!([]),
                    json!([]),
                    Magnet {
                        info_hashes: *h,
                        ..Magnet::default()
                    }
                    .to_string(),
                ),
            };
            json!({
                "source": source,
                "version": Json::Null,
                "info_hash_v1": v1,
                "info_hash_v2": v2,
                "info_hash_v2_truncated": v2t,
                "name": name,
                "piece_length": Json::Null,
                "pieces": Json::Null,
                "total_size": Json::Null,
                "padding_size": Json::Null,
                "pad_files": Json::Null,
                "single_file": Json::Null,
                "files": Json::Null,
                "trackers": trackers,
                "url_list": url_list,
                "peers": peers,
                "private": Json::Null,
                "creation_date": Json::Null,
                "comment": Json::Null,
                "created_by": Json::Null,
                "info_size": Json::Null,
                "magnet": magnet,
            })
        }
    }
}

fn push_line(out: &mut String, label: &str, value: impl std::fmt::Display) {
    out.push_str(&format!("{label:<15}{value}\n"));
}

fn hashes_text(out: &mut String, h: &InfoHashes) {
    if let Some(v1) = h.v1 {
        push_line(out, "info-hash v1:", v1);
    }
    if let Some(v2) = h.v2 {
        push_line(out, "info-hash v2:", v2);
        push_line(
            out,
            "  (on wire):",
            crate::proto::hex::encode(&v2.truncated()),
        );
    }
}

fn trackers_text(out: &mut String, tiers: &[Vec<String>]) {
    if tiers.is_empty() {
        push_line(out, "trackers:", "none");
        return;
    }
    out.push_str("trackers:\n");
    for (i, tier) in tiers.iter().enumerate() {
        for url in tier {
            out.push_str(&format!("  tier {:<3} {url}\n", i + 1));
        }
    }
}

fn to_text(found: &Inspected) -> String {
    let mut out = String::new();
    match found {
        Inspected::Torrent(m) => {
            push_line(&mut out, "format:", m.version.as_str());
            hashes_text(&mut out, &m.info_hashes);
            push_line(&mut out, "name:", &m.name);
            push_line(
                &mut out,
                "total size:",
                format!("{} ({} bytes)", human_size(m.total_size), m.total_size),
            );
            push_line(
                &mut out,
                "piece length:",
                format!("{} ({} bytes)", human_size(m.piece_length), m.piece_length),
            );
            push_line(&mut out, "pieces:", m.piece_count);
            push_line(&mut out, "private:", if m.private { "yes" } else { "no" });
            if let Some(d) = m.creation_date {
                push_line(&mut out, "created:", format!("{d} (unix time)"));
            }
            if let Some(c) = &m.created_by {
                push_line(&mut out, "created by:", c);
            }
            if let Some(c) = &m.comment {
                push_line(&mut out, "comment:", c.replace(['\n', '\r'], " "));
            }
            push_line(&mut out, "metadata size:", format!("{} bytes", m.info_size));
            trackers_text(&mut out, &m.trackers);
            for url in &m.url_list {
                push_line(&mut out, "web seed:", url);
            }
            let pads = if m.pad_file_count > 0 {
                format!(", {} pad files not shown", m.pad_file_count)
            } else {
                String::new()
            };
            out.push_str(&format!("files ({}{pads}):\n", m.files.len()));
            for f in &m.files {
                out.push_str(&format!("  {:>14}  {}\n", f.length, f.display_path()));
            }
        }
        Inspected::Ref(r) => {
            hashes_text(&mut out, &r.info_hashes());
            if let TorrentRef::Magnet(m) = r {
                if let Some(dn) = &m.display_name {
                    push_line(&mut out, "name:", dn);
                }
                trackers_text(
                    &mut out,
                    &if m.trackers.is_empty() {
                        vec![]
                    } else {
                        vec![m.trackers.clone()]
                    },
                );
                for url in &m.web_seeds {
                    push_line(&mut out, "web seed:", url);
                }
                for p in &m.peers {
                    push_line(&mut out, "peer:", p);
                }
            }
            out.push_str("(size and files are unknown until the metadata is fetched)\n");
        }
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 << 30), "5.0 GiB");
        assert_eq!(human_size(u64::MAX), "16384.0 PiB");
    }
}
