//! The systemd notification protocol (`sd_notify(3)`), without libsystemd.
//!
//! `NOTIFY_SOCKET` names a Unix datagram socket: a path (`/run/systemd/notify`) or an abstract
//! name (`@/org/freedesktop/systemd1/notify/…`, the leading `@` standing for the NUL byte).
//! `WATCHDOG_USEC` asks for a `WATCHDOG=1` ping at least that often; `WATCHDOG_PID`, when set,
//! names the process it is meant for (a child that inherited the variables must not ping).
//!
//! Our own code rather than the `sd-notify` crate: its 0.5 `notify` connects to the value of
//! `NOTIFY_SOCKET` as a filesystem path, so an abstract socket fails, and its current version
//! needs a newer Rust than this crate's `rust-version`. What we need is thirty lines of std.

use std::ffi::OsString;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notifications go, and whether the service manager wants watchdog pings.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From this process's environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
    pub fn from_env() -> Notifier {
        Notifier::from_vars(
            std::env::var_os("NOTIFY_SOCKET"),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )
    }

    /// From the given variable values; `pid` is this process's id.
    pub fn from_vars(
        notify_socket: Option<OsString>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Notifier {
        let target = notify_socket.and_then(|v| {
            let addr = socket_addr(v.as_bytes())?;
            let sock = UnixDatagram::unbound().ok()?;
            Some((sock, addr))
        });
        Notifier {
            watchdog: target
                .as_ref()
                .and_then(|_| watchdog_interval(watchdog_usec, watchdog_pid, pid)),
            target,
        }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog timeout the service manager asked for, when it asked this process.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one datagram of `KEY=value` lines; a no-op when no service manager listens.
    pub fn notify(&self, msg: &str) -> io::Result<()> {
        match &self.target {
            Some((sock, addr)) => sock.send_to_addr(msg.as_bytes(), addr).map(|_| ()),
            None => Ok(()),
        }
    }
}

/// The socket address of a `NOTIFY_SOCKET` value: an absolute path, or `@name` for an abstract
/// socket; anything else is not a notification socket (as in libsystemd).
fn socket_addr(value: &[u8]) -> Option<SocketAddr> {
    match value.first()? {
        b'@' => SocketAddr::from_abstract_name(&value[1..]).ok(),
        b'/' => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(value)).ok(),
        _ => None,
    }
}

/// The watchdog timeout from `WATCHDOG_USEC` (a positive number of microseconds), unless
/// `WATCHDOG_PID` names another process (or is not a number).
fn watchdog_interval(usec: Option<&str>, wd_pid: Option<&str>, pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(p) = wd_pid {
        if p.trim().parse::<u32>().ok()? != pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// `STATUS=` text: one line, no control characters (the protocol is newline-separated).
pub fn status_line(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("STATUS={clean}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_is_ours_only_when_the_pid_matches_or_is_absent() {
        assert_eq!(
            watchdog_interval(Some("2000000"), None, 7),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            watchdog_interval(Some("2000000"), Some("7"), 7),
            Some(Duration::from_secs(2))
        );
        assert_eq!(watchdog_interval(Some("2000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("2000000"), Some("x"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, Some("7"), 7), None);
    }

    #[test]
    fn path_and_abstract_sockets_receive_notifications() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_vars(Some(path.clone().into_os_string()), Some("1000"), None, 1);
        assert!(n.enabled());
        assert_eq!(n.watchdog(), Some(Duration::from_millis(1)));
        n.notify("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");

        let name = format!("swarmscan-test-{}", std::process::id());
        let abs = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let n = Notifier::from_vars(Some(format!("@{name}").into()), None, None, 1);
        assert!(n.enabled());
        assert_eq!(n.watchdog(), None);
        n.notify("STOPPING=1").unwrap();
        let len = abs.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");

        let none = Notifier::from_vars(Some("relative/path".into()), Some("1000"), None, 1);
        assert!(!none.enabled());
        assert_eq!(none.watchdog(), None, "no socket: nowhere to ping");
        none.notify("READY=1").unwrap();
    }

    #[test]
    fn status_is_a_single_line() {
        assert_eq!(status_line("a\nb"), "STATUS=a b");
    }
}
