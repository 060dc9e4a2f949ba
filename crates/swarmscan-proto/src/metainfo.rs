//! Torrent metainfo (.torrent files): BEP 3 (v1), BEP 52 (v2 and hybrid), BEP 12
//! (announce-list), BEP 19 (url-list), BEP 27 (private), BEP 47 (pad files).
//!
//! Info-hashes are computed over the raw bytes of the `info` dictionary exactly as they
//! appear in the input ([`Value::raw`]), never over a re-encoding.

use std::fmt;
use std::str::FromStr;

use sha1::{Digest, Sha1};
use sha2::Sha256;

use super::bencode::{self, DecodeError, FieldError, Value};
use super::hex;

/// BEP 3 v1 info-hash: SHA-1 of the bencoded info dictionary.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHashV1(pub [u8; 20]);

/// BEP 52 v2 info-hash: SHA-256 of the bencoded info dictionary.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHashV2(pub [u8; 32]);

impl InfoHashV2 {
    /// The first 20 bytes, which is what v2 swarms use on the wire (handshake, trackers, DHT).
    pub fn truncated(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out.copy_from_slice(&self.0[..20]);
        out
    }
}

macro_rules! hash_impls {
    ($t:ty, $n:expr, $what:expr) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(&self.0))
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($t), self)
            }
        }
        impl FromStr for $t {
            type Err = String;
            /// Parses exactly the hex form (either case).
            fn from_str(s: &str) -> Result<Self, String> {
                hex::decode_array::<$n>(s)
                    .map(Self)
                    .ok_or_else(|| format!("not a {}: expected {} hex digits", $what, $n * 2))
            }
        }
    };
}
hash_impls!(InfoHashV1, 20, "v1 info-hash");
hash_impls!(InfoHashV2, 32, "v2 info-hash");

/// The info-hashes a torrent is known by: v1, v2, or both (hybrid). At least one is set
/// for anything produced by this module.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct InfoHashes {
    pub v1: Option<InfoHashV1>,
    pub v2: Option<InfoHashV2>,
}

impl InfoHashes {
    /// The 20-byte ids peers of this torrent may use on the wire: the v1 hash and the
    /// truncated v2 hash (a hybrid torrent has two swarms).
    pub fn wire_ids(&self) -> Vec<[u8; 20]> {
        self.v1
            .map(|h| h.0)
            .into_iter()
            .chain(self.v2.map(|h| h.truncated()))
            .collect()
    }
    /// The id to use when only one is wanted: v1 if present (larger swarms today), else
    /// truncated v2. `None` only for an empty value.
    pub fn primary_wire_id(&self) -> Option<[u8; 20]> {
        self.wire_ids().into_iter().next()
    }
    /// True when neither hash is set.
    pub fn is_empty(&self) -> bool {
        self.v1.is_none() && self.v2.is_none()
    }
}

/// Which metainfo format a torrent uses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MetaVersion {
    /// BEP 3 only.
    V1,
    /// BEP 52 only.
    V2,
    /// Both v1 and v2 descriptions of the same content.
    Hybrid,
}

impl MetaVersion {
    /// Short name: "v1", "v2" or "hybrid".
    pub fn as_str(&self) -> &'static str {
        match self {
            MetaVersion::V1 => "v1",
            MetaVersion::V2 => "v2",
            MetaVersion::Hybrid => "hybrid",
        }
    }
}

/// One (non-pad) file of a torrent.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FileEntry {
    /// Path as it would be on disk, relative to the download directory: `[name]` for a
    /// single-file torrent, `[name, dir.., file]` for a multi-file one. Invalid UTF-8 is
    /// replaced (display only; never used to touch disk).
    pub path: Vec<String>,
    /// Length in bytes.
    pub length: u64,
}

impl FileEntry {
    /// Path components joined with `/`.
    pub fn display_path(&self) -> String {
        self.path.join("/")
    }
}

/// A parsed torrent.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Metainfo {
    pub info_hashes: InfoHashes,
    pub version: MetaVersion,
    /// Suggested name (file name for single-file torrents, directory name otherwise).
    pub name: String,
    pub piece_length: u64,
    pub piece_count: u64,
    /// Sum of the lengths of all real files (pad files excluded).
    pub total_size: u64,
    /// Bytes of BEP 47 padding (v1 pad files, or the implicit piece alignment of v2 files
    /// except the last). `total_size + padding_size` is what v1 pieces cover.
    pub padding_size: u64,
    /// Real files, in torrent order; pad files are left out.
    pub files: Vec<FileEntry>,
    /// Number of pad files in the v1 file list (0 for v2-only torrents).
    pub pad_file_count: usize,
    /// True for a single-file torrent (v1 `length`, or a v2 file tree with one file at the top).
    pub single_file: bool,
    /// Tracker tiers (BEP 12), deduplicated, empty tiers dropped.
    pub trackers: Vec<Vec<String>>,
    /// Web seeds (BEP 19 `url-list`).
    pub url_list: Vec<String>,
    /// BEP 27 private flag.
    pub private: bool,
    /// Seconds since the Unix epoch, as written by the creator.
    pub creation_date: Option<i64>,
    pub comment: Option<String>,
    pub created_by: Option<String>,
    /// Size of the bencoded info dictionary (what ut_metadata transfers).
    pub info_size: usize,
}

/// Why a torrent could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetainfoError {
    /// Not bencode at all (or truncated, or too large).
    #[error("not a torrent: {0}")]
    Decode(#[from] DecodeError),
    /// Bencode, but a field is missing, of the wrong type or has an invalid value.
    #[error("invalid torrent: {0}")]
    Field(#[from] FieldError),
    /// A hybrid torrent whose v1 and v2 parts describe different content.
    #[error("invalid torrent: v1 and v2 parts disagree: {0}")]
    HybridMismatch(String),
    /// Metadata whose hash is not the one we asked for.
    #[error("info-hash mismatch: expected {expected}, got {actual}")]
    HashMismatch { expected: String, actual: String },
}

fn expect_dict<'v, 'a>(v: &'v Value<'a>, field: &str) -> Result<&'v Value<'a>, FieldError> {
    match v.as_dict() {
        Some(_) => Ok(v),
        None => Err(FieldError::wrong_type(field, v, "dictionary")),
    }
}

fn expect_list<'v, 'a>(v: &'v Value<'a>, field: &str) -> Result<&'v [Value<'a>], FieldError> {
    v.as_list()
        .ok_or_else(|| FieldError::wrong_type(field, v, "list"))
}

fn expect_bytes<'a>(v: &Value<'a>, field: &str) -> Result<&'a [u8], FieldError> {
    v.as_bytes()
        .ok_or_else(|| FieldError::wrong_type(field, v, "byte string"))
}

fn expect_len(v: &Value<'_>, field: &str) -> Result<u64, FieldError> {
    let i = v
        .as_int()
        .ok_or_else(|| FieldError::wrong_type(field, v, "integer"))?;
    u64::try_from(i).map_err(|_| FieldError::invalid(field, v, format!("negative ({i})")))
}

/// Checks one path component (or the name) so a torrent can never name a file outside
/// its own directory.
fn path_component(bytes: &[u8], field: &str, v: &Value<'_>) -> Result<String, FieldError> {
    let problem = if bytes.is_empty() {
        Some("empty path component")
    } else if bytes == b".." || bytes == b"." {
        Some("path traversal component")
    } else if bytes.contains(&b'/') {
        Some("'/' inside a path component")
    } else if bytes.contains(&0) {
        Some("NUL byte inside a path component")
    } else {
        None
    };
    match problem {
        Some(p) => Err(FieldError::invalid(
            field,
            v,
            format!("{p}: {}", bencode::DebugBytes(bytes)),
        )),
        None => Ok(String::from_utf8_lossy(bytes).into_owned()),
    }
}

struct Files {
    files: Vec<FileEntry>,
    pad_files: usize,
    /// Sum of real file lengths.
    content: u64,
    /// Sum of pad file lengths.
    padding: u64,
}

fn add_size(total: u64, len: u64, field: &str, v: &Value<'_>) -> Result<u64, FieldError> {
    total
        .checked_add(len)
        .ok_or_else(|| FieldError::invalid(field, v, "total size overflows 64 bits"))
}

fn is_legacy_pad_name(path: &[Vec<u8>]) -> bool {
    path.last()
        .is_some_and(|last| last.starts_with(b"_____padding_file_"))
        || path.iter().any(|c| c == b".____padding_file")
}

/// v1 `length` or `files`.
fn v1_files(info: &Value<'_>, name: &str) -> Result<(Files, bool), FieldError> {
    match (info.get("length"), info.get("files")) {
        (Some(len), None) => {
            let length = expect_len(len, "length")?;
            let files = Files {
                files: vec![FileEntry {
                    path: vec![name.to_string()],
                    length,
                }],
                pad_files: 0,
                content: length,
                padding: 0,
            };
            Ok((files, true))
        }
        (None, Some(list)) => {
            let entries = expect_list(list, "files")?;
            let mut out = Files {
                files: Vec::new(),
                pad_files: 0,
                content: 0,
                padding: 0,
            };
            for (i, entry) in entries.iter().enumerate() {
                let field = |k: &str| format!("files[{i}].{k}");
                expect_dict(entry, &format!("files[{i}]"))?;
                let len_v = entry
                    .get("length")
                    .ok_or_else(|| FieldError::Missing(field("length")))?;
                let length = expect_len(len_v, &field("length"))?;
                let path_v = entry
                    .get("path")
                    .ok_or_else(|| FieldError::Missing(field("path")))?;
                let comps = expect_list(path_v, &field("path"))?;
                if comps.is_empty() {
                    return Err(FieldError::invalid(&field("path"), path_v, "empty path"));
                }
                let mut raw = Vec::with_capacity(comps.len());
                let mut path = Vec::with_capacity(comps.len() + 1);
                path.push(name.to_string());
                for c in comps {
                    let b = expect_bytes(c, &field("path"))?;
                    path.push(path_component(b, &field("path"), c)?);
                    raw.push(b.to_vec());
                }
                let attr = match entry.get("attr") {
                    Some(a) => expect_bytes(a, &field("attr"))?,
                    None => b"",
                };
                if attr.contains(&b'p') || is_legacy_pad_name(&raw) {
                    out.pad_files += 1;
                    out.padding = add_size(out.padding, length, &field("length"), len_v)?;
                } else {
                    out.content = add_size(out.content, length, &field("length"), len_v)?;
                    out.files.push(FileEntry { path, length });
                }
            }
            Ok((out, false))
        }
        (Some(len), Some(_)) => Err(FieldError::invalid(
            "length",
            len,
            "both `length` and `files` present",
        )),
        (None, None) => Err(FieldError::Missing("length` or `files".to_string())),
    }
}

/// v2 `file tree`: returns files in tree order and the number of pieces they need.
fn v2_files(
    tree: &Value<'_>,
    name: &str,
    piece_length: u64,
) -> Result<(Files, u64, bool), FieldError> {
    expect_dict(tree, "file tree")?;
    let mut out = Files {
        files: Vec::new(),
        pad_files: 0,
        content: 0,
        padding: 0,
    };
    let mut pieces = 0u64;
    let mut prefix = Vec::new();
    walk_tree(tree, &mut prefix, piece_length, &mut out, &mut pieces)?;
    // Single-file: one file directly at the top of the tree.
    let single = out.files.len() == 1 && out.files[0].path.len() == 1;
    if !single {
        for f in &mut out.files {
            f.path.insert(0, name.to_string());
        }
    }
    // Every file but the last is aligned to a piece boundary in v2.
    let mut padding = 0u64;
    let n = out.files.len();
    for f in out.files.iter().take(n.saturating_sub(1)) {
        let rem = f.length % piece_length;
        if rem != 0 {
            padding += piece_length - rem;
        }
    }
    out.padding = padding;
    Ok((out, pieces, single))
}

// Recursion depth is bounded by the bencode decoder's depth limit.
fn walk_tree(
    node: &Value<'_>,
    prefix: &mut Vec<String>,
    piece_length: u64,
    out: &mut Files,
    pieces: &mut u64,
) -> Result<(), FieldError> {
    let entries = node.as_dict().unwrap_or_default();
    for (key, child) in entries {
        let field = "file tree";
        expect_dict(child, field)?;
        if key.is_empty() {
            // A file's properties. It must be the only key of its parent, and the parent
            // must have a name (not the root of the tree).
            if prefix.is_empty() || entries.len() != 1 {
                return Err(FieldError::invalid(
                    field,
                    child,
                    "file properties mixed with directory entries",
                ));
            }
            let len_v = child
                .req("length")
                .map_err(|e| relabel(e, "file tree length"))?;
            let length = expect_len(len_v, "file tree length")?;
            if length > 0 {
                let root = child
                    .req("pieces root")
                    .map_err(|e| relabel(e, "pieces root"))?;
                let root_bytes = expect_bytes(root, "pieces root")?;
                if root_bytes.len() != 32 {
                    return Err(FieldError::invalid(
                        "pieces root",
                        root,
                        format!("length {} instead of 32", root_bytes.len()),
                    ));
                }
            }
            *pieces = pieces
                .checked_add(length.div_ceil(piece_length))
                .ok_or_else(|| FieldError::invalid(field, child, "piece count overflows"))?;
            out.content = add_size(out.content, length, "file tree length", len_v)?;
            out.files.push(FileEntry {
                path: prefix.clone(),
                length,
            });
            continue;
        }
        prefix.push(path_component(key, field, child)?);
        walk_tree(child, prefix, piece_length, out, pieces)?;
        prefix.pop();
    }
    Ok(())
}

fn relabel(e: FieldError, field: &str) -> FieldError {
    match e {
        FieldError::Missing(_) => FieldError::Missing(field.to_string()),
        FieldError::WrongType {
            offset,
            expected,
            found,
            ..
        } => FieldError::WrongType {
            field: field.to_string(),
            offset,
            expected,
            found,
        },
        FieldError::Invalid {
            offset, problem, ..
        } => FieldError::Invalid {
            field: field.to_string(),
            offset,
            problem,
        },
    }
}

/// Everything that comes from the info dictionary.
struct InfoPart {
    info_hashes: InfoHashes,
    version: MetaVersion,
    name: String,
    piece_length: u64,
    piece_count: u64,
    files: Files,
    single_file: bool,
    private: bool,
    info_size: usize,
}

fn parse_info(info: &Value<'_>) -> Result<InfoPart, MetainfoError> {
    expect_dict(info, "info")?;
    let raw = info.raw();
    let name_v = info.req("name")?;
    let name = path_component(expect_bytes(name_v, "name")?, "name", name_v)?;
    let plen_v = info.req("piece length")?;
    let piece_length = expect_len(plen_v, "piece length")?;
    if piece_length == 0 {
        return Err(FieldError::invalid("piece length", plen_v, "zero").into());
    }
    let meta_version = info.opt_int("meta version")?;
    let has_v2 = match meta_version {
        None => false,
        Some(2) => true,
        Some(other) => {
            let v = info.get("meta version").unwrap_or(info);
            return Err(FieldError::invalid(
                "meta version",
                v,
                format!("unsupported version {other}"),
            )
            .into());
        }
    };
    let has_v1 = info.get("pieces").is_some();
    if !has_v1 && !has_v2 {
        return Err(FieldError::Missing("pieces".to_string()).into());
    }

    let v1 = if has_v1 {
        let pieces_v = info.req("pieces")?;
        let pieces = expect_bytes(pieces_v, "pieces")?;
        if pieces.len() % 20 != 0 {
            return Err(FieldError::invalid(
                "pieces",
                pieces_v,
                format!("length {} is not a multiple of 20", pieces.len()),
            )
            .into());
        }
        let count = (pieces.len() / 20) as u64;
        let (files, single) = v1_files(info, &name)?;
        let covered = files.content + files.padding; // cannot overflow: checked per file
        let expected = covered.div_ceil(piece_length);
        if count != expected {
            return Err(FieldError::invalid(
                "pieces",
                pieces_v,
                format!("{count} piece hashes for {covered} bytes in pieces of {piece_length} (need {expected})"),
            )
            .into());
        }
        Some((files, count, single))
    } else {
        None
    };

    let v2 = if has_v2 {
        if !piece_length.is_power_of_two() || piece_length < 16384 {
            return Err(FieldError::invalid(
                "piece length",
                plen_v,
                format!("{piece_length} is not a power of two of at least 16 KiB (required by v2)"),
            )
            .into());
        }
        let tree = info.req("file tree")?;
        Some(v2_files(tree, &name, piece_length)?)
    } else {
        None
    };

    let private = match info.get("private") {
        None => false,
        Some(v) => {
            v.as_int()
                .ok_or_else(|| FieldError::wrong_type("private", v, "integer"))?
                == 1
        }
    };

    let info_hashes = InfoHashes {
        v1: has_v1.then(|| InfoHashV1(Sha1::digest(raw).into())),
        v2: has_v2.then(|| InfoHashV2(Sha256::digest(raw).into())),
    };

    let (version, files, piece_count, single_file) = match (v1, v2) {
        (Some((f, n, s)), None) => (MetaVersion::V1, f, n, s),
        (None, Some((f, n, s))) => (MetaVersion::V2, f, n, s),
        (Some((f1, n1, s1)), Some((f2, n2, _))) => {
            check_hybrid(&f1, n1, &f2, n2)?;
            (MetaVersion::Hybrid, f1, n1, s1)
        }
        (None, None) => unreachable_missing()?,
    };
    Ok(InfoPart {
        info_hashes,
        version,
        name,
        piece_length,
        piece_count,
        files,
        single_file,
        private,
        info_size: raw.len(),
    })
}

// Kept as a function (not `unreachable!`) so no input can ever panic the parser.
fn unreachable_missing<T>() -> Result<T, MetainfoError> {
    Err(FieldError::Missing("pieces".to_string()).into())
}

fn check_hybrid(
    v1: &Files,
    v1_pieces: u64,
    v2: &Files,
    v2_pieces: u64,
) -> Result<(), MetainfoError> {
    if v1.files.len() != v2.files.len() {
        return Err(MetainfoError::HybridMismatch(format!(
            "{} files in v1, {} in v2",
            v1.files.len(),
            v2.files.len()
        )));
    }
    for (a, b) in v1.files.iter().zip(&v2.files) {
        if a != b {
            return Err(MetainfoError::HybridMismatch(format!(
                "v1 file {} ({} bytes) vs v2 file {} ({} bytes)",
                a.display_path(),
                a.length,
                b.display_path(),
                b.length
            )));
        }
    }
    if v1_pieces != v2_pieces {
        return Err(MetainfoError::HybridMismatch(format!(
            "{v1_pieces} pieces in v1, {v2_pieces} in v2"
        )));
    }
    Ok(())
}

fn nonempty_utf8(v: &Value<'_>) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

/// BEP 12 tiers, or `announce` as a single tier when there is no usable announce-list.
fn trackers(root: &Value<'_>) -> Result<Vec<Vec<String>>, FieldError> {
    let mut seen = std::collections::HashSet::new();
    let mut tiers = Vec::new();
    if let Some(list_v) = root.get("announce-list") {
        for tier_v in expect_list(list_v, "announce-list")? {
            let mut tier = Vec::new();
            for url_v in expect_list(tier_v, "announce-list")? {
                expect_bytes(url_v, "announce-list")?;
                // Non-UTF-8 URLs cannot be announced to; skip them rather than reject the torrent.
                if let Some(url) = nonempty_utf8(url_v) {
                    if seen.insert(url.clone()) {
                        tier.push(url);
                    }
                }
            }
            if !tier.is_empty() {
                tiers.push(tier);
            }
        }
    }
    if tiers.is_empty() {
        if let Some(a) = root.get("announce") {
            expect_bytes(a, "announce")?;
            if let Some(url) = nonempty_utf8(a) {
                tiers.push(vec![url]);
            }
        }
    }
    Ok(tiers)
}

/// BEP 19 `url-list`: one string or a list of strings.
fn url_list(root: &Value<'_>) -> Result<Vec<String>, FieldError> {
    let Some(v) = root.get("url-list") else {
        return Ok(Vec::new());
    };
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    if v.as_bytes().is_some() {
        out.extend(nonempty_utf8(v));
    } else {
        for u in expect_list(v, "url-list")? {
            expect_bytes(u, "url-list")?;
            if let Some(s) = nonempty_utf8(u) {
                if seen.insert(s.clone()) {
                    out.push(s);
                }
            }
        }
    }
    Ok(out)
}

impl Metainfo {
    /// Parses a whole .torrent file.
    pub fn from_bytes(buf: &[u8]) -> Result<Metainfo, MetainfoError> {
        let root = bencode::decode(buf)?;
        if root.as_dict().is_none() {
            return Err(FieldError::wrong_type("torrent", &root, "dictionary").into());
        }
        let info = parse_info(root.req("info")?)?;
        // Informational fields are optional and often sloppy in the wild; a wrong type there
        // is ignored rather than making the whole torrent unusable.
        let text = |k: &str| {
            root.get(k)
                .and_then(|v| v.as_bytes())
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        Ok(Metainfo {
            trackers: trackers(&root)?,
            url_list: url_list(&root)?,
            creation_date: root.get("creation date").and_then(|v| v.as_int()),
            comment: text("comment"),
            created_by: text("created by"),
            ..Self::from_info(info)
        })
    }

    /// Parses an info dictionary received with ut_metadata (BEP 9) and checks it hashes to
    /// what was asked for: every hash set in `expected` must match (a v1-only `expected`
    /// accepts a hybrid torrent with that v1 hash).
    pub fn from_info_dict(info: &[u8], expected: &InfoHashes) -> Result<Metainfo, MetainfoError> {
        let root = bencode::decode(info)?;
        let part = parse_info(&root)?;
        let got = part.info_hashes;
        let mismatch = |e: String, a: String| MetainfoError::HashMismatch {
            expected: e,
            actual: a,
        };
        if let Some(want) = expected.v1 {
            if got.v1 != Some(want) {
                return Err(mismatch(
                    want.to_string(),
                    got.v1.map_or("no v1 hash".into(), |h| h.to_string()),
                ));
            }
        }
        if let Some(want) = expected.v2 {
            if got.v2 != Some(want) {
                return Err(mismatch(
                    want.to_string(),
                    got.v2.map_or("no v2 hash".into(), |h| h.to_string()),
                ));
            }
        }
        if expected.is_empty() {
            return Err(mismatch("a hash".into(), "nothing to check against".into()));
        }
        Ok(Self::from_info(part))
    }

    fn from_info(p: InfoPart) -> Metainfo {
        Metainfo {
            info_hashes: p.info_hashes,
            version: p.version,
            name: p.name,
            piece_length: p.piece_length,
            piece_count: p.piece_count,
            total_size: p.files.content,
            padding_size: p.files.padding,
            files: p.files.files,
            pad_file_count: p.files.pad_files,
            single_file: p.single_file,
            trackers: Vec::new(),
            url_list: Vec::new(),
            private: p.private,
            creation_date: None,
            comment: None,
            created_by: None,
            info_size: p.info_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode::OwnedValue;

    fn pieces(n: usize) -> OwnedValue {
        OwnedValue::Bytes(vec![0xaa; 20 * n])
    }

    fn v1_single(len: i64, plen: i64) -> OwnedValue {
        OwnedValue::dict()
            .with("name", "file.bin")
            .with("length", len)
            .with("piece length", plen)
            .with("pieces", pieces(((len + plen - 1) / plen) as usize))
    }

    fn torrent(info: OwnedValue) -> OwnedValue {
        OwnedValue::dict().with("info", info)
    }

    fn file(len: i64, path: &[&str]) -> OwnedValue {
        OwnedValue::dict().with("length", len).with(
            "path",
            path.iter()
                .map(|&c| OwnedValue::from(c))
                .collect::<Vec<_>>(),
        )
    }

    fn parse(t: &OwnedValue) -> Result<Metainfo, MetainfoError> {
        Metainfo::from_bytes(&t.encode())
    }

    #[test]
    fn v1_hash_is_sha1_of_the_raw_info_bytes() {
        // Keys out of order: a re-encoding would sort them and hash differently.
        let info = b"d6:lengthi3e4:name1:x6:pieces20:aaaaaaaaaaaaaaaaaaaa12:piece lengthi16384ee";
        let mut buf = b"d4:info".to_vec();
        buf.extend_from_slice(info);
        buf.push(b'e');
        let m = Metainfo::from_bytes(&buf).unwrap();
        let want: [u8; 20] = Sha1::digest(info).into();
        assert_eq!(m.info_hashes.v1, Some(InfoHashV1(want)));
        assert_eq!(m.info_hashes.v2, None);
        assert_eq!(m.info_size, info.len());
        assert_eq!((m.piece_count, m.total_size), (1, 3));
        assert_eq!(
            m.files,
            [FileEntry {
                path: vec!["x".into()],
                length: 3
            }]
        );
    }

    #[test]
    fn multi_file_with_pad_files() {
        let files = vec![
            file(10, &["a", "b.txt"]),
            OwnedValue::dict()
                .with("attr", "p")
                .with("length", 16374)
                .with("path", vec![OwnedValue::from(".pad"), "16374".into()]),
            file(5, &["c"]),
        ];
        let info = OwnedValue::dict()
            .with("name", "dir")
            .with("files", files)
            .with("piece length", 16384)
            .with("pieces", pieces(2));
        let m = parse(&torrent(info)).unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.files[0].display_path(), "dir/a/b.txt");
        assert_eq!(m.files[1].display_path(), "dir/c");
        assert_eq!(
            (m.total_size, m.padding_size, m.pad_file_count),
            (15, 16374, 1)
        );
        assert_eq!(m.piece_count, 2);
        assert!(!m.single_file);
    }

    #[test]
    fn errors_name_field_and_offset() {
        let info = v1_single(3, 16384).with("piece length", "16384");
        let buf = torrent(info).encode();
        let at = buf.windows(7).position(|w| w == b"5:16384").unwrap();
        let e = Metainfo::from_bytes(&buf).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("invalid torrent: field `piece length` at byte {at}: expected integer, found byte string")
        );

        let e = parse(&torrent(
            v1_single(3, 16384).with("pieces", OwnedValue::Bytes(vec![0; 21])),
        ))
        .unwrap_err();
        assert!(
            e.to_string().ends_with("length 21 is not a multiple of 20"),
            "{e}"
        );
        let e = parse(&torrent(v1_single(40000, 16384).with("pieces", pieces(2)))).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("2 piece hashes for 40000 bytes in pieces of 16384 (need 3)"),
            "{e}"
        );
        let e = parse(&torrent(v1_single(-1, 16384))).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid torrent: field `length` at byte"),
            "{e}"
        );
        assert!(e.to_string().ends_with("negative (-1)"), "{e}");
        let e = parse(&torrent(v1_single(3, 16384).with("piece length", 0))).unwrap_err();
        assert!(e.to_string().ends_with(": zero"), "{e}");
        let e = parse(&OwnedValue::dict().with("info", 1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid torrent: field `info` at byte 7: expected dictionary, found integer"
        );
        let e = Metainfo::from_bytes(b"d4:infod").unwrap_err();
        assert_eq!(
            e.to_string(),
            "not a torrent: unexpected end of input at byte 8"
        );
    }

    #[test]
    fn path_traversal_is_rejected() {
        for bad in [&[".."][..], &["a", ".."], &["a/b"], &["."], &[""], &[]] {
            let info = OwnedValue::dict()
                .with("name", "dir")
                .with("files", vec![file(1, bad)])
                .with("piece length", 16384)
                .with("pieces", pieces(1));
            let e = parse(&torrent(info)).unwrap_err();
            assert!(e.to_string().contains("files[0].path"), "{bad:?}: {e}");
        }
        for bad_name in ["..", "a/b", ""] {
            let e = parse(&torrent(v1_single(1, 16384).with("name", bad_name))).unwrap_err();
            assert!(e.to_string().contains("field `name`"), "{bad_name:?}: {e}");
        }
    }

    #[test]
    fn trackers_follow_bep12() {
        let tier = |urls: &[&str]| OwnedValue::List(urls.iter().map(|&u| u.into()).collect());
        let t = torrent(v1_single(1, 16384))
            .with("announce", "http://ignored/")
            .with(
                "announce-list",
                vec![
                    tier(&["http://a/", "http://b/", "http://a/"]),
                    tier(&[]),
                    tier(&["udp://c:1", "http://b/"]),
                ],
            );
        let m = parse(&t).unwrap();
        assert_eq!(
            m.trackers,
            [vec!["http://a/", "http://b/"], vec!["udp://c:1"]]
        );

        let only_announce = torrent(v1_single(1, 16384)).with("announce", "http://x/");
        assert_eq!(parse(&only_announce).unwrap().trackers, [vec!["http://x/"]]);
        // An announce-list with nothing usable falls back to announce.
        let empty_list = only_announce.with("announce-list", vec![tier(&[])]);
        assert_eq!(parse(&empty_list).unwrap().trackers, [vec!["http://x/"]]);
        let wrong = torrent(v1_single(1, 16384)).with("announce-list", "http://x/");
        assert!(parse(&wrong)
            .unwrap_err()
            .to_string()
            .contains("`announce-list`"));
    }

    #[test]
    fn url_list_string_or_list_and_optional_fields() {
        let one = torrent(v1_single(1, 16384)).with("url-list", "http://w/");
        assert_eq!(parse(&one).unwrap().url_list, ["http://w/"]);
        let many = torrent(v1_single(1, 16384)).with(
            "url-list",
            vec![OwnedValue::from("http://w/"), "http://v/".into(), "".into()],
        );
        assert_eq!(parse(&many).unwrap().url_list, ["http://w/", "http://v/"]);
        let m = parse(
            &torrent(v1_single(1, 16384).with("private", 1))
                .with("creation date", 1700000000)
                .with("comment", "hi")
                .with("created by", 7), // wrong type: ignored, it is informational
        )
        .unwrap();
        assert!(m.private);
        assert_eq!(
            (m.creation_date, m.comment.as_deref(), m.created_by),
            (Some(1700000000), Some("hi"), None)
        );
        assert!(
            !parse(&torrent(v1_single(1, 16384).with("private", 0)))
                .unwrap()
                .private
        );
    }

    fn v2_file(len: i64) -> OwnedValue {
        let props = OwnedValue::dict().with("length", len);
        let props = if len > 0 {
            props.with("pieces root", OwnedValue::Bytes(vec![1; 32]))
        } else {
            props
        };
        OwnedValue::dict().with("", props)
    }

    #[test]
    fn v2_piece_count_and_checks() {
        let tree = OwnedValue::dict().with("a", v2_file(40000)).with(
            "d",
            OwnedValue::dict()
                .with("e", v2_file(0))
                .with("f", v2_file(16384)),
        );
        let info = OwnedValue::dict()
            .with("name", "top")
            .with("meta version", 2)
            .with("piece length", 16384)
            .with("file tree", tree.clone());
        let m = parse(&torrent(info.clone())).unwrap();
        assert_eq!(m.version, MetaVersion::V2);
        assert_eq!(m.piece_count, 4, "3 for a, none for the empty e, 1 for f");
        assert_eq!(m.total_size, 56384);
        let paths: Vec<String> = m.files.iter().map(|f| f.display_path()).collect();
        assert_eq!(paths, ["top/a", "top/d/e", "top/d/f"]);
        let raw = torrent(info.clone()).encode();
        let info_raw = bencode::decode(&raw)
            .unwrap()
            .get("info")
            .unwrap()
            .raw()
            .to_vec();
        assert_eq!(
            m.info_hashes.v2,
            Some(InfoHashV2(Sha256::digest(&info_raw).into()))
        );

        let e = parse(&torrent(info.clone().with("piece length", 20000))).unwrap_err();
        assert!(e.to_string().contains("not a power of two"), "{e}");
        let e = parse(&torrent(info.clone().with("meta version", 3))).unwrap_err();
        assert!(e.to_string().contains("unsupported version 3"), "{e}");
        let bad_root = OwnedValue::dict().with(
            "a",
            OwnedValue::dict().with(
                "",
                OwnedValue::dict()
                    .with("length", 5)
                    .with("pieces root", "short"),
            ),
        );
        let e = parse(&torrent(info.clone().with("file tree", bad_root))).unwrap_err();
        assert!(e.to_string().contains("length 5 instead of 32"), "{e}");
        let traversal = OwnedValue::dict().with("..", v2_file(1));
        let e = parse(&torrent(info.with("file tree", traversal))).unwrap_err();
        assert!(e.to_string().contains("path traversal"), "{e}");
    }

    #[test]
    fn hash_display_and_parse() {
        let h: InfoHashV1 = "C12FE1C06BBA254A9DC9F519B335AA7C1367A88A".parse().unwrap();
        assert_eq!(h.to_string(), "c12fe1c06bba254a9dc9f519b335aa7c1367a88a");
        assert!("c12f".parse::<InfoHashV1>().is_err());
        let v2 = InfoHashV2([0x11; 32]);
        assert_eq!(v2.truncated(), [0x11; 20]);
        let both = InfoHashes {
            v1: Some(h),
            v2: Some(v2),
        };
        assert_eq!(both.wire_ids(), [h.0, [0x11; 20]]);
        assert_eq!(both.primary_wire_id(), Some(h.0));
        assert_eq!(InfoHashes::default().primary_wire_id(), None);
    }
}
