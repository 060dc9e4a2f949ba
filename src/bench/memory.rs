//! `swarmscan bench memory`: does the 1 GB profile (`tuning/1gb-vm.toml`) hold its memory
//! bound under a full load?
//!
//! `swarmscan bench memory --json`
//!
//! Every phase is a real `swarmscan run` (a child process, so its peak RSS is its own VmHWM)
//! on the profile, with only what a bench must change overridden: a temporary database,
//! loopback listener and metrics port, `privacy.ip = "full"` (so peers are resumed from the
//! database with their addresses), no DHT, and probe timeouts long enough that a probe stays
//! in flight for the whole phase. The load is put into the database before each run, as rows
//! of the `peers` table that the scan resumes; every address is on 127.0.0.0/8:
//!
//! - known peers: `127.64.0.0/10` upwards at a port nobody listens on, next visit far in the
//!   future (held in the peer tables, never probed);
//! - in flight: fake peers (a `bench fake-swarm` child) that accept and never answer;
//! - watched: fake peers (a second child) that answer with about half of the pieces and send
//!   a `have` every 5 s, so the scan keeps them open as watched connections;
//! - writer backlog: peers at the dead port due once the connections are up; each refused
//!   connect is an outcome record while the writer is stalled (`SWARMSCAN_DEBUG_STALL=writer`,
//!   debug builds only; a release build measures the queue the load makes by itself).
//!
//! Phases: baseline (the torrent only), each load alone, then all of them at once. Costs per
//! item are (phase peak − baseline peak) / items reached, items read from the scan's own
//! `/metrics` (peers known, probes in flight, watched connections, writer queue). The known
//! phase is a resume of that many peers: besides its peak per peer, the RSS near its end
//! less the baseline's, per peer, is what the peers cost once the start is over (the
//! difference is the start's transient).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{print_report, round2, spawn_fake_swarm};
use crate::limits;

/// The profile measured, as shipped.
const PROFILE: &str = include_str!("../../tuning/1gb-vm.toml");
/// The unit's memory limits, as shipped.
const UNIT: &str = include_str!("../../systemd/swarmscan.service");
/// Pieces of the benchmark torrent (= the fake swarm's bitfield size).
const PIECES: u32 = 1000;

/// Options of `bench memory`.
#[derive(clap::Args, Debug, Clone)]
pub struct MemoryArgs {
    /// Known peers held in the peer tables (never probed during the run).
    #[arg(long, default_value_t = 1_000_000, value_parser = limits::count::<u32>(0, 50_000_000))]
    known: u32,
    /// Probes held in flight (fake peers that never answer). The profile's is 8000.
    #[arg(long, default_value_t = 8000, value_parser = limits::count::<u32>(0, super::MAX_FAKE_PEERS))]
    in_flight: u32,
    /// Watched connections (fake peers below the threshold). The profile allows 16 000; in
    /// flight + watched + peer.max_incoming must stay under the descriptor limit.
    #[arg(long, default_value_t = 9_800, value_parser = limits::count::<u32>(0, super::MAX_FAKE_PEERS))]
    watched: u32,
    /// Peers whose refused connects make the writer backlog.
    #[arg(long, default_value_t = 200_000, value_parser = limits::count::<u32>(0, 50_000_000))]
    backlog_peers: u32,
    /// Seconds each phase runs after its connections are up (up to 3600).
    #[arg(long, default_value_t = 10.0, value_parser = limits::secs(1.0, 3600.0))]
    hold_secs: f64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// What one phase reached.
#[derive(Debug, Default, Clone, Copy)]
struct Peak {
    rss_max: u64,
    hwm: u64,
    known_max: u64,
    in_flight_max: u64,
    watched_max: u64,
    writer_queue_max: u64,
    /// VmRSS at the last sample with an empty writer queue, and at the fullest queue: their
    /// difference over the queue is the memory per queued record.
    rss_queue_empty: u64,
    rss_queue_max: u64,
    /// VmRSS at the last sample before the run's time is up (the load still held, the
    /// transients of the start over, the shutdown not begun).
    rss_last: u64,
}

impl Peak {
    fn peak(&self) -> u64 {
        self.rss_max.max(self.hwm)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "peak_rss_bytes": self.peak(),
            "rss_at_end_bytes": self.rss_last,
            "peers_known_max": self.known_max,
            "in_flight_max": self.in_flight_max,
            "watched_max": self.watched_max,
            "writer_queue_max": self.writer_queue_max,
        })
    }
}

/// The load of one phase, as rows of the `peers` table.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    known: u32,
    in_flight: u32,
    watched: u32,
    backlog: u32,
    stall_writer: bool,
}

struct Bench<'a> {
    args: &'a MemoryArgs,
    /// Removed (with the database) when the bench ends.
    _dir: tempfile::TempDir,
    db: PathBuf,
    torrent: PathBuf,
    config: PathBuf,
    silent_port: u16,
    watch_port: u16,
    dead_port: u16,
    /// The profile's `peer.connects_per_sec`.
    connects_per_sec: u64,
}

/// Runs `bench memory`.
pub fn run(args: &MemoryArgs) -> std::io::Result<()> {
    let memory_high = unit_limit("MemoryHigh")?;
    let memory_max = unit_limit("MemoryMax")?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("1gb-vm.toml");
    std::fs::write(&config, PROFILE)?;
    let profile = crate::config::Config::load(Some(&config), &[])
        .map_err(|e| std::io::Error::other(format!("tuning/1gb-vm.toml: {e}")))?;
    let fd_limit = nofile_hard_limit();
    // As the scan counts them: in flight + watched + incoming (the profile's) + a margin.
    let needed = u64::from(args.in_flight)
        + u64::from(args.watched)
        + u64::from(profile.peer.max_incoming)
        + 100;
    if needed > fd_limit {
        return Err(std::io::Error::other(format!(
            "--in-flight {} + --watched {} + peer.max_incoming {} needs about {needed} \
             descriptors; this host's hard limit is {fd_limit} (size them under it; \
             tuning/README.md says how to extrapolate)",
            args.in_flight, args.watched, profile.peer.max_incoming
        )));
    }
    let max_secs = (args.hold_secs * 8.0 + 600.0) as u64;
    // One fake swarm holds the in-flight probes (answers after 10 minutes), one the watched.
    let silent = spawn_fake_swarm(&swarm_args(600_000, 0, max_secs))?;
    let watching = spawn_fake_swarm(&swarm_args(0, 5000, max_secs))?;
    let torrent = dir.path().join("bench.torrent");
    std::fs::write(
        &torrent,
        crate::sim::make_torrent("membench", PIECES, 256 * 1024, &[], 7),
    )?;
    let bench = Bench {
        args,
        db: dir.path().join("scan.sqlite"),
        config,
        connects_per_sec: u64::from(profile.peer.connects_per_sec).max(1),
        torrent,
        silent_port: silent.port,
        watch_port: watching.port,
        dead_port: free_port()?,
        _dir: dir,
    };

    let baseline = bench.phase(Load::default())?;
    let known = bench.phase(Load {
        known: args.known,
        ..Load::default()
    })?;
    let in_flight = bench.phase(Load {
        in_flight: args.in_flight,
        ..Load::default()
    })?;
    let watched = bench.phase(Load {
        watched: args.watched,
        ..Load::default()
    })?;
    let stall = cfg!(debug_assertions);
    let backlog = bench.phase(Load {
        backlog: args.backlog_peers,
        stall_writer: stall,
        ..Load::default()
    })?;
    // All slots taken by peers that never answer would leave none for the watched peers and
    // the backlog's connects to pass through: an eighth (at most 1000) stays free for them.
    let full_silent = args.in_flight - (args.in_flight / 8).clamp(1, 1000).min(args.in_flight);
    let full = bench.phase(Load {
        known: args.known,
        in_flight: full_silent,
        watched: args.watched,
        backlog: args.backlog_peers,
        stall_writer: stall,
    })?;
    drop(silent);
    drop(watching);

    let base = baseline.peak() as f64;
    let per = |p: &Peak, n: u64| -> Option<f64> {
        (n > 0).then(|| round2((p.peak() as f64 - base).max(0.0) / n as f64))
    };
    let per_known = per(&known, known.known_max);
    // The known phase is the resume of `--known` peers: its peak over what it holds once the
    // start is over is the start's transient.
    let per_known_held = (known.known_max > 0).then(|| {
        round2(known.rss_last.saturating_sub(baseline.rss_last) as f64 / known.known_max as f64)
    });
    let per_in_flight = per(&in_flight, in_flight.in_flight_max);
    let per_watched = per(&watched, watched.watched_max);
    let per_record = (backlog.writer_queue_max > 0 && backlog.rss_queue_empty > 0).then(|| {
        round2(
            backlog
                .rss_queue_max
                .saturating_sub(backlog.rss_queue_empty) as f64
                / backlog.writer_queue_max as f64,
        )
    });
    let out = serde_json::json!({
        "bench": "memory",
        "profile": "tuning/1gb-vm.toml",
        "memory_high_bytes": memory_high,
        "memory_max_bytes": memory_max,
        "peak_rss_bytes": full.peak(),
        "ratio_peak_to_memory_high": round3(full.peak() as f64 / memory_high as f64),
        "ratio_peak_to_memory_max": round3(full.peak() as f64 / memory_max as f64),
        "bytes_per_known_peer": per_known,
        "bytes_per_known_peer_held": per_known_held,
        "bytes_per_in_flight_probe": per_in_flight,
        "bytes_per_watched_connection": per_watched,
        "bytes_per_queued_record": per_record,
        "writer_stalled": stall,
        "fd_hard_limit": fd_limit,
        "requested": {
            "known": args.known, "in_flight": args.in_flight, "watched": args.watched,
            "backlog_peers": args.backlog_peers,
        },
        "full_silent_peers": full_silent,
        "phases": {
            "baseline": baseline.json(), "known": known.json(), "in_flight": in_flight.json(),
            "watched": watched.json(), "backlog": backlog.json(), "full": full.json(),
        },
        "note": "RSS of the scan process only; kernel socket memory (bench/README.md: about \
                 4-5 KB per TCP socket) also counts against the unit's MemoryHigh",
    });
    print_report(&out, args.json);
    Ok(())
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn swarm_args(delay_ms: u64, have_every_ms: u64, max_secs: u64) -> Vec<String> {
    [
        "--threads",
        "1",
        "--delay-ms",
        &delay_ms.to_string(),
        "--have-every-ms",
        &have_every_ms.to_string(),
        "--pieces",
        &PIECES.to_string(),
        "--max-seconds",
        &max_secs.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

impl Bench<'_> {
    /// Seconds for `n` connects at the profile's connect rate, plus slack.
    fn ramp_secs(&self, connections: u32) -> f64 {
        f64::from(connections) / self.connects_per_sec as f64 + 3.0
    }

    fn phase(&self, load: Load) -> std::io::Result<Peak> {
        let ramp = self.ramp_secs(load.in_flight + load.watched);
        self.fill(&load, ramp)?;
        let metrics_port = free_port()?;
        let run_secs = ramp + self.args.hold_secs;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .args(self.overrides(metrics_port))
            .arg("--for")
            .arg(format!("{}s", run_secs.ceil() as u64))
            .arg(&self.torrent)
            .env("SWARMSCAN_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if load.stall_writer {
            // The writer stops once the connections are up; records then pile up.
            cmd.env("SWARMSCAN_DEBUG_STALL", format!("writer:{ramp:.1}"));
        }
        let mut child = ChildGuard(cmd.spawn()?);
        let pid = child.0.id();
        let mut peak = Peak::default();
        let until = Instant::now() + Duration::from_secs_f64(run_secs + 5.0);
        let stall_end = Instant::now() + Duration::from_secs_f64(run_secs);
        loop {
            if let Ok(Some(status)) = child.0.try_wait() {
                if !status.success() {
                    let mut err = String::new();
                    if let Some(mut e) = child.0.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    return Err(std::io::Error::other(format!(
                        "swarmscan run ended with {status}: {}",
                        err.trim()
                    )));
                }
                break;
            }
            if let Some(status) = read_status(pid) {
                peak.rss_max = peak.rss_max.max(status.0);
                if Instant::now() + Duration::from_secs(1) < stall_end {
                    peak.rss_last = status.0;
                }
                peak.hwm = peak.hwm.max(status.1);
            }
            let rss_now = read_status(pid).map_or(0, |s| s.0);
            if let Some(m) = scrape(metrics_port) {
                if m.writer_queue == 0 {
                    peak.rss_queue_empty = rss_now;
                } else if m.writer_queue > peak.writer_queue_max {
                    peak.rss_queue_max = rss_now;
                }
                peak.known_max = peak.known_max.max(m.known);
                peak.in_flight_max = peak.in_flight_max.max(m.in_flight);
                peak.watched_max = peak.watched_max.max(m.watched);
                peak.writer_queue_max = peak.writer_queue_max.max(m.writer_queue);
            }
            // A stalled writer never lets the scan finish: the phase ends at its time.
            if (load.stall_writer && Instant::now() >= stall_end) || Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(peak)
    }

    fn overrides(&self, metrics_port: u16) -> Vec<String> {
        let mut out = Vec::new();
        for kv in [
            format!("database={:?}", self.db.display().to_string()),
            r#"net.listen=["127.0.0.1:0"]"#.to_string(),
            format!(r#"metrics.listen="127.0.0.1:{metrics_port}""#),
            r#"privacy.ip="full""#.to_string(),
            "dht.enabled=false".to_string(),
            r#"net.utp="off""#.to_string(),
            // A probe stays in flight for the whole phase (its memory does not depend on how
            // long it lives).
            "peer.quiet_timeout_ms=3600000".to_string(),
            "peer.max_duration_ms=3600000".to_string(),
            format!("peer.max_in_flight={}", self.args.in_flight.max(16)),
            format!("peer.max_watched={}", self.args.watched.max(1)),
        ] {
            out.push("--set".to_string());
            out.push(kv);
        }
        out
    }

    /// Puts the phase's load into a fresh copy of the database the baseline run created (the
    /// torrent registered, no peer): the peers table holds exactly `load`.
    fn fill(&self, load: &Load, ramp: f64) -> std::io::Result<()> {
        let template = self.db.with_extension("template");
        if !template.exists() {
            if !self.db.exists() {
                return Ok(()); // the baseline run creates it and registers the torrent
            }
            std::fs::copy(&self.db, &template)?;
        }
        for suffix in ["-wal", "-shm"] {
            let mut side = self.db.clone().into_os_string();
            side.push(suffix);
            let _ = std::fs::remove_file(side);
        }
        std::fs::copy(&template, &self.db)?;
        let err = |e: rusqlite::Error| std::io::Error::other(format!("bench database: {e}"));
        let mut conn = rusqlite::Connection::open(&self.db).map_err(err)?;
        let tx = conn.transaction().map_err(err)?;
        let torrent: i64 = tx
            .query_row("SELECT id FROM torrents ORDER BY id LIMIT 1", [], |r| {
                r.get(0)
            })
            .map_err(err)?;
        let now_ms = crate::inputs::now_unix_ms();
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO peers (torrent_id, ip_key, ip, port, ipv6, sources, first_source,
                                        first_seen_at, contacts, next_visit_at)
                     VALUES (?1, ?2, ?2, ?3, 0, 1, 1, ?4, ?5, ?6)",
                )
                .map_err(err)?;
            let mut add = |ip: u32, port: u16, contacts: i64, next: Option<i64>| {
                let ip = std::net::Ipv4Addr::from(ip).to_string();
                insert
                    .execute(rusqlite::params![torrent, ip, port, now_ms, contacts, next])
                    .map(|_| ())
            };
            let day = 86_400_000;
            for i in 0..load.known {
                add(0x7F40_0000 + i, self.dead_port, 1, Some(now_ms + day)).map_err(err)?;
            }
            for i in 0..load.in_flight {
                add(0x7F0A_0001 + i, self.silent_port, 0, None).map_err(err)?;
            }
            for i in 0..load.watched {
                add(0x7F0A_0001 + i, self.watch_port, 0, None).map_err(err)?;
            }
            // Due once the connections above are up, so they do not compete for connects.
            let due = now_ms + (ramp * 1000.0) as i64;
            for i in 0..load.backlog {
                add(0x7F20_0000 + i, self.dead_port, 0, Some(due)).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }
}

/// Kills the scan child (ours) if a phase ends early or with an error.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// `MemoryHigh=700M` of the unit, in bytes.
fn unit_limit(key: &str) -> std::io::Result<u64> {
    let value = UNIT
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .ok_or_else(|| std::io::Error::other(format!("{key} missing from the unit")))?;
    let (digits, unit) = value.trim().split_at(value.trim().len() - 1);
    let mult = match unit {
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => {
            return Err(std::io::Error::other(format!(
                "{key}={value}: unknown unit"
            )))
        }
    };
    digits
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|e| std::io::Error::other(format!("{key}={value}: {e}")))
}

fn nofile_hard_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Safety: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_max
    } else {
        1024
    }
}

/// A loopback port free at this moment (nothing listens on it once we close it).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// (VmRSS, VmHWM) of a process, bytes.
fn read_status(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Some((field("VmRSS:"), field("VmHWM:")))
}

struct Gauges {
    known: u64,
    in_flight: u64,
    watched: u64,
    writer_queue: u64,
}

/// The gauges of the scan's `/metrics`, or None while it is not serving yet.
fn scrape(port: u16) -> Option<Gauges> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(Gauges {
        known: sum_series(&body, "swarmscan_peers_known"),
        in_flight: sum_series(&body, "swarmscan_probes_in_flight"),
        watched: sum_series(&body, "swarmscan_watched_connections"),
        writer_queue: sum_series(&body, "swarmscan_writer_queue_records"),
    })
}

/// Sum of every sample of one metric family in a text exposition.
fn sum_series(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        .max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_units_limits_are_read_in_bytes() {
        assert_eq!(unit_limit("MemoryHigh").unwrap(), 700 << 20);
        assert_eq!(unit_limit("MemoryMax").unwrap(), 850 << 20);
        assert!(unit_limit("MemoryLow").is_err());
    }

    #[test]
    fn series_are_summed_over_labels_and_other_families_ignored() {
        let text = "# HELP swarmscan_probes_in_flight x\n\
                    swarmscan_probes_in_flight{worker=\"0\"} 3\n\
                    swarmscan_probes_in_flight{worker=\"1\"} 4\n\
                    swarmscan_probes_in_flight_total 99\n";
        assert_eq!(sum_series(text, "swarmscan_probes_in_flight"), 7);
    }
}
