//! Packing of io_uring `user_data`: kind | generation | slot in 64 bits.
//!
//! Layout (most significant first): 8 bits kind, 24 bits generation, 32 bits slot index.
//! A completion whose generation no longer matches its slot is stale and is ignored; this is
//! what makes cancellation and slot reuse safe.

/// What operation a completion belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpKind {
    /// IORING_OP_SOCKET for an outgoing probe.
    Socket = 1,
    /// IORING_OP_CONNECT.
    Connect = 2,
    /// The LINK_TIMEOUT attached to a connect (its completion is ignored).
    ConnectTimeout = 3,
    /// IORING_OP_SEND.
    Send = 4,
    /// Multishot IORING_OP_RECV with buffer select.
    Recv = 5,
    /// IORING_OP_CLOSE of a probe socket.
    Close = 6,
    /// IORING_OP_ASYNC_CANCEL (its completion is ignored).
    Cancel = 7,
    /// Multishot IORING_OP_ACCEPT; the slot field is the listener index.
    Accept = 8,
    /// A fire-and-forget close of a socket that never got a slot (ignored).
    CloseUntracked = 9,
    /// A no-op used by tests to inject completions (ignored unless a slot matches).
    Nop = 10,
    /// Multishot poll on the worker's wake-up eventfd.
    Wake = 11,
    /// Multishot IORING_OP_RECVMSG on a UDP socket; the slot field is the socket index.
    UdpRecv = 12,
    /// IORING_OP_SENDMSG of one datagram; the slot field is the send slot.
    UdpSend = 13,
}

impl OpKind {
    fn from_u8(v: u8) -> Option<OpKind> {
        Some(match v {
            1 => OpKind::Socket,
            2 => OpKind::Connect,
            3 => OpKind::ConnectTimeout,
            4 => OpKind::Send,
            5 => OpKind::Recv,
            6 => OpKind::Close,
            7 => OpKind::Cancel,
            8 => OpKind::Accept,
            9 => OpKind::CloseUntracked,
            10 => OpKind::Nop,
            11 => OpKind::Wake,
            12 => OpKind::UdpRecv,
            13 => OpKind::UdpSend,
            _ => return None,
        })
    }
}

/// Generations wrap at 24 bits.
pub const GENERATION_MASK: u32 = (1 << 24) - 1;

/// A decoded `user_data` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserData {
    /// The operation.
    pub kind: OpKind,
    /// Generation of the slot when the operation was submitted (24 bits).
    pub generation: u32,
    /// Slot index (or listener index for `Accept`).
    pub slot: u32,
}

impl UserData {
    /// Builds a value; the generation is truncated to 24 bits.
    pub fn new(kind: OpKind, slot: u32, generation: u32) -> UserData {
        UserData {
            kind,
            generation: generation & GENERATION_MASK,
            slot,
        }
    }

    /// Packs into the 64-bit io_uring field.
    pub fn pack(self) -> u64 {
        ((self.kind as u64) << 56)
            | (((self.generation & GENERATION_MASK) as u64) << 32)
            | self.slot as u64
    }

    /// Unpacks; `None` for values the engine never produced.
    pub fn unpack(v: u64) -> Option<UserData> {
        let kind = OpKind::from_u8((v >> 56) as u8)?;
        Some(UserData {
            kind,
            generation: ((v >> 32) as u32) & GENERATION_MASK,
            slot: v as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_all_kinds_and_extremes() {
        for kind in [
            OpKind::Socket,
            OpKind::Connect,
            OpKind::ConnectTimeout,
            OpKind::Send,
            OpKind::Recv,
            OpKind::Close,
            OpKind::Cancel,
            OpKind::Accept,
            OpKind::CloseUntracked,
            OpKind::Nop,
            OpKind::Wake,
            OpKind::UdpRecv,
            OpKind::UdpSend,
        ] {
            for (slot, generation) in [(0, 0), (u32::MAX, GENERATION_MASK), (12345, 77)] {
                let ud = UserData::new(kind, slot, generation);
                assert_eq!(UserData::unpack(ud.pack()), Some(ud));
            }
        }
    }

    #[test]
    fn generation_is_truncated_and_foreign_values_rejected() {
        let ud = UserData::new(OpKind::Recv, 5, GENERATION_MASK + 3);
        assert_eq!(ud.generation, 2);
        assert_eq!(UserData::unpack(0), None);
        assert_eq!(UserData::unpack(u64::MAX), None);
    }
}
