//! `swarmscan bttest server`: the control listener and the two test-port listeners.
//!
//! One test at a time (flows running side by side would compete for the path and spoil each
//! other's rates): a client that arrives while a test runs is refused with a message saying
//! so. A test-port connection is taken only from the address of the control connection.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::link::ControlLink;
use super::transfer::{run_flow, FlowLimits};
use crate::proto::bttest::{
    Control, Direction, FlowEndpoint, FlowOutcome, FlowParams, FlowReport, FlowSpec, Role, VERSION,
};
use crate::settings::BttestSettings;

/// Most payload bytes per flow a server accepts (a client asking for more is refused).
pub const MAX_FLOW_BYTES: u64 = 1 << 30;
/// Longest flow a server accepts, ms.
pub const MAX_FLOW_MS: u32 = 600_000;
/// How long a client may take between two control messages.
const CONTROL_IDLE: Duration = Duration::from_secs(120);
/// How long the server waits for a flow's connection after `Ready`.
const ACCEPT_WAIT: Duration = Duration::from_secs(15);
/// Control connections served at once (one runs a test, the others are told it is busy);
/// more are closed at once, so a flood of connections cannot pile up threads.
const MAX_SESSIONS: usize = 16;

/// The bound listeners of a server.
pub struct Server {
    control: TcpListener,
    test: Arc<[TcpListener; 2]>,
    ports: [u16; 2],
    busy: Arc<Mutex<()>>,
    sessions: Arc<AtomicUsize>,
}

fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, String> {
    let listener =
        TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("{addr}: {e}"))?;
    Ok(listener)
}

impl Server {
    /// Binds the control address and the test ports on its IP; the error names the address.
    pub fn bind(settings: &BttestSettings) -> Result<Server, String> {
        let control = bind(settings.listen, "bttest.listen")?;
        let ip = settings.listen.ip();
        let test = [
            bind(SocketAddr::new(ip, settings.ports[0]), "bttest.ports")?,
            bind(SocketAddr::new(ip, settings.ports[1]), "bttest.ports")?,
        ];
        Ok(Server {
            control,
            test: Arc::new(test),
            ports: settings.ports,
            busy: Arc::new(Mutex::new(())),
            sessions: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The control address (its port resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.control
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves tests until `stop` is set or `until` passes.
    pub fn serve(&self, stop: &AtomicBool, until: Option<Instant>) {
        while !stop.load(Ordering::Relaxed) && until.is_none_or(|t| Instant::now() < t) {
            match self.control.accept() {
                Ok((stream, from)) => {
                    if self.sessions.load(Ordering::Relaxed) >= MAX_SESSIONS {
                        tracing::info!(
                            "bttest: {from} turned away: {MAX_SESSIONS} connections already"
                        );
                        continue;
                    }
                    self.sessions.fetch_add(1, Ordering::Relaxed);
                    let sessions = Arc::clone(&self.sessions);
                    let test = Arc::clone(&self.test);
                    let busy = Arc::clone(&self.busy);
                    let ports = self.ports;
                    let spawned = std::thread::Builder::new()
                        .name("bttest-session".into())
                        .spawn(move || {
                            if let Err(e) = session(stream, &test, ports, &busy) {
                                tracing::warn!("bttest: test from {from} ended: {e}");
                            }
                            sessions.fetch_sub(1, Ordering::Relaxed);
                        });
                    if let Err(e) = spawned {
                        self.sessions.fetch_sub(1, Ordering::Relaxed);
                        tracing::warn!("bttest: cannot start a thread for {from}: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => {
                    tracing::warn!("bttest: accept: {e}");
                    std::thread::sleep(Duration::from_millis(50))
                }
            }
        }
    }
}

/// Refuses with `reason` and returns it as the error.
fn refuse(link: &mut ControlLink, reason: String) -> Result<(), String> {
    let _ = link.send(&Control::Refuse {
        reason: reason.clone(),
    });
    Err(reason)
}

/// One client's test.
fn session(
    stream: TcpStream,
    test: &[TcpListener; 2],
    ports: [u16; 2],
    busy: &Mutex<()>,
) -> Result<(), String> {
    stream
        .set_nonblocking(false)
        .map_err(|e| format!("control socket: {e}"))?;
    let mut link = ControlLink::new(stream).map_err(|e| format!("control socket: {e}"))?;
    let (version, test_id) = match link.recv(Duration::from_secs(10), "hello")? {
        Control::Hello { version, test_id } => (version, test_id),
        other => return refuse(&mut link, format!("expected hello, got {other:?}")),
    };
    if version != VERSION {
        return refuse(
            &mut link,
            format!(
                "this server speaks bttest protocol version {VERSION}, the client {version}: \
                 run the same swarmscan version on both ends"
            ),
        );
    }
    let Ok(_running) = busy.try_lock() else {
        return refuse(
            &mut link,
            "busy: another test is running on this server; try again in a few minutes".into(),
        );
    };
    link.send(&Control::Welcome {
        version: VERSION,
        ports,
        max_flow_bytes: MAX_FLOW_BYTES,
        max_flow_ms: MAX_FLOW_MS,
    })?;
    let (flow_bytes, flow_ms, flows) = match link.recv(CONTROL_IDLE, "schedule")? {
        Control::Schedule {
            flow_bytes,
            flow_ms,
            flows,
        } => (flow_bytes, flow_ms, flows),
        other => return refuse(&mut link, format!("expected a schedule, got {other:?}")),
    };
    if !(1..=MAX_FLOW_BYTES).contains(&flow_bytes) || !(1..=MAX_FLOW_MS).contains(&flow_ms) {
        return refuse(
            &mut link,
            format!(
                "flows of {flow_bytes} bytes and {flow_ms} ms: this server takes 1..={MAX_FLOW_BYTES} \
                 bytes and 1..={MAX_FLOW_MS} ms"
            ),
        );
    }
    if let Some(bad) = flows.iter().find(|f| !ports.contains(&f.port)) {
        return refuse(
            &mut link,
            format!(
                "port {} is not one of this server's test ports {ports:?}",
                bad.port
            ),
        );
    }
    link.send(&Control::Ready { index: u16::MAX })?;
    tracing::info!(
        "bttest: test {test_id:016x} from {}: {} flows of {flow_bytes} bytes",
        link.peer(),
        flows.len()
    );
    let limits = FlowLimits::for_cap(Duration::from_millis(u64::from(flow_ms)));
    let mut reports: Vec<FlowReport> = Vec::with_capacity(flows.len());
    loop {
        match link.recv(CONTROL_IDLE, "next step")? {
            Control::Start { index, seed } => {
                let Some(spec) = flows.get(index as usize).copied() else {
                    return refuse(&mut link, format!("flow {index} is not in the schedule"));
                };
                let listener = &test[if spec.port == ports[0] { 0 } else { 1 }];
                // Connections left in the backlog (a client that gave up on an earlier flow)
                // must not be taken for this flow's.
                while listener.accept().is_ok() {}
                link.send(&Control::Ready { index })?;
                let report = serve_flow(&link, listener, spec, index, seed, flow_bytes, limits);
                link.send(&Control::FlowEnd { index })?;
                reports.push(report);
            }
            Control::Results { reports: theirs } => {
                tracing::info!(
                    "bttest: test {test_id:016x}: client reported {} flows",
                    theirs.len()
                );
                link.send(&Control::Results {
                    reports: std::mem::take(&mut reports),
                })?;
            }
            Control::Bye => return Ok(()),
            other => return refuse(&mut link, format!("unexpected {other:?}")),
        }
    }
}

/// Accepts the flow's connection (from the client's address only) and runs the server's end.
fn serve_flow(
    link: &ControlLink,
    listener: &TcpListener,
    spec: FlowSpec,
    index: u16,
    seed: u64,
    flow_bytes: u64,
    limits: FlowLimits,
) -> FlowReport {
    let client_ip: IpAddr = link.peer().ip();
    let waiting = Instant::now();
    let stream = loop {
        match listener.accept() {
            Ok((stream, from)) if from.ip() == client_ip => break Some(stream),
            Ok((_, from)) => tracing::info!("bttest: ignored a connection from {from}"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if link.peer_ended(index) || waiting.elapsed() >= ACCEPT_WAIT {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => {
                tracing::warn!("bttest: accept on port {}: {e}", spec.port);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let Some(stream) = stream else {
        return FlowReport {
            index,
            payload_received: 0,
            payload_sent: 0,
            duration_us: waiting.elapsed().as_micros() as u64,
            rst_sent: 0,
            rst_seen: 0,
            outcome: FlowOutcome::Stalled,
            detail: "no connection arrived".into(),
        };
    };
    let started = Instant::now();
    let endpoint = FlowEndpoint::new(FlowParams {
        kind: spec.kind,
        role: match spec.direction {
            Direction::Upload => Role::Leecher,
            Direction::Download => Role::Seeder,
        },
        initiator: false,
        payload_bytes: flow_bytes,
        seed,
    });
    run_flow(stream, endpoint, index, started, limits, &|| {
        link.peer_ended(index)
    })
}
