//! Identifies a real libtorrent 2.1.1 peer from what it sends on the wire: the peer-id in
//! its BitTorrent handshake and the `v` of its extension handshake. Needs Python with the
//! libtorrent bindings (scripts/test makes one; or set SWARMSCAN_PYTHON).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use swarmscan::proto::{client_id, hex};

mod common;
use common::python_with_libtorrent as python;

/// Runs the probe script with a deadline; fails the test with a clear message otherwise.
fn run_handshake_script() -> serde_json::Value {
    let py = python();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/libtorrent_handshake.py"
    );
    let mut child = Command::new(&py)
        .arg(script)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start libtorrent_handshake.py");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for script") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("libtorrent_handshake.py did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read output");
    assert!(status.success(), "script failed: {out}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad output {out:?}: {e}"))
}

#[test]
fn real_libtorrent_peer_is_identified() {
    let out = run_handshake_script();
    let peer_id_hex = out["peer_id_hex"].as_str().expect("peer_id_hex");
    let peer_id = hex::decode_array::<20>(peer_id_hex).expect("20-byte peer-id");
    assert_eq!(&peer_id[..8], b"-LT2110-");
    assert_eq!(
        out["fingerprint"].as_str(),
        Some("-LT2110-"),
        "the prefix is libtorrent's configured fingerprint"
    );

    let from_peer_id = client_id::from_peer_id(&peer_id);
    assert_eq!(from_peer_id.to_string(), "libtorrent 2.1.1");

    let v = out["ext_v"]
        .as_str()
        .expect("extension handshake carries v");
    assert_eq!(v, "libtorrent/2.1.1.0");
    assert_eq!(
        client_id::from_ext_version(v.as_bytes()).to_string(),
        "libtorrent 2.1.1"
    );

    let both = client_id::combine(Some(&peer_id), Some(v.as_bytes()));
    assert_eq!(both.client.to_string(), "libtorrent 2.1.1");
    assert!(!both.disagree, "{both:?}");
}
