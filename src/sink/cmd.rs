//! `swarmscan sink [--for D] [--json]`.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ConfigArgs;

/// Arguments of `swarmscan sink`.
#[derive(clap::Args, Debug)]
pub struct SinkArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Stop by itself after this long: 90s, 15m, 2h, 3d (or plain seconds); 1 ms to a year.
    #[arg(long = "for", value_name = "DURATION", value_parser = crate::cli::run_cmd::parse_duration)]
    pub duration: Option<Duration>,
    /// Print a JSON summary when the sink stops.
    #[arg(long)]
    pub json: bool,
}

/// Runs the sink in the foreground until SIGINT/SIGTERM or `--for`; returns the exit code.
pub fn run(args: &SinkArgs) -> i32 {
    crate::logging::init();
    let config = match args.config.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("swarmscan: sink: {e}");
            return 2;
        }
    };
    if let Err(e) = crate::store::geo::GeoDb::open(&crate::store::geo::GeoPaths::from(&config)) {
        eprintln!("swarmscan: sink: {e}");
        return 2;
    }
    // Handlers before the lock file names this process: SIGUSR1's default action would end
    // it (`add`/`remove` signal only a `run`, but a stray one must not cost the flows).
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("swarmscan: sink: signal handler: {e}");
            return 1;
        }
    }
    if let Err(e) = crate::service::instance::ignore_wake_signal() {
        eprintln!("swarmscan: sink: {e}");
        return 1;
    }
    if let Err(e) = crate::service::instance::ignore_reload_signal("sink") {
        eprintln!("swarmscan: sink: {e}");
        return 1;
    }
    // One run, crawl or sink per database, held until this function returns.
    let _instance = match crate::service::instance::InstanceLock::acquire(
        &config.database,
        crate::service::instance::Holder::Sink,
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("swarmscan: sink: {e}");
            return 2;
        }
    };
    match super::run(&config, args.duration, &stop) {
        Ok(summary) => {
            if args.json {
                match serde_json::to_string_pretty(&summary) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("swarmscan: sink: {e}");
                        return 1;
                    }
                }
            } else {
                println!(
                    "sink: {:.1} s, {} TCP connections and {} UDP flows ({} datagrams) stored as {} rows in {}",
                    summary.seconds,
                    summary.flows.tcp_flows,
                    summary.flows.udp_flows,
                    summary.flows.datagrams,
                    summary.stored,
                    config.database.display()
                );
            }
            0
        }
        Err(e) => {
            eprintln!("swarmscan: sink: {e}");
            1
        }
    }
}
