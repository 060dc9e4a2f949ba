#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmscan_proto::bttest::{
    Control, ControlReader, FlowEndpoint, FlowKind, FlowParams, Role,
};

fuzz_target!(|data: &[u8]| {
    // Control frames: any bytes frame, decode or fail cleanly; what decodes re-encodes to a
    // frame that decodes to the same message.
    let mut reader = ControlReader::new();
    reader.feed(data);
    while let Ok(Some(msg)) = reader.next_message() {
        let frame = msg.to_frame();
        assert_eq!(Control::decode_body(&frame[4..]), Ok(msg));
    }
    // Flow ends: any bytes from the other end, fed in two pieces, then its end of stream,
    // give errors or progress, never a panic; a leecher never counts more than it asked for.
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());
    for kind in [FlowKind::BitTorrent, FlowKind::PlainTcp] {
        for role in [Role::Seeder, Role::Leecher] {
            let mut end = FlowEndpoint::new(FlowParams {
                kind,
                role,
                initiator: role == Role::Leecher,
                payload_bytes: 100_000,
                seed: 7,
            });
            let mut out = Vec::new();
            end.poll_transmit(&mut out, 1 << 16);
            let ok = end.on_bytes(&data[..split]).is_ok() && {
                end.poll_transmit(&mut out, 1 << 16);
                end.on_bytes(&data[split..]).is_ok()
            };
            if ok {
                end.poll_transmit(&mut out, 1 << 16);
                let _ = end.on_eof();
            }
            assert!(end.payload_received() <= 100_000);
            assert!(end.payload_sent() <= 100_000);
        }
    }
});
