//! `swarmscan run`: a scan in the foreground (the session, with SIGHUP reload and the
//! one-scan-per-database lock).

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::torrents_cmd::parse_label;
use crate::config::ConfigArgs;
use crate::inputs::load_inputs;
use crate::service::instance::{Holder, InstanceLock};
use crate::session::{run_scan, Reload, RunOptions};

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
    // SIGUSR1 (`add`/`remove` waking us) and SIGHUP (reload) get their handlers before the pid
    // file names this process: their default action would end it.
    let wake = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for (sig, flag) in [
        (signal_hook::consts::SIGUSR1, &wake),
        (signal_hook::consts::SIGHUP, &hup),
    ] {
        if let Err(e) = signal_hook::flag::register(sig, flag.clone()) {
            eprintln!("swarmscan: run: signal handler: {e}");
            return 1;
        }
    }
    // One run, crawl or sink per database, held until this function returns.
    let _instance = match InstanceLock::acquire(&config.database, Holder::Run) {
        Ok(l) => l,
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
            wake: Some(wake),
            reload: Some(Reload {
                signal: hup,
                config: args.config.clone(),
            }),
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
                for line in udp_plane_lines(&summary) {
                    crate::logging::say(format_args!("swarmscan: {line}"));
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

/// The UDP plane's part of the closing summary: a line each for uTP, the DHT and dropped
/// UDP tracker replies, when they did anything.
fn udp_plane_lines(summary: &crate::session::RunSummary) -> Vec<String> {
    let mut lines = Vec::new();
    let u = &summary.utp;
    if u.connects_started + u.accepted + u.incoming_refused > 0 {
        lines.push(format!(
            "uTP: {} connects ({} connected, {} timed out, {} refused, {} failed), {} incoming accepted ({} refused), {} reset by the peer",
            u.connects_started,
            u.connected,
            u.connect_timed_out,
            u.connect_refused,
            u.connect_failed,
            u.accepted,
            u.incoming_refused,
            u.reset_by_peer
        ));
    }
    let d = &summary.dht;
    if d.queries_sent + d.queries_answered + d.lookups_started + d.lookups_no_nodes > 0 {
        lines.push(format!(
            "DHT: {} queries sent ({} replies, {} timed out), {} answered; {} lookups ({} without an answer, {} could not start: no nodes known), {} peers found; {} good nodes at the stop",
            d.queries_sent,
            d.replies,
            d.timeouts,
            d.queries_answered,
            d.lookups_finished,
            d.lookups_failed,
            d.lookups_no_nodes,
            d.peers_found,
            d.good_nodes
        ));
    }
    let t = &summary.udp_trackers;
    if t.replies_forged + t.replies_late + t.replies_short > 0 {
        lines.push(format!(
            "UDP tracker replies dropped: {} forged (transaction id not ours for that address), {} late, {} short",
            t.replies_forged, t.replies_late, t.replies_short
        ));
    }
    lines
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
