//! BitTorrent Message Stream Encryption / Protocol Encryption (MSE/PE), sans-IO.
//!
//! The handshake as the Vuze/libtorrent specification gives it (A initiates, B responds):
//!
//! ```text
//! 1 A->B: Ya, PadA
//! 2 B->A: Yb, PadB
//! 3 A->B: HASH('req1', S), HASH('req2', SKEY) xor HASH('req3', S),
//!         ENCRYPT(VC, crypto_provide, len(PadC), PadC, len(IA)), ENCRYPT(IA)
//! 4 B->A: ENCRYPT(VC, crypto_select, len(padD), padD), ENCRYPT2(payload stream)
//! ```
//!
//! `Y` are 768-bit Diffie-Hellman public keys (96 bytes, big-endian), `S` the shared secret,
//! `SKEY` the info-hash, `HASH` SHA-1, `VC` eight zero bytes. `ENCRYPT` is RC4 keyed with
//! `HASH('keyA', S, SKEY)` (A's sending direction) or `HASH('keyB', S, SKEY)` (B's), with the
//! first 1024 keystream bytes discarded; `ENCRYPT2` is the selected method: the same RC4
//! streams continued, or plaintext. The pads are 0..=512 bytes; because their lengths are not
//! sent, each side synchronises on a known pattern (B on `HASH('req1', S)`, A on the
//! encrypted `VC`).
//!
//! Nothing here touches sockets or randomness: the caller supplies private keys and padding
//! bytes (from a CSPRNG, or anything for tests) and moves bytes between the peer and
//! [`Initiator::on_bytes`] / [`Responder::on_bytes`].

use std::sync::Arc;

use sha1::{Digest, Sha1};

mod modexp;
#[doc(hidden)]
pub use modexp::{modexp_with_window, WINDOW};

/// Length of a Diffie-Hellman public key or shared secret on the wire.
pub const KEY_LEN: usize = 96;
/// Length of a private key supplied by the caller (160 bits, as the specification suggests).
pub const PRIVATE_KEY_LEN: usize = 20;
/// Longest padding (PadA, PadB, PadC, PadD) the protocol allows.
pub const MAX_PAD_LEN: usize = 512;
/// Verification constant: eight zero bytes.
pub const VC: [u8; 8] = [0; 8];
/// Bytes after Ya within which the initiator's `HASH('req1', S)` must end: PadA + 20.
pub const REQ1_SEARCH_LEN: usize = MAX_PAD_LEN + 20;
/// Bytes after Yb within which the responder's encrypted VC must end: PadB + 8.
pub const VC_SEARCH_LEN: usize = MAX_PAD_LEN + VC.len();
/// The plaintext BitTorrent handshake prefix: `\x13BitTorrent protocol`.
pub const BITTORRENT_PREFIX: &[u8; 20] = b"\x13BitTorrent protocol";

/// Payload encryption method, one bit of `crypto_provide` / `crypto_select`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Crypto {
    /// Only the handshake is encrypted; the stream continues in the clear.
    Plaintext,
    /// The whole stream is RC4-encrypted.
    Rc4,
}

impl Crypto {
    /// The wire bit: 0x01 plaintext, 0x02 RC4.
    pub fn bit(self) -> u32 {
        match self {
            Crypto::Plaintext => 0x01,
            Crypto::Rc4 => 0x02,
        }
    }
}

/// A set of methods, as sent in `crypto_provide` (or allowed locally).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CryptoSet(u32);

impl CryptoSet {
    /// Plaintext only.
    pub const PLAINTEXT: CryptoSet = CryptoSet(0x01);
    /// RC4 only.
    pub const RC4: CryptoSet = CryptoSet(0x02);
    /// Plaintext or RC4.
    pub const BOTH: CryptoSet = CryptoSet(0x03);

    /// The set as its wire bits (unknown bits kept, as received).
    pub fn bits(self) -> u32 {
        self.0
    }

    /// A set from wire bits.
    pub fn from_bits(bits: u32) -> Self {
        CryptoSet(bits)
    }

    /// Whether `crypto` is in the set.
    pub fn contains(self, crypto: Crypto) -> bool {
        self.0 & crypto.bit() != 0
    }
}

/// Why a handshake failed. Every variant names the step that went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MseError {
    /// A locally supplied padding is too long.
    #[error("MSE: {what} of {len} bytes exceeds the {MAX_PAD_LEN}-byte limit")]
    LocalPadTooLong {
        /// Which padding.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// The locally supplied initial payload does not fit the 16-bit length field.
    #[error("MSE: initial payload of {0} bytes exceeds 65535")]
    LocalInitialPayloadTooLong(usize),
    /// We would offer or allow no method.
    #[error("MSE: crypto set {0:#x} contains neither plaintext (0x01) nor RC4 (0x02)")]
    EmptyCryptoSet(u32),
    /// The peer's public key is 0, 1, P-1 or not below P (degenerate or invalid).
    #[error("MSE: peer public key is not in 2..P-1")]
    BadPublicKey,
    /// The responder's encrypted VC was not found where it must be.
    #[error("MSE: no VC found within {VC_SEARCH_LEN} bytes after the public key")]
    NoVc,
    /// The initiator's synchronisation hash was not found where it must be.
    #[error("MSE: no HASH('req1', S) found within {REQ1_SEARCH_LEN} bytes after the public key")]
    NoReq1,
    /// The obfuscated info-hash matches none of the torrents the caller knows.
    #[error("MSE: HASH('req2', SKEY) xor HASH('req3', S) matches no known info-hash")]
    UnknownInfoHash,
    /// The decrypted VC of the initiator was not zero: wrong keys or garbage.
    #[error("MSE: initiator's VC decrypts to {0:02x?}, not 8 zero bytes")]
    BadVc([u8; 8]),
    /// A padding length received from the peer exceeds 512.
    #[error("MSE: peer's {what} length {len} exceeds {MAX_PAD_LEN}")]
    PeerPadTooLong {
        /// Which padding (PadC or PadD).
        what: &'static str,
        /// The length received.
        len: usize,
    },
    /// The initial payload announced by the initiator is longer than the responder accepts.
    #[error("MSE: initiator's len(IA) {len} exceeds our limit {max}")]
    InitialPayloadTooLong {
        /// The length received.
        len: usize,
        /// Our limit.
        max: usize,
    },
    /// The initiator provides no method we allow.
    #[error(
        "MSE: peer's crypto_provide {provided:#x} has nothing in common with allowed {allowed:#x}"
    )]
    NoCommonCrypto {
        /// The initiator's `crypto_provide`.
        provided: u32,
        /// Our allowed set.
        allowed: u32,
    },
    /// The responder selected something we did not provide, or not exactly one method.
    #[error("MSE: peer's crypto_select {selected:#x} is not one method of our crypto_provide {provided:#x}")]
    BadSelect {
        /// The responder's `crypto_select`.
        selected: u32,
        /// What we provided.
        provided: u32,
    },
    /// The caller declined the handshake before any computation (e.g. a DH budget).
    #[error("MSE: refused: {0}")]
    Refused(&'static str),
    /// `on_bytes` was called after the handshake finished or failed.
    #[error("MSE: handshake already finished or failed")]
    Finished,
}

/// Result of feeding bytes: wait for more, or the handshake is complete.
#[derive(Debug)]
pub enum Progress<T> {
    /// Feed more bytes (after sending whatever was written to `out`).
    NeedMore,
    /// The handshake is complete.
    Done(T),
}

/// The initiator's result.
#[derive(Debug)]
pub struct InitiatorDone {
    /// The method the responder selected.
    pub crypto: Crypto,
    /// Ciphers for everything that follows, in both directions.
    pub stream: MseStream,
    /// Bytes that followed the responder's handshake in the input, already decrypted: the
    /// start of the peer's BitTorrent stream (usually its handshake). May be empty.
    pub payload: Vec<u8>,
}

/// The responder's result.
#[derive(Debug)]
pub struct ResponderDone {
    /// The torrent the initiator asked for.
    pub info_hash: [u8; 20],
    /// The method we selected.
    pub crypto: Crypto,
    /// Ciphers for everything that follows, in both directions.
    pub stream: MseStream,
    /// The initiator's decrypted initial payload (IA): the start of its BitTorrent stream,
    /// often its handshake (libtorrent 2.1.1 sends exactly its 68-byte handshake here).
    /// Comes before `payload`.
    pub initial_payload: Vec<u8>,
    /// Bytes that followed IA in the input, already decrypted (plaintext if selected).
    pub payload: Vec<u8>,
}

/// RC4, whose keystream is XORed onto data. Small enough to write here.
#[derive(Clone)]
struct Rc4 {
    state: [u8; 256],
    i: u8,
    j: u8,
}

impl Rc4 {
    fn new(key: &[u8]) -> Self {
        let mut state = [0u8; 256];
        for (slot, value) in state.iter_mut().zip(0u8..=255) {
            *slot = value;
        }
        let mut j = 0u8;
        // (Cycling the key instead of `key[i % key.len()]` spares 256 divisions per key.)
        for (i, &k) in (0..256).zip(key.iter().cycle()) {
            j = j.wrapping_add(state[i]).wrapping_add(k);
            state.swap(i, j as usize);
        }
        Rc4 { state, i: 0, j: 0 }
    }

    fn next_byte(&mut self) -> u8 {
        self.i = self.i.wrapping_add(1);
        self.j = self.j.wrapping_add(self.state[self.i as usize]);
        self.state.swap(self.i as usize, self.j as usize);
        let k = self.state[self.i as usize].wrapping_add(self.state[self.j as usize]);
        self.state[k as usize]
    }

    fn apply(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b ^= self.next_byte();
        }
    }

    /// The MSE cipher for one direction: key = HASH(label, S, SKEY), 1024 bytes discarded.
    fn for_direction(label: &[u8; 4], secret: &[u8; KEY_LEN], info_hash: &[u8; 20]) -> Self {
        let key = hash3(label, secret, info_hash);
        let mut rc4 = Rc4::new(&key);
        for _ in 0..1024 {
            rc4.next_byte();
        }
        rc4
    }
}

impl std::fmt::Debug for Rc4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key-derived state.
        f.write_str("Rc4")
    }
}

/// The ciphers of an established connection. For plaintext both calls do nothing.
#[derive(Debug, Clone)]
pub struct MseStream {
    ciphers: Option<(Rc4, Rc4)>,
}

impl MseStream {
    /// A stream that passes bytes through unchanged.
    pub fn plaintext() -> Self {
        MseStream { ciphers: None }
    }

    /// The method in use.
    pub fn crypto(&self) -> Crypto {
        if self.ciphers.is_some() {
            Crypto::Rc4
        } else {
            Crypto::Plaintext
        }
    }

    /// Encrypt bytes we are about to send, in place, in sending order.
    pub fn encrypt(&mut self, buf: &mut [u8]) {
        if let Some((enc, _)) = &mut self.ciphers {
            enc.apply(buf);
        }
    }

    /// Decrypt bytes we received, in place, in arrival order.
    pub fn decrypt(&mut self, buf: &mut [u8]) {
        if let Some((_, dec)) = &mut self.ciphers {
            dec.apply(buf);
        }
    }
}

fn hash2(label: &[u8], data: &[u8]) -> [u8; 20] {
    let mut h = Sha1::new();
    h.update(label);
    h.update(data);
    h.finalize().into()
}

fn hash3(label: &[u8], a: &[u8], b: &[u8]) -> [u8; 20] {
    let mut h = Sha1::new();
    h.update(label);
    h.update(a);
    h.update(b);
    h.finalize().into()
}

/// `HASH('req2', info_hash)`: what a responder looks up. Precompute it for every known
/// torrent (e.g. a map from this to the info-hash) and answer the lookup from that.
pub fn req2_hash(info_hash: &[u8; 20]) -> [u8; 20] {
    hash2(b"req2", info_hash)
}

/// Our public key `2^private mod P`, 96 bytes big-endian, zero-padded on the left.
pub fn dh_public_key(private_key: &[u8; PRIVATE_KEY_LEN]) -> [u8; KEY_LEN] {
    let mut two = [0u64; modexp::LIMBS];
    two[0] = 2;
    modexp::to_be_bytes(&modexp::pow_mod_p(&two, private_key, WINDOW))
}

/// The shared secret `peer_public^private mod P`, 96 bytes zero-padded. Rejects public keys
/// outside 2..P-1, which would make the secret predictable.
pub fn dh_shared_secret(
    private_key: &[u8; PRIVATE_KEY_LEN],
    peer_public: &[u8; KEY_LEN],
) -> Result<[u8; KEY_LEN], MseError> {
    let y = modexp::from_be_bytes(peer_public);
    let mut two = [0u64; modexp::LIMBS];
    two[0] = 2;
    let mut p_minus_1 = modexp::P;
    p_minus_1[0] -= 1; // P is odd
    if modexp::less(&y, &two) || !modexp::less(&y, &p_minus_1) {
        return Err(MseError::BadPublicKey);
    }
    Ok(modexp::to_be_bytes(&modexp::pow_mod_p(
        &y,
        private_key,
        WINDOW,
    )))
}

/// A Diffie-Hellman key pair: the private key and its public key, computed once.
///
/// Reuse one across connections (a worker keeps one for its lifetime): a handshake then costs
/// one modular exponentiation (the shared secret) instead of two. For a measurement client the
/// key's secrecy protects nothing — MSE only obfuscates the stream — so reuse loses nothing.
/// Cloning is cheap (a reference count).
#[derive(Clone)]
pub struct DhKey(Arc<DhKeyPair>);

struct DhKeyPair {
    private: [u8; PRIVATE_KEY_LEN],
    public: [u8; KEY_LEN],
}

impl DhKey {
    /// The key pair of `private_key` (computes the public key: one exponentiation).
    pub fn new(private_key: [u8; PRIVATE_KEY_LEN]) -> DhKey {
        DhKey(Arc::new(DhKeyPair {
            private: private_key,
            public: dh_public_key(&private_key),
        }))
    }

    /// Our public key, as sent on the wire.
    pub fn public_key(&self) -> &[u8; KEY_LEN] {
        &self.0.public
    }

    /// The shared secret with a peer's public key (one exponentiation); see
    /// [`dh_shared_secret`].
    pub fn shared_secret(&self, peer_public: &[u8; KEY_LEN]) -> Result<[u8; KEY_LEN], MseError> {
        dh_shared_secret(&self.0.private, peer_public)
    }
}

impl From<[u8; PRIVATE_KEY_LEN]> for DhKey {
    fn from(private_key: [u8; PRIVATE_KEY_LEN]) -> DhKey {
        DhKey::new(private_key)
    }
}

impl std::fmt::Debug for DhKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.write_str("DhKey")
    }
}

/// Whether a connection's first bytes are a plaintext BitTorrent handshake (needs 20 bytes;
/// see [`classify_incoming`] for fewer).
pub fn looks_like_bittorrent(first_bytes: &[u8]) -> bool {
    first_bytes.starts_with(BITTORRENT_PREFIX)
}

/// What an incoming connection speaks, judged from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncomingKind {
    /// A plaintext BitTorrent handshake.
    Plaintext,
    /// Anything else: try MSE (a random public key starts with 0x13 once in 256).
    Encrypted,
    /// Too few bytes to tell: all of them match the plaintext prefix so far.
    NeedMore,
}

/// Classify an incoming connection from the bytes received so far.
pub fn classify_incoming(first_bytes: &[u8]) -> IncomingKind {
    let n = first_bytes.len().min(BITTORRENT_PREFIX.len());
    if first_bytes[..n] != BITTORRENT_PREFIX[..n] {
        IncomingKind::Encrypted
    } else if n == BITTORRENT_PREFIX.len() {
        IncomingKind::Plaintext
    } else {
        IncomingKind::NeedMore
    }
}

fn check_local_pad(what: &'static str, pad: &[u8]) -> Result<(), MseError> {
    if pad.len() > MAX_PAD_LEN {
        return Err(MseError::LocalPadTooLong {
            what,
            len: pad.len(),
        });
    }
    Ok(())
}

fn check_crypto_set(set: CryptoSet) -> Result<(), MseError> {
    if !set.contains(Crypto::Plaintext) && !set.contains(Crypto::Rc4) {
        return Err(MseError::EmptyCryptoSet(set.bits()));
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Where the initiator is in the handshake.
#[derive(Debug)]
enum InitiatorPhase {
    /// `start` not yet called.
    New,
    /// Waiting for the 96 bytes of Yb.
    AwaitPublicKey,
    /// Searching PadB for the encrypted VC; `scanned` candidate offsets were ruled out.
    AwaitVc { vc_pattern: [u8; 8], scanned: usize },
    /// Waiting for crypto_select and len(padD) (6 encrypted bytes).
    AwaitSelect,
    /// Waiting for padD.
    AwaitPadD { crypto: Crypto, pad_len: usize },
    /// Done or failed.
    Finished,
}

/// The connecting side (A) of the handshake.
pub struct Initiator {
    info_hash: [u8; 20],
    key: DhKey,
    pad_a: Vec<u8>,
    pad_c: Vec<u8>,
    provide: CryptoSet,
    initial_payload: Vec<u8>,
    /// Received bytes not yet consumed (never more than a step needs plus the last chunk).
    buf: Vec<u8>,
    /// (encrypt with keyA, decrypt with keyB), once S is known.
    ciphers: Option<(Rc4, Rc4)>,
    phase: InitiatorPhase,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys and secrets stay out of logs.
        f.debug_struct("Initiator")
            .field("phase", &self.phase)
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// A handshake for `info_hash`. The key (a [`DhKey`], or a private key from which one is
    /// made) and the pads must come from a good random source in production; pass a reused
    /// [`DhKey`] to spare the public-key exponentiation. `initial_payload` (IA) is sent
    /// encrypted with the handshake — typically our BitTorrent handshake, so it costs no extra
    /// round trip.
    pub fn new(
        info_hash: [u8; 20],
        key: impl Into<DhKey>,
        pad_a: Vec<u8>,
        pad_c: Vec<u8>,
        provide: CryptoSet,
        initial_payload: Vec<u8>,
    ) -> Result<Self, MseError> {
        check_local_pad("PadA", &pad_a)?;
        check_local_pad("PadC", &pad_c)?;
        check_crypto_set(provide)?;
        if initial_payload.len() > u16::MAX as usize {
            return Err(MseError::LocalInitialPayloadTooLong(initial_payload.len()));
        }
        Ok(Initiator {
            info_hash,
            key: key.into(),
            pad_a,
            pad_c,
            provide,
            initial_payload,
            buf: Vec::new(),
            ciphers: None,
            phase: InitiatorPhase::New,
        })
    }

    /// Write step 1 (Ya, PadA) to `out`. Calling it again does nothing.
    pub fn start(&mut self, out: &mut Vec<u8>) {
        if let InitiatorPhase::New = self.phase {
            out.extend_from_slice(self.key.public_key());
            out.extend_from_slice(&self.pad_a);
            self.phase = InitiatorPhase::AwaitPublicKey;
        }
    }

    /// Feed received bytes; whatever must be sent is appended to `out` (send it even when
    /// an error is returned is pointless: close the connection). Starts the handshake first
    /// if `start` was not called.
    pub fn on_bytes(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Progress<InitiatorDone>, MseError> {
        self.start(out);
        if let InitiatorPhase::Finished = self.phase {
            return Err(MseError::Finished);
        }
        self.buf.extend_from_slice(input);
        let result = self.advance(out);
        if !matches!(result, Ok(Progress::NeedMore)) {
            self.phase = InitiatorPhase::Finished;
            self.buf = Vec::new();
        }
        result
    }

    fn advance(&mut self, out: &mut Vec<u8>) -> Result<Progress<InitiatorDone>, MseError> {
        loop {
            match self.phase {
                InitiatorPhase::New | InitiatorPhase::Finished => return Err(MseError::Finished),
                InitiatorPhase::AwaitPublicKey => {
                    let Some(yb) = self.buf.get(..KEY_LEN) else {
                        return Ok(Progress::NeedMore);
                    };
                    let yb: [u8; KEY_LEN] = yb.try_into().expect("96 bytes");
                    let secret = self.key.shared_secret(&yb)?;
                    self.buf.drain(..KEY_LEN);
                    let enc = self.write_step3(&secret, out);
                    let mut dec = Rc4::for_direction(b"keyB", &secret, &self.info_hash);
                    let mut vc_pattern = VC;
                    dec.apply(&mut vc_pattern);
                    // `dec` produced the encrypted VC; B's stream continues after it.
                    self.ciphers = Some((enc, dec));
                    self.phase = InitiatorPhase::AwaitVc {
                        vc_pattern,
                        scanned: 0,
                    };
                }
                InitiatorPhase::AwaitVc {
                    vc_pattern,
                    scanned,
                } => {
                    let window = &self.buf[..self.buf.len().min(VC_SEARCH_LEN)];
                    match find(&window[scanned..], &vc_pattern) {
                        Some(at) => {
                            self.buf.drain(..scanned + at + VC.len());
                            self.phase = InitiatorPhase::AwaitSelect;
                        }
                        None if window.len() == VC_SEARCH_LEN => return Err(MseError::NoVc),
                        None => {
                            let scanned = window.len().saturating_sub(VC.len() - 1);
                            self.phase = InitiatorPhase::AwaitVc {
                                vc_pattern,
                                scanned,
                            };
                            return Ok(Progress::NeedMore);
                        }
                    }
                }
                InitiatorPhase::AwaitSelect => {
                    let Some(head) = self.buf.get_mut(..6) else {
                        return Ok(Progress::NeedMore);
                    };
                    let (_, dec) = self.ciphers.as_mut().expect("keys after Yb");
                    dec.apply(head);
                    let selected = u32::from_be_bytes(head[..4].try_into().expect("4"));
                    let pad_len = u16::from_be_bytes(head[4..6].try_into().expect("2")) as usize;
                    let crypto = match selected {
                        0x01 => Crypto::Plaintext,
                        0x02 => Crypto::Rc4,
                        _ => Crypto::Plaintext,
                    };
                    if selected.count_ones() != 1
                        || selected & !0x03 != 0
                        || !self.provide.contains(crypto)
                    {
                        return Err(MseError::BadSelect {
                            selected,
                            provided: self.provide.bits(),
                        });
                    }
                    if pad_len > MAX_PAD_LEN {
                        return Err(MseError::PeerPadTooLong {
                            what: "padD",
                            len: pad_len,
                        });
                    }
                    self.buf.drain(..6);
                    self.phase = InitiatorPhase::AwaitPadD { crypto, pad_len };
                }
                InitiatorPhase::AwaitPadD { crypto, pad_len } => {
                    if self.buf.len() < pad_len {
                        return Ok(Progress::NeedMore);
                    }
                    let (enc, mut dec) = self.ciphers.take().expect("keys after Yb");
                    dec.apply(&mut self.buf[..pad_len]);
                    let mut payload = self.buf.split_off(pad_len);
                    let stream = match crypto {
                        Crypto::Rc4 => {
                            dec.apply(&mut payload);
                            MseStream {
                                ciphers: Some((enc, dec)),
                            }
                        }
                        Crypto::Plaintext => MseStream::plaintext(),
                    };
                    return Ok(Progress::Done(InitiatorDone {
                        crypto,
                        stream,
                        payload,
                    }));
                }
            }
        }
    }

    /// Step 3: the two hashes, then the encrypted VC, crypto_provide, PadC and IA.
    /// Returns the keyA cipher, positioned after what it encrypted.
    fn write_step3(&self, secret: &[u8; KEY_LEN], out: &mut Vec<u8>) -> Rc4 {
        out.extend_from_slice(&hash2(b"req1", secret));
        let req2 = req2_hash(&self.info_hash);
        let req3 = hash2(b"req3", secret);
        out.extend(req2.iter().zip(req3).map(|(a, b)| a ^ b));
        let start = out.len();
        out.extend_from_slice(&VC);
        out.extend_from_slice(&self.provide.bits().to_be_bytes());
        out.extend_from_slice(&(self.pad_c.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.pad_c);
        out.extend_from_slice(&(self.initial_payload.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.initial_payload);
        let mut enc = Rc4::for_direction(b"keyA", secret, &self.info_hash);
        enc.apply(&mut out[start..]);
        enc
    }
}

/// Where the responder is in the handshake.
#[derive(Debug)]
enum ResponderPhase {
    /// Waiting for the 96 bytes of Ya.
    AwaitPublicKey,
    /// Searching PadA for `HASH('req1', S)`; `scanned` candidate offsets were ruled out.
    AwaitReq1 { req1: [u8; 20], scanned: usize },
    /// Waiting for `HASH('req2', SKEY) xor HASH('req3', S)`.
    AwaitSkey,
    /// Waiting for VC, crypto_provide and len(PadC) (14 encrypted bytes).
    AwaitProvide,
    /// Waiting for PadC and len(IA).
    AwaitPadC { crypto: Crypto, pad_len: usize },
    /// Waiting for IA.
    AwaitInitialPayload { crypto: Crypto, ia_len: usize },
    /// Done or failed.
    Finished,
}

/// The accepting side (B) of the handshake.
pub struct Responder {
    key: DhKey,
    /// A peer public key whose shared secret the caller already knows (see
    /// [`Responder::with_known_secret`]).
    known: Option<Box<([u8; KEY_LEN], [u8; KEY_LEN])>>,
    pad_b: Vec<u8>,
    pad_d: Vec<u8>,
    allowed: CryptoSet,
    prefer: Crypto,
    max_initial_payload: usize,
    secret: [u8; KEY_LEN],
    info_hash: [u8; 20],
    buf: Vec<u8>,
    /// (encrypt with keyB, decrypt with keyA), once SKEY is known.
    ciphers: Option<(Rc4, Rc4)>,
    phase: ResponderPhase,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys and secrets stay out of logs.
        f.debug_struct("Responder")
            .field("phase", &self.phase)
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// A responder that accepts the methods in `allowed` and selects `prefer` when the
    /// initiator provides both. The key (see [`Initiator::new`]) and the pads must come from a good random
    /// source in production. IA up to 65535 bytes is accepted; see
    /// [`Responder::with_max_initial_payload`].
    pub fn new(
        key: impl Into<DhKey>,
        pad_b: Vec<u8>,
        pad_d: Vec<u8>,
        allowed: CryptoSet,
        prefer: Crypto,
    ) -> Result<Self, MseError> {
        check_local_pad("PadB", &pad_b)?;
        check_local_pad("PadD", &pad_d)?;
        check_crypto_set(allowed)?;
        Ok(Responder {
            key: key.into(),
            known: None,
            pad_b,
            pad_d,
            allowed,
            prefer,
            max_initial_payload: u16::MAX as usize,
            secret: [0; KEY_LEN],
            info_hash: [0; 20],
            buf: Vec::new(),
            ciphers: None,
            phase: ResponderPhase::AwaitPublicKey,
        })
    }

    /// Use `secret` as the shared secret if the initiator's public key is `peer_public`,
    /// instead of computing it. For a fake peer in a benchmark that sees the same initiator
    /// key again and again (a real peer pays its own exponentiation); the caller vouches that
    /// `secret` is this responder's key's secret with `peer_public`.
    pub fn with_known_secret(mut self, peer_public: [u8; KEY_LEN], secret: [u8; KEY_LEN]) -> Self {
        self.known = Some(Box::new((peer_public, secret)));
        self
    }

    /// Reject initiators whose IA is longer than `max` bytes (bounds what we buffer).
    pub fn with_max_initial_payload(mut self, max: usize) -> Self {
        self.max_initial_payload = max;
        self
    }

    /// Feed received bytes; whatever must be sent is appended to `out`. `lookup` maps
    /// `HASH('req2', info_hash)` (see [`req2_hash`]) to the info-hash of a torrent we serve.
    pub fn on_bytes(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        lookup: impl FnMut(&[u8; 20]) -> Option<[u8; 20]>,
    ) -> Result<Progress<ResponderDone>, MseError> {
        if let ResponderPhase::Finished = self.phase {
            return Err(MseError::Finished);
        }
        self.buf.extend_from_slice(input);
        let result = self.advance(out, lookup);
        if !matches!(result, Ok(Progress::NeedMore)) {
            self.phase = ResponderPhase::Finished;
            self.buf = Vec::new();
        }
        result
    }

    fn select(&self, provided: u32) -> Result<Crypto, MseError> {
        let common = provided & self.allowed.bits() & 0x03;
        let other = match self.prefer {
            Crypto::Plaintext => Crypto::Rc4,
            Crypto::Rc4 => Crypto::Plaintext,
        };
        if common & self.prefer.bit() != 0 {
            Ok(self.prefer)
        } else if common & other.bit() != 0 {
            Ok(other)
        } else {
            Err(MseError::NoCommonCrypto {
                provided,
                allowed: self.allowed.bits(),
            })
        }
    }

    fn advance(
        &mut self,
        out: &mut Vec<u8>,
        mut lookup: impl FnMut(&[u8; 20]) -> Option<[u8; 20]>,
    ) -> Result<Progress<ResponderDone>, MseError> {
        loop {
            match self.phase {
                ResponderPhase::Finished => return Err(MseError::Finished),
                ResponderPhase::AwaitPublicKey => {
                    let Some(ya) = self.buf.get(..KEY_LEN) else {
                        return Ok(Progress::NeedMore);
                    };
                    let ya: [u8; KEY_LEN] = ya.try_into().expect("96 bytes");
                    self.secret = match self.known.take() {
                        Some(known) if known.0 == ya => known.1,
                        _ => self.key.shared_secret(&ya)?,
                    };
                    self.buf.drain(..KEY_LEN);
                    out.extend_from_slice(self.key.public_key());
                    out.extend_from_slice(&self.pad_b);
                    self.phase = ResponderPhase::AwaitReq1 {
                        req1: hash2(b"req1", &self.secret),
                        scanned: 0,
                    };
                }
                ResponderPhase::AwaitReq1 { req1, scanned } => {
                    let window = &self.buf[..self.buf.len().min(REQ1_SEARCH_LEN)];
                    match find(&window[scanned..], &req1) {
                        Some(at) => {
                            self.buf.drain(..scanned + at + req1.len());
                            self.phase = ResponderPhase::AwaitSkey;
                        }
                        None if window.len() == REQ1_SEARCH_LEN => return Err(MseError::NoReq1),
                        None => {
                            let scanned = window.len().saturating_sub(req1.len() - 1);
                            self.phase = ResponderPhase::AwaitReq1 { req1, scanned };
                            return Ok(Progress::NeedMore);
                        }
                    }
                }
                ResponderPhase::AwaitSkey => {
                    let Some(obfuscated) = self.buf.get(..20) else {
                        return Ok(Progress::NeedMore);
                    };
                    let req3 = hash2(b"req3", &self.secret);
                    let mut req2 = [0u8; 20];
                    for (slot, (a, b)) in req2.iter_mut().zip(obfuscated.iter().zip(req3)) {
                        *slot = a ^ b;
                    }
                    self.info_hash = lookup(&req2).ok_or(MseError::UnknownInfoHash)?;
                    self.buf.drain(..20);
                    let enc = Rc4::for_direction(b"keyB", &self.secret, &self.info_hash);
                    let dec = Rc4::for_direction(b"keyA", &self.secret, &self.info_hash);
                    self.ciphers = Some((enc, dec));
                    self.phase = ResponderPhase::AwaitProvide;
                }
                ResponderPhase::AwaitProvide => {
                    let Some(head) = self.buf.get_mut(..14) else {
                        return Ok(Progress::NeedMore);
                    };
                    let (_, dec) = self.ciphers.as_mut().expect("keys after SKEY");
                    dec.apply(head);
                    let vc: [u8; 8] = head[..8].try_into().expect("8");
                    if vc != VC {
                        return Err(MseError::BadVc(vc));
                    }
                    let provided = u32::from_be_bytes(head[8..12].try_into().expect("4"));
                    let pad_len = u16::from_be_bytes(head[12..14].try_into().expect("2")) as usize;
                    let crypto = self.select(provided)?;
                    if pad_len > MAX_PAD_LEN {
                        return Err(MseError::PeerPadTooLong {
                            what: "PadC",
                            len: pad_len,
                        });
                    }
                    self.buf.drain(..14);
                    self.phase = ResponderPhase::AwaitPadC { crypto, pad_len };
                }
                ResponderPhase::AwaitPadC { crypto, pad_len } => {
                    let Some(pad_and_len) = self.buf.get_mut(..pad_len + 2) else {
                        return Ok(Progress::NeedMore);
                    };
                    let (_, dec) = self.ciphers.as_mut().expect("keys after SKEY");
                    dec.apply(pad_and_len);
                    let ia_len =
                        u16::from_be_bytes(pad_and_len[pad_len..].try_into().expect("2")) as usize;
                    if ia_len > self.max_initial_payload {
                        return Err(MseError::InitialPayloadTooLong {
                            len: ia_len,
                            max: self.max_initial_payload,
                        });
                    }
                    self.buf.drain(..pad_len + 2);
                    self.phase = ResponderPhase::AwaitInitialPayload { crypto, ia_len };
                }
                ResponderPhase::AwaitInitialPayload { crypto, ia_len } => {
                    if self.buf.len() < ia_len {
                        return Ok(Progress::NeedMore);
                    }
                    let (mut enc, mut dec) = self.ciphers.take().expect("keys after SKEY");
                    let mut payload = self.buf.split_off(ia_len);
                    let mut initial_payload = std::mem::take(&mut self.buf);
                    dec.apply(&mut initial_payload);
                    // Step 4: ENCRYPT(VC, crypto_select, len(padD), padD).
                    let start = out.len();
                    out.extend_from_slice(&VC);
                    out.extend_from_slice(&crypto.bit().to_be_bytes());
                    out.extend_from_slice(&(self.pad_d.len() as u16).to_be_bytes());
                    out.extend_from_slice(&self.pad_d);
                    enc.apply(&mut out[start..]);
                    let stream = match crypto {
                        Crypto::Rc4 => {
                            dec.apply(&mut payload);
                            MseStream {
                                ciphers: Some((enc, dec)),
                            }
                        }
                        Crypto::Plaintext => MseStream::plaintext(),
                    };
                    return Ok(Progress::Done(ResponderDone {
                        info_hash: self.info_hash,
                        crypto,
                        stream,
                        initial_payload,
                        payload,
                    }));
                }
            }
        }
    }
}

/// A lookup for [`Responder::on_bytes`] over a small list of info-hashes (linear scan; for
/// many torrents keep a map from [`req2_hash`] to info-hash instead).
pub fn lookup_in(known: &[[u8; 20]]) -> impl FnMut(&[u8; 20]) -> Option<[u8; 20]> + '_ {
    move |req2| known.iter().find(|ih| req2_hash(ih) == *req2).copied()
}

#[cfg(test)]
mod tests;
