//! Bounds on every duration and count a user can give, and the one set of checks that apply
//! them: to config keys (`Config::validate`, where the error names the key) and to command-line
//! flags (as clap value parsers, where clap names the flag and exits with code 2).
//!
//! Every number a user types is checked here before it reaches a `Duration`, an allocation, a
//! thread count or a deadline sum, so a typo is an error that says what is allowed, never a
//! panic (`cannot convert float seconds to Duration`), an overflow or a runaway allocation.

use std::time::Duration;

/// Longest duration any `*_secs` key or duration flag accepts: a year.
pub const MAX_SECS: f64 = 31_536_000.0;

/// Shortest duration any seconds value accepts (other than an explicit 0 = off): 1 ms.
pub const MIN_SECS: f64 = 0.001;

/// Longest timeout or delay in milliseconds (probe, connect, tracker request, batch): a day.
pub const MAX_MS: u64 = 86_400_000;

/// Most threads of one kind (workers, fake swarm threads).
pub const MAX_THREADS: u64 = 1024;

/// Most connections of one kind (in flight, watched, fake peers), and most connects per second.
pub const MAX_CONNECTIONS: u64 = 1_000_000;

/// Most pieces a torrent given on the command line may have (a 16 M-bit bitfield is 2 MiB).
pub const MAX_PIECES: u64 = 1 << 24;

/// A number as a person would write it: `1e300` rather than 301 digits.
pub fn show_f64(v: f64) -> String {
    if v.is_finite() && v.abs() >= 1e15 {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// Checks a whole number against `lo..=hi`.
pub fn check_count(v: u64, lo: u64, hi: u64) -> Result<u64, String> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be a whole number in {lo}..={hi}, got {v}"))
    }
}

/// Checks seconds against `lo..=hi` (finite; `lo` ≥ 0); the error says the unit.
pub fn check_secs(v: f64, lo: f64, hi: f64) -> Result<Duration, String> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!(
            "must be a number of seconds from {} to {}{}, got {}",
            show_f64(lo),
            show_f64(hi),
            if hi == MAX_SECS { " (a year)" } else { "" },
            show_f64(v)
        ))
    }
}

/// Parses a whole number in `lo..=hi`; a negative number, a fraction or a value out of range
/// is an error saying what is allowed.
pub fn parse_count(s: &str, lo: u64, hi: u64) -> Result<u64, String> {
    let t = s.trim();
    match t.parse::<i128>() {
        Ok(v) if v < 0 => Err(format!("must be a whole number in {lo}..={hi}, got {t}")),
        Ok(v) => check_count(u64::try_from(v).unwrap_or(u64::MAX), lo, hi)
            .map_err(|_| format!("must be a whole number in {lo}..={hi}, got {t}")),
        Err(_) => Err(format!("expected a whole number in {lo}..={hi}, got {t:?}")),
    }
}

/// Parses seconds (fractions allowed) in `lo..=hi`.
pub fn parse_secs(s: &str, lo: f64, hi: f64) -> Result<f64, String> {
    let t = s.trim();
    let v: f64 = t
        .parse()
        .map_err(|_| format!("expected a number of seconds, got {t:?}"))?;
    check_secs(v, lo, hi).map(|_| v)
}

/// Parses `90s`, `15m`, `2h`, `3d`, `250ms` or plain seconds (fractions allowed) in `lo..=hi`
/// seconds.
pub fn parse_duration(s: &str, lo: f64, hi: f64) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 90s, 15m, 2h, 3d"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "sec" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "invalid duration unit {unit:?} in {s:?}: use ms, s, m, h or d"
            ))
        }
    };
    if !(secs.is_finite() && secs >= lo && secs <= hi) {
        return Err(format!(
            "invalid duration {s:?}: must be from {} s to {} s{}",
            show_f64(lo),
            show_f64(hi),
            if hi == MAX_SECS { " (a year)" } else { "" },
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A clap value parser: a whole number in `lo..=hi`, as `T`.
pub fn count<T>(lo: u64, hi: u64) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync
where
    T: TryFrom<u64>,
{
    move |s| {
        let v = parse_count(s, lo, hi)?;
        T::try_from(v).map_err(|_| format!("{v} is too large"))
    }
}

/// A clap value parser: a power of two in `lo..=hi`.
pub fn power_of_two<T>(lo: u64, hi: u64) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync
where
    T: TryFrom<u64>,
{
    move |s| {
        let v = parse_count(s, lo, hi)?;
        if !v.is_power_of_two() {
            return Err(format!("must be a power of two in {lo}..={hi}, got {v}"));
        }
        T::try_from(v).map_err(|_| format!("{v} is too large"))
    }
}

/// A clap value parser: seconds (fractions allowed) in `lo..=hi`.
pub fn secs(lo: f64, hi: f64) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync {
    move |s| parse_secs(s, lo, hi)
}

/// A clap value parser: a duration with a unit (`90s`, `15m`, `2h`, `3d`, `250ms`) in
/// `lo..=hi` seconds.
pub fn duration(
    lo: f64,
    hi: f64,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync {
    move |s| parse_duration(s, lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a user types: an error or a value within the bounds, never a panic.
        #[test]
        fn any_text_parses_within_bounds_or_fails(
            text in prop_oneof![
                any::<String>(),
                "[-+]?[0-9]{0,25}(\\.[0-9]{0,5})?(e[-+]?[0-9]{1,4})?(ms|s|sec|m|min|h|d|x)?",
            ]
        ) {
            if let Ok(d) = parse_duration(&text, MIN_SECS, MAX_SECS) {
                prop_assert!(d.as_secs_f64() >= MIN_SECS * 0.999 && d.as_secs_f64() <= MAX_SECS);
            }
            if let Ok(v) = parse_secs(&text, MIN_SECS, MAX_SECS) {
                prop_assert!((MIN_SECS..=MAX_SECS).contains(&v));
            }
            if let Ok(v) = parse_count(&text, 1, 1000) {
                prop_assert!((1..=1000).contains(&v));
            }
        }
    }

    #[test]
    fn durations_in_bounds_and_out() {
        let d = |s| parse_duration(s, MIN_SECS, MAX_SECS);
        assert_eq!(d("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(d("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(d("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(d("3d").unwrap(), Duration::from_secs(3 * 86400));
        assert_eq!(d("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(d("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(d("365d").unwrap(), Duration::from_secs(31_536_000));
        for bad in [
            "99999999999999999999s",
            "366d",
            "1e300",
            "-3s",
            "0",
            "0.1ms",
            "inf",
            "NaN",
            "",
            "5 parsecs",
        ] {
            let e = d(bad).unwrap_err();
            assert!(e.contains("duration"), "{bad}: {e}");
        }
        assert!(d("5 parsecs").unwrap_err().contains("unit"));
        assert!(d("99999999999999999999s").unwrap_err().contains("a year"));
    }

    #[test]
    fn counts_and_seconds() {
        assert_eq!(parse_count("7", 1, 10), Ok(7));
        for bad in ["0", "11", "-5", "1.5", "x", "99999999999999999999999999"] {
            let e = parse_count(bad, 1, 10).unwrap_err();
            assert!(e.contains("1..=10"), "{bad}: {e}");
        }
        assert_eq!(parse_secs("2.5", 0.1, 10.0), Ok(2.5));
        for bad in ["-5", "0", "1e300", "inf", "nan", "x"] {
            assert!(parse_secs(bad, 0.1, 10.0).is_err(), "{bad}");
        }
        let e = check_secs(1e300, MIN_SECS, MAX_SECS).unwrap_err();
        assert!(e.contains("got 1e300") && e.contains("a year"), "{e}");
        assert!(count::<u16>(1, 1 << 20)("70000").is_err());
        assert_eq!(power_of_two::<u16>(1, 32768)("1024"), Ok(1024));
        assert!(power_of_two::<u16>(1, 32768)("1000").is_err());
    }
}
