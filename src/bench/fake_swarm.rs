//! A fake swarm of many peers on 127.x addresses, served by a few epoll threads.
//!
//! One listening socket per thread is bound to 0.0.0.0:port with SO_BINDTODEVICE "lo" (so only
//! loopback traffic can reach it) and SO_REUSEPORT; it accepts connections to any
//! 127.a.b.c:port, and the peer is identified by the accepted socket's local address. Each peer
//! reads the 68-byte handshake, waits `delay_ms` (timer wheel, no sleeping threads), answers
//! with a handshake echoing the info-hash and a bitfield, then holds the connection until the
//! prober closes it. With `have_every_ms` > 0 (used by `bench watch`; off by default) an
//! answered peer also sends a `have` every `have_every_ms` (first one at a per-connection offset,
//! so the haves are spread evenly over time).
//!
//! Like a real client with encryption enabled, a peer also accepts MSE/PE: a connection whose
//! first bytes are not the plaintext handshake prefix is answered by the real
//! [`mse::Responder`] (RC4 preferred) for the benchmark torrent, and the handshake then
//! arrives as its initial payload. Each thread keeps one DH key pair and remembers the shared
//! secret per initiator public key (the prober reuses one key pair per worker): a real peer
//! pays its own exponentiation on its own machine, so the fake swarm does not spend this
//! machine's CPU on it. The prober computes every shared secret.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::engine::net;
use crate::engine::wheel::{TimerEntry, TimerWheel};
use crate::engine::Millis;
use crate::proto::mse;

use super::handshake::{handshake, HANDSHAKE_LEN};

/// Fake swarm settings.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// TCP port (0 = pick one).
    pub port: u16,
    /// Serving threads.
    pub threads: usize,
    /// Delay between the prober's handshake and the answer.
    pub delay_ms: u64,
    /// Pieces in the torrent (bitfield length = ceil(pieces / 8)).
    pub pieces: u32,
    /// After answering, send a `have` this often per connection (0 = never).
    pub have_every_ms: u64,
}

#[derive(Clone, Copy, Default)]
struct Conn {
    generation: u32,
    live: bool,
    answered: bool,
    seen: u8,
    info_hash: [u8; 20],
    /// Plaintext or MSE decided (from the first bytes).
    decided: bool,
    /// `have` messages sent on this connection.
    haves_sent: u32,
}

/// The MSE side of a connection (boxed, only for connections that are not plaintext).
enum MseConn {
    /// First bytes, kept until they tell plaintext from MSE and, for MSE, until Ya is whole.
    Sniff(Vec<u8>),
    /// The handshake is under way.
    Responding(Box<mse::Responder>),
    /// Done: everything passes through the ciphers.
    Stream(Box<mse::MseStream>),
}

/// Reads the plaintext handshake's first 68 bytes into `c`; true when it just completed.
fn feed_handshake(c: &mut Conn, data: &[u8]) -> bool {
    if (c.seen as usize) >= HANDSHAKE_LEN {
        return false; // anything after the handshake is ignored
    }
    let take = (HANDSHAKE_LEN - c.seen as usize).min(data.len());
    for (k, &b) in data[..take].iter().enumerate() {
        let pos = c.seen as usize + k;
        if (28..48).contains(&pos) {
            c.info_hash[pos - 28] = b;
        }
    }
    c.seen += take as u8;
    c.seen as usize == HANDSHAKE_LEN
}

/// Binds the listeners; returns them and the port.
pub fn bind(cfg: &SwarmConfig) -> io::Result<(Vec<socket2::Socket>, u16)> {
    let mut port = cfg.port;
    let mut listeners = Vec::new();
    for _ in 0..cfg.threads.max(1) {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        // Safety: plain setsockopt calls with valid pointers and lengths.
        unsafe {
            let one: i32 = 1;
            let p = (&one as *const i32).cast();
            let l = std::mem::size_of::<i32>() as libc::socklen_t;
            if libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                p,
                l,
            ) != 0
                || libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_REUSEPORT,
                    p,
                    l,
                ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            let dev = b"lo\0";
            if libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                dev.as_ptr().cast(),
                dev.len() as libc::socklen_t,
            ) != 0
            {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("fake swarm: SO_BINDTODEVICE lo failed ({e}); refusing to listen on 0.0.0.0 without it"),
                ));
            }
        }
        socket.set_nonblocking(true)?;
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        if port == 0 {
            port = net::local_addr(socket.as_raw_fd())?.port();
        }
        listeners.push(socket);
    }
    Ok((listeners, port))
}

/// Serves on `listeners` (one thread each) until `stop` is set.
pub fn serve(
    cfg: &SwarmConfig,
    listeners: Vec<socket2::Socket>,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let cfg = cfg.clone();
            let stop = stop.clone();
            std::thread::spawn(move || serve_one(&cfg, listener, &stop))
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| io::Error::other("fake swarm thread panicked"))??;
    }
    Ok(())
}

pub(crate) fn bitfield_for(peer: u32, pieces: u32) -> Vec<u8> {
    let len = pieces.div_ceil(8) as usize;
    let mut state = (peer as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bits: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    // Spare bits at the end must be zero.
    let spare = (len * 8) as u32 - pieces;
    if let Some(last) = bits.last_mut() {
        *last &= 0xffu8.checked_shl(spare).unwrap_or(0);
    }
    bits
}

/// A `have` for the `n`-th have of `peer`: walks the pieces from a per-peer offset.
fn have_message(peer: u32, n: u32, pieces: u32) -> [u8; 9] {
    let index = (peer.wrapping_mul(2_654_435_761) ^ n.wrapping_mul(7919)) % pieces.max(1);
    let mut m = [0, 0, 0, 5, 4, 0, 0, 0, 0];
    m[5..].copy_from_slice(&index.to_be_bytes());
    m
}

fn serve_one(cfg: &SwarmConfig, listener: socket2::Socket, stop: &AtomicBool) -> io::Result<()> {
    let epoch = Instant::now();
    let now = || epoch.elapsed().as_millis() as Millis;
    // Safety: epoll_create1 has no pointer arguments.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    let lfd = listener.as_raw_fd();
    let add = |fd: RawFd| -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: fd as u64,
        };
        // Safety: valid epoll fd, valid event pointer.
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    add(lfd)?;
    let mut conns: Vec<Conn> = Vec::new();
    let mut wheel = TimerWheel::new(now());
    let mut due = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = [0u8; 4096];
    let close = |conns: &mut Vec<Conn>, fd: RawFd| {
        if let Some(c) = conns.get_mut(fd as usize) {
            c.live = false;
            c.generation = c.generation.wrapping_add(1) & crate::engine::user_data::GENERATION_MASK;
        }
        // Safety: fd is a connection we accepted and still own.
        unsafe { libc::close(fd) };
    };
    // MSE state by descriptor, DH key pair and known secrets of this thread.
    let mut mse_conns: Vec<Option<MseConn>> = Vec::new();
    let dh_key = crate::scan::mse_budget::worker_dh_key();
    let mut secrets: Vec<([u8; mse::KEY_LEN], [u8; mse::KEY_LEN])> = Vec::new();
    let req2 = mse::req2_hash(&super::BENCH_INFO_HASH);
    let write_all = |fd: RawFd, bytes: &[u8]| {
        if !bytes.is_empty() {
            // Safety: writing from a live buffer of the given length.
            unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        }
    };
    // The answer (handshake + bitfield), appended to `out` and encrypted with the stream.
    let answer = |fd: RawFd, conn: &Conn, stream: Option<&mut MseConn>, out: &mut Vec<u8>| {
        let peer = match net::local_addr(fd) {
            Ok(SocketAddr::V4(a)) => u32::from(*a.ip()),
            _ => 0,
        };
        let start = out.len();
        out.extend_from_slice(&handshake(&conn.info_hash, &[b'F'; 20]));
        let bits = bitfield_for(peer, cfg.pieces);
        out.extend_from_slice(&(bits.len() as u32 + 1).to_be_bytes());
        out.push(5);
        out.extend_from_slice(&bits);
        if let Some(MseConn::Stream(stream)) = stream {
            stream.encrypt(&mut out[start..]);
        }
    };
    let mut out = Vec::new();
    // The first `have` of a connection: at an offset within the period, by descriptor.
    let first_have = |fd: RawFd, generation: u32| TimerEntry {
        slot: fd as u32,
        generation,
        at: now() + cfg.have_every_ms + (fd as u64 * 7919) % cfg.have_every_ms.max(1),
    };
    while !stop.load(Ordering::Relaxed) {
        let t = now();
        due.clear();
        wheel.expire(t, &mut due);
        for e in &due {
            if let Some(c) = conns.get_mut(e.slot as usize) {
                if !c.live || c.generation != e.generation {
                    continue;
                }
                let fd = e.slot as RawFd;
                if !c.answered {
                    c.answered = true;
                    let c = *c;
                    out.clear();
                    let stream = mse_conns.get_mut(e.slot as usize).and_then(Option::as_mut);
                    answer(fd, &c, stream, &mut out);
                    write_all(fd, &out);
                    if cfg.have_every_ms > 0 {
                        wheel.insert(first_have(fd, c.generation));
                    }
                } else if cfg.have_every_ms > 0 {
                    let peer = match net::local_addr(fd) {
                        Ok(SocketAddr::V4(a)) => u32::from(*a.ip()),
                        _ => 0,
                    };
                    let mut m = have_message(peer, c.haves_sent, cfg.pieces);
                    c.haves_sent += 1;
                    if let Some(Some(MseConn::Stream(stream))) = mse_conns.get_mut(e.slot as usize)
                    {
                        stream.encrypt(&mut m);
                    }
                    write_all(fd, &m);
                    wheel.insert(TimerEntry {
                        slot: e.slot,
                        generation: e.generation,
                        at: t + cfg.have_every_ms,
                    });
                }
            }
        }
        let wait = wheel
            .next_deadline()
            .map_or(100, |d| d.saturating_sub(now()).min(100)) as i32;
        // Safety: events buffer is valid for `len` entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, wait) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        for ev in &events[..n as usize] {
            let fd = ev.u64 as RawFd;
            if fd == lfd {
                for _ in 0..256 {
                    // Safety: accept4 without address output.
                    let cfd = unsafe {
                        libc::accept4(
                            lfd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        )
                    };
                    if cfd < 0 {
                        break;
                    }
                    if conns.len() <= cfd as usize {
                        conns.resize(cfd as usize + 1024, Conn::default());
                        mse_conns.resize_with(cfd as usize + 1024, || None);
                    }
                    let c = &mut conns[cfd as usize];
                    c.live = true;
                    c.answered = false;
                    c.seen = 0;
                    c.decided = false;
                    c.haves_sent = 0;
                    mse_conns[cfd as usize] = None;
                    if add(cfd).is_err() {
                        close(&mut conns, cfd);
                    }
                }
                continue;
            }
            // Readable or hung up: read what is there (bounded), then act.
            let mut closed = false;
            for _ in 0..16 {
                // Safety: reading into a live stack buffer.
                let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if r == 0 {
                    closed = true;
                    break;
                }
                if r < 0 {
                    let errno = io::Error::last_os_error().raw_os_error();
                    closed = errno != Some(libc::EAGAIN);
                    break;
                }
                let c = &mut conns[fd as usize];
                let data = &buf[..r as usize];
                out.clear();
                // Plaintext handshake bytes received with this read (decrypted for MSE).
                let mut plain: Vec<u8> = Vec::new();
                let mut plain_direct = false;
                let state = &mut mse_conns[fd as usize];
                if !c.decided {
                    let mut seen = match state.take() {
                        Some(MseConn::Sniff(seen)) => seen,
                        _ => Vec::new(),
                    };
                    seen.extend_from_slice(data);
                    match mse::classify_incoming(&seen) {
                        mse::IncomingKind::NeedMore => *state = Some(MseConn::Sniff(seen)),
                        mse::IncomingKind::Plaintext => {
                            c.decided = true;
                            plain = seen;
                        }
                        mse::IncomingKind::Encrypted => {
                            c.decided = true;
                            *state = Some(MseConn::Sniff(seen));
                        }
                    }
                } else {
                    match state {
                        None => plain_direct = true,
                        Some(MseConn::Sniff(seen)) => seen.extend_from_slice(data),
                        Some(MseConn::Responding(_)) => {} // fed below
                        Some(MseConn::Stream(stream)) => {
                            plain = data.to_vec();
                            stream.decrypt(&mut plain);
                        }
                    }
                }
                // MSE: start the responder once Ya is whole, then feed it.
                let mut feed: Option<Vec<u8>> = None;
                if let Some(MseConn::Sniff(seen)) = state {
                    if c.decided && seen.len() >= mse::KEY_LEN {
                        let ya: [u8; mse::KEY_LEN] =
                            seen[..mse::KEY_LEN].try_into().expect("96 bytes");
                        let secret = match secrets.iter().find(|(k, _)| *k == ya) {
                            Some((_, s)) => Some(*s),
                            None => dh_key.shared_secret(&ya).ok().inspect(|s| {
                                if secrets.len() >= 64 {
                                    secrets.clear();
                                }
                                secrets.push((ya, *s));
                            }),
                        };
                        let responder = mse::Responder::new(
                            dh_key.clone(),
                            Vec::new(),
                            Vec::new(),
                            mse::CryptoSet::BOTH,
                            mse::Crypto::Rc4,
                        )
                        .expect("valid responder");
                        let responder = match secret {
                            Some(s) => responder.with_known_secret(ya, s),
                            None => responder, // a bad key: the responder rejects it
                        };
                        feed = Some(std::mem::take(seen));
                        *state = Some(MseConn::Responding(Box::new(responder)));
                    }
                } else if let Some(MseConn::Responding(_)) = state {
                    feed = Some(data.to_vec());
                }
                if let (Some(bytes), Some(MseConn::Responding(r))) = (feed, state.as_mut()) {
                    let lookup = |h: &[u8; 20]| (*h == req2).then_some(super::BENCH_INFO_HASH);
                    match r.on_bytes(&bytes, &mut out, lookup) {
                        Ok(mse::Progress::NeedMore) => {}
                        Ok(mse::Progress::Done(done)) => {
                            plain = done.initial_payload;
                            plain.extend_from_slice(&done.payload);
                            *state = Some(MseConn::Stream(Box::new(done.stream)));
                        }
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    }
                }
                let bytes = if plain_direct { data } else { &plain[..] };
                if feed_handshake(c, bytes) {
                    if cfg.delay_ms == 0 {
                        c.answered = true;
                        let c = *c;
                        answer(fd, &c, mse_conns[fd as usize].as_mut(), &mut out);
                        if cfg.have_every_ms > 0 {
                            wheel.insert(first_have(fd, c.generation));
                        }
                    } else {
                        wheel.insert(TimerEntry {
                            slot: fd as u32,
                            generation: c.generation,
                            at: now() + cfg.delay_ms,
                        });
                    }
                }
                write_all(fd, &out);
                if (r as usize) < buf.len() {
                    break;
                }
            }
            if closed {
                close(&mut conns, fd);
                if let Some(state) = mse_conns.get_mut(fd as usize) {
                    *state = None;
                }
            }
        }
    }
    for (fd, c) in conns.iter().enumerate() {
        if c.live {
            // Safety: closing descriptors we own at exit.
            unsafe { libc::close(fd as RawFd) };
        }
    }
    // Safety: our epoll descriptor.
    unsafe { libc::close(ep) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitfield_spare_bits_are_zero_and_peers_differ() {
        let a = bitfield_for(0x7f0a_0001, 1000);
        let b = bitfield_for(0x7f0a_0002, 1000);
        assert_eq!(a.len(), 125);
        assert_ne!(a, b);
        let c = bitfield_for(5, 1001);
        assert_eq!(c.len(), 126);
        assert_eq!(c[125] & 0x7f, 0);
    }

    #[test]
    fn have_messages_stay_in_range_and_move_on() {
        let a = have_message(0x7f0a_0001, 0, 1000);
        let b = have_message(0x7f0a_0001, 1, 1000);
        assert_eq!(&a[..5], &[0, 0, 0, 5, 4]);
        assert_ne!(a, b);
        for n in 0..5000 {
            let m = have_message(0x7f0a_0003, n, 1001);
            assert!(u32::from_be_bytes([m[5], m[6], m[7], m[8]]) < 1001);
        }
    }
}
