//! uTP probe throughput: the scan's own driver ([`ScanDriver`], uTP plane included) probing a
//! fake uTP swarm, against the same driver probing the TCP fake swarm in the same run.
//!
//! `swarmscan bench utp --seconds 10 --peers 50000 --in-flight 1000 --workers 2 --json`
//!
//! * Fake uTP swarm (child process `swarmscan bench fake-utp-swarm`): one UDP socket per thread
//!   on `0.0.0.0:P` with `SO_BINDTODEVICE lo` and `SO_REUSEPORT` (a flow always reaches the
//!   same socket); a datagram to `127.a.b.c:P` is answered from that address (`IP_PKTINFO`),
//!   so every 127.x address is a peer, like the TCP fake swarm's. Each peer accepts uTP
//!   connections with the real [`UtpConnection`] (acceptor), reads the 68-byte handshake and
//!   answers with a handshake and a bitfield, then keeps the connection until the prober
//!   closes it.
//! * Both phases run the real `ScanDriver` (peer table, revisit wheel, outcomes through the
//!   real SQLite writer on a temporary database) on the real engine: `net.utp = "off"`
//!   against the TCP fake swarm, `"prefer"` against the uTP one; peers are revisited every
//!   second, so with enough peers the schedule never limits the rate. The phases alternate
//!   `--rounds` times.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::UtpMode;
use crate::engine::{self, EngineConfig};
use crate::limits;
use crate::proto::utp::{self, PacketType, UtpConnection};
use crate::scan::driver::{RestoredPeer, ScanDriver, UtpSettings, WorkerMsg};

use super::handshake::{handshake, HANDSHAKE_LEN};
use super::{round2, round3, BENCH_INFO_HASH};

/// Options of `bench utp`.
#[derive(clap::Args, Debug, Clone)]
pub struct UtpBenchArgs {
    /// Measured seconds per transport, split over the rounds (0.1 to 86400).
    #[arg(long, default_value_t = 10.0, value_parser = limits::secs(0.1, 86_400.0))]
    seconds: f64,
    /// Fake peers (127.10.0.1 upwards); each is visited at most once a second.
    #[arg(long, default_value_t = 50_000, value_parser = limits::count::<u32>(1, super::MAX_FAKE_PEERS))]
    peers: u32,
    /// Probes in flight (over all workers), TCP or uTP.
    #[arg(long, default_value_t = 1000, value_parser = limits::count::<usize>(1, limits::MAX_CONNECTIONS))]
    in_flight: usize,
    /// Engine workers.
    #[arg(long, default_value_t = 2, value_parser = limits::count::<usize>(1, limits::MAX_THREADS))]
    workers: usize,
    /// Fake swarm threads (each swarm).
    #[arg(long, default_value_t = 2, value_parser = limits::count::<usize>(1, limits::MAX_THREADS))]
    swarm_threads: usize,
    /// Alternating TCP/uTP rounds.
    #[arg(long, default_value_t = 4, value_parser = limits::count::<u32>(1, 1000))]
    rounds: u32,
    /// Pieces in the fake torrent (bitfield size).
    #[arg(long, default_value_t = 1000, value_parser = limits::count::<u32>(1, limits::MAX_PIECES))]
    pieces: u32,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Options of the hidden fake uTP swarm.
#[derive(clap::Args, Debug, Clone)]
pub struct FakeUtpSwarmArgs {
    /// Serving threads (one socket each).
    #[arg(long, default_value_t = 2, value_parser = limits::count::<usize>(1, limits::MAX_THREADS))]
    threads: usize,
    /// Pieces in the torrent.
    #[arg(long, default_value_t = 1000, value_parser = limits::count::<u32>(1, limits::MAX_PIECES))]
    pieces: u32,
    /// Exit after this many seconds at the latest.
    #[arg(long, default_value_t = 600, value_parser = limits::count::<u64>(1, limits::MAX_SECS as u64))]
    max_seconds: u64,
}

/// Goal of the issue: uTP probes/s at least half of TCP's.
pub const RATIO_GOAL: f64 = 0.5;

/// What one phase counted.
#[derive(Debug, Default, Clone, Copy)]
struct PhaseCounts {
    ok: u64,
    done: u64,
    utp_started: u64,
    resets_sent: u64,
}

/// One phase: the scan driver on the engine for `secs`, probing `port` over `mode`.
fn scan_phase(
    args: &UtpBenchArgs,
    mode: UtpMode,
    port: u16,
    secs: f64,
    store: &super::BenchStore,
) -> io::Result<PhaseCounts> {
    let cfg = EngineConfig {
        workers: args.workers,
        max_in_flight: args.in_flight,
        max_held: 0,
        max_incoming: 0,
        connects_per_sec: 0,
        connect_timeout_ms: 10_000,
        recv_buffers: 1024,
        recv_buffer_size: 4096,
        ring_entries: 4096,
        listen: Vec::new(),
        udp: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        // Enough send slots for every connection's SYN or ack of one loop iteration.
        udp_send_slots: (args.in_flight / args.workers).max(64) * 4,
        udp_recv_buffers: 4096,
        ..EngineConfig::default()
    };
    let settings = Arc::new(crate::proto::probe::ProbeSettings {
        grace_ms: 0,
        fetch_metadata: false,
        pex: false,
        ..Default::default()
    });
    let torrent = crate::scan::catalog::CatalogTorrent {
        db_id: store.torrent_id,
        wire_hash: BENCH_INFO_HASH,
        alt_hash: None,
        name: "bench".into(),
        piece_count: args.pieces.into(),
        total_size: 0,
        trackers: Vec::new(),
    };
    let catalog = crate::scan::catalog::Catalog::new(vec![torrent]);
    let policy = crate::scan::revisit::RevisitPolicy {
        revisit_secs: 1.0,
        retry_secs: 1.0,
        retry_factor: 1.0,
        max_failures: 1000,
        min_revisit_secs: 1.0,
        max_backoff_secs: 1.0,
        threshold: 2.0, // never reached: every peer stays in the schedule
        done_revisit_secs: 1.0,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..args.workers)
        .map(|_| crossbeam_channel::unbounded::<WorkerMsg>())
        .unzip();
    let mut drivers = Vec::new();
    for (i, rx) in rxs.into_iter().enumerate() {
        let mut driver = ScanDriver::new(
            i,
            catalog.clone(),
            settings.clone(),
            policy,
            args.peers,
            rx,
            txs.clone(),
            store.writer.sender(),
            crate::inputs::now_unix_ms(),
            stop.clone(),
            Arc::new(crate::scan::blocklist::Blocklist::default()),
        )
        .with_utp(UtpSettings::for_worker(mode, &cfg.worker(i)));
        for p in (i as u32..args.peers).step_by(args.workers) {
            driver.restore(RestoredPeer {
                torrent: 0,
                addr: super::peer_addr(p as u64, args.peers, port),
                sources: 1,
                progress: 0,
                flags: 0,
                last_contact: 0,
                next_visit: Some(0),
            });
        }
        drivers.push(driver);
    }
    let timer_stop = stop.clone();
    let timer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs_f64(secs));
        timer_stop.store(true, Ordering::Relaxed);
    });
    let finished = engine::run_workers(&cfg, drivers, &stop)?;
    let _ = timer.join();
    let mut counts = PhaseCounts::default();
    for (driver, _) in &finished {
        counts.ok += driver.counters.probes_ok.load(Ordering::Relaxed);
        counts.done += driver.counters.probes_done.load(Ordering::Relaxed);
        let utp = &driver.counters.utp;
        counts.utp_started += utp.connects_started.load(Ordering::Relaxed);
        counts.resets_sent += utp.resets_sent.load(Ordering::Relaxed);
    }
    Ok(counts)
}

/// Runs `bench utp`.
pub fn run(args: &UtpBenchArgs) -> io::Result<()> {
    let needed = EngineConfig {
        workers: args.workers,
        max_in_flight: args.in_flight,
        ..Default::default()
    }
    .descriptors_needed();
    engine::net::raise_nofile_limit(needed, &format!("--in-flight {}", args.in_flight))
        .map_err(io::Error::other)?;
    let budget = (args.seconds * 2.0 + 60.0 + args.rounds as f64 * 20.0) as u64;
    let tcp_swarm = super::spawn_fake_swarm(&[
        "--threads".into(),
        args.swarm_threads.to_string(),
        "--pieces".into(),
        args.pieces.to_string(),
        "--max-seconds".into(),
        budget.to_string(),
    ])?;
    let utp_swarm = spawn_fake_utp_swarm(args, budget)?;
    let store = super::bench_store()?;
    let per_round = args.seconds / args.rounds as f64;
    let loadavg_before = super::loadavg();
    let (mut tcp, mut utp) = (PhaseCounts::default(), PhaseCounts::default());
    let (mut tcp_cpu, mut utp_cpu) = (0.0f64, 0.0f64);
    for _ in 0..args.rounds {
        let cpu = super::cpu_secs();
        let c = scan_phase(args, UtpMode::Off, tcp_swarm.port, per_round, &store)?;
        tcp_cpu += super::cpu_secs() - cpu;
        tcp.ok += c.ok;
        tcp.done += c.done;
        std::thread::sleep(Duration::from_millis(300));
        let cpu = super::cpu_secs();
        let c = scan_phase(args, UtpMode::Prefer, utp_swarm.port, per_round, &store)?;
        utp_cpu += super::cpu_secs() - cpu;
        utp.ok += c.ok;
        utp.done += c.done;
        utp.utp_started += c.utp_started;
        utp.resets_sent += c.resets_sent;
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(tcp_swarm);
    drop(utp_swarm);
    let tcp_per_sec = tcp.ok as f64 / args.seconds;
    let utp_per_sec = utp.ok as f64 / args.seconds;
    let ratio = if tcp_per_sec > 0.0 {
        utp_per_sec / tcp_per_sec
    } else {
        0.0
    };
    let out = serde_json::json!({
        "bench": "utp",
        "utp_probes_per_sec": round2(utp_per_sec),
        "tcp_probes_per_sec": round2(tcp_per_sec),
        "utp_over_tcp": round3(ratio),
        "goal": RATIO_GOAL,
        "meets_goal": ratio >= RATIO_GOAL,
        "utp_probes_ok": utp.ok,
        "utp_probes_done": utp.done,
        "utp_connections_started": utp.utp_started,
        "utp_resets_sent": utp.resets_sent,
        "tcp_probes_ok": tcp.ok,
        "tcp_probes_done": tcp.done,
        "utp_cpu_secs_per_1k_probes": if utp.ok > 0 { round3(utp_cpu * 1000.0 / utp.ok as f64) } else { 0.0 },
        "tcp_cpu_secs_per_1k_probes": if tcp.ok > 0 { round3(tcp_cpu * 1000.0 / tcp.ok as f64) } else { 0.0 },
        "loadavg_before": loadavg_before,
        "loadavg_after": super::loadavg(),
        "peers": args.peers,
        "in_flight": args.in_flight,
        "workers": args.workers,
        "swarm_threads": args.swarm_threads,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    super::print_report(&out, args.json);
    Ok(())
}

fn spawn_fake_utp_swarm(args: &UtpBenchArgs, max_seconds: u64) -> io::Result<super::SwarmChild> {
    super::spawn_child(
        "fake-utp-swarm",
        &[
            "--threads".into(),
            args.swarm_threads.to_string(),
            "--pieces".into(),
            args.pieces.to_string(),
            "--max-seconds".into(),
            max_seconds.to_string(),
        ],
    )
}

/// Runs the fake uTP swarm until stdin closes or the time limit.
pub fn run_fake_utp_swarm(args: &FakeUtpSwarmArgs) -> io::Result<()> {
    let mut port = 0;
    let mut sockets = Vec::new();
    for _ in 0..args.threads {
        let socket = bind_udp(port)?;
        if port == 0 {
            port = engine::net::local_addr(socket.as_raw_fd())?.port();
        }
        sockets.push(socket);
    }
    println!("READY {port}");
    let stop = super::stop_on_stdin_or_after(args.max_seconds);
    let threads: Vec<_> = sockets
        .into_iter()
        .map(|socket| {
            let stop = stop.clone();
            let pieces = args.pieces;
            std::thread::spawn(move || serve_utp(socket, pieces, &stop))
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| io::Error::other("fake uTP swarm thread panicked"))??;
    }
    Ok(())
}

/// A UDP socket on 0.0.0.0:`port` that sees loopback traffic only and learns each datagram's
/// destination address.
fn bind_udp(port: u16) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let int_opt = |level: i32, name: i32| -> io::Result<()> {
        let one: i32 = 1;
        // Safety: setsockopt with a valid pointer to an int and its length.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                name,
                (&one as *const i32).cast(),
                size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    int_opt(libc::SOL_SOCKET, libc::SO_REUSEPORT)?;
    int_opt(libc::IPPROTO_IP, libc::IP_PKTINFO)?;
    let dev = b"lo\0";
    // Safety: setsockopt with a valid pointer to the device name and its length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            dev.as_ptr().cast(),
            dev.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("fake uTP swarm: SO_BINDTODEVICE lo failed ({e}); refusing to bind 0.0.0.0 without it"),
        ));
    }
    socket.set_recv_buffer_size(8 << 20)?;
    socket.set_send_buffer_size(8 << 20)?;
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())?;
    Ok(socket)
}

/// Receives one datagram: (length, sender, the address it was sent to).
fn recv_with_dst(fd: i32, buf: &mut [u8]) -> io::Result<(usize, SocketAddrV4, Ipv4Addr)> {
    // Safety: zeroed C structs are valid (all-integer fields and null pointers).
    let mut from: libc::sockaddr_in = unsafe { zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // Safety: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 16]>();
    // Safety: every pointer in `msg` points to live buffers of the stated lengths.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut dst = Ipv4Addr::UNSPECIFIED;
    // Safety: the CMSG macros walk the control buffer the kernel filled within
    // `msg_controllen`; the data of an IP_PKTINFO message is an in_pktinfo (read unaligned).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::IPPROTO_IP && (*cmsg).cmsg_type == libc::IP_PKTINFO {
                let info: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                dst = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let from = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)),
        u16::from_be(from.sin_port),
    );
    Ok((n as usize, from, dst))
}

/// Sends `bytes` to `to` from the local address `src`.
fn send_from(fd: i32, bytes: &[u8], to: SocketAddrV4, src: Ipv4Addr) -> io::Result<()> {
    // Safety: zeroed C structs are valid.
    let mut addr: libc::sockaddr_in = unsafe { zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = to.port().to_be();
    addr.sin_addr.s_addr = u32::from(*to.ip()).to_be();
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut control = [0u64; 8];
    // Safety: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // Safety: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) } as usize;
    // Safety: the control buffer (64 bytes) holds one IP_PKTINFO message (CMSG_SPACE of an
    // in_pktinfo is 32 bytes); the data is written unaligned.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::IPPROTO_IP;
        (*cmsg).cmsg_type = libc::IP_PKTINFO;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize;
        let mut info: libc::in_pktinfo = zeroed();
        info.ipi_spec_dst.s_addr = u32::from(src).to_be();
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
    }
    // Safety: every pointer in `msg` points to live buffers of the stated lengths.
    let n = unsafe { libc::sendmsg(fd, &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One fake peer's side of one uTP connection.
struct FakeConn {
    conn: UtpConnection,
    got: Vec<u8>,
    answered: bool,
    last: Instant,
}

/// Serves one socket until `stop`.
fn serve_utp(socket: socket2::Socket, pieces: u32, stop: &AtomicBool) -> io::Result<()> {
    use std::collections::HashMap;
    let fd = socket.as_raw_fd();
    let clock = Instant::now();
    let mut conns: HashMap<(SocketAddrV4, Ipv4Addr, u16), FakeConn> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    let mut seq: u16 = 1;
    let mut last_sweep = Instant::now();
    let mut answer = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let now_us = clock.elapsed().as_micros() as u64;
        match recv_with_dst(fd, &mut buf) {
            Ok((n, from, dst)) => {
                let bytes = &buf[..n];
                let Some((kind, id)) = utp::looks_like_utp(bytes) else {
                    continue;
                };
                let key = if kind == PacketType::Syn {
                    (from, dst, id.wrapping_add(1))
                } else {
                    (from, dst, id)
                };
                if let Some(c) = conns.get_mut(&key) {
                    let _ = c.conn.on_datagram(bytes, now_us);
                    c.last = Instant::now();
                } else if kind == PacketType::Syn {
                    seq = seq.wrapping_add(7919);
                    if let Ok((conn, state)) = UtpConnection::accept(bytes, seq, now_us) {
                        let _ = send_from(fd, &state, from, dst);
                        conns.insert(
                            key,
                            FakeConn {
                                conn,
                                got: Vec::new(),
                                answered: false,
                                last: Instant::now(),
                            },
                        );
                    }
                    continue;
                } else {
                    continue;
                }
                let c = conns.get_mut(&key).expect("just found");
                c.conn.read(&mut c.got);
                if !c.answered && c.got.len() >= HANDSHAKE_LEN {
                    c.answered = true;
                    let mut info_hash = [0u8; 20];
                    info_hash.copy_from_slice(&c.got[28..48]);
                    let peer = u32::from(dst);
                    answer.clear();
                    answer.extend_from_slice(&handshake(&info_hash, &[b'U'; 20]));
                    let bits = super::fake_swarm::bitfield_for(peer, pieces);
                    answer.extend_from_slice(&(bits.len() as u32 + 1).to_be_bytes());
                    answer.push(5);
                    answer.extend_from_slice(&bits);
                    c.conn.write(&answer);
                }
                if c.answered {
                    c.got.clear();
                }
                if c.conn.is_eof() {
                    c.conn.close();
                }
                while let Some(d) = c.conn.poll_transmit(now_us) {
                    let _ = send_from(fd, &d, from, dst);
                }
                if c.conn.is_closed() {
                    conns.remove(&key);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
        // Retransmissions, and connections the prober left, a few times a second.
        if last_sweep.elapsed() >= Duration::from_millis(100) {
            last_sweep = Instant::now();
            let now_us = clock.elapsed().as_micros() as u64;
            conns.retain(|(from, dst, _), c| {
                while let Some(d) = c.conn.poll_transmit(now_us) {
                    let _ = send_from(fd, &d, *from, *dst);
                }
                !c.conn.is_closed() && c.last.elapsed() < Duration::from_secs(10)
            });
        }
    }
    Ok(())
}
