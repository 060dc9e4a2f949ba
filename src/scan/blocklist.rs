//! Addresses swarmscan never contacts: an operator's opt-out list (one address or CIDR per
//! line) plus ranges no peer can have (unspecified, multicast, reserved, broadcast).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// One network: address bits and prefix length, IPv4 mapped into IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    bits: u128,
    prefix: u8,
}

impl Net {
    fn contains(&self, ip: u128) -> bool {
        if self.prefix == 0 {
            return true;
        }
        let shift = 128 - self.prefix as u32;
        (ip >> shift) == (self.bits >> shift)
    }
}

fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(v6),
        },
    }
}

/// Parses `1.2.3.4`, `1.2.3.0/24`, `2001:db8::/32` (IPv4 prefixes count within IPv4).
fn parse_net(s: &str) -> Result<Net, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))?;
    let (max, offset) = match ip {
        IpAddr::V4(_) => (32u8, 96u8),
        IpAddr::V6(_) => (128u8, 0u8),
    };
    let prefix = match prefix {
        None => max,
        Some(p) => {
            let p: u8 = p
                .trim()
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?;
            p
        }
    };
    Ok(Net {
        bits: ip_bits(ip),
        prefix: prefix + offset,
    })
}

/// The set of blocked networks.
#[derive(Debug, Clone, Default)]
pub struct Blocklist {
    nets: Vec<Net>,
    /// Networks from the operator's file (the rest are built in).
    pub from_file: usize,
}

impl Blocklist {
    /// The built-in ranges: addresses no reachable peer has.
    pub fn builtin() -> Blocklist {
        let nets = [
            "0.0.0.0/8",
            "224.0.0.0/4",
            "240.0.0.0/4",
            "::/128",
            "ff00::/8",
        ]
        .iter()
        .map(|s| parse_net(s).expect("built-in network"))
        .collect();
        Blocklist { nets, from_file: 0 }
    }

    /// The built-in ranges plus the operator's file (errors name the file and line).
    pub fn load(path: &Path) -> Result<Blocklist, String> {
        let mut b = Blocklist::builtin();
        if path.as_os_str().is_empty() {
            return Ok(b);
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("blocklist {}: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let net = parse_net(line)
                .map_err(|e| format!("blocklist {}:{}: {e}", path.display(), n + 1))?;
            b.nets.push(net);
            b.from_file += 1;
        }
        Ok(b)
    }

    /// True if swarmscan must not contact `addr` (port 0 is never a peer either).
    pub fn blocks(&self, addr: &SocketAddr) -> bool {
        if addr.port() == 0 {
            return true;
        }
        let ip = ip_bits(addr.ip());
        self.nets.iter().any(|n| n.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn builtin_ranges() {
        let b = Blocklist::builtin();
        assert!(b.blocks(&a("0.1.2.3:6881")));
        assert!(b.blocks(&a("239.1.1.1:6881")));
        assert!(b.blocks(&a("255.255.255.255:6881")));
        assert!(b.blocks(&a("[ff02::1]:6881")));
        assert!(b.blocks(&a("1.2.3.4:0")));
        assert!(!b.blocks(&a("1.2.3.4:6881")));
        assert!(
            !b.blocks(&a("127.0.0.1:6881")),
            "loopback peers are allowed (tests, demo)"
        );
        assert!(!b.blocks(&a("[2001:db8::1]:6881")));
    }

    #[test]
    fn file_entries_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("opt-out.txt");
        std::fs::write(
            &p,
            "# opted out\n10.1.0.0/16\n192.0.2.7 # one host\n2001:db8:1::/48\n\n",
        )
        .unwrap();
        let b = Blocklist::load(&p).unwrap();
        assert_eq!(b.from_file, 3);
        assert!(b.blocks(&a("10.1.200.3:1")));
        assert!(!b.blocks(&a("10.2.0.1:1")));
        assert!(b.blocks(&a("192.0.2.7:1")));
        assert!(!b.blocks(&a("192.0.2.8:1")));
        assert!(b.blocks(&a("[2001:db8:1:ffff::1]:1")));
        assert!(
            b.blocks(&a("[::ffff:10.1.0.1]:1")),
            "IPv4-mapped IPv6 is the same host"
        );
        assert!(!b.blocks(&a("[2001:db8:2::1]:1")));

        std::fs::write(&p, "10.0.0.0/8\n10.0.0.0/33\n").unwrap();
        let e = Blocklist::load(&p).unwrap_err();
        assert!(e.contains("opt-out.txt:2") && e.contains("prefix"), "{e}");
        std::fs::write(&p, "example.com\n").unwrap();
        assert!(Blocklist::load(&p).unwrap_err().contains(":1:"));
        assert!(Blocklist::load(&dir.path().join("missing")).is_err());
    }
}
