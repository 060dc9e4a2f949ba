//! Command-line interface.

pub mod inspect;

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
    /// Show what a torrent file, magnet link or info-hash contains.
    Inspect(inspect::InspectArgs),
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
        Command::Inspect(args) => inspect::run(&args),
    }
}
