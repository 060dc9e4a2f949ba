//! Bencode (BEP 3): a zero-copy decoder with limits, and an encoder.
//!
//! Every decoded [`Value`] keeps the exact byte span it was decoded from ([`Value::raw`]),
//! because an info-hash is the hash of the info dictionary's bytes *as they appear in the
//! file*, not of a re-encoding (a non-canonical torrent would otherwise hash differently).

use std::collections::BTreeMap;
use std::fmt;

/// Limits that keep a hostile input from costing more than a fixed amount of work or memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of lists and dictionaries (recursion depth).
    pub max_depth: usize,
    /// Largest input accepted, in bytes.
    pub max_size: usize,
    /// Most values (of any kind) in one input; bounds the size of the decoded tree.
    pub max_values: usize,
    /// Reject dictionaries whose keys are not sorted and unique (canonical form).
    pub require_sorted_keys: bool,
}

impl Limits {
    /// Defaults for torrent files and tracker responses: deep enough for any real torrent,
    /// small enough that a hostile input is cheap.
    pub const DEFAULT: Limits = Limits {
        max_depth: 64,
        max_size: 64 << 20,
        max_values: 4 << 20,
        require_sorted_keys: false,
    };
    /// Limits for messages received from untrusted peers (extension messages, KRPC).
    pub const NETWORK: Limits = Limits {
        max_depth: 16,
        max_size: 1 << 20,
        max_values: 1 << 16,
        require_sorted_keys: false,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// What was wrong with an input, and at which byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at byte {offset}")]
pub struct DecodeError {
    pub offset: usize,
    pub kind: ErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("unexpected end of input")]
    UnexpectedEof,
    #[error("unexpected byte {0:#04x} where a value should start")]
    UnexpectedByte(u8),
    #[error("invalid integer")]
    InvalidInteger,
    #[error("integer out of range")]
    IntegerOverflow,
    #[error("invalid string length")]
    InvalidLength,
    #[error("dictionary key is not a byte string")]
    KeyNotString,
    #[error("dictionary keys not sorted or duplicated")]
    UnsortedKeys,
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
    #[error("input larger than {0} bytes")]
    TooLarge(usize),
    #[error("more than {0} values")]
    TooManyValues(usize),
    #[error("trailing data after the value")]
    TrailingData,
}

/// A decoded value that borrows from the input buffer.
#[derive(Clone, PartialEq, Eq)]
pub struct Value<'a> {
    kind: Kind<'a>,
    raw: &'a [u8],
    offset: usize,
}

/// The shape of a [`Value`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Kind<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    List(Vec<Value<'a>>),
    /// Entries in input order (duplicates possible unless `require_sorted_keys`).
    Dict(Vec<(&'a [u8], Value<'a>)>),
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Int(i) => write!(f, "{i}"),
            Kind::Bytes(b) => write!(f, "{}", DebugBytes(b)),
            Kind::List(l) => f.debug_list().entries(l).finish(),
            Kind::Dict(d) => f
                .debug_map()
                .entries(d.iter().map(|(k, v)| (DebugBytes(k), v)))
                .finish(),
        }
    }
}

/// Prints byte strings as text when they are printable UTF-8, else as hex.
pub struct DebugBytes<'a>(pub &'a [u8]);

impl fmt::Debug for DebugBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for DebugBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.0) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => write!(f, "{s:?}"),
            _ => {
                f.write_str("0x")?;
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl<'a> Value<'a> {
    pub fn kind(&self) -> &Kind<'a> {
        &self.kind
    }
    /// The exact bytes this value was decoded from.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
    /// Byte offset of this value in the decoded buffer.
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn as_int(&self) -> Option<i64> {
        match self.kind {
            Kind::Int(i) => Some(i),
            _ => None,
        }
    }
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self.kind {
            Kind::Bytes(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&'a str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }
    pub fn as_list(&self) -> Option<&[Value<'a>]> {
        match &self.kind {
            Kind::List(l) => Some(l),
            _ => None,
        }
    }
    pub fn as_dict(&self) -> Option<&[(&'a [u8], Value<'a>)]> {
        match &self.kind {
            Kind::Dict(d) => Some(d),
            _ => None,
        }
    }
    /// Dictionary lookup (first match); `None` if this is not a dictionary or has no such key.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.get_bytes(key.as_bytes())
    }
    pub fn get_bytes(&self, key: &[u8]) -> Option<&Value<'a>> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
    /// Name of the kind, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Int(_) => "integer",
            Kind::Bytes(_) => "byte string",
            Kind::List(_) => "list",
            Kind::Dict(_) => "dictionary",
        }
    }
    /// Copy into an owned value (keys sorted, later duplicates win).
    pub fn to_owned_value(&self) -> OwnedValue {
        match &self.kind {
            Kind::Int(i) => OwnedValue::Int(*i),
            Kind::Bytes(b) => OwnedValue::Bytes(b.to_vec()),
            Kind::List(l) => OwnedValue::List(l.iter().map(|v| v.to_owned_value()).collect()),
            Kind::Dict(d) => OwnedValue::Dict(
                d.iter()
                    .map(|(k, v)| (k.to_vec(), v.to_owned_value()))
                    .collect(),
            ),
        }
    }
}

/// Decode exactly one value that fills the whole buffer.
pub fn decode(buf: &[u8]) -> Result<Value<'_>, DecodeError> {
    decode_with(buf, Limits::DEFAULT)
}

/// Decode exactly one value that fills the whole buffer, with explicit limits.
pub fn decode_with(buf: &[u8], limits: Limits) -> Result<Value<'_>, DecodeError> {
    let (value, used) = decode_prefix_with(buf, limits)?;
    if used != buf.len() {
        return Err(DecodeError {
            offset: used,
            kind: ErrorKind::TrailingData,
        });
    }
    Ok(value)
}

/// Decode one value from the start of `buf`; returns it and the number of bytes it used.
/// Used where raw data follows a bencoded header (ut_metadata `data` messages).
pub fn decode_prefix(buf: &[u8]) -> Result<(Value<'_>, usize), DecodeError> {
    decode_prefix_with(buf, Limits::DEFAULT)
}

pub fn decode_prefix_with(buf: &[u8], limits: Limits) -> Result<(Value<'_>, usize), DecodeError> {
    if buf.len() > limits.max_size {
        return Err(DecodeError {
            offset: limits.max_size,
            kind: ErrorKind::TooLarge(limits.max_size),
        });
    }
    let mut d = Decoder {
        buf,
        pos: 0,
        limits,
        values: 0,
    };
    let v = d.value(0)?;
    Ok((v, d.pos))
}

struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    limits: Limits,
    values: usize,
}

impl<'a> Decoder<'a> {
    fn err(&self, offset: usize, kind: ErrorKind) -> DecodeError {
        DecodeError { offset, kind }
    }

    fn peek(&self) -> Result<u8, DecodeError> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.err(self.pos, ErrorKind::UnexpectedEof))
    }

    // Recursion is bounded by `max_depth`, so a hostile input cannot overflow the stack.
    fn value(&mut self, depth: usize) -> Result<Value<'a>, DecodeError> {
        self.values += 1;
        if self.values > self.limits.max_values {
            return Err(self.err(self.pos, ErrorKind::TooManyValues(self.limits.max_values)));
        }
        let start = self.pos;
        let kind = match self.peek()? {
            b'i' => {
                self.pos += 1;
                Kind::Int(self.integer(b'e')?)
            }
            b'0'..=b'9' => Kind::Bytes(self.bytes()?),
            b'l' => {
                if depth >= self.limits.max_depth {
                    return Err(self.err(start, ErrorKind::TooDeep(self.limits.max_depth)));
                }
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Kind::List(items)
            }
            b'd' => {
                if depth >= self.limits.max_depth {
                    return Err(self.err(start, ErrorKind::TooDeep(self.limits.max_depth)));
                }
                self.pos += 1;
                let mut entries: Vec<(&'a [u8], Value<'a>)> = Vec::new();
                while self.peek()? != b'e' {
                    let key_at = self.pos;
                    if !self.peek()?.is_ascii_digit() {
                        return Err(self.err(key_at, ErrorKind::KeyNotString));
                    }
                    let key = self.bytes()?;
                    if self.limits.require_sorted_keys {
                        if let Some((prev, _)) = entries.last() {
                            if *prev >= key {
                                return Err(self.err(key_at, ErrorKind::UnsortedKeys));
                            }
                        }
                    }
                    let v = self.value(depth + 1)?;
                    entries.push((key, v));
                }
                self.pos += 1;
                Kind::Dict(entries)
            }
            other => return Err(self.err(start, ErrorKind::UnexpectedByte(other))),
        };
        Ok(Value {
            kind,
            raw: &self.buf[start..self.pos],
            offset: start,
        })
    }

    /// Parses a decimal integer up to `end`; rejects leading zeros, "-0" and overflow.
    fn integer(&mut self, end: u8) -> Result<i64, DecodeError> {
        let start = self.pos;
        let negative = self.peek()? == b'-';
        if negative {
            self.pos += 1;
        }
        let digits_at = self.pos;
        let mut value: i64 = 0;
        loop {
            let c = self.peek()?;
            if c == end {
                break;
            }
            if !c.is_ascii_digit() {
                return Err(self.err(self.pos, ErrorKind::InvalidInteger));
            }
            let digit = (c - b'0') as i64;
            value = value
                .checked_mul(10)
                .and_then(|v| {
                    if negative {
                        v.checked_sub(digit)
                    } else {
                        v.checked_add(digit)
                    }
                })
                .ok_or_else(|| self.err(start, ErrorKind::IntegerOverflow))?;
            self.pos += 1;
        }
        let ndigits = self.pos - digits_at;
        if ndigits == 0
            || (ndigits > 1 && self.buf[digits_at] == b'0')
            || (negative && self.buf[digits_at] == b'0')
        {
            return Err(self.err(start, ErrorKind::InvalidInteger));
        }
        self.pos += 1; // the end byte
        Ok(value)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        let len = self.integer(b':').map_err(|e| match e.kind {
            ErrorKind::UnexpectedEof => e,
            _ => self.err(start, ErrorKind::InvalidLength),
        })?;
        let len = usize::try_from(len).map_err(|_| self.err(start, ErrorKind::InvalidLength))?;
        let end = self
            .pos
            .checked_add(len)
            .ok_or_else(|| self.err(start, ErrorKind::InvalidLength))?;
        if end > self.buf.len() {
            return Err(self.err(self.buf.len(), ErrorKind::UnexpectedEof));
        }
        let b = &self.buf[self.pos..end];
        self.pos = end;
        Ok(b)
    }
}

/// An owned bencode value; dictionaries are sorted maps so encoding is always canonical.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum OwnedValue {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<OwnedValue>),
    Dict(BTreeMap<Vec<u8>, OwnedValue>),
}

impl OwnedValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            OwnedValue::Int(i) => encode_int(out, *i),
            OwnedValue::Bytes(b) => encode_bytes(out, b),
            OwnedValue::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode_into(out);
                }
                out.push(b'e');
            }
            OwnedValue::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    encode_bytes(out, k);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }
    pub fn dict() -> OwnedValue {
        OwnedValue::Dict(BTreeMap::new())
    }
    /// Insert into a dictionary (no-op on other kinds); chainable.
    pub fn with(mut self, key: impl Into<Vec<u8>>, value: impl Into<OwnedValue>) -> Self {
        if let OwnedValue::Dict(d) = &mut self {
            d.insert(key.into(), value.into());
        }
        self
    }
}

impl From<i64> for OwnedValue {
    fn from(v: i64) -> Self {
        OwnedValue::Int(v)
    }
}
impl From<i32> for OwnedValue {
    fn from(v: i32) -> Self {
        OwnedValue::Int(v as i64)
    }
}
impl From<&[u8]> for OwnedValue {
    fn from(v: &[u8]) -> Self {
        OwnedValue::Bytes(v.to_vec())
    }
}
impl From<Vec<u8>> for OwnedValue {
    fn from(v: Vec<u8>) -> Self {
        OwnedValue::Bytes(v)
    }
}
impl From<&str> for OwnedValue {
    fn from(v: &str) -> Self {
        OwnedValue::Bytes(v.as_bytes().to_vec())
    }
}
impl From<Vec<OwnedValue>> for OwnedValue {
    fn from(v: Vec<OwnedValue>) -> Self {
        OwnedValue::List(v)
    }
}

/// Streaming encoder helpers for hot paths that should not build a tree.
pub fn encode_int(out: &mut Vec<u8>, i: i64) {
    out.push(b'i');
    out.extend_from_slice(i.to_string().as_bytes());
    out.push(b'e');
}

pub fn encode_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

/// Errors for callers that interpret a decoded tree ("field X missing / wrong type").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("missing field `{0}`")]
    Missing(String),
    #[error("field `{field}` at byte {offset}: expected {expected}, found {found}")]
    WrongType {
        field: String,
        offset: usize,
        expected: &'static str,
        found: &'static str,
    },
    #[error("field `{field}` at byte {offset}: {problem}")]
    Invalid {
        field: String,
        offset: usize,
        problem: String,
    },
}

impl FieldError {
    pub fn wrong_type(field: &str, v: &Value<'_>, expected: &'static str) -> Self {
        FieldError::WrongType {
            field: field.to_string(),
            offset: v.offset(),
            expected,
            found: v.type_name(),
        }
    }
    pub fn invalid(field: &str, v: &Value<'_>, problem: impl Into<String>) -> Self {
        FieldError::Invalid {
            field: field.to_string(),
            offset: v.offset(),
            problem: problem.into(),
        }
    }
}

/// Typed accessors that produce [`FieldError`]s naming the field.
impl<'a> Value<'a> {
    pub fn req(&self, key: &str) -> Result<&Value<'a>, FieldError> {
        if self.as_dict().is_none() {
            return Err(FieldError::wrong_type(key, self, "dictionary"));
        }
        self.get(key)
            .ok_or_else(|| FieldError::Missing(key.to_string()))
    }
    pub fn req_int(&self, key: &str) -> Result<i64, FieldError> {
        let v = self.req(key)?;
        v.as_int()
            .ok_or_else(|| FieldError::wrong_type(key, v, "integer"))
    }
    pub fn req_bytes(&self, key: &str) -> Result<&'a [u8], FieldError> {
        let v = self.req(key)?;
        v.as_bytes()
            .ok_or_else(|| FieldError::wrong_type(key, v, "byte string"))
    }
    pub fn opt_int(&self, key: &str) -> Result<Option<i64>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_int()
                .map(Some)
                .ok_or_else(|| FieldError::wrong_type(key, v, "integer")),
        }
    }
    pub fn opt_bytes(&self, key: &str) -> Result<Option<&'a [u8]>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bytes()
                .map(Some)
                .ok_or_else(|| FieldError::wrong_type(key, v, "byte string")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_bep3_examples() {
        assert_eq!(decode(b"4:spam").unwrap().as_bytes(), Some(&b"spam"[..]));
        assert_eq!(decode(b"0:").unwrap().as_bytes(), Some(&b""[..]));
        assert_eq!(decode(b"i3e").unwrap().as_int(), Some(3));
        assert_eq!(decode(b"i-3e").unwrap().as_int(), Some(-3));
        assert_eq!(decode(b"i0e").unwrap().as_int(), Some(0));
        let l = decode(b"l4:spam4:eggse").unwrap();
        assert_eq!(l.as_list().unwrap().len(), 2);
        let d = decode(b"d3:cow3:moo4:spam4:eggse").unwrap();
        assert_eq!(d.get("cow").unwrap().as_str(), Some("moo"));
        assert_eq!(d.get("spam").unwrap().as_str(), Some("eggs"));
        let d = decode(b"d4:spaml1:a1:bee").unwrap();
        assert_eq!(d.get("spam").unwrap().as_list().unwrap().len(), 2);
    }

    #[test]
    fn rejects_bep3_invalid_integers() {
        for bad in [
            &b"i-0e"[..],
            b"i03e",
            b"ie",
            b"i-e",
            b"i1x2e",
            b"i99999999999999999999e",
        ] {
            assert!(decode(bad).is_err(), "{:?}", DebugBytes(bad));
        }
        assert_eq!(
            decode(b"i9223372036854775807e").unwrap().as_int(),
            Some(i64::MAX)
        );
        assert_eq!(
            decode(b"i-9223372036854775808e").unwrap().as_int(),
            Some(i64::MIN)
        );
    }

    #[test]
    fn raw_span_is_exact() {
        let buf = b"d4:infod1:ai1e1:zi2ee3:zzz0:e";
        let v = decode(buf).unwrap();
        let info = v.get("info").unwrap();
        assert_eq!(info.raw(), b"d1:ai1e1:zi2ee");
        assert_eq!(info.offset(), 7);
    }

    #[test]
    fn errors_carry_offsets() {
        let e = decode(b"d3:fooi1e3:bar").unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnexpectedEof);
        assert_eq!(e.offset, 14);
        let e = decode(b"di1ei2ee").unwrap_err();
        assert_eq!(e.kind, ErrorKind::KeyNotString);
        assert_eq!(e.offset, 1);
        let e = decode(b"i1ei2e").unwrap_err();
        assert_eq!(e.kind, ErrorKind::TrailingData);
        assert_eq!(e.offset, 3);
        let e = decode(b"5:abc").unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnexpectedEof);
    }

    #[test]
    fn limits_hold() {
        let deep = "l".repeat(100) + &"e".repeat(100);
        let e = decode(deep.as_bytes()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooDeep(64));
        let strict = Limits {
            require_sorted_keys: true,
            ..Limits::DEFAULT
        };
        assert_eq!(
            decode_with(b"d1:bi1e1:ai2ee", strict).unwrap_err().kind,
            ErrorKind::UnsortedKeys
        );
        assert_eq!(
            decode_with(b"d1:ai1e1:ai2ee", strict).unwrap_err().kind,
            ErrorKind::UnsortedKeys
        );
        assert!(decode_with(b"d1:ai1e1:bi2ee", strict).is_ok());
        let few = Limits {
            max_values: 3,
            ..Limits::DEFAULT
        };
        assert!(matches!(
            decode_with(b"li1ei2ei3ee", few).unwrap_err().kind,
            ErrorKind::TooManyValues(3)
        ));
        // A huge claimed string length is an error, not an allocation.
        assert!(decode(b"99999999999999999999:x").is_err());
        assert!(decode(b"9999999999:x").is_err());
    }

    #[test]
    fn prefix_decoding_leaves_payload() {
        let buf = b"d8:msg_typei1e5:piecei0eeRAWDATA";
        let (v, used) = decode_prefix(buf).unwrap();
        assert_eq!(v.req_int("msg_type").unwrap(), 1);
        assert_eq!(&buf[used..], b"RAWDATA");
    }

    #[test]
    fn owned_encoding_is_canonical() {
        let v = OwnedValue::dict()
            .with("z", 1)
            .with("a", "x")
            .with("m", vec![OwnedValue::Int(-5), OwnedValue::from("")]);
        assert_eq!(v.encode(), b"d1:a1:x1:mli-5e0:e1:zi1ee");
        let back = decode(&v.encode()).unwrap().to_owned_value();
        assert_eq!(back, v);
    }

    #[test]
    fn field_errors_name_the_field() {
        let v = decode(b"d4:name4:spam6:lengthi-1ee").unwrap();
        let e = v.req_int("name").unwrap_err();
        assert_eq!(
            e.to_string(),
            "field `name` at byte 7: expected integer, found byte string"
        );
        assert_eq!(
            v.req("missing").unwrap_err().to_string(),
            "missing field `missing`"
        );
    }
}
