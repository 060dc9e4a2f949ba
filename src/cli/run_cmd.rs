//! `swarmscan run` and `swarmscan add`.

use std::io::Write;
use std::time::Duration;

use crate::config::ConfigArgs;
use crate::inputs::load_inputs;
use crate::proto::hex;
use crate::session::{run_scan, RunOptions};

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
    /// .torrent files, directories of them, magnet links, info-hashes, or .txt files with one
    /// magnet link or info-hash per line.
    pub torrents: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// What to add (same forms as `run`).
    #[arg(required = true)]
    pub torrents: Vec<String>,
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
    // So is a geo database that cannot be used (the writer opens it again at start; a
    // GeoLite2-City read twice costs a fraction of a second once).
    if let Err(e) = crate::store::geo::GeoDb::open(&crate::store::geo::GeoPaths::from(&config)) {
        eprintln!("swarmscan: run: {e}");
        return 2;
    }
    let inputs = match load_inputs(&args.torrents) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("swarmscan: run: {e}");
            return 2;
        }
    };
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
    let inputs = match load_inputs(&args.torrents) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("swarmscan: add: {e}");
            return 2;
        }
    };
    let store = match crate::store::Store::open(&config.database) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("swarmscan: add: {e}");
            return 2;
        }
    };
    for t in &inputs {
        match store.upsert_torrent(&t.record) {
            Ok(id) => println!("added {} {} (id {id})", hex::encode(&t.wire_hash), t.name),
            Err(e) => {
                eprintln!("swarmscan: add: {}: {e}", t.name);
                return 1;
            }
        }
    }
    0
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
