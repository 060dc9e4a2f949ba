//! The kernel floor: the cheapest connect / send request / read answer / close loop we can
//! write with io_uring — no slab, no generations, no wheel, no conversation, no accounting
//! beyond a counter. Benchmarks report the engine's throughput relative to this, measured in
//! the same run against the same server (`swarmscan bench probes` with BitTorrent
//! handshakes, this crate's `benches/exchange_floor.rs` with an [`Exchange`](crate::exchange)).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use io_uring::{opcode, types, IoUring};

use crate::net::{self, RawSockAddr};

const OP_CONNECT: u64 = 1;
const OP_SEND: u64 = 2;
const OP_RECV: u64 = 3;

struct FloorSlot {
    fd: i32,
    got: usize,
    pending: u8,
    /// Finished or failed: restart once no operation is pending.
    dead: bool,
    addr: RawSockAddr,
    buf: [u8; 512],
}

/// Runs `slots` exchanges in flight against `peer(i)` (IPv4) until `stop`: each connects,
/// sends `request`, reads until `answer_len` bytes arrived and closes with a reset. Adds
/// completed exchanges to `done` and failures to `errors`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    slots: usize,
    request: &[u8],
    answer_len: usize,
    peer: &dyn Fn(u64) -> SocketAddr,
    first_peer: u64,
    stop: &AtomicBool,
    done: &AtomicU64,
    errors: &AtomicU64,
) -> io::Result<()> {
    let mut ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build((slots as u32 * 2).next_power_of_two().max(64))?;
    let hs = request;
    let mut table: Vec<FloorSlot> = (0..slots)
        .map(|_| FloorSlot {
            fd: -1,
            got: 0,
            pending: 0,
            dead: false,
            addr: RawSockAddr::new(peer(0)),
            buf: [0; 512],
        })
        .collect();
    let mut next_peer = first_peer;
    let start =
        |ring: &mut IoUring, s: &mut FloorSlot, i: usize, next_peer: &mut u64| -> io::Result<()> {
            // Safety: plain socket(2).
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            net::set_linger_zero(fd)?;
            s.fd = fd;
            s.got = 0;
            s.dead = false;
            s.addr = RawSockAddr::new(peer(*next_peer));
            *next_peer += 1;
            let e = opcode::Connect::new(types::Fd(fd), s.addr.as_ptr(), s.addr.len())
                .build()
                .user_data(((i as u64) << 8) | OP_CONNECT);
            s.pending += 1;
            // Safety: the address lives in `table`, which outlives every operation (drained below).
            unsafe { ring.submission().push(&e) }
                .map_err(|_| io::Error::other("floor: SQ full"))?;
            Ok(())
        };
    for (i, s) in table.iter_mut().enumerate() {
        start(&mut ring, s, i, &mut next_peer)?;
    }
    let ts = types::Timespec::new().nsec(50_000_000);
    let mut cqes = Vec::with_capacity(1024);
    let mut draining = false;
    let drain_until = std::cell::Cell::new(None::<std::time::Instant>);
    loop {
        if stop.load(Ordering::Relaxed) && !draining {
            draining = true;
            drain_until.set(Some(
                std::time::Instant::now() + std::time::Duration::from_secs(3),
            ));
            for s in &table {
                if s.fd >= 0 {
                    // Safety: shutting down our own socket makes pending ops complete.
                    unsafe { libc::shutdown(s.fd, libc::SHUT_RDWR) };
                }
            }
        }
        if draining
            && (table.iter().all(|s| s.pending == 0)
                || drain_until
                    .get()
                    .is_some_and(|t| std::time::Instant::now() > t))
        {
            break;
        }
        let args = types::SubmitArgs::new().timespec(&ts);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        cqes.clear();
        cqes.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for &(ud, res) in &cqes {
            let i = (ud >> 8) as usize;
            let op = ud & 0xff;
            let s = &mut table[i];
            s.pending -= 1;
            let mut restart = false;
            if draining {
                restart = true;
            } else if res < 0 {
                if !draining {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                restart = true;
            } else {
                match op {
                    OP_CONNECT => {
                        let send = opcode::Send::new(types::Fd(s.fd), hs.as_ptr(), hs.len() as u32)
                            .build()
                            .user_data(((i as u64) << 8) | OP_SEND);
                        let recv = opcode::Recv::new(
                            types::Fd(s.fd),
                            s.buf.as_mut_ptr(),
                            s.buf.len() as u32,
                        )
                        .build()
                        .user_data(((i as u64) << 8) | OP_RECV);
                        s.pending += 2;
                        // Safety: `hs` and the slot buffer outlive the operations.
                        unsafe { ring.submission().push_multiple(&[send, recv]) }
                            .map_err(|_| io::Error::other("floor: SQ full"))?;
                    }
                    OP_SEND => {}
                    _ => {
                        s.got += res as usize;
                        if res == 0 {
                            if !draining {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                            restart = true;
                        } else if s.got >= answer_len {
                            done.fetch_add(1, Ordering::Relaxed);
                            restart = true;
                        } else {
                            let recv = opcode::Recv::new(
                                types::Fd(s.fd),
                                s.buf.as_mut_ptr(),
                                s.buf.len() as u32,
                            )
                            .build()
                            .user_data(((i as u64) << 8) | OP_RECV);
                            s.pending += 1;
                            // Safety: as above.
                            unsafe { ring.submission().push(&recv) }
                                .map_err(|_| io::Error::other("floor: SQ full"))?;
                        }
                    }
                }
            }
            if restart {
                s.dead = true;
            }
            if s.dead && s.pending == 0 {
                // Safety: our socket; linger 0 makes this a reset.
                unsafe { libc::close(s.fd) };
                s.fd = -1;
                if !draining {
                    start(&mut ring, &mut table[i], i, &mut next_peer)?;
                }
            } else if restart && s.fd >= 0 {
                // Wait for the other op (e.g. the send) before reusing the slot's buffers.
                // Safety: shutting our own socket down completes that op promptly.
                unsafe { libc::shutdown(s.fd, libc::SHUT_RDWR) };
            }
        }
    }
    if table.iter().any(|s| s.pending > 0) {
        // The kernel may still write into slot buffers: leak them rather than free.
        std::mem::forget(table);
    } else {
        for s in &table {
            if s.fd >= 0 {
                // Safety: our socket.
                unsafe { libc::close(s.fd) };
            }
        }
    }
    Ok(())
}
