//! IP address anonymisation (`privacy.ip`): pure functions of (mode, key, address).
//!
//! Every mode yields two strings: `key`, which tells peers apart (the `peers` row identity,
//! together with torrent and port), and `shown`, which is what reports print. In `full` mode
//! both are the address; in `hmac` mode both are the keyed hash; in `truncate` mode `shown` is
//! the /24 (IPv4) or /48 (IPv6) network and `key` the keyed hash, so that two peers of one
//! network stay two peers.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// How peer IP addresses are written to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpMode {
    /// The address as it is.
    Full,
    /// IPv4 /24 and IPv6 /48 networks only (peers are still told apart by a keyed hash).
    Truncate,
    /// A keyed HMAC-SHA256 of the address (hex); the key never leaves the key file.
    Hmac,
}

impl IpMode {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            IpMode::Full => "full",
            IpMode::Truncate => "truncate",
            IpMode::Hmac => "hmac",
        }
    }
}

/// Length of an HMAC key.
pub const KEY_LEN: usize = 32;

/// Hex digits of the hash kept (128 bits: no collision among billions of addresses).
const HASH_HEX_LEN: usize = 32;

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block_key.map(|b| b ^ 0x36));
    inner.update(message);
    let inner_hash = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block_key.map(|b| b ^ 0x5c));
    outer.update(inner_hash);
    outer.finalize().into()
}

/// How an address is written to the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredIp {
    /// Identity of the address (unique per address under one key).
    pub key: String,
    /// What reports print.
    pub shown: String,
}

/// An IPv4-mapped IPv6 address is the IPv4 address (peers report both forms).
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The /24 (IPv4) or /48 (IPv6) network of an address, e.g. "192.0.2.0/24".
pub fn truncate_ip(ip: IpAddr) -> String {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{}/24", Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{}/48", Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
    }
}

/// Keyed hash of an address: first 128 bits of HMAC-SHA256(key, address octets), hex.
pub fn hash_ip(key: &[u8; KEY_LEN], ip: IpAddr) -> String {
    let mac = match canonical_ip(ip) {
        IpAddr::V4(v4) => hmac_sha256(key, &v4.octets()),
        IpAddr::V6(v6) => hmac_sha256(key, &v6.octets()),
    };
    let mut hex = crate::proto::hex::encode(&mac);
    hex.truncate(HASH_HEX_LEN);
    hex
}

/// The anonymiser: a mode and (for `truncate` and `hmac`) a key.
#[derive(Clone)]
pub struct Anonymizer {
    mode: IpMode,
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for Anonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Anonymizer")
            .field("mode", &self.mode)
            .field("key_fingerprint", &self.key_fingerprint())
            .finish()
    }
}

impl Anonymizer {
    /// An anonymiser with an explicit key.
    pub fn new(mode: IpMode, key: [u8; KEY_LEN]) -> Anonymizer {
        Anonymizer { mode, key }
    }

    /// The mode.
    pub fn mode(&self) -> IpMode {
        self.mode
    }

    /// How `ip` is stored.
    pub fn anonymize(&self, ip: IpAddr) -> StoredIp {
        match self.mode {
            IpMode::Full => {
                let s = canonical_ip(ip).to_string();
                StoredIp {
                    key: s.clone(),
                    shown: s,
                }
            }
            IpMode::Truncate => StoredIp {
                key: hash_ip(&self.key, ip),
                shown: truncate_ip(ip),
            },
            IpMode::Hmac => {
                let h = hash_ip(&self.key, ip);
                StoredIp {
                    key: h.clone(),
                    shown: h,
                }
            }
        }
    }

    /// A public fingerprint of the key (stored in the database to detect a changed key file,
    /// which would silently split every peer in two).
    pub fn key_fingerprint(&self) -> String {
        let mut hex =
            crate::proto::hex::encode(&hmac_sha256(&self.key, b"swarmscan key fingerprint"));
        hex.truncate(16);
        hex
    }

    /// Loads the key from `path`, creating the file with 32 bytes from /dev/urandom (mode 0600)
    /// when it does not exist. `full` mode needs no key and never touches the file.
    pub fn from_key_file(mode: IpMode, path: &Path) -> std::io::Result<Anonymizer> {
        if mode == IpMode::Full {
            return Ok(Anonymizer::new(mode, [0; KEY_LEN]));
        }
        match std::fs::read(path) {
            Ok(bytes) => {
                let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "HMAC key file {} must hold exactly {KEY_LEN} bytes, has {}",
                            path.display(),
                            bytes.len()
                        ),
                    )
                })?;
                Ok(Anonymizer::new(mode, key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_LEN];
                std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
                use std::io::Write as _;
                use std::os::unix::fs::OpenOptionsExt as _;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                file.write_all(&key)?;
                file.sync_all()?;
                Ok(Anonymizer::new(mode, key))
            }
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("cannot read HMAC key file {}: {e}", path.display()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test cases 1, 2 and 6 (key longer than a block).
        let hex = |b: [u8; 32]| crate::proto::hex::encode(&b);
        assert_eq!(
            hex(hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn full_mode_keeps_the_address_and_unmaps_v4_in_v6() {
        let a = Anonymizer::new(IpMode::Full, [0; KEY_LEN]);
        assert_eq!(a.anonymize("192.0.2.7".parse().unwrap()).shown, "192.0.2.7");
        assert_eq!(
            a.anonymize("::ffff:192.0.2.7".parse().unwrap()).key,
            "192.0.2.7"
        );
        assert_eq!(
            a.anonymize("2001:db8::1".parse().unwrap()).shown,
            "2001:db8::1"
        );
    }

    #[test]
    fn truncate_mode_shows_networks_but_keeps_peers_apart() {
        let a = Anonymizer::new(IpMode::Truncate, [7; KEY_LEN]);
        let x = a.anonymize("192.0.2.7".parse().unwrap());
        let y = a.anonymize("192.0.2.200".parse().unwrap());
        assert_eq!(x.shown, "192.0.2.0/24");
        assert_eq!(y.shown, "192.0.2.0/24");
        assert_ne!(x.key, y.key);
        assert_eq!(
            a.anonymize("2001:db8:abcd:1234::1".parse().unwrap()).shown,
            "2001:db8:abcd::/48"
        );
    }

    #[test]
    fn hmac_mode_is_keyed_deterministic_and_hides_the_address() {
        let a = Anonymizer::new(IpMode::Hmac, [1; KEY_LEN]);
        let b = Anonymizer::new(IpMode::Hmac, [2; KEY_LEN]);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let s = a.anonymize(ip);
        assert_eq!(s, a.anonymize(ip));
        assert_eq!(s.key.len(), 32);
        assert!(!s.shown.contains("198"));
        assert_ne!(s.key, b.anonymize(ip).key);
        assert_ne!(s.key, a.anonymize("198.51.100.2".parse().unwrap()).key);
        // The hash is over the address octets under the key: recompute it independently.
        let expected = crate::proto::hex::encode(&hmac_sha256(&[1; KEY_LEN], &[198, 51, 100, 1]));
        assert_eq!(s.key, expected[..32]);
        // The v4-mapped form is the same peer.
        assert_eq!(s, a.anonymize("::ffff:198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let a = Anonymizer::from_key_file(IpMode::Hmac, &path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), KEY_LEN);
        let b = Anonymizer::from_key_file(IpMode::Hmac, &path).unwrap();
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(a.anonymize(ip), b.anonymize(ip));
        assert_eq!(a.key_fingerprint(), b.key_fingerprint());
        std::fs::write(&path, b"short").unwrap();
        let e = Anonymizer::from_key_file(IpMode::Hmac, &path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exactly 32 bytes"), "{e}");
        // Full mode never creates a key file.
        let none = dir.path().join("none");
        Anonymizer::from_key_file(IpMode::Full, &none).unwrap();
        assert!(!none.exists());
    }
}
