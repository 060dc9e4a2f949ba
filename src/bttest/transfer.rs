//! One side's end of one flow over a real socket: a `poll(2)` loop around a
//! [`FlowEndpoint`], and the report of how it ended.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::proto::bttest::{FlowEndpoint, FlowOutcome, FlowReport};

/// Time limits of one flow.
#[derive(Debug, Clone, Copy)]
pub struct FlowLimits {
    /// After this long the leecher requests nothing more (the flow is time-capped).
    pub cap: Duration,
    /// After this long the flow is given up as stalled.
    pub hard: Duration,
    /// Once the other side's end is over, give ours this long without progress.
    pub abandon_after: Duration,
}

impl FlowLimits {
    /// The limits of a flow capped at `cap`.
    pub fn for_cap(cap: Duration) -> FlowLimits {
        FlowLimits {
            cap,
            hard: cap + (cap / 2).max(Duration::from_secs(10)),
            abandon_after: Duration::from_secs(3),
        }
    }
}

/// Payload bytes handed to the socket per refill of the send buffer.
const SEND_BUDGET: usize = 256 * 1024;

/// Whether an I/O error is the other end's (or a middlebox's) reset.
pub fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
    )
}

/// Waits until `fd` is readable (`want_read`) or writable (`want_write`), at most `timeout`.
/// Returns (readable, writable); an error or hang-up counts as both, so the next read or
/// write reports it.
fn wait(fd: i32, want_read: bool, want_write: bool, timeout: Duration) -> (bool, bool) {
    let mut events = 0;
    if want_read {
        events |= libc::POLLIN;
    }
    if want_write {
        events |= libc::POLLOUT;
    }
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // Safety: `pfd` is one valid pollfd on our stack and nfds is 1; poll only writes `revents`.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().min(1000) as i32) };
    if n <= 0 {
        return (false, false);
    }
    let broken = pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0;
    (
        want_read && (broken || pfd.revents & libc::POLLIN != 0),
        want_write && (broken || pfd.revents & libc::POLLOUT != 0),
    )
}

/// Bytes received but not read on `stream` (closing with any makes the kernel send a reset).
fn unread(stream: &TcpStream) -> i32 {
    let mut n: libc::c_int = 0;
    // Safety: FIONREAD writes one c_int through the pointer, which points at `n`; the fd is
    // open for as long as `stream` is borrowed.
    let r = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r < 0 {
        0
    } else {
        n
    }
}

/// Runs this side's end of a flow on a connected `stream` until it is complete, reset,
/// broken, stalled, or abandoned after the other side's end is over (`peer_ended`).
/// `started` is when the connect (client) or accept (server) began; `index` goes into the
/// report.
pub fn run_flow(
    stream: TcpStream,
    mut endpoint: FlowEndpoint,
    index: u16,
    started: Instant,
    limits: FlowLimits,
    peer_ended: &dyn Fn() -> bool,
) -> FlowReport {
    let mut report = FlowReport {
        index,
        payload_received: 0,
        payload_sent: 0,
        duration_us: 0,
        rst_sent: 0,
        rst_seen: 0,
        outcome: FlowOutcome::Error,
        detail: String::new(),
    };
    if let Err(e) = stream.set_nonblocking(true) {
        report.detail = format!("cannot make the socket non-blocking: {e}");
        return report;
    }
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let mut out: Vec<u8> = Vec::with_capacity(SEND_BUDGET + 64 * 1024);
    let mut out_pos = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let mut capped = false;
    let mut eof = false;
    let mut shut = false;
    let mut last_progress = Instant::now();
    let mut peer_end_seen: Option<Instant> = None;
    let (outcome, detail) = loop {
        let now = Instant::now();
        let elapsed = now - started;
        if elapsed >= limits.cap && !capped {
            capped = true;
            endpoint.stop();
        }
        if elapsed >= limits.hard {
            break (
                FlowOutcome::Stalled,
                format!("not over after {} s", limits.hard.as_secs()),
            );
        }
        if peer_end_seen.is_none() && peer_ended() {
            peer_end_seen = Some(now);
        }
        if let Some(seen) = peer_end_seen {
            if now - seen.max(last_progress) >= limits.abandon_after {
                break (
                    FlowOutcome::Abandoned,
                    "the other side's end was over and ours made no progress".into(),
                );
            }
        }
        if out_pos == out.len() {
            out.clear();
            out_pos = 0;
            endpoint.poll_transmit(&mut out, SEND_BUDGET);
        }
        if out_pos == out.len() && endpoint.send_finished() && !shut {
            shut = true;
            if let Err(e) = stream.shutdown(Shutdown::Write) {
                if is_reset(&e) {
                    report.rst_seen += 1;
                    break (FlowOutcome::Reset, e.to_string());
                }
            }
        }
        if endpoint.complete() && out_pos == out.len() {
            break (
                if capped {
                    FlowOutcome::TimeCapped
                } else {
                    FlowOutcome::Complete
                },
                String::new(),
            );
        }
        let (readable, writable) = wait(fd, !eof, out_pos < out.len(), Duration::from_millis(100));
        let mut failure = None;
        if readable {
            // Bounded per round so that sending and the clocks above get their turn.
            for _ in 0..16 {
                match (&stream).read(&mut buf) {
                    Ok(0) => {
                        eof = true;
                        last_progress = Instant::now();
                        if let Err(e) = endpoint.on_eof() {
                            failure = Some((FlowOutcome::ProtocolError, e.to_string()));
                        }
                        break;
                    }
                    Ok(n) => {
                        last_progress = Instant::now();
                        if let Err(e) = endpoint.on_bytes(&buf[..n]) {
                            failure = Some((FlowOutcome::ProtocolError, e.to_string()));
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if is_reset(&e) => {
                        report.rst_seen += 1;
                        failure = Some((FlowOutcome::Reset, e.to_string()));
                        break;
                    }
                    Err(e) => {
                        failure = Some((FlowOutcome::Error, e.to_string()));
                        break;
                    }
                }
            }
        }
        if failure.is_none() && writable {
            while out_pos < out.len() {
                match (&stream).write(&out[out_pos..]) {
                    Ok(n) => {
                        out_pos += n;
                        last_progress = Instant::now();
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if is_reset(&e) => {
                        report.rst_seen += 1;
                        failure = Some((FlowOutcome::Reset, e.to_string()));
                        break;
                    }
                    Err(e) => {
                        failure = Some((FlowOutcome::Error, e.to_string()));
                        break;
                    }
                }
            }
        }
        if let Some(f) = failure {
            break f;
        }
    };
    report.duration_us = started.elapsed().as_micros() as u64;
    report.payload_received = endpoint.payload_received();
    // What the socket took, not what the endpoint produced: the rest never left.
    let unsent = out.len() - out_pos;
    report.payload_sent = endpoint.payload_sent().saturating_sub(unsent as u64);
    if outcome != FlowOutcome::Reset {
        // Read what is left so that closing sends a FIN, not a reset; if data still waits
        // (it keeps coming), the close resets the connection and that reset is ours.
        for _ in 0..64 {
            match (&stream).read(&mut buf) {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
        if unread(&stream) > 0 {
            report.rst_sent += 1;
        }
    }
    report.outcome = outcome;
    report.detail = detail;
    report
}
