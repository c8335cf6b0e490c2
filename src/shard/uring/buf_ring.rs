//! The provided buffer ring of a shard's io_uring (see the parent module):
//! the memory the kernel picks receive buffers from.

use std::alloc::Layout;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types;

use super::{RECV_BUFFER_SIZE, RECV_BUFFERS};

/// The provided buffer ring: [`RECV_BUFFERS`] entries naming buffers of
/// [`RECV_BUFFER_SIZE`] bytes in one allocation. The ring and the buffers
/// are plain heap memory registered with the kernel (`IORING_REGISTER_PBUF_RING`);
/// they are freed only after the ring is gone (see `Drop for Uring`).
pub(super) struct BufRing {
    entries: *mut types::BufRingEntry,
    entries_layout: Layout,
    data: *mut u8,
    data_layout: Layout,
    /// Our copy of the tail (the kernel reads the shared one).
    tail: u16,
}

impl BufRing {
    pub(super) fn new() -> io::Result<Self> {
        let n = RECV_BUFFERS as usize;
        assert!(n.is_power_of_two() && n <= 32768);
        let entries_layout =
            Layout::from_size_align(n * std::mem::size_of::<types::BufRingEntry>(), 4096)
                .map_err(io::Error::other)?;
        let data_layout =
            Layout::from_size_align(n * RECV_BUFFER_SIZE, 4096).map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size.
        let entries: *mut types::BufRingEntry =
            unsafe { std::alloc::alloc_zeroed(entries_layout) }.cast();
        // SAFETY: as above. Zeroed so that a large allocation stays untouched
        // (fresh pages) until the kernel fills a buffer.
        let data = unsafe { std::alloc::alloc_zeroed(data_layout) };
        if entries.is_null() || data.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut ring = Self {
            entries,
            entries_layout,
            data,
            data_layout,
            tail: 0,
        };
        for bid in 0..RECV_BUFFERS {
            ring.add(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// Adds buffer `bid` at the tail (visible to the kernel at `publish`).
    pub(super) fn add(&mut self, bid: u16) {
        let i = (self.tail & (RECV_BUFFERS - 1)) as usize;
        // SAFETY: `i` < RECV_BUFFERS, the allocation holds that many
        // entries, and the kernel does not read an entry at or past the
        // published tail, so writing it races with nothing.
        let e = unsafe { &mut *self.entries.add(i) };
        e.set_addr(self.buf_ptr(bid) as u64);
        e.set_len(RECV_BUFFER_SIZE as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the entries added so far visible to the kernel.
    pub(super) fn publish(&self) {
        // SAFETY: the tail is a u16 inside the first entry (its `resv`
        // field, as the kernel defines the ring), naturally aligned, and
        // only ever written by us; the kernel reads it with acquire.
        let tail = unsafe { &*types::BufRingEntry::tail(self.entries).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// The ring's address, to register it with the kernel.
    pub(super) fn entries_addr(&self) -> u64 {
        self.entries as u64
    }

    /// Where buffer `bid` starts.
    pub(super) fn buf_ptr(&self, bid: u16) -> *mut u8 {
        debug_assert!(bid < RECV_BUFFERS);
        // SAFETY: `bid` < RECV_BUFFERS, so the offset is inside the data
        // allocation.
        unsafe { self.data.add(bid as usize * RECV_BUFFER_SIZE) }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; the kernel no
        // longer uses them (the ring owning the registration is gone or the
        // registration was removed, see `Drop for Uring`).
        unsafe {
            std::alloc::dealloc(self.entries.cast(), self.entries_layout);
            std::alloc::dealloc(self.data, self.data_layout);
        }
    }
}
