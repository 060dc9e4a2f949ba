//! Scan policy: which peer to probe and when. Per-worker peer tables, the revisit wheel and
//! policy, routing of peers to their owning worker, tracker discovery (TLS for https
//! trackers in `tls`), and the per-worker driver the engine calls.

pub mod announce_schedule;
pub mod bench_peers;
pub mod blocklist;
pub mod catalog;
pub mod discovery;
pub mod driver;
pub mod mse_budget;
pub mod own_addr;
pub mod peer_ids;
pub mod peer_table;
pub mod rdns;
pub mod revisit;
pub mod tls;
pub mod udp_counters;
pub mod udp_demux;
pub mod udp_tracker;
