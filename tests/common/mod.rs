//! Shared by the integration tests that drive real clients.

pub mod iptables;
pub mod process;

use std::process::{Command, Stdio};

/// The Python interpreter with libtorrent's bindings (env `SWARMSCAN_PYTHON`, else
/// `python3`). Fails the test with a clear message when `import libtorrent` does not work:
/// the tests need the real client, they never pass silently without it.
#[allow(dead_code)] // not every test that shares these helpers drives libtorrent
pub fn python_with_libtorrent() -> String {
    let py = std::env::var("SWARMSCAN_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let ok = Command::new(&py)
        .args(["-c", "import libtorrent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "`{py} -c 'import libtorrent'` failed: these tests need libtorrent's Python bindings. \
         Run scripts/test (it installs libtorrent 2.1.1 into target/pyenv) or set \
         SWARMSCAN_PYTHON to an interpreter that has it."
    );
    py
}
