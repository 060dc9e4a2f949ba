//! The contract between the engine (I/O, clock) and probe logic (pure).

/// Milliseconds on the engine's monotonic clock (engine start = 0).
pub type Millis = u64;

/// What the engine should do after handing bytes or a deadline to a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep the connection open and keep reading.
    Continue,
    /// The conversation has its answer: send what is queued, then close.
    Finished,
    /// The conversation has news for its owner: the engine hands it to
    /// [`WorkerDriver::on_ask`](super::WorkerDriver::on_ask), which decides what happens next
    /// (keep it open, perhaps as a held connection, or finish it).
    Ask,
}

/// One TCP conversation with a peer, driven by the engine. Pure logic: no I/O, no clock.
pub trait Conversation {
    /// The connection is up: append the bytes to send first (e.g. handshake).
    fn on_connected(&mut self, now: Millis, send: &mut Vec<u8>);
    /// Bytes arrived (in order, any chunking); may append bytes to send.
    fn on_bytes(&mut self, now: Millis, bytes: &[u8], send: &mut Vec<u8>) -> Verdict;
    /// When the engine must call `on_deadline` if nothing else happens first.
    fn deadline(&self) -> Millis;
    /// The deadline passed; may append last bytes to send before close (e.g. a `port` msg).
    fn on_deadline(&mut self, now: Millis, send: &mut Vec<u8>) -> Verdict;
    /// The connection ended without `Finished`: `errno` is None for an orderly EOF from the
    /// peer, Some(e) for a socket error (ECONNREFUSED, ECONNRESET, ETIMEDOUT, EHOSTUNREACH...).
    /// Also called with Some(ETIMEDOUT) when the connect itself hits the connect deadline.
    fn on_closed(&mut self, now: Millis, errno: Option<i32>);
    /// True while the owner keeps this connection open for a long time on purpose (e.g. a
    /// peer watched until it finishes). Held connections have their own budget
    /// ([`WorkerConfig::max_held`](super::WorkerConfig::max_held)) and do not count against
    /// the in-flight cap, so they never starve new probes. Checked after `on_ask`.
    fn held(&self) -> bool {
        false
    }
}
