//! The `storm`, `recover` and `failover` modes' connection: receive, drop
//! on command (or lose the server), reconnect, resubscribe (with recovery
//! in `recover` and `failover` modes).

use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::sync::Semaphore;

use super::{Mode, ReadStamp, State, bump, connect_one, recover, scan_text};
use crate::clock::mono_ns;
use crate::conn::{CommandFailed, Conn, Control, Position, SubOpts, handle_control};
use crate::wsclient::OP_TEXT;

/// How a connection's receive loop ended.
enum Ended {
    /// The drop command (`storm`, `recover`).
    Drop,
    /// The server closed it (code) or the connection failed.
    Lost(Result<u16>),
}

/// A `storm` member: receives until the drop command, then closes its
/// socket abortively, waits until every connection of the worker is
/// closed, reconnects, resubscribes and notes when the first publication
/// newer than its resubscription arrives.
///
/// In `recover` mode it waits for [`Command::Reconnect`] instead, and
/// resubscribes with `recover` from the epoch and last offset it saw; the
/// reply's replayed publications are checked (see [`recover::replay_check`])
/// and its times count from the reconnect command.
///
/// In `failover` mode nothing is dropped on command: the server goes away.
/// A connection that is lost reconnects at once (see [`failover_reconnect`])
/// and recovers as in `recover` mode; its times count from the drop
/// command, which the driver sends just before it kills the node. A
/// connection lost again later (e.g. closed with 3004 when its channel
/// moves) does it again.
///
/// [`Command::Reconnect`]: crate::ipc::Command::Reconnect
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
    let failover = st.args.mode == Mode::Failover;
    let recover = st.args.mode == Mode::Recover || failover;
    // After a reconnection: the subscribe offset still to be passed.
    let mut pending: Option<u64> = None;
    // Recover mode: the channel's epoch, and the last offset once the
    // replay and any pushes of the setup frames are counted.
    let mut epoch = String::new();
    let mut carried: Option<u64> = None;
    let mut losses: u64 = 0;
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
        // Receive until the drop signal (or, in failover mode, the end).
        let ended = loop {
            tokio::select! {
                biased;
                r = drop_rx.changed(), if !failover => {
                    if r.is_err() {
                        // The state is going away: the worker is exiting.
                        return Ok(1001);
                    }
                    break Ended::Drop;
                }
                h = c.reader.next_frame() => {
                    let h = match h {
                        Ok(h) => h,
                        Err(e) => break Ended::Lost(Err(e)),
                    };
                    match handle_control(&mut c.reader, &mut c.writer, &h).await {
                        Ok(Some(Control::Closed(code))) => break Ended::Lost(Ok(code)),
                        Ok(Some(Control::Handled)) => continue,
                        Ok(None) => {}
                        Err(e) => break Ended::Lost(Err(e)),
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
                            let base = if st.args.mode == Mode::Recover { s.reconnect_ns } else { s.drop_ns };
                            st.storm
                                .recv_hist
                                .borrow_mut()
                                .saturating_record(now.saturating_sub(base).max(1));
                        }
                    }
                    c.reader.consume(&h);
                }
            }
        };
        match ended {
            Ended::Lost(how) if !failover => return how,
            Ended::Lost(how) => {
                drop(c);
                losses += 1;
                st.live.set(st.live.get().saturating_sub(1));
                let mut s = st.storm.status.borrow_mut();
                s.lost_now += 1;
                if losses == 1 && s.drop_ns > 0 {
                    s.dropped += 1;
                    if s.dropped >= s.live_at_drop {
                        s.closed_all_ns = mono_ns();
                    }
                } else {
                    // Lost before the kill, or again after resubscribing.
                    s.lost_again += 1;
                    drop(s);
                    let why = match how {
                        Ok(code) => format!("lost again: close {code}"),
                        Err(e) => format!("lost again: {e:#}"),
                    };
                    *st.closes.borrow_mut().entry(why).or_insert(0) += 1;
                }
            }
            Ended::Drop => {
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
            }
        }
        let sub = SubOpts {
            detail: recover,
            recover: recover.then(|| Position {
                epoch: epoch.clone(),
                offset: last,
            }),
            ..SubOpts::default()
        };
        let res = if failover {
            failover_reconnect(st, g, losses, channel, sem, &sub).await
        } else {
            let seed = g + 1 + gen_seen * 1_000_000_000;
            connect_one(st.args.server, seed, Some(channel), st, sem, &sub).await
        };
        match res {
            Ok(nc) => {
                let now = mono_ns();
                bump(&st.live, 1);
                let mut s = st.storm.status.borrow_mut();
                let first = losses <= 1;
                if failover {
                    s.lost_now = s.lost_now.saturating_sub(1);
                }
                let base = if st.args.mode == Mode::Recover {
                    s.reconnect_ns
                } else {
                    s.drop_ns
                };
                if first {
                    s.resubscribed += 1;
                    s.last_sub_ns = s.last_sub_ns.max(now);
                    st.storm
                        .sub_hist
                        .borrow_mut()
                        .saturating_record(now.saturating_sub(base).max(1));
                    pending = Some(nc.sub_offset.unwrap_or(0));
                }
                if let Some(r) = &nc.sub_reply {
                    let rec_before = s.recovered;
                    if !r.recovered && r.epoch == epoch {
                        // Not a new epoch, yet not recovered: worth a look.
                        st.note_error(format!(
                            "{channel}: not recovered in the same epoch {epoch} from offset \
                             {last} (reply offset {}, {} publications; via {})",
                            r.offset,
                            r.publications.len(),
                            if failover {
                                failover_addr(st, g)
                            } else {
                                st.args.server
                            }
                        ));
                    }
                    let new_last = recover::on_recovery(st, &mut s, &epoch, last, r, now);
                    if failover && st.args.channels > 0 {
                        let k = (g % st.args.channels) as usize;
                        let v = if s.recovered > rec_before {
                            &st.chan_recovered
                        } else {
                            &st.chan_not_recovered
                        };
                        v.borrow_mut()[k] += 1;
                    }
                    epoch = r.epoch.clone();
                    if first && new_last > r.offset {
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
                let mut s = st.storm.status.borrow_mut();
                s.failed += 1;
                if failover {
                    s.lost_now = s.lost_now.saturating_sub(1);
                }
                // Counted as a storm failure, not as a close.
                st.live.set(st.live.get() + 1);
                return Err(e.context("reconnecting after the drop"));
            }
        }
    }
}

/// Attempts at reconnecting (or subscribing on a connection, after a
/// temporary refusal) before a failover reconnection counts as failed.
const FAILOVER_ATTEMPTS: u32 = 40;

/// Backoff before attempt `n` (1-based) of connection `g`: 100 ms
/// doubling to 1.6 s, each with up to 50 % jitter (spread by `g`, so the
/// refused subscribers do not all come back at once).
fn backoff(n: u32, g: u64) -> Duration {
    let base = 100u64 << n.saturating_sub(1).min(4);
    let jitter = (g
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(u64::from(n))
        >> 40)
        % (base / 2 + 1);
    Duration::from_millis(base + jitter)
}

/// Where connection `g` reconnects in failover mode: `--reconnect-to`
/// alternating, and shifted by one every `channels` clients so that the
/// clients of one channel (g, g + K, g + 2K, …) alternate too: with an even
/// K, plain g mod 2 would send all of a channel's clients to one node.
fn failover_addr(st: &State, g: u64) -> std::net::SocketAddr {
    let to = &st.args.reconnect_to;
    if to.is_empty() {
        st.args.server
    } else {
        to[((g + g / st.args.channels.max(1)) % to.len() as u64) as usize]
    }
}

/// Failover reconnection of connection `g` after its `losses`-th loss: to
/// `--reconnect-to` (alternating, see below), `connect`, then `subscribe`
/// as `sub` says on that connection, as a client library does. A subscribe
/// refused with 100 (temporary: the channel's home is unreachable or
/// moving) is tried again on the same connection after a backoff; any other
/// failure reconnects after a backoff.
async fn failover_reconnect(
    st: &State,
    g: u64,
    losses: u64,
    channel: &str,
    sem: &Semaphore,
    sub: &SubOpts,
) -> Result<Conn> {
    let addr = failover_addr(st, g);
    let timeout = Duration::from_secs(st.args.timeout_s);
    let mut attempt: u32 = 0;
    let mut last_err = anyhow!("no attempt");
    while attempt < FAILOVER_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt, g)).await;
        }
        attempt += 1;
        let seed = g + 1 + (losses * 64 + u64::from(attempt)) * 1_000_000_000;
        let mut c = match connect_one(addr, seed, None, st, sem, &SubOpts::default()).await {
            Ok(c) => c,
            Err(e) => {
                st.storm.status.borrow_mut().reconnect_errors += 1;
                st.note_error(format!("failover connect: {e:#}"));
                last_err = e;
                continue;
            }
        };
        let mut id = 2;
        while attempt < FAILOVER_ATTEMPTS {
            match tokio::time::timeout(timeout, c.resubscribe(id, channel, sub)).await {
                Ok(Ok(())) => return Ok(c),
                Ok(Err(e))
                    if e.downcast_ref::<CommandFailed>()
                        .is_some_and(|f| f.code == 100) =>
                {
                    st.storm.status.borrow_mut().sub_retries += 1;
                    last_err = e;
                    tokio::time::sleep(backoff(attempt, g)).await;
                    attempt += 1;
                    id += 1;
                }
                Ok(Err(e)) => {
                    st.storm.status.borrow_mut().reconnect_errors += 1;
                    st.note_error(format!("failover subscribe: {e:#}"));
                    last_err = e;
                    break;
                }
                Err(_) => {
                    st.storm.status.borrow_mut().reconnect_errors += 1;
                    st.note_error(format!("failover subscribe: no reply within {timeout:?}"));
                    last_err = anyhow!("subscribe timed out");
                    break;
                }
            }
        }
    }
    Err(last_err.context(format!("{FAILOVER_ATTEMPTS} attempts")))
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        for g in [0u64, 1, 7, 19_000] {
            for (n, base) in [(1u32, 100u64), (2, 200), (3, 400), (5, 1600), (9, 1600)] {
                let b = backoff(n, g);
                assert!(b >= Duration::from_millis(base), "{n} {g} {b:?}");
                assert!(b <= Duration::from_millis(base * 3 / 2), "{n} {g} {b:?}");
            }
        }
    }
}
