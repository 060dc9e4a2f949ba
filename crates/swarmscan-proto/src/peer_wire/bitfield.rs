//! Bitfield helpers for measuring a peer's progress.
//!
//! Bit layout (BEP 3): the high bit of byte 0 is piece 0. A bitfield for `n` pieces is
//! exactly `ceil(n / 8)` bytes and the spare bits after piece `n - 1` should be zero.

/// What a bitfield says about progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitfieldSummary {
    /// Pieces the peer has (spare bits not counted).
    pub pieces_have: u32,
    /// Pieces in the torrent.
    pub piece_count: u32,
    /// Some spare bits after the last piece are set. BEP 3 says to drop such a peer; a
    /// measurement records it and keeps the count.
    pub spare_bits_set: bool,
}

impl BitfieldSummary {
    /// True if the peer has every piece.
    pub fn is_complete(&self) -> bool {
        self.pieces_have == self.piece_count
    }
}

/// Why a bitfield or have does not fit the torrent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BitfieldError {
    /// The bitfield's length does not fit the torrent's piece count.
    #[error("bitfield has {len} bytes, {piece_count} pieces need {expected}")]
    WrongLength {
        len: usize,
        piece_count: u32,
        expected: usize,
    },
    /// A piece index at or past the piece count.
    #[error("have for piece {index}, torrent has {piece_count} pieces")]
    IndexOutOfRange { index: u32, piece_count: u32 },
}

/// Bytes needed for a bitfield of `piece_count` pieces.
pub fn byte_len(piece_count: u32) -> usize {
    (piece_count as usize).div_ceil(8)
}

/// Count the pieces set in `bits` for a torrent of `piece_count` pieces, and check the
/// spare bits. A wrong length is an error (the peer is talking about another torrent).
pub fn summarize(bits: &[u8], piece_count: u32) -> Result<BitfieldSummary, BitfieldError> {
    let expected = byte_len(piece_count);
    if bits.len() != expected {
        return Err(BitfieldError::WrongLength {
            len: bits.len(),
            piece_count,
            expected,
        });
    }
    let spare = (expected * 8 - piece_count as usize) as u32;
    // Mask of the spare (low) bits of the last byte; `spare` is 0..=7.
    let spare_mask: u8 = ((1u16 << spare) - 1) as u8;
    let (pieces_have, spare_bits_set) = match bits.split_last() {
        None => (0, false),
        Some((&last, body)) => {
            let body_count: u32 = body.iter().map(|b| b.count_ones()).sum();
            (
                body_count + (last & !spare_mask).count_ones(),
                last & spare_mask != 0,
            )
        }
    };
    Ok(BitfieldSummary {
        pieces_have,
        piece_count,
        spare_bits_set,
    })
}

/// Whether piece `index` is set (false if `bits` is too short).
pub fn has_piece(bits: &[u8], index: u32) -> bool {
    bits.get(index as usize / 8)
        .is_some_and(|b| b & (0x80 >> (index % 8)) != 0)
}

/// Set piece `index` in `bits`; returns false (and changes nothing) if out of range.
pub fn set_piece(bits: &mut [u8], index: u32) -> bool {
    match bits.get_mut(index as usize / 8) {
        Some(b) => {
            *b |= 0x80 >> (index % 8);
            true
        }
        None => false,
    }
}

/// Check a `have`/`suggest`/`allowed_fast` index against the torrent's piece count.
pub fn check_index(index: u32, piece_count: u32) -> Result<(), BitfieldError> {
    if index < piece_count {
        Ok(())
    } else {
        Err(BitfieldError::IndexOutOfRange { index, piece_count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_and_spare_bits() {
        // 11 pieces: 2 bytes, 5 spare bits.
        let s = summarize(&[0xff, 0xe0], 11).unwrap();
        assert_eq!(
            (s.pieces_have, s.spare_bits_set, s.is_complete()),
            (11, false, true)
        );
        let s = summarize(&[0xff, 0xe1], 11).unwrap();
        assert_eq!(
            (s.pieces_have, s.spare_bits_set, s.is_complete()),
            (11, true, true)
        );
        let s = summarize(&[0x80, 0x20], 11).unwrap();
        assert_eq!((s.pieces_have, s.spare_bits_set), (2, false));
        let s = summarize(&[0xff], 8).unwrap();
        assert_eq!((s.pieces_have, s.spare_bits_set), (8, false));
        let s = summarize(&[], 0).unwrap();
        assert_eq!((s.pieces_have, s.is_complete()), (0, true));
        assert_eq!(
            summarize(&[0xff], 11),
            Err(BitfieldError::WrongLength {
                len: 1,
                piece_count: 11,
                expected: 2
            })
        );
    }

    #[test]
    fn index_checks() {
        assert!(check_index(10, 11).is_ok());
        assert_eq!(
            check_index(11, 11),
            Err(BitfieldError::IndexOutOfRange {
                index: 11,
                piece_count: 11
            })
        );
        let mut bits = [0u8; 2];
        assert!(set_piece(&mut bits, 0) && set_piece(&mut bits, 9));
        assert!(!set_piece(&mut bits, 16));
        assert_eq!(bits, [0x80, 0x40]);
        assert!(has_piece(&bits, 9) && !has_piece(&bits, 8) && !has_piece(&bits, 99));
    }

    proptest! {
        #[test]
        fn summary_matches_naive_count(pieces in proptest::collection::vec(any::<bool>(), 0..200),
                                       junk in any::<u8>()) {
            let n = pieces.len() as u32;
            let mut bits = vec![0u8; byte_len(n)];
            for (i, &p) in pieces.iter().enumerate() {
                if p { set_piece(&mut bits, i as u32); }
            }
            let clean = summarize(&bits, n).unwrap();
            prop_assert_eq!(clean.pieces_have as usize, pieces.iter().filter(|p| **p).count());
            prop_assert!(!clean.spare_bits_set);
            // Junk in the spare bits is reported but does not change the count.
            let spare = byte_len(n) * 8 - n as usize;
            if spare > 0 {
                let last = bits.len() - 1;
                bits[last] |= junk & ((1u16 << spare) - 1) as u8;
                let dirty = summarize(&bits, n).unwrap();
                prop_assert_eq!(dirty.pieces_have, clean.pieces_have);
                prop_assert_eq!(dirty.spare_bits_set, junk & ((1u16 << spare) - 1) as u8 != 0);
            }
        }

        #[test]
        fn summarize_never_panics(bits in proptest::collection::vec(any::<u8>(), 0..64),
                                  n in any::<u32>()) {
            let _ = summarize(&bits, n);
        }
    }
}
