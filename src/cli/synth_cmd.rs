//! `swarmscan synth-db` (hidden): a synthetic study database for benchmarks and tests of
//! reports, plots and exports (see [`crate::store::synth`]).

use crate::limits;
use crate::store::synth::{fill, SynthOptions};
use crate::store::Store;
use std::path::PathBuf;

/// Arguments of `swarmscan synth-db`.
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// The database to create (must not exist).
    #[arg(long, value_name = "FILE")]
    pub database: PathBuf,
    /// Peers over all torrents.
    #[arg(long, default_value_t = 1_000_000, value_parser = limits::count::<u64>(1, 100_000_000))]
    pub peers: u64,
    /// Torrents, labelled "<1GB", "1-10GB", ">10GB" in turn.
    #[arg(long, default_value_t = 6, value_parser = limits::count::<u32>(1, 10_000))]
    pub torrents: u32,
    /// Also add and fill the GeoIP and host-domain columns of `peers` when the schema lacks them.
    #[arg(long)]
    pub geo_columns: bool,
    /// Seed of the generator.
    #[arg(long, default_value_t = 1, value_parser = limits::count::<u64>(0, u64::from(u32::MAX)))]
    pub seed: u64,
}

/// Runs `swarmscan synth-db`; prints what was generated as JSON.
pub fn run(args: &SynthArgs) -> i32 {
    if args.database.exists() {
        eprintln!(
            "swarmscan: synth-db: {} exists; give a new file",
            args.database.display()
        );
        return 2;
    }
    let result = Store::open(&args.database).and_then(|mut store| {
        fill(
            &mut store,
            &SynthOptions {
                peers: args.peers,
                torrents: args.torrents,
                geo_columns: args.geo_columns,
                seed: args.seed,
            },
        )
    });
    match result {
        Ok(counts) => {
            println!("{}", serde_json::to_string(&counts).unwrap_or_default());
            0
        }
        Err(e) => {
            eprintln!("swarmscan: synth-db: {e}");
            1
        }
    }
}
