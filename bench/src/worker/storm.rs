//! The `storm` and `recover` modes' connection: receive, drop on command,
//! reconnect, resubscribe (with recovery in `recover` mode).

use anyhow::Result;
use tokio::sync::Semaphore;

use super::{Mode, ReadStamp, State, bump, connect_one, recover, scan_text};
use crate::clock::mono_ns;
use crate::conn::{Conn, Control, Position, SubOpts, handle_control};
use crate::wsclient::OP_TEXT;

/// A `storm` member: receives until the drop command, then closes its
/// socket abortively, waits until every connection of the worker is
/// closed, reconnects, resubscribes and notes when the first publication
/// newer than its resubscription arrives.
///
/// In `recover` mode it waits for [`Command::Reconnect`] instead, and
/// resubscribes with `recover` from the epoch and last offset it saw; the
/// reply's replayed publications are checked (see [`recover::replay_check`])
/// and its times count from the reconnect command.
pub(super) async fn storm_member(
    mut c: Conn,
    st: &State,
    g: u64,
    channel: &str,
    sem: &Semaphore,
) -> Result<u16> {
    let mut drop_rx = st.storm.drop_tx.subscribe();
    let mut reconnect_rx = st.storm.reconnect_tx.subscribe();
    let mut gen_seen = *drop_rx.borrow_and_update();
    let recover = st.args.mode == Mode::Recover;
    // After a reconnection: the subscribe offset still to be passed.
    let mut pending: Option<u64> = None;
    // Recover mode: the channel's epoch, and the last offset once the
    // replay and any pushes of the setup frames are counted.
    let mut epoch = String::new();
    let mut carried: Option<u64> = None;
    if let Some(r) = &c.sub_reply {
        epoch = r.epoch.clone();
        let mut last = r.offset;
        for &off in &r.early_pushes {
            st.on_pub(&mut last, off, None, mono_ns());
        }
        carried = Some(last);
    }
    loop {
        let mut last = carried.take().unwrap_or(c.sub_offset.unwrap_or(0));
        let mut rs = ReadStamp::new(&c);
        // Receive until the drop signal.
        loop {
            tokio::select! {
                biased;
                r = drop_rx.changed() => {
                    if r.is_err() {
                        // The state is going away: the worker is exiting.
                        return Ok(1001);
                    }
                    break;
                }
                h = c.reader.next_frame() => {
                    let h = h?;
                    if let Some(ctl) = handle_control(&mut c.reader, &mut c.writer, &h).await? {
                        match ctl {
                            Control::Closed(code) => return Ok(code),
                            Control::Handled => continue,
                        }
                    }
                    if h.opcode == OP_TEXT {
                        rs.update(&c, st);
                        let now = rs.now;
                        let before = st.received.get();
                        scan_text(c.reader.payload(&h), st, &mut last, now, |_, _| {});
                        if let Some(sub_off) = pending
                            && st.received.get() > before
                            && last > sub_off
                        {
                            pending = None;
                            let mut s = st.storm.status.borrow_mut();
                            s.receiving += 1;
                            s.last_recv_ns = s.last_recv_ns.max(now);
                            let base = if recover { s.reconnect_ns } else { s.drop_ns };
                            st.storm
                                .recv_hist
                                .borrow_mut()
                                .saturating_record(now.saturating_sub(base).max(1));
                        }
                    }
                    c.reader.consume(&h);
                }
            }
        }
        let gen_now = *drop_rx.borrow_and_update();
        if gen_now == gen_seen {
            continue;
        }
        gen_seen = gen_now;
        // Drop: RST, no close handshake.
        c.set_abortive_close()?;
        drop(c);
        st.live.set(st.live.get().saturating_sub(1));
        {
            let mut s = st.storm.status.borrow_mut();
            s.dropped += 1;
            if s.dropped >= s.live_at_drop {
                s.closed_all_ns = mono_ns();
                drop(s);
                if !recover {
                    st.storm.reconnect_tx.send_modify(|g| *g += 1);
                }
            }
        }
        if reconnect_rx.wait_for(|&r| r >= gen_seen).await.is_err() {
            return Ok(1001);
        }
        let seed = g + 1 + gen_seen * 1_000_000_000;
        let sub = SubOpts {
            detail: recover,
            recover: recover.then(|| Position {
                epoch: epoch.clone(),
                offset: last,
            }),
            ..SubOpts::default()
        };
        match connect_one(seed, channel, st, sem, &sub).await {
            Ok(nc) => {
                let now = mono_ns();
                bump(&st.live, 1);
                let mut s = st.storm.status.borrow_mut();
                s.resubscribed += 1;
                s.last_sub_ns = s.last_sub_ns.max(now);
                let base = if recover { s.reconnect_ns } else { s.drop_ns };
                st.storm
                    .sub_hist
                    .borrow_mut()
                    .saturating_record(now.saturating_sub(base).max(1));
                pending = Some(nc.sub_offset.unwrap_or(0));
                if let Some(r) = &nc.sub_reply {
                    let new_last = recover::on_recovery(st, &mut s, &epoch, last, r, now);
                    epoch = r.epoch.clone();
                    if new_last > r.offset {
                        // A live push already came with the reply.
                        pending = None;
                        s.receiving += 1;
                        s.last_recv_ns = s.last_recv_ns.max(now);
                        st.storm
                            .recv_hist
                            .borrow_mut()
                            .saturating_record(now.saturating_sub(base).max(1));
                    }
                    carried = Some(new_last);
                }
                c = nc;
            }
            Err(e) => {
                st.storm.status.borrow_mut().failed += 1;
                // Counted as a storm failure, not as a close.
                st.live.set(st.live.get() + 1);
                return Err(e.context("reconnecting after the drop"));
            }
        }
    }
}
