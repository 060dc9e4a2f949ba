//! `swarmscan run`, `swarmscan add` and `swarmscan probe`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::config::ConfigArgs;
use crate::proto::hex;
use crate::proto::magnet::TorrentRef;
use crate::proto::peer_wire::{self, Message};
use crate::proto::probe::{Direction, Probe, ProbeSettings, Step};
use crate::run::{load_inputs, run_scan, RunOptions};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Stop by itself after this long: 90s, 15m, 2h, 3d (or plain seconds); 1 ms to a year.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Print a JSON summary when the scan ends.
    #[arg(long)]
    pub json: bool,
    /// Label for the torrents given here (repeatable), as with `swarmscan add --label`.
    #[arg(long = "label", value_name = "LABEL", value_parser = parse_label)]
    pub labels: Vec<String>,
    /// .torrent files, directories of them, magnet links, info-hashes, or .txt files with one
    /// magnet link or info-hash per line.
    pub torrents: Vec<String>,
}

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

fn parse_label(s: &str) -> Result<String, String> {
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
pub struct ProbeArgs {
    /// Peer address, e.g. 127.0.0.1:6881 or [::1]:6881.
    pub addr: SocketAddr,
    /// Info-hash (40 hex), magnet link, or .torrent file (gives the piece count).
    pub torrent: String,
    /// Piece count, when the torrent is given by hash only.
    #[arg(long, value_parser = crate::limits::count::<u32>(1, crate::limits::MAX_PIECES))]
    pub pieces: Option<u32>,
    /// Quiet timeout in milliseconds.
    #[arg(long, default_value_t = 6000, value_parser = crate::limits::count::<u64>(1, crate::limits::MAX_MS))]
    pub quiet_timeout_ms: u64,
    /// Connect timeout in milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = crate::limits::count::<u64>(1, crate::limits::MAX_MS))]
    pub connect_timeout_ms: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses `90s`, `15m`, `2h`, `3d`, `250ms` or plain seconds (fractions allowed), from 1 ms
/// to a year (the bounds of every duration flag, see [`crate::limits`]).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::limits::parse_duration(s, crate::limits::MIN_SECS, crate::limits::MAX_SECS)
}

fn init_logging() {
    crate::logging::init();
}

pub fn run(args: &RunArgs) -> i32 {
    init_logging();
    let config = match args.config.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("swarmscan: run: {e}");
            return 2;
        }
    };
    // A bad CA file is a configuration error: named (key and file) before anything starts.
    let tracker_tls = match crate::scan::tls::client_config(&config.tracker.ca_files) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("swarmscan: run: {e}");
            return 2;
        }
    };
    let inputs = match load_inputs(&args.torrents) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("swarmscan: run: {e}");
            return 2;
        }
    };
    if !args.labels.is_empty() {
        // Registered (with their labels) before the scan, which then finds them by hash.
        let labelled = crate::store::Store::open(&config.database).and_then(|store| {
            inputs.iter().try_for_each(|t| {
                let id = store.upsert_torrent(&t.record)?;
                store.add_labels(id, &args.labels)
            })
        });
        if let Err(e) = labelled {
            eprintln!("swarmscan: run: {e}");
            return 2;
        }
    }
    match run_scan(
        &config,
        inputs,
        RunOptions {
            duration: args.duration,
            tracker_tls: Some(tracker_tls),
            ..RunOptions::default()
        },
    ) {
        Ok(summary) => {
            if args.json {
                // Not println!: a failed write (stdout on a full disk) must not panic.
                let json = serde_json::to_string(&summary).unwrap_or_default();
                let _ = writeln!(std::io::stdout(), "{json}");
            } else {
                let refused = match summary.mse_incoming_refused {
                    0 => String::new(),
                    n => {
                        format!(", {n} incoming MSE handshakes refused (net.mse_incoming_per_sec)")
                    }
                };
                crate::logging::say(format_args!(
                    "swarmscan: scanned {} torrent(s) for {:.0}s: {} peers known, {} probes ({} answered), {} confirmed downloads this run ({} seen live on watched connections){refused}; database {}",
                    summary.torrents,
                    summary.seconds,
                    summary.peers_known,
                    summary.probes,
                    summary.probes_ok,
                    summary.confirmed_this_run,
                    summary.crossed_live,
                    config.database.display()
                ));
                let budgets = [
                    (summary.incoming_refused_full, "incoming connections reset (peer.max_incoming full)"),
                    (summary.incoming_silent_closed, "incoming connections closed without a handshake (peer.incoming_handshake_ms)"),
                    (summary.metadata_refused_too_large, "metadata claims refused (over peer.metadata_max_bytes)"),
                    (summary.metadata_refused_busy, "metadata offers turned away (peer.metadata_fetches_per_torrent / peer.metadata_fetches under way)"),
                ];
                for (n, what) in budgets {
                    if n > 0 {
                        crate::logging::say(format_args!("swarmscan: {n} {what}"));
                    }
                }
                if summary.own_address_dropped > 0 {
                    crate::logging::say(format_args!(
                        "swarmscan: {} addresses from trackers and PEX were our own (announced port {}) and were not probed",
                        summary.own_address_dropped, summary.announce_port
                    ));
                }
            }
            0
        }
        Err(e) => {
            crate::logging::say(format_args!("swarmscan: run: {e}"));
            1
        }
    }
}

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
    0
}

/// One message as shown by `swarmscan probe`.
fn describe(m: &Message<'_>) -> String {
    match m {
        Message::Bitfield(b) => format!(
            "bitfield ({} bytes, {} bits set)",
            b.len(),
            b.iter().map(|x| x.count_ones()).sum::<u32>()
        ),
        Message::Have(i) => format!("have {i}"),
        Message::Port(p) => format!("port {p}"),
        Message::Extended { ext_id: 0, payload } => {
            match peer_wire::ext::ExtHandshake::decode(payload) {
                Ok(h) => format!(
                    "extension handshake v={:?} p={:?} m={:?} metadata_size={:?}",
                    h.client().unwrap_or(""),
                    h.p,
                    h.m.iter()
                        .map(|(k, v)| format!("{}={v}", String::from_utf8_lossy(k)))
                        .collect::<Vec<_>>(),
                    h.metadata_size
                ),
                Err(e) => format!("extension handshake (invalid: {e})"),
            }
        }
        Message::Extended { ext_id, payload } => {
            format!("extended id {ext_id} ({} bytes)", payload.len())
        }
        other => other.name().to_string(),
    }
}

/// Logs both directions of a conversation as decoded messages.
struct Transcript {
    start: Instant,
    sent: peer_wire::MessageReader,
    recv: peer_wire::MessageReader,
    sent_handshake: bool,
    recv_handshake: bool,
}

impl Transcript {
    fn log(&mut self, outgoing: bool, bytes: &[u8]) {
        let ms = self.start.elapsed().as_millis();
        let arrow = if outgoing { "->" } else { "<-" };
        let (reader, hs_done) = if outgoing {
            (&mut self.sent, &mut self.sent_handshake)
        } else {
            (&mut self.recv, &mut self.recv_handshake)
        };
        reader.feed(bytes);
        if !*hs_done {
            match reader.read_handshake() {
                Ok(Some(h)) => {
                    *hs_done = true;
                    let id = crate::proto::client_id::from_peer_id(&h.peer_id);
                    println!(
                        "{ms:>6} ms {arrow} handshake info_hash={} peer_id={} ({id}) reserved={}{}{}",
                        hex::encode(&h.info_hash),
                        crate::proto::bencode::DebugBytes(&h.peer_id),
                        if h.reserved.extended() { "ext " } else { "" },
                        if h.reserved.fast() { "fast " } else { "" },
                        if h.reserved.dht() { "dht" } else { "" },
                    );
                }
                Ok(None) => return,
                Err(e) => {
                    println!("{ms:>6} ms {arrow} not a BitTorrent handshake: {e}");
                    *hs_done = true;
                    return;
                }
            }
        }
        loop {
            match reader.read_message() {
                Ok(Some(m)) => println!("{ms:>6} ms {arrow} {}", describe(&m)),
                Ok(None) => break,
                Err(e) => {
                    println!("{ms:>6} ms {arrow} invalid message: {e}");
                    break;
                }
            }
        }
    }
}

pub fn probe(args: &ProbeArgs) -> i32 {
    let (info_hash, pieces) = match resolve_torrent(&args.torrent) {
        Ok((h, p)) => (h, args.pieces.or(p).unwrap_or(0)),
        Err(e) => {
            eprintln!("swarmscan: probe: {e}");
            return 2;
        }
    };
    let settings = ProbeSettings {
        quiet_timeout_ms: args.quiet_timeout_ms,
        ..ProbeSettings::default()
    };
    let mut probe = Probe::new(
        Direction::Outgoing {
            info_hash,
            piece_count: pieces,
        },
        0,
    );
    let mut t = Transcript {
        start: Instant::now(),
        sent: peer_wire::MessageReader::default(),
        recv: peer_wire::MessageReader::default(),
        sent_handshake: false,
        recv_handshake: false,
    };
    let no_lookup = |_: &[u8; 20]| None;
    let now = |t: &Transcript| t.start.elapsed().as_millis() as u64;
    if !args.json {
        println!("     0 ms connecting to {}", args.addr);
    }
    let mut stream = match TcpStream::connect_timeout(
        &args.addr,
        Duration::from_millis(args.connect_timeout_ms),
    ) {
        Ok(s) => s,
        Err(e) => {
            probe.on_closed(now(&t), e.raw_os_error().or(Some(libc::ETIMEDOUT)));
            return finish(args, &t, probe);
        }
    };
    let mut out = Vec::new();
    probe.on_connected(&settings, now(&t), &mut out);
    let quiet_logger = args.json;
    let send = |t: &mut Transcript, s: &mut TcpStream, out: &mut Vec<u8>| -> bool {
        if out.is_empty() {
            return true;
        }
        if !quiet_logger {
            t.log(true, out);
        }
        let ok = s.write_all(out).is_ok();
        out.clear();
        ok
    };
    send(&mut t, &mut stream, &mut out);
    let mut buf = vec![0u8; 65536];
    loop {
        let deadline = probe.deadline(&settings);
        let wait = deadline.saturating_sub(now(&t)).max(1);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(wait)));
        match stream.read(&mut buf) {
            Ok(0) => {
                probe.on_closed(now(&t), None);
                break;
            }
            Ok(n) => {
                if !args.json {
                    t.log(false, &buf[..n]);
                }
                let mut step = probe.on_bytes(&settings, &no_lookup, now(&t), &buf[..n], &mut out);
                if step == Step::Ask {
                    // One look is all `probe` takes: the answer ends it (no watching).
                    probe.stop(&settings, now(&t), &mut out);
                    step = Step::Finished;
                }
                send(&mut t, &mut stream, &mut out);
                if step == Step::Finished {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                let step = probe.on_deadline(&settings, now(&t), &mut out);
                if step == Step::Ask {
                    probe.stop(&settings, now(&t), &mut out);
                }
                if step != Step::Continue {
                    send(&mut t, &mut stream, &mut out);
                    break;
                }
            }
            Err(e) => {
                probe.on_closed(now(&t), e.raw_os_error());
                break;
            }
        }
    }
    finish(args, &t, probe)
}

fn finish(args: &ProbeArgs, t: &Transcript, probe: Probe) -> i32 {
    let r = probe.into_report();
    if args.json {
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
    } else {
        println!(
            "{:>6} ms end: {:?}; progress {}; client {}",
            t.start.elapsed().as_millis(),
            r.end,
            match r.progress() {
                Some(p) => format!(
                    "{:.1}% ({} of {} pieces, from {:?})",
                    p * 100.0,
                    r.pieces_have,
                    r.piece_count,
                    r.progress_source.unwrap()
                ),
                None if r.progress_source.is_some() => format!(
                    "{} pieces (piece count unknown: pass --pieces or a .torrent)",
                    r.pieces_have
                ),
                None => "unknown".to_string(),
            },
            r.client.as_deref().unwrap_or("-")
        );
    }
    if r.handshake {
        0
    } else {
        1
    }
}

/// Info-hash and (when known) piece count of a probe target.
fn resolve_torrent(s: &str) -> Result<([u8; 20], Option<u32>), String> {
    if TorrentRef::looks_like_input(s) {
        let r = TorrentRef::parse_input(s).map_err(|e| format!("{s}: {e}"))?;
        let h = r
            .info_hashes()
            .primary_wire_id()
            .ok_or_else(|| format!("{s}: no info-hash"))?;
        return Ok((h, None));
    }
    let inputs = load_inputs(&[s.to_string()])?;
    let t = inputs.first().ok_or_else(|| format!("{s}: no torrent"))?;
    Ok((t.wire_hash, Some(t.piece_count)))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("unit"));
        assert!(parse_duration("-3s").is_err());
        assert!(parse_duration("").is_err());
    }
}
