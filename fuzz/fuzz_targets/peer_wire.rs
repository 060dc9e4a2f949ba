#![no_main]
//! Handshake + message stream, fed to the framer in chunks split at points the input chooses.
//! Whatever the split, the framer must see the same handshake, messages and final error as the
//! whole-buffer decoder, and every decoded message must re-encode to the bytes it came from.
use libfuzzer_sys::fuzz_target;
use swarmscan_proto::peer_wire::{self, Handshake, MessageReader, WireError};

/// Decode everything in `stream` at once: handshake, re-encoded messages, stopping error.
fn whole(stream: &[u8], max: u32) -> (Option<Handshake>, Vec<Vec<u8>>, Option<WireError>) {
    let (h, mut pos) = match Handshake::decode(stream) {
        Ok(x) => x,
        Err(WireError::NeedMore(_)) => return (None, vec![], None),
        Err(e) => return (None, vec![], Some(e)),
    };
    let mut msgs = vec![];
    loop {
        match peer_wire::decode_with(&stream[pos..], max) {
            Ok((m, used)) => {
                let enc = m.to_vec();
                assert_eq!(enc, &stream[pos..pos + used], "re-encoding differs");
                msgs.push(enc);
                pos += used;
            }
            Err(WireError::NeedMore(n)) => {
                assert!(n > 0);
                return (Some(h), msgs, None);
            }
            Err(e) => return (Some(h), msgs, Some(e)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // First byte: chunk-size seed; second: cap selector; the rest is the stream. Prepending a
    // valid handshake half of the time lets the fuzzer spend its effort on messages.
    let [seed, cap, rest @ ..] = data else { return };
    let max = [16u32, 300, peer_wire::DEFAULT_MAX_MESSAGE_LEN][(*cap % 3) as usize];
    let mut stream = Vec::new();
    if seed & 1 == 0 {
        stream.extend_from_slice(&peer_wire::encode_handshake(
            &[7; 20],
            &[9; 20],
            peer_wire::Reserved::PROBE,
        ));
    }
    stream.extend_from_slice(rest);
    let expected = whole(&stream, max);

    let mut reader = MessageReader::new(max);
    let mut got = (None, vec![], None);
    let mut pos = 0;
    let mut step = (*seed as usize >> 1) + 1;
    while got.2.is_none() {
        let end = (pos + step).min(stream.len());
        reader.feed(&stream[pos..end]);
        let fed_all = end == stream.len();
        pos = end;
        step = step * 7 % 61 + 1;
        if got.0.is_none() {
            match reader.read_handshake() {
                Ok(Some(h)) => got.0 = Some(h),
                Ok(None) => {}
                Err(e) => got.2 = Some(e),
            }
        }
        if got.0.is_some() {
            loop {
                match reader.read_message() {
                    Ok(Some(m)) => got.1.push(m.to_vec()),
                    Ok(None) => break,
                    Err(e) => {
                        got.2 = Some(e);
                        break;
                    }
                }
            }
        }
        if fed_all {
            break;
        }
    }
    assert_eq!(got, expected);
});
