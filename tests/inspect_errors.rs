//! `swarmscan inspect` on bad input: exit code 2 and exactly one line on stderr that names
//! the input and says what is wrong. Never a panic, never a hang.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GOLDEN: &[u8] = include_bytes!("data/torrents/hybrid-multi.torrent");

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "swarmscan-inspect-errors-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs inspect with a 20 s deadline; returns (exit code, stdout, stderr).
fn inspect(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_swarmscan"))
        .arg("inspect")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run swarmscan");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("swarmscan inspect {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().expect("exited, not killed by a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts the error contract and returns the message after the input's name.
fn expect_error(input: &str, json: bool) -> String {
    let mut args = vec![input];
    if json {
        args.insert(0, "--json");
    }
    let (code, stdout, stderr) = inspect(&args);
    assert_eq!(code, 2, "exit code for {input}: stderr {stderr}");
    assert_eq!(stdout, "", "nothing on stdout for {input}");
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let prefix = format!("swarmscan: inspect: {input}: ");
    assert!(
        stderr.starts_with(&prefix),
        "{stderr:?} should start with {prefix:?}"
    );
    stderr[prefix.len()..].trim_end().to_string()
}

fn bencode_with_info(info: &str) -> Vec<u8> {
    format!("d8:announce5:x:/y/4:info{info}e").into_bytes()
}

#[test]
fn truncated_torrent_names_the_offset() {
    let dir = TempDir::new();
    let cut = GOLDEN.len() / 2;
    let path = dir.file("truncated.torrent", &GOLDEN[..cut]);
    let msg = expect_error(&path, false);
    assert_eq!(
        msg,
        format!("not a torrent: unexpected end of input at byte {cut}")
    );
    assert_eq!(
        expect_error(&path, true),
        msg,
        "--json reports errors the same way"
    );
}

#[test]
fn not_bencode() {
    let dir = TempDir::new();
    let path = dir.file("hello.torrent", b"hello world\n");
    assert_eq!(
        expect_error(&path, false),
        "not a torrent: unexpected byte 0x68 where a value should start at byte 0"
    );
    let path = dir.file("empty.torrent", b"");
    assert_eq!(
        expect_error(&path, false),
        "not a torrent: unexpected end of input at byte 0"
    );
    let path = dir.file("trailing.torrent", &[GOLDEN, b"x"].concat());
    assert_eq!(
        expect_error(&path, false),
        format!(
            "not a torrent: trailing data after the value at byte {}",
            GOLDEN.len()
        )
    );
}

#[test]
fn wrong_types_name_field_and_offset() {
    let dir = TempDir::new();
    // `piece length` as a byte string; the value starts at byte 56 of the file.
    let bytes = bencode_with_info(
        "d6:lengthi5e4:name1:a12:piece length3:abc6:pieces20:aaaaaaaaaaaaaaaaaaaae",
    );
    let at = bytes.windows(5).position(|w| w == b"3:abc").unwrap();
    let path = dir.file("types.torrent", &bytes);
    assert_eq!(
        expect_error(&path, false),
        format!("invalid torrent: field `piece length` at byte {at}: expected integer, found byte string")
    );
    let path = dir.file("list.torrent", b"li1ee");
    assert_eq!(
        expect_error(&path, false),
        "invalid torrent: field `torrent` at byte 0: expected dictionary, found list"
    );
    let path = dir.file("noinfo.torrent", b"d8:announce3:abce");
    assert_eq!(
        expect_error(&path, false),
        "invalid torrent: missing field `info`"
    );
    let bytes = bencode_with_info("d5:filesld6:lengthi1e4:pathl2:..eee4:name1:a12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaae");
    let path = dir.file("traversal.torrent", &bytes);
    let msg = expect_error(&path, false);
    assert!(
        msg.starts_with("invalid torrent: field `files[0].path` at byte "),
        "{msg}"
    );
    assert!(msg.ends_with("path traversal component: \"..\""), "{msg}");
}

#[test]
fn directory_missing_fifo_and_huge_files() {
    let dir = TempDir::new();
    let d = dir.0.to_str().unwrap().to_string();
    assert_eq!(
        expect_error(&d, false),
        "is a directory, not a torrent file"
    );
    let missing = dir.0.join("missing.torrent");
    assert_eq!(
        expect_error(missing.to_str().unwrap(), false),
        "no such file"
    );

    // A FIFO with no writer would block a naive open(); it must be refused at once.
    let fifo = dir.0.join("fifo.torrent");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .map(|s| s.success());
    assert!(matches!(made, Ok(true)), "mkfifo is needed for this test");
    assert_eq!(
        expect_error(fifo.to_str().unwrap(), false),
        "not a regular file"
    );

    // 64 MiB + 1 byte, sparse, so the test costs no disk.
    let big = dir.0.join("big.torrent");
    std::fs::File::create(&big)
        .unwrap()
        .set_len((64 << 20) + 1)
        .unwrap();
    let msg = expect_error(big.to_str().unwrap(), false);
    assert!(msg.starts_with("file too large (67108865 bytes"), "{msg}");
    assert!(Path::new(&big).exists());
}

#[test]
fn bad_magnets_and_hashes() {
    let cases = [
        ("magnet:?dn=x", "magnet link has no xt=urn:btih: or xt=urn:btmh: info-hash"),
        (
            "magnet:?xt=urn:btih:zz2fe1c06bba254a9dc9f519b335aa7c1367a88a",
            "bad info-hash `zz2fe1c06bba254a9dc9f519b335aa7c1367a88a`: invalid hex",
        ),
        (
            "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&x.pe=nohost",
            "bad peer address `nohost` in x.pe (expected ip:port or [ipv6]:port)",
        ),
        (
            "magnet:?xt=urn:btmh:1114c12fe1c06bba254a9dc9f519b335aa7c1367a88a",
            "bad info-hash `1114c12fe1c06bba254a9dc9f519b335aa7c1367a88a`: btmh must be a sha2-256 multihash (1220 + 64 hex)",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(expect_error(input, true), want, "{input}");
    }
}

#[test]
fn good_inputs_exit_zero() {
    let (code, out, err) = inspect(&["c12fe1c06bba254a9dc9f519b335aa7c1367a88a"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(
        out.contains("info-hash v1:  c12fe1c06bba254a9dc9f519b335aa7c1367a88a"),
        "{out}"
    );
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/torrents/v1-multi.torrent");
    let (code, out, _) = inspect(&[golden.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("tier 2"), "{out}");
    assert!(out.contains("multi/sub/b.bin"), "{out}");
}
