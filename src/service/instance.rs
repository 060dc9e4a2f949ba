//! One long-running command per database: `swarmscan run`, `crawl` and `sink` each hold an
//! exclusive lock on `<database>.pid` for as long as they run. The file names the holder: its
//! process id on the first line (so it reads as a pid file), the command on the second. A
//! second of any of them on the same database finds the lock taken and stops before touching
//! anything, naming the holder. `swarmscan add` and `remove` find the holder through the file
//! and wake it with SIGUSR1 only when it is a `run` (which would see their change within two
//! seconds anyway, by polling the `torrents` table); a crawl or a sink scans no torrents, so
//! they only say so (and both ignore SIGUSR1, whose default action would end them).
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

/// The commands that take a database for themselves while they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// `swarmscan run`: the scan, woken by `add` and `remove`.
    Run,
    /// `swarmscan crawl`: the DHT crawl.
    Crawl,
    /// `swarmscan sink`: the passive sink.
    Sink,
}

impl Holder {
    /// The subcommand, as written in the lock file and in messages.
    pub fn command(self) -> &'static str {
        match self {
            Holder::Run => "run",
            Holder::Crawl => "crawl",
            Holder::Sink => "sink",
        }
    }

    fn parse(command: &str) -> Option<Holder> {
        [Holder::Run, Holder::Crawl, Holder::Sink]
            .into_iter()
            .find(|h| h.command() == command)
    }
}

/// What the lock file of a held database says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holding {
    pub pid: u32,
    /// `None` for a file naming only a pid (written by a swarmscan from before crawl and sink
    /// took the lock, when only `run` did).
    pub holder: Option<Holder>,
}

/// The exclusive lock of a running command on its database; released (and the file removed)
/// when dropped.
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// Takes the database for this process (`holder` says which command it runs), or says
    /// which process has it.
    pub fn acquire(database: &Path, holder: Holder) -> Result<InstanceLock, String> {
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
                    let holding = read_holding(&mut file);
                    let pid = holding
                        .map_or_else(|| "unknown pid".to_string(), |h| format!("pid {}", h.pid));
                    let (who, hint) = match holding.and_then(|h| h.holder) {
                        Some(Holder::Run) => (
                            "a running `swarmscan run`",
                            " — add torrents to the running scan with `swarmscan add`",
                        ),
                        Some(Holder::Crawl) => ("a running `swarmscan crawl`", ""),
                        Some(Holder::Sink) => ("a running `swarmscan sink`", ""),
                        None => ("another running swarmscan", ""),
                    };
                    return Err(format!(
                        "the database {} is in use by {who} ({pid}; lock file {}): \
                         one run, crawl or sink per database at a time{hint}",
                        database.display(),
                        path.display()
                    ));
                }
                Err(e) => return Err(format!("lock file {}: {e}", path.display())),
            }
            if !same_file(&file, &path) {
                continue;
            }
            // The lock is what keeps a second command out; the pid inside only lets `add` and
            // `remove` wake a scan (without it they wait for the next poll) and name the
            // holder, so a disk too full for a few bytes does not stop us.
            if let Err(e) = file
                .set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| writeln!(file, "{}\n{}", std::process::id(), holder.command()))
                .and_then(|()| file.flush())
            {
                let consequence = match holder {
                    Holder::Run => "add and remove reach this scan at its next poll",
                    Holder::Crawl | Holder::Sink => {
                        "a second run, crawl or sink is still refused, without the holder named"
                    }
                };
                tracing::warn!(
                    "lock file {}: pid not written ({e}); {consequence}",
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

/// The pid (first line) and command (second line, if any) of a lock file.
fn read_holding(file: &mut File) -> Option<Holding> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let holder = lines.next().and_then(|c| Holder::parse(c.trim()));
    Some(Holding { pid, holder })
}

/// Who holds `database` now, if anyone does.
pub fn holding(database: &Path) -> Option<Holding> {
    let mut file = File::open(pid_path(database)).ok()?;
    match try_flock(&file, libc::LOCK_SH) {
        // Nobody holds it: a stale file (the holder ended without removing it).
        Ok(true) => {
            unlock(&file);
            None
        }
        Ok(false) => read_holding(&mut file),
        Err(_) => None,
    }
}

/// Makes SIGUSR1 harmless to a command that holds a database but scans no torrents (a crawl,
/// a sink): its default action would end the process. `add` and `remove` never send it to
/// them; this covers a stray `kill -USR1` and an older `add`. Call it before taking the lock.
pub fn ignore_wake_signal() -> Result<(), String> {
    // A handler rather than SIG_IGN, which children would inherit across exec.
    let ignored = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, ignored)
        .map(|_| ())
        .map_err(|e| format!("signal handler: {e}"))
}

/// Makes SIGHUP harmless to a crawl or a sink: its default action would end the process, and a
/// systemd `ExecReload=` or a logrotate `postrotate` sends it to every process of a unit. Only
/// `run` reloads its configuration; these read theirs at start, so a log line says that
/// nothing was reloaded and the command goes on. Call it before taking the lock.
pub fn ignore_reload_signal(command: &'static str) -> Result<(), String> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .map_err(|e| format!("signal handler: {e}"))?;
    std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                tracing::warn!(
                    "SIGHUP: `swarmscan {command}` reads its configuration only at start; \
                     nothing reloaded, it goes on (restart it to apply a change)"
                );
            }
        })
        .map(|_| ())
        .map_err(|e| format!("signal thread: {e}"))
}

/// What [`wake_running_scan`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Nothing holds the database (or the scan could not be signalled).
    Nobody,
    /// The scan with this pid was sent SIGUSR1.
    Woken(u32),
    /// A crawl or a sink holds the database: not signalled (it scans no torrents).
    NotAScan { pid: u32, holder: Holder },
}

/// Wakes the scan running on `database` (SIGUSR1) so it reads the `torrents` table now. Only a
/// `run` is signalled; a crawl or sink holding the database is reported, not woken. Never an
/// error: the scan polls the table anyway.
pub fn wake_running_scan(database: &Path) -> Wake {
    let Some(holding) = holding(database) else {
        return Wake::Nobody;
    };
    // A file naming no command was written by a swarmscan in which only `run` took the lock.
    if let Some(holder) = holding.holder.filter(|&h| h != Holder::Run) {
        return Wake::NotAScan {
            pid: holding.pid,
            holder,
        };
    }
    let Some(pid_t) = libc::pid_t::try_from(holding.pid).ok().filter(|&p| p > 0) else {
        return Wake::Nobody;
    };
    // Safety: kill(2) only sends a signal; the pid is that of the `run` holding the lock,
    // which registered a SIGUSR1 handler before it wrote its pid.
    if unsafe { libc::kill(pid_t, libc::SIGUSR1) } == 0 {
        Wake::Woken(holding.pid)
    } else {
        Wake::Nobody
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lock_per_database_with_the_holder_named() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("scan.sqlite");
        assert_eq!(holding(&db), None, "no lock file: nothing runs");
        let lock = InstanceLock::acquire(&db, Holder::Run).unwrap();
        let text = std::fs::read_to_string(pid_path(&db)).unwrap();
        assert_eq!(text, format!("{}\nrun\n", std::process::id()));
        // flock(2) locks belong to the open file: a second open in this process conflicts too,
        // whichever command it is for.
        for second in [Holder::Run, Holder::Crawl, Holder::Sink] {
            let e = InstanceLock::acquire(&db, second).unwrap_err();
            assert!(
                e.contains("in use by a running `swarmscan run`")
                    && e.contains(&format!("pid {}", std::process::id()))
                    && e.contains("scan.sqlite.pid")
                    && e.contains("swarmscan add"),
                "{e}"
            );
        }
        assert_eq!(
            holding(&db),
            Some(Holding {
                pid: std::process::id(),
                holder: Some(Holder::Run)
            })
        );
        drop(lock);
        assert!(!pid_path(&db).exists(), "removed at the end");
        assert_eq!(holding(&db), None);
        // A stale file left by a crash does not stop the next command.
        std::fs::write(pid_path(&db), "999999\ncrawl\n").unwrap();
        assert_eq!(holding(&db), None, "a stale file is not a running command");
        let again = InstanceLock::acquire(&db, Holder::Crawl).unwrap();
        drop(again);
    }

    #[test]
    fn a_crawl_or_sink_holding_the_database_is_named_and_never_signalled() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("crawl.sqlite");
        for holder in [Holder::Crawl, Holder::Sink] {
            let lock = InstanceLock::acquire(&db, holder).unwrap();
            let e = InstanceLock::acquire(&db, Holder::Run).unwrap_err();
            let named = format!("in use by a running `swarmscan {}`", holder.command());
            assert!(
                e.contains(&named) && e.contains("crawl.sqlite") && !e.contains("swarmscan add"),
                "{e}"
            );
            // Were this process signalled, SIGUSR1's default action would end the test run.
            assert_eq!(
                wake_running_scan(&db),
                Wake::NotAScan {
                    pid: std::process::id(),
                    holder
                }
            );
            drop(lock);
        }
        assert_eq!(wake_running_scan(&db), Wake::Nobody);
    }

    #[test]
    fn a_lock_file_naming_only_a_pid_is_read_as_an_older_run() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("old.sqlite");
        let lock = InstanceLock::acquire(&db, Holder::Sink).unwrap();
        // As an older swarmscan wrote it (only `run` took the lock then).
        std::fs::write(pid_path(&db), "4242\n").unwrap();
        assert_eq!(
            holding(&db),
            Some(Holding {
                pid: 4242,
                holder: None
            })
        );
        let e = InstanceLock::acquire(&db, Holder::Run).unwrap_err();
        assert!(
            e.contains("in use by another running swarmscan (pid 4242"),
            "{e}"
        );
        drop(lock);
    }

    #[test]
    fn an_unwritable_lock_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("missing-dir").join("scan.sqlite");
        let e = InstanceLock::acquire(&db, Holder::Sink).unwrap_err();
        assert!(
            e.contains("lock file") && e.contains("scan.sqlite.pid"),
            "{e}"
        );
    }
}
