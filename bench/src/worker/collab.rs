//! The `collab` mode's connection (`collab-fanout`, `collab-many`): a
//! story member joined with `collab_join`. Every member checks the story's
//! publications (offsets consecutive, each section's versions +1 from the
//! snapshot on); viewers time the update events, editors send `update`s
//! to their own section `s<member>` on the [`Command::Publish`] plan with
//! the `base_version` their last reply gave, and time the replies.
//!
//! [`Command::Publish`]: crate::ipc::Command::Publish

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;

use super::{PubPlan, ReadStamp, State, bump, hist_pairs, new_histogram};
use crate::clock::{mono_ns, to_instant};
use crate::collab::proto::{
    JoinReply, Seat, StoryMsg, build_update, classify_story, parse_error_reply, parse_update_reply,
};
use crate::conn::{Conn, Control, handle_control};
use crate::ipc::CollabReport;
use crate::scan::{ServerMsg, for_each_object};
use crate::wsclient::OP_TEXT;

/// The collab figures of one worker.
pub(super) struct CollabState {
    mismatches: Cell<u64>,
    duplicates: Cell<u64>,
    version_skips: Cell<u64>,
    ack_hist: RefCell<Histogram<u64>>,
}

impl CollabState {
    pub(super) fn new() -> Self {
        Self {
            mismatches: Cell::new(0),
            duplicates: Cell::new(0),
            version_skips: Cell::new(0),
            ack_hist: RefCell::new(new_histogram()),
        }
    }

    pub(super) fn report(&self) -> CollabReport {
        CollabReport {
            version_mismatches: self.mismatches.get(),
            duplicates: self.duplicates.get(),
            version_skips: self.version_skips.get(),
            ack_hist: hist_pairs(&self.ack_hist.borrow()),
        }
    }
}

/// What one member knows of its story: the last offset seen and each
/// section's last version.
struct View {
    last: u64,
    versions: HashMap<Vec<u8>, u64>,
}

impl View {
    fn from_reply(r: &JoinReply) -> Self {
        Self {
            last: r.offset,
            versions: r
                .sections
                .iter()
                .map(|(id, s)| (id.as_bytes().to_vec(), s.version))
                .collect(),
        }
    }

    fn offset(&mut self, st: &State, offset: u64) {
        if offset > self.last + 1 {
            bump(&st.gaps, offset - self.last - 1);
        } else if offset <= self.last {
            bump(&st.ooo, 1);
        }
        self.last = self.last.max(offset);
    }

    /// Handles one server object received at `now`; a viewer counts and
    /// times update events. Returns what is not a publication.
    fn on_object(&mut self, st: &State, o: &[u8], now: u64, viewer: bool) -> Option<ServerMsg> {
        match classify_story(o) {
            StoryMsg::Update {
                offset,
                section,
                version,
                t,
            } => {
                self.offset(st, offset);
                let prev = self.versions.get(section).copied().unwrap_or(0);
                if version != prev + 1 {
                    bump(&st.collab.version_skips, 1);
                }
                match self.versions.get_mut(section) {
                    Some(v) => *v = (*v).max(version),
                    None => {
                        self.versions.insert(section.to_vec(), version);
                    }
                }
                if viewer {
                    bump(&st.received, 1);
                    let (ws, we) = st.window.get();
                    if now >= ws && now < we {
                        bump(&st.during_window, 1);
                    }
                    match t {
                        Some(t) if t >= ws && t < we => {
                            bump(&st.in_window, 1);
                            st.hist
                                .borrow_mut()
                                .saturating_record(now.saturating_sub(t).max(1));
                            st.min_off.set(st.min_off.get().min(offset));
                            st.max_off.set(st.max_off.get().max(offset));
                        }
                        Some(_) => {}
                        None => bump(&st.no_t, 1),
                    }
                }
                None
            }
            StoryMsg::Event { offset } => {
                self.offset(st, offset);
                bump(&st.other_pushes, 1);
                bump(&st.other_push_bytes, o.len() as u64);
                None
            }
            StoryMsg::Other(m) => {
                match m {
                    ServerMsg::Disconnect { code } => {
                        *st.closes
                            .borrow_mut()
                            .entry(format!("disconnect push {code}"))
                            .or_insert(0) += 1;
                    }
                    ServerMsg::OtherPush => {
                        bump(&st.other_pushes, 1);
                        bump(&st.other_push_bytes, o.len() as u64);
                    }
                    _ => {}
                }
                Some(m)
            }
        }
    }
}

/// A story member: checks its role, replays the pushes of its setup
/// frames, then runs as an editor or a viewer until the server closes.
pub(super) async fn collab_member(
    mut c: Conn,
    st: &State,
    g: u64,
    channel: &str,
    seat: Seat,
) -> Result<u16> {
    let reply = c.join_reply.take().context("no collab_join reply")?;
    let want = if seat.editor { "editor" } else { "viewer" };
    if reply.role != want {
        bail!("collab_join as {want} answered role {:?}", reply.role);
    }
    let mut view = View::from_reply(&reply);
    let now = mono_ns();
    for o in &reply.early {
        view.on_object(st, o, now, !seat.editor);
    }
    drop(reply);
    if seat.editor {
        editor(c, st, g, channel, seat, view).await
    } else {
        viewer(c, st, view).await
    }
}

fn note_error_obj(st: &State, what: &str, o: &[u8]) {
    let text = String::from_utf8_lossy(&o[..o.len().min(300)]);
    // Without the id, so that the same error is noted once.
    let text = match text.find(",\"error\":") {
        Some(i) => text[i + 1..].to_string(),
        None => text.into_owned(),
    };
    st.note_error(format!("{what}: {text}"));
}

/// A viewer: receives, counts and times update events.
async fn viewer(mut c: Conn, st: &State, mut view: View) -> Result<u16> {
    let mut rs = ReadStamp::new(&c);
    loop {
        let h = c.reader.next_frame().await?;
        if let Some(ctl) = handle_control(&mut c.reader, &mut c.writer, &h).await? {
            match ctl {
                Control::Closed(code) => return Ok(code),
                Control::Handled => continue,
            }
        }
        if h.opcode == OP_TEXT {
            rs.update(&c, st);
            bump(&st.frames, 1);
            let now = rs.now;
            for_each_object(c.reader.payload(&h), |o| {
                if let Some(ServerMsg::Error { .. }) = view.on_object(st, o, now, true) {
                    note_error_obj(st, "viewer", o);
                }
            });
        }
        c.reader.consume(&h);
    }
}

/// An update sent and not yet answered.
struct Pending {
    /// Send time (`CLOCK_MONOTONIC` ns), also the data's `t`.
    t: u64,
    /// The version the reply should carry.
    expected: u64,
    /// Sent inside the window.
    in_window: bool,
}

/// An editor: on the plan, sends updates to section `s<member>` from the
/// version its last reply gave (pipelining, if replies lag, from the
/// version the pending ones will make), and counts the replies.
async fn editor(
    mut c: Conn,
    st: &State,
    g: u64,
    channel: &str,
    seat: Seat,
    mut view: View,
) -> Result<u16> {
    let mut rs = ReadStamp::new(&c);
    let channel_json = serde_json::to_string(channel)?;
    let section = format!("s{}", seat.member);
    let mut base = view.versions.get(section.as_bytes()).copied().unwrap_or(0);
    let story = seat.story as usize;
    let editors = (st.args.channels.max(1) * st.args.collab_editors).max(1);
    let mut plan_rx = st.plan_tx.subscribe();
    let mut waiting = true;
    let mut plan: Option<PubPlan> = None;
    let mut k: u64 = 0;
    let mut next_id: u64 = 3; // 1 and 2 were connect and collab_join
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let mut msg = Vec::with_capacity(256);
    let sleep = tokio::time::sleep(Duration::from_secs(86_400 * 365));
    tokio::pin!(sleep);
    // Editor g's k-th update: editors are 0..editors, spread over a period.
    let phase = |p: &PubPlan, k: u64| -> u64 {
        p.start_ns + ((g as f64 / editors as f64 + k as f64) * p.period_ns) as u64
    };
    loop {
        tokio::select! {
            biased;
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
                    bump(&st.frames, 1);
                    let now = rs.now;
                    for_each_object(c.reader.payload(&h), |o| match view.on_object(st, o, now, false) {
                        Some(ServerMsg::Reply { id, .. }) => {
                            let Some(p) = pending.remove(&id) else { return };
                            let Some(r) = parse_update_reply(o) else {
                                bump(&st.pub_errors, 1);
                                note_error_obj(st, "update: unexpected reply", o);
                                return;
                            };
                            bump(&st.pubs_acked, 1);
                            if p.in_window {
                                st.room_pubs.borrow_mut()[story] += 1;
                                st.collab
                                    .ack_hist
                                    .borrow_mut()
                                    .saturating_record(now.saturating_sub(p.t).max(1));
                            }
                            if r.duplicate {
                                bump(&st.collab.duplicates, 1);
                            }
                            if r.version != p.expected {
                                bump(&st.collab.mismatches, 1);
                                base = r.version + pending.len() as u64;
                            }
                        }
                        Some(ServerMsg::Error { id, .. }) => {
                            if pending.remove(&id).is_some() {
                                bump(&st.pub_errors, 1);
                                if let Some(v) = parse_error_reply(o).and_then(|e| e.version) {
                                    base = v + pending.len() as u64;
                                }
                            }
                            note_error_obj(st, "editor", o);
                        }
                        _ => {}
                    });
                }
                c.reader.consume(&h);
            }
            r = plan_rx.changed(), if waiting => {
                if r.is_err() {
                    waiting = false;
                    continue;
                }
                if let Some(p) = *plan_rx.borrow_and_update() {
                    waiting = false;
                    plan = Some(p);
                    k = 0;
                    sleep.as_mut().reset(to_instant(phase(&p, 0)));
                }
            }
            () = &mut sleep, if plan.is_some() => {
                let p = plan.expect("guarded");
                let t = mono_ns();
                if t >= p.end_ns {
                    plan = None;
                    continue;
                }
                msg.clear();
                let op_id = format!("{g}-{next_id}");
                build_update(&mut msg, next_id, &channel_json, &section, base, t, p.payload, &op_id);
                c.writer.send(OP_TEXT, &msg).await?;
                bump(&st.pubs_sent, 1);
                let (ws, we) = st.window.get();
                let in_window = t >= ws && t < we;
                if in_window {
                    bump(&st.pubs_sent_in_window, 1);
                }
                pending.insert(next_id, Pending { t, expected: base + 1, in_window });
                base += 1;
                next_id += 1;
                k += 1;
                let next = phase(&p, k);
                if next >= p.end_ns {
                    plan = None;
                } else {
                    sleep.as_mut().reset(to_instant(next));
                }
            }
        }
    }
}
