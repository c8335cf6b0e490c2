//! Live story collaboration (docs/COLLABORATION.md): a [`Story`] handle
//! over a story channel (a channel of a namespace with `collaboration =
//! true`): join as an editor or a viewer (or wait in line for an editor
//! slot), section locks, versioned updates, and the story's events.
//!
//! A story membership is a subscription whose subscribe is `collab_join`:
//! it survives reconnects like one, re-joining with `recover` and the last
//! position seen, so the events missed meanwhile arrive first (or a fresh
//! snapshot when they are no longer all in history).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::driver::COLLAB_JOIN;
use crate::error::ServerError;
use crate::types::{ClientInfo, Publication, StreamPosition};
use crate::{Client, Error, SubscribeOptions, Subscription, SubscriptionEvent, UnsubscribeReason};

/// How many times [`Story::update`] sends an update again (same `op_id`)
/// after an answer that leaves its outcome unknown or says "later".
const MAX_UPDATE_RESENDS: u32 = 5;

/// A member's role in a story.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoryRole {
    /// May lock and update sections (at most the namespace's `max_editors`).
    Editor,
    /// Sees the story and its events, changes nothing.
    Viewer,
    /// Waiting in line for an editor slot (a [`StoryEvent::Promoted`]
    /// comes when one frees).
    Queued,
}

impl StoryRole {
    fn parse(s: &str) -> Result<StoryRole, String> {
        match s {
            "editor" => Ok(StoryRole::Editor),
            "viewer" => Ok(StoryRole::Viewer),
            "queued" => Ok(StoryRole::Queued),
            other => Err(format!("unknown story role {other:?}")),
        }
    }
}

/// How [`Client::join_story`] joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoryOptions {
    /// [`StoryRole::Editor`] or [`StoryRole::Viewer`] ([`StoryRole::Queued`]
    /// asks for an editor slot with `queue`).
    pub role: StoryRole,
    /// As an editor, when the editors are full: wait in line
    /// ([`StoryRole::Queued`], then [`StoryEvent::Promoted`]) instead of
    /// failing with error 117.
    pub queue: bool,
}

impl StoryOptions {
    /// Join as an editor; error 117 when the editors are full.
    pub fn editor() -> Self {
        StoryOptions {
            role: StoryRole::Editor,
            queue: false,
        }
    }

    /// Join as an editor, or wait in line for a slot.
    pub fn editor_or_queue() -> Self {
        StoryOptions {
            role: StoryRole::Editor,
            queue: true,
        }
    }

    /// Join as a viewer.
    pub fn viewer() -> Self {
        StoryOptions {
            role: StoryRole::Viewer,
            queue: false,
        }
    }

    fn params(self) -> Value {
        match self.role {
            StoryRole::Viewer => json!({ "role": "viewer" }),
            StoryRole::Editor | StoryRole::Queued => json!({
                "role": "editor",
                "queue": self.queue || self.role == StoryRole::Queued,
            }),
        }
    }
}

/// Who holds a section's lock.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Holder {
    /// The holder's user id.
    pub user: String,
    /// The holder's connection.
    pub client: String,
}

/// One section of a story.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// Its version: 0 = never written, +1 per accepted update.
    pub version: u64,
    /// Its current data (`null` when never written).
    pub data: Value,
    /// Who holds its lock, if anyone.
    pub holder: Option<Holder>,
}

/// A story as a `collab_join` found it.
#[derive(Debug, Clone, PartialEq)]
pub struct StorySnapshot {
    /// This connection's role.
    pub role: StoryRole,
    /// In line for an editor slot: the place (1 = next).
    pub queue_position: Option<u64>,
    /// The editors.
    pub editors: Vec<ClientInfo>,
    /// How many viewers (exact).
    pub viewers: u64,
    /// How many members wait in line for an editor slot.
    pub queued: u64,
    /// Every section, by id.
    pub sections: BTreeMap<String, Section>,
    /// The story channel's position the snapshot was taken at; the events
    /// after it follow.
    pub position: StreamPosition,
    /// For a re-join after a reconnect: whether every event missed came
    /// (as events right after this one, oldest first). `Some(false)`: they
    /// are no longer all in history, render this snapshot afresh. `None`
    /// for a first join.
    pub recovered: Option<bool>,
}

/// A lock granted (or renewed) by [`Story::lock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockGrant {
    /// The section.
    pub section: String,
    /// This connection.
    pub holder: Holder,
    /// When the lock expires unless renewed (Unix time, milliseconds).
    pub expires: u64,
}

/// An update accepted by [`Story::update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateResult {
    /// The section's new version.
    pub version: u64,
    /// The server had applied this `op_id` already (a resend): nothing
    /// changed this time.
    pub duplicate: bool,
    /// The update's `op_id`.
    pub op_id: String,
}

/// What happens in a story, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum StoryEvent {
    /// Joined again after a reconnect (the first join's snapshot is
    /// [`Story::snapshot`]'s): render it; with `recovered: Some(true)`
    /// the events missed follow.
    Joined(StorySnapshot),
    /// An update was accepted (anyone's, this connection's too).
    Update {
        /// The event's offset in the story channel.
        offset: u64,
        /// The section.
        section: String,
        /// Its new version.
        version: u64,
        /// Its new data.
        data: Value,
        /// Who wrote it.
        by: ClientInfo,
    },
    /// A lock was taken (`holder`) or released (`None`); renewals are
    /// silent.
    Lock {
        /// The event's offset in the story channel.
        offset: u64,
        /// The section.
        section: String,
        /// The new holder, if any.
        holder: Option<Holder>,
        /// When the lock expires (Unix ms), with a holder.
        expires: Option<u64>,
    },
    /// A member joined (viewers only while the story is small).
    MemberJoined {
        /// The event's offset in the story channel.
        offset: u64,
        /// The member.
        info: ClientInfo,
        /// Its role.
        role: StoryRole,
    },
    /// A member left or disconnected.
    MemberLeft {
        /// The event's offset in the story channel.
        offset: u64,
        /// The member's user id.
        user: String,
        /// Its connection.
        client: String,
    },
    /// This connection, in line, is now an editor.
    Promoted,
    /// This connection, in line, has a new place (1 = next): someone ahead
    /// left the line or was promoted. Also in [`Story::queue_position`].
    QueuePosition(u64),
    /// Under `conflict = "lww"`: `by`'s update (now `version`) replaced the
    /// data this connection wrote (`overwritten`) before they had seen it.
    Conflict {
        /// The section.
        section: String,
        /// The section's version now.
        version: u64,
        /// This connection's data that was replaced.
        overwritten: Value,
        /// Who replaced it.
        by: ClientInfo,
    },
    /// A member's presence state in the story (namespaces with
    /// `presence`; `""` = cleared).
    PresenceState {
        /// The member.
        info: ClientInfo,
        /// Its state.
        state: String,
    },
    /// A re-join failed for now (it is retried with backoff), or the
    /// server sent something this client cannot read.
    Error(Error),
    /// The membership ended; the stream ends after this.
    Left(UnsubscribeReason),
    /// A story event this client does not know (a newer server's).
    Other(Publication),
}

/// A membership of one story, from [`Client::join_story`].
///
/// It keeps a model of the story — [`Story::role`], [`Story::sections`] —
/// from the join's snapshot and the events read with [`Story::next`]
/// (read them: they are buffered without bound until read). Dropping it
/// leaves the story (`collab_leave`); so does [`Story::leave`].
///
/// ```no_run
/// use wsedge_client::{Client, StoryEvent, StoryOptions};
///
/// # async fn demo(client: Client) -> Result<(), wsedge_client::Error> {
/// let mut story = client.join_story("story:42", StoryOptions::editor_or_queue()).await?;
/// story.lock("intro", None).await?;
/// let base = story.section("intro").map_or(0, |s| s.version);
/// match story.update("intro", base, serde_json::json!({"text": "Once"})).await {
///     Ok(r) => println!("intro is at version {}", r.version),
///     // 119 under conflict = "reject": rebase on the current data, resend.
///     Err(wsedge_client::Error::Server(e)) if e.code == 119 => {
///         let (version, theirs) = e.current_section().expect("119 carries them");
///         println!("rebase on version {version}: {theirs}");
///     }
///     Err(e) => return Err(e),
/// }
/// while let Some(event) = story.next().await {
///     if let StoryEvent::Conflict { section, overwritten, by, .. } = event {
///         println!("{} overwrote {section}; ours was {overwritten}", by.user);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Story {
    client: Client,
    sub: Subscription,
    snapshot: StorySnapshot,
    role: StoryRole,
    queue_position: Option<u64>,
    sections: BTreeMap<String, Section>,
}

impl Client {
    /// Joins the story `channel` (a channel of a namespace with
    /// `collaboration = true`), and resolves once joined, with the
    /// snapshot in [`Story::snapshot`]. Waits for the connection if there
    /// is none (bound it with `tokio::time::timeout` if needed).
    ///
    /// # Errors
    ///
    /// The server's refusal: 117 (editors full, without `queue`), 121
    /// (the line is full), 122 (not a collaborative channel), 103 (the
    /// namespace's `subscribe` rule); [`Error::AlreadySubscribed`] when
    /// this client already subscribes to or joined the channel.
    pub async fn join_story(
        &self,
        channel: impl Into<String>,
        options: StoryOptions,
    ) -> Result<Story, Error> {
        let subscribe = SubscribeOptions {
            recover: true,
            ..SubscribeOptions::default()
        };
        let sub = self
            .subscribe_with(channel.into(), subscribe, Some(options.params()))
            .await?;
        let mut story = Story {
            client: self.clone(),
            sub,
            snapshot: StorySnapshot {
                role: options.role,
                queue_position: None,
                editors: Vec::new(),
                viewers: 0,
                queued: 0,
                sections: BTreeMap::new(),
                position: StreamPosition {
                    epoch: String::new(),
                    offset: 0,
                },
                recovered: None,
            },
            role: options.role,
            queue_position: None,
            sections: BTreeMap::new(),
        };
        // The first answer: the snapshot, or the refusal (dropping the
        // story then ends the membership that never was).
        loop {
            match story.next().await {
                Some(StoryEvent::Joined(_)) => return Ok(story),
                Some(StoryEvent::Error(e)) => return Err(e),
                Some(StoryEvent::Left(UnsubscribeReason::Refused(e))) => {
                    return Err(Error::Server(e));
                }
                Some(StoryEvent::Left(reason)) => {
                    return Err(Error::Protocol(format!(
                        "the story ended before the join's answer: {reason:?}"
                    )));
                }
                Some(_) => {}
                None => return Err(Error::Closed),
            }
        }
    }
}

impl Story {
    /// The story's channel.
    pub fn channel(&self) -> &str {
        self.sub.channel()
    }

    /// The snapshot of the last join (the first one, or the re-join after
    /// the last reconnect).
    pub fn snapshot(&self) -> &StorySnapshot {
        &self.snapshot
    }

    /// This connection's role now (a promotion read from the events makes
    /// it [`StoryRole::Editor`]).
    pub fn role(&self) -> StoryRole {
        self.role
    }

    /// In line for an editor slot: the place now (1 = next), as the last
    /// join answered it and the events read since moved it.
    pub fn queue_position(&self) -> Option<u64> {
        self.queue_position
    }

    /// Every section as of the last event read: the snapshot's, with the
    /// updates and lock changes after it applied.
    pub fn sections(&self) -> &BTreeMap<String, Section> {
        &self.sections
    }

    /// One section as of the last event read.
    pub fn section(&self, id: &str) -> Option<&Section> {
        self.sections.get(id)
    }

    /// The next event; `None` once the membership has ended (after
    /// [`StoryEvent::Left`], or when the client is gone). Events at or
    /// before a snapshot's position (a recovering re-join's replay) are
    /// delivered but already in the model.
    pub async fn next(&mut self) -> Option<StoryEvent> {
        loop {
            let ev = self.sub.next().await?;
            if let Some(ev) = self.translate(ev) {
                return Some(ev);
            }
        }
    }

    /// Locks `section` for `ttl` (the server's default `lock_ttl` when
    /// none; at least 1 s), or renews this connection's lock on it.
    ///
    /// # Errors
    ///
    /// 118 when another member holds it ([`ServerError::lock_holder`] says
    /// who); 120 when this connection is not an editor.
    pub async fn lock(&self, section: &str, ttl: Option<Duration>) -> Result<LockGrant, Error> {
        let mut params = json!({ "channel": self.channel(), "section": section });
        if let Some(t) = ttl {
            params["ttl"] = t.as_secs().max(1).into();
        }
        let v = self.client.call("lock", params).await?;
        lock_grant(&v).map_err(Error::Protocol)
    }

    /// Releases this connection's lock on `section`.
    ///
    /// # Errors
    ///
    /// 118 when another member holds it.
    pub async fn unlock(&self, section: &str) -> Result<(), Error> {
        let params = json!({ "channel": self.channel(), "section": section });
        self.client.call("unlock", params).await.map(drop)
    }

    /// Replaces `section`'s data with `data`, made against `base_version`
    /// (the version this change was based on: [`Section::version`]).
    ///
    /// The update gets a fresh `op_id`; when its outcome is unknown (the
    /// connection dropped, no answer in time) or the server says "later"
    /// (a temporary error), it is sent again with the same `op_id` (after
    /// the reconnect and re-join, when there was one), up to five times:
    /// the server applies it once and answers a repeat with `duplicate`.
    ///
    /// # Errors
    ///
    /// 119 version conflict (a stale base under `conflict = "reject"`, or
    /// one ahead of the section): [`ServerError::current_section`] has the
    /// version and data to rebase on; 118 locked by another member; 120
    /// not an editor; 121 a story limit.
    pub async fn update(
        &self,
        section: &str,
        base_version: u64,
        data: impl Serialize,
    ) -> Result<UpdateResult, Error> {
        let op_id = format!("{:032x}", rand::random::<u128>());
        self.update_with_op_id(section, base_version, data, &op_id)
            .await
    }

    /// [`Story::update`] with the application's own `op_id` (1–64 bytes,
    /// unique per user and story), for an update kept across restarts of
    /// the application.
    ///
    /// # Errors
    ///
    /// As [`Story::update`].
    pub async fn update_with_op_id(
        &self,
        section: &str,
        base_version: u64,
        data: impl Serialize,
        op_id: &str,
    ) -> Result<UpdateResult, Error> {
        let data = serde_json::to_value(data).map_err(|e| Error::Encode(e.to_string()))?;
        let params = json!({
            "channel": self.channel(),
            "section": section,
            "base_version": base_version,
            "data": data,
            "op_id": op_id,
        });
        let mut resends = 0;
        loop {
            match self.client.call("update", params.clone()).await {
                Ok(v) => {
                    let version = v.get("version").and_then(Value::as_u64);
                    let version =
                        version.ok_or_else(|| Error::Protocol(format!("update reply {v}")))?;
                    return Ok(UpdateResult {
                        version,
                        duplicate: v.get("duplicate").and_then(Value::as_bool) == Some(true),
                        op_id: op_id.to_owned(),
                    });
                }
                Err(e) if resends < MAX_UPDATE_RESENDS && resend_safe(&e) => {
                    resends += 1;
                    if matches!(e, Error::Server(_)) {
                        tokio::time::sleep(Duration::from_millis(200) * resends).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Leaves the story (`collab_leave`: this connection's locks are
    /// released and the first in line promoted) and waits until the
    /// client has taken note.
    pub async fn leave(self) {
        self.sub.unsubscribe().await;
    }

    /// A subscription event as a story event (`None`: nothing for the
    /// application), applied to the model.
    fn translate(&mut self, ev: SubscriptionEvent) -> Option<StoryEvent> {
        match ev {
            SubscriptionEvent::Other { kind, body } if kind == COLLAB_JOIN => {
                match snapshot(&body) {
                    Ok(s) => {
                        self.role = s.role;
                        self.queue_position = s.queue_position;
                        self.sections = s.sections.clone();
                        self.snapshot = s.clone();
                        Some(StoryEvent::Joined(s))
                    }
                    Err(e) => Some(StoryEvent::Error(Error::Protocol(e))),
                }
            }
            SubscriptionEvent::Other { kind, .. } if kind == "promoted" => {
                self.role = StoryRole::Editor;
                self.queue_position = None;
                Some(StoryEvent::Promoted)
            }
            SubscriptionEvent::Other { kind, body } if kind == "queue" => {
                match queue_place(&body) {
                    Ok(place) if self.role == StoryRole::Queued => {
                        self.queue_position = Some(place);
                        Some(StoryEvent::QueuePosition(place))
                    }
                    // A place for a line this connection has left since.
                    Ok(_) => None,
                    Err(e) => Some(StoryEvent::Error(Error::Protocol(e))),
                }
            }
            SubscriptionEvent::Other { kind, body } if kind == "conflict" => {
                Some(conflict(&body).unwrap_or_else(|e| StoryEvent::Error(Error::Protocol(e))))
            }
            SubscriptionEvent::Publication(p) => {
                let ev = story_event(p);
                if event_offset(&ev).is_some_and(|o| o > self.snapshot.position.offset) {
                    apply(&mut self.sections, &ev);
                }
                Some(ev)
            }
            SubscriptionEvent::State { info, state } => {
                Some(StoryEvent::PresenceState { info, state })
            }
            SubscriptionEvent::Error(e) => Some(StoryEvent::Error(e)),
            SubscriptionEvent::Unsubscribed(r) => Some(StoryEvent::Left(r)),
            SubscriptionEvent::Subscribed { .. }
            | SubscriptionEvent::Join(_)
            | SubscriptionEvent::Leave(_)
            | SubscriptionEvent::Other { .. } => None,
        }
    }
}

/// Applies an event after the snapshot to the model's sections: an update
/// newer than the section's version, a lock's new holder.
fn apply(sections: &mut BTreeMap<String, Section>, ev: &StoryEvent) {
    let blank = || Section {
        version: 0,
        data: Value::Null,
        holder: None,
    };
    match ev {
        StoryEvent::Update {
            section,
            version,
            data,
            ..
        } => {
            let s = sections.entry(section.clone()).or_insert_with(blank);
            if *version > s.version {
                s.version = *version;
                s.data = data.clone();
            }
        }
        StoryEvent::Lock {
            section, holder, ..
        } => {
            let s = sections.entry(section.clone()).or_insert_with(blank);
            s.holder = holder.clone();
        }
        _ => {}
    }
}

impl futures_core::Stream for Story {
    type Item = StoryEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let ev = match Pin::new(&mut self.sub).poll_next(cx) {
                Poll::Ready(Some(ev)) => ev,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            if let Some(ev) = self.translate(ev) {
                return Poll::Ready(Some(ev));
            }
        }
    }
}

impl ServerError {
    /// For error 118 (section locked): who holds the lock.
    pub fn lock_holder(&self) -> Option<Holder> {
        holder(self.details.get("holder")?).ok().flatten()
    }

    /// For error 119 (version conflict): the section's current version and
    /// data, to rebase a change on.
    pub fn current_section(&self) -> Option<(u64, Value)> {
        let version = self.details.get("version")?.as_u64()?;
        let data = self.details.get("data").cloned().unwrap_or(Value::Null);
        Some((version, data))
    }
}

/// Whether an update may be sent again with its `op_id`: its outcome is
/// unknown, or the server asked for later.
fn resend_safe(e: &Error) -> bool {
    match e {
        Error::ConnectionLost | Error::Timeout => true,
        Error::Server(s) => s.temporary,
        _ => false,
    }
}

fn event_offset(ev: &StoryEvent) -> Option<u64> {
    match ev {
        StoryEvent::Update { offset, .. }
        | StoryEvent::Lock { offset, .. }
        | StoryEvent::MemberJoined { offset, .. }
        | StoryEvent::MemberLeft { offset, .. } => Some(*offset),
        _ => None,
    }
}

// ---- the wire ------------------------------------------------------------

fn str_of(v: &Value, name: &str) -> Result<String, String> {
    v.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("no string {name:?} in {v:.200}"))
}

fn u64_of(v: &Value, name: &str) -> Result<u64, String> {
    v.get(name)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("no number {name:?} in {v:.200}"))
}

fn client_info(v: Option<&Value>) -> Result<ClientInfo, String> {
    let v = v.ok_or("no member info")?;
    Ok(ClientInfo {
        user: str_of(v, "user")?,
        client: str_of(v, "client")?,
        info: v.get("info").cloned(),
    })
}

/// `{user, client}`, or none for `null` / absent.
fn holder(v: &Value) -> Result<Option<Holder>, String> {
    if v.is_null() {
        return Ok(None);
    }
    Ok(Some(Holder {
        user: str_of(v, "user")?,
        client: str_of(v, "client")?,
    }))
}

/// The `collab_join` reply.
fn snapshot(v: &Value) -> Result<StorySnapshot, String> {
    let sections = match v.get("sections") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(id, s)| {
                Ok((
                    id.clone(),
                    Section {
                        version: u64_of(s, "version")?,
                        data: s.get("data").cloned().unwrap_or(Value::Null),
                        holder: holder(s.get("holder").unwrap_or(&Value::Null))?,
                    },
                ))
            })
            .collect::<Result<_, String>>()?,
        Some(other) => return Err(format!("sections is not an object: {other:.200}")),
    };
    let editors = match v.get("editors") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|e| client_info(Some(e)))
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("editors is not an array: {other:.200}")),
    };
    Ok(StorySnapshot {
        role: StoryRole::parse(&str_of(v, "role")?)?,
        queue_position: v.get("position").and_then(Value::as_u64),
        editors,
        viewers: v.get("viewers").and_then(Value::as_u64).unwrap_or(0),
        queued: v.get("queued").and_then(Value::as_u64).unwrap_or(0),
        sections,
        position: StreamPosition {
            epoch: str_of(v, "epoch")?,
            offset: u64_of(v, "offset")?,
        },
        recovered: v.get("recovered").and_then(Value::as_bool),
    })
}

fn lock_grant(v: &Value) -> Result<LockGrant, String> {
    Ok(LockGrant {
        section: str_of(v, "section")?,
        holder: holder(v.get("holder").unwrap_or(&Value::Null))?
            .ok_or_else(|| format!("no holder in {v:.200}"))?,
        expires: u64_of(v, "expires")?,
    })
}

/// The `queue` push: the new place in line.
fn queue_place(v: &Value) -> Result<u64, String> {
    u64_of(v, "position")
}

/// The `conflict` push.
fn conflict(v: &Value) -> Result<StoryEvent, String> {
    Ok(StoryEvent::Conflict {
        section: str_of(v, "section")?,
        version: u64_of(v, "version")?,
        overwritten: v.get("overwritten").cloned().unwrap_or(Value::Null),
        by: client_info(v.get("by"))?,
    })
}

/// A story event (a publication on the story channel whose data is an
/// object with one key naming the event); one this client cannot read is
/// [`StoryEvent::Other`].
fn story_event(p: Publication) -> StoryEvent {
    let offset = p.offset;
    let read = || -> Result<StoryEvent, String> {
        let v = p.data.decode::<Value>().map_err(|e| e.to_string())?;
        let Some((kind, body)) = v
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.iter().next())
        else {
            return Err("not a story event".into());
        };
        Ok(match kind.as_str() {
            "update" => StoryEvent::Update {
                offset,
                section: str_of(body, "section")?,
                version: u64_of(body, "version")?,
                data: body.get("data").cloned().unwrap_or(Value::Null),
                by: client_info(body.get("by"))?,
            },
            "lock" => StoryEvent::Lock {
                offset,
                section: str_of(body, "section")?,
                holder: holder(body.get("holder").unwrap_or(&Value::Null))?,
                expires: body.get("expires").and_then(Value::as_u64),
            },
            "story.user.join" => StoryEvent::MemberJoined {
                offset,
                info: client_info(Some(body))?,
                role: StoryRole::parse(&str_of(body, "role")?)?,
            },
            "story.user.leave" => StoryEvent::MemberLeft {
                offset,
                user: str_of(body, "user")?,
                client: str_of(body, "client")?,
            },
            other => return Err(format!("unknown story event {other:?}")),
        })
    };
    match read() {
        Ok(ev) => ev,
        Err(_) => StoryEvent::Other(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Data;

    fn publication(offset: u64, data: Value) -> Publication {
        Publication {
            offset,
            data: Data::Json(data),
        }
    }

    #[test]
    fn reads_a_join_snapshot() {
        let v = json!({
            "role": "queued", "position": 2,
            "editors": [{"user": "ann", "client": "c1", "info": {"n": 1}}],
            "viewers": 3, "queued": 4,
            "sections": {
                "intro": {"version": 4, "data": {"t": "hi"}, "holder": {"user": "ann", "client": "c1"}},
                "p2": {"version": 1, "data": "x"}
            },
            "offset": 17, "epoch": "9d3c1f0a7b2e4c55"
        });
        let s = snapshot(&v).unwrap();
        assert_eq!(s.role, StoryRole::Queued);
        assert_eq!(s.queue_position, Some(2));
        assert_eq!(s.editors[0].user, "ann");
        assert_eq!((s.viewers, s.queued), (3, 4));
        assert_eq!(s.sections["intro"].version, 4);
        assert_eq!(
            s.sections["intro"].holder,
            Some(Holder {
                user: "ann".into(),
                client: "c1".into()
            })
        );
        assert_eq!(s.sections["p2"].holder, None);
        assert_eq!(s.position.offset, 17);
        assert_eq!(s.recovered, None);
        let mut r = v.clone();
        r["recovered"] = true.into();
        assert_eq!(snapshot(&r).unwrap().recovered, Some(true));
        assert!(snapshot(&json!({"role": "boss", "offset": 1, "epoch": "e"})).is_err());
        // An older server's reply, without `queued`.
        let mut old = v.clone();
        old.as_object_mut().unwrap().remove("queued");
        assert_eq!(snapshot(&old).unwrap().queued, 0);
    }

    #[test]
    fn reads_the_queue_push() {
        assert_eq!(queue_place(&json!({"position": 3})), Ok(3));
        assert!(queue_place(&json!({"position": "first"})).is_err());
        assert!(queue_place(&json!({})).is_err());
    }

    #[test]
    fn reads_story_events() {
        let by = json!({"user": "bob", "client": "c2"});
        let ev = story_event(publication(
            5,
            json!({"update": {"section": "p3", "version": 6, "data": "B", "by": by}}),
        ));
        assert!(
            matches!(&ev, StoryEvent::Update { offset: 5, section, version: 6, data, by }
                if section == "p3" && data == "B" && by.user == "bob"),
            "{ev:?}"
        );
        let ev = story_event(publication(
            6,
            json!({"lock": {"section": "p3", "holder": null}}),
        ));
        assert!(
            matches!(
                &ev,
                StoryEvent::Lock {
                    holder: None,
                    expires: None,
                    ..
                }
            ),
            "{ev:?}"
        );
        let ev = story_event(publication(
            7,
            json!({"story.user.join": {"user": "cy", "client": "c3", "role": "viewer"}}),
        ));
        assert!(
            matches!(&ev, StoryEvent::MemberJoined { role: StoryRole::Viewer, info, .. } if info.user == "cy"),
            "{ev:?}"
        );
        let ev = story_event(publication(
            8,
            json!({"story.user.leave": {"user": "cy", "client": "c3"}}),
        ));
        assert!(
            matches!(&ev, StoryEvent::MemberLeft { offset: 8, .. }),
            "{ev:?}"
        );
        // Unknown or malformed: handed over as the publication.
        for data in [
            json!({"story.photo.add": {}}),
            json!({"update": {}}),
            json!(1),
        ] {
            let p = publication(9, data);
            assert_eq!(story_event(p.clone()), StoryEvent::Other(p));
        }
    }

    #[test]
    fn the_model_applies_newer_updates_only() {
        let mut sections = BTreeMap::new();
        sections.insert(
            "p".to_string(),
            Section {
                version: 3,
                data: json!("new"),
                holder: None,
            },
        );
        let by = ClientInfo {
            user: "a".into(),
            client: "c".into(),
            info: None,
        };
        let update = |version, data: &str| StoryEvent::Update {
            offset: 10,
            section: "p".into(),
            version,
            data: json!(data),
            by: by.clone(),
        };
        apply(&mut sections, &update(2, "old"));
        assert_eq!(
            (sections["p"].version, &sections["p"].data),
            (3, &json!("new"))
        );
        apply(&mut sections, &update(4, "newer"));
        assert_eq!(
            (sections["p"].version, &sections["p"].data),
            (4, &json!("newer"))
        );
        let holder = Holder {
            user: "a".into(),
            client: "c".into(),
        };
        let lock = |holder| StoryEvent::Lock {
            offset: 11,
            section: "q".into(),
            holder,
            expires: None,
        };
        apply(&mut sections, &lock(Some(holder.clone())));
        assert_eq!(sections["q"].holder, Some(holder));
        assert_eq!(sections["q"].version, 0);
        apply(&mut sections, &lock(None));
        assert_eq!(sections["q"].holder, None);
    }

    #[test]
    fn error_details_of_118_and_119() {
        let e = ServerError {
            code: 118,
            message: "section locked".into(),
            temporary: false,
            details: json!({"holder": {"user": "bob", "client": "c2"}})
                .as_object()
                .unwrap()
                .clone(),
        };
        assert_eq!(e.lock_holder().unwrap().user, "bob");
        assert_eq!(e.current_section(), None);
        let e = ServerError {
            code: 119,
            message: "version conflict".into(),
            temporary: false,
            details: json!({"version": 5, "data": {"t": "theirs"}})
                .as_object()
                .unwrap()
                .clone(),
        };
        assert_eq!(e.current_section(), Some((5, json!({"t": "theirs"}))));
        assert_eq!(e.lock_holder(), None);
    }

    #[test]
    fn join_params() {
        assert_eq!(
            StoryOptions::editor().params(),
            json!({"role": "editor", "queue": false})
        );
        assert_eq!(
            StoryOptions::editor_or_queue().params(),
            json!({"role": "editor", "queue": true})
        );
        assert_eq!(StoryOptions::viewer().params(), json!({"role": "viewer"}));
    }
}
