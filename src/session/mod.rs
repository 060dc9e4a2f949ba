//! A scan session, end to end: torrents in → discovery → workers probing over io_uring → the
//! store. Four steps, each its own module:
//!
//! 1. [`build`]: everything that can fail without touching anything — the config translated
//!    once ([`ScanSettings`](crate::settings::ScanSettings)), blocklist, CA files, the metrics
//!    port bound, listen ports resolved, the descriptor limit raised — then the database:
//!    resume state read, the writer started, the torrents registered into a catalog.
//! 2. [`start`]: one [`ScanDriver`](crate::scan::driver::ScanDriver) per worker (peers
//!    resumed, input peers seeded), discovery, the worker threads, the metrics endpoint,
//!    then READY to systemd.
//! 3. [`monitor`]: this thread's loop — status line, statistics rows and log lines, the
//!    watchdog rule, and the stop conditions (SIGINT/SIGTERM, `--for`, a thread that ended,
//!    a database that stayed unwritable); torrents added and removed while the scan runs
//!    ([`live`]) and SIGHUP ([`reload`]).
//! 4. [`shutdown`]: stop everything, join every thread, flush the writer, and say what the
//!    scan did ([`RunSummary`]) or why it failed.
//!
//! Stopping: workers hand back every live probe (not counted as visits), every producer
//! flushes its records, the writer commits them and closes the database.

mod build;
mod live;
mod monitor;
mod reload;
mod shutdown;
mod start;

pub use build::{announce_port, Reload, RunOptions};
pub use shutdown::RunSummary;

use crate::config::Config;
use crate::inputs::TorrentInput;

/// Runs a scan of `inputs` (plus the torrents already in the database) until the duration
/// passes or a signal arrives.
pub fn run_scan(
    config: &Config,
    inputs: Vec<TorrentInput>,
    opts: RunOptions,
) -> Result<RunSummary, String> {
    let built = build::Built::build(config, inputs, opts)?;
    let mut running = built.start()?;
    let ended = running.monitor();
    running.shutdown(ended)
}
