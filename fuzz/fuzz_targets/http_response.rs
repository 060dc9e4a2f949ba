#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmscan_proto::http::{self, Progress, ResponseLimits, ResponseReader};
use swarmscan_proto::tracker_http;

// First byte picks the chunk size the stream is fed in; the rest is the HTTP response.
// Whatever the chunking, the reader must reach the same result as feeding it all at once.
// A complete body is then handed to the tracker response parsers.
fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let limits = ResponseLimits {
        max_header_bytes: 4096,
        max_headers: 32,
        max_body_bytes: 64 << 10,
    };
    let whole = http::parse_response(stream, limits);

    let mut reader = ResponseReader::new(limits);
    let mut result = Ok(Progress::NeedMore);
    for chunk in stream.chunks(usize::from(split % 64) + 1) {
        result = reader.feed(chunk);
        if !matches!(result, Ok(Progress::NeedMore)) {
            break;
        }
    }
    if matches!(result, Ok(Progress::NeedMore)) {
        result = reader.finish();
    }
    match (&whole, result) {
        (Ok(resp), Ok(Progress::Done)) => {
            assert_eq!(reader.into_response().as_ref(), Some(resp));
        }
        (Err(e1), Err(e2)) => assert_eq!(e1, &e2),
        (w, r) => panic!("whole {w:?} vs chunked {r:?}"),
    }

    let body = match &whole {
        Ok(resp) => &resp.body[..],
        Err(_) => stream,
    };
    let _ = tracker_http::parse_announce_response(body);
    let _ = tracker_http::parse_scrape_response(body);
    if let Ok(text) = std::str::from_utf8(stream) {
        let _ = tracker_http::parse_announce_query(text);
        if let Ok(url) = tracker_http::parse_http_url(text) {
            let _ = tracker_http::redirect_target(&url, text);
        }
        let _ = tracker_http::scrape_url(text);
        let _ = http::parse_request_head(stream, limits);
    }
});
