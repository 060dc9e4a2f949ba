//! `swarmscan report --sink`: what the sink recorded, as in Huang et al.: requests by
//! protocol (their table I), the CDF of requests per source and per sink address (figs. 3–4),
//! source countries (fig. 5), hour of day and weekday in the sender's local time (figs. 7–8).
//!
//! A request is one stored flow (a TCP connection or a UDP flow). The sender's local time
//! comes from the GeoIP time zone of its address (`location.time_zone`, with daylight
//! saving), else from its longitude (15° per hour), else it is counted as unknown.

use std::collections::BTreeMap;

use chrono::{Datelike, FixedOffset, TimeZone, Timelike};
use rusqlite::Connection;
use serde::Serialize;

use crate::proto::sink_classify::Protocol;

/// One protocol's row of table I.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProtocolRow {
    pub protocol: String,
    pub tcp: u64,
    pub udp: u64,
    pub requests: u64,
    pub sources: u64,
    pub bytes: u64,
}

/// A point of an empirical CDF: the share (0..=1) of items with at most `requests`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CdfPoint {
    pub requests: u64,
    pub share: f64,
}

/// Requests and sources of one key (a country, a sink address, a port).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyCount {
    pub key: String,
    pub requests: u64,
    pub sources: u64,
}

/// What `report --sink` shows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SinkReport {
    /// Requests per protocol (every protocol named, 0 when none).
    pub protocols: BTreeMap<String, u64>,
    /// Distinct sources (per `privacy.ip`: addresses, networks or keyed hashes).
    pub sources: u64,
    /// Requests (flows) in all.
    pub requests: u64,
    /// First and last request, Unix ms.
    pub first_at: Option<i64>,
    pub last_at: Option<i64>,
    /// Table I.
    pub table: Vec<ProtocolRow>,
    /// Fig. 3: CDF of requests per source.
    pub requests_per_source: Vec<CdfPoint>,
    /// Fig. 4: CDF of requests per sink address (destination address and port).
    pub requests_per_sink_address: Vec<CdfPoint>,
    /// The sink addresses (original destinations), most requests first.
    pub sink_addresses: Vec<KeyCount>,
    /// Fig. 5: source countries (`?` = unknown), most requests first.
    pub countries: Vec<KeyCount>,
    /// Fig. 7: requests per hour of the sender's local day (0..24).
    pub local_hour: Vec<u64>,
    /// Fig. 8: requests per weekday of the sender's local week (Monday first).
    pub local_weekday: Vec<u64>,
    /// How the local time was found: by GeoIP time zone, by longitude, unknown.
    pub local_time_from: LocalTimeSources,
}

/// How many requests' local times came from where.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LocalTimeSources {
    pub time_zone: u64,
    pub longitude: u64,
    pub unknown: u64,
}

/// Weekday names, Monday first.
pub const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// The sender's local (hour, weekday index from Monday) at `at_ms`, and whether the time
/// zone (true) or the longitude (false) gave it; `None` when neither is known.
pub fn local_time(
    at_ms: i64,
    time_zone: Option<&str>,
    longitude: Option<f64>,
) -> Option<(u32, u32, bool)> {
    let utc = chrono::DateTime::from_timestamp_millis(at_ms)?;
    if let Some(tz) = time_zone.and_then(|t| t.parse::<chrono_tz::Tz>().ok()) {
        let local = utc.with_timezone(&tz);
        return Some((local.hour(), local.weekday().num_days_from_monday(), true));
    }
    let longitude = longitude.filter(|l| l.is_finite() && (-180.0..=180.0).contains(l))?;
    let offset = FixedOffset::east_opt((longitude / 15.0).round() as i32 * 3600)?;
    let local = offset.from_utc_datetime(&utc.naive_utc());
    Some((local.hour(), local.weekday().num_days_from_monday(), false))
}

/// The empirical CDF of `counts` (one per item), at each distinct count.
fn cdf(mut counts: Vec<u64>) -> Vec<CdfPoint> {
    counts.sort_unstable();
    let n = counts.len() as f64;
    let mut out: Vec<CdfPoint> = Vec::new();
    for (i, c) in counts.iter().enumerate() {
        let share = (i + 1) as f64 / n;
        match out.last_mut() {
            Some(last) if last.requests == *c => last.share = share,
            _ => out.push(CdfPoint {
                requests: *c,
                share,
            }),
        }
    }
    out
}

/// Reads the report from a database (a database without `sink_flows` rows gives zeros).
pub fn sink_report(conn: &Connection) -> rusqlite::Result<SinkReport> {
    let mut protocols: BTreeMap<String, u64> = Protocol::ALL
        .iter()
        .map(|p| (p.name().to_string(), 0))
        .collect();
    let mut table: Vec<ProtocolRow> = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT protocol, SUM(transport = 'tcp'), SUM(transport = 'udp'), COUNT(*),
                COUNT(DISTINCT src_ip_key), SUM(bytes)
         FROM sink_flows GROUP BY protocol ORDER BY COUNT(*) DESC, protocol",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(ProtocolRow {
            protocol: r.get(0)?,
            tcp: r.get::<_, i64>(1)? as u64,
            udp: r.get::<_, i64>(2)? as u64,
            requests: r.get::<_, i64>(3)? as u64,
            sources: r.get::<_, i64>(4)? as u64,
            bytes: r.get::<_, i64>(5)? as u64,
        })
    })?;
    for row in rows {
        let row = row?;
        *protocols.entry(row.protocol.clone()).or_default() += row.requests;
        table.push(row);
    }
    let (requests, sources, first_at, last_at): (i64, i64, Option<i64>, Option<i64>) = conn
        .query_row(
        "SELECT COUNT(*), COUNT(DISTINCT src_ip_key), MIN(first_at), MAX(first_at) FROM sink_flows",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let counts = |sql: &str| -> rusqlite::Result<Vec<u64>> {
        conn.prepare(sql)?
            .query_map([], |r| r.get::<_, i64>(0).map(|n| n as u64))?
            .collect()
    };
    let per_source = counts("SELECT COUNT(*) FROM sink_flows GROUP BY src_ip_key")?;
    let per_address = counts("SELECT COUNT(*) FROM sink_flows GROUP BY dst_ip, dst_port")?;
    let keyed = |sql: &str| -> rusqlite::Result<Vec<KeyCount>> {
        conn.prepare(sql)?
            .query_map([], |r| {
                Ok(KeyCount {
                    key: r.get(0)?,
                    requests: r.get::<_, i64>(1)? as u64,
                    sources: r.get::<_, i64>(2)? as u64,
                })
            })?
            .collect()
    };
    let sink_addresses = keyed(
        "SELECT CASE WHEN instr(dst_ip, ':') > 0 THEN '[' || dst_ip || ']:' ELSE dst_ip || ':' END
                || dst_port, COUNT(*), COUNT(DISTINCT src_ip_key)
         FROM sink_flows GROUP BY dst_ip, dst_port ORDER BY COUNT(*) DESC, 1",
    )?;
    let countries = keyed(
        "SELECT COALESCE(country, '?'), COUNT(*), COUNT(DISTINCT src_ip_key)
         FROM sink_flows GROUP BY 1 ORDER BY COUNT(*) DESC, 1",
    )?;
    let mut local_hour = vec![0u64; 24];
    let mut local_weekday = vec![0u64; 7];
    let mut from = LocalTimeSources::default();
    let mut stmt = conn.prepare("SELECT first_at, time_zone, longitude FROM sink_flows")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let at: i64 = r.get(0)?;
        let tz: Option<String> = r.get(1)?;
        let lon: Option<f64> = r.get(2)?;
        match local_time(at, tz.as_deref(), lon) {
            Some((hour, weekday, by_zone)) => {
                local_hour[hour as usize] += 1;
                local_weekday[weekday as usize] += 1;
                if by_zone {
                    from.time_zone += 1;
                } else {
                    from.longitude += 1;
                }
            }
            None => from.unknown += 1,
        }
    }
    Ok(SinkReport {
        protocols,
        sources: sources as u64,
        requests: requests as u64,
        first_at,
        last_at,
        table,
        requests_per_source: cdf(per_source),
        requests_per_sink_address: cdf(per_address),
        sink_addresses,
        countries,
        local_hour,
        local_weekday,
        local_time_from: from,
    })
}

/// The CDF at a few request counts (1, 2, 5, 10, ...), as text rows.
fn cdf_rows(points: &[CdfPoint]) -> Vec<(u64, f64)> {
    let max = points.last().map_or(0, |p| p.requests);
    let mut marks = Vec::new();
    let mut m = 1u64;
    while m < max {
        marks.push(m);
        for factor in [2, 5] {
            if m * factor < max {
                marks.push(m * factor);
            }
        }
        m *= 10;
    }
    marks.push(max);
    marks.dedup();
    marks
        .into_iter()
        .map(|mark| {
            let share = points
                .iter()
                .take_while(|p| p.requests <= mark)
                .last()
                .map_or(0.0, |p| p.share);
            (mark, share)
        })
        .collect()
}

/// The report as text tables.
pub fn render(report: &SinkReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let pct = |n: u64, of: u64| {
        if of == 0 {
            0.0
        } else {
            n as f64 * 100.0 / of as f64
        }
    };
    let _ = writeln!(
        out,
        "Sink: {} requests from {} sources",
        report.requests, report.sources
    );
    let _ = writeln!(out, "\nRequests by protocol (table I)");
    let _ = writeln!(
        out,
        "{:<12} {:>9} {:>9} {:>9} {:>7} {:>9} {:>12}",
        "protocol", "requests", "tcp", "udp", "%", "sources", "bytes"
    );
    for p in Protocol::ALL {
        let row = report.table.iter().find(|r| r.protocol == p.name());
        let (tcp, udp, n, sources, bytes) = row.map_or((0, 0, 0, 0, 0), |r| {
            (r.tcp, r.udp, r.requests, r.sources, r.bytes)
        });
        let _ = writeln!(
            out,
            "{:<12} {:>9} {:>9} {:>9} {:>7.1} {:>9} {:>12}",
            p.name(),
            n,
            tcp,
            udp,
            pct(n, report.requests),
            sources,
            bytes
        );
    }
    for (title, points) in [
        (
            "Requests per source, CDF (fig. 3)",
            &report.requests_per_source,
        ),
        (
            "Requests per sink address, CDF (fig. 4)",
            &report.requests_per_sink_address,
        ),
    ] {
        let _ = writeln!(out, "\n{title}");
        let _ = writeln!(out, "{:>12} {:>8}", "requests ≤", "share %");
        for (mark, share) in cdf_rows(points) {
            let _ = writeln!(out, "{:>12} {:>8.1}", mark, share * 100.0);
        }
    }
    let _ = writeln!(out, "\nSink addresses (original destination)");
    let _ = writeln!(out, "{:<40} {:>9} {:>9}", "address", "requests", "sources");
    for k in report.sink_addresses.iter().take(20) {
        let _ = writeln!(out, "{:<40} {:>9} {:>9}", k.key, k.requests, k.sources);
    }
    let _ = writeln!(
        out,
        "\nSource countries (fig. 5; ? = unknown or no geo.city_db)"
    );
    let _ = writeln!(
        out,
        "{:<8} {:>9} {:>7} {:>9}",
        "country", "requests", "%", "sources"
    );
    for k in report.countries.iter().take(20) {
        let _ = writeln!(
            out,
            "{:<8} {:>9} {:>7.1} {:>9}",
            k.key,
            k.requests,
            pct(k.requests, report.requests),
            k.sources
        );
    }
    let known = report.local_time_from.time_zone + report.local_time_from.longitude;
    let _ = writeln!(
        out,
        "\nSender's local time (figs. 7-8): {} by GeoIP time zone, {} by longitude, {} unknown",
        report.local_time_from.time_zone,
        report.local_time_from.longitude,
        report.local_time_from.unknown
    );
    if known == 0 {
        let _ = writeln!(
            out,
            "  unknown for every request (set geo.city_db to a City database)"
        );
    } else {
        let _ = writeln!(out, "{:<6} {:>9} {:>7}", "hour", "requests", "%");
        for (h, n) in report.local_hour.iter().enumerate() {
            let _ = writeln!(out, "{:<6} {:>9} {:>7.1}", h, n, pct(*n, known));
        }
        let _ = writeln!(out, "{:<6} {:>9} {:>7}", "day", "requests", "%");
        for (d, n) in report.local_weekday.iter().enumerate() {
            let _ = writeln!(out, "{:<6} {:>9} {:>7.1}", WEEKDAYS[d], n, pct(*n, known));
        }
    }
    out
}

/// `report --sink`: prints the report (text or JSON), writes the figures with `plots`.
pub fn run(store: &crate::store::Store, json: bool, plots: Option<&std::path::Path>) -> i32 {
    let report = match sink_report(store.connection()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("swarmscan: report --sink: {e}");
            return 1;
        }
    };
    if let Some(dir) = plots {
        match super::plots::write_plots(&report, dir) {
            Ok(files) => eprintln!(
                "swarmscan: wrote {} figure files to {}",
                files.len(),
                dir.display()
            ),
            Err(e) => {
                eprintln!("swarmscan: report --sink --plots: {e}");
                return 1;
            }
        }
    }
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("swarmscan: report --sink: {e}");
                return 1;
            }
        }
    } else {
        print!("{}", render(&report));
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_time_prefers_the_time_zone_then_the_longitude() {
        // 2024-07-01 12:00:00 UTC, a Monday.
        let at = 1_719_835_200_000;
        // Tokyo: UTC+9 → 21h Monday.
        assert_eq!(
            local_time(at, Some("Asia/Tokyo"), Some(0.0)),
            Some((21, 0, true))
        );
        // New York in summer: UTC-4 (daylight saving) → 8h Monday.
        assert_eq!(
            local_time(at, Some("America/New_York"), None),
            Some((8, 0, true))
        );
        // No zone: longitude 150° E → +10 h → 22h; 165° W → -11 h → 1h.
        assert_eq!(local_time(at, None, Some(150.0)), Some((22, 0, false)));
        assert_eq!(
            local_time(at, Some("Not/AZone"), Some(-165.0)),
            Some((1, 0, false))
        );
        // Crossing midnight moves the weekday: 23:30 UTC Monday at +9 is Tuesday.
        assert_eq!(
            local_time(at + 11 * 3_600_000 + 1_800_000, Some("Asia/Tokyo"), None),
            Some((8, 1, true))
        );
        assert_eq!(local_time(at, None, None), None);
        assert_eq!(local_time(at, None, Some(f64::NAN)), None);
    }

    #[test]
    fn cdf_steps_at_each_distinct_count() {
        let points = cdf(vec![1, 1, 3, 1, 10]);
        assert_eq!(
            points,
            vec![
                CdfPoint {
                    requests: 1,
                    share: 0.6
                },
                CdfPoint {
                    requests: 3,
                    share: 0.8
                },
                CdfPoint {
                    requests: 10,
                    share: 1.0
                },
            ]
        );
        assert_eq!(
            cdf_rows(&points),
            vec![(1, 0.6), (2, 0.6), (5, 0.8), (10, 1.0)]
        );
        assert!(cdf(vec![]).is_empty());
    }
}
