//! Shared by the integration tests that drive real clients.
// Each test binary uses its own part of this module.
#![allow(dead_code)]

pub mod kinds_swarm;
pub mod process;
pub mod swarm;

use std::net::{IpAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};

use process::free_tcp_port;

/// The Python interpreter with libtorrent's bindings (env `SWARMSCAN_PYTHON`, else
/// `python3`). Fails the test with a clear message when `import libtorrent` does not work:
/// the tests need the real client, they never pass silently without it.
pub fn python_with_libtorrent() -> String {
    let py = std::env::var("SWARMSCAN_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let ok = Command::new(&py)
        .args(["-c", "import libtorrent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "`{py} -c 'import libtorrent'` failed: these tests need libtorrent's Python bindings. \
         Run scripts/test (it installs libtorrent 2.1.1 into target/pyenv) or set \
         SWARMSCAN_PYTHON to an interpreter that has it."
    );
    py
}

/// A port free for TCP and UDP on every address in `ips` right now.
pub fn free_port_on_all(ips: &[&str]) -> u16 {
    'candidate: for _ in 0..100 {
        let port = free_tcp_port(ips[0]);
        for ip in ips {
            let ip: IpAddr = ip.parse().unwrap();
            if TcpListener::bind((ip, port)).is_err() || UdpSocket::bind((ip, port)).is_err() {
                continue 'candidate;
            }
        }
        return port;
    }
    panic!("no port free for TCP and UDP on all of {ips:?}");
}

/// Now, Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A temporary directory for one test, kept (also after a failure) when env
/// `SWARMSCAN_KEEP_TEST_DIR` is set.
pub fn test_dir(prefix: &str) -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    dir.disable_cleanup(std::env::var_os("SWARMSCAN_KEEP_TEST_DIR").is_some());
    dir
}

/// iptables rules a test adds to the INPUT chain, deleted again when the guard is dropped (on
/// every path, panics included). Every rule carries the comment `swarmscan-test-<pid>`; rules
/// left behind by a test process that no longer runs (killed before it could clean up) are
/// deleted when the next guard is made.
pub struct IptablesGuard {
    comment: String,
    /// (program, rule spec without the chain) of every rule added.
    rules: Vec<(&'static str, Vec<String>)>,
}

const IPTABLES_COMMENT_PREFIX: &str = "swarmscan-test-";

impl IptablesGuard {
    /// Checks that `iptables` (and `ip6tables`) work here; fails the test with a clear message
    /// otherwise (the tests that need them never pass silently without them).
    pub fn new() -> IptablesGuard {
        for program in ["iptables", "ip6tables"] {
            let out = Command::new(program).args(["-w", "-S", "INPUT"]).output();
            match out {
                Ok(out) if out.status.success() => {
                    remove_stale_rules(program, &String::from_utf8_lossy(&out.stdout))
                }
                other => panic!(
                    "`{program} -S INPUT` failed ({other:?}): this test needs iptables and root to \
                     make a client unreachable. scripts/test installs the Debian package `iptables` \
                     when it runs as root."
                ),
            }
        }
        IptablesGuard {
            comment: format!("{IPTABLES_COMMENT_PREFIX}{}", std::process::id()),
            rules: Vec::new(),
        }
    }

    /// Rejects TCP SYNs to `ip`:`port` (inbound connections), as a NAT in front of a client does.
    pub fn reject_syn(&mut self, ip: IpAddr, port: u16) {
        let (ip, port) = (ip.to_string(), port.to_string());
        self.insert(
            ip_family_program(ip.contains(':')),
            &["-p", "tcp", "--syn", "-d", &ip, "--dport", &port],
            "REJECT",
        );
    }

    /// Drops every UDP datagram between `a` and `b`'s ports `b_ports` (first, last), both ways:
    /// the path between them is down (for uTP, until the guard is dropped).
    pub fn drop_udp_between(&mut self, a: IpAddr, b: IpAddr, b_ports: (u16, u16)) {
        assert_eq!(a.is_ipv4(), b.is_ipv4(), "one family");
        let program = ip_family_program(a.is_ipv6());
        let ports = format!("{}:{}", b_ports.0, b_ports.1);
        let (a, b) = (a.to_string(), b.to_string());
        let to_b = ["-p", "udp", "-s", &a, "-d", &b, "--dport", &ports];
        let from_b = ["-p", "udp", "-s", &b, "--sport", &ports, "-d", &a];
        self.insert(program, &to_b, "DROP");
        self.insert(program, &from_b, "DROP");
    }

    /// Inserts `matches` with our comment and `target` at the head of INPUT.
    fn insert(&mut self, program: &'static str, matches: &[&str], target: &str) {
        let mut spec: Vec<String> = matches.iter().map(|s| s.to_string()).collect();
        spec.extend(
            ["-m", "comment", "--comment", &self.comment, "-j", target]
                .iter()
                .map(|s| s.to_string()),
        );
        let status = Command::new(program)
            .args(["-w", "-I", "INPUT"])
            .args(&spec)
            .status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "{program} -I INPUT {spec:?}: {status:?}"
        );
        self.rules.push((program, spec));
    }
}

fn ip_family_program(ipv6: bool) -> &'static str {
    if ipv6 {
        "ip6tables"
    } else {
        "iptables"
    }
}

impl Drop for IptablesGuard {
    fn drop(&mut self) {
        for (program, spec) in self.rules.drain(..) {
            let status = Command::new(program)
                .args(["-w", "-D", "INPUT"])
                .args(&spec)
                .status();
            if !status.as_ref().is_ok_and(|s| s.success()) {
                eprintln!("warning: could not delete {program} rule {spec:?}: {status:?}");
            }
        }
    }
}

/// Deletes the rules of `iptables -S INPUT` output whose `swarmscan-test-<pid>` comment names a
/// process that no longer exists.
fn remove_stale_rules(program: &str, listing: &str) {
    for line in listing.lines() {
        let Some(rest) = line.strip_prefix("-A INPUT ") else {
            continue;
        };
        let Some(pid) = rest
            .split_whitespace()
            .find_map(|w| w.trim_matches('"').strip_prefix(IPTABLES_COMMENT_PREFIX))
        else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let spec: Vec<&str> = rest
            .split_whitespace()
            .map(|w| w.trim_matches('"'))
            .collect();
        let _ = Command::new(program)
            .args(["-w", "-D", "INPUT"])
            .args(&spec)
            .status();
    }
}
