//! A connection's outbound queue: complete frames waiting for the socket,
//! with a byte budget.
//!
//! Two lanes. The *urgent* lane (pongs, close frames, the `disconnect` push
//! that precedes a close) is always written before the *data* lane, except
//! that a frame already partly written is finished first (a frame cannot be
//! interrupted on the wire). Data past the budget is refused so the caller
//! can drop the slow consumer; urgent frames are never refused and never
//! wait behind data that is being dropped.
//!
//! Within the data lane, *high-priority* frames (publications of a
//! `priority = "high"` namespace) go ahead of the normal publications
//! already queued — after the frame in flight, earlier high-priority
//! frames, and the connection's own frames ([`Outbox::push_own`]: replies,
//! pushes, a recovery's replayed publications), which no publication may
//! overtake: a reply says where a subscription starts — and survive
//! [`Outbox::drop_data`], with everything queued ahead of them, so a slow
//! consumer being dropped still gets the critical updates before its
//! `disconnect`.
//!
//! An empty outbox owns no heap memory.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::ops::Deref;
use std::rc::Rc;

use bytes::{Buf, Bytes};

use super::sse;

/// A data-lane frame.
#[derive(Debug, Clone)]
pub enum Frame {
    /// This connection's own frame (a reply, a push meant for it alone).
    Owned(Bytes),
    /// A publication's frame, shared by every subscriber on this shard.
    /// Handing it to one more subscriber is a plain increment; a `Bytes`
    /// clone is an atomic one, and measured at 10,000 subscribers the
    /// atomic clone and drop were 16% of the shard's CPU.
    Shared(Rc<Bytes>),
}

/// A queued frame whose written prefix can be dropped.
trait Advance: Deref<Target = [u8]> {
    fn advance(&mut self, n: usize);
}

impl Advance for Bytes {
    fn advance(&mut self, n: usize) {
        Buf::advance(self, n);
    }
}

impl Advance for Frame {
    /// A shared frame becomes the connection's own only when it is partly
    /// written; the other subscribers' copies stay whole.
    fn advance(&mut self, n: usize) {
        match self {
            Frame::Owned(b) => Buf::advance(b, n),
            Frame::Shared(rc) => {
                let mut b = Bytes::clone(rc);
                Buf::advance(&mut b, n);
                *self = Frame::Owned(b);
            }
        }
    }
}

impl Deref for Frame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Frame::Owned(b) => b,
            Frame::Shared(rc) => rc,
        }
    }
}

impl From<Bytes> for Frame {
    fn from(b: Bytes) -> Self {
        Frame::Owned(b)
    }
}

/// Which lane the partly written frame is at the front of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InFlight {
    None,
    Urgent,
    Data,
}

/// Returned when a data frame would exceed the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

/// A connection's queued output.
#[derive(Debug)]
pub struct Outbox {
    /// Boxed: the lane is rarely used (pongs, closes), and a box keeps
    /// every connection's outbox 16 bytes smaller than a `Vec` would.
    #[allow(clippy::box_collection)] // the size of the field is the point
    urgent: Option<Box<Vec<Bytes>>>,
    data: VecDeque<Frame>,
    in_flight: InFlight,
    /// High-priority frames at the front of `data` (after a frame in
    /// flight, which is not counted), with any frames a high-priority one
    /// was queued behind.
    high: u32,
    /// The index in `data` just past its last own frame (0: none); a
    /// high-priority frame goes no further forward.
    own_end: usize,
    /// An SSE stream: every frame is rewritten into its event as it is
    /// queued (see [`Outbox::set_sse`]).
    sse: bool,
    queued: usize,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            urgent: None,
            data: VecDeque::new(),
            in_flight: InFlight::None,
            high: 0,
            own_end: 0,
            sse: false,
            queued: 0,
        }
    }
}

/// The SSE form of a server frame: its event as an HTTP chunk (a close
/// also ends the chunked body), or None for a frame with no SSE form.
fn sse_form(frame: &[u8]) -> Option<Bytes> {
    let mut out = Vec::with_capacity(frame.len() + 32);
    match sse::event_from_frame(frame, &mut out) {
        Ok(sse::Event::Message | sse::Event::Ping) => Some(out.into()),
        Ok(sse::Event::Close) => {
            out.extend_from_slice(sse::LAST_CHUNK);
            Some(out.into())
        }
        Ok(sse::Event::Skipped) => None,
        Err(e) => {
            debug_assert!(false, "a frame the SSE form cannot take: {e:?}");
            None
        }
    }
}

const PONG_FIRST_BYTE: u8 = 0x8A;
/// Pongs that may wait in the urgent lane at once.
pub const MAX_QUEUED_PONGS: usize = 32;

impl Outbox {
    /// Unwritten bytes queued.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.queued == 0 && self.urgent().is_empty() && self.data.is_empty()
    }

    /// The urgent lane's frames.
    fn urgent(&self) -> &[Bytes] {
        self.urgent.as_deref().map_or(&[], Vec::as_slice)
    }

    /// The urgent lane, to add to.
    fn urgent_mut(&mut self) -> &mut Vec<Bytes> {
        self.urgent.get_or_insert_with(Box::default)
    }

    /// Makes this the outbox of an SSE stream: from now on every frame
    /// queued (text frames, pings, the close) is rewritten into its
    /// server-sent event, chunk-framed, and frames with no SSE form
    /// (pongs, binary) are left out. What is already queued (the stream's
    /// answer head) stays as it is.
    pub fn set_sse(&mut self) {
        self.sse = true;
    }

    /// Whether this is an SSE stream's outbox.
    pub fn is_sse(&self) -> bool {
        self.sse
    }

    /// Queues bytes that are already in their wire form, in the urgent
    /// lane, whatever the outbox's form (an SSE stream's own events).
    pub fn push_prepared(&mut self, bytes: Bytes) {
        self.queued += bytes.len();
        self.urgent_mut().push(bytes);
    }

    /// Queues a data frame, unless that would put more than `budget` bytes
    /// in the queue. An empty queue always takes one frame, however large,
    /// so a message bigger than the budget can still be sent to a client
    /// that keeps up.
    pub fn push_data(&mut self, frame: Frame, budget: usize) -> Result<(), OverBudget> {
        let frame = match self.sse {
            false => frame,
            true => match sse_form(&frame) {
                Some(event) => Frame::Owned(event),
                None => return Ok(()),
            },
        };
        if self.queued > 0 && self.queued + frame.len() > budget {
            return Err(OverBudget);
        }
        self.queued += frame.len();
        self.data.push_back(frame);
        Ok(())
    }

    /// Queues a frame of this connection's own (a reply, a push, a
    /// replayed publication) like [`Outbox::push_data`]; no high-priority
    /// frame queued after it will go ahead of it.
    pub fn push_own(&mut self, frame: Frame, budget: usize) -> Result<(), OverBudget> {
        let before = self.data.len();
        self.push_data(frame, budget)?;
        if self.data.len() > before {
            self.own_end = self.data.len();
        }
        Ok(())
    }

    /// Queues a high-priority data frame ahead of the normal publications
    /// already queued (never inside the frame in flight, never ahead of an
    /// own frame: see the module docs). It is queued even
    /// past the budget, up to twice it; `Err` then says the connection is a
    /// slow consumer, whose normal frames the caller drops (see
    /// [`Outbox::drop_data`]) while this one still goes out.
    pub fn push_high(&mut self, frame: Frame, budget: usize) -> Result<(), OverBudget> {
        let frame = match self.sse {
            false => frame,
            true => match sse_form(&frame) {
                Some(event) => Frame::Owned(event),
                None => return Ok(()),
            },
        };
        if self.queued > 0 && self.queued + frame.len() > 2 * budget {
            return Err(OverBudget);
        }
        let over = self.queued > 0 && self.queued + frame.len() > budget;
        let in_flight = usize::from(self.in_flight == InFlight::Data);
        let at = (in_flight + self.high as usize).max(self.own_end);
        self.queued += frame.len();
        self.data.insert(at, frame);
        self.high = u32::try_from(at + 1 - in_flight).unwrap_or(u32::MAX);
        if over { Err(OverBudget) } else { Ok(()) }
    }

    /// Queues an urgent frame. Pongs are answered one for one, but at most
    /// [`MAX_QUEUED_PONGS`] wait at a time: past that the newest replaces
    /// the last waiting one (only the latest ping needs an answer), so a
    /// ping flood cannot grow the queue.
    pub fn push_urgent(&mut self, frame: Bytes) {
        let frame = match self.sse {
            false => frame,
            true => match sse_form(&frame) {
                Some(event) => event,
                None => return,
            },
        };
        if !self.sse && frame.first() == Some(&PONG_FIRST_BYTE) {
            let start = usize::from(self.in_flight == InFlight::Urgent);
            let waiting = &self.urgent()[start..];
            let pongs = waiting
                .iter()
                .filter(|f| f.first() == Some(&PONG_FIRST_BYTE))
                .count();
            if pongs >= MAX_QUEUED_PONGS
                && let Some(i) = waiting
                    .iter()
                    .rposition(|f| f.first() == Some(&PONG_FIRST_BYTE))
            {
                let added = frame.len();
                let old = std::mem::replace(&mut self.urgent_mut()[start + i], frame);
                self.queued = self.queued - old.len() + added;
                return;
            }
        }
        self.queued += frame.len();
        self.urgent_mut().push(frame);
    }

    /// Queues a frame after all queued data, regardless of the budget: the
    /// close sequence of a connection that is not being dropped as slow
    /// (data already queued still goes out first, in order).
    pub fn push_final(&mut self, frame: Bytes) {
        let frame = match self.sse {
            false => frame,
            true => match sse_form(&frame) {
                Some(event) => event,
                None => return,
            },
        };
        self.queued += frame.len();
        self.data.push_back(Frame::Owned(frame));
        self.own_end = self.data.len();
    }

    /// Drops every queued normal data frame; keeps one already partly
    /// written (which must finish to keep the stream valid) and the
    /// high-priority ones. Returns bytes dropped.
    pub fn drop_data(&mut self) -> usize {
        let keep = usize::from(self.in_flight == InFlight::Data) + self.high as usize;
        let dropped: usize = self.data.iter().skip(keep).map(|f| f.len()).sum();
        self.data.truncate(keep);
        self.own_end = self.own_end.min(keep);
        self.queued -= dropped;
        dropped
    }

    /// Fills `iov` with the frames to write next, in wire order. Returns
    /// the number of slices used.
    pub fn fill<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let mut push = |b: &'a [u8]| {
            if n < iov.len() {
                iov[n] = IoSlice::new(b);
                n += 1;
                true
            } else {
                false
            }
        };
        let data_first = self.in_flight == InFlight::Data;
        if data_first && let Some(f) = self.data.front() {
            push(f);
        }
        for f in self.urgent() {
            if !push(f) {
                return n;
            }
        }
        for f in self.data.iter().skip(usize::from(data_first)) {
            if !push(f) {
                break;
            }
        }
        n
    }

    /// Records that `n` bytes were written (in the order of [`fill`]).
    /// Returns how many frames were completed.
    ///
    /// [`fill`]: Outbox::fill
    pub fn consume(&mut self, mut n: usize) -> usize {
        self.queued -= n;
        let mut done = 0;
        if self.in_flight == InFlight::Data {
            n = Self::eat(
                self.data.front_mut(),
                n,
                &mut self.in_flight,
                InFlight::Data,
            );
            if self.in_flight == InFlight::None {
                self.data.pop_front();
                self.own_end = self.own_end.saturating_sub(1);
                done += 1;
            }
        }
        while n > 0 && !self.urgent().is_empty() {
            n = Self::eat(
                self.urgent.as_mut().and_then(|u| u.first_mut()),
                n,
                &mut self.in_flight,
                InFlight::Urgent,
            );
            if self.in_flight == InFlight::None {
                self.urgent_mut().remove(0);
                done += 1;
            }
        }
        while n > 0 && !self.data.is_empty() {
            n = Self::eat(
                self.data.front_mut(),
                n,
                &mut self.in_flight,
                InFlight::Data,
            );
            // The front frame is written (or in flight): it is no longer
            // one of the queued high-priority frames, if it was.
            self.high = self.high.saturating_sub(1);
            if self.in_flight == InFlight::None {
                self.data.pop_front();
                self.own_end = self.own_end.saturating_sub(1);
                done += 1;
            }
        }
        if self.is_empty() {
            // Give the memory back: idle connections hold no buffers.
            self.urgent = None;
            self.data = VecDeque::new();
        }
        done
    }

    /// Consumes up to `n` bytes of `frame`; sets `in_flight` to `lane` if
    /// the frame is only partly written, else to `None`. Returns what is
    /// left of `n`.
    fn eat(
        frame: Option<&mut impl Advance>,
        n: usize,
        in_flight: &mut InFlight,
        lane: InFlight,
    ) -> usize {
        let f = frame.expect("consume() beyond queued bytes");
        if n >= f.len() {
            *in_flight = InFlight::None;
            n - f.len()
        } else {
            f.advance(n);
            *in_flight = lane;
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    /// A publication frame as a shard shares it between subscribers.
    fn sh(s: &[u8]) -> Frame {
        Frame::Shared(Rc::new(b(s)))
    }

    /// Writes everything queued, at most `chunk` bytes per write.
    pub(super) fn drain(o: &mut Outbox, chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while !o.is_empty() {
            let mut iov = [IoSlice::new(&[]); 8];
            let k = o.fill(&mut iov);
            let mut all: Vec<u8> = iov[..k].iter().flat_map(|s| s.iter().copied()).collect();
            all.truncate(chunk);
            let n = all.len();
            out.extend(all);
            o.consume(n);
        }
        out
    }

    #[test]
    fn urgent_goes_first_but_never_splits_a_frame() {
        let mut o = Outbox::default();
        o.push_data(sh(b"AAAA"), 100).unwrap();
        o.push_data(sh(b"BBBB"), 100).unwrap();
        // Write 2 bytes of AAAA, then a close arrives.
        let mut iov = [IoSlice::new(&[]); 8];
        o.fill(&mut iov);
        o.consume(2);
        o.push_urgent(b(b"\x88C"));
        assert_eq!(drain(&mut o, 3), b"AA\x88CBBBB".to_vec());
        assert!(o.is_empty());
        assert_eq!(o.data.capacity(), 0, "memory returned when empty");
    }

    #[test]
    fn budget_and_drop() {
        let mut o = Outbox::default();
        // One frame larger than the budget is accepted on an empty queue.
        o.push_data(sh(&[1; 50]), 10).unwrap();
        assert_eq!(o.push_data(sh(&[2; 5]), 10), Err(OverBudget));
        o.consume(0);
        let mut iov = [IoSlice::new(&[]); 8];
        o.fill(&mut iov);
        o.consume(20); // 30 bytes of the first frame still to go
        o.push_urgent(b(b"\x88\x02\x0b\xba"));
        // Slow consumer: drop data, keep the partly written frame.
        o.push_data(sh(&[3; 1]), 1000).unwrap();
        assert_eq!(o.drop_data(), 1);
        assert_eq!(o.queued_bytes(), 30 + 4);
        let out = drain(&mut o, 7);
        assert_eq!(&out[..30], &[1u8; 30][..]);
        assert_eq!(&out[30..], b"\x88\x02\x0b\xba");
    }

    #[test]
    fn pongs_are_bounded() {
        let mut o = Outbox::default();
        for i in 0..MAX_QUEUED_PONGS as u8 {
            o.push_urgent(b(&[0x8a, 0x01, i]));
        }
        assert_eq!(o.queued_bytes(), 3 * MAX_QUEUED_PONGS);
        // A flood keeps replacing the last waiting pong.
        for i in 0..1000u32 {
            o.push_urgent(b(&[0x8a, 0x01, (i % 200) as u8]));
        }
        assert_eq!(o.queued_bytes(), 3 * MAX_QUEUED_PONGS);
        let out = drain(&mut o, 1000);
        assert_eq!(&out[..3], &[0x8a, 0x01, 0]);
        assert_eq!(&out[out.len() - 3..], &[0x8a, 0x01, (999 % 200) as u8]);
    }

    #[test]
    fn many_frames_through_small_iov() {
        let mut o = Outbox::default();
        let mut want = Vec::new();
        for i in 0..100u8 {
            o.push_data(sh(&[i; 3]), 1 << 20).unwrap();
            want.extend([i; 3]);
        }
        assert_eq!(drain(&mut o, 17), want);
    }
}

#[cfg(test)]
mod priority {
    use super::tests::drain as write_all;
    use super::*;

    fn f(s: &[u8]) -> Frame {
        Frame::Owned(Bytes::copy_from_slice(s))
    }

    #[test]
    fn high_goes_before_queued_normal_data_but_never_inside_a_frame() {
        let mut o = Outbox::default();
        o.push_data(f(b"AAAA"), 100).unwrap();
        o.push_data(f(b"BBBB"), 100).unwrap();
        let mut iov = [IoSlice::new(&[]); 8];
        o.fill(&mut iov);
        o.consume(2); // AAAA in flight
        o.push_high(f(b"H1"), 100).unwrap();
        o.push_high(f(b"H2"), 100).unwrap();
        o.push_data(f(b"CC"), 100).unwrap();
        o.push_urgent(Bytes::from_static(b"\x8a\x00"));
        assert_eq!(write_all(&mut o, 3), b"AA\x8a\x00H1H2BBBBCC".to_vec());
        // The count of high frames is back to zero: a later high frame goes
        // first again.
        o.push_data(f(b"DD"), 100).unwrap();
        o.push_high(f(b"H3"), 100).unwrap();
        assert_eq!(write_all(&mut o, 100), b"H3DD".to_vec());
    }

    #[test]
    fn a_slow_consumer_loses_normal_data_but_keeps_high_priority_frames() {
        let mut o = Outbox::default();
        o.push_data(f(&[1; 10]), 30).unwrap();
        let mut iov = [IoSlice::new(&[]); 8];
        o.fill(&mut iov);
        o.consume(4); // in flight
        o.push_data(f(&[2; 10]), 30).unwrap();
        o.push_high(f(&[9; 10]), 30).unwrap();
        // Over the budget: accepted (up to twice it) but reported.
        assert_eq!(o.push_high(f(&[8; 10]), 30), Err(OverBudget));
        assert_eq!(o.push_high(f(&[7; 40]), 30), Err(OverBudget));
        assert_eq!(o.drop_data(), 10, "only the normal frame");
        let mut want = vec![1u8; 6];
        want.extend([9; 10]);
        want.extend([8; 10]);
        assert_eq!(write_all(&mut o, 7), want);
    }
    #[test]
    fn high_priority_never_overtakes_the_connections_own_frames() {
        let mut o = Outbox::default();
        o.push_data(f(b"P1"), 100).unwrap();
        // A subscribe reply, then a high-priority publication of that
        // channel in the same turn: the reply stays first.
        o.push_own(f(b"R1"), 100).unwrap();
        o.push_data(f(b"P2"), 100).unwrap();
        o.push_high(f(b"H1"), 100).unwrap();
        o.push_high(f(b"H2"), 100).unwrap();
        assert_eq!(write_all(&mut o, 3), b"P1R1H1H2P2".to_vec());
        // Written out, nothing pins the front: high goes first again.
        o.push_data(f(b"P3"), 100).unwrap();
        o.push_high(f(b"H3"), 100).unwrap();
        assert_eq!(write_all(&mut o, 100), b"H3P3".to_vec());
        // With a frame in flight and own frames behind it.
        o.push_own(f(b"AAAA"), 100).unwrap();
        let mut iov = [IoSlice::new(&[]); 8];
        o.fill(&mut iov);
        o.consume(2);
        o.push_data(f(b"P4"), 100).unwrap();
        o.push_own(f(b"R2"), 100).unwrap();
        o.push_high(f(b"H4"), 100).unwrap();
        o.push_data(f(b"P5"), 100).unwrap();
        o.push_high(f(b"H5"), 100).unwrap();
        assert_eq!(write_all(&mut o, 5), b"AAP4R2H4H5P5".to_vec());
    }

    #[test]
    fn a_dropped_slow_consumer_keeps_what_a_high_frame_was_queued_behind() {
        let mut o = Outbox::default();
        o.push_data(f(&[1; 10]), 30).unwrap();
        o.push_own(f(&[2; 10]), 30).unwrap();
        o.push_data(f(&[3; 5]), 30).unwrap();
        assert_eq!(o.push_high(f(&[9; 10]), 30), Err(OverBudget));
        // The high frame and everything ahead of it stay, in order.
        assert_eq!(o.drop_data(), 5);
        let mut want = vec![1u8; 10];
        want.extend([2; 10]);
        want.extend([9; 10]);
        assert_eq!(write_all(&mut o, 7), want);
        // Nothing is pinned once the queue is written.
        o.push_data(f(b"P"), 30).unwrap();
        o.push_high(f(b"H"), 30).unwrap();
        assert_eq!(write_all(&mut o, 7), b"HP".to_vec());
    }
}

#[cfg(test)]
mod shared_frames {
    use super::*;

    #[test]
    fn a_partly_written_shared_frame_leaves_the_other_copies_whole() {
        let shared = Rc::new(Bytes::from_static(b"0123456789"));
        let mut a = Outbox::default();
        let mut b = Outbox::default();
        a.push_data(Frame::Shared(shared.clone()), 100).unwrap();
        b.push_data(Frame::Shared(shared.clone()), 100).unwrap();
        assert_eq!(Rc::strong_count(&shared), 3);
        // `a`'s socket takes 4 bytes: its copy becomes its own.
        assert_eq!(a.consume(4), 0);
        assert_eq!(Rc::strong_count(&shared), 2);
        let mut iov = [IoSlice::new(&[]); 4];
        let k = a.fill(&mut iov);
        assert_eq!(&*iov[..k][0], b"456789");
        let k = b.fill(&mut iov);
        assert_eq!(&*iov[..k][0], b"0123456789");
        assert_eq!(b.consume(10), 1);
        assert_eq!(a.consume(6), 1);
        assert_eq!(Rc::strong_count(&shared), 1, "every copy released");
    }
}
