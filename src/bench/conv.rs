//! `BenchConversation`: send a BitTorrent handshake, read the peer's handshake and bitfield,
//! finish. A stand-in for the real probe logic with the same shape of work.

use crate::engine::{Conversation, Millis, Verdict};

/// Length of a BitTorrent handshake.
pub const HANDSHAKE_LEN: usize = 68;
const PSTR: &[u8; 20] = b"\x13BitTorrent protocol";

/// Builds a handshake for `info_hash` and `peer_id`.
pub fn handshake(info_hash: &[u8; 20], peer_id: &[u8; 20]) -> [u8; HANDSHAKE_LEN] {
    let mut hs = [0u8; HANDSHAKE_LEN];
    hs[..20].copy_from_slice(PSTR);
    // Reserved: extension protocol (BEP 10), fast extension (BEP 6), DHT (BEP 5).
    hs[25] = 0x10;
    hs[27] = 0x05;
    hs[28..48].copy_from_slice(info_hash);
    hs[48..68].copy_from_slice(peer_id);
    hs
}

/// How a bench probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchOutcome {
    /// Handshake and complete bitfield read.
    Bitfield {
        /// Pieces the peer claims.
        have: u32,
    },
    /// The quiet timeout passed first.
    QuietTimeout,
    /// The peer answered something that is not a matching handshake.
    BadHandshake,
    /// The connection ended first (None = EOF).
    Closed(Option<i32>),
}

/// Handshake + bitfield reader with a quiet timeout.
pub struct BenchConversation {
    info_hash: [u8; 20],
    quiet_ms: Millis,
    deadline: Millis,
    /// Handshake bytes checked so far.
    handshake_seen: u8,
    header: [u8; 5],
    header_len: u8,
    body_left: u32,
    in_bitfield: bool,
    have: u32,
    /// Set once the probe is over.
    pub outcome: Option<BenchOutcome>,
}

impl BenchConversation {
    /// A probe for `info_hash` giving up after `quiet_ms` without bytes.
    pub fn new(info_hash: [u8; 20], quiet_ms: Millis) -> Self {
        BenchConversation {
            info_hash,
            quiet_ms,
            deadline: Millis::MAX,
            handshake_seen: 0,
            header: [0; 5],
            header_len: 0,
            body_left: 0,
            in_bitfield: false,
            have: 0,
            outcome: None,
        }
    }

    fn finish(&mut self, outcome: BenchOutcome, send: &mut Vec<u8>) -> Verdict {
        self.outcome = Some(outcome);
        // Our DHT port, as the real probe does before closing.
        send.extend_from_slice(&[0, 0, 0, 3, 9, 0x1a, 0xe1]);
        Verdict::Finished
    }
}

impl Conversation for BenchConversation {
    fn on_connected(&mut self, now: Millis, send: &mut Vec<u8>) {
        send.extend_from_slice(&handshake(&self.info_hash, b"-SS0001-benchbenchbe"));
        self.deadline = now + self.quiet_ms;
    }

    fn on_bytes(&mut self, now: Millis, mut bytes: &[u8], send: &mut Vec<u8>) -> Verdict {
        self.deadline = now + self.quiet_ms;
        while !bytes.is_empty() {
            if (self.handshake_seen as usize) < HANDSHAKE_LEN {
                let at = self.handshake_seen as usize;
                let n = (HANDSHAKE_LEN - at).min(bytes.len());
                for (k, &b) in bytes[..n].iter().enumerate() {
                    let pos = at + k;
                    let ok = match pos {
                        0..20 => b == PSTR[pos],
                        28..48 => b == self.info_hash[pos - 28],
                        _ => true,
                    };
                    if !ok {
                        return self.finish(BenchOutcome::BadHandshake, send);
                    }
                }
                self.handshake_seen += n as u8;
                bytes = &bytes[n..];
                continue;
            }
            if self.body_left > 0 {
                let n = (self.body_left as usize).min(bytes.len());
                if self.in_bitfield {
                    self.have += bytes[..n].iter().map(|b| b.count_ones()).sum::<u32>();
                }
                self.body_left -= n as u32;
                bytes = &bytes[n..];
                if self.body_left == 0 && self.in_bitfield {
                    let have = self.have;
                    return self.finish(BenchOutcome::Bitfield { have }, send);
                }
                continue;
            }
            self.header[self.header_len as usize] = bytes[0];
            self.header_len += 1;
            bytes = &bytes[1..];
            let len = u32::from_be_bytes([
                self.header[0],
                self.header[1],
                self.header[2],
                self.header[3],
            ]);
            if self.header_len == 4 && len == 0 {
                self.header_len = 0; // keep-alive
            } else if self.header_len == 5 {
                self.header_len = 0;
                self.in_bitfield = self.header[4] == 5;
                self.body_left = len - 1;
                if self.in_bitfield && self.body_left == 0 {
                    return self.finish(BenchOutcome::Bitfield { have: 0 }, send);
                }
            }
        }
        Verdict::Continue
    }

    fn deadline(&self) -> Millis {
        self.deadline
    }

    fn on_deadline(&mut self, _now: Millis, send: &mut Vec<u8>) -> Verdict {
        self.finish(BenchOutcome::QuietTimeout, send)
    }

    fn on_closed(&mut self, _now: Millis, errno: Option<i32>) {
        self.outcome = Some(BenchOutcome::Closed(errno));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(info_hash: &[u8; 20], bitfield: &[u8]) -> Vec<u8> {
        let mut r = handshake(info_hash, &[7; 20]).to_vec();
        r.extend_from_slice(&[0, 0, 0, 0]); // keep-alive
        r.extend_from_slice(&((bitfield.len() as u32 + 1).to_be_bytes()));
        r.push(5);
        r.extend_from_slice(bitfield);
        r
    }

    #[test]
    fn reads_bitfield_in_any_chunking() {
        let ih = [9u8; 20];
        let bytes = reply(&ih, &[0xff, 0x0f, 0x80]);
        for chunk in [1, 2, 3, 7, 64, 1000] {
            let mut conv = BenchConversation::new(ih, 6000);
            let mut send = Vec::new();
            conv.on_connected(0, &mut send);
            assert_eq!(send.len(), HANDSHAKE_LEN);
            send.clear();
            let mut verdict = Verdict::Continue;
            for piece in bytes.chunks(chunk) {
                assert_eq!(verdict, Verdict::Continue);
                verdict = conv.on_bytes(1, piece, &mut send);
            }
            assert_eq!(verdict, Verdict::Finished, "chunk {chunk}");
            assert_eq!(conv.outcome, Some(BenchOutcome::Bitfield { have: 13 }));
            assert_eq!(send, [0, 0, 0, 3, 9, 0x1a, 0xe1]);
        }
    }

    #[test]
    fn wrong_info_hash_is_a_bad_handshake() {
        let mut conv = BenchConversation::new([1; 20], 6000);
        let mut send = Vec::new();
        conv.on_connected(0, &mut send);
        let verdict = conv.on_bytes(1, &reply(&[2; 20], &[1]), &mut send);
        assert_eq!(verdict, Verdict::Finished);
        assert_eq!(conv.outcome, Some(BenchOutcome::BadHandshake));
        assert_eq!(conv.deadline(), 6001);
    }
}
