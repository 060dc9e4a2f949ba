//! The UDP plane of a worker: one socket per configured address on the worker's own ring.
//!
//! # API
//! - [`WorkerConfig::udp`](crate::WorkerConfig::udp) lists the addresses to bind. Worker `i`
//!   binds each at `port + i` (its own socket and port, no SO_REUSEPORT), or at a port the
//!   kernel picks when the port is 0. Replies come back to the socket that sent the query,
//!   so a worker's UDP protocols (DHT node, uTP, tracker transactions) never see datagrams
//!   meant for another worker, and a DHT node id keeps one stable port. The driver learns
//!   the bound addresses in [`WorkerDriver::on_udp_bound`](crate::WorkerDriver::on_udp_bound)
//!   (also [`Worker::udp_addrs`](crate::Worker::udp_addrs)).
//! - Opt-in for receivers that never reply (the sink): with
//!   [`WorkerConfig::udp_reuseport`](crate::WorkerConfig::udp_reuseport) every worker binds
//!   the configured port itself (SO_REUSEPORT, the kernel spreads senders by address hash);
//!   with [`WorkerConfig::original_dst`](crate::WorkerConfig::original_dst) the sockets set
//!   `IP_RECVORIGDSTADDR` (and try `IP_TRANSPARENT`, for TPROXY), each receive buffer
//!   reserves 64 control bytes, and the driver gets each datagram's original destination in
//!   [`WorkerDriver::datagram_to`](crate::WorkerDriver::datagram_to).
//! - Receive: one multishot `IORING_OP_RECVMSG` per socket from a provided-buffer ring of the
//!   worker's own (buffer group [`UDP_BUF_GROUP`], apart from the TCP receive buffers, so a
//!   UDP flood never starves TCP receives). Every datagram goes to
//!   [`WorkerDriver::datagram`](crate::WorkerDriver::datagram) with the local socket's address
//!   and the sender's; the bytes are borrowed from the buffer, which goes back to the kernel
//!   when the call returns. When the kernel ends the multishot (buffers ran out: ENOBUFS,
//!   counted in `udp_recv_enobufs`, or any other reason) it is armed again on the next loop
//!   iteration; datagrams wait in the socket's receive buffer meanwhile.
//! - Send: the driver pushes datagrams into a [`DatagramQueue`] from `datagram`,
//!   `poll_datagrams` (called every loop iteration) and `datagram_error`. `push` copies the
//!   bytes into a fixed arena of send slots; the worker submits one `IORING_OP_SENDMSG` per
//!   datagram (all of an iteration's go to the kernel in one `io_uring_enter`) and frees the
//!   slot on its completion. The kernel reads the slot (header, address, bytes) until then,
//!   and the arena never moves. A full arena refuses the datagram ([`SendRefused::Full`],
//!   counted in `udp_send_dropped`): memory never grows with the send rate.
//! - Errors never stop the worker. The sockets set `IP_RECVERR` / `IPV6_RECVERR`, so ICMP
//!   errors (port unreachable → ECONNREFUSED, host unreachable, message too big) reach us:
//!   the worker drains the socket's error queue when a receive or send reports one and
//!   hands each to [`WorkerDriver::datagram_error`](crate::WorkerDriver::datagram_error) with
//!   the destination the failed datagram was sent to; each counts in `udp_send_errors`. The
//!   kernel also reports the error once on the socket's next operation: when that is a send,
//!   that datagram did not leave, whatever its destination. So a failed send first drains the
//!   error queue; when that holds errors (they explain the failure) the datagram is sent again
//!   (`udp_send_retries`, up to 4 times, then dropped as `udp_send_given_up`), and only a
//!   failure the queue does not explain is reported for the datagram's own destination.
//! - Timers of UDP protocols are the driver's: it gets `tick` and `poll_datagrams` every
//!   iteration and the worker sleeps no later than
//!   [`WorkerDriver::next_wakeup`](crate::WorkerDriver::next_wakeup).
//! - Demultiplexing by content (KRPC, uTP, tracker replies) is the application's business.
//!
//! # Example: a driver that answers every datagram
//!
//! ```
//! use std::net::SocketAddr;
//! use std::sync::atomic::AtomicBool;
//! use swarmscan_engine::exchange::Exchange;
//! use swarmscan_engine::{DatagramQueue, EngineConfig, Millis, ProbeDone, ProbeRequest, WorkerDriver};
//!
//! #[derive(Default)]
//! struct Answerer {
//!     port: u16,
//!     answered: u64,
//! }
//!
//! impl WorkerDriver for Answerer {
//!     type Conv = Exchange; // no TCP here
//!     fn next_probe(&mut self, _: Millis) -> Option<ProbeRequest<Exchange>> {
//!         None
//!     }
//!     fn probe_done(&mut self, _: Millis, _: ProbeDone<Exchange>) {}
//!     fn incoming(&mut self, _: Millis, _: SocketAddr, _: SocketAddr) -> Option<(u64, Exchange)> {
//!         None
//!     }
//!     fn on_udp_bound(&mut self, udp: &[SocketAddr]) {
//!         self.port = udp[0].port(); // e.g. announce it, or key a DHT node id to it
//!     }
//!     fn datagram(&mut self, _now: Millis, local: SocketAddr, from: SocketAddr, bytes: &[u8], out: &mut DatagramQueue) {
//!         // A real driver routes by content (KRPC, uTP, tracker) and keeps its own timers.
//!         if out.push(local, from, bytes).is_ok() {
//!             self.answered += 1;
//!         } // else the arena is full: the datagram is dropped and counted
//!     }
//! }
//!
//! let cfg = EngineConfig {
//!     workers: 2,
//!     udp: vec!["127.0.0.1:0".parse().unwrap()], // a port per worker
//!     ..Default::default()
//! };
//! let stop = AtomicBool::new(true); // set it later from a signal handler in real use
//! let drivers = vec![Answerer::default(), Answerer::default()];
//! for (driver, stats) in swarmscan_engine::run_workers(&cfg, drivers, &stop).unwrap() {
//!     assert_ne!(driver.port, 0);
//!     println!("port {}: {} answered, {} refused", driver.port, driver.answered, stats.udp_send_dropped);
//! }
//! ```
//!
//! # Bounds and costs
//! Per worker with UDP: `udp_recv_buffers × (udp_max_datagram + 44)` bytes of receive
//! buffers (1024 × 2092 B ≈ 2 MiB by default) shared by its UDP sockets, and
//! `udp_send_slots × (udp_max_datagram + ~100)` bytes of send arena (≈ 2.1 MiB), both
//! reserved at start and touched as used. Per socket: one descriptor, one multishot receive
//! in flight, a 1 MiB kernel receive and send buffer (asked for; capped by
//! `net.core.rmem_max`/`wmem_max`).

use std::fmt;
use std::io;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::buf_ring::BufRing;
use crate::conversation::Millis;
use crate::net::{self, RawSockAddr};
use crate::user_data::{OpKind, UserData};
use crate::worker::{WorkerDriver, WorkerStats};

/// Buffer group of the UDP receive buffers (the TCP receive buffers use the worker index).
pub const UDP_BUF_GROUP: u16 = u16::MAX;

/// Space before the payload in a multishot recvmsg buffer: `io_uring_recvmsg_out` (16 bytes)
/// and the source address field (a `sockaddr_in6`, 28 bytes, also used for IPv4).
const RECV_HEADER: usize = 16 + std::mem::size_of::<libc::sockaddr_in6>();

/// Kernel socket buffer asked for per UDP socket (capped by rmem_max / wmem_max).
const SOCKET_BUFFER_BYTES: usize = 1 << 20;

/// ICMP errors taken from a socket's error queue per report (the rest wait for the next).
const ERRORS_PER_DRAIN: usize = 64;

/// Sends of one datagram after failures that queued ICMP errors explained (each one belongs
/// to an earlier datagram to another address); past this, under a storm of such errors, the
/// datagram is dropped like a lost one (`udp_send_given_up`), never blamed on its address.
const MAX_SEND_RETRIES: u8 = 4;

/// Why [`DatagramQueue::push`] refused a datagram (it was not sent; counted in
/// `udp_send_dropped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRefused {
    /// Every send slot holds a datagram the kernel has not sent yet; try again later (the
    /// worker frees slots as sends complete).
    Full,
    /// Longer than `udp_max_datagram`.
    TooLarge,
    /// No UDP socket of the worker is bound to the given local address, or its address
    /// family differs from the destination's.
    NoSocket,
}

impl fmt::Display for SendRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendRefused::Full => "every UDP send slot is in use",
            SendRefused::TooLarge => "datagram longer than udp_max_datagram",
            SendRefused::NoSocket => {
                "no UDP socket of this worker has that local address and family"
            }
        })
    }
}

impl std::error::Error for SendRefused {}

/// One datagram on its way out. The kernel reads `msg`, `iov`, `to` and the bytes between
/// submission and completion; the arena holding them never moves or shrinks.
struct SendSlot {
    msg: libc::msghdr,
    iov: libc::iovec,
    to: RawSockAddr,
    to_addr: SocketAddr,
    len: usize,
    socket: usize,
    /// Times sent again after a failure that other datagrams' ICMP errors explained (see
    /// `UdpPlane::on_send`).
    retries: u8,
}

/// Datagrams the driver wants sent, in a fixed arena of send slots (see the module docs).
pub struct DatagramQueue {
    slots: Box<[SendSlot]>,
    /// `slots.len() × max_datagram` bytes; slot `i` owns `[i × max, (i + 1) × max)`.
    bytes: Box<[u8]>,
    max_datagram: usize,
    free: Vec<u32>,
    /// Filled slots not yet handed to the kernel, oldest first.
    queued: Vec<u32>,
    /// Bound address of each socket, by socket index.
    locals: Vec<SocketAddr>,
    in_flight: usize,
    dropped: u64,
}

impl DatagramQueue {
    fn new(send_slots: usize, max_datagram: usize, locals: Vec<SocketAddr>) -> DatagramQueue {
        let dummy: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 0));
        let slots = (0..send_slots)
            .map(|_| SendSlot {
                // Safety: msghdr and iovec are plain C structs; all-zero is a valid value
                // (null pointers, zero lengths), filled in before each submission.
                msg: unsafe { std::mem::zeroed() },
                // Safety: as above.
                iov: unsafe { std::mem::zeroed() },
                to: RawSockAddr::new(dummy),
                to_addr: dummy,
                len: 0,
                socket: 0,
                retries: 0,
            })
            .collect();
        DatagramQueue {
            slots,
            // Zeroed allocation: pages are touched only when a slot is first used.
            bytes: vec![0u8; send_slots * max_datagram].into_boxed_slice(),
            max_datagram,
            free: (0..send_slots as u32).rev().collect(),
            queued: Vec::new(),
            locals,
            in_flight: 0,
            dropped: 0,
        }
    }

    /// Queues `bytes` for `to` from the worker's socket bound to `local` (as given to
    /// [`WorkerDriver::datagram`](crate::WorkerDriver::datagram) or
    /// [`DatagramQueue::local_for`]). The bytes are copied; the datagram leaves with the
    /// worker's next submission.
    pub fn push(
        &mut self,
        local: SocketAddr,
        to: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), SendRefused> {
        let refused = |this: &mut DatagramQueue, why| {
            this.dropped += 1;
            Err(why)
        };
        let Some(socket) = self
            .locals
            .iter()
            .position(|l| *l == local && l.is_ipv4() == to.is_ipv4())
        else {
            return refused(self, SendRefused::NoSocket);
        };
        if bytes.len() > self.max_datagram {
            return refused(self, SendRefused::TooLarge);
        }
        let Some(index) = self.free.pop() else {
            return refused(self, SendRefused::Full);
        };
        let start = index as usize * self.max_datagram;
        self.bytes[start..start + bytes.len()].copy_from_slice(bytes);
        let slot = &mut self.slots[index as usize];
        slot.to = RawSockAddr::new(to);
        slot.to_addr = to;
        slot.len = bytes.len();
        slot.socket = socket;
        slot.retries = 0;
        self.queued.push(index);
        Ok(())
    }

    /// The local address of this worker's first UDP socket of `to`'s family.
    pub fn local_for(&self, to: &SocketAddr) -> Option<SocketAddr> {
        self.locals
            .iter()
            .copied()
            .find(|l| l.is_ipv4() == to.is_ipv4())
    }

    /// The worker's UDP sockets' local addresses.
    pub fn locals(&self) -> &[SocketAddr] {
        &self.locals
    }

    /// Datagrams that can be pushed right now.
    pub fn free_slots(&self) -> usize {
        self.free.len()
    }

    /// The longest datagram `push` accepts.
    pub fn max_datagram(&self) -> usize {
        self.max_datagram
    }

    /// Datagrams refused so far (see [`SendRefused`]).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Datagrams pushed and not yet completed by the kernel (queued or in flight).
    pub fn pending(&self) -> usize {
        self.in_flight + self.queued.len()
    }

    /// A queue no ring drains, sending "from" `locals`: drives a driver's datagram path
    /// without sockets (unit tests, benchmarks); [`DatagramQueue::take_queued`] empties it.
    pub fn unbound(
        send_slots: usize,
        max_datagram: usize,
        locals: Vec<SocketAddr>,
    ) -> DatagramQueue {
        DatagramQueue::new(send_slots, max_datagram, locals)
    }

    /// Takes the datagrams queued and not yet submitted, oldest first: (local, to, bytes).
    /// Only for a queue no ring drains ([`DatagramQueue::unbound`]).
    pub fn take_queued(&mut self) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
        let mut out = Vec::with_capacity(self.queued.len());
        for index in std::mem::take(&mut self.queued) {
            let slot = &self.slots[index as usize];
            let start = index as usize * self.max_datagram;
            out.push((
                self.locals[slot.socket],
                slot.to_addr,
                self.bytes[start..start + slot.len].to_vec(),
            ));
            self.free.push(index);
        }
        out
    }
}

struct UdpSocket {
    socket: socket2::Socket,
    local: SocketAddr,
    /// Template for the multishot recvmsg (only the name and control lengths matter); the
    /// kernel reads it at submission, boxed so it never moves while a receive is armed.
    recv_msg: Box<libc::msghdr>,
    armed: bool,
}

/// A worker's UDP sockets, receive buffers and send arena (empty when no UDP is configured).
pub(crate) struct UdpPlane {
    sockets: Vec<UdpSocket>,
    bufs: Option<ManuallyDrop<BufRing>>,
    pub(crate) queue: DatagramQueue,
    /// Socket indexes whose error queue has news.
    errors_pending: Vec<usize>,
}

/// Control bytes reserved per received datagram for the original destination
/// (`IP_ORIGDSTADDR` / `IPV6_ORIGDSTADDR`: a cmsghdr and a sockaddr_in6, aligned).
const ORIGINAL_DST_CONTROL: usize = 64;

/// How a worker's UDP sockets are bound and what they report (see [`WorkerConfig`]'s
/// `udp_reuseport` and `original_dst`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct UdpOptions {
    /// Every worker on the configured port, with SO_REUSEPORT.
    pub(crate) reuseport: bool,
    /// Ask for the original destination of each datagram.
    pub(crate) original_dst: bool,
}

/// Binds worker `index`'s socket for configured address `addr`: port + index (or 0), or with
/// `reuseport` the configured port itself.
pub(crate) fn bind_udp_with(
    addr: SocketAddr,
    index: usize,
    options: UdpOptions,
) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut bind = addr;
    if addr.port() != 0 && !options.reuseport {
        let port = u16::try_from(addr.port() as usize + index).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "udp address {addr}: worker {index} would bind port {} (port + worker index), above 65535",
                    addr.port() as usize + index
                ),
            )
        })?;
        bind.set_port(port);
    }
    let context = |e: io::Error| io::Error::new(e.kind(), format!("udp bind on {bind}: {e}"));
    let domain = if bind.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(context)?;
    if bind.is_ipv6() {
        socket.set_only_v6(true).map_err(context)?;
    }
    // Best effort: the kernel caps these at rmem_max / wmem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    let (level, name) = if bind.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_RECVERR)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
    };
    net::setsockopt_raw(socket.as_raw_fd(), level, name, &1i32).map_err(context)?;
    if options.reuseport {
        net::setsockopt_raw(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            &1i32,
        )
        .map_err(context)?;
    }
    if options.original_dst {
        let (level, name, transparent) = if bind.is_ipv4() {
            (libc::SOL_IP, libc::IP_RECVORIGDSTADDR, libc::IP_TRANSPARENT)
        } else {
            (
                libc::SOL_IPV6,
                libc::IPV6_RECVORIGDSTADDR,
                libc::IPV6_TRANSPARENT,
            )
        };
        net::setsockopt_raw(socket.as_raw_fd(), level, name, &1i32).map_err(context)?;
        // Best effort: a transparent socket receives TPROXY'd datagrams (their header keeps
        // the original destination); it needs CAP_NET_ADMIN, and without it the socket
        // still receives everything sent (or REDIRECTed) to its own address.
        let _ = net::setsockopt_raw(socket.as_raw_fd(), level, transparent, &1i32);
    }
    socket.bind(&bind.into()).map_err(context)?;
    Ok(socket)
}

impl UdpPlane {
    /// Binds `addrs` for worker `index` and registers the receive buffers (none without UDP).
    ///
    /// # Safety
    /// As [`BufRing::register`]: the plane must not be dropped while the ring may still use
    /// its buffers; the worker releases it with [`UdpPlane::release`] or leaks it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn new(
        ring: &IoUring,
        addrs: &[SocketAddr],
        index: usize,
        recv_buffers: u16,
        send_slots: usize,
        max_datagram: u32,
        options: UdpOptions,
    ) -> io::Result<UdpPlane> {
        let mut sockets = Vec::new();
        let control_len = if options.original_dst {
            ORIGINAL_DST_CONTROL
        } else {
            0
        };
        for addr in addrs {
            let socket = bind_udp_with(*addr, index, options)?;
            let local = net::local_addr(socket.as_raw_fd())?;
            // Safety: msghdr is a plain C struct; all-zero is valid.
            let mut recv_msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
            recv_msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            // Only the length matters to a multishot recvmsg: the control bytes land in the
            // provided buffer after the name.
            recv_msg.msg_controllen = control_len;
            sockets.push(UdpSocket {
                socket,
                local,
                recv_msg,
                armed: false,
            });
        }
        let bufs = if sockets.is_empty() {
            None
        } else {
            if max_datagram == 0 || send_slots == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "udp_max_datagram and udp_send_slots must be at least 1",
                ));
            }
            let size = max_datagram as usize + RECV_HEADER + control_len;
            let size = u32::try_from(size).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "udp_max_datagram too large")
            })?;
            // Safety: the caller keeps the plane (and so the buffers) alive while the ring may
            // use them (this function's contract).
            let bufs = unsafe { BufRing::register(ring, UDP_BUF_GROUP, recv_buffers, size) }
                .map_err(|e| io::Error::new(e.kind(), format!("udp receive buffers: {e}")))?;
            Some(ManuallyDrop::new(bufs))
        };
        let locals = sockets.iter().map(|s| s.local).collect();
        let (slots, max) = if sockets.is_empty() {
            (0, 0)
        } else {
            (send_slots, max_datagram as usize)
        };
        Ok(UdpPlane {
            sockets,
            bufs,
            queue: DatagramQueue::new(slots, max, locals),
            errors_pending: Vec::new(),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    pub(crate) fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|s| s.local).collect()
    }

    /// True while the kernel may still use the plane's memory (a receive armed or a send in
    /// flight).
    pub(crate) fn busy(&self) -> bool {
        self.queue.in_flight > 0 || self.sockets.iter().any(|s| s.armed)
    }

    /// Sends in flight (the kernel still reads their slots).
    pub(crate) fn sends_in_flight(&self) -> usize {
        self.queue.in_flight
    }

    /// SQEs arming every socket's receive that is not armed.
    pub(crate) fn arm_receives(&mut self, out: &mut Vec<squeue::Entry>) {
        for (i, s) in self.sockets.iter_mut().enumerate() {
            if s.armed {
                continue;
            }
            s.armed = true;
            out.push(
                opcode::RecvMsgMulti::new(
                    types::Fd(s.socket.as_raw_fd()),
                    &*s.recv_msg as *const libc::msghdr,
                    UDP_BUF_GROUP,
                )
                .build()
                .user_data(UserData::new(OpKind::UdpRecv, i as u32, 0).pack()),
            );
        }
    }

    /// SQEs cancelling the armed receives (at stop).
    pub(crate) fn cancel_receives(&self, out: &mut Vec<squeue::Entry>) {
        for (i, s) in self.sockets.iter().enumerate() {
            if s.armed {
                out.push(
                    opcode::AsyncCancel::new(UserData::new(OpKind::UdpRecv, i as u32, 0).pack())
                        .build()
                        .user_data(UserData::new(OpKind::Cancel, 0, 0).pack()),
                );
            }
        }
    }

    /// SQEs sending every queued datagram.
    pub(crate) fn take_sends(&mut self, out: &mut Vec<squeue::Entry>) {
        let max = self.queue.max_datagram;
        for index in self.queue.queued.drain(..) {
            let slot = &mut self.queue.slots[index as usize];
            // Pointers into the arena: the boxed slices never move or shrink while any send
            // is in flight (the worker leaks the plane rather than free it under the kernel).
            slot.iov.iov_base = self.queue.bytes[index as usize * max..].as_mut_ptr().cast();
            slot.iov.iov_len = slot.len;
            slot.msg.msg_name = slot.to.as_ptr() as *mut libc::c_void;
            slot.msg.msg_namelen = slot.to.len();
            slot.msg.msg_iov = &mut slot.iov;
            slot.msg.msg_iovlen = 1;
            let fd = self.sockets[slot.socket].socket.as_raw_fd();
            out.push(
                opcode::SendMsg::new(types::Fd(fd), &slot.msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
                    .user_data(UserData::new(OpKind::UdpSend, index, 0).pack()),
            );
            self.queue.in_flight += 1;
        }
    }

    /// A multishot recvmsg completion on socket `socket_index`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_recv<D: WorkerDriver>(
        &mut self,
        driver: &mut D,
        now: Millis,
        socket_index: usize,
        res: i32,
        flags: u32,
        deliver: bool,
        stats: &mut WorkerStats,
    ) {
        let bid = cqueue::buffer_select(flags);
        let Some(socket) = self.sockets.get_mut(socket_index) else {
            return;
        };
        if !cqueue::more(flags) {
            // Armed again at the next loop iteration (unless stopping).
            socket.armed = false;
        }
        let local = socket.local;
        if res < 0 {
            match -res {
                libc::ENOBUFS => stats.udp_recv_enobufs += 1,
                libc::ECANCELED => {}
                // An ICMP error reported on the socket: its details are in the error queue.
                _ => self.errors_pending.push(socket_index),
            }
        } else if let (Some(bid), Some(bufs)) = (bid, self.bufs.as_mut()) {
            {
                // Safety: `bid` was handed out by this completion and is recycled just below,
                // after the driver is done with the bytes.
                let data = unsafe { bufs.data(bid, res as usize) };
                let msg = &self.sockets[socket_index].recv_msg;
                match types::RecvMsgOut::parse(data, msg) {
                    Ok(out) if out.is_payload_truncated() => stats.udp_recv_truncated += 1,
                    Ok(out) => match net::sockaddr_from_bytes(out.name_data()) {
                        // At stop, datagrams are no longer handed out (nothing could answer).
                        Some(_) if !deliver => {}
                        Some(from) => {
                            stats.udp_received += 1;
                            let original = if msg.msg_controllen > 0 {
                                net::original_dst_from_control(out.control_data())
                            } else {
                                None
                            };
                            driver.datagram_to(
                                now,
                                local,
                                original,
                                from,
                                out.payload_data(),
                                &mut self.queue,
                            );
                        }
                        None => stats.udp_recv_truncated += 1,
                    },
                    Err(()) => stats.udp_recv_truncated += 1,
                }
            }
            bufs.recycle(bid);
        }
        self.drain_errors(driver, now, stats);
    }

    /// A sendmsg completion for send slot `index`.
    pub(crate) fn on_send<D: WorkerDriver>(
        &mut self,
        driver: &mut D,
        now: Millis,
        index: u32,
        res: i32,
        stats: &mut WorkerStats,
    ) {
        let Some(slot) = self.queue.slots.get_mut(index as usize) else {
            return;
        };
        let (socket, to, retries) = (slot.socket, slot.to_addr, slot.retries);
        self.queue.in_flight -= 1;
        if res >= 0 {
            self.queue.free.push(index);
            stats.udp_sent += 1;
            return;
        }
        // The kernel reports an ICMP error (port unreachable, …) on the socket's next
        // operation, whatever that operation's destination: a send can fail for an earlier
        // datagram to another address. Such errors are also in the socket's error queue with
        // their own destinations, and reading the queue clears the pending one. So: report
        // the queued errors; if there were any, the failure was theirs and the datagram goes
        // out again (a busy socket meeting gone peers can fail several sends in a row); only
        // a failure the queue does not explain belongs to this datagram's destination.
        let explained = self.drain_socket_errors(socket, driver, now, stats) > 0;
        if explained && retries < MAX_SEND_RETRIES {
            self.queue.slots[index as usize].retries += 1;
            stats.udp_send_retries += 1;
            self.queue.queued.push(index);
            return;
        }
        self.queue.free.push(index);
        if explained {
            stats.udp_send_given_up += 1;
        } else {
            stats.udp_send_errors += 1;
            let local = self.sockets[socket].local;
            driver.datagram_error(now, local, to, -res, &mut self.queue);
        }
    }

    /// Bookkeeping only, for a worker going away: a receive completion (`flags`) on socket
    /// `socket_index` (its buffer, if any, is not given back).
    pub(crate) fn receive_ended(&mut self, socket_index: usize, flags: u32) {
        if let Some(socket) = self.sockets.get_mut(socket_index) {
            if !cqueue::more(flags) {
                socket.armed = false;
            }
        }
    }

    /// Bookkeeping only, for a worker going away: send slot `index` completed.
    pub(crate) fn send_ended(&mut self, index: u32) {
        if (index as usize) < self.queue.slots.len() {
            self.queue.in_flight -= 1;
            self.queue.free.push(index);
        }
    }

    /// Reads the error queues of the sockets that reported errors and tells the driver.
    fn drain_errors<D: WorkerDriver>(
        &mut self,
        driver: &mut D,
        now: Millis,
        stats: &mut WorkerStats,
    ) {
        while let Some(i) = self.errors_pending.pop() {
            self.drain_socket_errors(i, driver, now, stats);
        }
    }

    /// Reads socket `i`'s error queue (at most [`ERRORS_PER_DRAIN`]) and tells the driver of
    /// each error; returns how many there were.
    fn drain_socket_errors<D: WorkerDriver>(
        &mut self,
        i: usize,
        driver: &mut D,
        now: Millis,
        stats: &mut WorkerStats,
    ) -> usize {
        let (fd, local) = (self.sockets[i].socket.as_raw_fd(), self.sockets[i].local);
        let mut read = 0;
        while read < ERRORS_PER_DRAIN {
            let Some((to, errno)) = read_queued_error(fd) else {
                break;
            };
            read += 1;
            stats.udp_send_errors += 1;
            driver.datagram_error(now, local, to, errno, &mut self.queue);
        }
        read
    }

    /// Unregisters the receive buffers and frees everything; only when not [`busy`](Self::busy).
    pub(crate) fn release(&mut self, ring: &IoUring) {
        debug_assert!(!self.busy());
        if let Some(mut bufs) = self.bufs.take() {
            // Unregister first so no receive can pick a buffer from memory we unmap.
            let _ = ring.submitter().unregister_buf_ring(UDP_BUF_GROUP);
            // Safety: taken out of the plane, so dropped exactly once; no receive is armed and
            // the ring no longer knows the group.
            unsafe { ManuallyDrop::drop(&mut bufs) };
        }
    }
}

/// One entry of the socket's error queue (MSG_ERRQUEUE, non-blocking): the destination of the
/// datagram that failed and the errno (e.g. ECONNREFUSED for an ICMP port unreachable).
fn read_queued_error(fd: RawFd) -> Option<(SocketAddr, i32)> {
    // Safety: sockaddr_storage is plain old data; zero is valid.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // u64 for the alignment cmsghdr needs.
    let mut control = [0u64; 64];
    let mut payload = [0u8; 64];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // Safety: msghdr is plain old data; zero is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // Safety: every pointer in `msg` refers to a live local of the stated size.
    let rc = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
    if rc < 0 {
        return None;
    }
    let mut errno = 0;
    // Safety: `msg` was filled by recvmsg; the CMSG macros walk inside msg_control's length.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // Safety: non-null cmsg pointers from CMSG_FIRSTHDR/NXTHDR lie inside `control`.
        let header = unsafe { &*cmsg };
        let is_recverr = (header.cmsg_level == libc::IPPROTO_IP
            && header.cmsg_type == libc::IP_RECVERR)
            || (header.cmsg_level == libc::IPPROTO_IPV6 && header.cmsg_type == libc::IPV6_RECVERR);
        if is_recverr {
            // Safety: for these cmsg types the data starts with a sock_extended_err; read
            // unaligned to be safe whatever the buffer's layout.
            let err: libc::sock_extended_err =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
            errno = err.ee_errno as i32;
        }
        // Safety: as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    let to = net::sockaddr_from_storage(&name)?;
    Some((to, if errno == 0 { libc::EIO } else { errno }))
}
