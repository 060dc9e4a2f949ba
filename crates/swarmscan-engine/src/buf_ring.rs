//! Provided-buffer ring (IORING_REGISTER_PBUF_RING) for receives: the kernel picks a buffer
//! per completion, so receive memory is per ring, not per connection.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // Safety: anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Safety: ptr/len come from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A registered buffer ring plus its buffers.
pub struct BufRing {
    ring: Mapping,
    buffers: Mapping,
    entries: u16,
    buf_size: u32,
    group: u16,
    /// Our copy of the tail (published to the kernel with a release store).
    tail: u16,
}

impl BufRing {
    /// Registers `entries` (power of two, ≤ 32768) buffers of `buf_size` bytes as group `group`.
    ///
    /// # Safety
    /// The kernel writes into this memory until the ring is torn down: the caller must keep
    /// the returned `BufRing` alive until `ring` is dropped (or the group unregistered).
    pub unsafe fn register(
        ring: &IoUring,
        group: u16,
        entries: u16,
        buf_size: u32,
    ) -> io::Result<BufRing> {
        if !entries.is_power_of_two() || entries > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring entries must be a power of two ≤ 32768",
            ));
        }
        let ring_len = entries as usize * std::mem::size_of::<BufRingEntry>();
        // mmap gives page alignment, which the kernel requires for the ring.
        let ring_map = Mapping::new(ring_len)?;
        let buffers = Mapping::new(entries as usize * buf_size as usize)?;
        let mut this = BufRing {
            ring: ring_map,
            buffers,
            entries,
            buf_size,
            group,
            tail: 0,
        };
        // Safety: the ring memory is page aligned, sized for `entries` entries and lives as long
        // as `this`, which our caller keeps alive as long as the io_uring (this function's
        // contract).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(this.ring.ptr as u64, entries, group, 0)
        }
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("io_uring: IORING_REGISTER_PBUF_RING failed: {e}"),
            )
        })?;
        for bid in 0..entries {
            this.push(bid);
        }
        this.publish();
        Ok(this)
    }

    /// The buffer group id to put in receive SQEs.
    pub fn group(&self) -> u16 {
        self.group
    }

    /// The first `len` bytes of buffer `bid`, as filled by the kernel.
    ///
    /// # Safety
    /// `bid` must be a buffer the kernel just handed out in a completion and not yet given
    /// back with [`BufRing::recycle`]; otherwise the kernel may be writing it meanwhile.
    pub unsafe fn data(&self, bid: u16, len: usize) -> &[u8] {
        let bid = (bid % self.entries) as usize;
        let len = len.min(self.buf_size as usize);
        // Safety: bid < entries and len ≤ buf_size, so the range lies inside the mapping; the
        // kernel has finished writing this buffer (its completion was posted, this function's
        // contract) and will not reuse it until we recycle it.
        unsafe {
            std::slice::from_raw_parts(self.buffers.ptr.add(bid * self.buf_size as usize), len)
        }
    }

    fn push(&mut self, bid: u16) {
        let mask = self.entries - 1;
        let index = (self.tail & mask) as usize;
        // Safety: index < entries, inside the ring mapping; the kernel only reads entries
        // between head and the published tail, and this one is beyond the published tail.
        let entry = unsafe { &mut *(self.ring.ptr as *mut BufRingEntry).add(index) };
        let bid = bid % self.entries;
        // Safety: address of buffer `bid` inside the buffers mapping.
        let addr = unsafe { self.buffers.ptr.add(bid as usize * self.buf_size as usize) };
        entry.set_addr(addr as u64);
        entry.set_len(self.buf_size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // Safety: the ring base is the first entry of a properly set-up ring; the tail field
        // overlays entry 0's `resv`, which the kernel reads as the tail.
        let tail =
            unsafe { BufRingEntry::tail(self.ring.ptr as *const BufRingEntry) } as *const AtomicU16;
        // Safety: the field is a naturally aligned u16 shared with the kernel; an atomic
        // release store orders the entry writes before the new tail.
        unsafe { (*tail).store(self.tail, Ordering::Release) };
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }
}
