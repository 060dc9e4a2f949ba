//! The run that tests/swarm_defaults.rs and tests/utp_swarm.rs share: a tests/py/swarm_kinds.py
//! swarm planned, swarmscan started, the swarm let go and stopped, and the per-client table
//! that sets what swarmscan stored against what the clients said, with the checks both make.
//! Each test keeps its own plan, its swarmscan arguments and its own assertions.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use swarmscan::config::IpMode;
use swarmscan::store::anon::Anonymizer;

use super::now_ms;
use super::process::{read_to_string_lossy, wait_collecting, ChildGuard, StdoutLines};
use super::swarm::{
    read_until, secs_from, spawn_driver, stop_driver, swarmscan_peers, swarmscan_report, tail,
    DatabaseFrom,
};

/// A database value as text.
fn sql_text(v: rusqlite::types::ValueRef) -> String {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => "null".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Blob(b) => format!("<{} bytes>", b.len()),
    }
}

/// For a failure report: the database's own row of a peer (every column), or why there is none.
pub fn db_row(db: &Path, shown_ip: &str, port: u16) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT * FROM peers WHERE ip = ?1 AND port = ?2")
        .unwrap();
    let names: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
    let mut rows = stmt.query(rusqlite::params![shown_ip, port]).unwrap();
    let mut out = Vec::new();
    while let Some(row) = rows.next().unwrap() {
        let cols: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n}={}", sql_text(row.get_ref(i).unwrap())))
            .collect();
        out.push(cols.join(" "));
    }
    if out.is_empty() {
        "no row in peers".into()
    } else {
        out.join("\n")
    }
}

/// For a failure report: swarmscan's discovery requests per tracker (from the database).
pub fn discovery_summary(db: &Path, t0: i64) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT coalesce(tracker, 'source ' || source), count(*), min(at), max(at), sum(received), \
             sum(new), group_concat(DISTINCT error) FROM discovery_requests GROUP BY 1",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok(format!(
                "  {}: {} requests from {} to {}, {} addresses received ({} new), errors {:?}",
                sql_text(r.get_ref(0)?),
                r.get::<_, i64>(1)?,
                secs_from(r.get(2)?, t0),
                secs_from(r.get(3)?, t0),
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<String>>(6)?
            ))
        })
        .unwrap();
    rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("\n")
}

/// One client of a tests/py/swarm_kinds.py plan.
#[derive(Debug, Clone)]
pub struct Planned {
    pub name: String,
    pub kind: String,
    pub quits: bool,
    /// Every address it has (the seeder two).
    pub addrs: Vec<(IpAddr, u16)>,
}

/// What the clients of tests/py/swarm_kinds.py said (times in Unix ms).
#[derive(Default)]
pub struct Truth {
    pub torrent: Option<Json>,
    pub plan: Vec<Planned>,
    pub planned: bool,
    pub started: BTreeMap<String, i64>,
    pub crossed: BTreeMap<String, i64>,
    pub finished: BTreeMap<String, i64>,
    pub quit: BTreeMap<String, i64>,
    pub last_pieces: BTreeMap<String, u64>,
    /// Connections with swarmscan that ended, as the client saw them: (at, swarmscan's
    /// address, libtorrent's message).
    pub swarmscan_conns: BTreeMap<String, Vec<(i64, String, String)>>,
    pub ended: bool,
}

impl Truth {
    pub fn take(&mut self, line: &str) {
        let Ok(v) = serde_json::from_str::<Json>(line) else {
            return;
        };
        let name = v["name"].as_str().unwrap_or_default().to_string();
        let at = v["at"].as_i64().unwrap_or_default();
        match v["event"].as_str().unwrap_or_default() {
            "torrent" => self.torrent = Some(v),
            "plan" => {
                let addr = (
                    v["ip"].as_str().unwrap().parse().unwrap(),
                    v["port"].as_u64().unwrap() as u16,
                );
                match self.plan.iter_mut().find(|p| p.name == name) {
                    Some(p) => p.addrs.push(addr),
                    None => self.plan.push(Planned {
                        name,
                        kind: v["kind"].as_str().unwrap().to_string(),
                        quits: v["quits"].as_bool().unwrap(),
                        addrs: vec![addr],
                    }),
                }
            }
            "planned" => self.planned = true,
            "client" => {
                self.started.insert(name, v["started_at"].as_i64().unwrap());
            }
            "crossed" => {
                self.crossed.insert(name, at);
            }
            "finished" => {
                self.finished.insert(name, at);
            }
            "quit" => {
                self.quit.insert(name, at);
            }
            "progress" => {
                self.last_pieces
                    .insert(name, v["pieces"].as_u64().unwrap_or(0));
            }
            "swarmscan_conn" => self.swarmscan_conns.entry(name).or_default().push((
                at,
                v["peer"].as_str().unwrap_or_default().to_string(),
                v["what"].as_str().unwrap_or_default().to_string(),
            )),
            "end" => self.ended = true,
            _ => {}
        }
    }

    /// The leechers of the plan (every client but the seeder).
    pub fn leechers(&self) -> Vec<&Planned> {
        self.plan.iter().filter(|p| p.kind != "seeder").collect()
    }
}

/// A tests/py/swarm_kinds.py swarm against the bittorrent-tracker on 127.0.0.1 (UDP) and ::1
/// (HTTP): planned first (torrent, addresses), its clients started only by [`KindsSwarm::go`].
/// Its JSON lines are kept in swarm.jsonl, its stderr in driver.log.
pub struct KindsSwarm {
    driver: ChildGuard,
    lines: Option<StdoutLines>,
    jsonl: std::fs::File,
    pub log: PathBuf,
    pub truth: Truth,
    pub torrent_path: String,
    pub info_hash: String,
}

impl KindsSwarm {
    /// Starts the driver with `leechers` leechers and `args` of its own (e.g. `--kinds`), told
    /// to stop by itself after `max_secs`, and waits for its plan.
    pub fn plan(
        py: &str,
        dir: &Path,
        tracker_port: u16,
        leechers: usize,
        args: &[&str],
        max_secs: u64,
    ) -> KindsSwarm {
        let log = dir.join("driver.log");
        let workdir = dir.join("swarm");
        std::fs::create_dir_all(&workdir).unwrap();
        let (driver, lines) = spawn_driver(py, "swarm_kinds.py", &log, |command| {
            command
                .args([
                    "--tracker",
                    &format!("udp://127.0.0.1:{tracker_port}/announce"),
                    "--tracker",
                    &format!("http://[::1]:{tracker_port}/announce"),
                    "--leechers",
                    &leechers.to_string(),
                ])
                .args(args)
                .args(["--max-secs", &max_secs.to_string(), "--workdir"])
                .arg(&workdir)
        });
        let mut swarm = KindsSwarm {
            driver,
            lines: None,
            jsonl: std::fs::File::create(dir.join("swarm.jsonl")).unwrap(),
            log,
            truth: Truth::default(),
            torrent_path: String::new(),
            info_hash: String::new(),
        };
        read_until(
            &lines,
            Duration::from_secs(30),
            "swarm_kinds.py made no plan",
            &swarm.log.clone(),
            |line| {
                swarm.take(line);
                swarm.truth.planned
            },
        );
        swarm.lines = Some(lines);
        let torrent = swarm
            .truth
            .torrent
            .clone()
            .expect("torrent event before the plan");
        swarm.torrent_path = torrent["path"].as_str().unwrap().to_string();
        swarm.info_hash = torrent["info_hash"].as_str().unwrap().to_string();
        assert_eq!(swarm.truth.leechers().len(), leechers);
        swarm
    }

    /// Takes one line of the driver's (kept in swarm.jsonl too).
    fn take(&mut self, line: &str) {
        let _ = writeln!(self.jsonl, "{line}");
        self.truth.take(line);
    }

    /// Gives swarmscan (just started) a moment to listen and announce, then starts the
    /// clients.
    pub fn go(&mut self) {
        std::thread::sleep(Duration::from_millis(500));
        let stdin = self.driver.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Collects the ground truth while `scan` runs to its end (at most 30 s past `scan_secs`),
    /// calling `after_line` with the truth after every line; fails the test if swarmscan
    /// failed. Returns when the scan ended (Unix ms).
    pub fn collect_during(
        &mut self,
        scan: &mut Scan,
        scan_secs: u64,
        mut after_line: impl FnMut(&Truth),
    ) -> i64 {
        let lines = self.lines.take().expect("the swarm is still running");
        let status = wait_collecting(
            &mut scan.child,
            Duration::from_secs(scan_secs + 30),
            &lines,
            |line| {
                self.take(line);
                after_line(&self.truth);
            },
            || {},
            &scan.log,
        );
        self.lines = Some(lines);
        let scan_ended_ms = now_ms();
        assert!(
            status.success(),
            "swarmscan run failed ({status}): {}",
            read_to_string_lossy(&scan.log)
        );
        scan_ended_ms
    }

    /// Stops the swarm (see [`stop_driver`]), takes its last lines, and fails the test unless
    /// it ended cleanly.
    pub fn stop(&mut self) {
        let lines = self.lines.take().expect("the swarm is still running");
        let mut last_lines = Vec::new();
        let status = stop_driver(&mut self.driver, lines, Duration::from_secs(20), |line| {
            last_lines.push(line.to_string())
        });
        for line in last_lines {
            self.take(&line);
        }
        assert!(
            status.is_some_and(|s| s.success()) && self.truth.ended,
            "swarm_kinds.py did not end cleanly ({status:?}): {}",
            read_to_string_lossy(&self.log)
        );
    }

    /// Fails the test unless every leecher crossed and finished at least `margin_ms` before
    /// the scan ended (else the swarm was too slow on this machine for the test to say
    /// anything).
    pub fn assert_every_leecher_finished(&self, scan_ended_ms: i64, margin_ms: i64) {
        let truth = &self.truth;
        for p in truth.leechers() {
            let finished = truth.finished.get(&p.name).copied();
            assert!(
                finished.is_some_and(|t| t < scan_ended_ms - margin_ms)
                    && truth.crossed.contains_key(&p.name),
                "{} did not finish {} s before the scan ended (finished {finished:?}, scan ended \
                 {scan_ended_ms}, last pieces {:?}): the swarm is too slow on this machine\n{}",
                p.name,
                margin_ms / 1000,
                truth.last_pieces.get(&p.name),
                read_to_string_lossy(&self.log)
            );
        }
    }
}

/// `swarmscan run` as a user runs it, in `dir`: stdout to swarmscan.out, stderr to
/// swarmscan.log.
pub struct Scan {
    pub child: ChildGuard,
    pub db: PathBuf,
    pub log: PathBuf,
    /// Its stdout (e.g. the run summary of `run --json`).
    pub out: PathBuf,
    /// When it was started (Unix ms): the origin of the tables' times.
    pub started_ms: i64,
}

impl Scan {
    /// Starts `swarmscan ARGS` (which name `db` as the database), printing the command line
    /// after `label`.
    pub fn start(dir: &Path, label: &str, db: &Path, args: &[String]) -> Scan {
        let log = dir.join("swarmscan.log");
        let out = dir.join("swarmscan.out");
        eprintln!("{label}: swarmscan {}", args.join(" "));
        let started_ms = now_ms();
        let child = ChildGuard::spawn(
            "swarmscan run",
            Command::new(env!("CARGO_BIN_EXE_swarmscan"))
                .args(args)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(std::fs::File::create(&log).unwrap()),
        );
        Scan {
            child,
            db: db.to_path_buf(),
            log,
            out,
            started_ms,
        }
    }
}

/// What swarmscan stored, read with its own commands as a user would (`peers --json`,
/// `report --json`). Addresses are stored as keyed hashes (privacy.ip = "hmac", the
/// default), under the key swarmscan made next to the database.
pub struct Stored {
    pub peers: Vec<Json>,
    pub report: Json,
    pub anon: Anonymizer,
}

impl Stored {
    pub fn read(dir: &Path, db: &Path) -> Stored {
        let peers = swarmscan_peers(dir, DatabaseFrom::Path(db));
        let report = swarmscan_report(dir, DatabaseFrom::Path(db));
        let mut key_path = db.to_path_buf().into_os_string();
        key_path.push(".key");
        let anon = Anonymizer::from_key_file(IpMode::Hmac, Path::new(&key_path)).unwrap();
        Stored {
            peers,
            report,
            anon,
        }
    }

    /// The `peers` row of `ip`:`port` in the torrent `info_hash`.
    pub fn row_of(&self, ip: IpAddr, port: u16, info_hash: &str) -> Option<&Json> {
        let shown = self.anon.anonymize(ip).shown;
        self.peers
            .iter()
            .find(|r| r["ip"] == shown.as_str() && r["port"] == port && r["info_hash"] == info_hash)
    }
}

/// A confirmed leecher with a crossing time, handed to a test's own check.
pub struct ConfirmedLeecher<'a> {
    pub client: &'a Planned,
    /// Its address as shown in the table.
    pub addr: &'a str,
    /// "quit on finishing" or "kept seeding".
    pub how: &'a str,
    pub row: &'a Json,
    /// swarmscan's `crossed_at` minus the client's own crossing.
    pub crossing_delta_ms: i64,
    /// The client's own crossing (Unix ms).
    pub client_crossed: Option<i64>,
    /// How swarmscan saw the crossing (`crossing_seen`; "n/a" where it does not report it).
    pub seen: &'a str,
}

/// The per-client table and the checks every swarm_kinds.py test makes: each leecher is
/// confirmed with a crossing time, the seeder is not, nothing else is, and the report's total
/// agrees. A test adds its own failures ([`Verdict::failures`]) and summary lines, then
/// [`Verdict::finish`] prints the table, or fails the test with it and with the database rows,
/// discovery requests and log tail behind the failures.
pub struct Verdict<'a> {
    truth: &'a Truth,
    stored: &'a Stored,
    scan: &'a Scan,
    pub failures: Vec<String>,
    /// The database rows of the peers a failure is about.
    details: Vec<String>,
    table: Vec<String>,
    /// kind -> (finished, confirmed, seen -> count)
    per_kind: BTreeMap<String, (usize, usize, BTreeMap<String, usize>)>,
}

impl<'a> Verdict<'a> {
    /// Sets every planned client's row against the truth. `show_transport` adds the rows'
    /// transport to the table; `leecher_check` is the test's own check of a confirmed leecher
    /// that has a crossing time (a failure, or `None`).
    pub fn compare(
        swarm: &'a KindsSwarm,
        stored: &'a Stored,
        scan: &'a Scan,
        show_transport: bool,
        leecher_check: impl Fn(&ConfirmedLeecher) -> Option<String>,
    ) -> Verdict<'a> {
        let truth = &swarm.truth;
        let t0 = scan.started_ms;
        let mut failures = Vec::new();
        let mut details = Vec::new();
        let mut table = vec![format!(
            "  {:<6} {:<8} {:<22} {:<5} {:>8} {:>8} {:<9} {:>9} {:<9} {:>4}  sources",
            "kind",
            "client",
            "address",
            "quits",
            "crossed",
            "finished",
            "confirmed",
            "Δcrossing",
            "seen",
            "cont"
        )];
        let mut per_kind: BTreeMap<String, (usize, usize, BTreeMap<String, usize>)> =
            BTreeMap::new();
        let mut matched_rows: Vec<&Json> = Vec::new();
        for p in &truth.plan {
            for &(ip, port) in &p.addrs {
                let row = stored.row_of(ip, port, &swarm.info_hash);
                if let Some(r) = row {
                    matched_rows.push(r);
                }
                let confirmed = row.is_some_and(|r| r["confirmed"] == true);
                let crossed_at = row.and_then(|r| r["crossed_at"].as_i64());
                let seen = match row.map(|r| r.get("crossing_seen")) {
                    None => "not found".to_string(),
                    Some(None) => "n/a".to_string(),
                    Some(Some(Json::Null)) => "-".to_string(),
                    Some(Some(v)) => v.as_str().map_or_else(|| v.to_string(), str::to_string),
                };
                let truth_crossed = truth.crossed.get(&p.name).copied();
                let delta = crossed_at.zip(truth_crossed).map(|(a, b)| a - b);
                let addr = match ip {
                    IpAddr::V4(v4) => format!("{v4}:{port}"),
                    IpAddr::V6(v6) => format!("[{v6}]:{port}"),
                };
                let transport = |r: &Json| {
                    if show_transport {
                        format!("transport {}, ", r["transport"].as_str().unwrap_or("?"))
                    } else {
                        String::new()
                    }
                };
                table.push(format!(
                    "  {:<6} {:<8} {:<22} {:<5} {:>8} {:>8} {:<9} {:>9} {:<9} {:>4}  {}",
                    p.kind,
                    p.name,
                    addr,
                    if p.quits { "yes" } else { "no" },
                    secs_from(truth_crossed, t0),
                    secs_from(truth.finished.get(&p.name).copied(), t0),
                    if confirmed { "yes" } else { "no" },
                    delta.map_or("-".into(), |d| format!("{d:+}ms")),
                    seen,
                    row.map_or("-".into(), |r| r["contacts"].to_string()),
                    row.map_or("(not found)".into(), |r| format!(
                        "{} ({}first {}, progress {} → {}, last error {})",
                        r["sources"].as_str().unwrap_or("?"),
                        transport(r),
                        r["first_source"].as_str().unwrap_or("?"),
                        r["first_progress"],
                        r["last_progress"],
                        r["last_error"]
                    )),
                ));
                let failed_before = failures.len();
                if p.kind == "seeder" {
                    if confirmed {
                        failures.push(format!(
                            "the seeder ({addr}) is confirmed: {}",
                            row.unwrap()
                        ));
                    }
                } else {
                    let k = per_kind.entry(p.kind.clone()).or_default();
                    k.0 += 1;
                    if confirmed {
                        k.1 += 1;
                        *k.2.entry(seen.clone()).or_default() += 1;
                    }
                    let finished = secs_from(truth.finished.get(&p.name).copied(), t0);
                    let how = if p.quits {
                        "quit on finishing"
                    } else {
                        "kept seeding"
                    };
                    let failure = match (row, confirmed, delta) {
                        (None, _, _) => Some(format!(
                            "{} ({}, {addr}, {how}) finished at {finished} but swarmscan never \
                             learnt of it",
                            p.name, p.kind
                        )),
                        (Some(r), false, _) => Some(format!(
                            "{} ({}, {addr}, {how}) finished at {finished} but is not confirmed: \
                             {r}",
                            p.name, p.kind
                        )),
                        (Some(r), true, None) => Some(format!(
                            "{} ({}, {addr}) is confirmed without crossed_at: {r}",
                            p.name, p.kind
                        )),
                        (Some(r), true, Some(d)) => leecher_check(&ConfirmedLeecher {
                            client: p,
                            addr: &addr,
                            how,
                            row: r,
                            crossing_delta_ms: d,
                            client_crossed: truth_crossed,
                            seen: &seen,
                        }),
                    };
                    failures.extend(failure);
                }
                if failures.len() > failed_before {
                    let conns: Vec<String> = truth
                        .swarmscan_conns
                        .get(&p.name)
                        .into_iter()
                        .flatten()
                        .map(|(at, peer, what)| {
                            format!("{} {peer}: {what}", secs_from(Some(*at), t0))
                        })
                        .collect();
                    details.push(format!(
                        "  {} {addr} (client crossed at {:?}, finished at {:?}): {}\n    its \
                         connections with swarmscan that ended, as it saw them:\n      {}",
                        p.name,
                        truth_crossed,
                        truth.finished.get(&p.name),
                        db_row(&scan.db, &stored.anon.anonymize(ip).shown, port),
                        conns.join("\n      ")
                    ));
                }
            }
        }
        // Nothing else is confirmed: no address that is not one of the leechers (e.g.
        // swarmscan's own announced address, or a client under a wrong port).
        for r in stored.peers.iter().filter(|r| r["confirmed"] == true) {
            if !matched_rows.iter().any(|m| std::ptr::eq(*m, r)) {
                // Clients with this address (every IPv6 client is ::1).
                let same_ip: Vec<&str> = truth
                    .plan
                    .iter()
                    .filter(|p| {
                        p.addrs.iter().any(|(ip, _)| {
                            stored.anon.anonymize(*ip).shown == r["ip"].as_str().unwrap_or("")
                        })
                    })
                    .map(|p| p.name.as_str())
                    .collect();
                if same_ip.is_empty() {
                    failures.push(format!(
                        "an address that is none of the clients' is confirmed: {r}"
                    ));
                } else {
                    failures.push(format!(
                        "a peer at the address of {same_ip:?} but none of their listen ports is \
                         confirmed: {r}"
                    ));
                }
            }
        }
        Verdict {
            truth,
            stored,
            scan,
            failures,
            details,
            table,
            per_kind,
        }
    }

    /// Checks the report's total, then prints the summary (headed by `label`, with `extra_lines`
    /// after the table) or fails the test with it.
    pub fn finish(mut self, label: &str, test_started: Instant, extra_lines: Vec<String>) {
        let (truth, stored, scan) = (self.truth, self.stored, self.scan);
        let report = &stored.report;
        let expected = truth.leechers().len() as i64;
        let confirmed_rows = stored
            .peers
            .iter()
            .filter(|r| r["confirmed"] == true)
            .count() as i64;
        if report["total"]["confirmed"].as_i64() != Some(confirmed_rows) {
            self.failures.push(format!(
                "report: total confirmed {} but {confirmed_rows} confirmed rows",
                report["total"]["confirmed"]
            ));
        }
        if report["total"]["confirmed"].as_i64() != Some(expected) {
            self.failures.push(format!(
                "report: total confirmed {} (expected {expected})",
                report["total"]["confirmed"]
            ));
        }

        let crossings_seen = report["torrents"]
            .as_array()
            .and_then(|t| t.first())
            .and_then(|t| t.get("crossings_seen"))
            .map_or("n/a".to_string(), |v| v.to_string());
        let mut summary = vec![format!(
            "{label}: {} leechers finished, {} peers known to swarmscan, report crossings_seen \
             {crossings_seen}; times relative to the start of the scan; test took {:.1} s",
            truth.finished.len(),
            stored.peers.len(),
            test_started.elapsed().as_secs_f64()
        )];
        summary.append(&mut self.table);
        summary.extend(extra_lines);
        summary.push("  per kind: confirmed/finished, crossings seen".into());
        for (kind, (finished, confirmed, seen)) in &self.per_kind {
            let seen: Vec<String> = seen.iter().map(|(s, n)| format!("{s} {n}")).collect();
            summary.push(format!(
                "    {kind:<6} {confirmed}/{finished}  {}",
                seen.join(", ")
            ));
        }
        // Rows of portless incoming connections (IPv6 libtorrent): which listen-port row
        // counts their download.
        for r in stored.peers.iter().filter(|r| r["portless"] == true) {
            summary.push(format!(
                "  portless incoming row: port {} first {} last {} confirmed {} counted on port {}",
                r["port"],
                r["first_progress"],
                r["last_progress"],
                r["confirmed"],
                r["duplicate_of_port"]
            ));
        }
        let summary = summary.join("\n");
        if self.failures.is_empty() {
            eprintln!("{summary}");
        } else {
            panic!(
                "{} failure(s):\n  {}\n{summary}\ndatabase rows of those peers (times in Unix ms; \
                 the scan started at {}):\n{}\nswarmscan's discovery requests:\n{}\n\
                 last lines of the swarmscan log ({}):\n{}",
                self.failures.len(),
                self.failures.join("\n  "),
                scan.started_ms,
                self.details.join("\n"),
                discovery_summary(&scan.db, scan.started_ms),
                scan.log.display(),
                tail(&read_to_string_lossy(&scan.log), 40)
            );
        }
    }
}
