//! Scan policy: which peer to probe and when. Per-worker peer tables, the revisit wheel and
//! policy, and routing of peers to their owning worker. Pure data structures: time is passed in.

pub mod peer_table;
pub mod revisit;
