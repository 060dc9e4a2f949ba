//! Peer descriptions from MaxMind-format databases (`geo.city_db`, `geo.asn_db`): country,
//! city and continent from a GeoIP2/GeoLite2 City or Country database, autonomous system number
//! and organisation from a GeoLite2 ASN (or GeoIP2 ISP) database.
//!
//! The writer thread looks a peer up when it first stores it, with the real address, before
//! `privacy.ip` anonymises it (and fills a row stored without a lookup the next time an outcome
//! brings its address). A database is read into memory once at startup (GeoLite2-City is about
//! 60 MB, Country 9 MB, ASN 10 MB): a file replaced or truncated while the scan runs changes
//! nothing, where a memory map could fault.
//!
//! Nothing a database holds can stop the scan: every field is decoded on its own, so a field of
//! an unexpected type is left empty and the others are kept; a lookup error is a miss (counted,
//! logged once); a panic inside the reader switches that database off for the rest of the run
//! (logged). Which of the databases was consulted for a peer is stored with it (`geo_lookup`),
//! so reports tell "not looked up" (key not set) from "no entry" (loopback, private and
//! unannounced addresses are in no database).

use maxminddb::{path, MaxMindDbError, PathElement, Reader};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The config key of the City/Country database.
pub const CITY_DB_KEY: &str = "geo.city_db";
/// The config key of the ASN database.
pub const ASN_DB_KEY: &str = "geo.asn_db";

/// Largest database file read (GeoIP2-Enterprise, the largest edition, is a few hundred MB).
pub const MAX_DB_BYTES: u64 = 2 << 30;

/// `geo_lookup` bit: the City/Country database was consulted.
pub const CONSULTED_CITY: u8 = 1;
/// `geo_lookup` bit: the ASN database was consulted.
pub const CONSULTED_ASN: u8 = 2;

/// The database files (`geo.*`); an empty path leaves that part off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GeoPaths {
    /// GeoIP2/GeoLite2 City or Country `.mmdb`.
    pub city_db: PathBuf,
    /// GeoLite2 ASN (or GeoIP2 ISP) `.mmdb`.
    pub asn_db: PathBuf,
}

/// What the databases say about one address; `None` where they have nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GeoInfo {
    /// ISO 3166-1 alpha-2 code of the country the address is located in.
    pub country: Option<String>,
    /// City name (English).
    pub city: Option<String>,
    /// Continent code (AF, AN, AS, EU, NA, OC, SA).
    pub continent: Option<String>,
    /// Autonomous system number.
    pub asn: Option<u32>,
    /// The autonomous system's organisation.
    pub as_org: Option<String>,
    /// Databases consulted ([`CONSULTED_CITY`], [`CONSULTED_ASN`]).
    pub consulted: u8,
    /// IANA time zone of the location (`location.time_zone`; City databases only).
    pub time_zone: Option<String>,
    /// Longitude of the location, degrees east (City databases only).
    pub longitude: Option<f64>,
}

/// Why a database cannot be used; every message names the key and the file.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// The file cannot be read.
    #[error("{key}: cannot read {}: {source}", path.display())]
    Read {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a MaxMind DB file (or a damaged one).
    #[error("{key}: {} is not a MaxMind DB (.mmdb) file: {message}", path.display())]
    NotMmdb {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The reader's message.
        message: String,
    },
    /// A MaxMind DB of another kind (e.g. an ASN database given as `geo.city_db`).
    #[error("{key}: {} is a {found:?} database; {key} takes {expected}", path.display())]
    WrongType {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Its `database_type`.
        found: String,
        /// What the key takes.
        expected: &'static str,
    },
}

/// Which database a file was, as recorded in the `meta` table and shown by reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeoSource {
    /// The file as configured.
    pub path: String,
    /// Its `database_type`, e.g. "GeoLite2-City".
    pub database_type: String,
    /// When it was built, Unix seconds.
    pub build_epoch: u64,
}

/// A whole number of any of the MaxMind DB integer types (the reader's `u64` takes only
/// `uint64`, while writers store AS numbers as `uint32` or smaller).
struct WholeNumber(u64);

impl<'de> Deserialize<'de> for WholeNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = WholeNumber;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a non-negative whole number")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<WholeNumber, E> {
                Ok(WholeNumber(v))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<WholeNumber, E> {
                u64::try_from(v)
                    .map(WholeNumber)
                    .map_err(|_| E::custom("number too large"))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<WholeNumber, E> {
                u64::try_from(v)
                    .map(WholeNumber)
                    .map_err(|_| E::custom("negative number"))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    City,
    Asn,
}

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::City => CITY_DB_KEY,
            Kind::Asn => ASN_DB_KEY,
        }
    }

    /// Whether a `database_type` holds this kind's fields (MaxMind's and DB-IP's names).
    fn accepts(self, database_type: &str) -> bool {
        let t = database_type.to_ascii_lowercase();
        match self {
            Kind::City => ["city", "country", "enterprise"]
                .iter()
                .any(|k| t.contains(k)),
            Kind::Asn => ["asn", "isp"].iter().any(|k| t.contains(k)),
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::City => "a City or Country database (GeoLite2-City, GeoIP2-Country, ...)",
            Kind::Asn => "an ASN database (GeoLite2-ASN, or GeoIP2-ISP)",
        }
    }
}

struct Database {
    kind: Kind,
    path: PathBuf,
    reader: Reader<Vec<u8>>,
    /// Lookups that failed (a damaged record); each counts as a miss.
    errors: u64,
    /// The reader panicked once: this database is not consulted again.
    broken: bool,
}

impl Database {
    fn open(kind: Kind, path: &Path) -> Result<Database, GeoError> {
        let key = kind.key();
        let read_error = |source| GeoError::Read {
            key,
            path: path.to_path_buf(),
            source,
        };
        // Checked before reading it into memory: a wrong path must not exhaust memory.
        let len = std::fs::metadata(path).map_err(read_error)?.len();
        if len > MAX_DB_BYTES {
            return Err(GeoError::NotMmdb {
                key,
                path: path.to_path_buf(),
                message: format!(
                    "{len} bytes, more than any MaxMind database ({MAX_DB_BYTES} bytes at most)"
                ),
            });
        }
        let bytes = std::fs::read(path).map_err(read_error)?;
        let reader = Reader::from_source(bytes).map_err(|e| GeoError::NotMmdb {
            key,
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let found = &reader.metadata().database_type;
        if !kind.accepts(found) {
            return Err(GeoError::WrongType {
                key,
                path: path.to_path_buf(),
                found: found.clone(),
                expected: kind.expected(),
            });
        }
        Ok(Database {
            kind,
            path: path.to_path_buf(),
            reader,
            errors: 0,
            broken: false,
        })
    }

    fn source(&self) -> GeoSource {
        let m = self.reader.metadata();
        GeoSource {
            path: self.path.display().to_string(),
            database_type: m.database_type.clone(),
            build_epoch: m.build_epoch,
        }
    }

    /// Looks `ip` up into `info`; never panics past this point and never fails.
    fn fill(&mut self, ip: IpAddr, info: &mut GeoInfo) {
        if self.broken {
            return;
        }
        let kind = self.kind;
        let reader = &self.reader;
        let mut first_error = None;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut out = GeoInfo::default();
            let mut errors = 0u64;
            // An IPv6 address in an IPv4-only database has no entry; not an error.
            if ip.is_ipv6() && reader.metadata().ip_version == 4 {
                return (out, errors);
            }
            let found = match reader.lookup(ip) {
                Ok(found) => found,
                Err(e) => {
                    first_error = Some(e);
                    return (out, 1);
                }
            };
            if !found.has_data() {
                return (out, errors);
            }
            // Each field alone: one of an unexpected type leaves only itself empty.
            let mut field = |p: &[PathElement<'_>]| -> Option<String> {
                match found.decode_path::<String>(p) {
                    Ok(v) => v.filter(|s| !s.is_empty()),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                        None
                    }
                }
            };
            match kind {
                Kind::City => {
                    out.country = field(&path!["country", "iso_code"]);
                    out.city = field(&path!["city", "names", "en"]);
                    out.continent = field(&path!["continent", "code"]);
                    out.time_zone = field(&path!["location", "time_zone"]);
                    out.longitude = found
                        .decode_path::<f64>(&path!["location", "longitude"])
                        .ok()
                        .flatten()
                        .filter(|l| l.is_finite() && (-180.0..=180.0).contains(l));
                }
                Kind::Asn => {
                    out.as_org = field(&path!["autonomous_system_organization"]);
                    out.asn = match found
                        .decode_path::<WholeNumber>(&path!["autonomous_system_number"])
                    {
                        Ok(n) => n.and_then(|n| u32::try_from(n.0).ok()),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                            None
                        }
                    };
                }
            }
            (out, errors)
        }));
        match result {
            Ok((found, errors)) => {
                if errors > 0 {
                    if self.errors == 0 {
                        tracing::warn!(
                            "{}: {}: damaged record for a peer address ({}); such fields stay empty (logged once)",
                            kind.key(),
                            self.path.display(),
                            first_error.map_or_else(String::new, |e: MaxMindDbError| e.to_string())
                        );
                    }
                    self.errors += errors;
                }
                match kind {
                    Kind::City => {
                        info.country = found.country;
                        info.city = found.city;
                        info.continent = found.continent;
                        info.time_zone = found.time_zone;
                        info.longitude = found.longitude;
                        info.consulted |= CONSULTED_CITY;
                    }
                    Kind::Asn => {
                        info.asn = found.asn;
                        info.as_org = found.as_org;
                        info.consulted |= CONSULTED_ASN;
                    }
                }
            }
            Err(_) => {
                self.broken = true;
                tracing::error!(
                    "{}: {}: the MaxMind DB reader failed on this file; it is not consulted for the rest of the run",
                    kind.key(),
                    self.path.display()
                );
            }
        }
    }
}

/// The open databases (none, one or both).
pub struct GeoDb {
    city: Option<Database>,
    asn: Option<Database>,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDb")
            .field("city_db", &self.city.as_ref().map(|d| &d.path))
            .field("asn_db", &self.asn.as_ref().map(|d| &d.path))
            .finish()
    }
}

impl GeoDb {
    /// No database: every lookup is empty and consults nothing.
    pub fn off() -> GeoDb {
        GeoDb {
            city: None,
            asn: None,
        }
    }

    /// Opens the configured databases (an empty path leaves that part off). A file that is
    /// missing, unreadable, not a MaxMind DB or of the wrong kind is an error naming the key
    /// and the file.
    pub fn open(paths: &GeoPaths) -> Result<GeoDb, GeoError> {
        let open = |kind, path: &Path| {
            if path.as_os_str().is_empty() {
                Ok(None)
            } else {
                Database::open(kind, path).map(Some)
            }
        };
        Ok(GeoDb {
            city: open(Kind::City, &paths.city_db)?,
            asn: open(Kind::Asn, &paths.asn_db)?,
        })
    }

    /// Whether any database is open.
    pub fn is_on(&self) -> bool {
        self.city.is_some() || self.asn.is_some()
    }

    /// The `geo_lookup` bits a lookup sets now.
    pub fn consults(&self) -> u8 {
        let mut bits = 0;
        if self.city.as_ref().is_some_and(|d| !d.broken) {
            bits |= CONSULTED_CITY;
        }
        if self.asn.as_ref().is_some_and(|d| !d.broken) {
            bits |= CONSULTED_ASN;
        }
        bits
    }

    /// What the open databases say about `ip` (an IPv4-mapped IPv6 address is looked up as
    /// IPv4).
    pub fn lookup(&mut self, ip: IpAddr) -> GeoInfo {
        let ip = super::anon::canonical_ip(ip);
        let mut info = GeoInfo::default();
        if let Some(db) = &mut self.city {
            db.fill(ip, &mut info);
        }
        if let Some(db) = &mut self.asn {
            db.fill(ip, &mut info);
        }
        info
    }

    /// Lookups that hit a damaged record, both databases together.
    pub fn errors(&self) -> u64 {
        self.city.as_ref().map_or(0, |d| d.errors) + self.asn.as_ref().map_or(0, |d| d.errors)
    }

    /// The open databases by config key, for the `meta` table.
    pub fn sources(&self) -> Vec<(&'static str, GeoSource)> {
        [&self.city, &self.asn]
            .into_iter()
            .flatten()
            .map(|d| (d.kind.key(), d.source()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MaxMind's test databases (tests/data/mmdb, from the MaxMind-DB repository).
    fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/mmdb")
            .join(name)
    }

    fn both() -> GeoDb {
        GeoDb::open(&GeoPaths {
            city_db: data("GeoIP2-City-Test.mmdb"),
            asn_db: data("GeoLite2-ASN-Test.mmdb"),
        })
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn maxminds_test_databases_give_city_country_continent_and_asn() {
        let mut geo = both();
        assert!(geo.is_on());
        assert_eq!(geo.consults(), CONSULTED_CITY | CONSULTED_ASN);
        let london = geo.lookup(ip("81.2.69.142"));
        assert_eq!(london.country.as_deref(), Some("GB"));
        assert_eq!(london.city.as_deref(), Some("London"));
        assert_eq!(london.continent.as_deref(), Some("EU"));
        assert_eq!(london.consulted, CONSULTED_CITY | CONSULTED_ASN);
        let telstra = geo.lookup(ip("1.128.0.0"));
        assert_eq!(telstra.asn, Some(1221));
        assert_eq!(telstra.as_org.as_deref(), Some("Telstra Pty Ltd"));
        // The v4-mapped form is the same address.
        assert_eq!(geo.lookup(ip("::ffff:81.2.69.142")), london);
        assert_eq!(geo.errors(), 0);
    }

    #[test]
    fn an_address_in_no_database_is_a_miss_that_still_counts_as_consulted() {
        let mut geo = both();
        for addr in ["127.0.0.1", "10.1.2.3", "::1", "192.0.2.1"] {
            let info = geo.lookup(ip(addr));
            assert_eq!(
                info,
                GeoInfo {
                    consulted: CONSULTED_CITY | CONSULTED_ASN,
                    ..GeoInfo::default()
                },
                "{addr}"
            );
        }
        let mut off = GeoDb::off();
        assert!(!off.is_on());
        assert_eq!(off.lookup(ip("81.2.69.142")), GeoInfo::default());
    }

    #[test]
    fn a_country_database_serves_as_city_db_without_cities() {
        let mut geo = GeoDb::open(&GeoPaths {
            city_db: data("GeoIP2-Country-Test.mmdb"),
            asn_db: PathBuf::new(),
        })
        .unwrap();
        let info = geo.lookup(ip("81.2.69.142"));
        assert_eq!(info.country.as_deref(), Some("GB"));
        assert_eq!(info.city, None);
        assert_eq!(info.asn, None);
        assert_eq!(info.consulted, CONSULTED_CITY);
        let sources = geo.sources();
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].0, "geo.city_db");
        assert_eq!(sources[0].1.database_type, "GeoIP2-Country");
    }

    #[test]
    fn bad_files_are_errors_naming_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.mmdb");
        let e = GeoDb::open(&GeoPaths {
            city_db: missing.clone(),
            asn_db: PathBuf::new(),
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(&format!("geo.city_db: cannot read {}:", missing.display())),
            "{e}"
        );
        let text = dir.path().join("notes.mmdb");
        std::fs::write(&text, "not a database").unwrap();
        let e = GeoDb::open(&GeoPaths {
            city_db: PathBuf::new(),
            asn_db: text.clone(),
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(&format!(
                "geo.asn_db: {} is not a MaxMind DB (.mmdb) file:",
                text.display()
            )),
            "{e}"
        );
        // A huge file (sparse here) is refused before it is read.
        let huge = dir.path().join("huge.mmdb");
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(MAX_DB_BYTES + 1)
            .unwrap();
        let e = GeoDb::open(&GeoPaths {
            city_db: huge,
            asn_db: PathBuf::new(),
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("geo.city_db") && e.contains("more than any MaxMind database"),
            "{e}"
        );
        // The two databases swapped.
        let e = GeoDb::open(&GeoPaths {
            city_db: data("GeoLite2-ASN-Test.mmdb"),
            asn_db: data("GeoIP2-City-Test.mmdb"),
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("geo.city_db") && e.contains("\"GeoLite2-ASN\" database"),
            "{e}"
        );
        let e = GeoDb::open(&GeoPaths {
            city_db: PathBuf::new(),
            asn_db: data("GeoIP2-City-Test.mmdb"),
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("geo.asn_db") && e.contains("\"GeoIP2-City\" database"),
            "{e}"
        );
    }

    /// A damaged copy of the City database (garbage over its search tree and data, metadata
    /// intact) opens or is refused, but never makes a lookup panic or fail.
    #[test]
    fn a_damaged_database_gives_misses_never_a_crash() {
        let original = std::fs::read(data("GeoIP2-City-Test.mmdb")).unwrap();
        let marker = b"\xab\xcd\xefMaxMind.com";
        let metadata_at = original
            .windows(marker.len())
            .rposition(|w| w == marker)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut opened = 0;
        let mut damaged_records = 0;
        for round in 0..20u64 {
            let mut bytes = original.clone();
            // Overwrite a different stretch each round: tree nodes, pointers, strings.
            let start = (round as usize * 1103) % metadata_at;
            let end = (start + 512).min(metadata_at);
            for b in &mut bytes[start..end] {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let path = dir.path().join(format!("damaged-{round}.mmdb"));
            std::fs::write(&path, &bytes).unwrap();
            let Ok(mut geo) = GeoDb::open(&GeoPaths {
                city_db: path,
                asn_db: PathBuf::new(),
            }) else {
                continue;
            };
            opened += 1;
            for i in 0..2000u32 {
                let v4 = std::net::Ipv4Addr::from(i.wrapping_mul(2_654_435_761));
                let info = geo.lookup(IpAddr::V4(v4));
                assert_eq!(info.asn, None);
                let _ = geo.lookup(IpAddr::V6(v4.to_ipv6_compatible()));
            }
            let _ = geo.lookup(ip("81.2.69.142"));
            damaged_records += geo.errors();
        }
        // Damage past the open-time checks was met, and counted as misses.
        assert!(
            opened > 0 && damaged_records > 0,
            "{opened} {damaged_records}"
        );
    }
}
