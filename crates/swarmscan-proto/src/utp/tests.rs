use super::*;
use proptest::prelude::*;

const T0: u64 = 5_000_000_000;

fn header(packet_type: PacketType) -> Header {
    Header {
        packet_type,
        conn_id: 0x1234,
        timestamp_us: 0xdead_beef,
        timestamp_diff_us: 77,
        wnd_size: 65_536,
        seq_nr: 0xfffe,
        ack_nr: 3,
    }
}

fn packet(bytes: &[u8]) -> Packet<'_> {
    decode(bytes).expect("our own packet decodes")
}

#[test]
fn header_round_trips_with_and_without_selective_ack() {
    let mut out = Vec::new();
    encode(&header(PacketType::Data), None, b"payload", &mut out);
    assert_eq!(out.len(), HEADER_LEN + 7);
    assert_eq!(out[0], 0x01, "type 0, version 1");
    assert_eq!(out[1], 0, "no extension");
    let p = packet(&out);
    assert_eq!(p.header, header(PacketType::Data));
    assert_eq!(p.selective_ack, None);
    assert_eq!(p.payload, b"payload");

    let mut out = Vec::new();
    encode(
        &header(PacketType::State),
        Some(&[0b101, 0, 0, 0x80]),
        &[],
        &mut out,
    );
    assert_eq!(out[0], 0x21);
    assert_eq!(out[1], EXT_SELECTIVE_ACK);
    assert_eq!(&out[20..22], &[0, 4], "last extension, 4 bytes");
    let p = packet(&out);
    assert_eq!(p.selective_ack, Some(&[0b101u8, 0, 0, 0x80][..]));
    assert!(p.payload.is_empty());
}

#[test]
fn unknown_extensions_are_skipped_and_bad_headers_named() {
    // Extension 3 (libtorrent's close reason, 4 bytes) then a selective ack, then payload.
    let mut d = vec![0x01, 3];
    d.extend_from_slice(&[0; 18]);
    d.extend_from_slice(&[EXT_SELECTIVE_ACK, 4, 0, 0, 0, 9]);
    d.extend_from_slice(&[0, 4, 1, 2, 3, 4]);
    d.extend_from_slice(b"xy");
    let p = decode(&d).unwrap();
    assert_eq!(p.selective_ack, Some(&[1u8, 2, 3, 4][..]));
    assert_eq!(p.payload, b"xy");

    assert_eq!(decode(&d[..19]), Err(DecodeError::TooShort(19)));
    assert_eq!(
        decode(&d[..21]),
        Err(DecodeError::TruncatedExtension { at: 20 })
    );
    assert_eq!(
        decode(&d[..25]),
        Err(DecodeError::TruncatedExtension { at: 20 })
    );
    let mut v2 = d.clone();
    v2[0] = 0x02;
    assert_eq!(decode(&v2), Err(DecodeError::BadVersion(2)));
    let mut t5 = d.clone();
    t5[0] = 0x51;
    assert_eq!(decode(&t5), Err(DecodeError::BadType(5)));
    assert_eq!(
        DecodeError::BadType(5).to_string(),
        "uTP packet type 5 (types are 0 to 4)"
    );
}

#[test]
fn demux_tells_utp_from_krpc_and_udp_trackers() {
    let krpc = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
    assert_eq!(looks_like_utp(krpc), None);
    // A UDP tracker connect reply: action 0, transaction id, connection id.
    let tracker = [0u8, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9, 9, 9, 9, 9, 9, 0, 0, 0, 0];
    assert_eq!(looks_like_utp(&tracker), None);
    let (_, syn) = UtpConnection::connect(4242, 1, T0);
    assert_eq!(looks_like_utp(&syn), Some((PacketType::Syn, 4242)));
}

#[test]
fn connection_ids_follow_bep29_on_both_sides() {
    let (mut a, syn) = UtpConnection::connect(1000, 7, T0);
    assert_eq!((a.recv_id(), a.send_id()), (1000, 1001));
    let s = packet(&syn).header;
    assert_eq!(
        (s.packet_type, s.conn_id, s.seq_nr),
        (PacketType::Syn, 1000, 7)
    );
    assert_eq!(a.state(), State::SynSent);

    let (mut b, state) = UtpConnection::accept(&syn, 500, T0 + 10).unwrap();
    assert_eq!((b.recv_id(), b.send_id()), (1001, 1000));
    let st = packet(&state).header;
    assert_eq!(st.packet_type, PacketType::State);
    assert_eq!(st.conn_id, 1000, "the acceptor sends on the SYN's id");
    assert_eq!(st.ack_nr, 7, "acks the SYN");
    assert_eq!(st.seq_nr, 500, "its first data packet's number");
    assert_eq!(
        st.timestamp_diff_us, 10,
        "receive time minus the SYN's timestamp"
    );

    a.on_datagram(&state, T0 + 20).unwrap();
    assert_eq!(a.state(), State::Connected);
    assert_eq!(a.write(b"hello"), 5);
    let data = a.poll_transmit(T0 + 20).unwrap();
    let d = packet(&data).header;
    assert_eq!(
        (d.packet_type, d.conn_id, d.seq_nr, d.ack_nr),
        (PacketType::Data, 1001, 8, 499)
    );
    b.on_datagram(&data, T0 + 30).unwrap();
    let mut got = Vec::new();
    b.read(&mut got);
    assert_eq!(got, b"hello");
    assert_eq!(b.write(b"world"), 5);
    let reply = packet(&b.poll_transmit(T0 + 30).unwrap()).header;
    assert_eq!((reply.conn_id, reply.seq_nr, reply.ack_nr), (1000, 500, 8));
}

#[test]
fn packets_for_another_connection_or_acking_the_future_are_ignored() {
    let (mut a, syn) = UtpConnection::connect(1000, 7, T0);
    let (mut b, state) = UtpConnection::accept(&syn, 500, T0).unwrap();
    a.on_datagram(&state, T0).unwrap();
    // Wrong id.
    let mut other = Vec::new();
    encode(
        &Header {
            conn_id: 999,
            ..packet(&state).header
        },
        None,
        &[],
        &mut other,
    );
    assert_eq!(
        a.on_datagram(&other, T0),
        Err(PacketError::WrongConnection {
            got: 999,
            expected: 1000
        })
    );
    // Acks a packet B never sent.
    let mut ahead = Vec::new();
    encode(
        &Header {
            packet_type: PacketType::State,
            conn_id: 1001,
            timestamp_us: 1,
            timestamp_diff_us: 0,
            wnd_size: 1000,
            seq_nr: 9,
            ack_nr: 600,
        },
        None,
        &[],
        &mut ahead,
    );
    assert_eq!(
        b.on_datagram(&ahead, T0),
        Err(PacketError::AckAhead {
            ack_nr: 600,
            last_sent: 499
        })
    );
    assert_eq!(
        b.state(),
        State::SynReceived,
        "a bogus packet does not connect"
    );
}

#[test]
fn a_retransmitted_syn_gets_the_state_again() {
    let (_a, syn) = UtpConnection::connect(300, 40, T0);
    let (mut b, state) = UtpConnection::accept(&syn, 9, T0).unwrap();
    assert_eq!(b.poll_transmit(T0), None);
    b.on_datagram(&syn, T0 + 1_000_000).unwrap();
    let again = b.poll_transmit(T0 + 1_000_000).unwrap();
    let (h1, h2) = (packet(&state).header, packet(&again).header);
    assert_eq!(h2.packet_type, PacketType::State);
    assert_eq!(
        (h2.conn_id, h2.seq_nr, h2.ack_nr),
        (h1.conn_id, h1.seq_nr, h1.ack_nr)
    );
    // Another initiator's SYN is not ours.
    let (_c, other_syn) = UtpConnection::connect(301, 40, T0);
    assert_eq!(
        b.on_datagram(&other_syn, T0),
        Err(PacketError::Unexpected("ST_SYN"))
    );
}

#[test]
fn syn_is_retransmitted_with_backoff_then_times_out() {
    let (mut a, syn) = UtpConnection::connect(1, 1, T0);
    assert_eq!(a.next_timeout(), Some(T0 + INITIAL_RTO_US));
    assert_eq!(a.poll_transmit(T0 + INITIAL_RTO_US - 1), None);
    let mut times = vec![];
    let mut now = T0;
    for _ in 0..10 {
        let Some(t) = a.next_timeout() else { break };
        now = t;
        if let Some(d) = a.poll_transmit(now) {
            let h = packet(&d).header;
            assert_eq!(
                (h.packet_type, h.seq_nr, h.conn_id),
                (PacketType::Syn, 1, 1)
            );
            assert_eq!(d[HEADER_LEN..], syn[HEADER_LEN..]);
            times.push(now - T0);
        }
    }
    assert_eq!(times, [1_000_000, 3_000_000], "1 s, then doubled");
    assert_eq!(a.state(), State::Closed(CloseReason::TimedOut));
    assert_eq!(now - T0, 7_000_000);
    assert_eq!(a.next_timeout(), None);
}

#[test]
fn rto_follows_rtt_samples() {
    let (mut a, syn) = UtpConnection::connect(1, 1, T0);
    let (mut b, state) = UtpConnection::accept(&syn, 1, T0 + 40_000).unwrap();
    a.on_datagram(&state, T0 + 80_000).unwrap();
    assert_eq!(a.rtt_us(), Some(80_000));
    assert_eq!(
        a.rto_us(),
        MIN_RTO_US,
        "80 ms + 4 × 40 ms is below the floor"
    );
    let mut now = T0 + 80_000;
    for _ in 0..20 {
        a.write(&[1; 100]);
        let d = a.poll_transmit(now).unwrap();
        b.on_datagram(&d, now + 300_000).unwrap();
        let ack = b.poll_transmit(now + 300_000).unwrap();
        now += 600_000;
        a.on_datagram(&ack, now).unwrap();
    }
    let rtt = a.rtt_us().unwrap();
    assert!((550_000..=600_000).contains(&rtt), "{rtt}");
    assert!(a.rto_us() >= rtt && a.rto_us() <= MAX_RTO_US);
}

#[test]
fn timestamp_difference_is_our_receive_time_minus_their_timestamp() {
    let (mut a, syn) = UtpConnection::connect(1, 1, T0);
    let (b, state) = UtpConnection::accept(&syn, 1, T0 + 1234).unwrap();
    drop(b);
    let st = packet(&state).header;
    assert_eq!(st.timestamp_us, (T0 + 1234) as u32);
    assert_eq!(st.timestamp_diff_us, 1234);
    // The clock's low 32 bits wrap: the difference still comes out right.
    let now = (T0 | 0xffff_ffff) + 50;
    a.on_datagram(&state, now).unwrap();
    a.write(b"x");
    let d = packet(&a.poll_transmit(now).unwrap()).header;
    assert_eq!(d.timestamp_us, now as u32);
    assert_eq!(
        d.timestamp_diff_us,
        (now as u32).wrapping_sub(st.timestamp_us)
    );
}

/// Hand-made packets from a fake peer, to test the receiving side alone.
struct Peer {
    conn_id: u16,
    seq: u16,
    ack: u16,
}

impl Peer {
    fn packet(&self, packet_type: PacketType, seq_nr: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(
            &Header {
                packet_type,
                conn_id: self.conn_id,
                timestamp_us: 1,
                timestamp_diff_us: 0,
                wnd_size: 1 << 20,
                seq_nr,
                ack_nr: self.ack,
            },
            None,
            payload,
            &mut out,
        );
        out
    }
}

/// An initiator connected to a fake acceptor whose first data packet is `peer_seq`.
fn connected_initiator(peer_seq: u16) -> (UtpConnection, Peer) {
    let (mut a, syn) = UtpConnection::connect(10, 100, T0);
    let peer = Peer {
        conn_id: 10,
        seq: peer_seq,
        ack: 100,
    };
    let (_, state) = UtpConnection::accept(&syn, peer_seq, T0).unwrap();
    a.on_datagram(&state, T0).unwrap();
    assert!(a.is_connected());
    (a, peer)
}

#[test]
fn out_of_order_packets_are_reassembled_and_selectively_acked() {
    let (mut a, peer) = connected_initiator(65_534); // wraps after two packets
    let s = peer.seq;
    a.on_datagram(&peer.packet(PacketType::Data, s.wrapping_add(1), b"B"), T0)
        .unwrap();
    a.on_datagram(&peer.packet(PacketType::Data, s.wrapping_add(3), b"D"), T0)
        .unwrap();
    let ack = a.poll_transmit(T0).unwrap();
    let p = packet(&ack);
    assert_eq!(p.header.packet_type, PacketType::State);
    assert_eq!(p.header.ack_nr, s.wrapping_sub(1), "nothing in order yet");
    assert_eq!(
        p.selective_ack,
        Some(&[0b101u8, 0, 0, 0][..]),
        "s+1 and s+3"
    );
    assert_eq!(p.header.wnd_size as usize, RECV_BUFFER - 2);
    assert_eq!(a.readable_len(), 0);

    a.on_datagram(&peer.packet(PacketType::Data, s, b"A"), T0)
        .unwrap();
    a.on_datagram(&peer.packet(PacketType::Data, s, b"A"), T0)
        .unwrap(); // duplicate
    a.on_datagram(&peer.packet(PacketType::Data, s.wrapping_add(2), b"C"), T0)
        .unwrap();
    let p2 = a.poll_transmit(T0).unwrap();
    let p2 = packet(&p2);
    assert_eq!(p2.header.ack_nr, s.wrapping_add(3));
    assert_eq!(p2.selective_ack, None);
    let mut got = Vec::new();
    a.read(&mut got);
    assert_eq!(got, b"ABCD");
}

#[test]
fn fin_out_of_order_ends_the_stream_once_the_gap_fills() {
    let (mut a, peer) = connected_initiator(20);
    a.on_datagram(&peer.packet(PacketType::Fin, 21, &[]), T0)
        .unwrap();
    assert!(!a.is_eof());
    // Nothing after the FIN is taken.
    assert_eq!(
        a.on_datagram(&peer.packet(PacketType::Data, 22, b"late"), T0),
        Err(PacketError::AfterFin)
    );
    a.on_datagram(&peer.packet(PacketType::Data, 20, b"last"), T0)
        .unwrap();
    let mut got = Vec::new();
    a.read(&mut got);
    assert_eq!(got, b"last");
    assert!(a.is_eof());
    let ack = packet(&a.poll_transmit(T0).unwrap()).header;
    assert_eq!(ack.ack_nr, 21, "the FIN is acked");
}

#[test]
fn reset_closes_and_reset_sends_one() {
    let (mut a, peer) = connected_initiator(20);
    let mut b = a.clone();
    a.on_datagram(&peer.packet(PacketType::Reset, 20, &[]), T0)
        .unwrap();
    assert_eq!(a.state(), State::Closed(CloseReason::Reset));
    assert_eq!(a.poll_transmit(T0), None);
    assert_eq!(a.write(b"x"), 0);

    let r = b.reset(T0).unwrap();
    let h = packet(&r).header;
    assert_eq!((h.packet_type, h.conn_id), (PacketType::Reset, 11));
    assert_eq!(b.state(), State::Closed(CloseReason::Aborted));
    assert_eq!(b.reset(T0), None);
}

#[test]
fn unknown_connection_gets_a_reset() {
    let peer = Peer {
        conn_id: 77,
        seq: 5,
        ack: 0,
    };
    let r = reset_for_unknown(&peer.packet(PacketType::Data, 5, b"x"), 1, T0).unwrap();
    let h = packet(&r).header;
    assert_eq!(
        (h.packet_type, h.conn_id, h.ack_nr),
        (PacketType::Reset, 77, 5)
    );
    assert_eq!(
        reset_for_unknown(&peer.packet(PacketType::Reset, 5, &[]), 1, T0),
        None
    );
    assert_eq!(reset_for_unknown(b"d1:y1:qe", 1, T0), None);
}

#[test]
fn hostile_peer_cannot_grow_buffers_past_their_bounds() {
    let (mut a, peer) = connected_initiator(1000);
    let big = vec![7u8; 4000];
    // Far ahead: refused.
    assert_eq!(
        a.on_datagram(
            &peer.packet(PacketType::Data, 999 + REORDER_PACKETS + 1, &big),
            T0
        ),
        Err(PacketError::BeyondWindow {
            seq_nr: 999 + REORDER_PACKETS + 1,
            ack_nr: 999
        })
    );
    // Every slot of the reorder window with a big packet, the first missing.
    for i in 1..REORDER_PACKETS {
        a.on_datagram(&peer.packet(PacketType::Data, 1000 + i, &big), T0)
            .unwrap();
    }
    let wnd = packet(&a.poll_transmit(T0).unwrap()).header.wnd_size as usize;
    assert!(wnd < 4000, "{wnd}");
    // The gap fills: everything held fits in the receive buffer.
    a.on_datagram(&peer.packet(PacketType::Data, 1000, b"first"), T0)
        .unwrap();
    let mut got = Vec::new();
    a.read(&mut got);
    assert!(got.len() <= RECV_BUFFER, "{}", got.len());
    assert_eq!(&got[..5], b"first");
    assert_eq!(got.len(), 5 + (RECV_BUFFER - 5) / 4000 * 4000);
    // And the write side never takes more than its buffer.
    assert_eq!(a.write(&vec![0; SEND_BUFFER + 10]), SEND_BUFFER);
    assert_eq!(a.write(b"more"), 0);
}

#[test]
fn bytes_in_flight_count_against_the_send_buffer() {
    // Found by the fuzz target: written bytes that went out in packets left room for more
    // writes, so queued + in flight grew past the send buffer.
    let (mut a, _peer) = connected_initiator(1);
    assert_eq!(a.write(&vec![0; SEND_BUFFER]), SEND_BUFFER);
    let sent = std::iter::from_fn(|| a.poll_transmit(T0)).count();
    assert!(sent > 1, "{sent}");
    assert_eq!(a.write(&[1; 100]), 0, "in flight still counts until acked");
    assert_eq!(a.unacked_bytes(), SEND_BUFFER);
}

#[test]
fn reading_a_full_window_sends_a_window_update() {
    let (mut a, peer) = connected_initiator(1);
    let chunk = vec![1u8; 4096];
    for i in 0..16u16 {
        a.on_datagram(&peer.packet(PacketType::Data, 1 + i, &chunk), T0)
            .unwrap();
    }
    let shut = packet(&a.poll_transmit(T0).unwrap()).header;
    assert_eq!(shut.wnd_size, 0);
    assert_eq!(a.poll_transmit(T0), None);
    let mut got = Vec::new();
    assert_eq!(a.read(&mut got), RECV_BUFFER);
    let open = packet(&a.poll_transmit(T0).unwrap()).header;
    assert_eq!(open.packet_type, PacketType::State);
    assert_eq!(open.wnd_size as usize, RECV_BUFFER);
}

#[test]
fn three_duplicate_acks_resend_the_missing_packet_at_once() {
    let (mut a, mut peer) = connected_initiator(1);
    a.write(&vec![5u8; MAX_PAYLOAD * 4]);
    let sent: Vec<Vec<u8>> = std::iter::from_fn(|| a.poll_transmit(T0)).collect();
    assert_eq!(sent.len(), 4);
    let first = packet(&sent[0]).header.seq_nr;
    // The peer got packets 2..4 but not 1: its acks stay at the SYN (100) with a SACK.
    peer.ack = first.wrapping_sub(1);
    let mut state = Vec::new();
    encode(
        &Header {
            packet_type: PacketType::State,
            conn_id: 10,
            timestamp_us: 1,
            timestamp_diff_us: 0,
            wnd_size: 1 << 20,
            seq_nr: peer.seq,
            ack_nr: peer.ack,
        },
        Some(&[0b111, 0, 0, 0]),
        &[],
        &mut state,
    );
    a.on_datagram(&state, T0 + 1000).unwrap();
    let resent = a.poll_transmit(T0 + 1000).unwrap();
    assert_eq!(packet(&resent).header.seq_nr, first);
    assert_eq!(packet(&resent).payload, packet(&sent[0]).payload);
    assert_eq!(a.poll_transmit(T0 + 1000), None, "once, not again");
    assert_eq!(a.unacked_bytes(), MAX_PAYLOAD);
}

/// Deterministic xorshift64* for the simulated network.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Net {
    loss_pct: u64,
    dup_pct: u64,
    /// Extra delay drawn per packet, so later packets overtake earlier ones.
    jitter_us: u64,
}

struct Outcome {
    a_got: Vec<u8>,
    b_got: Vec<u8>,
    a_state: State,
    b_state: State,
    datagrams: usize,
}

/// An initiator `a` and an acceptor `b` over a simulated lossy link; each writes its data
/// then closes; runs until both are closed or the step bound.
fn simulate(seed: u64, net: &Net, a_seq: u16, b_seq: u16, a_data: &[u8], b_data: &[u8]) -> Outcome {
    let mut rng = Rng(seed | 1);
    let mut now = T0;
    // (deliver at, to b?, datagram)
    let mut wire: Vec<(u64, bool, Vec<u8>)> = Vec::new();
    let mut datagrams = 0;
    let mut send =
        |rng: &mut Rng, now: u64, to_b: bool, d: Vec<u8>, wire: &mut Vec<(u64, bool, Vec<u8>)>| {
            datagrams += 1;
            if rng.below(100) < net.loss_pct {
                return;
            }
            let at = now + 20_000 + rng.below(net.jitter_us + 1);
            if rng.below(100) < net.dup_pct {
                wire.push((at + rng.below(net.jitter_us + 1), to_b, d.clone()));
            }
            wire.push((at, to_b, d));
        };
    let (mut a, syn) = UtpConnection::connect(0x7777, a_seq, now);
    send(&mut rng, now, true, syn, &mut wire);
    let mut b: Option<UtpConnection> = None;
    let (mut a_written, mut b_written) = (0, 0);
    let (mut a_got, mut b_got) = (Vec::new(), Vec::new());
    for _ in 0..200_000 {
        // Each side writes what fits, reads what came, closes once all is written.
        a_written += a.write(&a_data[a_written..]);
        if a_written == a_data.len() {
            a.close();
        }
        a.read(&mut a_got);
        while let Some(d) = a.poll_transmit(now) {
            send(&mut rng, now, true, d, &mut wire);
        }
        if let Some(b) = b.as_mut() {
            b_written += b.write(&b_data[b_written..]);
            if b_written == b_data.len() {
                b.close();
            }
            b.read(&mut b_got);
            while let Some(d) = b.poll_transmit(now) {
                send(&mut rng, now, false, d, &mut wire);
            }
        }
        let done = a.is_closed() && b.as_ref().is_some_and(|b| b.is_closed());
        if done && wire.is_empty() {
            break;
        }
        let next_wire = wire.iter().map(|w| w.0).min();
        let next_timer = [a.next_timeout(), b.as_ref().and_then(|b| b.next_timeout())]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next_wire.into_iter().chain(next_timer).min() else {
            break;
        };
        now = now.max(next);
        let (due, later): (Vec<_>, Vec<_>) = wire.drain(..).partition(|w| w.0 <= now);
        wire = later;
        for (_, to_b, d) in due {
            if to_b {
                match b.as_mut() {
                    Some(b) => {
                        let _ = b.on_datagram(&d, now);
                    }
                    None => {
                        let (conn, state) = UtpConnection::accept(&d, b_seq, now).unwrap();
                        b = Some(conn);
                        send(&mut rng, now, false, state, &mut wire);
                    }
                }
            } else {
                let _ = a.on_datagram(&d, now);
            }
        }
    }
    a.read(&mut a_got);
    let b = b.expect("the SYN got through");
    let mut b = b;
    b.read(&mut b_got);
    Outcome {
        a_got,
        b_got,
        a_state: a.state(),
        b_state: b.state(),
        datagrams,
    }
}

/// Equal byte strings; on failure says where they part instead of printing them.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes, want {}, first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
}

fn probe_like_data(seed: u64) -> (Vec<u8>, Vec<u8>) {
    // A probe's handshake out, a few kilobytes back.
    let mut rng = Rng(seed.wrapping_mul(31) | 1);
    let request: Vec<u8> = (0..300).map(|_| rng.next() as u8).collect();
    let reply: Vec<u8> = (0..20_000).map(|_| rng.next() as u8).collect();
    (request, reply)
}

#[test]
fn clean_link_transfers_both_ways_and_closes() {
    let (req, rep) = probe_like_data(1);
    let net = Net {
        loss_pct: 0,
        dup_pct: 0,
        jitter_us: 0,
    };
    let o = simulate(1, &net, 1, 30_000, &req, &rep);
    assert_same(&o.b_got, &req, "o.b_got");
    assert_same(&o.a_got, &rep, "o.a_got");
    assert_eq!(o.a_state, State::Closed(CloseReason::Finished));
    assert_eq!(o.b_state, State::Closed(CloseReason::Finished));
    // SYN, STATE, one request packet, 17 reply packets, two FINs and a few acks.
    assert!(o.datagrams < 40, "{}", o.datagrams);
}

#[test]
fn lossy_reordering_duplicating_link_still_delivers_everything() {
    let net = Net {
        loss_pct: 5,
        dup_pct: 5,
        jitter_us: 30_000,
    };
    for seed in 1..=30 {
        let (req, rep) = probe_like_data(seed);
        let o = simulate(seed, &net, seed as u16 * 2000, 65_530, &req, &rep);
        assert_same(&o.b_got, &req, &format!("o.b_got seed {seed}"));
        assert_same(&o.a_got, &rep, &format!("o.a_got seed {seed}"));
        assert_eq!(
            o.a_state,
            State::Closed(CloseReason::Finished),
            "seed {seed}"
        );
        assert_eq!(
            o.b_state,
            State::Closed(CloseReason::Finished),
            "seed {seed}"
        );
    }
}

#[test]
fn sequence_numbers_wrap_around() {
    // Both sides start just below 65535 and send enough packets to cross zero.
    let net = Net {
        loss_pct: 10,
        dup_pct: 0,
        jitter_us: 50_000,
    };
    for seed in 1..=10 {
        let (req, _) = probe_like_data(seed);
        let big: Vec<u8> = req.iter().cycle().take(MAX_PAYLOAD * 40).copied().collect();
        let o = simulate(seed, &net, 65_520, 65_535, &big, &big);
        assert_same(&o.a_got, &big, &format!("o.a_got seed {seed}"));
        assert_same(
            &o.b_got,
            &big,
            &format!("o.b_got seed {seed} {:?} {:?}", o.a_state, o.b_state),
        );
    }
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(p) = decode(&bytes) {
            prop_assert!(p.payload.len() + HEADER_LEN <= bytes.len());
            prop_assert_eq!(looks_like_utp(&bytes), Some((p.header.packet_type, p.header.conn_id)));
        } else {
            prop_assert_eq!(looks_like_utp(&bytes), None);
        }
    }

    #[test]
    fn encode_then_decode_is_identity(
        t in 0u8..5, conn_id: u16, ts: u32, diff: u32, wnd: u32, seq: u16, ack: u16,
        sack in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        payload in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let h = Header {
            packet_type: PacketType::from_u8(t).unwrap(),
            conn_id, timestamp_us: ts, timestamp_diff_us: diff, wnd_size: wnd,
            seq_nr: seq, ack_nr: ack,
        };
        let mut out = Vec::new();
        encode(&h, sack.as_deref(), &payload, &mut out);
        let p = decode(&out).unwrap();
        prop_assert_eq!(p.header, h);
        prop_assert_eq!(p.selective_ack, sack.as_deref());
        prop_assert_eq!(p.payload, &payload[..]);
    }

    #[test]
    fn arbitrary_datagrams_keep_both_sides_within_bounds(
        datagrams in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..1500), any::<u16>(), any::<u16>(), 0u64..3_000_000),
            0..40),
    ) {
        let (mut a, syn) = UtpConnection::connect(10, 100, T0);
        let (mut b, _) = UtpConnection::accept(&syn, 500, T0).unwrap();
        a.write(&[1; 3000]);
        b.write(&[2; 3000]);
        let mut now = T0;
        for (mut d, seq_off, ack_off, dt) in datagrams {
            now += dt;
            // Give half the inputs a plausible header so they reach the state machine.
            if d.len() >= HEADER_LEN && seq_off % 2 == 0 {
                d[0] = (d[0] % 5) << 4 | 1;
                d[1] %= 2;
                d[2..4].copy_from_slice(&[0, 10 + (seq_off % 3 == 0) as u8]);
                d[16..18].copy_from_slice(&seq_off.wrapping_add(500).to_be_bytes());
                d[18..20].copy_from_slice(&ack_off.wrapping_add(100).to_be_bytes());
            }
            for conn in [&mut a, &mut b] {
                let _ = conn.on_datagram(&d, now);
                let mut sent = 0;
                while let Some(out) = conn.poll_transmit(now) {
                    prop_assert!(decode(&out).is_ok());
                    sent += 1;
                    prop_assert!(sent < 100, "poll_transmit never runs dry");
                }
                prop_assert!(conn.readable_len() + conn.reorder_bytes <= RECV_BUFFER);
                prop_assert!(conn.reorder.len() <= usize::from(REORDER_PACKETS));
                prop_assert!(conn.unacked_bytes() <= SEND_BUFFER);
                let mut out = Vec::new();
                conn.read(&mut out);
            }
        }
    }
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Replays a recorded exchange (format in tests/data/utp/README.md): the same calls with
/// the same datagrams and times must give the same results and byte-identical replies.
/// Returns the bytes read and the meta line's info-hash and piece count.
fn replay(trace: &str) -> (Vec<u8>, [u8; 20], u32) {
    let mut conn: Option<UtpConnection> = None;
    let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
    let mut read = Vec::new();
    let (mut info_hash, mut pieces) = ([0u8; 20], 0);
    let (mut sent, mut received) = (0, 0);
    for (n, line) in trace.lines().enumerate() {
        let at = format!("trace line {}: {line:.60}", n + 1);
        let words: Vec<&str> = line.split(' ').collect();
        match words[0] {
            "meta" => {
                for w in &words[1..] {
                    match w.split_once('=') {
                        Some(("info_hash", h)) => info_hash = unhex(h).try_into().unwrap(),
                        Some(("pieces", p)) => pieces = p.parse().unwrap(),
                        _ => {}
                    }
                }
            }
            "connect" => {
                let (c, syn) = UtpConnection::connect(
                    words[1].parse().unwrap(),
                    words[2].parse().unwrap(),
                    words[3].parse().unwrap(),
                );
                conn = Some(c);
                pending.push_back(syn);
            }
            "accept" => {
                let syn = unhex(words[3]);
                let (c, state) = UtpConnection::accept(
                    &syn,
                    words[1].parse().unwrap(),
                    words[2].parse().unwrap(),
                )
                .expect(&at);
                conn = Some(c);
                pending.push_back(state);
            }
            "out" => {
                let c = conn.as_mut().expect(&at);
                let ours = pending
                    .pop_front()
                    .or_else(|| c.poll_transmit(words[1].parse().unwrap()))
                    .expect(&at);
                assert_eq!(crate::hex::encode(&ours), words[2], "{at}");
                sent += 1;
            }
            "in" => {
                let c = conn.as_mut().expect(&at);
                let datagram = unhex(words[2]);
                let h = decode(&datagram).expect(&at).header;
                assert_eq!(h.conn_id, c.recv_id(), "{at}");
                let result = match c.on_datagram(&datagram, words[1].parse().unwrap()) {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("ignored:{e}"),
                };
                assert_eq!(result, words[3..].join(" "), "{at}");
                received += 1;
            }
            "write" => {
                let bytes = unhex(words[1]);
                assert_eq!(conn.as_mut().expect(&at).write(&bytes), bytes.len(), "{at}");
            }
            "read" => {
                let n = conn.as_mut().expect(&at).read(&mut read);
                assert_eq!(n.to_string(), words[1], "{at}");
            }
            "close" => conn.as_mut().expect(&at).close(),
            "state" => {
                assert_eq!(format!("{:?}", conn.as_ref().expect(&at).state()), words[1]);
            }
            other => panic!("{at}: unknown trace line {other:?}"),
        }
    }
    assert!(
        sent >= 4 && received >= 4,
        "a whole exchange: {sent} out, {received} in"
    );
    (read, info_hash, pieces)
}

/// The peer's handshake info-hash and its bitfield's set bits, from the bytes read.
fn handshake_and_bitfield(bytes: &[u8]) -> ([u8; 20], Option<u32>, Vec<&'static str>) {
    use crate::peer_wire::{Message, MessageReader};
    let mut reader = MessageReader::default();
    reader.feed(bytes);
    let hs = reader.read_handshake().unwrap().expect("a whole handshake");
    let mut names = Vec::new();
    let mut set = None;
    while let Some(m) = reader.read_message().unwrap() {
        names.push(m.name());
        if let Message::Bitfield(bits) = m {
            set = Some(bits.iter().map(|b| b.count_ones()).sum());
        }
    }
    assert!(reader.pending().is_empty());
    (hs.info_hash, set, names)
}

#[test]
fn replay_outgoing_exchange_with_libtorrent() {
    let trace = include_str!("../../../../tests/data/utp/outgoing.trace");
    let (read, info_hash, pieces) = replay(trace);
    let (peer_hash, bitfield_bits, names) = handshake_and_bitfield(&read);
    assert_eq!(peer_hash, info_hash);
    assert_eq!(
        bitfield_bits,
        Some(pieces),
        "a seeder's full bitfield: {names:?}"
    );
    assert!(names.contains(&"extended"), "{names:?}");
    assert!(trace.ends_with("state Closed(Finished)\n"));
}

#[test]
fn replay_incoming_exchange_with_libtorrent() {
    let trace = include_str!("../../../../tests/data/utp/incoming.trace");
    let (read, info_hash, pieces) = replay(trace);
    let (peer_hash, bitfield_bits, _) = handshake_and_bitfield(&read);
    assert_eq!(peer_hash, info_hash);
    assert_eq!(bitfield_bits, Some(pieces));
    // Our numbers started at 65535: libtorrent acked our FIN as packet 0.
    assert!(trace.contains("accept 65535 "));
    let acks: Vec<u16> = trace
        .lines()
        .filter_map(|l| l.strip_prefix("in "))
        .map(|l| {
            decode(&unhex(l.split(' ').nth(1).unwrap()))
                .unwrap()
                .header
                .ack_nr
        })
        .collect();
    assert_eq!(acks.last(), Some(&0), "{acks:?}");
    assert!(acks.contains(&65535), "{acks:?}");
}

#[test]
fn replay_notices_a_changed_reply() {
    // The replay is a real check: one of our recorded replies altered no longer matches.
    let trace = include_str!("../../../../tests/data/utp/outgoing.trace");
    let line = trace.lines().find(|l| l.starts_with("out ")).unwrap();
    let mut altered = line.to_string();
    // The last hex digit of the SYN (its ack_nr field).
    let last = altered.pop().unwrap();
    altered.push(if last == '0' { '1' } else { '0' });
    let tampered = trace.replacen(line, &altered, 1);
    let result = std::panic::catch_unwind(|| replay(&tampered));
    assert!(result.is_err());
}
