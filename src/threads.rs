//! What a scan does when one of its threads dies: it notices (a thread that ends before the
//! stop flag is set has failed), stops everything, and reports the thread by name with its panic
//! message, ending with a non-zero exit code. Never a half-run that exits 0.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// The message a panic was raised with (`panic!("...")`, `expect`, an arithmetic overflow ...).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

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
