//! The per-core worker: one io_uring, one slab of probe slots, one timer wheel, one buffer
//! ring. It drives [`Conversation`]s for the probes a [`WorkerDriver`] asks for and for the
//! connections its listeners accept, and hands every conversation back exactly once.

use std::collections::VecDeque;
use std::io;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::buf_ring::BufRing;
use super::conversation::{Conversation, Millis, Verdict};
use super::net::{self, RawSockAddr};
use super::rate::ConnectBudget;
use super::ring::{self, RingFlags};
use super::slots::Slab;
use super::udp::{DatagramQueue, UdpPlane};
use super::user_data::{OpKind, UserData};
use super::wheel::{TimerEntry, TimerWheel, TICK_MS};

/// Settings of one worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Worker number (also the buffer group id and, with `pin_cpu`, the core).
    pub index: usize,
    /// Slots for outgoing probes alive at once (= descriptors used).
    pub max_in_flight: usize,
    /// Held connections (see [`Conversation::held`]) on top of `max_in_flight`.
    pub max_held: usize,
    /// Accepted connections (not held) alive at once, on top of `max_in_flight`: a budget of
    /// their own, so a flood of accepted connections never takes an outgoing probe's slot.
    pub max_incoming: usize,
    /// New outgoing connects per second (0 = unlimited).
    pub connects_per_sec: u64,
    /// Token-bucket burst in connects.
    pub connect_burst: u64,
    /// Connect deadline (LINK_TIMEOUT on the connect); expiry reports ETIMEDOUT.
    pub connect_timeout_ms: u64,
    /// Submission queue size (completion queue is 4×).
    pub ring_entries: u32,
    /// Receive buffers in the provided-buffer ring (power of two).
    pub recv_buffers: u16,
    /// Size of each receive buffer.
    pub recv_buffer_size: u32,
    /// Addresses to accept on (SO_REUSEPORT: every worker binds the same ones).
    pub listen: Vec<SocketAddr>,
    /// Pin the worker thread to this CPU.
    pub pin_cpu: Option<usize>,
    /// Longest sleep in the kernel, so the stop flag is seen promptly.
    pub max_wait_ms: u64,
    /// Longest time to wait for in-flight operations to drain at stop.
    pub drain_timeout_ms: u64,
    /// UDP addresses to bind, one socket each (see [`crate::udp`]): this worker binds
    /// `port + index` (its own socket and port), or a port of the kernel's choosing for
    /// port 0. Empty = no UDP.
    pub udp: Vec<SocketAddr>,
    /// UDP receive buffers (power of two), shared by this worker's UDP sockets.
    pub udp_recv_buffers: u16,
    /// Longest UDP datagram received or sent; longer ones are dropped and counted.
    pub udp_max_datagram: u32,
    /// Datagrams queued or in flight at once (the send arena); more are refused.
    pub udp_send_slots: usize,
    /// Recover where redirected traffic was headed (see [`crate::net::original_dst`]): TCP
    /// accepts ask `SO_ORIGINAL_DST`, UDP sockets set `IP_RECVORIGDSTADDR`; the driver gets
    /// it in [`WorkerDriver::incoming_to`] and [`WorkerDriver::datagram_to`]. Off: no extra
    /// syscall per accept.
    pub original_dst: bool,
    /// Bind every worker's UDP sockets on the configured port itself with SO_REUSEPORT (the
    /// kernel spreads senders over workers by address hash) instead of `port + index`. For
    /// receivers that never reply (the sink).
    pub udp_reuseport: bool,
    /// When `max_incoming` accepted connections are alive, close the oldest accepted one
    /// (handed back as `Closed(Some(ECONNABORTED))`) to make room, instead of resetting the
    /// new one.
    pub evict_oldest_incoming: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            index: 0,
            max_in_flight: 1024,
            max_held: 0,
            max_incoming: 1024,
            connects_per_sec: 0,
            connect_burst: 64,
            connect_timeout_ms: 5000,
            ring_entries: 4096,
            recv_buffers: 1024,
            recv_buffer_size: 4096,
            listen: Vec::new(),
            pin_cpu: None,
            max_wait_ms: 100,
            drain_timeout_ms: 3000,
            udp: Vec::new(),
            udp_recv_buffers: 1024,
            udp_max_datagram: 2048,
            udp_send_slots: 1024,
            original_dst: false,
            udp_reuseport: false,
            evict_oldest_incoming: false,
        }
    }
}

/// "Probe this address with this conversation, tagged with this token."
pub struct ProbeRequest<C> {
    /// Where to connect (127.0.0.0/8 in tests).
    pub addr: SocketAddr,
    /// The owner's tag, returned in [`ProbeDone`].
    pub token: u64,
    /// Drives the exchange.
    pub conv: C,
}

/// How a conversation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The conversation returned [`Verdict::Finished`].
    Finished,
    /// The connection ended first; `on_closed` was called with this errno (None = EOF).
    /// `ECANCELED` means the engine stopped.
    Closed(Option<i32>),
}

/// A conversation handed back to its owner, with timings.
pub struct ProbeDone<C> {
    /// The owner's tag.
    pub token: u64,
    /// The conversation, after its last callback.
    pub conv: C,
    /// Remote address.
    pub peer: SocketAddr,
    /// True for a connection accepted by a listener.
    pub incoming: bool,
    /// How it ended.
    pub ending: Ending,
    /// Milliseconds from start to established connection (0 for incoming), if it connected.
    pub connect_ms: Option<Millis>,
    /// Milliseconds from start to hand-back.
    pub total_ms: Millis,
    /// When the probe started on the engine clock.
    pub started_at: Millis,
}

/// The scan layer's side of a worker loop. One driver per worker, owned by it.
pub trait WorkerDriver {
    /// The conversation type this driver hands out.
    type Conv: Conversation;
    /// Called while connect tokens and slots are free; `None` = nothing to probe right now.
    fn next_probe(&mut self, now: Millis) -> Option<ProbeRequest<Self::Conv>>;
    /// A conversation ended (every started or accepted one arrives here exactly once).
    fn probe_done(&mut self, now: Millis, done: ProbeDone<Self::Conv>);
    /// A listener accepted a connection from `remote` on `local`; return a token and a
    /// conversation to drive it, or `None` to reset it.
    fn incoming(
        &mut self,
        now: Millis,
        remote: SocketAddr,
        local: SocketAddr,
    ) -> Option<(u64, Self::Conv)>;
    /// As [`incoming`](Self::incoming), with the destination the connection was originally
    /// sent to when [`WorkerConfig::original_dst`] is on and the kernel knows it (a
    /// REDIRECTed connection: the port it was redirected from; otherwise `local`). The
    /// engine calls this one; the default forwards to `incoming`.
    fn incoming_to(
        &mut self,
        now: Millis,
        remote: SocketAddr,
        local: SocketAddr,
        _original_dst: Option<SocketAddr>,
    ) -> Option<(u64, Self::Conv)> {
        self.incoming(now, remote, local)
    }
    /// Called once when the worker starts running, with a handle that wakes it (give it to
    /// whoever feeds this driver from other threads) and the listeners' local addresses.
    fn on_start(&mut self, _waker: Waker, _listening: &[SocketAddr]) {}
    /// A conversation returned [`Verdict::Ask`]: it has news for its owner (e.g. a probe
    /// has its answer, or a watched peer crossed a threshold). The owner may look at it and
    /// change it (start or stop holding it, append bytes to `send`) and says what happens
    /// next: `Continue` keeps the connection open, `Finished` sends `send` and closes it
    /// (the conversation then comes back through `probe_done`). `Ask` counts as `Continue`.
    fn on_ask(
        &mut self,
        _now: Millis,
        _token: u64,
        _peer: SocketAddr,
        _incoming: bool,
        _conv: &mut Self::Conv,
        _send: &mut Vec<u8>,
    ) -> Verdict {
        Verdict::Finished
    }
    /// Called once per loop iteration.
    fn tick(&mut self, _now: Millis) {}
    /// Called once when the worker starts running (after `on_start`), with the local
    /// addresses of its UDP sockets (empty without UDP), in the order of
    /// [`WorkerConfig::udp`].
    fn on_udp_bound(&mut self, _udp: &[SocketAddr]) {}
    /// A datagram from `from` arrived on the UDP socket bound to `local`; `bytes` is lent for
    /// the call only. Answers go into `out`.
    fn datagram(
        &mut self,
        _now: Millis,
        _local: SocketAddr,
        _from: SocketAddr,
        _bytes: &[u8],
        _out: &mut DatagramQueue,
    ) {
    }
    /// As [`datagram`](Self::datagram), with the datagram's original destination when
    /// [`WorkerConfig::original_dst`] is on (the `IP_ORIGDSTADDR` / `IPV6_ORIGDSTADDR`
    /// control message: a TPROXY'd datagram's real destination). The engine calls this one;
    /// the default forwards to `datagram`.
    fn datagram_to(
        &mut self,
        now: Millis,
        local: SocketAddr,
        _original_dst: Option<SocketAddr>,
        from: SocketAddr,
        bytes: &[u8],
        out: &mut DatagramQueue,
    ) {
        self.datagram(now, local, from, bytes, out)
    }
    /// Called once per loop iteration (after `tick`) to queue datagrams of the driver's own
    /// (queries, retries); keep it cheap when there is nothing to send.
    fn poll_datagrams(&mut self, _now: Millis, _out: &mut DatagramQueue) {}
    /// A datagram sent from `local` to `to` failed with `errno`: the send itself, or an ICMP
    /// error that came back (ECONNREFUSED: port unreachable; EHOSTUNREACH, ENETUNREACH;
    /// EMSGSIZE: too big for the path).
    fn datagram_error(
        &mut self,
        _now: Millis,
        _local: SocketAddr,
        _to: SocketAddr,
        _errno: i32,
        _out: &mut DatagramQueue,
    ) {
    }
    /// When the driver wants `tick`/`next_probe`/`poll_datagrams` again at the latest (None =
    /// no wish); UDP protocols' timers (retries, timeouts) go here.
    fn next_wakeup(&self) -> Option<Millis> {
        None
    }
    /// True to stop the worker (in-flight probes are handed back with ECANCELED).
    fn should_stop(&self) -> bool {
        false
    }
}

/// Counters of one worker.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerStats {
    /// Outgoing probes started.
    pub probes_started: u64,
    /// Connections accepted and given a conversation.
    pub incoming_accepted: u64,
    /// Accepted connections the driver refused or no slot was free for (including
    /// `incoming_budget_full`).
    pub incoming_refused: u64,
    /// Accepted connections reset at once because `max_incoming` were alive.
    pub incoming_budget_full: u64,
    /// Most accepted (not held) connections alive at once.
    pub incoming_max: usize,
    /// Accepted connections closed to make room for a newer one
    /// ([`WorkerConfig::evict_oldest_incoming`]).
    pub incoming_evicted: u64,
    /// Accepted connections reset because every slot was taken (with eviction: by evicted
    /// connections still closing), counted in `incoming_refused` too.
    pub incoming_no_slot: u64,
    /// Conversations handed back with `Finished`.
    pub finished: u64,
    /// Conversations handed back with `Closed`.
    pub closed: u64,
    /// Most slots live at once.
    pub in_flight_max: usize,
    /// Most held connections at once (see [`Conversation::held`]).
    pub held_max: usize,
    /// Receives that found the buffer ring empty (re-armed later).
    pub recv_enobufs: u64,
    /// Completions ignored because their slot's generation moved on.
    pub stale_completions: u64,
    /// Sends the kernel completed only in part (the rest was sent again).
    pub partial_sends: u64,
    /// Times the submission queue was full and had to be flushed early.
    pub sq_full: u64,
    /// Listener accept errors (e.g. EMFILE).
    pub accept_errors: u64,
    /// Slots whose operations did not complete within the drain timeout at stop (their
    /// memory is leaked on purpose so the kernel never writes into freed memory).
    pub leaked_slots: usize,
    /// Ring setup flags that were accepted.
    pub single_issuer: bool,
    /// DEFER_TASKRUN was accepted.
    pub defer_taskrun: bool,
    /// Datagrams received and handed to the driver.
    pub udp_received: u64,
    /// Datagrams the kernel sent.
    pub udp_sent: u64,
    /// Failed UDP sends plus ICMP errors reported for sent datagrams (each one also went to
    /// `datagram_error`).
    pub udp_send_errors: u64,
    /// Failed sends sent again: the failure was an earlier datagram's ICMP error, reported
    /// on the socket's next operation (the error queue held it).
    pub udp_send_retries: u64,
    /// Datagrams dropped after several sends in a row failed on other datagrams' ICMP errors
    /// (never reported for their own destination).
    pub udp_send_given_up: u64,
    /// Datagrams the queue refused (arena full, too large, no such socket): never sent.
    pub udp_send_dropped: u64,
    /// UDP receives that found their buffer ring empty (re-armed at the next iteration).
    pub udp_recv_enobufs: u64,
    /// Datagrams dropped on receipt: longer than `udp_max_datagram`, or unreadable source.
    pub udp_recv_truncated: u64,
    /// UDP sends still in flight when the drain timeout ran out at stop (their memory is
    /// leaked on purpose, like `leaked_slots`).
    pub udp_sends_leaked: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for IORING_OP_SOCKET.
    Socket,
    /// Connect submitted.
    Connecting,
    /// Established: receiving, maybe sending.
    Open,
    /// Handed back; waiting for outstanding operations before the slot is freed.
    Closing,
}

struct Slot<C> {
    conv: Option<C>,
    token: u64,
    peer: SocketAddr,
    /// The kernel reads this during a pending connect; the slab never moves it.
    addr: RawSockAddr,
    fd: RawFd,
    state: State,
    incoming: bool,
    /// Counted in `Worker::held` (the conversation said [`Conversation::held`]).
    held: bool,
    /// Operations whose final completion is still to come.
    pending: u8,
    recv_armed: bool,
    send_in_flight: bool,
    /// Close the socket once the in-flight send completes.
    close_after_send: bool,
    started: Millis,
    connected_at: Option<Millis>,
    /// Deadline of the live wheel entry (Millis::MAX = none).
    timer_at: Millis,
    /// Bytes being sent (the kernel reads them; never touched until the send completes).
    sending: Vec<u8>,
    send_offset: usize,
    /// Bytes produced while a send was in flight.
    queued: Vec<u8>,
}

impl<C> Slot<C> {
    /// A probe we dial: its socket is still to be created (one operation pending).
    fn outgoing(conv: C, token: u64, peer: SocketAddr, now: Millis) -> Slot<C> {
        Slot {
            pending: 1,
            ..Slot::new(conv, token, peer, -1, State::Socket, now)
        }
    }

    /// A connection a listener accepted: open now, on `fd`.
    fn accepted(conv: C, token: u64, peer: SocketAddr, fd: RawFd, now: Millis) -> Slot<C> {
        Slot {
            incoming: true,
            connected_at: Some(now),
            ..Slot::new(conv, token, peer, fd, State::Open, now)
        }
    }

    fn new(conv: C, token: u64, peer: SocketAddr, fd: RawFd, state: State, now: Millis) -> Slot<C> {
        Slot {
            conv: Some(conv),
            token,
            peer,
            addr: RawSockAddr::new(peer),
            fd,
            state,
            incoming: false,
            held: false,
            pending: 0,
            recv_armed: false,
            send_in_flight: false,
            close_after_send: false,
            started: now,
            connected_at: None,
            timer_at: Millis::MAX,
            sending: Vec::new(),
            send_offset: 0,
            queued: Vec::new(),
        }
    }
}

struct Listener {
    socket: socket2::Socket,
    armed: bool,
    rearm_at: Option<Millis>,
}

/// Wakes a worker from another thread (e.g. after pushing to its cross-core channel), so it
/// does not sleep until its next deadline. Cheap to clone; `wake` is one eventfd write.
#[derive(Clone)]
pub struct Waker {
    fd: Arc<OwnedFd>,
}

impl Waker {
    /// Makes the worker's current (or next) wait return promptly.
    pub fn wake(&self) {
        let one: u64 = 1;
        // Safety: writing 8 bytes from a live u64 to our eventfd; EAGAIN (counter saturated)
        // means a wake-up is already pending, which is all we want.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// One worker: ring, slab, wheel, buffer ring, listeners.
pub struct Worker<C: Conversation> {
    // Field order matters for drop: the ring goes first, then the memory it may reference.
    ring: IoUring,
    bufs: ManuallyDrop<BufRing>,
    /// UDP sockets, receive buffers and send arena; released in Drop only when idle.
    udp: ManuallyDrop<UdpPlane>,
    udp_sqes: Vec<squeue::Entry>,
    slots: Slab<Slot<C>>,
    wheel: TimerWheel,
    budget: ConnectBudget,
    listeners: Vec<Listener>,
    wake_fd: Arc<OwnedFd>,
    wake_armed: bool,
    connect_timeout: Box<types::Timespec>,
    epoch: Instant,
    cfg: WorkerConfig,
    stats: WorkerStats,
    scratch: Vec<u8>,
    due: Vec<TimerEntry>,
    cqes: Vec<(u64, i32, u32)>,
    rearm_recv: Vec<(u32, u32)>,
    /// Chains that did not fit in the submission queue even after a flush.
    overflow: VecDeque<Vec<squeue::Entry>>,
    driver_idle: bool,
    stopping: bool,
    /// Live slots whose conversation is held (not counted against `max_in_flight`).
    held: usize,
    /// Live slots of accepted connections that are not held (counted against `max_incoming`,
    /// not `max_in_flight`), including ones closing.
    incoming: usize,
    /// Accepted connections oldest first, with [`WorkerConfig::evict_oldest_incoming`]
    /// (entries of closed ones are skipped when met, and dropped when it grows past twice the
    /// budget).
    accept_order: VecDeque<(u32, u32)>,
}

fn errno_of(res: i32) -> i32 {
    -res
}

impl<C: Conversation> Worker<C> {
    /// Builds the ring (refusing clearly on a kernel without what we need), the buffer ring,
    /// the listeners. Call on the thread that will run the worker (single-issuer ring).
    pub fn new(cfg: WorkerConfig, epoch: Instant) -> io::Result<Worker<C>> {
        if let Some(cpu) = cfg.pin_cpu {
            net::pin_current_thread(cpu)?;
        }
        let (ring, flags): (IoUring, RingFlags) = ring::build_ring(cfg.ring_entries)?;
        // Safety: `bufs` is kept in a ManuallyDrop field of the worker and freed only after the
        // group is unregistered (Worker's Drop), or never when operations may still use it.
        let bufs = unsafe {
            BufRing::register(
                &ring,
                cfg.index as u16,
                cfg.recv_buffers,
                cfg.recv_buffer_size,
            )
        }?;
        // Safety: the plane is kept in a ManuallyDrop field of the worker and released only
        // when the kernel is done with it (Worker's Drop), else leaked.
        let udp = unsafe {
            UdpPlane::new(
                &ring,
                &cfg.udp,
                cfg.index,
                cfg.udp_recv_buffers,
                cfg.udp_send_slots,
                cfg.udp_max_datagram,
                super::udp::UdpOptions {
                    reuseport: cfg.udp_reuseport,
                    original_dst: cfg.original_dst,
                },
            )
        }?;
        let mut listeners = Vec::new();
        for addr in &cfg.listen {
            let socket = net::reuseport_listener(*addr, 4096)
                .map_err(|e| io::Error::new(e.kind(), format!("listen on {addr}: {e}")))?;
            listeners.push(Listener {
                socket,
                armed: false,
                rearm_at: Some(0),
            });
        }
        // Safety: eventfd(2) with no pointers; the result is checked before use.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // Safety: efd is a fresh descriptor we own.
        let wake_fd = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        let ms = cfg.connect_timeout_ms;
        let connect_timeout = Box::new(
            types::Timespec::new()
                .sec(ms / 1000)
                .nsec(((ms % 1000) * 1_000_000) as u32),
        );
        let now = epoch.elapsed().as_millis() as Millis;
        let stats = WorkerStats {
            single_issuer: flags.single_issuer,
            defer_taskrun: flags.defer_taskrun,
            ..Default::default()
        };
        Ok(Worker {
            ring,
            bufs: ManuallyDrop::new(bufs),
            udp: ManuallyDrop::new(udp),
            udp_sqes: Vec::new(),
            // With eviction, room for as many evicted connections still closing as open ones.
            slots: Slab::with_capacity(
                cfg.max_in_flight
                    + cfg.max_held
                    + cfg.max_incoming * (1 + usize::from(cfg.evict_oldest_incoming)),
            ),
            wheel: TimerWheel::new(now),
            budget: ConnectBudget::new(
                cfg.connects_per_sec,
                cfg.connect_burst,
                cfg.max_in_flight,
                now,
            ),
            listeners,
            wake_fd,
            wake_armed: false,
            connect_timeout,
            epoch,
            cfg,
            stats,
            scratch: Vec::with_capacity(256),
            due: Vec::new(),
            cqes: Vec::with_capacity(1024),
            rearm_recv: Vec::new(),
            overflow: VecDeque::new(),
            driver_idle: false,
            stopping: false,
            held: 0,
            incoming: 0,
            accept_order: VecDeque::new(),
        })
    }

    /// Bytes a worker reserves (and touches) per slot of `max_in_flight + max_held` when it
    /// is built, whether or not the slot is ever used.
    pub fn bytes_per_slot() -> usize {
        Slab::<Slot<C>>::bytes_per_slot()
    }

    /// Milliseconds since the engine epoch.
    pub fn now(&self) -> Millis {
        self.epoch.elapsed().as_millis() as Millis
    }

    /// Slots live (probes and accepted connections, including ones closing).
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }

    /// Held connections live (see [`Conversation::held`]).
    pub fn held(&self) -> usize {
        self.held
    }

    /// Accepted connections live that are not held (see [`WorkerConfig::max_incoming`]).
    pub fn incoming(&self) -> usize {
        self.incoming
    }

    /// Slots that count against `max_in_flight`.
    fn probing(&self) -> usize {
        self.slots.len() - self.held - self.incoming
    }

    /// Counters so far.
    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    /// A handle other threads use to wake this worker.
    pub fn waker(&self) -> Waker {
        Waker {
            fd: self.wake_fd.clone(),
        }
    }

    /// Local addresses of the listeners (useful when binding port 0).
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| net::local_addr(l.socket.as_raw_fd()).ok())
            .collect()
    }

    /// Local addresses of the UDP sockets, in the order of [`WorkerConfig::udp`].
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp.local_addrs()
    }

    /// Runs until `stop` is set or the driver says so, then drains: every conversation still
    /// live is handed back with `Closed(Some(ECANCELED))`.
    pub fn run<D: WorkerDriver<Conv = C>>(
        &mut self,
        driver: &mut D,
        stop: &AtomicBool,
    ) -> io::Result<WorkerStats> {
        driver.on_start(self.waker(), &self.listen_addrs());
        driver.on_udp_bound(&self.udp_addrs());
        while !stop.load(Ordering::Relaxed) && !driver.should_stop() {
            self.step(driver, self.cfg.max_wait_ms)?;
        }
        self.shutdown(driver)?;
        Ok(self.stats.clone())
    }

    /// One loop iteration: fire timers, start probes, submit, wait up to `max_wait_ms` (or
    /// the next deadline), process completions.
    pub fn step<D: WorkerDriver<Conv = C>>(
        &mut self,
        driver: &mut D,
        max_wait_ms: u64,
    ) -> io::Result<()> {
        let now = self.now();
        self.flush_overflow();
        self.fire_timers(driver, now);
        driver.tick(now);
        self.udp_poll(driver, now);
        self.arm_listeners(now);
        self.rearm_receives();
        if !self.stopping {
            self.start_probes(driver, now);
        }
        let mut wake = now + max_wait_ms;
        if let Some(t) = self.wheel.next_deadline() {
            wake = wake.min(t);
        }
        if let Some(t) = driver.next_wakeup() {
            wake = wake.min(t);
        }
        if !self.driver_idle && self.probing() < self.budget.max_in_flight() {
            if let Some(t) = self.budget.next_token_at() {
                wake = wake.min(t);
            }
        }
        for l in &self.listeners {
            if let Some(t) = l.rearm_at {
                wake = wake.min(t);
            }
        }
        let wait_ms = wake.saturating_sub(self.now());
        self.submit_and_wait(wait_ms)?;
        self.process_completions(driver);
        self.flush_datagrams();
        Ok(())
    }

    /// The driver's own datagrams, then receives armed and every queued datagram handed to
    /// the submission queue.
    fn udp_poll<D: WorkerDriver<Conv = C>>(&mut self, driver: &mut D, now: Millis) {
        if self.udp.is_empty() {
            return;
        }
        if !self.stopping {
            driver.poll_datagrams(now, &mut self.udp.queue);
            let mut sqes = std::mem::take(&mut self.udp_sqes);
            self.udp.arm_receives(&mut sqes);
            self.push_each(&mut sqes);
            self.udp_sqes = sqes;
        }
        self.flush_datagrams();
    }

    /// Hands every datagram the driver queued to the submission queue.
    fn flush_datagrams(&mut self) {
        if self.udp.is_empty() {
            return;
        }
        let mut sqes = std::mem::take(&mut self.udp_sqes);
        self.udp.take_sends(&mut sqes);
        self.push_each(&mut sqes);
        self.udp_sqes = sqes;
        self.stats.udp_send_dropped = self.udp.queue.dropped();
    }

    /// Pushes independent SQEs one by one (a batch may exceed the queue's free space).
    fn push_each(&mut self, sqes: &mut Vec<squeue::Entry>) {
        for entry in sqes.drain(..) {
            self.push(std::slice::from_ref(&entry));
        }
    }

    fn submit_and_wait(&mut self, wait_ms: u64) -> io::Result<()> {
        let result = if wait_ms == 0 {
            // A zero timeout still sets GETEVENTS, which DEFER_TASKRUN needs to run the
            // deferred completions; plain submit() would leave them for the next wait.
            let ts = types::Timespec::new();
            let args = types::SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        } else {
            let ts = types::Timespec::new()
                .sec(wait_ms / 1000)
                .nsec(((wait_ms % 1000) * 1_000_000) as u32);
            let args = types::SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        };
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(io::Error::new(e.kind(), format!("io_uring_enter: {e}"))),
        }
    }

    /// Pushes a chain of SQEs contiguously, flushing the queue to the kernel when full.
    fn push(&mut self, entries: &[squeue::Entry]) {
        if !self.overflow.is_empty() {
            self.overflow.push_back(entries.to_vec());
            return;
        }
        for attempt in 0..2 {
            {
                let mut sq = self.ring.submission();
                if sq.capacity() - sq.len() >= entries.len() {
                    // Safety: every pointer in these SQEs refers to memory that stays valid
                    // until the operation's final completion: slot fields in the fixed slab
                    // (freed only when `pending` reaches 0), the boxed connect timespec, the
                    // buffer rings, the UDP plane's recvmsg headers and send arena (freed only
                    // when no receive is armed and no send in flight). Timespecs for link timeouts are copied at submission.
                    unsafe { sq.push_multiple(entries) }.expect("capacity checked");
                    return;
                }
            }
            if attempt == 0 {
                self.stats.sq_full += 1;
                let _ = self.ring.submit();
            }
        }
        self.overflow.push_back(entries.to_vec());
    }

    fn flush_overflow(&mut self) {
        while let Some(chain) = self.overflow.pop_front() {
            let fits = {
                let mut sq = self.ring.submission();
                if sq.capacity() - sq.len() >= chain.len() {
                    // Safety: as in `push`.
                    unsafe { sq.push_multiple(&chain) }.expect("capacity checked");
                    true
                } else {
                    false
                }
            };
            if !fits {
                self.overflow.push_front(chain);
                let _ = self.ring.submit();
                return;
            }
        }
    }

    fn arm_listeners(&mut self, now: Millis) {
        if self.stopping {
            return;
        }
        if !self.wake_armed {
            self.wake_armed = true;
            let entry =
                opcode::PollAdd::new(types::Fd(self.wake_fd.as_raw_fd()), libc::POLLIN as u32)
                    .multi(true)
                    .build()
                    .user_data(UserData::new(OpKind::Wake, 0, 0).pack());
            self.push(&[entry]);
        }
        for i in 0..self.listeners.len() {
            let l = &self.listeners[i];
            if l.armed || l.rearm_at.is_none_or(|t| t > now) {
                continue;
            }
            let fd = l.socket.as_raw_fd();
            let entry = opcode::AcceptMulti::new(types::Fd(fd))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(UserData::new(OpKind::Accept, i as u32, 0).pack());
            self.push(&[entry]);
            let l = &mut self.listeners[i];
            l.armed = true;
            l.rearm_at = None;
        }
    }

    fn start_probes<D: WorkerDriver<Conv = C>>(&mut self, driver: &mut D, now: Millis) {
        self.driver_idle = false;
        // Back-pressure: receives waiting for buffers come before new connections.
        if !self.rearm_recv.is_empty() || !self.overflow.is_empty() {
            return;
        }
        // Bounded per iteration so completions keep flowing.
        let max_new = (self.cfg.ring_entries as usize / 2).max(1);
        for _ in 0..max_new {
            if self.slots.is_full() || !self.budget.may_connect(now, self.probing()) {
                return;
            }
            let Some(req) = driver.next_probe(now) else {
                self.driver_idle = true;
                return;
            };
            self.budget.take();
            self.start_probe(req, now);
        }
    }

    fn start_probe(&mut self, req: ProbeRequest<C>, now: Millis) {
        let slot = Slot::outgoing(req.conv, req.token, req.addr, now);
        let domain = net::family(&req.addr);
        let (index, generation) = match self.slots.insert(slot) {
            Ok(h) => h,
            Err(_) => unreachable!("start_probes checks for a free slot"),
        };
        self.stats.probes_started += 1;
        self.stats.in_flight_max = self.stats.in_flight_max.max(self.slots.len());
        let entry = opcode::Socket::new(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
        .build()
        .user_data(UserData::new(OpKind::Socket, index, generation).pack());
        self.push(&[entry]);
    }

    fn process_completions<D: WorkerDriver<Conv = C>>(&mut self, driver: &mut D) {
        // Bounded: at most 64 rounds of up to 1024 completions per step.
        for _ in 0..64 {
            self.cqes.clear();
            {
                let cq = self.ring.completion();
                for cqe in cq.take(1024) {
                    self.cqes.push((cqe.user_data(), cqe.result(), cqe.flags()));
                }
            }
            if self.cqes.is_empty() {
                return;
            }
            let now = self.now();
            let batch = std::mem::take(&mut self.cqes);
            for &(ud, res, flags) in &batch {
                self.complete(driver, now, ud, res, flags);
            }
            self.cqes = batch;
        }
    }

    fn complete<D: WorkerDriver<Conv = C>>(
        &mut self,
        driver: &mut D,
        now: Millis,
        ud: u64,
        res: i32,
        flags: u32,
    ) {
        let Some(ud) = UserData::unpack(ud) else {
            return;
        };
        match ud.kind {
            OpKind::ConnectTimeout | OpKind::Cancel | OpKind::CloseUntracked => {}
            OpKind::Accept => self.on_accept(driver, now, ud.slot as usize, res, flags),
            OpKind::Wake => {
                if res >= 0 {
                    let mut counter: u64 = 0;
                    // Safety: reading 8 bytes into a live u64 from our non-blocking eventfd.
                    unsafe {
                        libc::read(
                            self.wake_fd.as_raw_fd(),
                            (&mut counter as *mut u64).cast(),
                            8,
                        )
                    };
                }
                if !cqueue::more(flags) {
                    // Re-armed at the next step unless stopping.
                    self.wake_armed = false;
                }
            }
            OpKind::Recv => {
                // Whatever happens to the slot, a selected buffer goes back to the ring.
                let bid = cqueue::buffer_select(flags);
                if self.slots.get(ud.slot, ud.generation).is_none() {
                    self.stats.stale_completions += 1;
                } else {
                    self.on_recv(driver, now, ud, res, flags, bid);
                }
                if let Some(bid) = bid {
                    self.bufs.recycle(bid);
                }
            }
            OpKind::UdpRecv => {
                let deliver = !self.stopping;
                self.udp.on_recv(
                    driver,
                    now,
                    ud.slot as usize,
                    res,
                    flags,
                    deliver,
                    &mut self.stats,
                );
                self.flush_datagrams();
            }
            OpKind::UdpSend => {
                self.udp.on_send(driver, now, ud.slot, res, &mut self.stats);
                self.flush_datagrams();
            }
            OpKind::Nop => {
                if self.slots.get(ud.slot, ud.generation).is_none() {
                    self.stats.stale_completions += 1;
                }
            }
            OpKind::Socket | OpKind::Connect | OpKind::Send | OpKind::Close => {
                if self.slots.get(ud.slot, ud.generation).is_none() {
                    self.stats.stale_completions += 1;
                    return;
                }
                match ud.kind {
                    OpKind::Socket => self.on_socket(driver, now, ud, res),
                    OpKind::Connect => self.on_connect(driver, now, ud, res),
                    OpKind::Send => self.on_send(driver, now, ud, res),
                    _ => self.on_close(ud),
                }
            }
        }
    }

    fn on_socket<D: WorkerDriver<Conv = C>>(
        &mut self,
        driver: &mut D,
        now: Millis,
        ud: UserData,
        res: i32,
    ) {
        let (i, g) = (ud.slot, ud.generation);
        let slot = self.slots.get_mut(i, g).expect("checked by caller");
        slot.pending -= 1;
        if res < 0 {
            self.hand_back(driver, now, i, g, Ending::Closed(Some(errno_of(res))));
            self.maybe_free(i, g);
            return;
        }
        slot.fd = res;
        if slot.conv.is_none() {
            // Stopped while the socket was being made.
            self.close_slot(i, g);
            return;
        }
        if let Err(e) = net::prepare_probe_socket(res) {
            let errno = e.raw_os_error().unwrap_or(libc::EINVAL);
            self.hand_back(driver, now, i, g, Ending::Closed(Some(errno)));
            self.close_slot(i, g);
            return;
        }
        let slot = self.slots.get_mut(i, g).expect("live");
        slot.state = State::Connecting;
        slot.pending += 1;
        let connect = opcode::Connect::new(types::Fd(res), slot.addr.as_ptr(), slot.addr.len())
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(UserData::new(OpKind::Connect, i, g).pack());
        let timeout = opcode::LinkTimeout::new(&*self.connect_timeout as *const types::Timespec)
            .build()
            .user_data(UserData::new(OpKind::ConnectTimeout, i, g).pack());
        self.push(&[connect, timeout]);
    }

    fn on_connect<D: WorkerDriver<Conv = C>>(
        &mut self,
        driver: &mut D,
        now: Millis,
        ud: UserData,
        res: i32,
    ) {
        let (i, g) = (ud.slot, ud.generation);
        let slot = self.slots.get_mut(i, g).expect("checked by caller");
        slot.pending -= 1;
        if slot.conv.is_none() {
            self.close_slot(i, g);
            return;
        }
        if res < 0 {
            // The linked timeout cancels the connect: report it as the timeout it is.
            let errno = if res == -libc::ECANCELED {
                libc::ETIMEDOUT
            } else {
                errno_of(res)
            };
            self.hand_back(driver, now, i, g, Ending::Closed(Some(errno)));
            self.close_slot(i, g);
            return;
        }
        slot.state = State::Open;
        slot.connected_at = Some(now);
        self.start_conversation(i, g, now);
    }

    fn on_accept<D: WorkerDriver<Conv = C>>(
        &mut self,
        driver: &mut D,
        now: Millis,
        listener: usize,
        res: i32,
        flags: u32,
    ) {
        if listener >= self.listeners.len() {
            return;
        }
        if !cqueue::more(flags) {
            self.listeners[listener].armed = false;
            if !self.stopping {
                // Errors such as EMFILE: retry shortly rather than spin.
                self.listeners[listener].rearm_at = Some(if res < 0 { now + 10 } else { now });
            }
        }
        if res < 0 {
            if res != -libc::ECANCELED {
                self.stats.accept_errors += 1;
            }
            return;
        }
        let fd = res;
        let mut budget_full = self.incoming >= self.cfg.max_incoming;
        if budget_full && !self.stopping {
            self.stats.incoming_budget_full += 1;
            if self.cfg.evict_oldest_incoming && self.evict_oldest_incoming(driver, now) {
                budget_full = false;
            }
        }
        if !self.stopping && !budget_full && self.slots.is_full() {
            self.stats.incoming_no_slot += 1;
        }
        let accepted = (|| {
            if self.stopping || budget_full || self.slots.is_full() {
                return None;
            }
            let remote = net::peer_addr(fd).ok()?;
            let local = net::local_addr(fd).ok()?;
            net::prepare_probe_socket(fd).ok()?;
            let original = if self.cfg.original_dst {
                net::original_dst(fd, &local)
            } else {
                None
            };
            let (token, conv) = driver.incoming_to(now, remote, local, original)?;
            Some((remote, token, conv))
        })();
        let Some((remote, token, conv)) = accepted else {
            self.stats.incoming_refused += 1;
            // Linger 0 where possible, so the refusal is a reset, not a TIME_WAIT.
            let _ = net::set_linger_zero(fd);
            let close = opcode::Close::new(types::Fd(fd))
                .build()
                .user_data(UserData::new(OpKind::CloseUntracked, 0, 0).pack());
            self.push(&[close]);
            return;
        };
        let slot = Slot::accepted(conv, token, remote, fd, now);
        let Ok((i, g)) = self.slots.insert(slot) else {
            unreachable!("checked not full")
        };
        self.stats.incoming_accepted += 1;
        if self.cfg.evict_oldest_incoming {
            if self.accept_order.len() >= 2 * self.cfg.max_incoming + 16 {
                let slots = &self.slots;
                self.accept_order
                    .retain(|&(i, g)| slots.get(i, g).is_some_and(|s| s.conv.is_some()));
            }
            self.accept_order.push_back((i, g));
        }
        self.incoming += 1;
        self.stats.incoming_max = self.stats.incoming_max.max(self.incoming);
        self.stats.in_flight_max = self.stats.in_flight_max.max(self.slots.len());
        self.start_conversation(i, g, now);
    }

    /// Closes the oldest accepted connection that is still open and not held, handing it
    /// back as `Closed(Some(ECONNABORTED))`; false when there is none.
    fn evict_oldest_incoming<D: WorkerDriver<Conv = C>>(
        &mut self,
        driver: &mut D,
        now: Millis,
    ) -> bool {
        while let Some((i, g)) = self.accept_order.pop_front() {
            let evictable = self.slots.get(i, g).is_some_and(|s| {
                s.incoming && !s.held && s.state == State::Open && s.conv.is_some()
            });
            if evictable {
                self.stats.incoming_evicted += 1;
                self.hand_back(driver, now, i, g, Ending::Closed(Some(libc::ECONNABORTED)));
                self.close_slot(i, g);
                return true;
            }
        }
        false
    }

    /// The connection is up (connected or accepted): let the conversation speak first, then
    /// start receiving and arm its deadline.
    fn start_conversation(&mut self, i: u32, g: u32, now: Millis) {
        self.scratch.clear();
        let mut scratch = std::mem::take(&mut self.scratch);
        let slot = self.slots.get_mut(i, g).expect("live");
        slot.conv
            .as_mut()
            .expect("live conv")
            .on_connected(now, &mut scratch);
        self.queue_send(i, g, &mut scratch);
        self.scratch = scratch;
        self.arm_recv(i, g);
        self.update_timer(i, g, now);
    }

    fn arm_recv(&mut self, i: u32, g: u32) {
        let group = self.bufs.group();
        let slot = self.slots.get_mut(i, g).expect("live");
        debug_assert!(!slot.recv_armed);
        slot.recv_armed = true;
        slot.pending += 1;
        let entry = opcode::RecvMulti::new(types::Fd(slot.fd), group)
            .build()
            .user_data(UserData::new(OpKind::Recv, i, g).pack());
        self.push(&[entry]);
    }

    fn rearm_receives(&mut self) {
        if self.rearm_recv.is_empty() {
            return;
        }
        let list = std::mem::take(&mut self.rearm_recv);
        for (i, g) in list {
            let ok = matches!(self.slots.get(i, g), Some(s) if s.state == State::Open && !s.recv_armed && s.conv.is_some());
            if ok {
                self.arm_recv(i, g);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_recv<D: WorkerDriver<Conv = C>>(
        &mut self,
        driver: &mut D,
        now: Millis,
        ud: UserData,
        res: i32,
        flags: u32,
        bid: Option<u16>,
    ) {
        let (i, g) = (ud.slot, ud.generation);
        let more = cqueue::more(flags);
        let slot = self.slots.get_mut(i, g).expect("checked by caller");
        if !more {
            slot.recv_armed = false;
            slot.pending -= 1;
        }
        if slot.state != State::Open || slot.conv.is_none() {
            self.maybe_free(i, g);
            return;
        }
        if res < 0 {
            match -res {
                libc::ENOBUFS => {
                    // The ring ran dry: buffers come back as completions are processed, so
                    // re-arm on the next iteration instead of dropping the connection.
                    self.stats.recv_enobufs += 1;
                    if !more {
                        self.rearm_recv.push((i, g));
                    }
                }
                libc::ECANCELED => {}
                errno => {
                    self.hand_back(driver, now, i, g, Ending::Closed(Some(errno)));
                    self.close_slot(i, g);
                }
            }
            return;
        }
        if res == 0 {
            self.hand_back(driver, now, i, g, Ending::Closed(None));
            self.close_slot(i, g);
            return;
        }
        let Some(bid) = bid else { return };
        self.scratch.clear();
        let mut scratch = std::mem::take(&mut self.scratch);
        // Safety: `bid` comes from this completion; the caller recycles it only after we
        // return, when the conversation is done reading it.
        let data = unsafe { self.bufs.data(bid, res as usize) };
        let slot = self.slots.get_mut(i, g).expect("live");
        let verdict = slot
            .conv
            .as_mut()
            .expect("live conv")
            .on_bytes(now, data, &mut scratch);
        let verdict = self.ask_if_asked(driver, now, i, g, verdict, &mut scratch);
        match verdict {
            Verdict::Continue | Verdict::Ask => {
                self.queue_send(i, g, &mut scratch);
                if !more {
                    self.arm_recv(i, g);
                }
                self.update_timer(i, g, now);
            }
            Verdict::Finished => {
                self.hand_back(driver, now, i, g, Ending::Finished);
                self.finish_with(i, g, &mut scratch);
            }
        }
        self.scratch = scratch;
    }

    /// Hands an `Ask` to the owner and returns its answer (other verdicts pass through);
    /// keeps the held count in step with the conversation.
    fn ask_if_asked<D: WorkerDriver<Conv = C>>(
        &mut self,
        driver: &mut D,
        now: Millis,
        i: u32,
        g: u32,
        verdict: Verdict,
        send: &mut Vec<u8>,
    ) -> Verdict {
        if verdict != Verdict::Ask {
            return verdict;
        }
        let slot = self.slots.get_mut(i, g).expect("live");
        let (token, peer, incoming) = (slot.token, slot.peer, slot.incoming);
        let conv = slot.conv.as_mut().expect("live conv");
        let answer = driver.on_ask(now, token, peer, incoming, conv, send);
        let held = conv.held();
        if held != slot.held {
            slot.held = held;
            if held {
                self.held += 1;
                self.stats.held_max = self.stats.held_max.max(self.held);
            } else {
                self.held -= 1;
            }
            if slot.incoming {
                // A held accepted connection counts against `max_held` instead.
                if held {
                    self.incoming -= 1;
                } else {
                    self.incoming += 1;
                }
            }
        }
        match answer {
            Verdict::Ask => Verdict::Continue,
            other => other,
        }
    }

    /// Sends `bytes` now, or after the send in flight.
    fn queue_send(&mut self, i: u32, g: u32, bytes: &mut Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let slot = self.slots.get_mut(i, g).expect("live");
        if slot.send_in_flight {
            slot.queued.extend_from_slice(bytes);
            bytes.clear();
            return;
        }
        slot.sending.clear();
        slot.sending.extend_from_slice(bytes);
        bytes.clear();
        slot.send_offset = 0;
        self.submit_send(i, g, 0, None);
    }

    fn submit_send(&mut self, i: u32, g: u32, msg_flags: i32, then_close: Option<()>) {
        let slot = self.slots.get_mut(i, g).expect("live");
        slot.send_in_flight = true;
        slot.pending += 1;
        let rest = &slot.sending[slot.send_offset..];
        let mut send = opcode::Send::new(types::Fd(slot.fd), rest.as_ptr(), rest.len() as u32)
            .flags(msg_flags | libc::MSG_NOSIGNAL)
            .build()
            .user_data(UserData::new(OpKind::Send, i, g).pack());
        if then_close.is_some() {
            // Hard link: the close runs whether the send worked or not.
            send = send.flags(squeue::Flags::IO_HARDLINK);
            slot.pending += 1;
            let fd = slot.fd;
            slot.fd = -1;
            let close = opcode::Close::new(types::Fd(fd))
                .build()
                .user_data(UserData::new(OpKind::Close, i, g).pack());
            self.push(&[send, close]);
        } else {
            self.push(&[send]);
        }
    }

    fn on_send<D: WorkerDriver<Conv = C>>(
        &mut self,
        driver: &mut D,
        now: Millis,
        ud: UserData,
        res: i32,
    ) {
        let (i, g) = (ud.slot, ud.generation);
        let slot = self.slots.get_mut(i, g).expect("checked by caller");
        slot.pending -= 1;
        slot.send_in_flight = false;
        if slot.state == State::Closing {
            if slot.close_after_send && slot.fd >= 0 {
                slot.close_after_send = false;
                if res >= 0 && !slot.queued.is_empty() {
                    // The last bytes, best effort: never wait for buffer space.
                    std::mem::swap(&mut slot.sending, &mut slot.queued);
                    slot.queued = Vec::new();
                    slot.send_offset = 0;
                    self.submit_send(i, g, libc::MSG_DONTWAIT, Some(()));
                } else {
                    self.close_slot(i, g);
                }
            } else {
                self.maybe_free(i, g);
            }
            return;
        }
        if slot.conv.is_none() {
            self.maybe_free(i, g);
            return;
        }
        if res < 0 {
            self.hand_back(driver, now, i, g, Ending::Closed(Some(errno_of(res))));
            self.close_slot(i, g);
            return;
        }
        slot.send_offset += res as usize;
        if slot.send_offset < slot.sending.len() {
            self.stats.partial_sends += 1;
            self.submit_send(i, g, 0, None);
            return;
        }
        if slot.queued.is_empty() {
            // Memory only while needed.
            slot.sending = Vec::new();
            slot.send_offset = 0;
        } else {
            std::mem::swap(&mut slot.sending, &mut slot.queued);
            slot.queued.clear();
            slot.send_offset = 0;
            self.submit_send(i, g, 0, None);
        }
    }

    /// After `Finished` / a deadline finish: cancel the receive, send the last bytes best
    /// effort, close (SO_LINGER 0 was set at creation: RST, no TIME_WAIT).
    fn finish_with(&mut self, i: u32, g: u32, last: &mut Vec<u8>) {
        self.cancel_recv(i, g);
        let slot = self.slots.get_mut(i, g).expect("live");
        slot.state = State::Closing;
        if last.is_empty() {
            if slot.send_in_flight {
                slot.close_after_send = true;
            } else {
                self.close_slot(i, g);
            }
            return;
        }
        if slot.send_in_flight {
            slot.queued.extend_from_slice(last);
            last.clear();
            slot.close_after_send = true;
            return;
        }
        slot.sending.clear();
        slot.sending.extend_from_slice(last);
        last.clear();
        slot.send_offset = 0;
        self.submit_send(i, g, libc::MSG_DONTWAIT, Some(()));
    }

    fn cancel_recv(&mut self, i: u32, g: u32) {
        let Some(slot) = self.slots.get(i, g) else {
            return;
        };
        if !slot.recv_armed {
            return;
        }
        let cancel = opcode::AsyncCancel::new(UserData::new(OpKind::Recv, i, g).pack())
            .build()
            .user_data(UserData::new(OpKind::Cancel, i, g).pack());
        self.push(&[cancel]);
    }

    /// Marks the slot closing, cancels its receive and closes its descriptor (if any) unless
    /// a send is in flight (then the close follows the send).
    fn close_slot(&mut self, i: u32, g: u32) {
        self.cancel_recv(i, g);
        let slot = self.slots.get_mut(i, g).expect("live");
        slot.state = State::Closing;
        if slot.send_in_flight {
            slot.close_after_send = true;
            return;
        }
        if slot.fd >= 0 {
            let fd = slot.fd;
            slot.fd = -1;
            slot.pending += 1;
            let close = opcode::Close::new(types::Fd(fd))
                .build()
                .user_data(UserData::new(OpKind::Close, i, g).pack());
            self.push(&[close]);
        } else {
            self.maybe_free(i, g);
        }
    }

    fn on_close(&mut self, ud: UserData) {
        let slot = self
            .slots
            .get_mut(ud.slot, ud.generation)
            .expect("checked by caller");
        slot.pending -= 1;
        self.maybe_free(ud.slot, ud.generation);
    }

    /// Frees the slot when it is closing, handed back and has nothing outstanding.
    fn maybe_free(&mut self, i: u32, g: u32) {
        let Some(slot) = self.slots.get(i, g) else {
            return;
        };
        if slot.pending == 0 && slot.conv.is_none() && slot.fd < 0 {
            if slot.incoming && !slot.held {
                self.incoming -= 1;
            }
            self.slots.remove(i, g);
        }
    }

    /// Hands the conversation back (calling `on_closed` first for `Closed` endings).
    fn hand_back<D: WorkerDriver<Conv = C>>(
        &mut self,
        driver: &mut D,
        now: Millis,
        i: u32,
        g: u32,
        ending: Ending,
    ) {
        let slot = self.slots.get_mut(i, g).expect("live");
        let Some(mut conv) = slot.conv.take() else {
            return;
        };
        if slot.held {
            slot.held = false;
            self.held -= 1;
            if slot.incoming {
                self.incoming += 1; // closing: counted with the accepted ones until freed
            }
        }
        if let Ending::Closed(errno) = ending {
            conv.on_closed(now, errno);
            self.stats.closed += 1;
        } else {
            self.stats.finished += 1;
        }
        slot.timer_at = Millis::MAX;
        let done = ProbeDone {
            token: slot.token,
            conv,
            peer: slot.peer,
            incoming: slot.incoming,
            ending,
            connect_ms: slot.connected_at.map(|t| t.saturating_sub(slot.started)),
            total_ms: now.saturating_sub(slot.started),
            started_at: slot.started,
        };
        driver.probe_done(now, done);
    }

    fn update_timer(&mut self, i: u32, g: u32, now: Millis) {
        let Some(slot) = self.slots.get_mut(i, g) else {
            return;
        };
        let Some(conv) = slot.conv.as_ref() else {
            return;
        };
        let mut at = conv.deadline();
        if at <= now {
            at = now;
        }
        if at < slot.timer_at {
            slot.timer_at = at;
            self.wheel.insert(TimerEntry {
                slot: i,
                generation: g,
                at,
            });
        }
    }

    fn fire_timers<D: WorkerDriver<Conv = C>>(&mut self, driver: &mut D, now: Millis) {
        self.due.clear();
        self.wheel.expire(now, &mut self.due);
        let due = std::mem::take(&mut self.due);
        for entry in &due {
            let (i, g) = (entry.slot, entry.generation);
            let Some(slot) = self.slots.get_mut(i, g) else {
                continue;
            };
            if slot.timer_at != entry.at || slot.state != State::Open {
                continue;
            }
            let Some(conv) = slot.conv.as_mut() else {
                continue;
            };
            let deadline = conv.deadline();
            if deadline > now {
                // The deadline moved later since this entry was armed: re-arm.
                slot.timer_at = deadline;
                self.wheel.insert(TimerEntry {
                    slot: i,
                    generation: g,
                    at: deadline,
                });
                continue;
            }
            self.scratch.clear();
            let mut scratch = std::mem::take(&mut self.scratch);
            let verdict = conv.on_deadline(now, &mut scratch);
            let verdict = self.ask_if_asked(driver, now, i, g, verdict, &mut scratch);
            match verdict {
                Verdict::Finished => {
                    self.hand_back(driver, now, i, g, Ending::Finished);
                    self.finish_with(i, g, &mut scratch);
                }
                Verdict::Continue | Verdict::Ask => {
                    self.queue_send(i, g, &mut scratch);
                    let slot = self.slots.get_mut(i, g).expect("live");
                    slot.timer_at = Millis::MAX;
                    let next = slot
                        .conv
                        .as_ref()
                        .map(|c| c.deadline())
                        .unwrap_or(Millis::MAX);
                    // A conversation that keeps its deadline in the past is polled each tick.
                    let at = next.max(now + TICK_MS);
                    slot.timer_at = at;
                    self.wheel.insert(TimerEntry {
                        slot: i,
                        generation: g,
                        at,
                    });
                }
            }
            self.scratch = scratch;
        }
        self.due = due;
    }

    /// Stop: hand back every live conversation with ECANCELED, cancel everything, wait
    /// (bounded) for the kernel to finish with our memory.
    fn shutdown<D: WorkerDriver<Conv = C>>(&mut self, driver: &mut D) -> io::Result<()> {
        self.stopping = true;
        let now = self.now();
        for i in 0..self.listeners.len() {
            if self.listeners[i].armed {
                let cancel =
                    opcode::AsyncCancel::new(UserData::new(OpKind::Accept, i as u32, 0).pack())
                        .build()
                        .user_data(UserData::new(OpKind::Cancel, 0, 0).pack());
                self.push(&[cancel]);
            }
            self.listeners[i].rearm_at = None;
        }
        let mut sqes = std::mem::take(&mut self.udp_sqes);
        self.udp.cancel_receives(&mut sqes);
        self.push_each(&mut sqes);
        self.udp_sqes = sqes;
        // Datagrams already queued still go out (the drain waits for them).
        self.flush_datagrams();
        if self.wake_armed {
            let cancel = opcode::AsyncCancel::new(UserData::new(OpKind::Wake, 0, 0).pack())
                .build()
                .user_data(UserData::new(OpKind::Cancel, 0, 0).pack());
            self.push(&[cancel]);
        }
        for (i, g) in self.slots.handles() {
            let Some(slot) = self.slots.get(i, g) else {
                continue;
            };
            if slot.conv.is_none() {
                continue;
            }
            let state = slot.state;
            self.hand_back(driver, now, i, g, Ending::Closed(Some(libc::ECANCELED)));
            match state {
                // The socket/connect completion will see no conversation and close.
                State::Socket => {}
                State::Connecting => {
                    let cancel =
                        opcode::AsyncCancel::new(UserData::new(OpKind::Connect, i, g).pack())
                            .build()
                            .user_data(UserData::new(OpKind::Cancel, i, g).pack());
                    self.push(&[cancel]);
                }
                State::Open | State::Closing => self.close_slot(i, g),
            }
        }
        let deadline = Instant::now() + Duration::from_millis(self.cfg.drain_timeout_ms);
        while (!self.slots.is_empty() || self.listeners.iter().any(|l| l.armed) || self.udp.busy())
            && Instant::now() < deadline
        {
            self.flush_overflow();
            self.submit_and_wait(10)?;
            self.process_completions(driver);
            self.flush_datagrams();
        }
        self.stats.leaked_slots = self.slots.len();
        self.stats.udp_sends_leaked = self.udp.sends_in_flight();
        Ok(())
    }

    /// For a worker dropped without `run`'s drain (stepped by hand, or `run` failed): cancels
    /// the UDP receives and waits, bounded, for them and the sends in flight, so the plane
    /// can be freed. Other completions are dropped unread: the worker is going away.
    fn quiesce_udp(&mut self) {
        if !self.udp.busy() {
            return;
        }
        let mut sqes = std::mem::take(&mut self.udp_sqes);
        self.udp.cancel_receives(&mut sqes);
        self.push_each(&mut sqes);
        let deadline = Instant::now() + Duration::from_millis(self.cfg.drain_timeout_ms.min(1000));
        while self.udp.busy() && Instant::now() < deadline {
            self.flush_overflow();
            if self.submit_and_wait(10).is_err() {
                return;
            }
            let cq = self.ring.completion();
            for cqe in cq {
                let Some(ud) = UserData::unpack(cqe.user_data()) else {
                    continue;
                };
                match ud.kind {
                    OpKind::UdpRecv => self.udp.receive_ended(ud.slot as usize, cqe.flags()),
                    OpKind::UdpSend => self.udp.send_ended(ud.slot),
                    _ => {}
                }
            }
        }
    }

    /// Test hook: queue a no-op whose completion carries `user_data`.
    #[cfg(test)]
    pub(crate) fn inject_nop(&mut self, user_data: u64) {
        let entry = opcode::Nop::new().build().user_data(user_data);
        self.push(&[entry]);
    }
}

impl<C: Conversation> Drop for Worker<C> {
    fn drop(&mut self) {
        self.quiesce_udp();
        if !self.udp.busy() {
            self.udp.release(&self.ring);
            // Safety: dropped exactly once, here; the kernel no longer uses the plane (no
            // receive armed, no send in flight) and its buffer group is unregistered.
            unsafe { ManuallyDrop::drop(&mut self.udp) };
        }
        // Otherwise the plane is leaked: the kernel may still read or write its memory.
        if self.stats.leaked_slots > 0 || !self.slots.is_empty() {
            // Operations may still reference slot memory and receive buffers: never free
            // them under the kernel.
            let slots = std::mem::replace(&mut self.slots, Slab::with_capacity(0));
            std::mem::forget(slots);
        } else {
            // Unregister first so no receive can pick a buffer from memory we unmap.
            let _ = self.ring.submitter().unregister_buf_ring(self.bufs.group());
            // Safety: dropped exactly once, here; no slot is live, and the ring no longer
            // knows the buffer group.
            unsafe { ManuallyDrop::drop(&mut self.bufs) };
        }
    }
}
