#![no_main]
//! uTP (`proto::utp`) on arbitrary datagrams: an initiator and the acceptor of its SYN talk
//! over a link the fuzzer runs (deliver, drop, duplicate, reorder, let time pass), with
//! forged datagrams mixed in (arbitrary bytes, or a plausible header with the right
//! connection id and numbers near the real ones, so they reach the state machine) and the
//! stream calls (write, read, close, reset) in between. Checks: never panics; every datagram
//! sent decodes as version 1 with the sender's connection id; buffers stay within their
//! bounds; `poll_transmit` runs dry; a closed connection waits on no timer; and once nothing
//! more arrives, the retransmission timer ends each connection or leaves nothing waiting.
use std::collections::VecDeque;

use libfuzzer_sys::fuzz_target;
use swarmscan_proto::utp::{
    decode, PacketType, UtpConnection, HEADER_LEN, RECV_BUFFER, SEND_BUFFER,
};

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> u16 {
        u16::from(self.u8().unwrap_or(0)) << 8 | u16::from(self.u8().unwrap_or(0))
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
}

/// A datagram `sender` produced is well-formed and names the right connection.
fn check_sent(sender: &UtpConnection, datagram: &[u8]) {
    let p = decode(datagram).expect("we only send decodable packets");
    let expected = if p.header.packet_type == PacketType::Syn {
        sender.recv_id()
    } else {
        sender.send_id()
    };
    assert_eq!(p.header.conn_id, expected);
    assert_eq!(datagram[0] & 0x0f, 1);
}

fn check_bounds(conn: &UtpConnection) {
    assert!(conn.readable_len() <= RECV_BUFFER);
    assert!(conn.unacked_bytes() <= SEND_BUFFER);
    if conn.is_closed() {
        assert_eq!(conn.next_timeout(), None);
    }
}

/// Sends everything due; the queue to the peer keeps at most 256 datagrams (a full link
/// drops).
fn pump(conn: &mut UtpConnection, now: u64, out: &mut VecDeque<Vec<u8>>) {
    for _ in 0..10_000 {
        let Some(d) = conn.poll_transmit(now) else {
            check_bounds(conn);
            return;
        };
        check_sent(conn, &d);
        if out.len() < 256 {
            out.push_back(d);
        }
    }
    panic!("poll_transmit never ran dry");
}

/// A datagram with a valid header for `to`, the fuzzer's type, payload and numbers near
/// those of `like` (a real datagram to `to`, or the SYN).
fn plausible(input: &mut Input<'_>, to: &UtpConnection, like: &[u8]) -> Vec<u8> {
    let kind = input.u8().unwrap_or(0);
    let len = usize::from(input.u8().unwrap_or(0)) * 8;
    let mut d = like[..HEADER_LEN].to_vec();
    d[0] = (kind % 5) << 4 | 1;
    d[1] = (kind >> 3) & 1; // maybe a selective ack follows in the fuzzer's bytes
    let id = if kind & 0x40 != 0 {
        to.send_id()
    } else {
        to.recv_id()
    };
    d[2..4].copy_from_slice(&id.to_be_bytes());
    let seq = u16::from_be_bytes([d[16], d[17]]).wrapping_add(input.u16() % 128);
    let ack = u16::from_be_bytes([d[18], d[19]]).wrapping_sub(input.u16() % 16);
    d[16..18].copy_from_slice(&seq.to_be_bytes());
    d[18..20].copy_from_slice(&ack.to_be_bytes());
    d.extend_from_slice(&input.bytes(len));
    d
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let (conn_id, a_seq, b_seq) = (input.u16(), input.u16(), input.u16());
    let mut now = 1_000_000u64;
    let (mut a, syn) = UtpConnection::connect(conn_id, a_seq, now);
    check_sent(&a, &syn);
    let (mut b, state) = UtpConnection::accept(&syn, b_seq, now).expect("our own SYN");
    check_sent(&b, &state);
    let mut to_a = VecDeque::from([state.clone()]);
    let mut to_b = VecDeque::new();
    // The latest real datagram each way, as a template for forged ones.
    let (mut last_to_a, mut last_to_b) = (state, syn);

    while let Some(op) = input.u8() {
        let for_a = op & 0x80 != 0;
        let (conn, queue, last) = if for_a {
            (&mut a, &mut to_a, &mut last_to_a)
        } else {
            (&mut b, &mut to_b, &mut last_to_b)
        };
        match op & 0x7f {
            0..=39 => {
                if let Some(d) = queue.pop_front() {
                    let _ = conn.on_datagram(&d, now);
                    *last = d;
                }
            }
            40..=49 => {
                queue.pop_front();
            }
            50..=54 => {
                if let Some(d) = queue.front().cloned() {
                    queue.push_back(d);
                }
            }
            55..=64 => {
                if queue.len() >= 2 {
                    queue.swap(0, 1);
                }
            }
            65..=69 => {
                let len = usize::from(input.u8().unwrap_or(0)) * 4;
                let forged = input.bytes(len);
                let _ = conn.on_datagram(&forged, now);
            }
            70..=84 => {
                let forged = plausible(&mut input, conn, last);
                let _ = conn.on_datagram(&forged, now);
            }
            85..=94 => {
                let n = usize::from(input.u16()) % 20_000;
                let bytes = vec![op; n];
                assert!(conn.write(&bytes) <= n);
            }
            95..=104 => {
                let mut out = Vec::new();
                assert!(conn.read(&mut out) <= RECV_BUFFER);
            }
            105..=109 => conn.close(),
            110..=124 => now += u64::from(input.u16()) * 200,
            _ => {
                if let Some(r) = conn.reset(now) {
                    check_sent(conn, &r);
                    queue.push_back(r);
                }
            }
        }
        pump(&mut a, now, &mut to_b);
        pump(&mut b, now, &mut to_a);
    }

    // Nothing arrives any more: the timers must end things.
    for (conn, out) in [(&mut a, &mut to_b), (&mut b, &mut to_a)] {
        let mut t = now;
        for _ in 0..64 {
            let Some(deadline) = conn.next_timeout() else {
                break;
            };
            t = t.max(deadline);
            pump(conn, t, out);
        }
        assert_eq!(
            conn.next_timeout(),
            None,
            "the timer ends the connection: {:?}",
            conn.state()
        );
    }
});
