//! Reports, plots and exports of a study database, run as the built binary on its defaults:
//! a synthetic database of 20 000 peers (`synth-db`, with the GeoIP columns) and one filled
//! by a real scan of the simulated swarm (`demo --database`). Exports are read back by
//! an independent reader (pyarrow for Parquet and CSV, Python's json for JSON lines; the
//! interpreter in env `SWARMSCAN_PYTHON`, which scripts/test gives pyarrow) and must have the
//! row counts and sums the database has.

mod common;

use rusqlite::Connection;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn swarmscan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_swarmscan"))
        .args(args)
        .output()
        .expect("run swarmscan")
}

fn ok(args: &[&str]) -> String {
    let out = swarmscan(args);
    assert!(
        out.status.success(),
        "swarmscan {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn python_with_pyarrow() -> String {
    let py = std::env::var("SWARMSCAN_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let has = Command::new(&py)
        .args(["-c", "import pyarrow"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has,
        "`{py} -c 'import pyarrow'` failed: these tests read exports back with pyarrow. Run \
         scripts/test (it installs pyarrow into ~/.cache/swarmscan/pyenv) or set SWARMSCAN_PYTHON \
         to an interpreter that has it."
    );
    py
}

fn count(db: &Connection, sql: &str) -> i64 {
    db.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Exports every table in every format and reads each file back with the independent reader;
/// row counts and the sums of a few columns must be the database's.
fn check_exports(dir: &Path, database: &str) {
    let py = python_with_pyarrow();
    let db = Connection::open(database).unwrap();
    let expected_rows = [
        ("peers", count(&db, "SELECT count(*) FROM peers")),
        (
            "contacts",
            count(
                &db,
                "SELECT sum((first_contact_at IS NOT NULL) + (below_at IS NOT NULL) + (above_at IS NOT NULL)
                        + (last_contact_at IS NOT NULL) + (crossed_at IS NOT NULL)) FROM peers",
            ),
        ),
        ("discovery", count(&db, "SELECT count(*) FROM discovery_requests")),
    ];
    let confirmed = count(&db, "SELECT sum(confirmed) FROM peers");
    let received = count(&db, "SELECT sum(received) FROM discovery_requests");
    assert!(
        expected_rows.iter().all(|(_, n)| *n > 0),
        "{expected_rows:?}"
    );
    let mut files = Vec::new();
    for (table, _) in &expected_rows {
        for format in ["csv", "jsonl", "parquet"] {
            let file = dir.join(format!("{table}.{format}"));
            let file = file.to_str().unwrap().to_string();
            ok(&[
                "export",
                table,
                "--format",
                format,
                "--out",
                &file,
                "--set",
                &format!("database={database}"),
            ]);
            files.push((table.to_string(), file));
        }
    }
    let out = Command::new(&py)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/read_exports.py"
        ))
        .args(files.iter().map(|f| &f.1))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "read_exports.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(read.len(), files.len());
    for ((table, file), summary) in files.iter().zip(&read) {
        let rows = expected_rows.iter().find(|r| r.0 == *table).unwrap().1;
        assert_eq!(summary["rows"], rows, "{file}: {summary}");
        match table.as_str() {
            "peers" => assert_eq!(summary["sums"]["confirmed"], confirmed, "{file}"),
            "discovery" => assert_eq!(summary["sums"]["received"], received, "{file}"),
            _ => assert_eq!(summary["columns"][3], "kind", "{file}"),
        }
    }
}

/// Every figure as SVG and PNG, the PNGs of the documented size.
fn check_plots(dir: &Path, database: &str) {
    let plots = dir.join("plots");
    ok(&[
        "report",
        "--plots",
        plots.to_str().unwrap(),
        "--set",
        &format!("database={database}"),
    ]);
    for name in [
        "fig5_1_longest_gap",
        "fig5_3_addresses",
        "fig5_4_downloads",
        "clients",
        "countries",
        "speed_by_country",
        "threshold_sensitivity",
    ] {
        let svg = std::fs::read_to_string(plots.join(format!("{name}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("</svg>"),
            "{name}.svg"
        );
        let png = std::fs::read(plots.join(format!("{name}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}.png");
        // IHDR: width and height, big-endian, at bytes 16..24.
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!((width, height), (1000, 560), "{name}.png");
    }
}

#[test]
fn synthetic_study_reports_plots_and_exports() {
    let dir = common::test_dir("swarmscan-study-synth-");
    let database = dir.path().join("synth.sqlite");
    let database = database.to_str().unwrap();
    let made: Value = serde_json::from_str(&ok(&[
        "synth-db",
        "--database",
        database,
        "--peers",
        "20000",
        "--geo-columns",
    ]))
    .unwrap();
    assert_eq!(made["peers"], 20000);

    let report: Value = serde_json::from_str(&ok(&[
        "report",
        "--json",
        "--set",
        &format!("database={database}"),
    ]))
    .unwrap();
    let study = &report["study"];
    // Three torrent sets and "(all)"; the sets' confirmed downloads add up to all of them
    // (each synthetic torrent has one label).
    let labels: Vec<&str> = study["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["1-10GB", "<1GB", ">10GB", "(all)"]);
    let confirmed = |label: &str| {
        study["labels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["label"] == label)
            .unwrap()["confirmed"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(
        confirmed("1-10GB") + confirmed("<1GB") + confirmed(">10GB"),
        confirmed("(all)")
    );
    assert_eq!(confirmed("(all)"), made["confirmed"]);
    // At the scan's own threshold (98 %) the recomputation gives the stored count.
    for row in study["threshold_sensitivity"].as_array().unwrap() {
        let at_98 = row["points"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| (p[0].as_f64().unwrap() - 0.98).abs() < 1e-9)
            .unwrap()[1]
            .clone();
        assert_eq!(at_98, row["stored_confirmed"], "{row}");
    }
    // The GeoIP columns exist here, so the country, ASN and host tables are filled.
    for table in ["countries", "asns", "host_domains", "clients"] {
        assert!(
            !study[table]["rows"].as_array().unwrap().is_empty(),
            "{table}: {}",
            study[table]
        );
        assert!(study[table]["note"].is_null(), "{table}");
    }
    assert!(!study["speed_by_country"]["rows"]
        .as_array()
        .unwrap()
        .is_empty());
    let us_peers: i64 = Connection::open(database)
        .unwrap()
        .query_row("SELECT count(*) FROM peers WHERE country = 'US'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let us = study["countries"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["label"] == "(all)" && r["key"] == "US")
        .unwrap();
    assert_eq!(us["peers"], us_peers);

    check_plots(dir.path(), database);
    // Figure 5.4 draws and names both series of every torrent set: the three sets' reported
    // counts grow alike here, so their lines lie on each other and only their markers (in
    // each set's darker shade) tell them apart.
    let fig = std::fs::read_to_string(dir.path().join("plots/fig5_4_downloads.svg")).unwrap();
    for label in ["1-10GB", "&lt;1GB", "&gt;10GB", "(all)"] {
        for series in ["confirmed", "reported by scrape"] {
            assert!(
                fig.contains(&format!("{label}: {series}")),
                "{label}: {series}"
            );
        }
    }
    // The text report has one country table and one AS table, by torrent set.
    let text = ok(&["report", "--set", &format!("database={database}")]);
    for title in [
        "Peers and confirmed downloads by country",
        "Peers and confirmed downloads by autonomous system",
    ] {
        assert_eq!(text.matches(title).count(), 1, "{title}\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("(all) ") && l.contains(" US ")),
        "{text}"
    );
    check_exports(dir.path(), database);
}

#[test]
fn simulated_swarm_scan_reports_plots_and_exports() {
    let dir = common::test_dir("swarmscan-study-demo-");
    let database = dir.path().join("demo.sqlite");
    let database = database.to_str().unwrap();
    ok(&["demo", "--seconds", "20", "--database", database]);
    // Label one of the scanned torrents afterwards, by its info-hash.
    let hash: String = Connection::open(database)
        .unwrap()
        .query_row(
            "SELECT info_hash_v1 FROM torrents ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let added = ok(&[
        "add",
        "--label",
        "first",
        &hash,
        "--set",
        &format!("database={database}"),
    ]);
    assert!(added.contains("labels first"), "{added}");
    let report: Value = serde_json::from_str(&ok(&[
        "report",
        "--json",
        "--set",
        &format!("database={database}"),
    ]))
    .unwrap();
    let study = &report["study"];
    let labels: Vec<&str> = study["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["first", "(none)", "(all)"]);
    assert_eq!(report["torrents"][0]["labels"][0], "first");
    // The simulated peers send real peer-ids: the client table has their clients.
    assert!(!study["clients"]["rows"].as_array().unwrap().is_empty());
    // The demo configures no GeoIP database: empty country tables that say why, in the JSON
    // and once in the text report.
    assert!(study["countries"]["rows"].as_array().unwrap().is_empty());
    assert!(
        study["countries"]["note"]
            .as_str()
            .unwrap()
            .contains("no GeoIP database configured"),
        "{}",
        study["countries"]
    );
    assert!(report["geo"]["countries"]["note"]
        .as_str()
        .unwrap()
        .contains("geo.city_db was not set"));
    let text = ok(&["report", "--set", &format!("database={database}")]);
    assert_eq!(
        text.matches("Peers and confirmed downloads by country")
            .count(),
        1,
        "{text}"
    );
    assert_eq!(
        text.matches("Peers and confirmed downloads by autonomous system")
            .count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("no peer has a country: geo.city_db was not set"),
        "{text}"
    );
    for row in study["threshold_sensitivity"].as_array().unwrap() {
        let at_98 = &row["points"].as_array().unwrap()[8];
        assert_eq!(at_98[1], row["stored_confirmed"], "{row}");
    }
    let total_confirmed = report["total"]["confirmed"].as_i64().unwrap();
    assert!(total_confirmed > 0, "the demo confirms downloads in 20 s");

    check_plots(dir.path(), database);
    check_exports(dir.path(), database);
}

#[test]
fn labels_are_checked_and_list_files_give_them() {
    let dir = common::test_dir("swarmscan-study-labels-");
    let database = dir.path().join("l.sqlite");
    let set = format!("database={}", database.display());
    let hash_a = "aa".repeat(20);
    let hash_b = "bb".repeat(20);
    // A bad label is a usage error naming the label, and nothing is stored.
    let out = swarmscan(&["add", "--label", "(all)", &hash_a, "--set", &set]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("label \"(all)\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!database.exists());

    let list = dir.path().join("torrents.toml");
    std::fs::write(
        &list,
        format!(
            "[[torrent]]\ninput = \"{hash_a}\"\nlabels = [\"<1GB\", \"films\"]\n\n\
             [[torrent]]\ninput = \"{hash_b}\"\nlabels = [\">10GB\"]\n"
        ),
    )
    .unwrap();
    ok(&["add", "--list", list.to_str().unwrap(), "--set", &set]);
    // Labels add up: a second add keeps the first ones.
    ok(&["add", "--label", "films", &hash_b, "--set", &set]);
    let labels: Vec<(String, String)> = Connection::open(&database)
        .unwrap()
        .prepare(
            "SELECT t.info_hash_v1, l.label FROM torrent_labels l JOIN torrents t ON t.id = l.torrent_id
             ORDER BY 1, 2",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        labels,
        [
            (hash_a.clone(), "<1GB".to_string()),
            (hash_a.clone(), "films".to_string()),
            (hash_b.clone(), ">10GB".to_string()),
            (hash_b.clone(), "films".to_string()),
        ]
    );

    // A list entry with an unknown key or a bad label is refused with the file and entry.
    std::fs::write(&list, "[[torrent]]\ninput = \"x\"\nlabel = \"a\"\n").unwrap();
    let out = swarmscan(&["add", "--list", list.to_str().unwrap(), "--set", &set]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("torrents.toml") && err.contains("label"),
        "{err}"
    );
    std::fs::write(
        &list,
        format!("[[torrent]]\ninput = \"{hash_a}\"\nlabels = [\"\"]\n"),
    )
    .unwrap();
    let out = swarmscan(&["add", "--list", list.to_str().unwrap(), "--set", &set]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("torrent 1") && err.contains("is empty"),
        "{err}"
    );
}

#[test]
fn export_errors_name_what_was_wrong() {
    let dir = common::test_dir("swarmscan-study-export-");
    let missing = dir.path().join("none.sqlite");
    let out = swarmscan(&[
        "export",
        "peers",
        "--set",
        &format!("database={}", missing.display()),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let out = swarmscan(&["export", "everything"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("everything"));
    // An output in a directory that does not exist: an error naming it, no file anywhere.
    let database = dir.path().join("s.sqlite");
    ok(&[
        "synth-db",
        "--database",
        database.to_str().unwrap(),
        "--peers",
        "100",
    ]);
    let out_file = dir.path().join("no/such/dir/peers.csv");
    let out = swarmscan(&[
        "export",
        "peers",
        "--out",
        out_file.to_str().unwrap(),
        "--set",
        &format!("database={}", database.display()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no/such/dir"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
