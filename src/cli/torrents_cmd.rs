//! `swarmscan add` and `swarmscan remove`: the torrents a database scans. Both only write the
//! database; a scan running on it picks the change up (woken by SIGUSR1, else within 2 s).

use crate::config::ConfigArgs;
use crate::inputs::load_inputs;
use crate::proto::hex;
use crate::proto::magnet::TorrentRef;

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Label for the torrents given here (repeatable): reports group torrents by label, e.g.
    /// the study's sets "<1GB", "1-10GB", ">10GB". Labels add to those a torrent has.
    #[arg(long = "label", value_name = "LABEL", value_parser = parse_label)]
    pub labels: Vec<String>,
    /// A TOML list of torrents with their labels: `[[torrent]]` tables with `input` (any form
    /// `run` takes) and `labels` (a list of strings).
    #[arg(long, value_name = "FILE")]
    pub list: Option<std::path::PathBuf>,
    /// What to add (same forms as `run`).
    #[arg(required_unless_present = "list")]
    pub torrents: Vec<String>,
}

pub(crate) fn parse_label(s: &str) -> Result<String, String> {
    crate::store::check_label(s).map(|()| s.to_string())
}

/// One entry of an `add --list` file.
#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ListEntry {
    input: String,
    #[serde(default)]
    labels: Vec<String>,
}

#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ListFile {
    #[serde(default)]
    torrent: Vec<ListEntry>,
}

/// Reads an `add --list` file: (input, labels) pairs; every problem names the file and entry.
fn read_list(path: &std::path::Path) -> Result<Vec<(String, Vec<String>)>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let list: ListFile = toml::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
    if list.torrent.is_empty() {
        return Err(format!("{shown}: no [[torrent]] entries"));
    }
    list.torrent
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            for label in &entry.labels {
                crate::store::check_label(label)
                    .map_err(|e| format!("{shown}: torrent {}: {e}", i + 1))?;
            }
            Ok((entry.input, entry.labels))
        })
        .collect()
}

#[derive(clap::Args, Debug)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// What to take out of the scan: info-hashes (v1 or v2), magnet links, .torrent files, or
    /// torrent names as the database has them.
    #[arg(required = true, value_name = "HASH|MAGNET|FILE|NAME")]
    pub torrents: Vec<String>,
}

/// Parses `90s`, `15m`, `2h`, `3d`, `250ms` or plain seconds (fractions allowed), from 1 ms
/// to a year (the bounds of every duration flag, see [`crate::limits`]).
pub fn add(args: &AddArgs) -> i32 {
    let config = match args.config.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("swarmscan: add: {e}");
            return 2;
        }
    };
    // (inputs, labels) groups: the command line with --label, then each list entry.
    let mut groups = vec![(args.torrents.clone(), args.labels.clone())];
    if let Some(list) = &args.list {
        match read_list(list) {
            Ok(entries) => groups.extend(
                entries
                    .into_iter()
                    .map(|(input, labels)| (vec![input], labels)),
            ),
            Err(e) => {
                eprintln!("swarmscan: add: {e}");
                return 2;
            }
        }
    }
    // Every input is read before anything is stored: a bad one adds nothing.
    let mut loaded = Vec::new();
    for (torrents, labels) in groups {
        match load_inputs(&torrents) {
            Ok(inputs) => loaded.extend(inputs.into_iter().map(|t| (t, labels.clone()))),
            Err(e) => {
                eprintln!("swarmscan: add: {e}");
                return 2;
            }
        }
    }
    let store = match crate::store::Store::open(&config.database) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("swarmscan: add: {e}");
            return 2;
        }
    };
    for (t, labels) in &loaded {
        let added = store
            .upsert_torrent(&t.record)
            // Added again after `remove`: scanned again.
            .and_then(|id| store.mark_added(id).map(|_| id))
            .and_then(|id| store.add_labels(id, labels).map(|()| id));
        match added {
            Ok(id) if labels.is_empty() => {
                println!("added {} {} (id {id})", hex::encode(&t.wire_hash), t.name)
            }
            Ok(id) => println!(
                "added {} {} (id {id}, labels {})",
                hex::encode(&t.wire_hash),
                t.name,
                labels.join(", ")
            ),
            Err(e) => {
                eprintln!("swarmscan: add: {}: {e}", t.name);
                return 1;
            }
        }
    }
    tell_running_scan(&config.database);
    0
}

/// Wakes the scan running on `database`, if any, and says so (it would see the change within
/// two seconds anyway). A crawl or sink holding the database is named, never signalled.
fn tell_running_scan(database: &std::path::Path) {
    use crate::service::instance::{wake_running_scan, Wake};
    match wake_running_scan(database) {
        Wake::Nobody => {}
        Wake::Woken(pid) => {
            println!("the scan running on this database (pid {pid}) picks the change up now")
        }
        Wake::NotAScan { pid, holder } => println!(
            "a `swarmscan {}` (pid {pid}) holds this database and scans no torrents: the next \
             `swarmscan run` on it, once that ends, picks the change up",
            holder.command()
        ),
    }
}

pub fn remove(args: &RemoveArgs) -> i32 {
    let config = match args.config.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("swarmscan: remove: {e}");
            return 2;
        }
    };
    let store = match crate::store::Store::open_existing(&config.database) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("swarmscan: remove: {e}");
            return 2;
        }
    };
    let rows = match store.torrents() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("swarmscan: remove: {e}");
            return 1;
        }
    };
    // Every argument must name a torrent before anything is marked.
    let mut chosen: Vec<&crate::store::TorrentRow> = Vec::new();
    for arg in &args.torrents {
        match find_torrent(&rows, arg) {
            Ok(row) => {
                if !chosen.iter().any(|c| c.id == row.id) {
                    chosen.push(row);
                }
            }
            Err(e) => {
                eprintln!("swarmscan: remove: {e}");
                return 2;
            }
        }
    }
    let at = crate::inputs::now_unix_ms();
    for row in chosen {
        let label = format!(
            "{} {}",
            row.info_hash(),
            row.name.as_deref().unwrap_or("(no name)")
        );
        match store.mark_removed(&[row.id], at) {
            Ok(1) => println!("removed {label} (id {}): its rows stay", row.id),
            Ok(_) => println!("already removed: {label} (id {})", row.id),
            Err(e) => {
                eprintln!("swarmscan: remove: {label}: {e}");
                return 1;
            }
        }
    }
    tell_running_scan(&config.database);
    0
}

/// The torrent `arg` names: an info-hash, magnet link or .torrent file (by hash), else a name.
fn find_torrent<'a>(
    rows: &'a [crate::store::TorrentRow],
    arg: &str,
) -> Result<&'a crate::store::TorrentRow, String> {
    if TorrentRef::looks_like_input(arg) || std::path::Path::new(arg).is_file() {
        let input = load_inputs(&[arg.to_string()])?
            .into_iter()
            .next()
            .ok_or_else(|| format!("{arg}: no torrent in it"))?;
        let v1 = input.record.info_hash_v1.map(|h| hex::encode(&h));
        let v2 = input.record.info_hash_v2.map(|h| hex::encode(&h));
        return rows
            .iter()
            .find(|r| {
                (v1.is_some() && r.info_hash_v1 == v1) || (v2.is_some() && r.info_hash_v2 == v2)
            })
            .ok_or_else(|| format!("{arg}: no torrent with this info-hash in the database"));
    }
    let named: Vec<&crate::store::TorrentRow> = rows
        .iter()
        .filter(|r| r.name.as_deref() == Some(arg))
        .collect();
    match named.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "{arg:?}: no torrent of that name (nor an info-hash, magnet link or .torrent file) in the database"
        )),
        many => Err(format!(
            "{arg:?}: {} torrents have that name; give the info-hash instead: {}",
            many.len(),
            many.iter().map(|r| r.info_hash()).collect::<Vec<_>>().join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn remove_finds_torrents_by_hash_magnet_and_name_and_refuses_the_rest() {
        use crate::store::{Store, TorrentRecord, TorrentSource};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.sqlite")).unwrap();
        let record = |v1: u8, v2: Option<u8>, name: &str| TorrentRecord {
            info_hash_v1: Some([v1; 20]),
            info_hash_v2: v2.map(|b| [b; 32]),
            name: Some(name.into()),
            piece_count: None,
            piece_length: None,
            total_size: None,
            source: TorrentSource::Hash,
            added_at: 0,
            trackers: vec![],
        };
        let a = store.upsert_torrent(&record(1, Some(9), "alpha")).unwrap();
        let b = store.upsert_torrent(&record(2, None, "twin")).unwrap();
        let c = store.upsert_torrent(&record(3, None, "twin")).unwrap();
        let rows = store.torrents().unwrap();
        let find = |arg: &str| super::find_torrent(&rows, arg).map(|r| r.id);
        assert_eq!(find(&"01".repeat(20)), Ok(a));
        assert_eq!(find(&"09".repeat(32)), Ok(a), "by its v2 hash");
        assert_eq!(
            find(&format!("magnet:?xt=urn:btih:{}", "02".repeat(20))),
            Ok(b)
        );
        assert_eq!(find("alpha"), Ok(a));
        let e = find("twin").unwrap_err();
        assert!(
            e.contains("2 torrents have that name")
                && e.contains(&"02".repeat(20))
                && e.contains(&"03".repeat(20)),
            "{e}"
        );
        assert!(find(&"04".repeat(20))
            .unwrap_err()
            .contains("no torrent with this info-hash"));
        assert!(find("beta")
            .unwrap_err()
            .contains("no torrent of that name"));
        assert_ne!(b, c);
    }
}
