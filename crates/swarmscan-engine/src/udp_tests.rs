//! UDP plane tests on loopback: real sockets (127.0.0.1 and ::1), real io_uring, bounded time.

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::exchange::Exchange;
use super::*;

const V4: &str = "127.0.0.1:0";
const V6: &str = "[::1]:0";

/// Records what the engine tells it; echoes datagrams when asked; sends its outbox.
#[derive(Default)]
struct UdpDriver {
    echo: bool,
    bound: Vec<SocketAddr>,
    /// (local, from, bytes) of every datagram delivered.
    received: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Datagrams to send at the next `poll_datagrams`, from the socket of their family.
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    refused: Vec<SendRefused>,
    /// (local, to, errno) of every `datagram_error`.
    errors: Vec<(SocketAddr, SocketAddr, i32)>,
    /// On the first datagram: queue this many replies and ask the worker to stop.
    burst_then_stop: usize,
    pending_at_stop: Option<usize>,
}

impl WorkerDriver for UdpDriver {
    type Conv = Exchange;
    fn next_probe(&mut self, _: Millis) -> Option<ProbeRequest<Exchange>> {
        None
    }
    fn probe_done(&mut self, _: Millis, _: ProbeDone<Exchange>) {}
    fn incoming(&mut self, _: Millis, _: SocketAddr, _: SocketAddr) -> Option<(u64, Exchange)> {
        None
    }
    fn on_udp_bound(&mut self, udp: &[SocketAddr]) {
        self.bound = udp.to_vec();
    }
    fn datagram(
        &mut self,
        _now: Millis,
        local: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
        out: &mut DatagramQueue,
    ) {
        self.received.push((local, from, bytes.to_vec()));
        if self.echo {
            if let Err(why) = out.push(local, from, bytes) {
                self.refused.push(why);
            }
        }
        if self.burst_then_stop > 0 && self.pending_at_stop.is_none() {
            for i in 0..self.burst_then_stop {
                if let Err(why) = out.push(local, from, &(i as u32).to_be_bytes()) {
                    self.refused.push(why);
                }
            }
            self.pending_at_stop = Some(out.pending());
        }
    }
    fn poll_datagrams(&mut self, _now: Millis, out: &mut DatagramQueue) {
        while let Some((to, bytes)) = self.outbox.pop_front() {
            let local = out.local_for(&to).unwrap_or(to);
            if let Err(why) = out.push(local, to, &bytes) {
                self.refused.push(why);
            }
        }
    }
    fn datagram_error(
        &mut self,
        _now: Millis,
        local: SocketAddr,
        to: SocketAddr,
        errno: i32,
        _out: &mut DatagramQueue,
    ) {
        self.errors.push((local, to, errno));
    }
    fn should_stop(&self) -> bool {
        self.pending_at_stop.is_some()
    }
}

fn config(udp: &[&str]) -> WorkerConfig {
    WorkerConfig {
        max_in_flight: 4,
        ring_entries: 256,
        recv_buffers: 16,
        udp: udp.iter().map(|a| a.parse().unwrap()).collect(),
        ..WorkerConfig::default()
    }
}

fn worker(cfg: WorkerConfig) -> Worker<Exchange> {
    Worker::new(cfg, Instant::now()).expect("worker with UDP sockets")
}

/// Steps until `done` holds, at most 10 s (then fails naming `what`).
fn step_until(
    worker: &mut Worker<Exchange>,
    driver: &mut UdpDriver,
    what: &str,
    done: impl Fn(&Worker<Exchange>, &UdpDriver) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(worker, driver) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            worker.stats()
        );
        worker.step(driver, 5).expect("step");
    }
}

fn peer(addr: &str) -> UdpSocket {
    let socket = UdpSocket::bind(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket
}

fn recv(peer: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 4096];
    let (n, from) = peer.recv_from(&mut buf).expect("datagram from the worker");
    (buf[..n].to_vec(), from)
}

/// A UDP port on `ip` with nobody behind it (bound, then closed).
fn closed_port(addr: &str) -> SocketAddr {
    UdpSocket::bind(addr).unwrap().local_addr().unwrap()
}

#[test]
fn echo_both_directions_on_ipv4_and_ipv6() {
    let mut w = worker(config(&[V4, V6]));
    let bound = w.udp_addrs();
    assert_eq!(bound.len(), 2);
    assert!(bound[0].is_ipv4() && bound[1].is_ipv6(), "{bound:?}");
    assert!(bound.iter().all(|a| a.port() != 0 && a.ip().is_loopback()));
    let mut d = UdpDriver {
        echo: true,
        ..Default::default()
    };
    for (family, local) in [(V4, bound[0]), (V6, bound[1])] {
        let p = peer(family);
        let peer_addr = p.local_addr().unwrap();
        // Worker → peer first: the source is the worker's socket of that family.
        d.outbox
            .push_back((peer_addr, b"hello from the worker".to_vec()));
        let sent = w.stats().udp_sent;
        step_until(&mut w, &mut d, "the hello sent", |w, _| {
            w.stats().udp_sent == sent + 1
        });
        assert_eq!(recv(&p), (b"hello from the worker".to_vec(), local));
        // Peer → worker → peer.
        p.send_to(b"ping", local).unwrap();
        let got = d.received.len();
        step_until(&mut w, &mut d, "the ping echoed", |w, d| {
            d.received.len() == got + 1 && w.stats().udp_sent == sent + 2
        });
        assert_eq!(d.received[got], (local, peer_addr, b"ping".to_vec()));
        assert_eq!(recv(&p), (b"ping".to_vec(), local));
    }
    let s = w.stats();
    assert_eq!((s.udp_received, s.udp_sent), (2, 4));
    assert_eq!((s.udp_send_errors, s.udp_send_dropped), (0, 0));
    assert!(d.refused.is_empty() && d.errors.is_empty());
}

/// The peer keeps `window` numbered datagrams outstanding until `total` came back echoed;
/// returns how many distinct ones did.
fn numbered_echo_peer(family: &str, worker_addr: SocketAddr, total: u32, window: u32) -> u32 {
    let p = peer(family);
    let mut seen = vec![false; total as usize];
    let (mut next, mut back) = (0u32, 0u32);
    let mut payload = [0u8; 100];
    while back < total {
        while next < total && next - back < window {
            payload[..4].copy_from_slice(&next.to_be_bytes());
            p.send_to(&payload, worker_addr).unwrap();
            next += 1;
        }
        let (bytes, from) = recv(&p);
        assert_eq!((bytes.len(), from), (100, worker_addr));
        let n = u32::from_be_bytes(bytes[..4].try_into().unwrap());
        assert!(!seen[n as usize], "datagram {n} echoed twice");
        seen[n as usize] = true;
        back += 1;
    }
    back
}

#[test]
fn ten_thousand_datagrams_each_way_none_lost_ipv4_and_ipv6() {
    const TOTAL: u32 = 10_000;
    for family in [V4, V6] {
        let mut w = worker(config(&[family]));
        let local = w.udp_addrs()[0];
        let mut d = UdpDriver {
            echo: true,
            ..Default::default()
        };
        let peer = std::thread::spawn(move || numbered_echo_peer(family, local, TOTAL, 64));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !peer.is_finished() {
            assert!(Instant::now() < deadline, "{family}: {:?}", w.stats());
            w.step(&mut d, 5).unwrap();
        }
        assert_eq!(peer.join().expect("peer got every echo"), TOTAL);
        let s = w.stats();
        assert_eq!((s.udp_received, s.udp_sent), (TOTAL as u64, TOTAL as u64));
        assert_eq!(
            (s.udp_send_errors, s.udp_send_dropped, s.udp_recv_truncated),
            (0, 0, 0)
        );
    }
}

#[test]
fn exhausted_receive_buffers_are_counted_and_the_receive_rearmed() {
    let mut w = worker(WorkerConfig {
        udp_recv_buffers: 2,
        ..config(&[V4])
    });
    let local = w.udp_addrs()[0];
    let mut d = UdpDriver::default();
    w.step(&mut d, 0).unwrap(); // arms the receive
    let p = peer(V4);
    // 64 datagrams land in the socket before the worker looks: two buffers cannot hold them.
    for i in 0..64u32 {
        p.send_to(&i.to_be_bytes(), local).unwrap();
    }
    step_until(&mut w, &mut d, "all 64 datagrams", |_, d| {
        d.received.len() == 64
    });
    assert!(w.stats().udp_recv_enobufs >= 1, "{:?}", w.stats());
    let numbers: Vec<u32> = d
        .received
        .iter()
        .map(|(_, _, b)| u32::from_be_bytes(b[..4].try_into().unwrap()))
        .collect();
    assert_eq!(numbers, (0..64).collect::<Vec<_>>());
    // And later datagrams still arrive.
    p.send_to(b"later", local).unwrap();
    step_until(&mut w, &mut d, "a later datagram", |_, d| {
        d.received.len() == 65
    });
    assert_eq!(d.received[64].2, b"later");
}

#[test]
fn a_full_send_arena_refuses_and_counts_and_frees_as_sends_complete() {
    let mut w = worker(WorkerConfig {
        udp_send_slots: 4,
        udp_max_datagram: 512,
        ..config(&[V4])
    });
    let p = peer(V4);
    let to = p.local_addr().unwrap();
    let mut d = UdpDriver::default();
    for i in 0..10u8 {
        d.outbox.push_back((to, vec![i]));
    }
    step_until(&mut w, &mut d, "four datagrams sent", |w, _| {
        w.stats().udp_sent == 4
    });
    assert_eq!(d.refused, vec![SendRefused::Full; 6]);
    assert_eq!(w.stats().udp_send_dropped, 6);
    let got: Vec<Vec<u8>> = (0..4).map(|_| recv(&p).0).collect();
    assert_eq!(got, vec![vec![0], vec![1], vec![2], vec![3]]);
    // Slots came back with the completions; too large and wrong-family datagrams are refused.
    d.outbox.push_back((to, vec![4]));
    d.outbox.push_back((to, vec![0; 513]));
    d.outbox.push_back(("[::1]:9".parse().unwrap(), vec![5]));
    step_until(&mut w, &mut d, "the fifth datagram", |w, _| {
        w.stats().udp_sent == 5
    });
    assert_eq!(recv(&p).0, vec![4]);
    assert_eq!(
        d.refused[6..],
        [SendRefused::TooLarge, SendRefused::NoSocket]
    );
    assert_eq!(w.stats().udp_send_dropped, 8);
}

#[test]
fn icmp_port_unreachable_is_reported_and_the_worker_goes_on() {
    let mut w = worker(config(&[V4, V6]));
    let bound = w.udp_addrs();
    let mut d = UdpDriver {
        echo: true,
        ..Default::default()
    };
    for (family, local) in [(V4, bound[0]), (V6, bound[1])] {
        let closed = closed_port(family);
        d.outbox.push_back((closed, b"anyone?".to_vec()));
        step_until(&mut w, &mut d, "the ICMP error", |_, d| {
            d.errors.iter().any(|e| e.1 == closed)
        });
        assert!(
            d.errors.contains(&(local, closed, libc::ECONNREFUSED)),
            "{:?}",
            d.errors
        );
        // The socket still works both ways.
        let p = peer(family);
        let (got, sent) = (d.received.len(), w.stats().udp_sent);
        p.send_to(b"still there?", local).unwrap();
        step_until(&mut w, &mut d, "the echo after the error", |w, d| {
            d.received.len() == got + 1 && w.stats().udp_sent == sent + 1
        });
        assert_eq!(recv(&p), (b"still there?".to_vec(), local));
    }
    assert!(w.stats().udp_send_errors >= 2, "{:?}", w.stats());
    assert!(d.refused.is_empty());
}

#[test]
fn stop_with_sends_in_flight_drains_them_and_leaks_nothing() {
    let mut w = worker(config(&[V4]));
    let local = w.udp_addrs()[0];
    let mut d = UdpDriver {
        burst_then_stop: 1000,
        ..Default::default()
    };
    let p = peer(V4);
    p.send_to(b"go", local).unwrap();
    let stop = AtomicBool::new(false);
    let stats = w.run(&mut d, &stop).expect("run and drain");
    // The driver stopped the worker with 1000 replies queued, none completed yet.
    assert_eq!(d.pending_at_stop, Some(1000));
    assert!(d.refused.is_empty());
    assert_eq!(stats.udp_sends_leaked, 0);
    assert_eq!(stats.leaked_slots, 0);
    assert_eq!(stats.udp_sent + stats.udp_send_errors, 1000, "{stats:?}");
    drop(w);
}

#[test]
fn each_worker_binds_its_own_port() {
    // Port 0: a port of the kernel's choosing per worker.
    let a = worker(WorkerConfig {
        index: 0,
        ..config(&[V4])
    });
    let b = worker(WorkerConfig {
        index: 1,
        ..config(&[V4])
    });
    assert_ne!(a.udp_addrs()[0].port(), b.udp_addrs()[0].port());
    // A fixed port: worker i binds port + i.
    let base = closed_port(V4);
    let second = worker(WorkerConfig {
        index: 1,
        udp: vec![base],
        ..config(&[])
    });
    assert_eq!(second.udp_addrs()[0].port(), base.port() + 1);
    // An address in use and a port past 65535 are refused, naming the address.
    let holder = UdpSocket::bind(V4).unwrap();
    let busy = holder.local_addr().unwrap();
    let err = Worker::<Exchange>::new(
        WorkerConfig {
            udp: vec![busy],
            ..config(&[])
        },
        Instant::now(),
    )
    .err()
    .expect("address in use");
    assert!(
        err.to_string().contains(&format!("udp bind on {busy}")),
        "{err}"
    );
    let err = Worker::<Exchange>::new(
        WorkerConfig {
            index: 3,
            udp: vec!["127.0.0.1:65534".parse().unwrap()],
            ..config(&[])
        },
        Instant::now(),
    )
    .err()
    .expect("port overflow");
    assert!(
        err.to_string().contains("127.0.0.1:65534") && err.to_string().contains("worker 3"),
        "{err}"
    );
    let err = Worker::<Exchange>::new(
        WorkerConfig {
            udp_recv_buffers: 3,
            ..config(&[V4])
        },
        Instant::now(),
    )
    .err()
    .expect("3 receive buffers");
    assert!(
        err.to_string().contains("udp receive buffers") && err.to_string().contains("power of two"),
        "{err}"
    );
}

#[test]
fn run_workers_tells_each_driver_its_udp_address() {
    let cfg = EngineConfig {
        workers: 2,
        max_in_flight: 4,
        udp: vec![V4.parse().unwrap()],
        ring_entries: 256,
        recv_buffers: 16,
        udp_recv_buffers: 16,
        udp_send_slots: 16,
        ..EngineConfig::default()
    };
    let stop = AtomicBool::new(true);
    let drivers = vec![UdpDriver::default(), UdpDriver::default()];
    let done = run_workers(&cfg, drivers, &stop).expect("two workers with UDP");
    let ports: Vec<u16> = done.iter().map(|(d, _)| d.bound[0].port()).collect();
    assert!(
        ports.iter().all(|&p| p != 0) && ports[0] != ports[1],
        "{ports:?}"
    );
    assert!(done.iter().all(|(_, s)| s.udp_sends_leaked == 0));
}

#[test]
fn a_worker_dropped_without_run_frees_its_udp_sockets() {
    let mut w = worker(config(&[V4, V6]));
    let bound = w.udp_addrs();
    let mut d = UdpDriver::default();
    d.outbox.push_back((closed_port(V4), b"x".to_vec()));
    w.step(&mut d, 0).unwrap(); // receives armed, a send submitted
    assert!(
        UdpSocket::bind(bound[0]).is_err(),
        "the worker holds its port"
    );
    drop(w);
    // The receives were cancelled and the plane freed, so the ports are free again.
    for addr in bound {
        UdpSocket::bind(addr).unwrap_or_else(|e| panic!("{addr} still held: {e}"));
    }
}

#[test]
fn a_send_that_meets_another_datagrams_icmp_error_is_sent_again() {
    let mut w = worker(config(&[V4]));
    let p = peer(V4);
    let live = p.local_addr().unwrap();
    let mut d = UdpDriver::default();
    for round in 0..20u8 {
        // The port unreachable for the first comes back while the second is being sent:
        // the kernel reports it on the socket's next operation, which may be that send.
        let closed = closed_port(V4);
        d.outbox.push_back((closed, b"nobody".to_vec()));
        d.outbox.push_back((live, vec![round]));
        let sent = 2 * (round as u64 + 1);
        step_until(&mut w, &mut d, "both sends and the error", |w, d| {
            d.errors.iter().any(|e| e.1 == closed) && w.stats().udp_sent == sent
        });
        assert_eq!(recv(&p).0, vec![round], "round {round}: {:?}", w.stats());
    }
    assert!(d.errors.iter().all(|e| e.1 != live), "{:?}", d.errors);
    // Each round's ICMP error met the next send (whether the multishot receive saw it first
    // depends on timing, so this is at least one, not twenty).
    assert!(w.stats().udp_send_retries >= 1, "{:?}", w.stats());
    assert_eq!(w.stats().udp_send_errors, 20, "{:?}", w.stats());
}

#[test]
fn a_stream_of_other_datagrams_icmp_errors_is_never_blamed_on_a_live_destination() {
    // A scan that keeps sending to peers that went away meets a port unreachable on most of
    // its sends; a send can fail several times in a row for others' errors.
    let mut w = worker(config(&[V4]));
    let p = peer(V4);
    p.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let live = p.local_addr().unwrap();
    let mut d = UdpDriver::default();
    let closed: Vec<SocketAddr> = (0..8).map(|_| closed_port(V4)).collect();
    const ROUNDS: usize = 40;
    let total = (ROUNDS * (closed.len() + 1)) as u64;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut round = 0;
    loop {
        // One round per loop iteration: the live datagram first, then the gone ones, whose
        // errors meet the next iteration's first sends (the live one's resend among them).
        if round < ROUNDS {
            d.outbox.push_back((live, vec![round as u8]));
            for &c in &closed {
                d.outbox.push_back((c, b"gone?".to_vec()));
            }
            round += 1;
        }
        w.step(&mut d, 1).expect("step");
        let mut buf = [0u8; 16];
        while let Ok((n, _)) = p.recv_from(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        let stats = w.stats();
        if d.outbox.is_empty()
            && stats.udp_sent + stats.udp_send_given_up + stats.udp_send_errors >= total
            && got.len() as u64 + stats.udp_send_given_up >= ROUNDS as u64
        {
            break;
        }
        assert!(Instant::now() < deadline, "timed out: {got:?} {stats:?}");
    }
    assert!(
        d.errors.iter().all(|e| e.1 != live),
        "errors blamed on the live peer: {:?} ({:?})",
        d.errors.iter().filter(|e| e.1 == live).count(),
        w.stats()
    );
    assert!(
        d.errors.iter().any(|e| closed.contains(&e.1)),
        "the closed ports' errors are reported: {:?}",
        w.stats()
    );
    assert!(w.stats().udp_send_retries >= 1, "{:?}", w.stats());
    // Every live datagram arrived, in order, unless a storm made the worker give some up.
    let given_up = w.stats().udp_send_given_up as usize;
    assert!(got.len() + given_up >= ROUNDS, "{got:?} {:?}", w.stats());
    assert!(got.windows(2).all(|p| p[0] < p[1]), "{got:?}");
}

/// Records each datagram's original destination (`datagram_to`).
#[derive(Default)]
struct OriginalDst(Vec<(SocketAddr, Option<SocketAddr>, Vec<u8>)>);

impl WorkerDriver for OriginalDst {
    type Conv = Exchange;
    fn next_probe(&mut self, _: Millis) -> Option<ProbeRequest<Exchange>> {
        None
    }
    fn probe_done(&mut self, _: Millis, _: ProbeDone<Exchange>) {}
    fn incoming(&mut self, _: Millis, _: SocketAddr, _: SocketAddr) -> Option<(u64, Exchange)> {
        None
    }
    fn datagram_to(
        &mut self,
        _now: Millis,
        local: SocketAddr,
        original: Option<SocketAddr>,
        _from: SocketAddr,
        bytes: &[u8],
        _out: &mut DatagramQueue,
    ) {
        self.0.push((local, original, bytes.to_vec()));
    }
}

#[test]
fn original_destination_comes_with_each_datagram_when_asked() {
    for family in [V4, V6] {
        let mut cfg = config(&[family]);
        cfg.original_dst = true;
        let mut w: Worker<Exchange> = Worker::new(cfg, Instant::now()).unwrap();
        let local = w.udp_addrs()[0];
        let p = peer(family);
        p.send_to(b"where to?", local).unwrap();
        let mut d = OriginalDst::default();
        let deadline = Instant::now() + Duration::from_secs(10);
        while d.0.is_empty() {
            assert!(Instant::now() < deadline, "{:?}", w.stats());
            w.step(&mut d, 5).unwrap();
        }
        // Not redirected: the original destination is the socket's own address.
        assert_eq!(d.0[0], (local, Some(local), b"where to?".to_vec()));
    }
}

#[test]
fn reuseport_binds_every_worker_on_the_configured_port() {
    let port = closed_port(V4).port();
    let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut workers: Vec<Worker<Exchange>> = (0..2)
        .map(|index| {
            let mut cfg = config(&[]);
            cfg.index = index;
            cfg.udp = vec![addr];
            cfg.udp_reuseport = true;
            Worker::new(cfg, Instant::now()).expect("both bind the same port")
        })
        .collect();
    assert!(workers.iter().all(|w| w.udp_addrs() == vec![addr]));
    // Senders from several ports are spread by the kernel; every datagram arrives once.
    let mut drivers = [OriginalDst::default(), OriginalDst::default()];
    let senders: Vec<UdpSocket> = (0..16).map(|_| peer(V4)).collect();
    for s in &senders {
        s.send_to(b"x", addr).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while drivers.iter().map(|d| d.0.len()).sum::<usize>() < senders.len() {
        assert!(Instant::now() < deadline);
        for (w, d) in workers.iter_mut().zip(drivers.iter_mut()) {
            w.step(d, 5).unwrap();
        }
    }
    assert_eq!(drivers.iter().map(|d| d.0.len()).sum::<usize>(), 16);
}
