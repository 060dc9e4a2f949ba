//! `swarmscan demo`: scans the built-in simulated swarm for about a minute with the real
//! engine, trackers and store, then prints the report and the simulation's ground truth.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, ConfigArgs};
use crate::inputs::TorrentInput;
use crate::session::{run_scan, RunOptions};
use crate::sim::{SimOptions, SimSwarm};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// How long to scan, seconds (1 to 86400).
    #[arg(long, default_value_t = 60, value_parser = crate::limits::count::<u64>(1, 86_400))]
    pub seconds: u64,
    /// Keep the database here (default: a temporary directory, removed afterwards).
    #[arg(long)]
    pub database: Option<PathBuf>,
    /// Simulated peers per torrent (3 torrents; 1 to 250).
    #[arg(long, default_value_t = 40, value_parser = crate::limits::count::<usize>(1, 250))]
    pub peers: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("finding a free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

pub fn run(args: &DemoArgs) -> i32 {
    match demo(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("swarmscan: demo: {e}");
            1
        }
    }
}

fn demo(args: &DemoArgs) -> Result<(), String> {
    let tmp;
    let database = match &args.database {
        Some(p) => p.clone(),
        None => {
            tmp = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
            tmp.path().join("demo.sqlite")
        }
    };
    let horizon = args.seconds as f64;
    let sim = SimSwarm::start(&SimOptions {
        peers_per_torrent: args.peers.clamp(1, 250),
        horizon_secs: horizon,
        ..SimOptions::default()
    })?;
    eprintln!(
        "swarmscan demo: {} simulated peers in {} torrents on 127.77.x.y, trackers {} and {}; scanning for {} s",
        sim.peers.peers.len(),
        sim.metainfo.len(),
        sim.tracker.http_url(),
        sim.tracker.udp_url(),
        args.seconds
    );
    let listen = free_port()?;
    let overrides = vec![
        format!("database={:?}", database.display().to_string()),
        format!("net.listen=[\"127.0.0.1:{listen}\"]"),
        "peer.revisit_secs=3".into(),
        "peer.quiet_timeout_ms=1500".into(),
        "peer.connect_timeout_ms=1500".into(),
        "peer.retry_backoff_secs=3".into(),
        "peer.retry_backoff_max_secs=10".into(),
        "tracker.announce_secs=10".into(),
        "tracker.scrape_secs=10".into(),
        "tracker.timeout_ms=2000".into(),
        "privacy.ip=\"full\"".into(),
        "stats.interval_secs=5".into(),
    ];
    let config = Config::load(None, &overrides).map_err(|e| e.to_string())?;
    let inputs = sim
        .metainfo
        .iter()
        .map(TorrentInput::from_metainfo)
        .collect::<Result<Vec<_>, _>>()?;
    let summary = run_scan(
        &config,
        inputs,
        RunOptions {
            duration: Some(Duration::from_secs(args.seconds)),
            status_line: if args.json { Some(false) } else { None },
            ..RunOptions::default()
        },
    )?;
    if let Some(name) = sim.ended_thread() {
        return Err(format!(
            "the simulation's thread '{name}' died during the scan (see the panic above): no report"
        ));
    }
    let truth = sim.observable_confirmations(config.peer.threshold);
    let crossed = sim.crossings(config.peer.threshold, summary.seconds);
    let report_args = crate::cli::report_cmd::ReportArgs {
        json: args.json,
        bttest: false,
        plots: None,
        sink: false,
        crawl: false,
        config: ConfigArgs {
            config: None,
            set: vec![format!("database={:?}", database.display().to_string())],
        },
    };
    let code = crate::cli::report_cmd::run_report(&report_args);
    if code != 0 {
        return Err("report failed".into());
    }
    let store = crate::store::Store::open_existing(&database).map_err(|e| e.to_string())?;
    let reports = store.report().map_err(|e| e.to_string())?;
    println!();
    println!(
        "Ground truth from the simulation (threshold {:.0} %):",
        config.peer.threshold * 100.0
    );
    println!(
        "{:<16} {:>14} {:>22} {:>12}",
        "torrent", "crossed (all)", "crossed while visible", "confirmed"
    );
    for (i, m) in sim.metainfo.iter().enumerate() {
        let confirmed = reports
            .torrents
            .iter()
            .find(|t| t.name.as_deref() == Some(m.name.as_str()))
            .map(|t| t.confirmed)
            .unwrap_or(0);
        println!(
            "{:<16} {:>14} {:>22} {:>12}",
            m.name, crossed[i], truth[i], confirmed
        );
    }
    println!(
        "\n{} probes ({} answered) in {:.0} s; {} records committed; served {} connections.",
        summary.probes,
        summary.probes_ok,
        summary.seconds,
        summary.records_committed,
        sim.peers.served.load(std::sync::atomic::Ordering::Relaxed)
    );
    if args.database.is_some() {
        println!(
            "Database kept at {}; try `swarmscan peers --set database={:?}`.",
            database.display(),
            database.display().to_string()
        );
    }
    Ok(())
}
