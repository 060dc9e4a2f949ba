//! `swarmscan bttest` across a real path with a middlebox on it: two network namespaces
//! joined by a veth pair (10.77.0.1 the server, 10.77.0.2 the client, addresses that exist
//! only inside them), the server and the client each run with `ip netns exec` as a user
//! would, and four set-ups of the path:
//!
//! 1. nothing in the way: nothing blocked, nothing rate-limited;
//! 2. resets injected into every connection carrying the BitTorrent handshake string
//!    (iptables string match + REJECT with tcp-reset, in the server's namespace): blocked
//!    based on protocol (not direction, not port);
//! 3. a rate limit on port 6881 only (tc htb with u32 filters on source and destination
//!    port, both namespaces' egress): throttled by port, not by protocol;
//! 4. a rate limit on BitTorrent content on every port (iptables string match marks the
//!    connection with CONNMARK, every later packet of a marked connection goes to the slow
//!    htb class by CLASSIFY): rate-limited for uploads and downloads, not by port.
//!
//! Needs root, `ip` (iproute2), `iptables` and `tc`; scripts/test installs the packages. Not
//! root: the test says so and passes without running (nothing else can make namespaces).
//! The namespaces are deleted on every path out (a guard's Drop), which also removes the
//! veth pair, the rules and the qdiscs inside them.

mod common;

use common::process::ChildGuard;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

const SERVER_IP: &str = "10.77.0.1";
const CLIENT_IP: &str = "10.77.0.2";
/// The slow class of set-ups 3 and 4: 2 MB/s, against tens of MB/s unshaped.
const SLOW_RATE: &str = "16mbit";

/// Two namespaces joined by veth; deleted when dropped.
struct Netns {
    server: String,
    client: String,
    server_dev: String,
    client_dev: String,
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e} (scripts/test installs iproute2 and iptables)")
        });
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn new() -> Netns {
        let id = std::process::id() % 100_000;
        let ns = Netns {
            server: format!("swarmscan-bts-{id}"),
            client: format!("swarmscan-btc-{id}"),
            server_dev: format!("btts{id}"),
            client_dev: format!("bttc{id}"),
        };
        // Left over from an earlier run of this pid (killed before its guard ran).
        for name in [&ns.server, &ns.client] {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(Stdio::null())
                .status();
        }
        run("ip", &["netns", "add", &ns.server]);
        run("ip", &["netns", "add", &ns.client]);
        run(
            "ip",
            &[
                "link",
                "add",
                &ns.server_dev,
                "netns",
                &ns.server,
                "type",
                "veth",
                "peer",
                "name",
                &ns.client_dev,
                "netns",
                &ns.client,
            ],
        );
        for (name, dev, ip) in [
            (&ns.server, &ns.server_dev, SERVER_IP),
            (&ns.client, &ns.client_dev, CLIENT_IP),
        ] {
            run(
                "ip",
                &["-n", name, "addr", "add", &format!("{ip}/24"), "dev", dev],
            );
            run("ip", &["-n", name, "link", "set", dev, "up"]);
            run("ip", &["-n", name, "link", "set", "lo", "up"]);
        }
        ns
    }

    fn exec(&self, ns: &str, program: &str, args: &[&str]) {
        let mut all = vec!["netns", "exec", ns, program];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    fn both(&self) -> [(&str, &str); 2] {
        [
            (&self.server, &self.server_dev),
            (&self.client, &self.client_dev),
        ]
    }

    /// Back to a clean path: no rules, no qdiscs.
    fn clear(&self) {
        for (ns, dev) in self.both() {
            self.exec(ns, "iptables", &["-w", "-F"]);
            self.exec(ns, "iptables", &["-w", "-t", "mangle", "-F"]);
            let _ = Command::new("tc")
                .args(["-n", ns, "qdisc", "del", "dev", dev, "root"])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// An htb on each namespace's egress: everything in a fast class but what `filters`
    /// (u32 match arguments) or a CLASSIFY rule pick, which goes to class 1:10 of SLOW_RATE.
    fn shape(&self, filters: &[&[&str]]) {
        for (ns, dev) in self.both() {
            run(
                "tc",
                &[
                    "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default",
                    "1",
                ],
            );
            for (class, rate) in [("1:1", "10gbit"), ("1:10", SLOW_RATE)] {
                run(
                    "tc",
                    &[
                        "-n", ns, "class", "add", "dev", dev, "parent", "1:", "classid", class,
                        "htb", "rate", rate, "quantum", "60000",
                    ],
                );
            }
            for (prio, filter) in filters.iter().enumerate() {
                let prio = (prio + 1).to_string();
                let mut args = vec![
                    "-n", ns, "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip",
                    "prio", &prio, "u32",
                ];
                args.extend_from_slice(filter);
                args.extend_from_slice(&["flowid", "1:10"]);
                run("tc", &args);
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Runs the client in its namespace on its defaults (the database given, the flows kept
/// small so the whole test stays short) and returns its JSON.
fn client(ns: &Netns, bin: &str, db: &str) -> serde_json::Value {
    let start = Instant::now();
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.client, bin, "bttest", "client", SERVER_IP,
        ])
        .args(["--json", "--bytes", "2000000"])
        .args(["--set", &format!("database={db:?}")])
        .output()
        .expect("run the client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client failed: {stderr}\n{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    eprintln!(
        "client took {:.1} s; rates: {}",
        start.elapsed().as_secs_f64(),
        json["rates"]
    );
    json
}

fn flag(json: &serde_json::Value, section: &str, key: &str) -> bool {
    json[section][key]
        .as_bool()
        .unwrap_or_else(|| panic!("{section}.{key} missing: {json}"))
}

/// (blocked protocol, direction, port), (rate-limited upload, download, port).
fn verdict(json: &serde_json::Value) -> ([bool; 3], [bool; 3]) {
    (
        [
            flag(json, "blocked", "protocol"),
            flag(json, "blocked", "direction"),
            flag(json, "blocked", "port"),
        ],
        [
            flag(json, "rate_limited", "upload"),
            flag(json, "rate_limited", "download"),
            flag(json, "rate_limited", "port"),
        ],
    )
}

#[test]
fn verdicts_are_right_for_four_paths() {
    // Safety: geteuid has no preconditions and only reads the process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED bttest_netns: needs root to make network namespaces, iptables rules and \
             qdiscs (run scripts/test as root)"
        );
        return;
    }
    let started = Instant::now();
    let bin = env!("CARGO_BIN_EXE_swarmscan");
    let dir = common::test_dir("bttest-netns");
    let db = dir.path().join("bttest.sqlite").display().to_string();
    let ns = Netns::new();
    let mut server = ChildGuard::spawn(
        "bttest server",
        Command::new("ip")
            .args(["netns", "exec", &ns.server, bin, "bttest", "server"])
            .args(["--set", &format!("bttest.listen=\"{SERVER_IP}:6880\"")])
            .args(["--for", "10m"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    let mut first = String::new();
    BufReader::new(server.child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("bttest server: control"), "{first:?}");

    // 1. Nothing in the way.
    let json = client(&ns, bin, &db);
    assert_eq!(
        verdict(&json),
        ([false; 3], [false; 3]),
        "clean path: {json}"
    );
    let flows = json["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 24, "3 rounds of 8 flows by default");
    assert!(flows
        .iter()
        .all(|f| f["failed"] == false && f["bytes"] == 2_000_000));

    // 2. Resets for flows with the handshake string, in the server's namespace.
    for chain in ["INPUT", "OUTPUT"] {
        ns.exec(
            &ns.server,
            "iptables",
            &[
                "-w",
                "-A",
                chain,
                "-p",
                "tcp",
                "-m",
                "string",
                "--algo",
                "bm",
                "--string",
                "BitTorrent protocol",
                "-j",
                "REJECT",
                "--reject-with",
                "tcp-reset",
            ],
        );
    }
    let json = client(&ns, bin, &db);
    assert_eq!(
        verdict(&json),
        ([true, false, false], [false; 3]),
        "reset injection: {json}"
    );
    for f in json["flows"].as_array().unwrap() {
        let bittorrent = f["kind"] == "bittorrent";
        assert_eq!(f["failed"], bittorrent, "{f}");
        if bittorrent {
            // The client saw the reset, the server sent none.
            assert_eq!(f["client"]["rst_seen"], 1, "{f}");
            assert_eq!(f["server"]["rst_sent"], 0, "{f}");
        }
    }
    ns.clear();

    // 3. A rate limit on port 6881 only, both ways.
    ns.shape(&[
        &["match", "ip", "dport", "6881", "0xffff"],
        &["match", "ip", "sport", "6881", "0xffff"],
    ]);
    let json = client(&ns, bin, &db);
    assert_eq!(
        verdict(&json),
        ([false; 3], [false, false, true]),
        "port 6881 throttled: {json}"
    );
    assert!(flag(&json, "rate_limited", "bittorrent_on_bittorrent_port"));
    assert!(flag(&json, "rate_limited", "tcp_on_bittorrent_port"));
    ns.clear();

    // 4. BitTorrent content throttled on every port: the connection is marked when the
    // handshake string passes, and every later packet of a marked connection is put in the
    // slow class. (iptables CLASSIFY sets the packet's priority to the htb class: this
    // kernel has neither the `fw` classifier nor u32's `match mark`, which matches every
    // packet when it is missing.)
    for (name, _) in ns.both() {
        ns.exec(
            name,
            "iptables",
            &[
                "-w",
                "-t",
                "mangle",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "-m",
                "string",
                "--algo",
                "bm",
                "--string",
                "BitTorrent protocol",
                "-j",
                "CONNMARK",
                "--set-mark",
                "1",
            ],
        );
        ns.exec(
            name,
            "iptables",
            &[
                "-w",
                "-t",
                "mangle",
                "-A",
                "POSTROUTING",
                "-m",
                "connmark",
                "--mark",
                "1",
                "-j",
                "CLASSIFY",
                "--set-class",
                "1:10",
            ],
        );
    }
    ns.shape(&[]);
    let json = client(&ns, bin, &db);
    assert_eq!(
        verdict(&json),
        ([false; 3], [true, true, false]),
        "BitTorrent throttled: {json}"
    );
    ns.clear();

    // Every run is in the database, with its verdict, for `report --bttest`.
    let out = Command::new(bin)
        .args([
            "report",
            "--bttest",
            "--json",
            "--set",
            &format!("database={db:?}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4, "{report}");
    let stored: Vec<(bool, bool, bool)> = runs
        .iter()
        .map(|r| {
            (
                r["verdict"]["blocked"]["protocol"] == true,
                r["verdict"]["rate_limited"]["port"] == true,
                r["verdict"]["rate_limited"]["upload"] == true,
            )
        })
        .collect();
    assert_eq!(
        stored,
        [
            (false, false, false),
            (true, false, false),
            (false, true, false),
            (false, false, true)
        ]
    );
    let text = Command::new(bin)
        .args(["report", "--bttest", "--set", &format!("database={db:?}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("bttest runs: 4") && text.contains("by protocol"),
        "{text}"
    );
    eprintln!("{text}");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server died"
    );
    eprintln!("whole test: {:.1} s", started.elapsed().as_secs_f64());
}
