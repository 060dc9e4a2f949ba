//! swarmscan: a BitTorrent measurement scanner that counts confirmed downloads.
//!
//! The application crate of a three-crate workspace (map: `docs/DESIGN.md`, section 0):
//! [`proto`] (`swarmscan-proto`) is pure protocol code (bytes in, bytes/events out; no
//! sockets, threads or clocks); [`engine`] (`swarmscan-engine`) drives io_uring and the
//! probes' sockets and knows nothing of BitTorrent; here, [`scan`] decides what to probe and
//! when, [`store`] owns the SQLite database, [`session`] runs a scan end to end, [`cli`] holds
//! the commands.

pub mod bench;
pub mod bttest;
pub mod cli;
pub mod config;
pub mod crawl;
pub mod dht;
pub mod inputs;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod scan;
pub mod service;
pub mod session;
pub mod settings;
pub mod sim;
pub mod sink;
pub mod store;
pub mod threads;

/// The io_uring engine crate, under the name the application has always used for it.
pub use swarmscan_engine as engine;
/// The sans-IO protocol crate, under the name the application has always used for it.
pub use swarmscan_proto as proto;
