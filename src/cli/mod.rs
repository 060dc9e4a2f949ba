//! Command-line interface.

pub mod bttest_cmd;
pub mod config_cmd;
pub mod demo_cmd;
pub mod export_cmd;
pub mod inspect;
pub mod plots;
pub mod probe_cmd;
pub mod report_cmd;
pub mod run_cmd;
pub mod synth_cmd;
pub mod torrents_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "swarmscan",
    version,
    about = "BitTorrent measurement scanner: counts confirmed downloads of swarms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Scan the built-in simulated swarm for about a minute, then print the report.
    Demo(demo_cmd::DemoArgs),
    /// Scan torrents in the foreground: discover peers, probe them again and again, store outcomes.
    Run(run_cmd::RunArgs),
    /// Add torrents to the database (scanned by every later `run` on it, and by the one running now).
    Add(torrents_cmd::AddArgs),
    /// Take torrents out of the scan (the running one and later runs); their rows stay.
    Remove(torrents_cmd::RemoveArgs),
    /// Probe one peer once and print the decoded conversation, like a capture.
    Probe(probe_cmd::ProbeArgs),
    /// Show what a torrent file, magnet link or info-hash contains.
    Inspect(inspect::InspectArgs),
    /// Walk the DHT with BEP 51 sample_infohashes and record the info-hashes nodes hold.
    Crawl(crate::crawl::CrawlArgs),
    /// Benchmarks: probe throughput of the engine against a fake swarm.
    Bench(crate::bench::BenchArgs),
    /// Print the documented default configuration (or the effective one with --config/--set; --check FILE validates).
    Config(config_cmd::ConfigCmdArgs),
    /// Confirmed downloads per torrent, peer sources and probe outcomes (thesis tables 5.5-5.7).
    Report(report_cmd::ReportArgs),
    /// One line per peer: address, progress, threshold crossing, source, client, transport.
    Peers(report_cmd::PeersArgs),
    /// Time series behind thesis figures 5.3 and 5.4, as CSV (or JSON lines).
    Series(report_cmd::SeriesArgs),
    /// Peers, their stored contacts, or discovery requests as CSV, JSON lines or Parquet (streamed).
    Export(export_cmd::ExportArgs),
    /// Does this path block or throttle BitTorrent? A Glasnost-style server and client.
    Bttest(bttest_cmd::BttestArgs),
    /// Passive trace collector: accept and record whatever arrives at the `sink.*` addresses, answer nothing.
    Sink(crate::sink::cmd::SinkArgs),
    /// (for benchmarks and tests) Fill a new database with a synthetic study.
    #[command(name = "synth-db", hide = true)]
    SynthDb(synth_cmd::SynthArgs),
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match cli.command {
        Command::Demo(args) => demo_cmd::run(&args),
        Command::Run(args) => run_cmd::run(&args),
        Command::Add(args) => torrents_cmd::add(&args),
        Command::Remove(args) => torrents_cmd::remove(&args),
        Command::Probe(args) => probe_cmd::probe(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Bench(args) => crate::bench::run(&args),
        Command::Crawl(args) => crate::crawl::run(&args),
        Command::Config(args) => config_cmd::run(&args),
        Command::Report(args) => report_cmd::run_report(&args),
        Command::Peers(args) => report_cmd::run_peers(&args),
        Command::Series(args) => report_cmd::run_series(&args),
        Command::Export(args) => export_cmd::run(&args),
        Command::SynthDb(args) => synth_cmd::run(&args),
        Command::Bttest(args) => bttest_cmd::run(&args),
        Command::Sink(args) => crate::sink::cmd::run(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::error::ErrorKind;
    use clap::{CommandFactory, Parser};

    /// Flags that take a value that is not a number or a duration.
    const NOT_NUMERIC: &[&str] = &[
        "config",
        "set",
        "database",
        "encryption",
        "check",
        "torrent",
        "label",
        "list",
        "plots",
        "out",
        "format",
    ];

    /// Every numeric or duration flag of every subcommand (hidden ones too) refuses negative,
    /// absurdly large and non-finite values with a clap error naming it (exit code 2), through
    /// one of the parsers of `crate::limits`.
    #[test]
    fn every_numeric_flag_is_bounded() {
        fn walk(cmd: &clap::Command, path: &mut Vec<String>, checked: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let Some(long) = arg.get_long() else {
                    continue;
                };
                if !arg.get_action().takes_values() || NOT_NUMERIC.contains(&long) {
                    continue;
                }
                for bad in [
                    "-5",
                    "1000000000000000",
                    "1e300",
                    "inf",
                    "99999999999999999999s",
                ] {
                    let mut argv = vec!["swarmscan".to_string()];
                    argv.extend(path.iter().cloned());
                    argv.push(format!("--{long}={bad}"));
                    let e = Cli::try_parse_from(&argv)
                        .map(|_| ())
                        .expect_err(&format!("{argv:?} was accepted"));
                    assert!(
                        matches!(
                            e.kind(),
                            ErrorKind::ValueValidation | ErrorKind::InvalidValue
                        ),
                        "{argv:?}: {:?}: {e}",
                        e.kind()
                    );
                    assert!(e.to_string().contains(&format!("--{long}")), "{e}");
                }
                checked.push(format!("{} --{long}", path.join(" ")));
            }
            for sub in cmd.get_subcommands() {
                path.push(sub.get_name().to_string());
                walk(sub, path, checked);
                path.pop();
            }
        }
        let mut checked = Vec::new();
        walk(&Cli::command(), &mut Vec::new(), &mut checked);
        for expected in [
            "run --for",
            "series --bucket",
            "bench probes --seconds",
            "bench watch --hold-secs",
            "demo --seconds",
            "probe --quiet-timeout-ms",
            "bench fake-swarm --max-seconds",
            "synth-db --peers",
            "synth-db --seed",
            "bttest client --repeat",
            "bttest client --bytes",
            "bttest server --for",
        ] {
            assert!(
                checked.iter().any(|c| c == expected),
                "{expected} not checked: {checked:?}"
            );
        }
    }
}
