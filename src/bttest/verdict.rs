//! From the two sides' reports of every flow to the study's verdicts (Dischinger et al.):
//!
//! * a flow **failed** when a reset ended it that neither end caused: one side saw a reset
//!   and the other sent none;
//! * **blocked based on protocol** when a BitTorrent flow failed and its plain-TCP twin (same
//!   direction, same port) did not; **on direction** when a kind of flow on a port failed one
//!   way and not the other; **on port** when a kind of flow one way failed on the BitTorrent
//!   port and not on the other port;
//! * **rate-limited** (per direction) when the slowest plain-TCP flow was at least twice as
//!   fast as the fastest BitTorrent flow; **throttled by port** when the slowest flow of a
//!   kind and direction on the other port was at least twice as fast as the fastest on the
//!   BitTorrent port ("is BitTorrent on 6881 throttled", "is any TCP on 6881 throttled").
//!
//! Rates are payload bytes per second at the receiving end (the leecher), from connect (or
//! accept) to its last byte; failed flows and flows that did not end cleanly have none.

use serde::Serialize;

use crate::proto::bttest::{Direction, FlowKind, FlowOutcome, FlowReport, FlowSpec};

/// How much faster one group must be than the other to call it throttling.
pub const RATIO: f64 = 2.0;

/// One flow, both sides' reports together.
#[derive(Debug, Clone, Serialize)]
pub struct FlowResult {
    /// Position in the schedule.
    pub index: u16,
    /// Round (0-based).
    pub repeat: u32,
    /// "bittorrent" or "tcp".
    pub kind: &'static str,
    /// "upload" or "download" (seen from the client).
    pub direction: &'static str,
    /// The server's test port.
    pub port: u16,
    /// Whether `port` is the well-known BitTorrent port.
    pub bittorrent_port: bool,
    /// Payload bytes the receiving end got.
    pub bytes: u64,
    /// The receiving end's duration, ms.
    pub duration_ms: f64,
    /// Payload bytes per second at the receiving end; `None` when the flow did not end cleanly.
    pub rate_bytes_per_sec: Option<f64>,
    /// Reset that neither end caused.
    pub failed: bool,
    /// The client's report.
    pub client: SideReport,
    /// The server's report (`None` when it never came).
    pub server: Option<SideReport>,
    #[serde(skip)]
    spec: Option<FlowSpec>,
}

/// One side's report, for output.
#[derive(Debug, Clone, Serialize)]
pub struct SideReport {
    /// How its end ended.
    pub outcome: &'static str,
    /// Resets it caused.
    pub rst_sent: u32,
    /// Resets it saw that it did not cause.
    pub rst_seen: u32,
    /// Payload bytes it sent.
    pub bytes_sent: u64,
    /// Payload bytes it received.
    pub bytes_received: u64,
    /// Its duration, ms.
    pub duration_ms: f64,
    /// The error, if any.
    pub detail: String,
}

impl From<&FlowReport> for SideReport {
    fn from(r: &FlowReport) -> SideReport {
        SideReport {
            outcome: r.outcome.as_str(),
            rst_sent: r.rst_sent,
            rst_seen: r.rst_seen,
            bytes_sent: r.payload_sent,
            bytes_received: r.payload_received,
            duration_ms: r.duration_us as f64 / 1000.0,
            detail: r.detail.clone(),
        }
    }
}

impl FlowResult {
    /// Puts together flow `index` of the schedule from the client's and server's reports.
    pub fn new(
        index: u16,
        spec: FlowSpec,
        bittorrent_port: u16,
        client: &FlowReport,
        server: Option<&FlowReport>,
    ) -> FlowResult {
        let failed = match server {
            Some(s) => {
                (client.rst_seen > 0 && s.rst_sent == 0) || (s.rst_seen > 0 && client.rst_sent == 0)
            }
            None => client.rst_seen > 0,
        };
        let receiver = match spec.direction {
            Direction::Upload => server,
            Direction::Download => Some(client),
        };
        let clean =
            |r: &FlowReport| matches!(r.outcome, FlowOutcome::Complete | FlowOutcome::TimeCapped);
        let (bytes, duration_ms, rate) = match receiver {
            Some(r) => {
                let secs = r.duration_us as f64 / 1e6;
                let rate = (!failed && clean(r) && secs > 0.0 && r.payload_received > 0)
                    .then(|| r.payload_received as f64 / secs);
                (r.payload_received, r.duration_us as f64 / 1000.0, rate)
            }
            None => (0, 0.0, None),
        };
        FlowResult {
            index,
            repeat: 0,
            kind: spec.kind.as_str(),
            direction: spec.direction.as_str(),
            port: spec.port,
            bittorrent_port: spec.port == bittorrent_port,
            bytes,
            duration_ms,
            rate_bytes_per_sec: rate,
            failed,
            client: client.into(),
            server: server.map(SideReport::from),
            spec: Some(spec),
        }
    }

    /// Sets the round.
    pub fn with_repeat(mut self, repeat: u32) -> FlowResult {
        self.repeat = repeat;
        self
    }
}

/// Which blocking the failed flows show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Blocked {
    /// BitTorrent failed where its plain-TCP twin did not.
    pub protocol: bool,
    /// A kind of flow failed one way and not the other (same port).
    pub direction: bool,
    /// A kind of flow failed on the BitTorrent port and not on the other.
    pub port: bool,
    /// Some flow failed at all.
    pub any: bool,
}

/// Which throttling the rates show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RateLimited {
    /// Uploads: the slowest plain-TCP flow ≥ 2 × the fastest BitTorrent flow.
    pub upload: bool,
    /// Downloads: likewise.
    pub download: bool,
    /// `bittorrent_on_bittorrent_port` or `tcp_on_bittorrent_port`.
    pub port: bool,
    /// BitTorrent flows on the other port ≥ 2 × those on the BitTorrent port (one direction).
    pub bittorrent_on_bittorrent_port: bool,
    /// Plain-TCP flows on the other port ≥ 2 × those on the BitTorrent port (one direction).
    pub tcp_on_bittorrent_port: bool,
}

/// Rates of one kind of flow, one direction, one port.
#[derive(Debug, Clone, Serialize)]
pub struct RateGroup {
    /// "bittorrent" or "tcp".
    pub kind: &'static str,
    /// "upload" or "download".
    pub direction: &'static str,
    /// The test port.
    pub port: u16,
    /// Flows with a rate.
    pub flows: usize,
    /// Flows that failed.
    pub failed: usize,
    /// Lowest rate, bytes/s.
    pub min: Option<f64>,
    /// Median rate, bytes/s.
    pub median: Option<f64>,
    /// Highest rate, bytes/s.
    pub max: Option<f64>,
}

/// The verdicts of one test.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Blocking.
    pub blocked: Blocked,
    /// Throttling.
    pub rate_limited: RateLimited,
    /// Rates by kind, direction and port.
    pub rates: Vec<RateGroup>,
}

const KINDS: [FlowKind; 2] = [FlowKind::BitTorrent, FlowKind::PlainTcp];
const DIRECTIONS: [Direction; 2] = [Direction::Upload, Direction::Download];

/// Decides the verdicts from every flow of a test; `ports[0]` is the BitTorrent port.
pub fn decide(flows: &[FlowResult], ports: [u16; 2]) -> Verdict {
    let group = |kind: FlowKind, direction: Direction, port: Option<u16>| {
        flows.iter().filter(move |f| {
            f.spec.is_some_and(|s| {
                s.kind == kind && s.direction == direction && port.is_none_or(|p| s.port == p)
            })
        })
    };
    let failed = |kind, direction, port| group(kind, direction, Some(port)).any(|f| f.failed);
    let rates = |kind, direction, port: Option<u16>| -> Vec<f64> {
        group(kind, direction, port)
            .filter_map(|f| f.rate_bytes_per_sec)
            .collect()
    };
    // The slowest of `fast` at least RATIO times the fastest of `slow` (both measured).
    let throttled = |fast: &[f64], slow: &[f64]| {
        let (Some(fast_min), Some(slow_max)) = (
            fast.iter().copied().reduce(f64::min),
            slow.iter().copied().reduce(f64::max),
        ) else {
            return false;
        };
        fast_min >= RATIO * slow_max
    };
    let [bt_port, other_port] = ports;
    let mut blocked = Blocked {
        any: flows.iter().any(|f| f.failed),
        ..Blocked::default()
    };
    for direction in DIRECTIONS {
        for port in ports {
            if failed(FlowKind::BitTorrent, direction, port)
                && !failed(FlowKind::PlainTcp, direction, port)
            {
                blocked.protocol = true;
            }
        }
    }
    for kind in KINDS {
        for port in ports {
            if failed(kind, Direction::Upload, port) != failed(kind, Direction::Download, port) {
                blocked.direction = true;
            }
        }
        for direction in DIRECTIONS {
            if failed(kind, direction, bt_port) && !failed(kind, direction, other_port) {
                blocked.port = true;
            }
        }
    }
    let mut limited = RateLimited::default();
    for direction in DIRECTIONS {
        let by_protocol = throttled(
            &rates(FlowKind::PlainTcp, direction, None),
            &rates(FlowKind::BitTorrent, direction, None),
        );
        match direction {
            Direction::Upload => limited.upload = by_protocol,
            Direction::Download => limited.download = by_protocol,
        }
        for kind in KINDS {
            let by_port = throttled(
                &rates(kind, direction, Some(other_port)),
                &rates(kind, direction, Some(bt_port)),
            );
            match kind {
                FlowKind::BitTorrent => limited.bittorrent_on_bittorrent_port |= by_port,
                FlowKind::PlainTcp => limited.tcp_on_bittorrent_port |= by_port,
            }
        }
    }
    limited.port = limited.bittorrent_on_bittorrent_port || limited.tcp_on_bittorrent_port;
    let mut groups = Vec::new();
    for port in ports {
        for direction in DIRECTIONS {
            for kind in KINDS {
                let mut r = rates(kind, direction, Some(port));
                r.sort_by(f64::total_cmp);
                groups.push(RateGroup {
                    kind: kind.as_str(),
                    direction: direction.as_str(),
                    port,
                    flows: r.len(),
                    failed: group(kind, direction, Some(port))
                        .filter(|f| f.failed)
                        .count(),
                    min: r.first().copied(),
                    median: median(&r),
                    max: r.last().copied(),
                });
            }
        }
    }
    Verdict {
        blocked,
        rate_limited: limited,
        rates: groups,
    }
}

fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

impl Verdict {
    /// One line: what is blocked.
    pub fn blocked_text(&self) -> String {
        let b = self.blocked;
        let mut bases = Vec::new();
        if b.protocol {
            bases.push("protocol");
        }
        if b.direction {
            bases.push("direction");
        }
        if b.port {
            bases.push("port");
        }
        match (b.any, bases.is_empty()) {
            (false, _) => "no".into(),
            (true, true) => "flows were reset, alike for every kind, direction and port".into(),
            (true, false) => format!("yes, based on {}", bases.join(" and ")),
        }
    }

    /// One line: what is throttled.
    pub fn rate_limited_text(&self, bt_port: u16) -> String {
        let r = self.rate_limited;
        let mut found = Vec::new();
        if r.upload {
            found.push("BitTorrent uploads".to_string());
        }
        if r.download {
            found.push("BitTorrent downloads".to_string());
        }
        if r.bittorrent_on_bittorrent_port {
            found.push(format!("BitTorrent on port {bt_port}"));
        }
        if r.tcp_on_bittorrent_port {
            found.push(format!("any TCP on port {bt_port}"));
        }
        if found.is_empty() {
            "no".into()
        } else {
            format!("yes: {}", found.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: [u16; 2] = [6881, 4711];

    fn report(index: u16, bytes: u64, secs: f64, seen: u32, outcome: FlowOutcome) -> FlowReport {
        FlowReport {
            index,
            payload_received: bytes,
            payload_sent: bytes,
            duration_us: (secs * 1e6) as u64,
            rst_sent: 0,
            rst_seen: seen,
            outcome,
            detail: String::new(),
        }
    }

    /// Every flow of one round, with `rate(spec)` bytes per second and `reset(spec)` deciding
    /// whether the client saw a reset.
    fn round(
        rate: impl Fn(&FlowSpec) -> f64,
        reset: impl Fn(&FlowSpec) -> bool,
    ) -> Vec<FlowResult> {
        super::super::schedule(PORTS, 2)
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let i = i as u16;
                let secs = 1_000_000.0 / rate(spec);
                let (client, server) = if reset(spec) {
                    (
                        report(i, 0, 0.1, 1, FlowOutcome::Reset),
                        report(i, 0, 3.0, 0, FlowOutcome::Abandoned),
                    )
                } else {
                    (
                        report(i, 1_000_000, secs, 0, FlowOutcome::Complete),
                        report(i, 1_000_000, secs, 0, FlowOutcome::Complete),
                    )
                };
                FlowResult::new(i, *spec, PORTS[0], &client, Some(&server))
            })
            .collect()
    }

    #[test]
    fn a_clean_path_shows_nothing() {
        let v = decide(&round(|_| 50e6, |_| false), PORTS);
        assert_eq!(v.blocked, Blocked::default());
        assert_eq!(v.rate_limited, RateLimited::default());
        assert_eq!(v.rates.len(), 8);
        assert!(v
            .rates
            .iter()
            .all(|g| g.median == Some(50e6) && g.flows == 2));
        assert_eq!(v.blocked_text(), "no");
    }

    #[test]
    fn resets_of_bittorrent_flows_are_blocking_by_protocol() {
        let v = decide(&round(|_| 50e6, |s| s.kind == FlowKind::BitTorrent), PORTS);
        assert!(v.blocked.protocol && v.blocked.any);
        assert!(!v.blocked.direction && !v.blocked.port);
        assert_eq!(v.rate_limited, RateLimited::default());
        // Uploads only: direction too; port 6881 only: port (and protocol when only BT).
        let v = decide(
            &round(
                |_| 50e6,
                |s| s.kind == FlowKind::BitTorrent && s.direction == Direction::Upload,
            ),
            PORTS,
        );
        assert!(v.blocked.protocol && v.blocked.direction && !v.blocked.port);
        let v = decide(&round(|_| 50e6, |s| s.port == 6881), PORTS);
        assert!(!v.blocked.protocol && !v.blocked.direction && v.blocked.port);
    }

    #[test]
    fn a_reset_one_end_sent_is_not_blocking() {
        let spec = super::super::schedule(PORTS, 1)[0];
        let mut server = report(0, 0, 1.0, 0, FlowOutcome::ProtocolError);
        server.rst_sent = 1;
        let client = report(0, 0, 1.0, 1, FlowOutcome::Reset);
        assert!(!FlowResult::new(0, spec, 6881, &client, Some(&server)).failed);
        assert!(FlowResult::new(0, spec, 6881, &client, None).failed);
    }

    #[test]
    fn throttling_by_protocol_and_by_port() {
        // BitTorrent at a tenth of the rate everywhere: rate-limited, not by port.
        let v = decide(
            &round(
                |s| {
                    if s.kind == FlowKind::BitTorrent {
                        1e6
                    } else {
                        10e6
                    }
                },
                |_| false,
            ),
            PORTS,
        );
        assert!(v.rate_limited.upload && v.rate_limited.download);
        assert!(!v.rate_limited.port);
        assert_eq!(v.blocked, Blocked::default());
        // Everything on 6881 slow: by port (both questions), not by protocol.
        let v = decide(
            &round(|s| if s.port == 6881 { 1e6 } else { 10e6 }, |_| false),
            PORTS,
        );
        assert!(!v.rate_limited.upload && !v.rate_limited.download);
        assert!(v.rate_limited.port);
        assert!(
            v.rate_limited.bittorrent_on_bittorrent_port && v.rate_limited.tcp_on_bittorrent_port
        );
        // Less than twice as fast is not throttling.
        let v = decide(
            &round(
                |s| {
                    if s.kind == FlowKind::BitTorrent {
                        6e6
                    } else {
                        10e6
                    }
                },
                |_| false,
            ),
            PORTS,
        );
        assert_eq!(v.rate_limited, RateLimited::default());
        assert!(v.rate_limited_text(6881) == "no");
    }
}
