//! iptables rules for the integration tests that make a client unreachable (as behind a NAT).
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

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
        let program = if ip.is_ipv4() {
            "iptables"
        } else {
            "ip6tables"
        };
        let spec: Vec<String> = [
            "-p",
            "tcp",
            "--syn",
            "-d",
            &ip.to_string(),
            "--dport",
            &port.to_string(),
            "-m",
            "comment",
            "--comment",
            &self.comment,
            "-j",
            "REJECT",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
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
