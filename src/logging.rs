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
/// stderr through [`LossyStderr`].
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWARMSCAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        // Colours only for a terminal, not in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false)
        .try_init();
}
