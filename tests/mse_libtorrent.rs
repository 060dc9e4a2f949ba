//! MSE/PE against a real client: libtorrent 2.1.1 (tests/data/lt_mse_peer.py) with encryption
//! forced, on loopback. We are the initiator towards a seeder and the responder to a leecher,
//! with RC4 and with plaintext selected; after the handshake the BitTorrent stream through
//! our `MseStream` must parse: libtorrent's handshake, extension handshake, have_all.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use swarmscan::proto::mse::{
    self, Crypto, CryptoSet, IncomingKind, Initiator, MseStream, Progress, Responder,
};
use swarmscan::proto::peer_wire::ext::{ExtHandshake, UT_METADATA};
use swarmscan::proto::peer_wire::{encode_handshake, Handshake, Message, MessageReader, Reserved};

const OUR_PEER_ID: &[u8; 20] = b"-SW0100-msetest00001";
const OUR_UT_METADATA: u8 = 3;

mod common;
use common::python_with_libtorrent as python;

/// The libtorrent process; killed and reaped on every path (including panics).
struct LtPeer {
    child: Child,
    stdin: Option<ChildStdin>,
    info: serde_json::Value,
}

impl LtPeer {
    fn spawn(args: &[&str]) -> LtPeer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/lt_mse_peer.py");
        let mut child = Command::new(python())
            .args(["-W", "ignore", script])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start lt_mse_peer.py");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let mut peer = LtPeer {
            child,
            stdin,
            info: serde_json::Value::Null,
        };
        // The script exits by itself within 60 s, so this read is bounded too.
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        peer.info = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("lt_mse_peer.py printed {line:?}: {e}"));
        peer
    }

    fn info_hash(&self) -> [u8; 20] {
        swarmscan::proto::hex::decode_array(self.info["info_hash"].as_str().unwrap()).unwrap()
    }
}

impl Drop for LtPeer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn random_u64() -> u64 {
    RandomState::new().build_hasher().finish()
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        out.extend_from_slice(&random_u64().to_le_bytes());
    }
    out.truncate(n);
    out
}

fn random_key() -> [u8; 20] {
    random_bytes(20).try_into().unwrap()
}

fn random_pad() -> Vec<u8> {
    random_bytes(random_u64() as usize % (mse::MAX_PAD_LEN + 1))
}

fn read_some(sock: &mut TcpStream, deadline: Instant, what: &str) -> Vec<u8> {
    assert!(Instant::now() < deadline, "timed out waiting for {what}");
    let mut buf = [0u8; 16384];
    match sock.read(&mut buf) {
        Ok(0) => panic!("libtorrent closed the connection while we waited for {what}"),
        Ok(n) => buf[..n].to_vec(),
        Err(e) => panic!("reading {what}: {e}"),
    }
}

/// What we learned from libtorrent's BitTorrent stream.
struct Seen {
    handshake: Handshake,
    client: String,
    ut_metadata: Option<u8>,
    have_all_or_bitfield: bool,
    /// Every message parsed so far, re-encoded.
    earlier: Vec<Vec<u8>>,
    /// The parser, holding whatever followed.
    reader: MessageReader,
}

/// Decrypts and parses libtorrent's stream until its handshake, extension handshake and (if
/// `want_have`) have_all/bitfield arrived. `first` is already decrypted.
fn read_bt_stream(
    sock: &mut TcpStream,
    stream: &mut MseStream,
    first: &[u8],
    want_have: bool,
) -> Seen {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut reader = MessageReader::default();
    reader.feed(first);
    let mut handshake = None;
    let (mut client, mut ut_metadata, mut have) = (None, None, false);
    let mut earlier = Vec::new();
    loop {
        if handshake.is_none() {
            handshake = reader
                .read_handshake()
                .expect("libtorrent's handshake parses");
        }
        if handshake.is_some() {
            while let Some(m) = reader.read_message().expect("libtorrent's messages parse") {
                earlier.push(m.to_vec());
                match m {
                    Message::Extended { ext_id: 0, payload } => {
                        let ext = ExtHandshake::decode(payload).expect("extension handshake");
                        client = Some(ext.client().unwrap_or("").to_string());
                        ut_metadata = ext.id_of(UT_METADATA);
                    }
                    Message::HaveAll | Message::Bitfield(_) => have = true,
                    _ => {}
                }
            }
        }
        if handshake.is_some() && client.is_some() && (have || !want_have) {
            break;
        }
        let mut chunk = read_some(sock, deadline, "libtorrent's BitTorrent messages");
        stream.decrypt(&mut chunk);
        reader.feed(&chunk);
    }
    Seen {
        handshake: handshake.unwrap(),
        client: client.unwrap(),
        ut_metadata,
        have_all_or_bitfield: have,
        earlier,
        reader,
    }
}

/// Reads on until a message matching `want` arrives, or finds it among those `seen` parsed
/// already (proof that libtorrent understood what we sent through the stream).
fn wait_for_message(
    sock: &mut TcpStream,
    stream: &mut MseStream,
    seen: &mut Seen,
    what: &str,
    want: impl Fn(&Message) -> bool,
) {
    if seen
        .earlier
        .iter()
        .any(|raw| want(&swarmscan::proto::peer_wire::decode(raw).unwrap().0))
    {
        return;
    }
    let reader = &mut seen.reader;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(m) = reader.read_message().expect("libtorrent's messages parse") {
            if want(&m) {
                return;
            }
        }
        let mut chunk = read_some(sock, deadline, what);
        stream.decrypt(&mut chunk);
        reader.feed(&chunk);
    }
}

fn our_handshake(info_hash: &[u8; 20]) -> Vec<u8> {
    let reserved = Reserved::NONE.with_extended(true).with_fast(true);
    encode_handshake(info_hash, OUR_PEER_ID, reserved).to_vec()
}

fn our_ext_handshake() -> Vec<u8> {
    let d = format!("d1:md11:ut_metadatai{OUR_UT_METADATA}ee1:v13:swarmscan-msee");
    let d = d.as_bytes();
    let mut m = ((d.len() + 2) as u32).to_be_bytes().to_vec();
    m.extend_from_slice(&[20, 0]);
    m.extend_from_slice(d);
    m
}

/// Connect to a forced-encryption libtorrent seeder as the MSE initiator.
fn initiate_to_seeder(level: &str, provide: CryptoSet, expect: Crypto) {
    let lt = LtPeer::spawn(&["seed", "--level", level]);
    let info_hash = lt.info_hash();
    let port = lt.info["port"].as_u64().unwrap() as u16;
    let mut sock = TcpStream::connect(("127.0.0.1", port)).expect("connect to libtorrent");
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut init = Initiator::new(
        info_hash,
        random_key(),
        random_pad(),
        random_pad(),
        provide,
        our_handshake(&info_hash),
    )
    .unwrap();
    let mut out = Vec::new();
    init.start(&mut out);
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        sock.write_all(&out).unwrap();
        out.clear();
        let chunk = read_some(&mut sock, deadline, "libtorrent's MSE handshake");
        match init
            .on_bytes(&chunk, &mut out)
            .expect("MSE handshake with libtorrent")
        {
            Progress::NeedMore => {}
            Progress::Done(d) => break d,
        }
    };
    assert!(out.is_empty());
    assert_eq!(done.crypto, expect);
    let mut stream = done.stream;
    let mut ext = our_ext_handshake();
    stream.encrypt(&mut ext);
    sock.write_all(&ext).unwrap();
    let mut seen = read_bt_stream(&mut sock, &mut stream, &done.payload, true);
    assert_eq!(seen.handshake.info_hash, info_hash);
    assert!(
        seen.handshake.peer_id.starts_with(b"-LT2110-"),
        "{:?}",
        seen.handshake.peer_id
    );
    assert!(seen.handshake.reserved.extended());
    assert!(
        seen.client.starts_with("libtorrent/2.1.1"),
        "{}",
        seen.client
    );
    assert!(seen.have_all_or_bitfield);
    // Ask for metadata piece 0 through the stream: the answer must use our ut_metadata id.
    let lt_ut_metadata = seen.ut_metadata.expect("libtorrent advertises ut_metadata");
    let req = b"d8:msg_typei0e5:piecei0ee";
    let mut msg = ((req.len() + 2) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&[20, lt_ut_metadata]);
    msg.extend_from_slice(req);
    stream.encrypt(&mut msg);
    sock.write_all(&msg).unwrap();
    wait_for_message(&mut sock, &mut stream, &mut seen, "ut_metadata data", |m| {
        matches!(m, Message::Extended { ext_id: OUR_UT_METADATA, payload }
            if payload.starts_with(b"d8:msg_typei1e"))
    });
}

/// Let a forced-encryption libtorrent leecher connect to us; we are the MSE responder.
fn respond_to_leecher(level: &str, allowed: CryptoSet, prefer: Crypto, expect: Crypto) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let lt = LtPeer::spawn(&["leech", "--level", level, "--connect", &port]);
    let info_hash = lt.info_hash();
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sock = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "libtorrent never connected");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut resp = Responder::new(random_key(), random_pad(), random_pad(), allowed, prefer)
        .unwrap()
        .with_max_initial_payload(1024);
    let mut out = Vec::new();
    let mut first = true;
    let known = [info_hash];
    let done = loop {
        let chunk = read_some(&mut sock, deadline, "libtorrent's MSE handshake");
        if first {
            // A forced-encryption initiator never starts with the plaintext header.
            assert_ne!(mse::classify_incoming(&chunk), IncomingKind::Plaintext);
            first = false;
        }
        let progress = resp
            .on_bytes(&chunk, &mut out, mse::lookup_in(&known))
            .expect("MSE handshake with libtorrent");
        sock.write_all(&out).unwrap();
        out.clear();
        if let Progress::Done(d) = progress {
            break d;
        }
    };
    assert_eq!(done.info_hash, info_hash);
    assert_eq!(done.crypto, expect);
    eprintln!(
        "libtorrent as initiator: IA {} bytes, {} payload bytes with its last handshake packet",
        done.initial_payload.len(),
        done.payload.len()
    );
    let mut stream = done.stream;
    let mut reply = our_handshake(&info_hash);
    reply.extend_from_slice(&our_ext_handshake());
    reply.extend_from_slice(&Message::HaveAll.to_vec());
    stream.encrypt(&mut reply);
    sock.write_all(&reply).unwrap();
    let mut first_bytes = done.initial_payload;
    first_bytes.extend_from_slice(&done.payload);
    let mut seen = read_bt_stream(&mut sock, &mut stream, &first_bytes, false);
    assert_eq!(seen.handshake.info_hash, info_hash);
    assert!(
        seen.handshake.peer_id.starts_with(b"-LT2110-"),
        "{:?}",
        seen.handshake.peer_id
    );
    assert!(
        seen.client.starts_with("libtorrent/2.1.1"),
        "{}",
        seen.client
    );
    assert!(seen.ut_metadata.is_some());
    // We claimed to be a seed (have_all): the leecher must say it is interested.
    wait_for_message(&mut sock, &mut stream, &mut seen, "interested", |m| {
        *m == Message::Interested
    });
    drop(lt);
}

/// The control: with encryption forced, a plaintext BitTorrent handshake gets no answer.
#[test]
fn forced_libtorrent_seeder_drops_plaintext_handshake() {
    let lt = LtPeer::spawn(&["seed", "--level", "both"]);
    let info_hash = lt.info_hash();
    let port = lt.info["port"].as_u64().unwrap() as u16;
    let mut sock = TcpStream::connect(("127.0.0.1", port)).expect("connect to libtorrent");
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.write_all(&our_handshake(&info_hash)).unwrap();
    let mut buf = [0u8; 1024];
    let got = match sock.read(&mut buf) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
        Err(e) => panic!("expected libtorrent to close the connection, got {e}"),
    };
    assert_eq!(
        got,
        0,
        "libtorrent answered a plaintext handshake: {:?}",
        &buf[..got]
    );
}

#[test]
fn initiator_rc4_to_forced_libtorrent_seeder() {
    initiate_to_seeder("rc4", CryptoSet::BOTH, Crypto::Rc4);
}

#[test]
fn initiator_plaintext_to_forced_libtorrent_seeder() {
    initiate_to_seeder("both", CryptoSet::PLAINTEXT, Crypto::Plaintext);
}

#[test]
fn responder_rc4_for_forced_libtorrent_leecher() {
    respond_to_leecher("rc4", CryptoSet::BOTH, Crypto::Plaintext, Crypto::Rc4);
}

#[test]
fn responder_plaintext_for_forced_libtorrent_leecher() {
    respond_to_leecher(
        "both",
        CryptoSet::BOTH,
        Crypto::Plaintext,
        Crypto::Plaintext,
    );
}
