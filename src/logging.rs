//! Logging that never takes the process down: log lines go to stderr, and when stderr cannot
//! be written (its file is on a full file system, a closed pipe) the line is dropped and
//! counted instead of panicking (`eprintln!` and tracing-subscriber's own error report panic
//! on a failed write, which once turned a full disk into exit code 101).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log writes that failed and were dropped since the process started.
pub fn dropped_writes() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Stderr that reports every write as done: a failed write is dropped and counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::io::stderr().write_all(buf).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if std::io::stderr().flush().is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Writes a line to stderr like `eprintln!`, but drops it (counted) instead of panicking
/// when stderr cannot be written.
pub fn say(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(LossyStderr, "{args}");
}

/// Installs the tracing subscriber: level from `SWARMSCAN_LOG` (default `warn`), lines to
/// stderr through [`LossyStderr`]. Colours only on a terminal; under systemd (`JOURNAL_STREAM`
/// names our stderr) no timestamp, since the journal stamps every line itself. Nothing logs per
/// probe: per-probe detail is at `trace` level only.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWARMSCAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        // Colours only for a terminal, not in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false);
    let _ = if stderr_is_journal() {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}

/// Whether stderr is the journal's stream: `JOURNAL_STREAM` is `DEVICE:INODE` of it.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}
