//! The read path of a shard: a ready socket's bytes into its session (the
//! upgrade, then frames event by event), data messages into commands, and
//! compressed messages through the shard's one inflater.

use super::*;

impl Shard {
    pub(super) fn read_conn(&mut self, c: ConnRef) {
        if self.tls.is_some() {
            return self.read_conn_tls(c);
        }
        let mut total = 0;
        loop {
            let Some(conn) = self.conn_mut(c) else {
                return;
            };
            let fd = conn.raw_fd();
            let mut scratch = std::mem::take(&mut self.scratch);
            let r = sys::read(fd, &mut scratch);
            let n = match r {
                Ok(0) => {
                    self.scratch = scratch;
                    if slot_ref(&self.conns, c).map(|conn| conn.session.phase())
                        == Some(Phase::Handshake)
                    {
                        self.metrics.handshake(HandshakeResult::Aborted);
                    }
                    self.free_conn(c);
                    return;
                }
                Ok(n) => n,
                Err(e) if sys::would_block(&e) => {
                    self.scratch = scratch;
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    self.scratch = scratch;
                    continue;
                }
                Err(_) => {
                    self.scratch = scratch;
                    self.free_conn(c);
                    return;
                }
            };
            self.stats.bytes_in += n as u64;
            self.on_bytes(c, &mut scratch[..n]);
            self.scratch = scratch;
            total += n;
            if n < SCRATCH {
                return; // a short read drained the socket
            }
            if total >= READ_BUDGET {
                self.defer_read(c);
                return;
            }
        }
    }

    /// `c` used its read budget with input possibly left: read it again
    /// later in the turn.
    pub(super) fn defer_read(&mut self, c: ConnRef) {
        if let Some(conn) = self.conn_mut(c)
            && !conn.in_backlog
        {
            conn.in_backlog = true;
            self.read_backlog.push(c);
        }
    }

    pub(super) fn on_bytes(&mut self, c: ConnRef, buf: &mut [u8]) {
        let Some(conn) = self.conn_mut(c) else {
            return;
        };
        match conn.session.phase() {
            Phase::Handshake => self.on_handshake_bytes(c, buf),
            Phase::Open if conn.session.endpoint() == Endpoint::SsePost => {
                self.on_post_bytes(c, buf)
            }
            _ if conn.session.reads_frames() => self.feed_frames(c, buf),
            _ => {} // closing: discard until end of stream
        }
    }

    /// Upgrade request bytes (after any PROXY header).
    pub(crate) fn on_request_bytes(&mut self, c: ConnRef, buf: &mut [u8]) {
        let now = self.now_tick;
        let Some(conn) = slot(&mut self.conns, c) else {
            return;
        };
        let access = &mut self.access;
        let checked = |req: &UpgradeRequest<'_>| access.check_upgrade(c.idx, req);
        match conn
            .session
            .handle_request_checked(now, buf, &self.session_cfg, checked)
        {
            Request::Partial => {}
            Request::Rejected(r) => {
                self.metrics.handshake(r);
                self.closing(c);
            }
            Request::Refused(r) => {
                self.access_refused(r);
                self.metrics.handshake(Reject::of_refusal(r));
                self.closing(c);
            }
            Request::Opened(mut rest) => {
                self.metrics.handshake(HandshakeResult::Ok);
                let deadline = conn.session.deadline();
                let endpoint = conn.session.endpoint();
                self.wheel.schedule(deadline, c);
                self.mark_dirty(c);
                match endpoint {
                    Endpoint::SseStream => self.sse_opened(c),
                    Endpoint::SsePost => self.on_post_bytes(c, &rest),
                    Endpoint::Client | Endpoint::Echo if !rest.is_empty() => {
                        self.feed_frames(c, &mut rest)
                    }
                    Endpoint::Client | Endpoint::Echo => {}
                }
            }
        }
    }

    /// Decodes one read's frames, an event at a time, through the session.
    pub(super) fn feed_frames(&mut self, c: ConnRef, buf: &mut [u8]) {
        let Some(conn) = slot(&mut self.conns, c) else {
            return;
        };
        let (mut decoder, limits) = conn.session.take_decoder(&self.session_cfg);
        let result = decoder.feed(buf, &limits, |ev| self.on_event(c, ev));
        let Some(conn) = self.conn_mut(c) else {
            return;
        };
        match conn.session.fed(decoder, result) {
            Feed::Done => {}
            Feed::Close(reason) => self.close_conn(c, reason),
            Feed::GiveUp => self.mark_dirty(c),
        }
    }

    pub(super) fn on_event(&mut self, c: ConnRef, ev: Event<'_>) -> Flow {
        let now = self.now_tick;
        let Some(conn) = slot(&mut self.conns, c) else {
            return Flow::Stop;
        };
        match conn.session.on_event(now, ev, &self.session_cfg) {
            Input::Nothing => {}
            Input::Answered | Input::CloseDone => self.mark_dirty(c),
            Input::PeerClosed(code) => {
                self.metrics.close(code.unwrap_or(1005));
                self.closing(c);
            }
            Input::Message {
                text,
                payload,
                compressed,
            } => {
                self.stats.messages_in += 1;
                if compressed {
                    self.on_compressed_message(c, text, payload);
                } else {
                    self.on_message(c, text, payload);
                }
            }
        }
        match self.conn_mut(c) {
            Some(conn) => conn.session.flow(),
            None => Flow::Stop,
        }
    }

    /// A complete (uncompressed) data message.
    pub(super) fn on_message(&mut self, c: ConnRef, text: bool, payload: &[u8]) {
        let Some(conn) = slot(&mut self.conns, c) else {
            return;
        };
        match conn.session.endpoint() {
            Endpoint::Echo => {
                let deflate = conn.session.deflate();
                let frame = frame_for(&mut self.compressor, deflate, text, payload);
                self.queue_data(c, frame);
            }
            Endpoint::Client => self.on_client_message(c, text, payload),
            // No frames are read on these (their bytes take another way).
            Endpoint::SseStream | Endpoint::SsePost => {}
        }
    }

    /// A permessage-deflate message: inflated (bounded by the message size
    /// limit) and checked by the session, then handled as usual.
    pub(super) fn on_compressed_message(&mut self, c: ConnRef, text: bool, payload: &[u8]) {
        let Some(conn) = slot_ref(&self.conns, c) else {
            return;
        };
        let Some(mut inflater) = self.inflater.take() else {
            // Cannot happen: RSV1 is refused unless compression is on.
            self.close_conn(c, CloseReason::ProtocolError);
            return;
        };
        match conn
            .session
            .inflate(&mut inflater, text, payload, &self.session_cfg)
        {
            Ok(plain) => self.on_message(c, text, plain),
            Err(reason) => self.close_conn(c, reason),
        }
        self.inflater = Some(inflater);
    }
}
