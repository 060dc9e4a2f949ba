//! [`Exchange`]: the simplest useful conversation — send a fixed request, read a reply of a
//! known length, finish. The engine's own examples, tests and floor benchmark use it, so that
//! what they measure is the engine and nothing of any protocol built on it.

use std::sync::Arc;

use crate::{Conversation, Millis, Verdict};

/// How an [`Exchange`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeOutcome {
    /// The whole reply arrived.
    Replied,
    /// `quiet_ms` passed without a byte.
    QuietTimeout,
    /// The connection ended first (None = EOF, Some(errno) = socket error).
    Closed(Option<i32>),
}

/// Sends `request` when connected (or, for an accepted connection, once `reply_len` bytes
/// arrived it sends `request` as its answer), and finishes after `reply_len` bytes.
#[derive(Debug, Clone)]
pub struct Exchange {
    request: Arc<[u8]>,
    reply_len: usize,
    quiet_ms: Millis,
    /// Accepted side: speak only after the peer's bytes arrived.
    answer_after_read: bool,
    received: usize,
    deadline: Millis,
    /// Set once the exchange is over.
    pub outcome: Option<ExchangeOutcome>,
}

impl Exchange {
    /// The dialling side: sends `request`, then reads `reply_len` bytes.
    pub fn dial(request: Arc<[u8]>, reply_len: usize, quiet_ms: Millis) -> Exchange {
        Exchange {
            request,
            reply_len,
            quiet_ms,
            answer_after_read: false,
            received: 0,
            deadline: Millis::MAX,
            outcome: None,
        }
    }

    /// The accepting side: reads `request_len` bytes, then answers with `reply`.
    pub fn answer(reply: Arc<[u8]>, request_len: usize, quiet_ms: Millis, now: Millis) -> Exchange {
        Exchange {
            request: reply,
            reply_len: request_len,
            quiet_ms,
            answer_after_read: true,
            received: 0,
            deadline: now.saturating_add(quiet_ms),
            outcome: None,
        }
    }

    /// Bytes read so far.
    pub fn received(&self) -> usize {
        self.received
    }
}

impl Conversation for Exchange {
    fn on_connected(&mut self, now: Millis, send: &mut Vec<u8>) {
        self.deadline = now.saturating_add(self.quiet_ms);
        if !self.answer_after_read {
            send.extend_from_slice(&self.request);
        }
    }

    fn on_bytes(&mut self, now: Millis, bytes: &[u8], send: &mut Vec<u8>) -> Verdict {
        self.deadline = now.saturating_add(self.quiet_ms);
        self.received += bytes.len();
        if self.received < self.reply_len {
            return Verdict::Continue;
        }
        if self.answer_after_read {
            send.extend_from_slice(&self.request);
        }
        self.outcome = Some(ExchangeOutcome::Replied);
        Verdict::Finished
    }

    fn deadline(&self) -> Millis {
        self.deadline
    }

    fn on_deadline(&mut self, _now: Millis, _send: &mut Vec<u8>) -> Verdict {
        self.outcome = Some(ExchangeOutcome::QuietTimeout);
        Verdict::Finished
    }

    fn on_closed(&mut self, _now: Millis, errno: Option<i32>) {
        self.outcome = Some(ExchangeOutcome::Closed(errno));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialler_sends_first_and_finishes_on_the_whole_reply() {
        let mut x = Exchange::dial(Arc::from(&b"ping"[..]), 6, 100);
        let mut send = Vec::new();
        x.on_connected(10, &mut send);
        assert_eq!(send, b"ping");
        assert_eq!(x.deadline(), 110);
        send.clear();
        assert_eq!(x.on_bytes(20, b"pon", &mut send), Verdict::Continue);
        assert_eq!(x.deadline(), 120);
        assert_eq!(x.on_bytes(30, b"g!!", &mut send), Verdict::Finished);
        assert!(send.is_empty());
        assert_eq!(x.outcome, Some(ExchangeOutcome::Replied));
        assert_eq!(x.received(), 6);
    }

    #[test]
    fn answerer_speaks_only_after_the_request() {
        let mut x = Exchange::answer(Arc::from(&b"pong"[..]), 4, 50, 0);
        assert_eq!(x.deadline(), 50);
        let mut send = Vec::new();
        x.on_connected(1, &mut send);
        assert!(send.is_empty());
        assert_eq!(x.on_bytes(2, b"pi", &mut send), Verdict::Continue);
        assert!(send.is_empty());
        assert_eq!(x.on_bytes(3, b"ng", &mut send), Verdict::Finished);
        assert_eq!(send, b"pong");
    }

    #[test]
    fn silence_and_hang_ups_are_told_apart() {
        let mut x = Exchange::dial(Arc::from(&b"a"[..]), 1, 5);
        let mut send = Vec::new();
        x.on_connected(0, &mut send);
        assert_eq!(x.on_deadline(5, &mut send), Verdict::Finished);
        assert_eq!(x.outcome, Some(ExchangeOutcome::QuietTimeout));
        let mut y = Exchange::dial(Arc::from(&b"a"[..]), 1, 5);
        y.on_closed(1, Some(111));
        assert_eq!(y.outcome, Some(ExchangeOutcome::Closed(Some(111))));
    }
}
