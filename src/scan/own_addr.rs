//! Our own addresses, so that swarmscan never probes itself.
//!
//! Trackers list every announcer, so the answer to our announce usually holds the address we
//! announced (our public IP, or 127.0.0.1 on loopback, with `net.announce_port`); peers pass it
//! on in PEX. Probing it measures nothing (at best our own listener answers, at worst nothing
//! listens there and the probe is a refused connect), so such addresses are dropped where they
//! enter the scan (tracker answers, PEX) and counted (`own_address_dropped`).
//!
//! An address is ours when it is
//! * one of our listen sockets exactly;
//! * on the port of a wildcard listener (`0.0.0.0:P`, `[::]:P`) of the same family, at a
//!   loopback address or one of our IPs;
//! * on the announced port, at one of our IPs.
//!
//! Our IPs are the host's interface addresses (read once at start, loopback included), plus
//! the addresses others say we have: a tracker's BEP 24 `external ip` and a peer's extension
//! handshake `yourip` (how we look from outside a NAT). Only the (IP, one of our ports) pairs
//! are dropped, so a wrong `yourip` costs at most one address on our own port.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// Most learned addresses kept per kind (trackers, peers); older ones are forgotten first, so
/// a peer sending random `yourip` values cannot grow the set.
const LEARNED_MAX: usize = 16;

/// Our listen sockets, announced port and IPs (see the module docs). Shared by discovery and
/// the workers; reads take an uncontended read lock, writes happen only when a new address of
/// ours is learned.
#[derive(Debug, Default)]
pub struct OwnAddresses {
    listen: Vec<SocketAddr>,
    announce_port: u16,
    /// Interface addresses and loopback, fixed at start.
    local: Vec<IpAddr>,
    /// Addresses trackers reported (`external ip`).
    from_trackers: RwLock<Vec<IpAddr>>,
    /// Addresses peers reported (`yourip`).
    from_peers: RwLock<Vec<IpAddr>>,
    dropped: AtomicU64,
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

impl OwnAddresses {
    /// Our addresses for these listen sockets (port 0 already resolved to the bound port) and
    /// announced port (0 = none), with the host's interface addresses.
    pub fn new(listen: &[SocketAddr], announce_port: u16) -> OwnAddresses {
        let mut local = interface_addresses();
        for ip in [
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ] {
            if !local.contains(&ip) {
                local.push(ip);
            }
        }
        OwnAddresses::with_local(listen, announce_port, local)
    }

    /// As [`OwnAddresses::new`] with a given set of local IPs (for tests).
    pub fn with_local(
        listen: &[SocketAddr],
        announce_port: u16,
        local: Vec<IpAddr>,
    ) -> OwnAddresses {
        OwnAddresses {
            listen: listen.iter().copied().map(canonical).collect(),
            announce_port,
            local: local.into_iter().map(|ip| ip.to_canonical()).collect(),
            ..OwnAddresses::default()
        }
    }

    /// The port announced to trackers and peers (0 = none).
    pub fn announce_port(&self) -> u16 {
        self.announce_port
    }

    /// A tracker says this is our address (BEP 24 `external ip`). Returns true when it is new.
    pub fn learn_from_tracker(&self, ip: IpAddr) -> bool {
        Self::learn(&self.from_trackers, ip)
    }

    /// The addresses trackers reported (BEP 24 `external ip`), oldest first.
    pub fn from_trackers(&self) -> Vec<IpAddr> {
        self.from_trackers
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// A peer says this is our address (extension handshake `yourip`). Returns true when new.
    pub fn learn_from_peer(&self, ip: IpAddr) -> bool {
        Self::learn(&self.from_peers, ip)
    }

    fn learn(set: &RwLock<Vec<IpAddr>>, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if ip.is_unspecified() || ip.is_multicast() {
            return false;
        }
        if set.read().map_or(true, |s| s.contains(&ip)) {
            return false;
        }
        let Ok(mut s) = set.write() else {
            return false;
        };
        if s.contains(&ip) {
            return false;
        }
        if s.len() >= LEARNED_MAX {
            s.remove(0);
        }
        s.push(ip);
        true
    }

    fn is_our_ip(&self, ip: IpAddr) -> bool {
        self.local.contains(&ip)
            || [&self.from_trackers, &self.from_peers]
                .iter()
                .any(|set| set.read().is_ok_and(|s| s.contains(&ip)))
    }

    /// Whether `addr` is one of ours (see the module docs).
    pub fn is_own(&self, addr: SocketAddr) -> bool {
        let addr = canonical(addr);
        let (ip, port) = (addr.ip(), addr.port());
        if port == 0 {
            return false;
        }
        let mut our_port = port == self.announce_port;
        for l in &self.listen {
            if l.port() != port {
                continue;
            }
            if l.ip() == ip {
                return true;
            }
            // IPv6 listeners are IPV6_V6ONLY: `[::]` takes IPv6 only, `0.0.0.0` IPv4 only.
            if l.ip().is_unspecified() && l.is_ipv4() == ip.is_ipv4() {
                if ip.is_loopback() {
                    return true; // all of 127/8 (and ::1) reaches a wildcard listener
                }
                our_port = true;
            }
        }
        our_port && self.is_our_ip(ip)
    }

    /// Removes our own addresses from a PEX list: besides [`OwnAddresses::is_own`], any port
    /// at one of this host's interface addresses, since we send peers no listen port and they
    /// pass on the ephemeral ports of our probes. Counts and returns how many.
    pub fn drop_own_pex(&self, addrs: &mut Vec<SocketAddr>) -> usize {
        let before = addrs.len();
        addrs.retain(|a| !(self.is_own(*a) || self.local.contains(&canonical(*a).ip())));
        let dropped = before - addrs.len();
        self.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
        dropped
    }

    /// Removes our own addresses from `addrs` (order kept), counts and returns how many.
    pub fn drop_own(&self, addrs: &mut Vec<SocketAddr>) -> usize {
        let before = addrs.len();
        addrs.retain(|a| !self.is_own(*a));
        let dropped = before - addrs.len();
        if dropped > 0 {
            self.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
        }
        dropped
    }

    /// Addresses dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The host's interface addresses (getifaddrs(3)); empty if it fails.
fn interface_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // Safety: getifaddrs writes a list head into `head`, which we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // Safety: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // Safety: ifa_addr points to a sockaddr whose family says which struct it is.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // Safety: an AF_INET sockaddr is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ));
            } else if family == libc::AF_INET6 {
                // Safety: an AF_INET6 sockaddr is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // Safety: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn exact_listen_sockets_and_the_announced_port_at_our_ips() {
        let own = OwnAddresses::with_local(
            &[a("127.0.0.1:7000"), a("[::1]:7000")],
            7000,
            vec![ip("127.0.0.1"), ip("::1"), ip("10.0.0.5")],
        );
        assert!(own.is_own(a("127.0.0.1:7000")));
        assert!(own.is_own(a("[::1]:7000")));
        assert!(own.is_own(a("[::ffff:127.0.0.1]:7000")), "v4-mapped");
        // The announced port at an interface address: what a tracker on the LAN lists.
        assert!(own.is_own(a("10.0.0.5:7000")));
        // Another loopback address or another port is somebody else.
        assert!(!own.is_own(a("127.0.0.2:7000")));
        assert!(!own.is_own(a("127.0.0.1:7001")));
        assert!(!own.is_own(a("10.0.0.6:7000")));
        assert!(!own.is_own(a("127.0.0.1:0")));
    }

    #[test]
    fn wildcard_listeners_cover_loopback_and_our_ips_of_their_family() {
        let own = OwnAddresses::with_local(
            &[a("0.0.0.0:6881"), a("[::]:6882")],
            6881,
            vec![
                ip("127.0.0.1"),
                ip("::1"),
                ip("192.168.1.9"),
                ip("2001:db8::9"),
            ],
        );
        assert!(own.is_own(a("127.0.0.1:6881")));
        assert!(
            own.is_own(a("127.3.4.5:6881")),
            "all of 127/8 reaches 0.0.0.0"
        );
        assert!(own.is_own(a("192.168.1.9:6881")));
        assert!(!own.is_own(a("192.168.1.10:6881")));
        assert!(own.is_own(a("[::1]:6882")));
        assert!(own.is_own(a("[2001:db8::9]:6882")));
        // [::] is IPV6_V6ONLY: 192.168.1.9:6882 reaches nothing of ours.
        assert!(!own.is_own(a("192.168.1.9:6882")));
        // The announced port (6881) at our v6 address: announced, so ours.
        assert!(own.is_own(a("[2001:db8::9]:6881")));
    }

    #[test]
    fn learned_addresses_count_with_our_ports_only_and_are_bounded() {
        let own = OwnAddresses::with_local(&[a("127.0.0.1:7000")], 51413, vec![]);
        assert!(!own.is_own(a("203.0.113.7:51413")));
        assert!(own.learn_from_tracker(ip("203.0.113.7")));
        assert!(!own.learn_from_tracker(ip("203.0.113.7")), "known already");
        assert!(own.is_own(a("203.0.113.7:51413")));
        assert!(!own.is_own(a("203.0.113.7:51414")));
        assert!(!own.learn_from_peer(ip("0.0.0.0")));
        for i in 0..40u8 {
            own.learn_from_peer(IpAddr::from([198, 51, 100, i]));
        }
        assert!(own.from_peers.read().unwrap().len() <= LEARNED_MAX);
        assert!(own.is_own(a("198.51.100.39:51413")));
        assert!(!own.is_own(a("198.51.100.0:51413")), "oldest forgotten");
        // Peers' claims never push out what trackers said.
        assert!(own.is_own(a("203.0.113.7:51413")));
    }

    #[test]
    fn pex_lists_lose_every_port_at_our_interface_addresses() {
        let own = OwnAddresses::with_local(&[a("127.0.0.1:7000")], 7000, vec![ip("127.0.0.1")]);
        let mut v = vec![
            a("127.0.0.1:41234"),
            a("127.0.0.2:41234"),
            a("127.0.0.1:7000"),
        ];
        assert_eq!(own.drop_own_pex(&mut v), 2);
        assert_eq!(v, vec![a("127.0.0.2:41234")]);
        // Tracker answers keep an address at our IP on another port (another client there).
        let mut t = vec![a("127.0.0.1:41234")];
        assert_eq!(own.drop_own(&mut t), 0);
    }

    #[test]
    fn drop_own_keeps_order_and_counts() {
        let own = OwnAddresses::with_local(&[a("127.0.0.1:7000")], 7000, vec![ip("127.0.0.1")]);
        let mut v = vec![
            a("127.0.0.2:7000"),
            a("127.0.0.1:7000"),
            a("127.0.0.3:6881"),
            a("127.0.0.1:7000"),
        ];
        assert_eq!(own.drop_own(&mut v), 2);
        assert_eq!(v, vec![a("127.0.0.2:7000"), a("127.0.0.3:6881")]);
        assert_eq!(own.dropped(), 2);
        assert_eq!(own.drop_own(&mut v), 0);
        assert_eq!(own.dropped(), 2);
    }

    #[test]
    fn no_listener_and_no_announced_port_drops_nothing() {
        let own = OwnAddresses::with_local(&[], 0, vec![ip("127.0.0.1")]);
        assert!(!own.is_own(a("127.0.0.1:6881")));
        assert!(!own.is_own(a("127.0.0.1:0")));
    }

    #[test]
    fn interface_addresses_include_loopback() {
        let own = OwnAddresses::new(&[a("0.0.0.0:7000")], 7000);
        assert!(own.local.contains(&ip("127.0.0.1")));
        assert!(own.is_own(a("127.0.0.1:7000")));
    }
}
