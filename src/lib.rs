//! swarmscan: a BitTorrent measurement scanner that counts confirmed downloads.
//!
//! `proto` is pure protocol code (bytes in, bytes/events out; no sockets, threads or clocks).

pub mod cli;
pub mod proto;
