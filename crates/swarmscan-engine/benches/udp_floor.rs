//! The engine's UDP plane against the kernel floor: request/response datagrams per second
//! through a worker (multishot recvmsg, sendmsg from the send arena, driver calls) versus the
//! cheapest loop we can write with plain libc (`sendmmsg` / `recvmmsg` on one socket, no
//! io_uring, no bookkeeping). Both keep the same number of requests outstanding against the
//! same echo peer (itself a recvmmsg/sendmmsg loop on its own thread); engine and floor rounds
//! alternate and the ratio comes from the same run. Requests are 96 bytes, about a KRPC
//! find_node query. Besides replies per second of wall time, each side's CPU time (its own
//! thread, `RUSAGE_THREAD`) per reply gives replies per CPU-second — what one core sustains,
//! which a shared, loaded machine blurs less. Prints one JSON object.
//!
//! `cargo bench -p swarmscan-engine --bench udp_floor` (3 s per side);
//! `cargo test` runs it for a fraction of a second as a smoke test.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use swarmscan_engine::exchange::Exchange;
use swarmscan_engine::net::RawSockAddr;
use swarmscan_engine::{
    DatagramQueue, Millis, ProbeDone, ProbeRequest, Worker, WorkerConfig, WorkerDriver,
};

const REQUEST_LEN: usize = 96;
/// Requests outstanding at once, on both sides.
const WINDOW: usize = 128;
/// Datagrams per recvmmsg / sendmmsg call.
const BATCH: usize = 64;
/// With nothing back for this long, the window is assumed lost and sent again.
const LOSS_MS: u64 = 20;

/// Keeps `WINDOW` requests outstanding; every reply sends the next request.
struct Client {
    server: SocketAddr,
    request: Vec<u8>,
    outstanding: usize,
    replies: u64,
    refills: u64,
    last_reply: Millis,
}

impl Client {
    fn send(&mut self, out: &mut DatagramQueue) {
        let local = out.local_for(&self.server).expect("an IPv4 socket");
        if out.push(local, self.server, &self.request).is_ok() {
            self.outstanding += 1;
        }
    }
}

impl WorkerDriver for Client {
    type Conv = Exchange;
    fn next_probe(&mut self, _: Millis) -> Option<ProbeRequest<Exchange>> {
        None
    }
    fn probe_done(&mut self, _: Millis, _: ProbeDone<Exchange>) {}
    fn incoming(&mut self, _: Millis, _: SocketAddr, _: SocketAddr) -> Option<(u64, Exchange)> {
        None
    }
    fn datagram(
        &mut self,
        now: Millis,
        _local: SocketAddr,
        _from: SocketAddr,
        _bytes: &[u8],
        out: &mut DatagramQueue,
    ) {
        self.replies += 1;
        self.outstanding = self.outstanding.saturating_sub(1);
        self.last_reply = now;
        self.send(out);
    }
    fn poll_datagrams(&mut self, now: Millis, out: &mut DatagramQueue) {
        if self.outstanding > 0 && now > self.last_reply + LOSS_MS {
            self.refills += 1;
            self.outstanding = 0;
            self.last_reply = now;
        }
        while self.outstanding < WINDOW && out.free_slots() > 0 {
            self.send(out);
        }
    }
    fn next_wakeup(&self) -> Option<Millis> {
        Some(self.last_reply + LOSS_MS + 1)
    }
}

/// CPU seconds (user + system) the calling thread used so far.
fn thread_cpu_secs() -> f64 {
    // Safety: rusage is plain old data; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // Safety: a valid pointer to an rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// One side's round: replies, wall seconds, CPU seconds of the client thread, refills.
struct Round {
    replies: u64,
    secs: f64,
    cpu_secs: f64,
    refills: u64,
}

/// The engine side: a worker on this thread for `secs`.
fn engine_round(server: SocketAddr, secs: f64) -> Round {
    let stop = AtomicBool::new(false);
    let mut client = Client {
        server,
        request: vec![b'q'; REQUEST_LEN],
        outstanding: 0,
        replies: 0,
        refills: 0,
        last_reply: 0,
    };
    let (started, cpu) = (Instant::now(), thread_cpu_secs());
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_secs_f64(secs));
            stop.store(true, Ordering::SeqCst);
        });
        let cfg = WorkerConfig {
            max_in_flight: 1,
            ring_entries: 1024,
            recv_buffers: 16,
            udp: vec!["127.0.0.1:0".parse().unwrap()],
            udp_send_slots: 2 * WINDOW,
            ..WorkerConfig::default()
        };
        let mut worker = Worker::<Exchange>::new(cfg, Instant::now()).expect("UDP worker");
        worker.run(&mut client, &stop).expect("UDP worker runs");
    });
    Round {
        replies: client.replies,
        secs: started.elapsed().as_secs_f64(),
        cpu_secs: thread_cpu_secs() - cpu,
        refills: client.refills,
    }
}

/// Fixed arrays for one recvmmsg / sendmmsg batch; pointers are set right before each call.
struct Batch {
    bufs: Vec<[u8; 2048]>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_in6>,
    msgs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Batch {
        fn zeroed<T>() -> T {
            // Safety: only used for iovec, sockaddr_in6 and mmsghdr, plain C structs for
            // which all-zero is valid (null pointers, zero lengths).
            unsafe { std::mem::zeroed() }
        }
        Batch {
            bufs: vec![[0u8; 2048]; BATCH],
            iovs: (0..BATCH).map(|_| zeroed()).collect(),
            names: (0..BATCH).map(|_| zeroed()).collect(),
            msgs: (0..BATCH).map(|_| zeroed()).collect(),
        }
    }

    /// Points message i at buffer i (`len` bytes) and name i.
    fn prepare(&mut self, count: usize, len: usize) {
        for i in 0..count {
            self.iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            self.iovs[i].iov_len = len;
            let hdr = &mut self.msgs[i].msg_hdr;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_in6).cast();
            hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
            self.msgs[i].msg_len = 0;
        }
    }

    /// recvmmsg: waits (up to the socket's timeout) for one, takes what else is there.
    fn recv(&mut self, fd: i32) -> usize {
        self.prepare(BATCH, 2048);
        // Safety: every message points into this batch's live arrays of the stated sizes.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        n.max(0) as usize
    }

    /// sendmmsg of messages `0..count` as prepared; returns how many left.
    fn send(&mut self, fd: i32, count: usize) -> usize {
        // Safety: as in `recv`.
        let n = unsafe { libc::sendmmsg(fd, self.msgs.as_mut_ptr(), count as u32, 0) };
        n.max(0) as usize
    }
}

/// Echoes every datagram back to its sender until `stop`; counts them in `echoed`.
fn echo_server(socket: UdpSocket, stop: &AtomicBool, echoed: &AtomicU64) {
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let fd = socket.as_raw_fd();
    let mut batch = Batch::new();
    while !stop.load(Ordering::Relaxed) {
        let n = batch.recv(fd);
        for i in 0..n {
            // Answer with what came, to whom it came from.
            batch.iovs[i].iov_len = batch.msgs[i].msg_len as usize;
        }
        let sent = batch.send(fd, n);
        echoed.fetch_add(sent as u64, Ordering::Relaxed);
    }
}

/// The floor side: a sendmmsg/recvmmsg loop on this thread for `secs`.
fn floor_round(server: SocketAddr, secs: f64) -> Round {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(LOSS_MS)))
        .unwrap();
    let fd = socket.as_raw_fd();
    let to = RawSockAddr::new(server);
    let mut out = Batch::new();
    let mut back = Batch::new();
    let send = |out: &mut Batch, count: usize| {
        let mut left = count;
        while left > 0 {
            let now = left.min(BATCH);
            out.prepare(now, REQUEST_LEN);
            for m in &mut out.msgs[..now] {
                m.msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
                m.msg_hdr.msg_namelen = to.len();
            }
            out.send(fd, now);
            left -= now;
        }
    };
    let (mut replies, mut refills) = (0u64, 0u64);
    let (started, cpu) = (Instant::now(), thread_cpu_secs());
    let until = started + Duration::from_secs_f64(secs);
    send(&mut out, WINDOW);
    while Instant::now() < until {
        let n = back.recv(fd);
        if n == 0 {
            refills += 1;
            send(&mut out, WINDOW);
            continue;
        }
        replies += n as u64;
        send(&mut out, n);
    }
    Round {
        replies,
        secs: started.elapsed().as_secs_f64(),
        cpu_secs: thread_cpu_secs() - cpu,
        refills,
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test` runs benches without it: a short smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let (secs_per_side, rounds) = if full { (3.0, 3) } else { (0.3, 1) };
    let server_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = server_socket.local_addr().unwrap();
    let (stop, echoed) = (AtomicBool::new(false), AtomicU64::new(0));
    let (mut engine_rounds, mut floor_rounds) = (Vec::new(), Vec::new());
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| echo_server(server_socket, &stop, &echoed));
        let per_round = secs_per_side / rounds as f64;
        for _ in 0..rounds {
            engine_rounds.push(engine_round(server, per_round));
            floor_rounds.push(floor_round(server, per_round));
        }
        stop.store(true, Ordering::SeqCst);
        handle.join().expect("echo server");
    });
    // Totals over the rounds: replies per wall second and per CPU second of the client thread.
    let sum = |v: &[Round], f: fn(&Round) -> f64| v.iter().map(f).sum::<f64>();
    let per_sec = |v: &[Round]| sum(v, |r| r.replies as f64) / sum(v, |r| r.secs);
    let per_cpu_sec = |v: &[Round]| sum(v, |r| r.replies as f64) / sum(v, |r| r.cpu_secs);
    let (engine, floor) = (per_sec(&engine_rounds), per_sec(&floor_rounds));
    assert!(
        engine > 0.0 && floor > 0.0,
        "no reply came back: engine {engine}/s, floor {floor}/s"
    );
    let (engine_cpu, floor_cpu) = (per_cpu_sec(&engine_rounds), per_cpu_sec(&floor_rounds));
    println!(
        "{{\"bench\":\"udp_floor\",\"seconds_per_side\":{secs_per_side},\"rounds\":{rounds},\"window\":{WINDOW},\"request_bytes\":{REQUEST_LEN},\"engine_per_sec\":{engine:.1},\"floor_per_sec\":{floor:.1},\"ratio\":{:.3},\"engine_per_cpu_sec\":{engine_cpu:.1},\"floor_per_cpu_sec\":{floor_cpu:.1},\"cpu_ratio\":{:.3},\"engine_window_refills\":{},\"floor_window_refills\":{},\"server_echoed\":{}}}",
        engine / floor,
        engine_cpu / floor_cpu,
        sum(&engine_rounds, |r| r.refills as f64),
        sum(&floor_rounds, |r| r.refills as f64),
        echoed.load(Ordering::Relaxed)
    );
}
