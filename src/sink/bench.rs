//! `swarmscan bench sink`: the sink under a connection and datagram flood on loopback.
//!
//! Client threads open TCP connections as fast as they can (each sends a BitTorrent
//! handshake, keeps up to `--hold` connections open, then resets the oldest: SO_LINGER 0, so
//! no TIME_WAIT exhausts the ports), and one thread sends KRPC pings from 64 sockets. The
//! same flood first runs against a baseline (blocking std listener threads that accept and
//! drop, and a UDP socket read in a loop: what the kernel and the generator manage on this
//! machine), then against the sink with `sink.max_connections = --max-connections`. Prints
//! JSON: rates of both, ratios sink/baseline, peak RSS while the sink ran, flows stored,
//! evicted and dropped. Memory is bounded when the RSS stays flat as connections are evicted.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::config::Config;
use crate::limits::{count, secs};

/// Options of `bench sink`.
#[derive(clap::Args, Debug, Clone)]
pub struct SinkBenchArgs {
    /// Flood length for each of the baseline and the sink, seconds (up to 600).
    #[arg(long, default_value_t = 5.0, value_parser = secs(0.5, 600.0))]
    pub seconds: f64,
    /// Client threads opening connections (up to 64).
    #[arg(long, default_value_t = 4, value_parser = count::<usize>(1, 64))]
    pub clients: usize,
    /// Connections each client keeps open before resetting its oldest (up to 10000).
    #[arg(long, default_value_t = 1000, value_parser = count::<usize>(0, 10_000))]
    pub hold: usize,
    /// The sink's `sink.max_connections` (up to 100000).
    #[arg(long, default_value_t = 1000, value_parser = count::<u32>(1, 100_000))]
    pub max_connections: u32,
    /// Sink workers (0 = one per core; up to 64).
    #[arg(long, default_value_t = 0, value_parser = count::<usize>(0, 64))]
    pub workers: usize,
}

/// A BitTorrent handshake, what most of a real sink's connections open with.
const HANDSHAKE: &[u8; 68] =
    b"\x13BitTorrent protocol\0\0\0\0\0\x10\0\x05ZZZZZZZZZZZZZZZZZZZZ-BS0001-000000000000";
const PING: &[u8] = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";

#[derive(Default)]
struct Sent {
    connections: AtomicU64,
    connect_errors: AtomicU64,
    datagrams: AtomicU64,
}

/// Floods `addr` for `seconds`; returns what was sent.
fn flood(addr: SocketAddr, args: &SinkBenchArgs) -> Arc<Sent> {
    let sent = Arc::new(Sent::default());
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    std::thread::scope(|scope| {
        for _ in 0..args.clients {
            let sent = sent.clone();
            scope.spawn(move || {
                let mut open = VecDeque::new();
                while Instant::now() < deadline {
                    match connect(addr) {
                        Ok(mut s) => {
                            let _ = s.write_all(HANDSHAKE);
                            sent.connections.fetch_add(1, Ordering::Relaxed);
                            open.push_back(s);
                            if open.len() > args.hold {
                                open.pop_front();
                            }
                        }
                        Err(_) => {
                            sent.connect_errors.fetch_add(1, Ordering::Relaxed);
                            open.pop_front();
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
            });
        }
        let sent = sent.clone();
        scope.spawn(move || {
            let sockets: Vec<UdpSocket> = (0..64)
                .filter_map(|_| UdpSocket::bind("127.0.0.1:0").ok())
                .collect();
            let mut i = 0;
            while Instant::now() < deadline && !sockets.is_empty() {
                // A burst, then a check of the clock.
                for _ in 0..64 {
                    if sockets[i % sockets.len()].send_to(PING, addr).is_ok() {
                        sent.datagrams.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            }
        });
    });
    sent
}

/// A connection that resets on close (SO_LINGER 0): no TIME_WAIT.
fn connect(addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_linger(Some(Duration::ZERO))?;
    socket.connect(&addr.into())?;
    Ok(socket.into())
}

/// Accepts and drops connections, reads datagrams, until `stop`; (accepted, datagrams).
fn baseline(args: &SinkBenchArgs) -> Result<(u64, u64, Arc<Sent>), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let udp = UdpSocket::bind(addr).map_err(|e| format!("udp {addr}: {e}"))?;
    udp.set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let stop = AtomicBool::new(false);
    let accepted = AtomicU64::new(0);
    let received = AtomicU64::new(0);
    let sent = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let mut b = [0u8; 128];
                        let _ = s.set_nonblocking(true);
                        let _ = s.read(&mut b);
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
        });
        scope.spawn(|| {
            let mut b = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if udp.recv_from(&mut b).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let sent = flood(addr, args);
        stop.store(true, Ordering::Relaxed);
        sent
    });
    Ok((
        accepted.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
        sent,
    ))
}

fn rate(n: u64, seconds: f64) -> f64 {
    (n as f64 / seconds * 10.0).round() / 10.0
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        (a / b * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

/// Runs the benchmark and prints its JSON.
pub fn run(args: &SinkBenchArgs) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (base_accepted, base_datagrams, base_sent) = baseline(args)?;
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        l.local_addr().map_err(|e| e.to_string())?.port()
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = Config::load(
        None,
        &[
            format!(
                "database={:?}",
                dir.path().join("sink.sqlite").display().to_string()
            ),
            format!("sink.tcp=[\"{addr}\"]"),
            format!("sink.udp=[\"{addr}\"]"),
            "sink.idle_secs=1".to_string(),
            format!("sink.max_connections={}", args.max_connections),
            format!("engine.workers={}", args.workers),
        ],
    )
    .map_err(|e| e.to_string())?;
    let rss_before = crate::metrics::rss_bytes();
    let stop = AtomicBool::new(false);
    let peak_rss = AtomicU64::new(rss_before);
    let (summary, sent) = std::thread::scope(|scope| {
        let sink = scope.spawn(|| crate::sink::run(&config, None, &stop));
        // Wait until the sink accepts (a failed start ends the wait too).
        let up = Instant::now() + Duration::from_secs(10);
        while Instant::now() < up && !sink.is_finished() {
            if std::net::TcpStream::connect(addr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let sampling = AtomicBool::new(true);
        let sent = std::thread::scope(|inner| {
            inner.spawn(|| {
                while sampling.load(Ordering::Relaxed) {
                    peak_rss.fetch_max(crate::metrics::rss_bytes(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
            let sent = flood(addr, args);
            // Idle timeouts and the final store happen while we still sample.
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
            let summary = sink.join();
            sampling.store(false, Ordering::Relaxed);
            (summary, sent)
        });
        sent
    });
    let summary = summary
        .map_err(|p| crate::engine::panic_message(&*p))?
        .map_err(|e| format!("sink: {e}"))?;
    let s = args.seconds;
    let sink_conn = rate(summary.connections_accepted, s);
    let sink_dgram = rate(summary.flows.datagrams, s);
    let base_conn = rate(base_accepted, s);
    let base_dgram = rate(base_datagrams, s);
    let out = json!({
        "seconds": s,
        "clients": args.clients,
        "hold_per_client": args.hold,
        "max_connections": args.max_connections,
        "workers": summary.workers,
        "baseline": {
            "connections_per_sec": base_conn,
            "datagrams_per_sec": base_dgram,
            "connects_tried": base_sent.connections.load(Ordering::Relaxed),
            "connect_errors": base_sent.connect_errors.load(Ordering::Relaxed),
        },
        "sink": {
            "connections_per_sec": sink_conn,
            "datagrams_per_sec": sink_dgram,
            "connects_tried": sent.connections.load(Ordering::Relaxed),
            "connect_errors": sent.connect_errors.load(Ordering::Relaxed),
            "datagrams_sent": sent.datagrams.load(Ordering::Relaxed),
            "connections_accepted": summary.connections_accepted,
            "connections_evicted": summary.connections_evicted,
            "connections_refused": summary.connections_refused,
            "connections_no_slot": summary.connections_no_slot,
            "accept_errors": summary.accept_errors,
            "datagrams_received": summary.flows.datagrams,
            "datagrams_dropped": sent.datagrams.load(Ordering::Relaxed).saturating_sub(summary.flows.datagrams),
            "udp_recv_enobufs": summary.udp_recv_enobufs,
            "tcp_flows": summary.flows.tcp_flows,
            "udp_flows": summary.flows.udp_flows,
            "flows_stored": summary.stored,
            "rss_before_bytes": rss_before,
            "peak_rss_bytes": peak_rss.load(Ordering::Relaxed),
        },
        "ratio": {
            "connections": ratio(sink_conn, base_conn),
            "datagrams": ratio(sink_dgram, base_dgram),
        },
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
    );
    Ok(())
}
