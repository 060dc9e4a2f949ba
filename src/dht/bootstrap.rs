//! Turning `dht.bootstrap` entries into addresses, under the loopback rule (see
//! [`super::host`]): when every UDP socket is bound to a loopback address no node can reach
//! beyond the machine, so names are not even resolved (no DNS query leaves), and addresses
//! that are not loopback are dropped.

use std::net::{SocketAddr, ToSocketAddrs};

/// Whether nodes on these sockets can reach beyond loopback (some socket is bound to a
/// non-loopback or unspecified address).
pub fn reaches_beyond_loopback(udp: &[SocketAddr]) -> bool {
    udp.iter().any(|a| !a.ip().to_canonical().is_loopback())
}

/// The bootstrap addresses for nodes on sockets bound to `udp`: literal addresses as given
/// (those no socket can reach dropped), names resolved with `resolve` only when
/// [`reaches_beyond_loopback`]. A name that does not resolve is logged and skipped.
pub fn resolve_bootstrap(
    entries: &[String],
    udp: &[SocketAddr],
    mut resolve: impl FnMut(&str) -> std::io::Result<Vec<SocketAddr>>,
) -> Vec<SocketAddr> {
    let beyond = reaches_beyond_loopback(udp);
    let usable = |a: &SocketAddr| {
        udp.iter()
            .any(|l| l.is_ipv4() == a.is_ipv4() && super::host::reachable(l, a))
    };
    let mut out: Vec<SocketAddr> = Vec::new();
    let mut skipped_names = Vec::new();
    for entry in entries {
        let addrs = match entry.parse::<SocketAddr>() {
            Ok(a) => vec![a],
            Err(_) if !beyond => {
                skipped_names.push(entry.as_str());
                continue;
            }
            Err(_) => match resolve(entry) {
                Ok(addrs) => addrs,
                Err(e) => {
                    tracing::warn!(entry = %entry, "dht.bootstrap: cannot resolve: {e}");
                    continue;
                }
            },
        };
        for a in addrs {
            if usable(&a) && !out.contains(&a) {
                out.push(a);
            }
        }
    }
    if !skipped_names.is_empty() {
        tracing::info!(
            names = ?skipped_names,
            "dht.bootstrap: names not resolved: every UDP socket is bound to loopback"
        );
    }
    out
}

/// [`resolve_bootstrap`] with the system resolver.
pub fn resolve_bootstrap_system(entries: &[String], udp: &[SocketAddr]) -> Vec<SocketAddr> {
    resolve_bootstrap(entries, udp, |name| {
        name.to_socket_addrs().map(|a| a.collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_DHT_ROUTERS;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_sockets_resolve_no_name_and_keep_only_loopback_addresses() {
        let mut entries: Vec<String> = DEFAULT_DHT_ROUTERS.iter().map(|s| s.to_string()).collect();
        entries.push("127.0.0.9:7000".into());
        entries.push("203.0.113.5:6881".into());
        let mut asked = Vec::new();
        let got = resolve_bootstrap(&entries, &[a("127.0.0.5:6881"), a("[::1]:6881")], |n| {
            asked.push(n.to_string());
            Ok(vec![a("67.215.246.10:6881")])
        });
        assert!(asked.is_empty(), "no name resolved on loopback: {asked:?}");
        assert_eq!(got, vec![a("127.0.0.9:7000")]);
    }

    #[test]
    fn other_sockets_resolve_names_and_survive_failures() {
        let entries: Vec<String> = vec![
            "router.example:6881".into(),
            "broken.example:6881".into(),
            "198.51.100.1:6881".into(),
        ];
        let mut asked = Vec::new();
        let got = resolve_bootstrap(&entries, &[a("0.0.0.0:6881")], |n| {
            asked.push(n.to_string());
            if n.starts_with("broken") {
                Err(std::io::Error::other("no such host"))
            } else {
                Ok(vec![a("192.0.2.1:6881"), a("[2001:db8::1]:6881")])
            }
        });
        assert_eq!(asked, vec!["router.example:6881", "broken.example:6881"]);
        // No IPv6 socket: the IPv6 answer is dropped.
        assert_eq!(got, vec![a("192.0.2.1:6881"), a("198.51.100.1:6881")]);
    }
}
