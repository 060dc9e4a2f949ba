//! `swarmscan bttest` on loopback, no root needed: a clean run end to end (server and client
//! binaries, stored run), and what the server does with clients it cannot serve: another
//! protocol version, bytes that are not the control protocol, a second client while a test
//! runs. Each gets a clear answer and the server keeps serving.

mod common;

use common::process::{free_tcp_port, ChildGuard};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use swarmscan::proto::bttest::{Control, ControlReader, VERSION};

struct Server {
    guard: ChildGuard,
    control: String,
}

fn start_server() -> Server {
    let bin = env!("CARGO_BIN_EXE_swarmscan");
    let control = free_tcp_port("127.0.0.1");
    let (bt, other) = (free_tcp_port("127.0.0.1"), free_tcp_port("127.0.0.1"));
    let mut guard = ChildGuard::spawn(
        "bttest server",
        Command::new(bin)
            .args(["bttest", "server", "--for", "5m"])
            .args(["--set", &format!("bttest.listen=\"127.0.0.1:{control}\"")])
            .args(["--set", &format!("bttest.ports=[{bt}, {other}]")])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    let mut line = String::new();
    BufReader::new(guard.child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("bttest server: control"), "{line:?}");
    Server {
        guard,
        control: format!("127.0.0.1:{control}"),
    }
}

fn client(server: &Server, db: &str, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_swarmscan"))
        .args(["bttest", "client", &server.control])
        .args(["--repeat", "1", "--bytes", "1000000"])
        .args(["--set", &format!("database={db:?}")])
        .args(extra)
        .output()
        .unwrap()
}

/// Sends `frame` on a fresh control connection and returns the first message back.
fn exchange(server: &Server, frame: &[u8]) -> Result<Control, String> {
    let mut stream = TcpStream::connect(&server.control).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(frame).unwrap();
    let mut reader = ControlReader::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Err("closed".into()),
            Ok(n) => reader.feed(&buf[..n]),
            Err(e) => return Err(e.to_string()),
        }
        if let Some(m) = reader.next_message().map_err(|e| e.to_string())? {
            return Ok(m);
        }
    }
}

#[test]
fn a_clean_loopback_run_and_clients_the_server_cannot_serve() {
    let server = start_server();
    let dir = common::test_dir("bttest-loopback");
    let db = dir.path().join("b.sqlite").display().to_string();

    let out = client(&server, &db, &["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let flows = json["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 8);
    for f in flows {
        assert_eq!(f["bytes"], 1_000_000, "{f}");
        assert_eq!(f["failed"], false, "{f}");
        assert_eq!(f["client"]["outcome"], "complete", "{f}");
        assert_eq!(f["server"]["outcome"], "complete", "{f}");
        assert!(f["rate_bytes_per_sec"].as_f64().unwrap() > 0.0, "{f}");
    }
    assert_eq!(json["blocked"]["any"], false);

    // Another protocol version: refused with a sentence naming both versions.
    let hello = Control::Hello {
        version: VERSION + 1,
        test_id: 1,
    };
    match exchange(&server, &hello.to_frame()) {
        Ok(Control::Refuse { reason }) => {
            assert!(reason.contains("version"), "{reason}");
            assert!(reason.contains(&(VERSION + 1).to_string()), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Not the control protocol at all: the connection is closed.
    assert!(exchange(&server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_err());

    // A test holding the server: a second client is told it is busy (exit 1).
    let mut holder = TcpStream::connect(&server.control).unwrap();
    holder
        .write_all(
            &Control::Hello {
                version: VERSION,
                test_id: 2,
            }
            .to_frame(),
        )
        .unwrap();
    let mut first = [0u8; 5];
    holder.read_exact(&mut first).unwrap();
    assert_eq!(first[4], 2, "welcome expected");
    let out = client(&server, &db, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("busy"), "{stderr}");
    drop(holder);

    // The server still serves; both clean runs are stored.
    std::thread::sleep(Duration::from_millis(200));
    let out = client(&server, &db, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("blocked:      no"), "{table}");
    let report = Command::new(env!("CARGO_BIN_EXE_swarmscan"))
        .args([
            "report",
            "--bttest",
            "--json",
            "--set",
            &format!("database={db:?}"),
        ])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["runs"].as_array().unwrap().len(), 2, "{report}");

    // A server argument that is not one: exit 2, named.
    let bad = Command::new(env!("CARGO_BIN_EXE_swarmscan"))
        .args(["bttest", "client", "127.0.0.1:port", "--no-store"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("\"port\" is not a port"));
    drop(server.guard);
}
