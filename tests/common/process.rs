//! Child processes and ports for the integration tests that start real programs (trackers,
//! clients, the swarmscan binary). Not every test uses every helper.
#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A child process that is killed (and reaped) when dropped.
pub struct ChildGuard {
    pub name: &'static str,
    pub child: Child,
}

impl ChildGuard {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> ChildGuard {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        ChildGuard { name, child }
    }

    /// Waits for the process to exit by itself; `None` on timeout (the guard still kills it).
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if start.elapsed() < limit => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => return None,
                Err(e) => panic!("waiting for {}: {e}", self.name),
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_tcp_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A file's text (lossy UTF-8), or "" when it cannot be read: for logs in failure messages.
pub fn read_to_string_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The lines a child writes to stdout, read on a thread so that every wait on them is bounded.
pub struct StdoutLines {
    rx: std::sync::mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl StdoutLines {
    /// Takes the child's (piped) stdout.
    pub fn of(guard: &mut ChildGuard) -> StdoutLines {
        use std::io::BufRead;
        let out = guard.child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        StdoutLines {
            rx,
            reader: Some(reader),
        }
    }

    /// The next line, waiting at most `limit`.
    pub fn recv_timeout(
        &self,
        limit: Duration,
    ) -> Result<String, std::sync::mpsc::RecvTimeoutError> {
        self.rx.recv_timeout(limit)
    }

    /// The lines that arrived so far.
    pub fn drain(&self) -> impl Iterator<Item = String> + '_ {
        self.rx.try_iter()
    }

    /// Waits for the child to close its stdout, then returns the lines not taken yet.
    pub fn finish(mut self) -> Vec<String> {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.rx.try_iter().collect()
    }
}

/// Waits for `scan` (a `swarmscan run --for`) to exit within `limit`, handing every line of
/// `lines` to `take` meanwhile and calling `each_round` (which may panic) every 200 ms.
pub fn wait_collecting(
    scan: &mut ChildGuard,
    limit: Duration,
    lines: &StdoutLines,
    mut take: impl FnMut(&str),
    mut each_round: impl FnMut(),
    scan_log: &Path,
) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        for line in lines.drain() {
            take(&line);
        }
        if let Some(status) = scan.wait_timeout(Duration::from_millis(200)) {
            return status;
        }
        each_round();
        assert!(
            start.elapsed() < limit,
            "{} still running after {limit:?}: {}",
            scan.name,
            read_to_string_lossy(scan_log)
        );
    }
}
