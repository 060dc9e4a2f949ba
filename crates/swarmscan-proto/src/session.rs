//! One connection with a peer, as a sans-IO state machine: the encryption layer (plaintext,
//! MSE/PE as initiator, or, for an incoming connection, plaintext or MSE/PE as responder as
//! the first bytes tell) wrapped around the [`Probe`].
//!
//! Why our own and not a BitTorrent library's peer connection: the engine is an io_uring loop
//! that owns every socket, buffer and clock, and drives tens of thousands of connections per
//! thread by handing each one its bytes and deadlines. So the code that speaks to a peer must
//! be sans-IO: no sockets, threads, clock or randomness inside. Everything comes in as
//! arguments:
//! - time: `now`, the caller's milliseconds, on every call;
//! - the settings and the torrents we scan ([`SessionEnv`]: [`ProbeSettings`] and a
//!   [`TorrentLookup`], which also maps an incoming MSE handshake's `req2` hash to a torrent);
//! - what MSE needs ([`MseSource`]): our Diffie-Hellman key pair, the random pads, and whether
//!   an incoming handshake may spend a DH computation (a budget the owner keeps: a flood of
//!   random bytes must not buy unlimited exponentiations).
//!
//! The same transcript and the same inputs give the same bytes out, so the session is tested
//! against scripted peers and our own MSE initiator/responder at memory speed, and fuzzed
//! (`fuzz/fuzz_targets/session.rs`). The scan's engine adapter (`scan::driver::ProbeConv`)
//! only maps [`Step`] to the engine's verdicts and supplies the worker's key, pads and budget.
//!
//! Encryption choice: an outgoing session talks plaintext unless [`PeerSession::with_mse`]
//! (then our BitTorrent handshake rides in the MSE handshake as its initial payload, and RC4
//! and plaintext are both offered). An incoming session sniffs: a plaintext BitTorrent
//! handshake, or else an MSE handshake (answered once its whole 96-byte public key is in,
//! after the owner's budget allows the DH). Which way to try next time is the owner's policy;
//! [`PeerSession::fallback`] says what this connection showed about the peer.

use super::mse;
use super::probe::{
    AskReason, Direction, Millis, Probe, ProbeEnd, ProbeReport, ProbeSettings, Step, TorrentLookup,
    WatchPlan,
};

/// Linux's `ECONNRESET`: the errno the engine reports for a connection reset by the peer
/// (`proto` does not link libc; the scan layer checks the two agree).
pub const ECONNRESET: i32 = 104;

/// Most bytes of an incoming MSE initiator's initial payload (IA) we accept: its BitTorrent
/// handshake and a little more (libtorrent sends exactly its 68-byte handshake).
pub const MAX_INCOMING_INITIAL_PAYLOAD: usize = 4096;

/// What MSE needs from outside the session. Production: the worker's DH key pair (reused:
/// see `scan::mse_budget`), pads from the kernel's CSPRNG and the worker's DH budget for
/// incoming handshakes. Tests and fuzzing: fixed keys and pads.
pub trait MseSource {
    /// Our Diffie-Hellman key pair for one handshake.
    fn dh_key(&mut self) -> mse::DhKey;
    /// The padding for one handshake step (at most [`mse::MAX_PAD_LEN`] bytes; random in
    /// production, and short: it is obfuscation only).
    fn pad(&mut self) -> Vec<u8>;
    /// An incoming MSE handshake has sent its whole public key at `now`: may it cost a DH
    /// computation? False ends the session before any is computed and nothing is sent.
    fn admit_incoming(&mut self, now: Millis) -> bool;
}

/// What a session reads from its owner on a call that may receive or send.
pub struct SessionEnv<'a> {
    pub settings: &'a ProbeSettings,
    /// The torrents we scan (incoming handshakes, metadata fetches, MSE `req2` hashes).
    pub lookup: &'a dyn TorrentLookup,
    pub mse: &'a mut dyn MseSource,
}

/// The encryption layer between the connection and the probe.
#[derive(Debug)]
enum Layer {
    /// Plain BitTorrent.
    Plain,
    /// Incoming: the first bytes decide between plain and MSE.
    Sniffing(Vec<u8>),
    /// Outgoing MSE handshake under way (our BitTorrent handshake rides in it as IA).
    Initiating(Box<mse::Initiator>),
    /// Incoming MSE handshake under way.
    Responding(Box<mse::Responder>),
    /// MSE done: everything passes through the stream's ciphers.
    Stream(Box<mse::MseStream>),
}

/// One connection with a peer: encryption layer and probe. Made per connection; the owner
/// calls [`PeerSession::on_connected`] once the connection is up (an accepted one too), then
/// [`PeerSession::on_bytes`] for every read, [`PeerSession::on_deadline`] when
/// [`PeerSession::deadline`] passes, and [`PeerSession::on_closed`] if the connection ends
/// before the session has finished.
#[derive(Debug)]
pub struct PeerSession {
    probe: Probe,
    layer: Layer,
    /// An outgoing MSE handshake is (or was) attempted.
    mse_attempted: bool,
    /// When the session was made and when its connection came up (caller's clock).
    created_at: Millis,
    connected_at: Option<Millis>,
    /// The owner kept it open to watch the peer (it stays true after the watch ends).
    was_watched: bool,
    /// The plaintext both ways, when the owner asked for it.
    tap: Option<Box<PlainTap>>,
}

/// The plaintext BitTorrent bytes of one session, both directions, with the owner's time:
/// what a capture of the connection would show were it unencrypted (the MSE handshake and the
/// cipher are not in it). Kept only when asked for ([`PeerSession::with_tap`]; `swarmscan
/// probe` prints it): a scan's sessions have none and pay one branch per call for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlainTap {
    pub chunks: Vec<TapChunk>,
    /// Our handshake while it rides in an MSE handshake not done yet (it is in the tap once
    /// the peer has it: a failed MSE handshake shows none).
    in_mse: Vec<u8>,
}

/// Bytes that went one way at one time (see [`PlainTap`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapChunk {
    pub at: Millis,
    pub outgoing: bool,
    pub bytes: Vec<u8>,
}

/// What a finished session showed about how to reach the peer next time. The owner's policy
/// (`net.encryption`, what worked before) turns this into a retry the other way or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fallback {
    /// The connection came up and the peer hung up (EOF or reset) before its BitTorrent
    /// handshake: on plaintext, what a client that requires encryption does (libtorrent's
    /// forced policy).
    pub hung_up: bool,
    /// Our MSE handshake did not get through: it failed, or the peer hung up during it.
    pub mse_failed: bool,
    /// The connection came up and no BitTorrent handshake came back, however it ended.
    pub silent: bool,
}

fn crypto_name(c: mse::Crypto) -> &'static str {
    match c {
        mse::Crypto::Rc4 => "rc4",
        mse::Crypto::Plaintext => "plaintext",
    }
}

impl PeerSession {
    /// We dial the peer, for a torrent with this info-hash and piece count (0: not known yet).
    pub fn outgoing(info_hash: [u8; 20], piece_count: u32, now: Millis) -> PeerSession {
        let direction = Direction::Outgoing {
            info_hash,
            piece_count,
        };
        PeerSession {
            probe: Probe::new(direction, now),
            layer: Layer::Plain,
            mse_attempted: false,
            created_at: now,
            connected_at: None,
            was_watched: false,
            tap: None,
        }
    }

    /// The peer dialled us (the connection is up already): plaintext or MSE, as it speaks.
    pub fn incoming(now: Millis) -> PeerSession {
        PeerSession {
            probe: Probe::new(Direction::Incoming, now),
            layer: Layer::Sniffing(Vec::new()),
            mse_attempted: false,
            created_at: now,
            connected_at: Some(now),
            was_watched: false,
            tap: None,
        }
    }

    /// The connection runs over uTP (BEP 29): the report says so ([`ProbeReport::utp`]).
    pub fn over_utp(mut self) -> PeerSession {
        self.probe.set_utp();
        self
    }

    /// Talk MSE/PE (BEP 8 style encryption) on this outgoing connection: the initiator is
    /// made when the connection comes up, with our handshake as its initial payload.
    pub fn with_mse(mut self) -> PeerSession {
        self.mse_attempted = true;
        self
    }

    /// Keep the plaintext BitTorrent bytes both ways (see [`PlainTap`]).
    pub fn with_tap(mut self) -> PeerSession {
        self.tap = Some(Box::default());
        self
    }

    /// The plaintext kept so far, if [`PeerSession::with_tap`].
    pub fn tap(&self) -> Option<&PlainTap> {
        self.tap.as_deref()
    }

    /// See [`Probe::without_grace`].
    pub fn without_grace(mut self) -> PeerSession {
        self.probe = self.probe.without_grace();
        self
    }

    /// See [`Probe::without_metadata_fetch`].
    pub fn without_metadata_fetch(mut self) -> PeerSession {
        self.probe = self.probe.without_metadata_fetch();
        self
    }

    /// See [`Probe::with_peer_id_nonce`].
    pub fn with_peer_id_nonce(mut self, nonce: u64) -> PeerSession {
        self.probe = self.probe.with_peer_id_nonce(nonce);
        self
    }

    /// True when an outgoing MSE handshake was attempted ([`PeerSession::with_mse`]).
    pub fn mse_attempted(&self) -> bool {
        self.mse_attempted
    }

    /// True once the owner kept the connection open to watch the peer (stays true).
    pub fn was_watched(&self) -> bool {
        self.was_watched
    }

    /// Milliseconds from the session's creation to its connection, if it connected.
    pub fn connect_ms(&self) -> Option<Millis> {
        self.connected_at
            .map(|at| at.saturating_sub(self.created_at))
    }

    /// Why the session asked its owner (see [`Probe::take_ask`]).
    pub fn take_ask(&mut self) -> Option<AskReason> {
        self.probe.take_ask()
    }

    /// The report so far (see [`Probe::snapshot`]).
    pub fn snapshot(&mut self, now: Millis) -> ProbeReport {
        self.probe.snapshot(now)
    }

    /// See [`Probe::unsnapshot`].
    pub fn unsnapshot(&mut self, report: ProbeReport) {
        self.probe.unsnapshot(report);
    }

    /// True when the watched peer sends its haves in bursts.
    pub fn haves_batched(&self) -> bool {
        self.probe.haves_batched()
    }

    /// Keeps the connection open to watch the peer (see [`Probe::watch`]).
    pub fn watch(&mut self, now: Millis, plan: WatchPlan) {
        self.probe.watch(now, plan);
        self.was_watched = true;
    }

    /// True while the peer is being watched.
    pub fn is_watching(&self) -> bool {
        self.probe.is_watching()
    }

    /// True once the session has ended (its report is final).
    pub fn is_done(&self) -> bool {
        self.probe.is_done()
    }

    /// Ends the session now; its last bytes (the `port` message) go through the cipher.
    pub fn stop(&mut self, settings: &ProbeSettings, now: Millis, send: &mut Vec<u8>) {
        let start = send.len();
        self.probe.stop(settings, now, send);
        self.encrypt_tail(now, send, start);
    }

    pub fn report(&self) -> &ProbeReport {
        self.probe.report()
    }

    pub fn into_report(self) -> ProbeReport {
        self.probe.into_report()
    }

    /// What this connection showed about the peer's encryption (read it once the session has
    /// ended, before [`PeerSession::into_report`]).
    pub fn fallback(&self) -> Fallback {
        let report = self.probe.report();
        let connected = self.connected_at.is_some();
        let hung_up = connected
            && !report.handshake
            && matches!(
                report.end,
                ProbeEnd::PeerClosed | ProbeEnd::SocketError(ECONNRESET)
            );
        let mse_failed = self.mse_attempted
            && report.mse.is_none()
            && (hung_up || matches!(report.end, ProbeEnd::MseFailed(_)));
        Fallback {
            hung_up,
            mse_failed,
            silent: connected && !report.handshake,
        }
    }

    /// The connection is up (dialled or accepted): appends what to send first — our
    /// handshake, or the first step of MSE with our handshake inside.
    pub fn on_connected(&mut self, env: &mut SessionEnv<'_>, now: Millis, send: &mut Vec<u8>) {
        self.connected_at = Some(now);
        if !self.mse_attempted {
            let start = send.len();
            self.probe.on_connected(env.settings, now, send);
            self.record(now, true, &send[start..]);
            return;
        }
        let mut handshake = Vec::new();
        self.probe.on_connected(env.settings, now, &mut handshake);
        if let Some(tap) = &mut self.tap {
            tap.in_mse.clone_from(&handshake);
        }
        let info_hash = self.probe.report().info_hash.unwrap_or_default();
        match mse::Initiator::new(
            info_hash,
            env.mse.dh_key(),
            env.mse.pad(),
            Vec::new(),
            mse::CryptoSet::BOTH,
            handshake,
        ) {
            Ok(mut initiator) => {
                initiator.start(send);
                self.layer = Layer::Initiating(Box::new(initiator));
            }
            Err(e) => {
                self.mse_failed(now, e);
            }
        }
    }

    /// Bytes arrived from the peer (in order, any chunking); appends what to send.
    pub fn on_bytes(
        &mut self,
        env: &mut SessionEnv<'_>,
        now: Millis,
        bytes: &[u8],
        send: &mut Vec<u8>,
    ) -> Step {
        match &mut self.layer {
            Layer::Plain => self.feed(env, now, bytes, send),
            Layer::Stream(stream) => {
                let mut plain = bytes.to_vec();
                stream.decrypt(&mut plain);
                self.feed(env, now, &plain, send)
            }
            Layer::Initiating(initiator) => match initiator.on_bytes(bytes, send) {
                Ok(mse::Progress::NeedMore) => Step::Continue,
                Ok(mse::Progress::Done(done)) => {
                    self.probe.set_mse(crypto_name(done.crypto));
                    self.layer = Layer::Stream(Box::new(done.stream));
                    if let Some(tap) = &mut self.tap {
                        let handshake = std::mem::take(&mut tap.in_mse);
                        self.record(now, true, &handshake);
                    }
                    self.feed(env, now, &done.payload, send)
                }
                Err(e) => self.mse_failed(now, e),
            },
            Layer::Sniffing(seen) => {
                seen.extend_from_slice(bytes);
                match mse::classify_incoming(seen) {
                    mse::IncomingKind::NeedMore => Step::Continue,
                    mse::IncomingKind::Plaintext => {
                        let seen = std::mem::take(seen);
                        self.layer = Layer::Plain;
                        self.feed(env, now, &seen, send)
                    }
                    mse::IncomingKind::Encrypted if seen.len() < mse::KEY_LEN => {
                        Step::Continue // the DH starts with the whole public key
                    }
                    mse::IncomingKind::Encrypted => {
                        let seen = std::mem::take(seen);
                        if !env.mse.admit_incoming(now) {
                            let e = mse::MseError::Refused("incoming DH budget spent");
                            return self.mse_failed(now, e);
                        }
                        match mse::Responder::new(
                            env.mse.dh_key(),
                            env.mse.pad(),
                            Vec::new(),
                            mse::CryptoSet::BOTH,
                            mse::Crypto::Rc4,
                        ) {
                            Ok(r) => {
                                let r = r.with_max_initial_payload(MAX_INCOMING_INITIAL_PAYLOAD);
                                self.layer = Layer::Responding(Box::new(r));
                                self.on_bytes(env, now, &seen, send)
                            }
                            Err(e) => self.mse_failed(now, e),
                        }
                    }
                }
            }
            Layer::Responding(responder) => {
                let lookup = env.lookup;
                match responder.on_bytes(bytes, send, |req2| lookup.info_hash_by_req2(req2)) {
                    Ok(mse::Progress::NeedMore) => Step::Continue,
                    Ok(mse::Progress::Done(done)) => {
                        self.probe.set_mse(crypto_name(done.crypto));
                        self.layer = Layer::Stream(Box::new(done.stream));
                        let mut plain = done.initial_payload;
                        plain.extend_from_slice(&done.payload);
                        self.feed(env, now, &plain, send)
                    }
                    Err(e) => self.mse_failed(now, e),
                }
            }
        }
    }

    /// When the owner must call [`PeerSession::on_deadline`] if nothing arrives first.
    pub fn deadline(&self, settings: &ProbeSettings) -> Millis {
        self.probe.deadline(settings)
    }

    /// The deadline passed; may append last bytes (through the cipher).
    pub fn on_deadline(
        &mut self,
        settings: &ProbeSettings,
        now: Millis,
        send: &mut Vec<u8>,
    ) -> Step {
        let start = send.len();
        let step = self.probe.on_deadline(settings, now, send);
        self.encrypt_tail(now, send, start);
        step
    }

    /// The connection ended before the session finished: `errno` None for an orderly EOF.
    pub fn on_closed(&mut self, now: Millis, errno: Option<i32>) {
        self.probe.on_closed(now, errno);
    }

    /// Feeds plaintext to the probe; what it sends goes through the stream's cipher.
    fn feed(
        &mut self,
        env: &SessionEnv<'_>,
        now: Millis,
        plain: &[u8],
        send: &mut Vec<u8>,
    ) -> Step {
        self.record(now, false, plain);
        let start = send.len();
        let step = self
            .probe
            .on_bytes(env.settings, env.lookup, now, plain, send);
        self.record(now, true, &send[start..]);
        if let Layer::Stream(stream) = &mut self.layer {
            stream.encrypt(&mut send[start..]);
        }
        step
    }

    /// Encrypts what was appended from `start` when the stream is encrypted; drops it while an
    /// MSE handshake is still under way (nothing may go out in the clear then).
    fn encrypt_tail(&mut self, now: Millis, send: &mut Vec<u8>, start: usize) {
        match &mut self.layer {
            Layer::Stream(_) | Layer::Plain => self.record(now, true, &send[start..]),
            _ => send.truncate(start),
        }
        if let Layer::Stream(stream) = &mut self.layer {
            stream.encrypt(&mut send[start..]);
        }
    }

    /// Keeps plaintext in the tap, if there is one.
    fn record(&mut self, now: Millis, outgoing: bool, bytes: &[u8]) {
        if let (Some(tap), false) = (&mut self.tap, bytes.is_empty()) {
            tap.chunks.push(TapChunk {
                at: now,
                outgoing,
                bytes: bytes.to_vec(),
            });
        }
    }

    fn mse_failed(&mut self, now: Millis, e: mse::MseError) -> Step {
        self.probe.abort(now, ProbeEnd::MseFailed(e.to_string()));
        Step::Finished
    }
}

#[cfg(test)]
mod tests;
