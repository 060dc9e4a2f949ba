//! What a scan does when one of its threads dies: it notices (a thread that ends before the
//! stop flag is set has failed), stops everything, and reports the thread by name with its panic
//! message, ending with a non-zero exit code. Never a half-run that exits 0.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

pub use swarmscan_engine::panic_message;

/// Joins `handle`; a panic becomes an error naming the thread and saying what it panicked with.
pub fn join<T>(handle: JoinHandle<T>) -> Result<T, String> {
    let name = handle.thread().name().unwrap_or("unnamed").to_string();
    handle
        .join()
        .map_err(|payload| format!("thread '{name}' panicked: {}", panic_message(&*payload)))
}

/// The name of the first of `handles` that has ended (for threads that must run until stopped).
pub fn first_finished<'a, T: 'a>(
    handles: impl IntoIterator<Item = &'a JoinHandle<T>>,
) -> Option<String> {
    handles
        .into_iter()
        .find(|h| h.is_finished())
        .map(|h| h.thread().name().unwrap_or("unnamed").to_string())
}

/// Stores a value into a flag when dropped, also while unwinding from a panic: a scope whose
/// spawned threads run until a stop flag is set cannot then wait for them forever.
pub struct StoreOnDrop<'a>(pub &'a AtomicBool, pub bool);

impl Drop for StoreOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(self.1, Ordering::SeqCst);
    }
}

/// Test hook, compiled into debug builds only: panics when the environment variable
/// `SWARMSCAN_DEBUG_PANIC` equals `point` (`engine`, `discovery`, `writer`, `status`), so the
/// tests can check that a panicking thread stops the scan with a non-zero exit. Not part of the
/// documented interface; release builds never read the variable.
#[inline]
pub fn debug_panic_point(point: &str) {
    #[cfg(debug_assertions)]
    {
        static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let wanted = WANTED.get_or_init(|| std::env::var("SWARMSCAN_DEBUG_PANIC").ok());
        if wanted.as_deref() == Some(point) {
            panic!("SWARMSCAN_DEBUG_PANIC={point}: deliberate panic for a test");
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

/// Test hook, compiled into debug builds only: when `SWARMSCAN_DEBUG_STALL` is `point` or
/// `point:SECS`, the first thread that reaches `point` (`engine`: a worker's loop, `writer`:
/// the writer's loop) SECS seconds (default 0) after the first call stops there for good, as a
/// thread stuck in a system call or a lock would, so the tests can check that the systemd
/// watchdog pings stop. Release builds never read the variable.
#[inline]
pub fn debug_stall_point(point: &str) {
    #[cfg(debug_assertions)]
    {
        use std::time::{Duration, Instant};
        static WANTED: std::sync::OnceLock<Option<(String, Instant)>> = std::sync::OnceLock::new();
        static TAKEN: AtomicBool = AtomicBool::new(false);
        let wanted = WANTED.get_or_init(|| {
            let v = std::env::var("SWARMSCAN_DEBUG_STALL").ok()?;
            let (name, secs) = match v.split_once(':') {
                Some((n, s)) => (n.to_string(), s.parse::<f64>().unwrap_or(0.0)),
                None => (v, 0.0),
            };
            Some((
                name,
                Instant::now() + Duration::from_secs_f64(secs.clamp(0.0, 3600.0)),
            ))
        });
        if let Some((name, at)) = wanted {
            if name == point && Instant::now() >= *at && !TAKEN.swap(true, Ordering::SeqCst) {
                tracing::warn!("SWARMSCAN_DEBUG_STALL={point}: this thread stops here for a test");
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_thread_is_named_with_its_message() {
        let h = std::thread::Builder::new()
            .name("victim".into())
            .spawn(|| -> u32 { panic!("boom {}", 7) })
            .unwrap();
        while !h.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(first_finished([&h]), Some("victim".to_string()));
        assert_eq!(join(h).unwrap_err(), "thread 'victim' panicked: boom 7");
        let ok = std::thread::spawn(|| 5);
        assert_eq!(join(ok), Ok(5));
    }
}
