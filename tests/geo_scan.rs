//! GeoIP and ASN columns filled by a real scan: `swarmscan run` on the built-in simulated swarm
//! (loopback), with `geo.city_db` and `geo.asn_db` pointing at databases the test writes with
//! PyPI `mmdb-writer` (tests/py/write_geo_mmdb.py maps the swarm's 127.x networks), under the
//! default `privacy.ip = "hmac"` and under "truncate": the description comes from the real
//! address although only its hash or network is stored.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value as Json;
use swarmscan::config::IpMode;
use swarmscan::sim::peers::Behaviour;
use swarmscan::sim::{SimOptions, SimSwarm};
use swarmscan::store::anon::Anonymizer;

const BIN: &str = env!("CARGO_BIN_EXE_swarmscan");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Writes city.mmdb and asn.mmdb for 127.`octet`.x.y into `dir`; fails with a clear message
/// when the Python package is missing (the test never passes silently without it).
fn write_databases(dir: &Path, octet: u8) -> (PathBuf, PathBuf) {
    let py = std::env::var("SWARMSCAN_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/write_geo_mmdb.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg(dir)
        .arg(octet.to_string())
        .output()
        .unwrap_or_else(|e| panic!("{py}: {e}"));
    assert!(
        out.status.success(),
        "{py} {} failed: this test needs PyPI mmdb-writer (scripts/test installs it into its \
         Python venv under ~/.cache/swarmscan; or set SWARMSCAN_PYTHON): {}",
        script.display(),
        text(&out.stderr)
    );
    (dir.join("city.mmdb"), dir.join("asn.mmdb"))
}

fn set(key: &str, value: &Path) -> String {
    format!("{key}={:?}", value.display().to_string())
}

/// `swarmscan run` on the swarm's torrents for a few seconds, on the defaults but for the
/// database, a free listen port, the geo databases and `extra` keys.
fn scan(dir: &Path, sim: &SimSwarm, db: &Path, geo: &(PathBuf, PathBuf), extra: &[&str]) {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--for", "6s", "--json"])
        .args(["--set", &set("database", db)])
        .args([
            "--set",
            &format!("net.listen=[\"127.0.0.1:{}\"]", free_port()),
        ])
        .args(["--set", &set("geo.city_db", &geo.0)])
        .args(["--set", &set("geo.asn_db", &geo.1)]);
    for e in extra {
        cmd.args(["--set", e]);
    }
    for (i, bytes) in sim.torrent_files.iter().enumerate() {
        let path = dir.join(format!("t{i}.torrent"));
        std::fs::write(&path, bytes).unwrap();
        cmd.arg(path);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

fn swarmscan(args: &[&str], db: &Path) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .args(["--set", &set("database", db)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    out
}

/// What tests/py/write_geo_mmdb.py says about a simulated peer's address.
fn expected(ip: IpAddr) -> (Option<&'static str>, Option<&'static str>, Option<u64>) {
    let IpAddr::V4(v4) = ip else { panic!("{ip}") };
    match v4.octets() {
        [127, _, 0, _] => (Some("SE"), Some("Stockholm"), Some(64500)),
        [127, _, 1, n] if n < 16 => (Some("JP"), None, Some(64501)),
        _ => (None, None, None),
    }
}

/// Two torrents of 20 peers on 127.`octet`.{0,1}.{1..20}, some finishing within the scan.
fn swarm(octet: u8) -> SimSwarm {
    SimSwarm::start(&SimOptions {
        torrents: 2,
        peers_per_torrent: 20,
        horizon_secs: 8.0,
        addr_octet: octet,
        tracker_interval_secs: 5,
        ..SimOptions::default()
    })
    .unwrap()
}

#[test]
fn a_scan_stores_country_city_and_asn_of_loopback_mapped_peers_in_anonymising_modes() {
    let dir = tempfile::tempdir().unwrap();
    let sim = swarm(131);
    let geo = write_databases(dir.path(), 131);

    // The default privacy.ip = "hmac": only keyed hashes are stored.
    let db = dir.path().join("hmac.sqlite");
    scan(dir.path(), &sim, &db, &geo, &[]);
    let key: [u8; 32] = std::fs::read(dir.path().join("hmac.sqlite.key"))
        .unwrap()
        .try_into()
        .unwrap();
    let hmac = Anonymizer::new(IpMode::Hmac, key);
    let peers: Vec<Json> = text(&swarmscan(&["peers", "--json"], &db).stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut by_country = std::collections::BTreeMap::<String, (i64, i64)>::new();
    let mut stored = 0;
    for p in &sim.peers.peers {
        let shown = hmac.anonymize(p.addr.ip()).shown;
        let Some(row) = peers
            .iter()
            .find(|r| r["ip"] == shown.as_str() && r["port"] == p.addr.port())
        else {
            // Only a peer that finished and left before the first announce is never listed.
            assert_eq!(
                p.behaviour,
                Behaviour::LeavesWhenDone,
                "{} not stored",
                p.addr
            );
            continue;
        };
        stored += 1;
        let (country, city, asn) = expected(p.addr.ip());
        assert_eq!(row["country"].as_str(), country, "{}: {row}", p.addr);
        assert_eq!(row["city"].as_str(), city, "{}: {row}", p.addr);
        assert_eq!(row["asn"].as_u64(), asn, "{}: {row}", p.addr);
        assert_eq!(
            row["continent"].as_str(),
            country.map(|c| if c == "SE" { "EU" } else { "AS" }),
            "{row}"
        );
        assert_eq!(
            row["as_org"].as_str(),
            asn.map(|n| if n == 64500 {
                "Loopback Net A"
            } else {
                "Loopback Net B"
            })
        );
        assert!(row["host_domain"].is_null());
        let entry = by_country
            .entry(country.unwrap_or("-").to_string())
            .or_default();
        entry.0 += 1;
        entry.1 += i64::from(row["confirmed"].as_bool().unwrap());
    }
    assert_eq!(
        stored,
        peers.len(),
        "every stored peer is a peer of the swarm"
    );
    assert!(peers
        .iter()
        .all(|r| !r["ip"].as_str().unwrap().starts_with("127.")));
    // All three cases are there (each has peers that stay in the swarm).
    assert!(by_country["SE"].0 > 10 && by_country["JP"].0 > 5 && by_country["-"].0 > 0);

    // The report's tables agree with the peers, and say what the 5 misses are.
    let report: Json =
        serde_json::from_slice(&swarmscan(&["report", "--json"], &db).stdout).unwrap();
    let countries = &report["geo"]["countries"];
    let rows = countries["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{countries}");
    for row in rows {
        let (peers, confirmed) = by_country[row["key"].as_str().unwrap()];
        assert_eq!(row["peers"].as_i64(), Some(peers), "{row}");
        assert_eq!(row["confirmed"].as_i64(), Some(confirmed), "{row}");
    }
    assert_eq!(rows[0]["key"], "SE");
    assert_eq!(rows[0]["detail"], "EU");
    assert_eq!(countries["no_entry"].as_i64(), Some(by_country["-"].0));
    assert_eq!(countries["not_looked_up"].as_i64(), Some(0));
    assert_eq!(countries["source"]["database_type"], "swarmscan-Test-City");
    let asns = report["geo"]["asns"]["rows"].as_array().unwrap();
    let asn_rows: Vec<(&str, &str, i64)> = asns
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap(),
                r["detail"].as_str().unwrap(),
                r["peers"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        asn_rows,
        [
            ("64500", "Loopback Net A", by_country["SE"].0),
            ("64501", "Loopback Net B", by_country["JP"].0)
        ]
    );
    let report_text = text(&swarmscan(&["report"], &db).stdout);
    assert!(
        report_text.contains("Peers and confirmed downloads by country (swarmscan-Test-City")
            && report_text.contains("Peers and confirmed downloads by autonomous system")
            && report_text.contains("AS64501  Loopback Net B")
            && report_text.contains(&format!(
                "{0} of {1} peers have no country: 0 stored while geo.city_db was not set, {0} with no entry",
                by_country["-"].0,
                peers.len()
            )),
        "{report_text}"
    );
    let listing = text(&swarmscan(&["peers"], &db).stdout);
    let header = listing.lines().next().unwrap();
    assert!(
        header.contains("country") && header.contains("asn"),
        "{header}"
    );
    assert!(listing.contains("AS64500"), "{listing}");

    // privacy.ip = "truncate": 127.133.1.0/24 is shown for all 20 peers of torrent 1, yet 15
    // are in JP and 5 are not: looked up with the full address.
    // A swarm of its own: peers of the first one that finished may have left the tracker.
    drop(sim);
    let sim = swarm(133);
    let dir133 = dir.path().join("133");
    std::fs::create_dir(&dir133).unwrap();
    let geo = write_databases(&dir133, 133);
    let db = dir.path().join("truncate.sqlite");
    scan(dir.path(), &sim, &db, &geo, &["privacy.ip=\"truncate\""]);
    let peers: Vec<Json> = text(&swarmscan(&["peers", "--json"], &db).stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let torrent1: Vec<&Json> = peers
        .iter()
        .filter(|r| r["ip"] == "127.133.1.0/24")
        .collect();
    let jp = torrent1.iter().filter(|r| r["country"] == "JP").count();
    let none = torrent1.iter().filter(|r| r["country"].is_null()).count();
    assert_eq!(jp + none, torrent1.len());
    // Peers 1..=15 of the torrent are in JP, 16..=20 in no network; those that stay in the
    // swarm are all stored.
    let stays = |range: std::ops::RangeInclusive<u8>| {
        sim.peers
            .peers
            .iter()
            .filter(|p| {
                p.torrent == 1
                    && p.behaviour != Behaviour::LeavesWhenDone
                    && matches!(p.addr.ip(), IpAddr::V4(v4) if range.contains(&v4.octets()[3]))
            })
            .count()
    };
    assert!(jp >= stays(1..=15) && jp <= 15, "{jp}");
    assert!(none >= stays(16..=20) && none <= 5 && none > 0, "{none}");
}

#[test]
fn a_geo_database_that_cannot_be_used_stops_run_at_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let geo = write_databases(dir.path(), 132);
    let db = dir.path().join("never.sqlite");
    let torrent = dir.path().join("t.torrent");
    let sim = SimSwarm::start(&SimOptions {
        torrents: 1,
        peers_per_torrent: 2,
        addr_octet: 132,
        ..SimOptions::default()
    })
    .unwrap();
    std::fs::write(&torrent, &sim.torrent_files[0]).unwrap();
    let missing = dir.path().join("GeoLite2-City.mmdb");
    for (key, value, says) in [
        ("geo.city_db", &missing, "cannot read"),
        ("geo.asn_db", &torrent, "is not a MaxMind DB (.mmdb) file"),
        // The two databases swapped.
        (
            "geo.city_db",
            &geo.1,
            "is a \"swarmscan-Test-ASN\" database",
        ),
        (
            "geo.asn_db",
            &geo.0,
            "is a \"swarmscan-Test-City\" database",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["run", "--for", "5s"])
            .args(["--set", &set("database", &db)])
            .args(["--set", &set(key, value)])
            .arg(&torrent)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{key}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("{key}: ")) && err.contains(&value.display().to_string()),
            "{err}"
        );
        assert!(err.contains(says), "{err}");
        assert!(
            !db.exists(),
            "nothing is opened before the configuration is good"
        );
    }
}
