//! `swarmscan bttest client HOST[:PORT]`: runs the schedule against a server and decides.

use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::link::ControlLink;
use super::transfer::{is_reset, run_flow, FlowLimits};
use super::verdict::{decide, FlowResult, Verdict};
use crate::proto::bttest::{
    Control, Direction, FlowEndpoint, FlowOutcome, FlowParams, FlowReport, FlowSpec, Role, VERSION,
};

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// HOST or HOST:PORT (an IPv6 address with a port in brackets).
    pub server: String,
    /// The port when `server` has none.
    pub default_port: u16,
    /// Rounds of the eight flows.
    pub repeat: u32,
    /// Payload bytes per flow.
    pub flow_bytes: u64,
    /// Time cap per flow.
    pub flow_secs: u32,
    /// Print a line per flow on stderr.
    pub progress: bool,
}

/// One run's results.
#[derive(Debug)]
pub struct ClientRun {
    /// Random id (in the server's log too).
    pub test_id: u64,
    /// The address connected to.
    pub server_addr: SocketAddr,
    /// The server's test ports (BitTorrent port first).
    pub ports: [u16; 2],
    /// Unix ms.
    pub started_at: i64,
    /// Unix ms.
    pub ended_at: i64,
    /// Every flow that ran.
    pub flows: Vec<FlowResult>,
    /// The verdicts.
    pub verdict: Verdict,
    /// Why the run broke off before the end (the flows until then are kept).
    pub error: Option<String>,
}

/// Resolves `HOST`, `HOST:PORT`, `IP`, `[IPv6]:PORT`.
pub fn resolve(server: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = server.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let (host, port) = match server.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>().map_err(|_| {
                format!("server {server:?}: {port:?} is not a port (expected HOST or HOST:PORT)")
            })?,
        ),
        None => (server, default_port),
    };
    if host.is_empty() {
        return Err(format!("server {server:?}: no host name"));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host:?} has no address"))
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn random_u64() -> u64 {
    let bytes = crate::scan::mse_budget::random_bytes(8);
    let mut a = [0u8; 8];
    a[..bytes.len()].copy_from_slice(&bytes);
    u64::from_le_bytes(a)
}

/// Runs a test. `Err` when nothing could be measured (no server, refused); a test that
/// breaks off later returns what it measured with `error` set.
pub fn run(opts: &ClientOptions) -> Result<ClientRun, String> {
    let addr = resolve(&opts.server, opts.default_port)?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("cannot connect to the bttest server at {addr}: {e}"))?;
    let mut link =
        ControlLink::new(stream).map_err(|e| format!("control connection to {addr}: {e}"))?;
    let test_id = random_u64();
    let started_at = unix_ms();
    link.send(&Control::Hello {
        version: VERSION,
        test_id,
    })?;
    let (ports, max_bytes, max_ms) = match link.recv(Duration::from_secs(15), "welcome")? {
        Control::Welcome {
            version,
            ports,
            max_flow_bytes,
            max_flow_ms,
        } if version == VERSION => (ports, max_flow_bytes, max_flow_ms),
        Control::Welcome { version, .. } => {
            return Err(format!(
                "the server speaks bttest protocol version {version}, this client {VERSION}"
            ))
        }
        Control::Refuse { reason } => return Err(format!("the server refused: {reason}")),
        other => return Err(format!("expected welcome, got {other:?}")),
    };
    let flow_ms = opts.flow_secs.saturating_mul(1000);
    if opts.flow_bytes > max_bytes || flow_ms > max_ms {
        return Err(format!(
            "the server takes flows of at most {max_bytes} bytes and {} s",
            max_ms / 1000
        ));
    }
    let flows = super::schedule(ports, opts.repeat);
    link.send(&Control::Schedule {
        flow_bytes: opts.flow_bytes,
        flow_ms,
        flows: flows.clone(),
    })?;
    match link.recv(Duration::from_secs(15), "schedule acceptance")? {
        Control::Ready { index: u16::MAX } => {}
        Control::Refuse { reason } => return Err(format!("the server refused: {reason}")),
        other => return Err(format!("expected ready, got {other:?}")),
    }
    let limits = FlowLimits::for_cap(Duration::from_millis(u64::from(flow_ms)));
    let mut mine: Vec<FlowReport> = Vec::with_capacity(flows.len());
    let mut error = None;
    for (i, spec) in flows.iter().enumerate() {
        let index = i as u16;
        match run_one(&mut link, addr.ip(), *spec, index, opts.flow_bytes, limits) {
            Ok(report) => {
                if opts.progress {
                    eprintln!(
                        "bttest: flow {}/{}: {} {} on port {}: {} ({} payload bytes in {:.2} s)",
                        i + 1,
                        flows.len(),
                        spec.kind.as_str(),
                        spec.direction.as_str(),
                        spec.port,
                        report.outcome.as_str(),
                        report.payload_received.max(report.payload_sent),
                        report.duration_us as f64 / 1e6,
                    );
                }
                mine.push(report);
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let mut theirs: Vec<FlowReport> = Vec::new();
    if error.is_none() {
        let exchanged = link
            .send(&Control::Results {
                reports: mine.clone(),
            })
            .and_then(|()| link.recv(Duration::from_secs(30), "results"));
        match exchanged {
            Ok(Control::Results { reports }) => theirs = reports,
            Ok(other) => error = Some(format!("expected results, got {other:?}")),
            Err(e) => error = Some(e),
        }
        let _ = link.send(&Control::Bye);
    }
    let results: Vec<FlowResult> = mine
        .iter()
        .map(|r| {
            let spec = flows[r.index as usize];
            let server = theirs.iter().find(|s| s.index == r.index);
            FlowResult::new(r.index, spec, ports[0], r, server).with_repeat(u32::from(r.index) / 8)
        })
        .collect();
    let verdict = decide(&results, ports);
    Ok(ClientRun {
        test_id,
        server_addr: addr,
        ports,
        started_at,
        ended_at: unix_ms(),
        flows: results,
        verdict,
        error,
    })
}

/// One flow: start it, connect, run the client's end, exchange `FlowEnd`. `Err` only when
/// the control connection fails.
fn run_one(
    link: &mut ControlLink,
    ip: IpAddr,
    spec: FlowSpec,
    index: u16,
    flow_bytes: u64,
    limits: FlowLimits,
) -> Result<FlowReport, String> {
    let seed = random_u64();
    link.send(&Control::Start { index, seed })?;
    match link.recv(Duration::from_secs(15), "ready")? {
        Control::Ready { index: i } if i == index => {}
        Control::Refuse { reason } => return Err(format!("the server refused: {reason}")),
        other => return Err(format!("expected ready for flow {index}, got {other:?}")),
    }
    let started = Instant::now();
    let addr = SocketAddr::new(ip, spec.port);
    let report = match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
        Ok(stream) => {
            let endpoint = FlowEndpoint::new(FlowParams {
                kind: spec.kind,
                role: match spec.direction {
                    Direction::Upload => Role::Seeder,
                    Direction::Download => Role::Leecher,
                },
                initiator: true,
                payload_bytes: flow_bytes,
                seed,
            });
            let link: &ControlLink = link;
            run_flow(stream, endpoint, index, started, limits, &|| {
                link.peer_ended(index)
            })
        }
        Err(e) => {
            // A connect answered with a reset (refused) while the server listens: not ours.
            let reset = e.kind() == std::io::ErrorKind::ConnectionRefused || is_reset(&e);
            FlowReport {
                index,
                payload_received: 0,
                payload_sent: 0,
                duration_us: started.elapsed().as_micros() as u64,
                rst_sent: 0,
                rst_seen: u32::from(reset),
                outcome: if reset {
                    FlowOutcome::Reset
                } else if e.kind() == std::io::ErrorKind::TimedOut {
                    FlowOutcome::Stalled
                } else {
                    FlowOutcome::Error
                },
                detail: format!("connect to {addr}: {e}"),
            }
        }
    };
    link.send(&Control::FlowEnd { index })?;
    if !link.wait_peer_end(index, limits.hard + Duration::from_secs(20)) {
        return Err(format!(
            "the server did not finish flow {index} in time (control connection silent)"
        ));
    }
    Ok(report)
}

/// The run as a text table plus the verdicts.
pub fn render(run: &ClientRun, server: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "bttest against {server} ({}), test {:016x}: {} flows",
        run.server_addr,
        run.test_id,
        run.flows.len()
    );
    let _ = writeln!(
        out,
        "{:>4} {:>3} {:<10} {:<8} {:>5} {:>10} {:>8} {:>10}  {:<13} {:<13} {:>9} {:>9} {:<6}",
        "flow",
        "rep",
        "kind",
        "dir",
        "port",
        "bytes",
        "secs",
        "KB/s",
        "client",
        "server",
        "c RST s/s",
        "s RST s/s",
        "failed"
    );
    for f in &run.flows {
        let (s_outcome, s_rst) = match &f.server {
            Some(s) => (
                s.outcome.to_string(),
                format!("{}/{}", s.rst_sent, s.rst_seen),
            ),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "{:>4} {:>3} {:<10} {:<8} {:>5} {:>10} {:>8.2} {:>10}  {:<13} {:<13} {:>9} {:>9} {:<6}",
            f.index,
            f.repeat,
            f.kind,
            f.direction,
            f.port,
            f.bytes,
            f.duration_ms / 1000.0,
            f.rate_bytes_per_sec
                .map_or("-".into(), |r| format!("{:.0}", r / 1000.0)),
            f.client.outcome,
            s_outcome,
            format!("{}/{}", f.client.rst_sent, f.client.rst_seen),
            s_rst,
            if f.failed { "yes" } else { "no" },
        );
    }
    let _ = writeln!(out, "\nrates (KB/s: median, min-max over the rounds)");
    for g in &run.verdict.rates {
        let kb = |x: Option<f64>| x.map_or("-".into(), |x| format!("{:.0}", x / 1000.0));
        let _ = writeln!(
            out,
            "  {:<10} {:<8} port {:>5}: {:>10} ({}-{}){}",
            g.kind,
            g.direction,
            g.port,
            kb(g.median),
            kb(g.min),
            kb(g.max),
            if g.failed > 0 {
                format!(", {} failed", g.failed)
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(out, "\nblocked:      {}", run.verdict.blocked_text());
    let _ = writeln!(
        out,
        "rate-limited: {}",
        run.verdict.rate_limited_text(run.ports[0])
    );
    if let Some(e) = &run.error {
        let _ = writeln!(out, "incomplete:   {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn server_forms_resolve_or_say_what_is_wrong() {
        assert_eq!(
            resolve("127.0.0.1", 6880).unwrap(),
            "127.0.0.1:6880".parse().unwrap()
        );
        assert_eq!(
            resolve("127.0.0.1:7000", 6880).unwrap(),
            "127.0.0.1:7000".parse().unwrap()
        );
        assert_eq!(resolve("::1", 6880).unwrap(), "[::1]:6880".parse().unwrap());
        assert_eq!(
            resolve("[::1]:7000", 6880).unwrap(),
            "[::1]:7000".parse().unwrap()
        );
        assert_eq!(resolve("localhost:7000", 1).unwrap().port(), 7000);
        let e = resolve("localhost:http", 1).unwrap_err();
        assert!(e.contains("not a port"), "{e}");
        assert!(resolve(":7000", 1).unwrap_err().contains("no host"));
    }
}
