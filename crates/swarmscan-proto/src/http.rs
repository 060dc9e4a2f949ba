//! Minimal HTTP/1.1 for talking to trackers: build a GET request, read one response.
//!
//! Sans-IO: [`build_get_request`] returns bytes to send; [`ResponseReader`] is fed whatever
//! bytes arrive (in any chunking) and says when the response is complete. It handles bodies
//! framed by `Content-Length`, by chunked transfer encoding (extensions and trailers
//! accepted and ignored) or by the server closing the connection. Every size is bounded by
//! [`ResponseLimits`]; nothing in here panics on any input.
//!
//! Compression is not supported: we send `Accept-Encoding: identity`, and a response whose
//! `Content-Encoding` is anything else fails with [`HttpError::UnsupportedContentEncoding`].

use std::fmt;

/// Why a request could not be built (a value would have broken the request framing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("invalid host {0:?}: empty or contains characters not allowed in a Host header")]
    InvalidHost(String),
    #[error("invalid request target {0:?}: must start with '/' and contain only visible ASCII")]
    InvalidTarget(String),
    #[error("invalid User-Agent {0:?}: contains control characters")]
    InvalidUserAgent(String),
}

/// Builds `GET <path_and_query> HTTP/1.1` with the headers a tracker needs.
///
/// `host` is a DNS name, an IPv4 literal or an IPv6 literal (with or without brackets; the
/// Host header always brackets IPv6). The port is always written, as real clients do.
pub fn build_get_request(
    host: &str,
    port: u16,
    path_and_query: &str,
    user_agent: &str,
) -> Result<Vec<u8>, RequestError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.is_empty()
        || !bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:%".contains(&b))
    {
        return Err(RequestError::InvalidHost(host.to_string()));
    }
    if !path_and_query.starts_with('/') || !path_and_query.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RequestError::InvalidTarget(path_and_query.to_string()));
    }
    if user_agent.chars().any(|c| c.is_control()) {
        return Err(RequestError::InvalidUserAgent(user_agent.to_string()));
    }
    let host_header = if bare.contains(':') {
        format!("[{bare}]:{port}")
    } else {
        format!("{bare}:{port}")
    };
    let mut out = Vec::with_capacity(path_and_query.len() + user_agent.len() + 128);
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host_header.as_bytes());
    if !user_agent.is_empty() {
        out.extend_from_slice(b"\r\nUser-Agent: ");
        out.extend_from_slice(user_agent.as_bytes());
    }
    out.extend_from_slice(b"\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n");
    Ok(out)
}

/// Size limits for one response. Trackers answer with a few KiB; the defaults leave room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseLimits {
    /// Largest status line + headers (and, separately, chunked trailers), in bytes.
    pub max_header_bytes: usize,
    /// Most header fields.
    pub max_headers: usize,
    /// Largest body, in bytes (after removing chunked framing).
    pub max_body_bytes: usize,
}

impl ResponseLimits {
    /// 16 KiB of headers, 64 header fields, 4 MiB of body.
    pub const DEFAULT: ResponseLimits = ResponseLimits {
        max_header_bytes: 16 << 10,
        max_headers: 64,
        max_body_bytes: 4 << 20,
    };
}

impl Default for ResponseLimits {
    fn default() -> Self {
        ResponseLimits::DEFAULT
    }
}

/// What was wrong with a response. `offset` is the byte offset in the response stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("response head larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("malformed status line {line:?}")]
    BadStatusLine { line: String },
    #[error("malformed header line at byte {offset}: {line:?}")]
    BadHeader { offset: usize, line: String },
    #[error("invalid Content-Length {value:?}")]
    BadContentLength { value: String },
    #[error("body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("malformed chunk size line at byte {offset}: {line:?}")]
    BadChunkSize { offset: usize, line: String },
    #[error("missing CRLF after chunk data at byte {offset}")]
    BadChunkEnd { offset: usize },
    #[error("chunked trailers larger than {limit} bytes")]
    TrailersTooLarge { limit: usize },
    #[error("Content-Encoding {0:?} is not supported (only identity; we send Accept-Encoding: identity)")]
    UnsupportedContentEncoding(String),
    #[error("connection closed before the response was complete ({state})")]
    Truncated { state: &'static str },
}

/// Result of feeding bytes to a [`ResponseReader`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The response is not complete; feed more bytes (or call `finish` at end of stream).
    NeedMore,
    /// The response is complete; take it with [`ResponseReader::into_response`].
    Done,
}

/// A complete HTTP response.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Reason phrase as sent (lossy UTF-8).
    pub reason: String,
    /// Header fields in order, names as sent (compare with [`Response::header`]).
    pub headers: Vec<(String, String)>,
    /// Body with transfer framing removed.
    pub body: Vec<u8>,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("reason", &self.reason)
            .field("headers", &self.headers)
            .field("body", &crate::bencode::DebugBytes(&self.body))
            .finish()
    }
}

impl Response {
    /// First header value with this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// 301, 302, 303, 307 or 308.
    pub fn is_redirect(&self) -> bool {
        matches!(self.status, 301 | 302 | 303 | 307 | 308)
    }
    /// The `Location` of a redirect (None if not a redirect or no Location header).
    pub fn redirect_location(&self) -> Option<&str> {
        if self.is_redirect() {
            self.header("location")
        } else {
            None
        }
    }
    /// 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Fixed { remaining: usize },
    ChunkSize,
    ChunkData { remaining: usize },
    ChunkDataEnd,
    Trailers,
    UntilClose,
    Done,
}

/// Incremental response reader. Feed bytes as they arrive; it keeps what it needs.
#[derive(Debug, Clone)]
pub struct ResponseReader {
    limits: ResponseLimits,
    state: State,
    /// Bytes of the current head / chunk-size line / trailer section not yet consumed.
    pending: Vec<u8>,
    /// Bytes consumed so far (for error offsets).
    offset: usize,
    trailer_bytes: usize,
    response: Response,
}

impl Default for ResponseReader {
    fn default() -> Self {
        ResponseReader::new(ResponseLimits::DEFAULT)
    }
}

/// Reads a whole response held in memory, treating the end of `data` as the server closing
/// the connection. Convenient for tests and for callers that buffered everything.
pub fn parse_response(data: &[u8], limits: ResponseLimits) -> Result<Response, HttpError> {
    let mut reader = ResponseReader::new(limits);
    if reader.feed(data)? == Progress::NeedMore {
        reader.finish()?;
    }
    // `finish` only returns Ok once the reader is done, so the response is there.
    reader.into_response().ok_or(HttpError::Truncated {
        state: "incomplete response",
    })
}

impl ResponseReader {
    /// A reader for one response.
    pub fn new(limits: ResponseLimits) -> Self {
        ResponseReader {
            limits,
            state: State::Head,
            pending: Vec::new(),
            offset: 0,
            trailer_bytes: 0,
            response: Response {
                status: 0,
                reason: String::new(),
                headers: Vec::new(),
                body: Vec::new(),
            },
        }
    }

    /// True once the response is complete.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The status code, once the head has been read (useful to stop early on errors).
    pub fn status(&self) -> Option<u16> {
        (self.state != State::Head).then_some(self.response.status)
    }

    /// The complete response, or None if it is not complete yet.
    pub fn into_response(self) -> Option<Response> {
        (self.state == State::Done).then_some(self.response)
    }

    /// Consumes `data`. Bytes after the end of the response are ignored (we always send
    /// `Connection: close`, so nothing legitimate follows).
    pub fn feed(&mut self, mut data: &[u8]) -> Result<Progress, HttpError> {
        while !data.is_empty() {
            let used = match self.state {
                State::Done => return Ok(Progress::Done),
                State::Head => self.feed_head(data)?,
                State::Fixed { remaining } => {
                    let n = remaining.min(data.len());
                    self.push_body(&data[..n])?;
                    self.state = if remaining == n {
                        State::Done
                    } else {
                        State::Fixed {
                            remaining: remaining - n,
                        }
                    };
                    n
                }
                State::UntilClose => {
                    self.push_body(data)?;
                    data.len()
                }
                State::ChunkSize => self.feed_chunk_size(data)?,
                State::ChunkData { remaining } => {
                    let n = remaining.min(data.len());
                    self.push_body(&data[..n])?;
                    self.state = if remaining == n {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData {
                            remaining: remaining - n,
                        }
                    };
                    n
                }
                State::ChunkDataEnd => self.feed_chunk_data_end(data)?,
                State::Trailers => self.feed_trailers(data)?,
            };
            self.offset += used;
            data = &data[used..];
        }
        Ok(if self.state == State::Done {
            Progress::Done
        } else {
            Progress::NeedMore
        })
    }

    /// The server closed the connection. Completes a read-to-close body; anything else
    /// unfinished is an error.
    pub fn finish(&mut self) -> Result<Progress, HttpError> {
        let state = match self.state {
            State::Done => return Ok(Progress::Done),
            State::UntilClose => {
                self.state = State::Done;
                return Ok(Progress::Done);
            }
            State::Head => "in the status line or headers",
            State::Fixed { .. } => "body shorter than Content-Length",
            State::ChunkSize | State::ChunkData { .. } | State::ChunkDataEnd => {
                "inside a chunked body"
            }
            State::Trailers => "in the chunked trailers",
        };
        Err(HttpError::Truncated { state })
    }

    fn push_body(&mut self, data: &[u8]) -> Result<(), HttpError> {
        if self.response.body.len().saturating_add(data.len()) > self.limits.max_body_bytes {
            return Err(HttpError::BodyTooLarge {
                limit: self.limits.max_body_bytes,
            });
        }
        self.response.body.extend_from_slice(data);
        Ok(())
    }

    /// Appends bytes up to and including the first '\n' to `pending`; returns how many
    /// bytes were taken and whether a line is now complete.
    fn take_line(&mut self, data: &[u8]) -> (usize, bool) {
        match data.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pending.extend_from_slice(&data[..=i]);
                (i + 1, true)
            }
            None => {
                self.pending.extend_from_slice(data);
                (data.len(), false)
            }
        }
    }

    fn feed_head(&mut self, data: &[u8]) -> Result<usize, HttpError> {
        let mut used = 0;
        while used < data.len() {
            let (n, complete) = self.take_line(&data[used..]);
            used += n;
            if self.pending.len() > self.limits.max_header_bytes {
                return Err(HttpError::HeadTooLarge {
                    limit: self.limits.max_header_bytes,
                });
            }
            if !complete {
                break;
            }
            // The head ends at an empty line: "\n\n" or "\n\r\n" at the end of pending
            // (bare LF tolerated, as most clients do).
            let p = &self.pending;
            let ends = p.ends_with(b"\n\n") || p.ends_with(b"\n\r\n");
            if ends {
                let head_start = self.offset + used - self.pending.len();
                let head = std::mem::take(&mut self.pending);
                self.parse_head(&head, head_start)?;
                return Ok(used);
            }
        }
        Ok(used)
    }

    fn parse_head(&mut self, head: &[u8], head_start: usize) -> Result<(), HttpError> {
        let mut lines = Vec::new();
        let mut start = 0;
        for (i, &b) in head.iter().enumerate() {
            if b == b'\n' {
                let mut line = &head[start..i];
                if let Some(stripped) = line.strip_suffix(b"\r") {
                    line = stripped;
                }
                lines.push((head_start + start, line));
                start = i + 1;
            }
        }
        // Drop the final empty line.
        while lines.last().is_some_and(|(_, l)| l.is_empty()) {
            lines.pop();
        }
        let Some(&(_, status_line)) = lines.first() else {
            return Err(HttpError::BadStatusLine {
                line: String::new(),
            });
        };
        let (status, reason) = parse_status_line(status_line)?;
        let mut headers = Vec::new();
        for &(offset, line) in &lines[1..] {
            if headers.len() >= self.limits.max_headers {
                return Err(HttpError::TooManyHeaders {
                    limit: self.limits.max_headers,
                });
            }
            headers.push(parse_header_line(line, offset)?);
        }
        self.response.status = status;
        self.response.reason = reason;
        self.response.headers = headers;

        // Interim 1xx responses (100 Continue) are followed by the real one.
        if (100..200).contains(&status) {
            self.response.headers.clear();
            self.state = State::Head;
            return Ok(());
        }
        if !self.response.is_redirect() {
            if let Some(enc) = self.response.header("content-encoding") {
                let enc = enc.trim();
                if !enc.is_empty() && !enc.eq_ignore_ascii_case("identity") {
                    return Err(HttpError::UnsupportedContentEncoding(enc.to_string()));
                }
            }
        }
        self.state = self.body_framing()?;
        Ok(())
    }

    fn body_framing(&self) -> Result<State, HttpError> {
        let status = self.response.status;
        if status == 204 || status == 304 {
            return Ok(State::Done);
        }
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3). If the last coding is
        // chunked, the body is chunked; otherwise it runs to the close of the connection.
        let mut te_seen = false;
        let mut chunked_last = false;
        for (name, value) in &self.response.headers {
            if name.eq_ignore_ascii_case("transfer-encoding") {
                for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                    te_seen = true;
                    chunked_last = coding.eq_ignore_ascii_case("chunked");
                }
            }
        }
        if te_seen {
            return Ok(if chunked_last {
                State::ChunkSize
            } else {
                State::UntilClose
            });
        }
        let mut length: Option<usize> = None;
        for (name, value) in &self.response.headers {
            if !name.eq_ignore_ascii_case("content-length") {
                continue;
            }
            // "Content-Length: 5, 5" and repeated equal headers are allowed; others are not.
            for part in value.split(',') {
                let part = part.trim();
                let bad = || HttpError::BadContentLength {
                    value: value.clone(),
                };
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let n: usize = part.parse().map_err(|_| bad())?;
                if length.is_some_and(|l| l != n) {
                    return Err(bad());
                }
                length = Some(n);
            }
        }
        match length {
            Some(n) if n > self.limits.max_body_bytes => Err(HttpError::BodyTooLarge {
                limit: self.limits.max_body_bytes,
            }),
            Some(0) => Ok(State::Done),
            Some(n) => Ok(State::Fixed { remaining: n }),
            None => Ok(State::UntilClose),
        }
    }

    fn feed_chunk_size(&mut self, data: &[u8]) -> Result<usize, HttpError> {
        let (used, complete) = self.take_line(data);
        // A size line is a few hex digits plus optional extensions; 1 KiB is plenty.
        const MAX_SIZE_LINE: usize = 1024;
        let line_start = self.offset + used - self.pending.len();
        if self.pending.len() > MAX_SIZE_LINE {
            return Err(HttpError::BadChunkSize {
                offset: line_start,
                line: lossy_prefix(&self.pending),
            });
        }
        if !complete {
            return Ok(used);
        }
        let line = std::mem::take(&mut self.pending);
        let text = trim_line_end(&line);
        let size_part = match text.iter().position(|&b| b == b';') {
            Some(i) => &text[..i],
            None => text,
        };
        let size_part = trim_ows(size_part);
        let bad = || HttpError::BadChunkSize {
            offset: line_start,
            line: lossy_prefix(&line),
        };
        if size_part.is_empty() || size_part.len() > 16 {
            return Err(bad());
        }
        let mut size: u64 = 0;
        for &b in size_part {
            let digit = (b as char).to_digit(16).ok_or_else(bad)?;
            size = size * 16 + u64::from(digit);
        }
        if size == 0 {
            self.state = State::Trailers;
            self.trailer_bytes = 0;
            return Ok(used);
        }
        let room =
            self.limits.max_body_bytes - self.response.body.len().min(self.limits.max_body_bytes);
        if size > room as u64 {
            return Err(HttpError::BodyTooLarge {
                limit: self.limits.max_body_bytes,
            });
        }
        self.state = State::ChunkData {
            remaining: size as usize,
        };
        Ok(used)
    }

    fn feed_chunk_data_end(&mut self, data: &[u8]) -> Result<usize, HttpError> {
        // Expect "\r\n" (or a bare "\n") after the chunk data.
        let (used, complete) = self.take_line(data);
        let line_start = self.offset + used - self.pending.len();
        if !complete {
            if self.pending.len() > 1 || self.pending.first().is_some_and(|&b| b != b'\r') {
                return Err(HttpError::BadChunkEnd { offset: line_start });
            }
            return Ok(used);
        }
        let line = std::mem::take(&mut self.pending);
        if line != b"\r\n" && line != b"\n" {
            return Err(HttpError::BadChunkEnd { offset: line_start });
        }
        self.state = State::ChunkSize;
        Ok(used)
    }

    fn feed_trailers(&mut self, data: &[u8]) -> Result<usize, HttpError> {
        let (used, complete) = self.take_line(data);
        self.trailer_bytes += used;
        if self.trailer_bytes > self.limits.max_header_bytes {
            return Err(HttpError::TrailersTooLarge {
                limit: self.limits.max_header_bytes,
            });
        }
        if !complete {
            return Ok(used);
        }
        let line = std::mem::take(&mut self.pending);
        if trim_line_end(&line).is_empty() {
            self.state = State::Done;
        }
        // Trailer fields are ignored: nothing a tracker sends there matters to us.
        Ok(used)
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn lossy_prefix(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(80)]).into_owned()
}

fn parse_status_line(line: &[u8]) -> Result<(u16, String), HttpError> {
    let bad = || HttpError::BadStatusLine {
        line: lossy_prefix(line),
    };
    let rest = line.strip_prefix(b"HTTP/1.").ok_or_else(bad)?;
    let [minor, b' ', d0, d1, d2, rest @ ..] = rest else {
        return Err(bad());
    };
    if !minor.is_ascii_digit() || ![d0, d1, d2].iter().all(|d| d.is_ascii_digit()) {
        return Err(bad());
    }
    let status = u16::from(d0 - b'0') * 100 + u16::from(d1 - b'0') * 10 + u16::from(d2 - b'0');
    let reason = match rest {
        [] => &[][..],
        [b' ', reason @ ..] => reason,
        _ => return Err(bad()),
    };
    Ok((status, String::from_utf8_lossy(reason).into_owned()))
}

fn parse_header_line(line: &[u8], offset: usize) -> Result<(String, String), HttpError> {
    let bad = || HttpError::BadHeader {
        offset,
        line: lossy_prefix(line),
    };
    let colon = line.iter().position(|&b| b == b':').ok_or_else(bad)?;
    let name = &line[..colon];
    // Token characters only; this also rejects obsolete line folding (leading space).
    let is_tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    if name.is_empty() || !name.iter().all(is_tchar) {
        return Err(bad());
    }
    let value = trim_ows(&line[colon + 1..]);
    Ok((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// The head of an HTTP request, as a tracker (or a test acting as one) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// e.g. "GET".
    pub method: String,
    /// Request target: path and query, e.g. "/announce?info_hash=...".
    pub target: String,
    /// Header fields in order.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// First header value with this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a request line and headers. Returns `Ok(None)` if the head is not complete yet,
/// else the head and the number of bytes it used.
pub fn parse_request_head(
    data: &[u8],
    limits: ResponseLimits,
) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let end = find_head_end(data);
    let Some(end) = end else {
        if data.len() > limits.max_header_bytes {
            return Err(HttpError::HeadTooLarge {
                limit: limits.max_header_bytes,
            });
        }
        return Ok(None);
    };
    if end > limits.max_header_bytes {
        return Err(HttpError::HeadTooLarge {
            limit: limits.max_header_bytes,
        });
    }
    let head = &data[..end];
    let mut lines = head
        .split(|&b| b == b'\n')
        .scan(0usize, |pos, l| {
            let start = *pos;
            *pos += l.len() + 1;
            Some((start, l.strip_suffix(b"\r").unwrap_or(l)))
        })
        .filter(|(_, l)| !l.is_empty());
    let (_, request_line) = lines.next().ok_or(HttpError::BadStatusLine {
        line: String::new(),
    })?;
    let bad_line = || HttpError::BadStatusLine {
        line: lossy_prefix(request_line),
    };
    let text = std::str::from_utf8(request_line).map_err(|_| bad_line())?;
    let mut parts = text.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_line());
    };
    if method.is_empty() || target.is_empty() || !version.starts_with("HTTP/1.") {
        return Err(bad_line());
    }
    let mut headers = Vec::new();
    for (offset, line) in lines {
        if headers.len() >= limits.max_headers {
            return Err(HttpError::TooManyHeaders {
                limit: limits.max_headers,
            });
        }
        headers.push(parse_header_line(line, offset)?);
    }
    Ok(Some((
        RequestHead {
            method: method.to_string(),
            target: target.to_string(),
            headers,
        },
        end,
    )))
}

/// Index just past the empty line that ends a head ("\r\n\r\n" or bare "\n\n").
fn find_head_end(data: &[u8]) -> Option<usize> {
    let mut prev_line_start = 0;
    for (i, &b) in data.iter().enumerate() {
        if b == b'\n' {
            let line = &data[prev_line_start..i];
            if (line.is_empty() || line == b"\r") && prev_line_start > 0 {
                return Some(i + 1);
            }
            prev_line_start = i + 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: ResponseLimits = ResponseLimits::DEFAULT;

    #[test]
    fn get_request_has_host_with_port_and_brackets() {
        let req =
            build_get_request("tracker.example", 6969, "/announce?a=1", "swarmscan/0.1").unwrap();
        assert_eq!(
            req,
            b"GET /announce?a=1 HTTP/1.1\r\nHost: tracker.example:6969\r\nUser-Agent: swarmscan/0.1\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n"
        );
        let v6 = build_get_request("::1", 80, "/a", "x").unwrap();
        assert!(v6.windows(17).any(|w| w == b"Host: [::1]:80\r\nU"));
        let v6b = build_get_request("[2001:db8::1]", 8080, "/a", "x").unwrap();
        assert!(String::from_utf8(v6b)
            .unwrap()
            .contains("Host: [2001:db8::1]:8080\r\n"));
    }

    #[test]
    fn get_request_rejects_injection() {
        assert!(matches!(
            build_get_request("a\r\nX: y", 80, "/", ""),
            Err(RequestError::InvalidHost(_))
        ));
        assert!(matches!(
            build_get_request("a", 80, "/x y", ""),
            Err(RequestError::InvalidTarget(_))
        ));
        assert!(matches!(
            build_get_request("a", 80, "x", ""),
            Err(RequestError::InvalidTarget(_))
        ));
        assert!(matches!(
            build_get_request("a", 80, "/", "ua\r\n"),
            Err(RequestError::InvalidUserAgent(_))
        ));
    }

    #[test]
    fn content_length_body() {
        let raw =
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-type: text/plain\r\n\r\nhelloEXTRA";
        let r = parse_response(raw, LIMITS).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.reason, "OK");
        assert_eq!(r.header("Content-Type"), Some("text/plain"));
        assert_eq!(r.body, b"hello");
    }

    #[test]
    fn need_more_until_complete_and_truncation_is_an_error() {
        let raw = b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nabcd";
        for cut in 0..raw.len() {
            let mut rd = ResponseReader::new(LIMITS);
            assert_eq!(
                rd.feed(&raw[..cut]).unwrap(),
                Progress::NeedMore,
                "cut {cut}"
            );
            assert!(matches!(rd.finish(), Err(HttpError::Truncated { .. })));
        }
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;name=v\r\nd8:i\r\n7 \r\nnterval\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let r = parse_response(raw, LIMITS).unwrap();
        assert_eq!(r.body, b"d8:interval");
        // Byte-at-a-time gives the same result.
        let mut rd = ResponseReader::new(LIMITS);
        let mut progress = Progress::NeedMore;
        for b in raw {
            progress = rd.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(progress, Progress::Done);
        assert_eq!(rd.into_response().unwrap().body, b"d8:interval");
    }

    #[test]
    fn chunked_truncated_and_malformed() {
        let mut rd = ResponseReader::new(LIMITS);
        rd.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
            .unwrap();
        assert!(matches!(rd.finish(), Err(HttpError::Truncated { .. })));
        let e = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            LIMITS,
        )
        .unwrap_err();
        assert!(
            matches!(e, HttpError::BadChunkSize { offset: 47, .. }),
            "{e:?}"
        );
        let e = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc",
            LIMITS,
        )
        .unwrap_err();
        assert!(matches!(e, HttpError::BadChunkEnd { .. }), "{e:?}");
    }

    #[test]
    fn read_to_close_body() {
        let mut rd = ResponseReader::new(LIMITS);
        assert_eq!(
            rd.feed(b"HTTP/1.0 200 OK\r\n\r\nd5:peers0:e").unwrap(),
            Progress::NeedMore
        );
        assert_eq!(rd.finish().unwrap(), Progress::Done);
        assert_eq!(rd.into_response().unwrap().body, b"d5:peers0:e");
    }

    #[test]
    fn body_cap_applies_to_every_framing() {
        let small = ResponseLimits {
            max_body_bytes: 4,
            ..LIMITS
        };
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\n\r\n12345",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\n",
        ] {
            assert_eq!(
                parse_response(raw, small).unwrap_err(),
                HttpError::BodyTooLarge { limit: 4 }
            );
        }
        // A huge hex size is rejected, not overflowed.
        let e = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
            LIMITS,
        )
        .unwrap_err();
        assert_eq!(e, HttpError::BodyTooLarge { limit: 4 << 20 });
    }

    #[test]
    fn head_limits() {
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "A: b\r\n".repeat(65));
        assert_eq!(
            parse_response(many.as_bytes(), LIMITS).unwrap_err(),
            HttpError::TooManyHeaders { limit: 64 }
        );
        let big = format!("HTTP/1.1 200 OK\r\nA: {}\r\n\r\n", "x".repeat(20000));
        assert_eq!(
            parse_response(big.as_bytes(), LIMITS).unwrap_err(),
            HttpError::HeadTooLarge { limit: 16384 }
        );
    }

    #[test]
    fn redirect_and_interim_responses() {
        let r = parse_response(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 302 Found\r\nLOCATION: http://other/announce\r\nContent-Length: 0\r\n\r\n",
            LIMITS,
        )
        .unwrap();
        assert_eq!(r.status, 302);
        assert!(r.is_redirect());
        assert_eq!(r.redirect_location(), Some("http://other/announce"));
    }

    #[test]
    fn gzip_is_refused_clearly() {
        let e = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\nab",
            LIMITS,
        )
        .unwrap_err();
        assert_eq!(e, HttpError::UnsupportedContentEncoding("gzip".into()));
        assert!(e.to_string().contains("not supported"));
        let ok = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: identity\r\nContent-Length: 2\r\n\r\nab",
            LIMITS,
        )
        .unwrap();
        assert_eq!(ok.body, b"ab");
    }

    #[test]
    fn bad_heads() {
        for raw in [
            &b"HTTP/2 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
            b"HTTP/1.1 200OK\r\n\r\n",
        ] {
            assert!(
                matches!(
                    parse_response(raw, LIMITS),
                    Err(HttpError::BadStatusLine { .. })
                ),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\n folded\r\n\r\n", LIMITS),
            Err(HttpError::BadHeader { offset: 17, .. })
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", LIMITS),
            Err(HttpError::BadContentLength { .. })
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", LIMITS),
            Err(HttpError::BadContentLength { .. })
        ));
    }

    #[test]
    fn no_body_statuses_and_bare_lf() {
        let r = parse_response(b"HTTP/1.1 204 No Content\n\n", LIMITS).unwrap();
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        let r = parse_response(b"HTTP/1.1 200\nContent-Length: 1\n\nx", LIMITS).unwrap();
        assert_eq!(
            (r.status, r.reason.as_str(), &r.body[..]),
            (200, "", &b"x"[..])
        );
    }

    #[test]
    fn request_head_round_trip() {
        let req = build_get_request("127.0.0.1", 1234, "/announce?x=1", "ua").unwrap();
        let (head, used) = parse_request_head(&req, LIMITS).unwrap().unwrap();
        assert_eq!(used, req.len());
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/announce?x=1");
        assert_eq!(head.header("host"), Some("127.0.0.1:1234"));
        assert_eq!(head.header("accept-encoding"), Some("identity"));
        assert_eq!(
            parse_request_head(&req[..req.len() - 1], LIMITS).unwrap(),
            None
        );
    }

    fn encode_chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut rest = body;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes.get(i).copied().unwrap_or(7).clamp(1, rest.len());
            out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
            i += 1;
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    proptest! {
        #[test]
        fn chunked_round_trip_in_any_split(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            sizes in proptest::collection::vec(1usize..300, 0..8),
            split in proptest::collection::vec(1usize..50, 1..40),
        ) {
            let raw = encode_chunked(&body, &sizes);
            let mut rd = ResponseReader::new(LIMITS);
            let mut rest = &raw[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = split[i % split.len()].min(rest.len());
                let p = rd.feed(&rest[..n]).unwrap();
                rest = &rest[n..];
                prop_assert_eq!(p == Progress::Done, rest.is_empty());
                i += 1;
            }
            prop_assert_eq!(rd.into_response().unwrap().body, body);
        }

        #[test]
        fn content_length_round_trip(body in proptest::collection::vec(any::<u8>(), 0..600), cut in 0usize..700) {
            let mut raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            raw.extend_from_slice(&body);
            let cut = cut.min(raw.len());
            let mut rd = ResponseReader::new(LIMITS);
            rd.feed(&raw[..cut]).unwrap();
            rd.feed(&raw[cut..]).unwrap();
            prop_assert_eq!(rd.into_response().unwrap().body, body);
        }

        #[test]
        fn reader_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400), split in 1usize..64) {
            let mut rd = ResponseReader::new(ResponseLimits { max_header_bytes: 200, max_headers: 4, max_body_bytes: 100 });
            for chunk in data.chunks(split) {
                if rd.feed(chunk).is_err() { break; }
            }
            let _ = rd.finish();
            let _ = parse_request_head(&data, LIMITS);
        }

        #[test]
        fn reader_never_panics_on_http_like_input(
            parts in proptest::collection::vec(prop_oneof![
                Just(&b"HTTP/1.1 200 OK\r\n"[..]), Just(&b"\r\n"[..]), Just(&b"Transfer-Encoding: chunked\r\n"[..]),
                Just(&b"Content-Length: 3\r\n"[..]), Just(&b"5;x=y\r\n"[..]), Just(&b"0\r\n"[..]), Just(&b"abcde"[..]),
                Just(&b"\n"[..]), Just(&b"Content-Encoding: gzip\r\n"[..]), Just(&b"HTTP/1.1 100 Continue\r\n"[..]),
            ], 0..30),
            split in 1usize..16,
        ) {
            let data: Vec<u8> = parts.concat();
            let mut rd = ResponseReader::new(LIMITS);
            for chunk in data.chunks(split) {
                if rd.feed(chunk).is_err() { break; }
            }
            let _ = rd.finish();
        }
    }
}
