//! `swarmscan report` (thesis tables 5.5, 5.6, 5.7) and `swarmscan peers` (one line per peer).
//!
//! Text output is aligned tables with UTC times. `report --json` prints one JSON object
//! ([`crate::store::report::Report`]); `peers --json` prints JSON lines, one object per peer
//! ([`crate::store::PeerRow`]), so that millions of peers stream without being held in memory
//! and tools like `jq` read them line by line. JSON times are Unix milliseconds.
//!
//! Exit codes: 0 ok, 2 bad configuration or missing database, 1 other errors.

use crate::config::ConfigArgs;
use crate::store::report::{GeoReport, Report};
use crate::store::study::{KeyTable, StudyTables, THRESHOLDS};
use crate::store::{PeerRow, Store, StoreError, UnixMs};
use std::io::Write as _;

/// Arguments of `swarmscan report`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Print one JSON object instead of text tables.
    #[arg(long)]
    pub json: bool,
    /// Instead: the stored `swarmscan bttest` runs (date, verdicts, rates), one per line.
    #[arg(long)]
    pub bttest: bool,
    /// Also write every figure (5.1, 5.3, 5.4, clients, countries, speed by country, threshold
    /// sensitivity) as SVG and PNG into this directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub plots: Option<std::path::PathBuf>,
    /// Report what `swarmscan sink` recorded instead (protocols, sources, countries, local times).
    #[arg(long)]
    pub sink: bool,
    /// Only the DHT crawl's summary (`swarmscan crawl`): runs, distinct info-hashes, the most
    /// reported ones.
    #[arg(long)]
    pub crawl: bool,
    /// Configuration (the database path comes from here).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Time buckets of the figures' time axes.
const FIGURE_BUCKETS: i64 = 200;

/// Arguments of `swarmscan peers`.
#[derive(clap::Args, Debug)]
pub struct PeersArgs {
    /// Print JSON lines (one object per peer) instead of a text table.
    #[arg(long)]
    pub json: bool,
    /// Only peers of the torrent with this info-hash (40 or 64 hex digits).
    #[arg(long, value_name = "HASH")]
    pub torrent: Option<String>,
    /// Configuration (the database path comes from here).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Opens the configured database read-for-report; prints the error and gives the exit code.
pub(crate) fn open(config: &ConfigArgs) -> Result<Store, i32> {
    let config = config.load().map_err(|e| {
        eprintln!("swarmscan: {e}");
        2
    })?;
    Store::open_existing(&config.database).map_err(|e| {
        eprintln!("swarmscan: {e}");
        match e {
            StoreError::Missing(_) | StoreError::NotADatabase(_) | StoreError::TooNew { .. } => 2,
            _ => 1,
        }
    })
}

/// Runs `swarmscan report`; returns the exit code.
pub fn run_report(args: &ReportArgs) -> i32 {
    let store = match open(&args.config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if args.bttest {
        return run_bttest_report(&store, args.json);
    }
    if args.sink {
        return crate::sink::report::run(&store, args.json, args.plots.as_deref());
    }
    if args.crawl {
        return match crate::crawl::report(&store, args.json) {
            Ok(text) => {
                println!("{text}");
                0
            }
            Err(e) => {
                eprintln!("swarmscan: report --crawl: {e}");
                1
            }
        };
    }
    let report = match store.report() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("swarmscan: {e}");
            return 1;
        }
    };
    if let Some(dir) = &args.plots {
        let written = store
            .figure_data(FIGURE_BUCKETS)
            .map_err(|e| e.to_string())
            .and_then(|data| super::plots::write_plots(&report, &data, dir));
        match written {
            Ok(files) => eprintln!(
                "swarmscan: wrote {} figure files to {}",
                files.len(),
                dir.display()
            ),
            Err(e) => {
                eprintln!("swarmscan: report --plots: {e}");
                return 1;
            }
        }
    }
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("swarmscan: {e}");
                return 1;
            }
        }
    } else {
        print!("{}", render_report(&report));
    }
    0
}

/// `report --bttest`: every stored bttest run; returns the exit code.
fn run_bttest_report(store: &Store, json: bool) -> i32 {
    let runs = match crate::bttest::store::runs(store) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("swarmscan: {e}");
            return 1;
        }
    };
    if json {
        match serde_json::to_string_pretty(&serde_json::json!({ "runs": runs })) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("swarmscan: {e}");
                return 1;
            }
        }
    } else {
        print!("{}", crate::bttest::store::render(&runs));
    }
    0
}

/// Runs `swarmscan peers`; returns the exit code.
pub fn run_peers(args: &PeersArgs) -> i32 {
    let store = match open(&args.config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let torrent = match &args.torrent {
        Some(hash) => match store.torrent_by_hash(hash) {
            Ok(t) => Some(t.id),
            Err(e) => {
                eprintln!("swarmscan: {e}");
                return 2;
            }
        },
        None => None,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write_failed = false;
    if !args.json {
        let _ = writeln!(out, "{}", peer_line_text(None));
    }
    let result = store.for_each_peer(torrent, |peer| {
        if write_failed {
            return;
        }
        let line = if args.json {
            serde_json::to_string(&peer).unwrap_or_default()
        } else {
            peer_line_text(Some(&peer))
        };
        // A closed pipe (`| head`) ends the listing quietly.
        write_failed = writeln!(out, "{line}").is_err();
    });
    let _ = out.flush();
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("swarmscan: {e}");
            1
        }
    }
}

/// One fixed-width text line of `swarmscan peers` (the header when `peer` is `None`).
fn peer_line_text(peer: Option<&PeerRow>) -> String {
    let cells: Vec<String> = match peer {
        None => [
            "info_hash",
            "ip",
            "port",
            "first_seen",
            "last_seen",
            "first",
            "last",
            "crossed_at",
            "conf",
            "seen",
            "sources",
            "country",
            "asn",
            "client",
            "transport",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        Some(p) => vec![
            p.info_hash.clone(),
            p.ip.clone(),
            p.port.to_string(),
            iso_time(Some(p.first_seen_at)),
            iso_time(p.last_seen_at),
            percent(p.first_progress),
            percent(p.last_progress),
            iso_time(p.crossed_at),
            match (p.confirmed, p.duplicate_of_port) {
                (true, _) => "yes",
                (false, Some(_)) => "dup",
                (false, None) => "no",
            }
            .to_string(),
            p.crossing_seen.clone().unwrap_or_else(|| "-".into()),
            p.sources.clone(),
            p.country.clone().unwrap_or_else(|| "-".into()),
            p.asn.map_or_else(|| "-".into(), |n| format!("AS{n}")),
            p.client.clone().unwrap_or_else(|| "-".into()),
            if p.transport.is_empty() {
                "-".into()
            } else {
                p.transport.clone()
            },
        ],
    };
    // Widths fit a v1 info-hash, a full IPv6 address and a UTC time.
    let widths = [40, 39, 5, 20, 20, 6, 6, 20, 4, 8, 22, 7, 12, 24, 0];
    let right = [
        false, false, true, false, false, true, true, false, false, false, false, false, false,
        false, false,
    ];
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            line.push_str("  ");
        }
        if widths[i] == 0 {
            line.push_str(cell);
        } else if right[i] {
            line.push_str(&format!("{cell:>w$}", w = widths[i]));
        } else {
            line.push_str(&format!("{cell:<w$}", w = widths[i]));
        }
    }
    line.trim_end().to_string()
}

fn percent(p: Option<f64>) -> String {
    p.map_or_else(|| "-".into(), |p| format!("{:.1}%", p * 100.0))
}

/// The DHT section: lookups and BEP 33 estimates per torrent, metadata still awaited.
fn render_dht(d: &crate::store::dht_report::DhtReport) -> String {
    if d.torrents.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\nDHT: get_peers lookups per torrent and the latest BEP 33 estimates (seeds, downloaders)\n",
    );
    let rows: Vec<Vec<String>> = d
        .torrents
        .iter()
        .map(|t| {
            vec![
                t.info_hash.clone(),
                if t.waiting_for_metadata {
                    "(waiting for metadata)".to_string()
                } else {
                    t.name.clone().unwrap_or_else(|| "-".into())
                },
                t.lookups.to_string(),
                t.failed.to_string(),
                t.nodes_queried.to_string(),
                t.peers_received.to_string(),
                opt_f(t.seeds_estimate, 0),
                opt_f(t.peers_estimate, 0),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "info_hash",
            "name",
            "lookups",
            "failed",
            "nodes_queried",
            "peers_received",
            "seeds~",
            "downloaders~",
        ],
        &rows,
    ));
    out.push_str(&format!(
        "DHT nodes kept for the next run: {}\n",
        d.nodes_kept
    ));
    out
}

fn opt_f(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

fn opt_i(v: Option<i64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Unix milliseconds as "YYYY-MM-DDTHH:MM:SSZ" (UTC), "-" for none.
pub fn iso_time(ms: Option<UnixMs>) -> String {
    let Some(ms) = ms else { return "-".into() };
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// An aligned text table: numbers right-aligned (cells that parse as numbers or "-"/"%").
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let numeric = |s: &str| s == "-" || s.trim_end_matches('%').parse::<f64>().is_ok();
    let mut out = String::new();
    let push_row = |cells: Vec<&str>, out: &mut String| {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i > 0 && numeric(cell) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    push_row(headers.to_vec(), &mut out);
    for row in rows {
        push_row(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// The text form of `swarmscan report`.
pub fn render_report(r: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!("swarmscan report: {}\n", r.database));
    out.push_str(&format!(
        "scan window: {} .. {}, {:.2} h in {} run(s)\n\n",
        iso_time(r.window.start),
        iso_time(r.window.end),
        r.window.hours,
        r.window.runs
    ));

    out.push_str("Confirmed downloads per torrent (thesis table 5.6); reported = growth of the scrape `downloaded` count\n");
    out.push_str(
        "within the window (tracker with the largest growth), reported_total = its latest value\n",
    );
    let torrent_row = |t: &crate::store::report::TorrentReport| {
        vec![
            if t.info_hash.is_empty() {
                "total".to_string()
            } else {
                t.info_hash.clone()
            },
            match t.removed_at {
                // Taken out with `swarmscan remove`: its numbers stop there.
                Some(at) => format!(
                    "{} (removed {})",
                    t.name.as_deref().unwrap_or("-"),
                    iso_time(Some(at))
                ),
                None => t.name.clone().unwrap_or_else(|| "-".into()),
            },
            if t.labels.is_empty() {
                "-".to_string()
            } else {
                t.labels.join(",")
            },
            t.peers_seen.to_string(),
            t.peers_evaluated.to_string(),
            t.confirmed.to_string(),
            opt_i(t.reported),
            opt_i(t.reported_total),
            t.ratio
                .map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0)),
            opt_f(t.confirmed_per_hour, 2),
            format!(
                "{}/{}/{}",
                t.crossings_seen.live, t.crossings_seen.revisit, t.crossings_seen.incoming
            ),
        ]
    };
    let mut rows: Vec<Vec<String>> = r.torrents.iter().map(torrent_row).collect();
    rows.push(torrent_row(&r.total));
    out.push_str(&table(
        &[
            "info_hash",
            "name",
            "labels",
            "peers",
            "evaluated",
            "confirmed",
            "reported",
            "reported_total",
            "ratio",
            "confirmed/h",
            "seen live/revisit/incoming",
        ],
        &rows,
    ));

    out.push_str("\nPeer addresses per source (thesis table 5.5)\n");
    let rows: Vec<Vec<String>> = r
        .sources
        .iter()
        .map(|s| {
            vec![
                s.source.to_string(),
                s.requests.to_string(),
                s.failed_requests.to_string(),
                s.received.to_string(),
                s.new.to_string(),
                s.share_new
                    .map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0)),
                s.unique.to_string(),
                opt_f(s.unique_per_hour, 1),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "source",
            "requests",
            "failed",
            "received",
            "new",
            "share_new",
            "unique",
            "unique/h",
        ],
        &rows,
    ));

    out.push_str(&render_dht(&r.dht));

    if !r.trackers.is_empty() {
        out.push_str(
            "\nTrackers: announces and the interval in use (effective = wait until the next announce,\n\
             decided by ours = tracker.announce_secs, interval = the tracker's (tracker.respect_interval),\n\
             min_interval = the tracker's minimum; seconds)\n",
        );
        let rows: Vec<Vec<String>> = r
            .trackers
            .iter()
            .map(|t| {
                vec![
                    t.tracker.clone(),
                    t.torrents.to_string(),
                    t.announces.to_string(),
                    t.failed.to_string(),
                    t.received.to_string(),
                    t.new.to_string(),
                    opt_i(t.interval_secs),
                    opt_i(t.min_interval_secs),
                    t.effective_secs.map_or_else(
                        || "-".into(),
                        |v| format!("{v:.*}", if v.fract() == 0.0 { 0 } else { 1 }),
                    ),
                    t.decided_by.clone().unwrap_or_else(|| "-".into()),
                    t.notes.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "tracker",
                "torrents",
                "announces",
                "failed",
                "received",
                "new",
                "interval",
                "min_interval",
                "effective",
                "decided_by",
                "notes",
            ],
            &rows,
        ));
    }

    out.push_str("\nOutcome of evaluation attempts (thesis table 5.7)\n");
    let mut rows = Vec::new();
    for e in &r.outcomes {
        for c in &e.classes {
            rows.push(vec![
                e.event.to_string(),
                c.class.clone(),
                c.count.to_string(),
                format!("{:.1}%", c.share * 100.0),
                opt_f(c.mean_duration_ms, 0),
                opt_f(c.mean_connect_ms, 0),
            ]);
        }
        rows.push(vec![
            e.event.to_string(),
            "all".into(),
            e.attempts.to_string(),
            "100.0%".into(),
            String::new(),
            String::new(),
        ]);
    }
    out.push_str(&table(
        &[
            "event",
            "outcome",
            "count",
            "share",
            "mean_ms",
            "connect_ms",
        ],
        &rows,
    ));

    out.push_str("\nTransports of successful contacts (per peer: every one it answered on)\n");
    let rows: Vec<Vec<String>> = r
        .transports
        .iter()
        .map(|t| {
            vec![
                t.transport.clone(),
                t.peers.to_string(),
                t.confirmed.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(&["transport", "peers", "confirmed"], &rows));

    let c = &r.total.crossings_seen;
    out.push_str(&format!(
        "\nConfirmed crossings seen live (watched connection): {}, by revisit: {}, on an incoming connection: {}\n",
        c.live, c.revisit, c.incoming
    ));
    if let Some(w) = &r.watched {
        out.push_str(&format!(
            "Live observations on watched connections (not attempts, not in table 5.7): {}\n",
            w.attempts
        ));
    }

    let g = &r.gaps;
    out.push_str(&format!(
        "\nLongest message gap per contact (thesis figure 5.1): {} contacts, p50 <= {} ms, p90 <= {} ms, p99 <= {} ms\n",
        g.contacts,
        opt_i(g.p50_ms),
        opt_i(g.p90_ms),
        opt_i(g.p99_ms)
    ));

    out.push_str(&render_study(&r.study, &r.geo));
    out
}

fn share_cell(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0))
}

/// A "count by key" table with its note and unknown count.
fn render_key_table(title: &str, key: &str, detail: Option<&str>, t: &KeyTable) -> String {
    let mut out = format!("\n{title}\n");
    if let Some(note) = &t.note {
        out.push_str(&format!("({note})\n"));
    }
    if t.rows.is_empty() {
        return out;
    }
    let mut headers = vec!["label", key];
    if let Some(d) = detail {
        headers.push(d);
    }
    headers.extend(["peers", "share", "confirmed", "share_confirmed"]);
    let rows: Vec<Vec<String>> = t
        .rows
        .iter()
        .map(|k| {
            let mut row = vec![k.label.clone(), k.key.clone()];
            if detail.is_some() {
                row.push(k.detail.clone().unwrap_or_else(|| "-".into()));
            }
            row.extend([
                k.peers.to_string(),
                share_cell(Some(k.share_peers)),
                k.confirmed.to_string(),
                share_cell(k.share_confirmed),
            ]);
            row
        })
        .collect();
    out.push_str(&table(&headers, &rows));
    out.push_str(&format!(
        "peers with no {key} (all torrents): {}\n",
        t.unknown_peers
    ));
    out
}

/// A country or AS table of the text report: the study's table by torrent set (as table 5.6
/// is), its heading naming the database the values came from, and why peers have no value
/// (the report's `geo` section words it best: never set, or no entry in the database).
fn geo_key_table_text(
    title: &str,
    names: [&str; 2],
    t: &KeyTable,
    geo: &crate::store::report::GeoTable,
) -> String {
    let mut out = format!("\n{title} (");
    if let Some(s) = &geo.source {
        let built = iso_time(
            i64::try_from(s.build_epoch)
                .ok()
                .map(|e| e.saturating_mul(1000)),
        );
        out.push_str(&format!(
            "{}, built {}; ",
            s.database_type,
            built.get(..10).unwrap_or("-")
        ));
    }
    let what = if names[0] == "asn" { "AS" } else { names[0] };
    out.push_str(&format!(
        "per torrent set; shares of the set's peers and confirmed downloads whose {what} is known)\n"
    ));
    if !t.rows.is_empty() {
        let rows: Vec<Vec<String>> = t
            .rows
            .iter()
            .map(|k| {
                vec![
                    k.label.clone(),
                    k.key.clone(),
                    k.detail.clone().unwrap_or_else(|| "-".into()),
                    k.peers.to_string(),
                    share_cell(Some(k.share_peers)),
                    k.confirmed.to_string(),
                    share_cell(k.share_confirmed),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "label",
                names[0],
                names[1],
                "peers",
                "share",
                "confirmed",
                "share_confirmed",
            ],
            &rows,
        ));
    }
    match geo.note.as_ref().or(t.note.as_ref()) {
        Some(note) => out.push_str(&format!("{note}\n")),
        None if t.unknown_peers > 0 => out.push_str(&format!(
            "peers with no {} (all torrents): {}\n",
            names[0], t.unknown_peers
        )),
        None if t.rows.is_empty() => out.push_str("no peers yet\n"),
        None => {}
    }
    out
}

/// Bytes per second, human-readable (kB/s = 1000 B/s).
pub fn rate(bps: f64) -> String {
    if bps >= 1e6 {
        format!("{:.2} MB/s", bps / 1e6)
    } else {
        format!("{:.1} kB/s", bps / 1e3)
    }
}

/// The text form of the study's planned tables.
pub fn render_study(s: &StudyTables, geo: &GeoReport) -> String {
    let mut out = String::new();
    out.push_str("\nConfirmed downloads per torrent set (label; thesis table 5.6 by set)\n");
    let rows: Vec<Vec<String>> = s
        .labels
        .iter()
        .map(|l| {
            vec![
                l.label.clone(),
                l.torrents.to_string(),
                l.peers_seen.to_string(),
                l.peers_evaluated.to_string(),
                l.confirmed.to_string(),
                opt_i(l.reported),
                share_cell(l.ratio),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "label",
            "torrents",
            "peers",
            "evaluated",
            "confirmed",
            "reported",
            "ratio",
        ],
        &rows,
    ));
    out.push_str(&render_key_table(
        "Clients (name and version from the peer-id; the extension handshake's name when the peer-id says nothing)",
        "client",
        Some("version"),
        &s.clients,
    ));
    out.push_str(&render_key_table(
        "Host domains (registrable domain of the reverse DNS name)",
        "host_domain",
        None,
        &s.host_domains,
    ));
    out.push_str(&geo_key_table_text(
        "Peers and confirmed downloads by country",
        ["country", "continent"],
        &s.countries,
        &geo.countries,
    ));
    out.push_str(&geo_key_table_text(
        "Peers and confirmed downloads by autonomous system",
        ["asn", "organisation"],
        &s.asns,
        &geo.asns,
    ));
    out.push_str("\nDownload speed by country (per peer the highest speed between two contacts)\n");
    if let Some(note) = &s.speed_by_country.note {
        out.push_str(&format!("({note})\n"));
    }
    if !s.speed_by_country.rows.is_empty() {
        let rows: Vec<Vec<String>> = s
            .speed_by_country
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.label.clone(),
                    r.country.clone(),
                    r.peers.to_string(),
                    rate(r.median_bps),
                    rate(r.mean_bps),
                    rate(r.p90_bps),
                ]
            })
            .collect();
        out.push_str(&table(
            &["label", "country", "peers", "median", "mean", "p90"],
            &rows,
        ));
    }
    out.push_str(
        "\nThreshold sensitivity: confirmed downloads if the threshold were t, recomputed from the stored\n\
         first progress and the later stored contacts (exact below the scan's threshold for growing progress,\n\
         a lower bound above it); `stored` = confirmed as the scan counted them\n",
    );
    let mut headers = vec!["label".to_string(), "stored".to_string()];
    headers.extend(THRESHOLDS.iter().map(|t| format!("{:.0}%", t * 100.0)));
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let rows: Vec<Vec<String>> = s
        .threshold_sensitivity
        .iter()
        .map(|r| {
            let mut row = vec![r.label.clone(), r.stored_confirmed.to_string()];
            row.extend(r.points.iter().map(|p| p.1.to_string()));
            row
        })
        .collect();
    out.push_str(&table(&headers, &rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_time_matches_known_dates() {
        assert_eq!(iso_time(Some(0)), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(Some(1_700_000_000_000)), "2023-11-14T22:13:20Z");
        assert_eq!(iso_time(Some(951_782_400_000)), "2000-02-29T00:00:00Z");
        assert_eq!(iso_time(Some(-1000)), "1969-12-31T23:59:59Z");
        assert_eq!(iso_time(None), "-");
    }

    #[test]
    fn one_country_table_by_torrent_set_with_the_geo_note() {
        use crate::store::geo::GeoSource;
        use crate::store::report::GeoTable;
        use crate::store::study::KeyCount;
        let row = |label: &str, key: &str, peers| KeyCount {
            label: label.into(),
            key: key.into(),
            detail: Some("EU".into()),
            peers,
            share_peers: peers as f64 / 4.0,
            confirmed: 1,
            share_confirmed: Some(0.5),
        };
        let study = KeyTable {
            rows: vec![
                row("films", "DE", 3),
                row("(all)", "DE", 3),
                row("(all)", "SE", 1),
            ],
            unknown_peers: 2,
            note: None,
        };
        let geo = GeoTable {
            source: Some(GeoSource {
                path: "/var/lib/geo/city.mmdb".into(),
                database_type: "GeoLite2-City".into(),
                build_epoch: 1_700_000_000,
            }),
            rows: Vec::new(),
            not_looked_up: 0,
            no_entry: 2,
            unknown_evaluated: 0,
            unknown_confirmed: 0,
            note: Some("2 of 6 peers have no country: 0 stored while geo.city_db was not set, 2 with no entry in the database".into()),
        };
        let text = geo_key_table_text("By country", ["country", "continent"], &study, &geo);
        let lines: Vec<&str> = text.trim_start().lines().collect();
        assert!(
            lines[0].starts_with("By country (GeoLite2-City, built 2023-11-14; per torrent set;"),
            "{text}"
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "label",
                "country",
                "continent",
                "peers",
                "share",
                "confirmed",
                "share_confirmed"
            ]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["films", "DE", "EU", "3", "75.0%", "1", "50.0%"]
        );
        assert_eq!(lines.len(), 6, "{text}");
        assert_eq!(lines[5], geo.note.as_deref().unwrap());
        // Without a database or any value: the study's own note, no table.
        let empty = KeyTable {
            rows: Vec::new(),
            unknown_peers: 6,
            note: Some("no peer has a country (no GeoIP database configured)".into()),
        };
        let none = GeoTable {
            source: None,
            note: None,
            ..geo
        };
        let text = geo_key_table_text("By country", ["country", "continent"], &empty, &none);
        assert_eq!(
            text.trim_start().lines().nth(1),
            Some("no peer has a country (no GeoIP database configured)")
        );
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["a", "count"],
            &[
                vec!["xyz".into(), "5".into()],
                vec!["q".into(), "1234567".into()],
            ],
        );
        assert_eq!(t, "a    count\nxyz        5\nq    1234567\n");
    }
}

/// Arguments of `swarmscan series`.
#[derive(clap::Args, Debug)]
pub struct SeriesArgs {
    /// Width of a time bucket: 90s, 15m, 1h, 1d (or plain seconds); 1 ms to a year.
    #[arg(long, default_value = "1h", value_parser = crate::cli::run_cmd::parse_duration)]
    pub bucket: std::time::Duration,
    /// Print JSON lines instead of CSV.
    #[arg(long)]
    pub json: bool,
    /// Configuration (the database path comes from here).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `swarmscan series`: the data behind thesis figures 5.3 (addresses received and new per
/// source over time) and 5.4 (confirmed downloads over time per torrent), one row per bucket.
pub fn run_series(args: &SeriesArgs) -> i32 {
    let store = match open(&args.config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let bucket_ms = (args.bucket.as_millis() as i64).max(1);
    let names: std::collections::HashMap<String, String> = match store.torrents() {
        Ok(ts) => ts
            .into_iter()
            .map(|t| {
                (
                    t.id.to_string(),
                    t.name.clone().unwrap_or_else(|| t.info_hash()),
                )
            })
            .collect(),
        Err(e) => {
            eprintln!("swarmscan: {e}");
            return 1;
        }
    };
    let (discovery, confirmed) = match (
        store.discovery_series(bucket_ms),
        store.confirmed_series(bucket_ms),
    ) {
        (Ok(d), Ok(c)) => (d, c),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("swarmscan: {e}");
            return 1;
        }
    };
    if !args.json {
        println!("figure,bucket_start,key,count,new");
    }
    let rows = discovery
        .iter()
        .map(|p| ("5.3_addresses", p, p.key.clone()))
        .chain(confirmed.iter().map(|p| {
            let name = names.get(&p.key).cloned().unwrap_or_else(|| p.key.clone());
            ("5.4_confirmed", p, name)
        }));
    for (figure, p, key) in rows {
        if args.json {
            let row = serde_json::json!({
                "figure": figure,
                "bucket_start": iso_time(Some(p.at)),
                "bucket_start_ms": p.at,
                "key": key,
                "count": p.count,
                "new": p.new,
            });
            println!("{row}");
        } else {
            let key = if key.contains([',', '"']) {
                format!("\"{}\"", key.replace('"', "\"\""))
            } else {
                key
            };
            println!(
                "{figure},{},{key},{},{}",
                iso_time(Some(p.at)),
                p.count,
                p.new
            );
        }
    }
    0
}
