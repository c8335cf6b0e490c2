//! Time on a shard: the per-second tick (heartbeats, handshake, connect and
//! close deadlines, credential and subscription expiries, drain progress),
//! the deadline wheel worked through a slice per turn, and the drain.

use super::*;

impl Shard {
    /// Once per second (every 100 ms while draining): heartbeats,
    /// handshake and close deadlines, drain progress, housekeeping.
    pub(crate) fn tick(&mut self) {
        let now = Instant::now();
        let interval = if self.drain.is_some() {
            DRAIN_STEP
        } else {
            Duration::from_secs(1)
        };
        self.next_tick = now + interval;
        self.refresh_live_limits();
        self.now_tick = now.duration_since(self.started).as_secs() as u32;
        self.wheel.advance(self.now_tick, &mut self.due);
        self.run_deadlines();
        self.acceptor.resume(&self.epoll);
        self.expire_subscriptions();
        self.router_timers(now);
        self.access_tick(now);
        if self.id == 0 {
            self.ctx.shared.check_memory();
        }
        if self.drain.is_some() {
            self.drain_step(now);
        }
        self.metrics
            .channels_local
            .set(self.router.local_channels() as i64);
        self.metrics
            .channels_home
            .set(self.router.home_channels() as i64);
        self.metrics.inbox_depth.set(self.inbox().len() as i64);
        let h = self.router.history_stats();
        self.metrics.history_bytes.set(h.bytes as i64);
        self.metrics.history_publications.set(h.publications as i64);
        let evicted = [h.evicted_by_size, h.evicted_by_ttl, h.evicted_by_memory];
        for ((delta, now), before) in self
            .stats
            .history_evictions
            .iter_mut()
            .zip(evicted)
            .zip(self.evicted_before)
        {
            *delta += now - before;
        }
        self.evicted_before = evicted;
        let stories = self.router.story_stats();
        self.metrics.collab.set(&stories);
        self.flush();
        self.retry_owed();
        self.flush_metrics();
    }

    /// Moves the turn's counts (the shard's and the router's) to the
    /// metrics.
    pub(crate) fn flush_metrics(&mut self) {
        let (r, encodes) = self.router.take_stats();
        if let Some(c) = &self.cluster {
            c.flush(&self.router.take_cluster_stats());
        }
        self.metrics.collab.flush(&r);
        self.stats.publications += r.publications;
        self.stats.deliveries += r.deliveries;
        self.stats.gaps += r.gaps;
        self.stats.duplicates += r.duplicates;
        self.stats.recoveries[0] += r.recovered;
        self.stats.recoveries[1] += r.not_recovered;
        self.stats.presence_pushes += r.presence_pushes;
        for (total, n) in self.stats.encodes.iter_mut().zip(encodes) {
            *total += n;
        }
        self.metrics.flush(&mut self.stats);
        self.uring_flush_metrics();
    }

    /// Handles up to `DEADLINE_BUDGET` due connections.
    pub(super) fn run_deadlines(&mut self) {
        for _ in 0..DEADLINE_BUDGET {
            let Some(c) = self.due.pop_front() else {
                break;
            };
            self.on_deadline(c);
        }
    }

    pub(super) fn on_deadline(&mut self, c: ConnRef) {
        let now = self.now_tick;
        let Some(conn) = slot(&mut self.conns, c) else {
            return;
        };
        match conn.session.handle_timeout(now, &self.session_cfg) {
            Timeout::Wait(at) => self.wheel.schedule(at, c),
            Timeout::Ping(at) => {
                self.wheel.schedule(at, c);
                self.mark_dirty(c);
                if self.tls_must_reconnect(c) {
                    self.close_conn(c, CloseReason::GoingAway);
                }
            }
            Timeout::HandshakeExpired => {
                let post =
                    self.conn_mut(c).map(|conn| conn.session.endpoint()) == Some(Endpoint::SsePost);
                if post {
                    self.sse.metrics.post(crate::metrics::PostResult::Expired);
                } else {
                    self.metrics.handshake(HandshakeResult::Timeout);
                }
                self.free_conn(c);
            }
            Timeout::NoPong => self.close_conn(c, CloseReason::NoPong),
            Timeout::ConnectExpired => self.close_conn(c, CloseReason::ConnectTimeout),
            Timeout::Expired => self.close_conn(c, CloseReason::TokenExpired),
            Timeout::CloseExpired => self.close_deadline(c),
        }
    }

    /// `close_timeout` has passed for a closing connection. The peer's time
    /// to answer our close starts when the close reaches it: while output is
    /// still on its way (in the outbox, or sent but not yet acknowledged,
    /// e.g. a dropped slow consumer finishing its frame in flight, its
    /// `disconnect` push and close frame) and the peer keeps taking it, wait
    /// another `close_timeout`, and once more after it has all arrived. A
    /// peer that took nothing for a whole `close_timeout` is given up on.
    ///
    /// The socket is then closed without losing what the kernel still holds
    /// for the peer: FIN after it, and unread input drained first (closing
    /// with unread input sends a reset, which discards it).
    pub(super) fn close_deadline(&mut self, c: ConnRef) {
        let now = self.now_tick;
        // Output the TLS layer or the ring holds, not yet in the socket.
        let tls_left = self.tls_pending_bytes(c) + self.uring_pending_bytes(c);
        let Some(conn) = slot(&mut self.conns, c) else {
            return;
        };
        let fd = conn.raw_fd();
        let left = conn.session.outbox.queued_bytes() + tls_left + sys::unacked_bytes(fd);
        let progress = match self.delivering.get(&c) {
            None => left > 0,
            Some(&before) => left < before,
        };
        if progress {
            self.delivering.insert(c, left);
            let at = conn.session.extend_close(now, &self.session_cfg);
            self.wheel.schedule(at, c);
            return;
        }
        if !conn.write_shut {
            conn.write_shut = true;
            self.tls_close_notify(c);
            sys::shutdown_write(fd);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        for _ in 0..READ_BUDGET / SCRATCH {
            if !matches!(sys::read(fd, &mut scratch), Ok(n) if n > 0) {
                break;
            }
        }
        self.scratch = scratch;
        self.free_conn(c);
    }

    // ---- drain ------------------------------------------------------------

    /// Stops accepting and starts telling clients to reconnect.
    pub(crate) fn start_drain(&mut self) {
        if self.drain.is_some() {
            return;
        }
        let now = Instant::now();
        let total = self.ctx.config.drain_timeout;
        info!(shard = self.id, connections = self.conns.len(), "draining");
        let listener = self.acceptor.close(&self.epoll);
        self.uring_stop_accepting(listener);
        self.drain = Some(Drain::new(now, total));
        self.next_tick = now;
    }

    pub(super) fn drain_step(&mut self, now: Instant) {
        let d = *self.drain.as_ref().expect("draining");
        if self.conns.is_empty() || d.over(now) {
            let left = self.conns.len();
            let keys: Vec<ConnRef> = self
                .conns
                .iter()
                .map(|(i, c)| ConnRef {
                    idx: i as u32,
                    generation: c.generation,
                })
                .collect();
            for c in keys {
                self.free_conn(c);
            }
            info!(
                shard = self.id,
                forced = left,
                took_ms = d.elapsed(now).as_millis() as u64,
                "drained"
            );
            self.stopped = true;
            return;
        }
        let open: Vec<ConnRef> = self
            .conns
            .iter()
            .filter(|(_, c)| c.session.phase() != Phase::Closing)
            .map(|(i, c)| ConnRef {
                idx: i as u32,
                generation: c.generation,
            })
            .collect();
        for &c in open.iter().take(d.quota(now, open.len())) {
            match self.conn_mut(c).map(|conn| conn.session.phase()) {
                Some(Phase::Handshake) => self.free_conn(c),
                Some(Phase::Open) => self.close_conn(c, CloseReason::Shutdown),
                _ => {}
            }
        }
    }
}
