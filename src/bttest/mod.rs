//! `swarmscan bttest`: does this path block or throttle BitTorrent? A Glasnost-style test
//! (Dischinger et al.): a server and a client run paired transfers and compare them.
//!
//! The client opens a control connection to the server ([`crate::proto::bttest::control`]),
//! then runs the eight flows — upload and download, each as real BitTorrent and as its
//! plain-TCP twin (same bytes, every byte random, [`crate::proto::bttest::flow`]), each on the
//! well-known BitTorrent port and on another port — `repeat` times, the order reversed every
//! other round. At the end both sides exchange their per-flow reports (bytes, duration, the
//! resets each side sent and saw) and the client decides ([`verdict`]), prints, and stores
//! the run ([`store`]) for `swarmscan report --bttest`.
//!
//! Why plain blocking sockets and threads, not the engine: bttest is one control connection
//! and one bulk flow at a time (flows never overlap: they would compete for the path), run
//! for seconds each. The engine is built for thousands of short conversations per core, and
//! its `Conversation` sees received chunks and a close, not the errno that ended a
//! connection; the verdict rests on exactly that (ECONNRESET/EPIPE seen vs. a close we
//! caused), on shutting down one half of a connection, and on what is left unread at close
//! (`FIONREAD`). A `poll(2)` loop over one non-blocking socket gives all three directly.
//! The protocol itself stays sans-IO in `swarmscan-proto` and is tested there.

pub mod client;
pub mod link;
pub mod server;
pub mod store;
pub mod transfer;
pub mod verdict;

use crate::proto::bttest::{Direction, FlowKind, FlowSpec};

/// The flows of one test: the eight flows `repeat` times, every other round in reverse
/// order (so neither kind always runs first on a path that changes during the test).
/// `ports[0]` is the well-known BitTorrent port.
pub fn schedule(ports: [u16; 2], repeat: u32) -> Vec<FlowSpec> {
    let mut round = Vec::with_capacity(8);
    for port in ports {
        for direction in [Direction::Upload, Direction::Download] {
            for kind in [FlowKind::BitTorrent, FlowKind::PlainTcp] {
                round.push(FlowSpec {
                    kind,
                    direction,
                    port,
                });
            }
        }
    }
    let mut flows = Vec::with_capacity(8 * repeat as usize);
    for r in 0..repeat {
        if r % 2 == 0 {
            flows.extend(round.iter().copied());
        } else {
            flows.extend(round.iter().rev().copied());
        }
    }
    flows
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_round_has_the_eight_flows_and_rounds_alternate() {
        let flows = schedule([6881, 4711], 3);
        assert_eq!(flows.len(), 24);
        for round in flows.chunks(8) {
            let distinct: HashSet<_> = round.iter().collect();
            assert_eq!(distinct.len(), 8);
        }
        assert_eq!(flows[0], flows[15]);
        assert_eq!(flows[7], flows[8]);
        assert_eq!(flows[0], flows[16]);
        assert_eq!(flows[0].kind, FlowKind::BitTorrent);
        assert_eq!(flows[1].kind, FlowKind::PlainTcp);
    }
}

#[cfg(test)]
mod config_tests {
    use crate::config::Config;
    use crate::settings::BttestSettings;

    fn load(set: &str) -> Result<Config, String> {
        Config::load(None, &[set.to_string()]).map_err(|e| e.to_string())
    }

    #[test]
    fn test_ports_are_two_distinct_ports_apart_from_the_control_port() {
        let s = BttestSettings::from(&Config::default());
        assert_eq!(s.ports, [6881, 4711]);
        assert_eq!(s.listen, "127.0.0.1:6880".parse().unwrap());
        let s = BttestSettings::from(&load("bttest.ports=[6882, 80]").unwrap());
        assert_eq!(s.ports, [6882, 80]);
        for bad in [
            "[6881]",
            "[6881, 6881]",
            "[6881, 0]",
            "[1, 2, 3]",
            "[6880, 4711]",
        ] {
            let e = load(&format!("bttest.ports={bad}")).unwrap_err();
            assert!(e.contains("`bttest.ports`"), "{bad}: {e}");
        }
        let e = load("bttest.listen=nowhere").unwrap_err();
        assert!(e.contains("`bttest.listen`"), "{e}");
    }
}
