//! bttest runs in the database (tables `bttest_runs`, `bttest_flows`, migration v9), and
//! their summary for `swarmscan report --bttest`.
//!
//! A run is one `bttest client` invocation, written in one transaction when it ends (a few
//! dozen rows, once a day in a long study: no need for the scan's writer thread).

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::verdict::{FlowResult, Verdict};
use crate::store::{Store, StoreError};

/// A finished (or broken-off) run, as the client saw it.
pub struct RunRecord<'a> {
    /// The test's random id.
    pub test_id: u64,
    /// The server as given on the command line.
    pub server: &'a str,
    /// The address connected to.
    pub server_addr: String,
    /// The test ports: BitTorrent port, other port.
    pub ports: [u16; 2],
    /// Unix ms.
    pub started_at: i64,
    /// Unix ms.
    pub ended_at: i64,
    /// Rounds asked for.
    pub repeats: u32,
    /// Payload bytes per flow asked for.
    pub flow_bytes: u64,
    /// Why the run broke off (`None`: complete).
    pub error: Option<String>,
    /// The verdicts.
    pub verdict: &'a Verdict,
    /// Every flow run.
    pub flows: &'a [FlowResult],
}

/// Stores one run; returns its id.
pub fn save_run(store: &Store, run: &RunRecord<'_>) -> Result<i64, StoreError> {
    let conn = store.connection();
    let tx = conn.unchecked_transaction().map_err(|e| store.err(e))?;
    let v = run.verdict;
    tx.execute(
        "INSERT INTO bttest_runs (test_id, server, server_addr, bittorrent_port, other_port,
            started_at, ended_at, version, repeats, flow_bytes, complete, error,
            blocked_protocol, blocked_direction, blocked_port, blocked_any,
            rate_limited_upload, rate_limited_download, rate_limited_port, verdict)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
            ?18, ?19, ?20)",
        params![
            format!("{:016x}", run.test_id),
            run.server,
            run.server_addr,
            run.ports[0],
            run.ports[1],
            run.started_at,
            run.ended_at,
            env!("CARGO_PKG_VERSION"),
            run.repeats,
            run.flow_bytes as i64,
            run.error.is_none(),
            run.error,
            v.blocked.protocol,
            v.blocked.direction,
            v.blocked.port,
            v.blocked.any,
            v.rate_limited.upload,
            v.rate_limited.download,
            v.rate_limited.port,
            serde_json::to_string(v).unwrap_or_default(),
        ],
    )
    .map_err(|e| store.err(e))?;
    let run_id = tx.last_insert_rowid();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO bttest_flows (run_id, idx, repeat, kind, direction, port, bytes,
                    duration_ms, rate, failed, client_outcome, client_rst_sent, client_rst_seen,
                    client_detail, server_outcome, server_rst_sent, server_rst_seen, server_detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                    ?17, ?18)",
            )
            .map_err(|e| store.err(e))?;
        for f in run.flows {
            let s = f.server.as_ref();
            insert
                .execute(params![
                    run_id,
                    f.index,
                    f.repeat,
                    f.kind,
                    f.direction,
                    f.port,
                    f.bytes as i64,
                    f.duration_ms,
                    f.rate_bytes_per_sec,
                    f.failed,
                    f.client.outcome,
                    f.client.rst_sent,
                    f.client.rst_seen,
                    f.client.detail,
                    s.map(|s| s.outcome),
                    s.map(|s| s.rst_sent),
                    s.map(|s| s.rst_seen),
                    s.map(|s| s.detail.clone()),
                ])
                .map_err(|e| store.err(e))?;
        }
    }
    tx.commit().map_err(|e| store.err(e))?;
    Ok(run_id)
}

/// One stored run, for `report --bttest`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Row id.
    pub id: i64,
    /// The test's id.
    pub test_id: String,
    /// The server as given.
    pub server: String,
    /// Unix ms.
    pub started_at: i64,
    /// Rounds.
    pub repeats: u32,
    /// Payload bytes per flow.
    pub flow_bytes: u64,
    /// Whether every flow ran.
    pub complete: bool,
    /// Why not.
    pub error: Option<String>,
    /// Flows stored.
    pub flows: u32,
    /// Flows that failed (reset that neither end caused).
    pub failed_flows: u32,
    /// The verdicts, rates included.
    pub verdict: serde_json::Value,
}

/// Every stored run, oldest first.
pub fn runs(store: &Store) -> Result<Vec<RunSummary>, StoreError> {
    let conn = store.connection();
    let mut q = conn
        .prepare(
            "SELECT r.id, r.test_id, r.server, r.started_at, r.repeats, r.flow_bytes, r.complete,
                    r.error, r.verdict,
                    (SELECT COUNT(*) FROM bttest_flows f WHERE f.run_id = r.id),
                    (SELECT COUNT(*) FROM bttest_flows f WHERE f.run_id = r.id AND f.failed)
             FROM bttest_runs r ORDER BY r.started_at, r.id",
        )
        .map_err(|e| store.err(e))?;
    let rows = q
        .query_map([], |row| {
            let verdict: String = row.get(8)?;
            Ok(RunSummary {
                id: row.get(0)?,
                test_id: row.get(1)?,
                server: row.get(2)?,
                started_at: row.get(3)?,
                repeats: row.get(4)?,
                flow_bytes: row.get::<_, i64>(5)? as u64,
                complete: row.get(6)?,
                error: row.get(7)?,
                verdict: serde_json::from_str(&verdict).unwrap_or(serde_json::Value::Null),
                flows: row.get(9)?,
                failed_flows: row.get(10)?,
            })
        })
        .map_err(|e| store.err(e))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(|e| store.err(e))
}

/// Whether the database has any bttest run (a database from before v9 has none).
pub fn has_runs(store: &Store) -> Result<bool, StoreError> {
    store
        .connection()
        .query_row("SELECT 1 FROM bttest_runs LIMIT 1", [], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
        .map_err(|e| store.err(e))
}

/// The median rate of one group of a stored verdict, bytes/s.
fn median_of(
    verdict: &serde_json::Value,
    kind: &str,
    direction: &str,
    bt_port: bool,
) -> Option<f64> {
    let rates = verdict.get("rates")?.as_array()?;
    let ports: Vec<u64> = rates
        .iter()
        .filter_map(|g| g.get("port")?.as_u64())
        .collect();
    let first_port = *ports.first()?;
    rates
        .iter()
        .find(|g| {
            g.get("kind").and_then(|k| k.as_str()) == Some(kind)
                && g.get("direction").and_then(|d| d.as_str()) == Some(direction)
                && (g.get("port").and_then(|p| p.as_u64()) == Some(first_port)) == bt_port
        })?
        .get("median")?
        .as_f64()
}

/// `report --bttest` as text: one line per run.
pub fn render(runs: &[RunSummary]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if runs.is_empty() {
        out.push_str("No bttest runs in this database (run `swarmscan bttest client HOST`).\n");
        return out;
    }
    let _ = writeln!(
        out,
        "bttest runs: {} (rates: median KB/s, BitTorrent/plain TCP, on the BitTorrent port | the other port)",
        runs.len()
    );
    let _ = writeln!(
        out,
        "{:<20} {:<22} {:>5} {:<28} {:<36} {:>19} {:>19}",
        "started (UTC)", "server", "fail", "blocked", "rate-limited", "upload", "download"
    );
    for r in runs {
        let v = &r.verdict;
        let flag = |path: [&str; 2]| {
            v.get(path[0])
                .and_then(|x| x.get(path[1]))
                .and_then(|x| x.as_bool())
                .unwrap_or(false)
        };
        let mut blocked: Vec<&str> = Vec::new();
        for base in ["protocol", "direction", "port"] {
            if flag(["blocked", base]) {
                blocked.push(base);
            }
        }
        let blocked = if !blocked.is_empty() {
            format!("by {}", blocked.join("+"))
        } else if flag(["blocked", "any"]) {
            "resets, no pattern".into()
        } else {
            "no".into()
        };
        let mut limited: Vec<&str> = Vec::new();
        for (key, name) in [
            ("upload", "upload"),
            ("download", "download"),
            ("bittorrent_on_bittorrent_port", "BT on BT port"),
            ("tcp_on_bittorrent_port", "TCP on BT port"),
        ] {
            if flag(["rate_limited", key]) {
                limited.push(name);
            }
        }
        let limited = if limited.is_empty() {
            "no".to_string()
        } else {
            limited.join(", ")
        };
        let kb = |x: Option<f64>| x.map_or("-".into(), |x| format!("{:.0}", x / 1000.0));
        let rates = |direction: &str| {
            format!(
                "{}/{} | {}/{}",
                kb(median_of(v, "bittorrent", direction, true)),
                kb(median_of(v, "tcp", direction, true)),
                kb(median_of(v, "bittorrent", direction, false)),
                kb(median_of(v, "tcp", direction, false)),
            )
        };
        let mut server = r.server.clone();
        if !r.complete {
            server.push_str(" (broken off)");
        }
        let _ = writeln!(
            out,
            "{:<20} {:<22} {:>5} {:<28} {:<36} {:>19} {:>19}",
            crate::cli::report_cmd::iso_time(Some(r.started_at)),
            server,
            format!("{}/{}", r.failed_flows, r.flows),
            blocked,
            limited,
            rates("upload"),
            rates("download"),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bttest::verdict::{decide, FlowResult};
    use crate::proto::bttest::{FlowOutcome, FlowReport};

    #[test]
    fn runs_round_trip_and_the_report_shows_verdicts_and_rates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("b.sqlite")).unwrap();
        assert!(!has_runs(&store).unwrap());
        assert!(render(&runs(&store).unwrap()).contains("No bttest runs"));
        let ports = [6881, 4711];
        let flows: Vec<FlowResult> = crate::bttest::schedule(ports, 1)
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                let bittorrent = spec.kind == crate::proto::bttest::FlowKind::BitTorrent;
                let report = |seen| FlowReport {
                    index: i as u16,
                    payload_received: 1_000_000,
                    payload_sent: 1_000_000,
                    duration_us: if bittorrent { 1_000_000 } else { 100_000 },
                    rst_sent: 0,
                    rst_seen: seen,
                    outcome: FlowOutcome::Complete,
                    detail: String::new(),
                };
                FlowResult::new(i as u16, spec, ports[0], &report(0), Some(&report(0)))
            })
            .collect();
        let verdict = decide(&flows, ports);
        assert!(verdict.rate_limited.upload && verdict.rate_limited.download);
        let id = save_run(
            &store,
            &RunRecord {
                test_id: 0xabc,
                server: "example.org",
                server_addr: "192.0.2.1:6880".into(),
                ports,
                started_at: 1_700_000_000_000,
                ended_at: 1_700_000_060_000,
                repeats: 1,
                flow_bytes: 1_000_000,
                error: None,
                verdict: &verdict,
                flows: &flows,
            },
        )
        .unwrap();
        let stored = runs(&store).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].id, id);
        assert_eq!((stored[0].flows, stored[0].failed_flows), (8, 0));
        assert_eq!(stored[0].test_id, "0000000000000abc");
        assert_eq!(stored[0].verdict["rate_limited"]["upload"], true);
        let text = render(&stored);
        assert!(text.contains("2023-11-14T22:13:20Z"), "{text}");
        assert!(text.contains("upload, download"), "{text}");
        // Median KB/s: BitTorrent 1000, plain TCP 10000, on both ports.
        assert!(text.contains("1000/10000 | 1000/10000"), "{text}");
        let rows: i64 = store
            .connection()
            .query_row(
                "SELECT COUNT(*) FROM bttest_flows WHERE rate IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(rows, 8);
    }
}
