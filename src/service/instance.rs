//! One scan per database: `swarmscan run` holds an exclusive lock on `<database>.pid` (which
//! names its process id) for as long as it runs. A second `run` on the same database finds
//! the lock taken and stops before touching anything; `swarmscan add` and `remove` find the
//! running scan through it and wake it with SIGUSR1 (it would see their change within two
//! seconds anyway, by polling the `torrents` table).
//!
//! The lock is `flock(2)` on the open file, so it goes away with the process however it ends
//! (a crash leaves a stale file, never a stale lock). A file removed and created again while
//! someone waits for its lock is caught by comparing the locked file with the path.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The lock file of a database: its path with `.pid` appended.
pub fn pid_path(database: &Path) -> PathBuf {
    let mut p = database.as_os_str().to_owned();
    p.push(".pid");
    PathBuf::from(p)
}

/// The exclusive lock of a running scan on its database; released (and the file removed)
/// when dropped.
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// Takes the database for this process, or says which scan has it.
    pub fn acquire(database: &Path) -> Result<InstanceLock, String> {
        let path = pid_path(database);
        // Bounded: a second try is needed only when the file was replaced under us.
        for _ in 0..3 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| format!("lock file {}: {e}", path.display()))?;
            match try_flock(&file, libc::LOCK_EX) {
                Ok(true) => {}
                Ok(false) => {
                    let pid = read_pid(&mut file)
                        .map_or_else(|| "unknown pid".to_string(), |p| format!("pid {p}"));
                    return Err(format!(
                        "the database {} is in use by another running scan ({pid}; lock file {}): \
                         one scan per database — add torrents to the running one with `swarmscan add`",
                        database.display(),
                        path.display()
                    ));
                }
                Err(e) => return Err(format!("lock file {}: {e}", path.display())),
            }
            if !same_file(&file, &path) {
                continue;
            }
            // The lock is what keeps a second scan out; the pid inside only lets `add` and
            // `remove` wake us (without it they wait for the next poll), so a disk too full
            // for a few bytes does not stop the scan.
            if let Err(e) = file
                .set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| writeln!(file, "{}", std::process::id()))
                .and_then(|()| file.flush())
            {
                tracing::warn!(
                    "lock file {}: pid not written ({e}); add and remove reach this scan at its next poll",
                    path.display()
                );
            }
            return Ok(InstanceLock { file, path });
        }
        Err(format!(
            "lock file {}: replaced again and again while locking it",
            path.display()
        ))
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        // Removed while still locked, so that nobody can take the lock of a file that is about
        // to vanish; a waiter that opened it before sees the path changed and tries again.
        if same_file(&self.file, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
        unlock(&self.file);
    }
}

/// `flock(2)` without waiting: true when locked, false when another open file holds it.
/// (Not `File::try_lock`: it needs a newer Rust than our `rust-version`.)
fn try_flock(file: &File, operation: libc::c_int) -> std::io::Result<bool> {
    // Safety: flock(2) on the descriptor `file` owns and keeps open during the call.
    if unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

fn unlock(file: &File) {
    // Safety: flock(2) on the descriptor `file` owns; closing it would release the lock too.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
}

/// True when `path` still names the open `file`.
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The process id of the scan running on `database`, if one is.
pub fn running_scan(database: &Path) -> Option<u32> {
    let mut file = File::open(pid_path(database)).ok()?;
    match try_flock(&file, libc::LOCK_SH) {
        // Nobody holds it: a stale file (the scan ended without removing it).
        Ok(true) => {
            unlock(&file);
            None
        }
        Ok(false) => read_pid(&mut file),
        Err(_) => None,
    }
}

/// Wakes the scan running on `database` (SIGUSR1) so it reads the `torrents` table now; its
/// pid when there was one to wake. Never an error: the scan polls the table anyway.
pub fn wake_running_scan(database: &Path) -> Option<u32> {
    let pid = running_scan(database)?;
    let pid_t = libc::pid_t::try_from(pid).ok().filter(|&p| p > 0)?;
    // Safety: kill(2) only sends a signal; the pid is that of the process holding the lock,
    // which registered a SIGUSR1 handler before it wrote its pid.
    let sent = unsafe { libc::kill(pid_t, libc::SIGUSR1) } == 0;
    sent.then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lock_per_database_with_the_holder_named() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("scan.sqlite");
        assert_eq!(running_scan(&db), None, "no lock file: nothing runs");
        let lock = InstanceLock::acquire(&db).unwrap();
        let text = std::fs::read_to_string(pid_path(&db)).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        // flock(2) locks belong to the open file: a second open in this process conflicts too.
        let e = InstanceLock::acquire(&db).unwrap_err();
        assert!(
            e.contains("in use by another running scan")
                && e.contains(&format!("pid {}", std::process::id()))
                && e.contains("scan.sqlite.pid"),
            "{e}"
        );
        assert_eq!(running_scan(&db), Some(std::process::id()));
        drop(lock);
        assert!(!pid_path(&db).exists(), "removed at the end");
        assert_eq!(running_scan(&db), None);
        // A stale file left by a crash does not stop the next scan.
        std::fs::write(pid_path(&db), "999999\n").unwrap();
        assert_eq!(
            running_scan(&db),
            None,
            "a stale file is not a running scan"
        );
        let again = InstanceLock::acquire(&db).unwrap();
        drop(again);
    }

    #[test]
    fn an_unwritable_lock_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("missing-dir").join("scan.sqlite");
        let e = InstanceLock::acquire(&db).unwrap_err();
        assert!(
            e.contains("lock file") && e.contains("scan.sqlite.pid"),
            "{e}"
        );
    }
}
