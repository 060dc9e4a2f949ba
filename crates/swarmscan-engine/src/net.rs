//! Socket options and process limits.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

pub(crate) fn setsockopt_raw<T>(fd: RawFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // Safety: `value` points to a live `T` of exactly `size_of::<T>()` bytes for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// SO_LINGER {on, 0}: close sends RST and leaves no TIME_WAIT behind.
pub fn set_linger_zero(fd: RawFd) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt_raw(fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger)
}

/// TCP_NODELAY: small last messages leave before the RST, not held by Nagle.
pub fn set_nodelay(fd: RawFd) -> io::Result<()> {
    setsockopt_raw(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &1i32)
}

/// Options every probe socket gets (outgoing and accepted).
pub fn prepare_probe_socket(fd: RawFd) -> io::Result<()> {
    set_linger_zero(fd)?;
    set_nodelay(fd)
}

/// A `sockaddr` big enough for v4 and v6 that the kernel can read during a connect.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct RawSockAddr {
    storage: libc::sockaddr_in6,
    len: libc::socklen_t,
}

impl RawSockAddr {
    /// Converts a std address.
    pub fn new(addr: SocketAddr) -> RawSockAddr {
        // Safety: sockaddr_in6 is plain old data; all-zero is a valid value.
        let mut storage: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // Safety: sockaddr_in (16 bytes) fits in sockaddr_in6 (28 bytes); both are POD.
                unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_in6).cast(), sin) };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                storage.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                storage.sin6_port = a.port().to_be();
                storage.sin6_flowinfo = a.flowinfo();
                storage.sin6_addr = libc::in6_addr {
                    s6_addr: a.ip().octets(),
                };
                storage.sin6_scope_id = a.scope_id();
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        RawSockAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    /// Pointer for the kernel.
    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_in6).cast()
    }

    /// Length for the kernel.
    pub fn len(&self) -> libc::socklen_t {
        self.len
    }

    /// Never empty; present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Address family constant for `addr`.
pub fn family(addr: &SocketAddr) -> i32 {
    match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    }
}

fn from_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // Safety: the family says the storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // Safety: the family says the storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A std address from a `sockaddr_storage` the kernel filled (None for other families).
pub(crate) fn sockaddr_from_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    from_storage(storage)
}

/// A std address from the raw `sockaddr_in` / `sockaddr_in6` bytes the kernel wrote (e.g. the
/// name field of a multishot recvmsg buffer); None when too short or of another family.
pub(crate) fn sockaddr_from_bytes(bytes: &[u8]) -> Option<SocketAddr> {
    let len = bytes
        .len()
        .min(std::mem::size_of::<libc::sockaddr_storage>());
    if len < std::mem::size_of::<libc::sockaddr_in>() {
        return None;
    }
    // Safety: sockaddr_storage is POD; zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // Safety: `len` bytes fit in both the source slice and the storage.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
            len,
        )
    };
    if storage.ss_family as i32 == libc::AF_INET6 && len < std::mem::size_of::<libc::sockaddr_in6>()
    {
        return None;
    }
    from_storage(&storage)
}

/// getpeername(2) as a std address.
pub fn peer_addr(fd: RawFd) -> io::Result<SocketAddr> {
    name_of(fd, true)
}

/// getsockname(2) as a std address.
pub fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    name_of(fd, false)
}

fn name_of(fd: RawFd, peer: bool) -> io::Result<SocketAddr> {
    // Safety: sockaddr_storage is POD; zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let ptr = (&mut storage as *mut libc::sockaddr_storage).cast();
    // Safety: storage and len are valid for writes of the given size.
    let rc = unsafe {
        if peer {
            libc::getpeername(fd, ptr, &mut len)
        } else {
            libc::getsockname(fd, ptr, &mut len)
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    from_storage(&storage)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown address family"))
}

/// A TCP listener with SO_REUSEPORT (one per worker on the same address), non-blocking off
/// (io_uring accepts), IPV6_V6ONLY for v6 addresses.
pub fn reuseport_listener(addr: SocketAddr, backlog: i32) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // socket2 sets SOCK_CLOEXEC itself; SO_REUSEPORT without its `all` feature:
    setsockopt_raw(
        socket.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_REUSEPORT,
        &1i32,
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; errors clearly when `needed` exceeds it.
/// Returns the new soft limit.
pub fn raise_nofile_limit(needed: u64, what: &str) -> Result<u64, String> {
    // Safety: rlimit is POD and getrlimit writes exactly one.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // Safety: valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!(
            "getrlimit(RLIMIT_NOFILE): {}",
            io::Error::last_os_error()
        ));
    }
    if needed > lim.rlim_max {
        return Err(format!(
            "need {needed} descriptors for {what}, hard limit is {} (raise it with `ulimit -Hn` / LimitNOFILE=)",
            lim.rlim_max
        ));
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // Safety: valid pointer to an initialised rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(format!(
                "setrlimit(RLIMIT_NOFILE, {}): {}",
                lim.rlim_max,
                io::Error::last_os_error()
            ));
        }
    }
    Ok(lim.rlim_cur)
}

/// Pins the calling thread to `cpu` (modulo the CPUs available).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // Safety: cpu_set_t is POD; CPU_ZERO/CPU_SET write inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // Safety: `set` is a valid cpu_set_t and the index is below CPU_SETSIZE for sane machines.
    unsafe { libc::CPU_SET(cpu % cpus, &mut set) };
    // Safety: pid 0 = calling thread; set is valid for the given size.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Where an accepted TCP connection was originally headed, from netfilter's connection
/// tracking (`SO_ORIGINAL_DST`; `IP6T_SO_ORIGINAL_DST` for IPv6): after an nftables/iptables
/// REDIRECT this is the address and port the peer dialled, before it was rewritten to the
/// listener's. For a connection that was not redirected it equals the local address. `None`
/// when the kernel does not track the connection (no conntrack module) or `local`'s family
/// is not the socket's.
pub fn original_dst(fd: RawFd, local: &SocketAddr) -> Option<SocketAddr> {
    // Safety: sockaddr_storage is POD; zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let (level, name, mut len) = if local.is_ipv4() {
        (
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    } else {
        (
            libc::SOL_IPV6,
            libc::IP6T_SO_ORIGINAL_DST,
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    // Safety: `storage` is large enough for either address and `len` says how much the
    // kernel may write.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    from_storage(&storage)
}

/// The original destination carried by an `IP_ORIGDSTADDR` / `IPV6_ORIGDSTADDR` control
/// message in `control` (the control bytes of a received datagram, as the kernel laid them
/// out: `cmsghdr`s, each padded to the native alignment). `None` when there is none.
pub fn original_dst_from_control(control: &[u8]) -> Option<SocketAddr> {
    let header_len = std::mem::size_of::<libc::cmsghdr>();
    let align = std::mem::size_of::<usize>();
    let mut at = 0usize;
    while at + header_len <= control.len() {
        // Safety: `header_len` bytes at `at` lie inside `control`; read unaligned since the
        // slice carries no alignment guarantee.
        let header: libc::cmsghdr =
            unsafe { std::ptr::read_unaligned(control[at..].as_ptr().cast()) };
        let len = header.cmsg_len as usize;
        if len < header_len || at + len > control.len() {
            return None;
        }
        let data = &control[at + header_len..at + len];
        let is_orig = (header.cmsg_level == libc::SOL_IP
            && header.cmsg_type == libc::IP_ORIGDSTADDR)
            || (header.cmsg_level == libc::SOL_IPV6 && header.cmsg_type == libc::IPV6_ORIGDSTADDR);
        if is_orig {
            return sockaddr_from_bytes(data);
        }
        at += len.div_ceil(align) * align;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_sockaddr_round_trips_through_the_kernel() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let raw = RawSockAddr::new(addr);
        assert_eq!(raw.len() as usize, std::mem::size_of::<libc::sockaddr_in>());
        // Safety: plain socket/connect syscalls with a valid address pointer and length.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0);
        // Safety: raw points to a valid sockaddr of raw.len() bytes.
        let rc = unsafe { libc::connect(fd, raw.as_ptr(), raw.len()) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        assert_eq!(peer_addr(fd).unwrap(), addr);
        assert!(local_addr(fd).unwrap().ip().is_loopback());
        prepare_probe_socket(fd).unwrap();
        // Safety: fd is ours.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn nofile_limit_error_names_the_need() {
        let err = raise_nofile_limit(u64::MAX, "max_in_flight=test").unwrap_err();
        assert!(
            err.contains("max_in_flight=test") && err.contains("hard limit"),
            "{err}"
        );
        assert!(raise_nofile_limit(16, "a few").unwrap() >= 16);
    }
}
