//! The shard's side of the cluster: encoding what its router sends other
//! nodes into the NATS worker's queue, and the sink through which the
//! worker hands what arrives to the shard that takes it (the channel's
//! home shard on this node: its home, or its relay).
//!
//! The live set and the NATS link state are shared through atomics rather
//! than messages, so they cannot be lost to a full inbox: each shard looks
//! at them once per loop turn, and the worker rings the shards' inboxes
//! when they change so a sleeping shard looks soon.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;

use crate::bridge::{Inbox, PostReply, ShardMsg, SsePost};
use crate::engine::cluster::envelope::Envelope;
use crate::engine::cluster::frame::{Delivery, Incoming, SyncMarker, decode_any};
use crate::engine::cluster::members::MemberWrite;
use crate::engine::cluster::nodes::{HOME_SHARD, NodeTable, remote_addr, remote_parts};
use crate::engine::cluster::placement::Placement;
use crate::engine::cluster::sse::PostFrame;
use crate::engine::cluster::stored::StoreAnswer;
use crate::engine::hub::{Position, home_shard};
use crate::engine::router::{Broadcast, ClusterView, FromNode, Msg};
use crate::engine::wire::publication::PushBody;
use crate::metrics::ClusterMetrics;
use crate::sidecar::cluster::{ClusterClient, ClusterSink, ToCluster};

/// What the shards and the NATS thread share about the cluster.
pub struct ClusterShared {
    /// This node's name.
    pub self_node: Arc<str>,
    /// Node names by slot.
    pub nodes: Arc<NodeTable>,
    /// How long a request to another node waits for its answer.
    pub request_timeout: Duration,
    placement: ArcSwapOption<Placement>,
    generation: AtomicU64,
    up: AtomicBool,
}

impl ClusterShared {
    /// Shared state for node `self_node`, alone and unlinked until the
    /// worker says otherwise.
    pub fn new(self_node: Arc<str>, request_timeout: Duration) -> Arc<Self> {
        Arc::new(ClusterShared {
            self_node,
            nodes: NodeTable::new(),
            request_timeout,
            placement: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            up: AtomicBool::new(false),
        })
    }

    /// What a router needs to join the cluster.
    pub fn view(&self) -> ClusterView {
        ClusterView {
            self_node: self.self_node.clone(),
            nodes: self.nodes.clone(),
            request_timeout: self.request_timeout,
        }
    }
}

/// A shard's handle on the cluster.
pub struct ShardCluster {
    shared: Arc<ClusterShared>,
    client: ClusterClient,
    metrics: ClusterMetrics,
    seen_generation: u64,
    seen_up: bool,
}

impl ShardCluster {
    /// A handle over `shared` sending through `client`.
    pub fn new(shared: Arc<ClusterShared>, client: ClusterClient, metrics: ClusterMetrics) -> Self {
        ShardCluster {
            shared,
            client,
            metrics,
            seen_generation: 0,
            seen_up: false,
        }
    }

    /// The placement and link state, when they changed since the last
    /// call (one atomic load each when they did not).
    pub fn changes(&mut self) -> (Option<Arc<Placement>>, Option<bool>) {
        let g = self.shared.generation.load(Ordering::Acquire);
        let placement = if g != self.seen_generation {
            self.seen_generation = g;
            self.shared.placement.load_full()
        } else {
            None
        };
        let up = self.shared.up.load(Ordering::Acquire);
        let link = (up != self.seen_up).then(|| {
            self.seen_up = up;
            up
        });
        (placement, link)
    }

    /// Moves a router's cluster counts to the metrics.
    pub fn flush(&self, stats: &crate::engine::router::ClusterStats) {
        self.metrics.router(stats);
    }

    /// Sends a router message to address `to` on another node.
    pub fn send_remote(&self, to: usize, channel: &Arc<str>, msg: Msg) -> Result<(), Msg> {
        let Some((slot, shard)) = remote_parts(to) else {
            return Err(msg);
        };
        let Some(node) = self.shared.nodes.name(slot) else {
            return Err(msg);
        };
        let envelope = Envelope {
            from_node: self.shared.self_node.clone(),
            channel: channel.clone(),
            to_shard: (shard != HOME_SHARD).then_some(shard),
            msg,
        };
        let payload = envelope.encode();
        match self.client.send(ToCluster::ToNode { node, payload }) {
            Ok(()) => Ok(()),
            Err(_) => Err(envelope.msg),
        }
    }

    /// This node's name in the cluster.
    pub fn self_node(&self) -> &Arc<str> {
        &self.shared.self_node
    }

    /// Whether `node` is in the live set (this node included).
    pub fn is_live(&self, node: &str) -> bool {
        self.shared
            .placement
            .load()
            .as_ref()
            .is_some_and(|p| p.nodes().any(|n| &**n == node))
    }

    /// Sends a frame to `node`'s `home.<name>` subject; false if the
    /// worker's queue refused it (full or stopped; counted there).
    pub fn send_to_node(&self, node: Arc<str>, payload: Bytes) -> bool {
        self.client
            .send(ToCluster::ToNode { node, payload })
            .is_ok()
    }

    /// The live set as this node sees it (names, sorted).
    pub fn live_nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self
            .shared
            .placement
            .load()
            .as_ref()
            .map(|p| p.nodes().map(|n| n.to_string()).collect())
            .unwrap_or_default();
        nodes.sort();
        nodes
    }

    /// Writes a stored channel's publication to its JetStream stream.
    pub fn persist(
        &self,
        ns: usize,
        channel: &Arc<str>,
        epoch: u64,
        offset: u64,
        body: Vec<u8>,
    ) -> bool {
        self.client
            .send(ToCluster::Persist {
                ns,
                channel: channel.clone(),
                epoch,
                offset,
                body: body.into(),
            })
            .is_ok()
    }

    /// Reads a stored channel's tail back.
    pub fn load_stored(&self, ns: usize, channel: &Arc<str>) -> bool {
        self.client
            .send(ToCluster::Load {
                ns,
                channel: channel.clone(),
            })
            .is_ok()
    }

    /// `history_remove` of a stored channel: a floor marker, and a purge
    /// of what is before it.
    pub fn purge_stored(&self, ns: usize, channel: &Arc<str>, floor: Position) -> bool {
        self.client
            .send(ToCluster::Purge {
                ns,
                channel: channel.clone(),
                floor,
            })
            .is_ok()
    }

    /// Writes changes to a stored channel's members to the presence
    /// bucket.
    pub fn mirror_members(&self, write: MemberWrite) -> bool {
        self.client.send(ToCluster::Members { write }).is_ok()
    }

    /// Publishes a push or a marker once on the channel's subject.
    pub fn broadcast(&self, channel: &Arc<str>, what: Broadcast<'_>) -> bool {
        let payload = match what {
            Broadcast::Push { epoch, push } => match &push.body {
                PushBody::Pub(_) => match Delivery::from_shared(push, epoch) {
                    Some(d) => d.encode(),
                    None => return false,
                },
                PushBody::Presence(_) => Envelope {
                    from_node: self.shared.self_node.clone(),
                    channel: channel.clone(),
                    to_shard: None,
                    msg: Msg::Deliver(push.clone()),
                }
                .encode(),
            },
            Broadcast::Marker(position) => SyncMarker {
                channel: channel.clone(),
                position,
                nonce: 0,
            }
            .encode(),
        };
        self.client
            .send(ToCluster::Publish {
                channel: channel.clone(),
                payload,
            })
            .is_ok()
    }

    /// Starts or stops listening to the channel's subject.
    pub fn watch(&self, channel: &Arc<str>, on: bool) {
        // A refused watch is counted by the client; a lost "on" makes the
        // relay's marker time out (its subscribers get 100), a lost "off"
        // keeps a subscription the worker drops at the next "off".
        let _ = self.client.send(ToCluster::Watch {
            channel: channel.clone(),
            on,
        });
    }
}

/// Where the NATS worker hands what arrives: the shards' inboxes.
pub struct ShardSink {
    shared: Arc<ClusterShared>,
    inboxes: Arc<[Arc<Inbox>]>,
    metrics: ClusterMetrics,
}

impl ShardSink {
    /// A sink into `inboxes`.
    pub fn new(
        shared: Arc<ClusterShared>,
        inboxes: Arc<[Arc<Inbox>]>,
        metrics: ClusterMetrics,
    ) -> Self {
        ShardSink {
            shared,
            inboxes,
            metrics,
        }
    }

    fn ring_all(&self) {
        for inbox in self.inboxes.iter() {
            let _ = inbox.push(ShardMsg::ClusterChanged);
        }
    }

    /// What the router takes of a decoded message (received at `now`);
    /// `None` (counted) for one from an unknown node or not for a router.
    fn decode(&self, incoming: Incoming, now: Instant) -> Option<FromNode> {
        Some(match incoming {
            Incoming::Delivery(d) => FromNode::Delivery {
                epoch: d.epoch,
                push: Arc::new(d.into_shared(now)),
            },
            Incoming::SyncMarker(m) => FromNode::Marker {
                channel: m.channel,
                position: m.position,
            },
            Incoming::Envelope(mut e) => {
                let Some(slot) = self.shared.nodes.slot(&e.from_node) else {
                    self.metrics.decode_error();
                    return None;
                };
                if let Some(from) = e.msg.from_mut() {
                    // Shard indices fit 16 bits (at most 63 shards).
                    *from = remote_addr(slot, *from as u16);
                }
                FromNode::Msg {
                    channel: e.channel,
                    to_shard: e.to_shard.map(usize::from),
                    msg: e.msg,
                }
            }
            Incoming::SsePost(_) | Incoming::SseAnswer(_) => {
                self.metrics.decode_error();
                return None;
            }
        })
    }
}

impl ShardSink {
    /// An SSE command post from another node for a stream here, to the
    /// stream's shard (unknown shard: dropped and counted, and the post's
    /// node answers its client when the post's deadline passes).
    fn sse_post(&self, frame: PostFrame) -> Result<(), ()> {
        let Some(inbox) = self.inboxes.get(usize::from(frame.target.shard)) else {
            self.metrics.decode_error();
            return Ok(());
        };
        inbox
            .push(ShardMsg::SsePost(Box::new(SsePost {
                target: frame.target,
                body: frame.body.to_vec(),
                reply: PostReply::Node {
                    node: frame.from_node,
                    shard: frame.from_shard,
                    post: frame.post,
                },
            })))
            .map_err(|_| ())
    }
}

impl ClusterSink for ShardSink {
    fn received(&self, _channel: Option<Arc<str>>, payload: Bytes) -> Result<(), ()> {
        let now = Instant::now();
        let incoming = match decode_any(&payload, now) {
            // The SSE frames go to a shard named in them, not to a
            // channel's.
            Ok(Incoming::SsePost(frame)) => return self.sse_post(frame),
            Ok(Incoming::SseAnswer(a)) => {
                match self.inboxes.get(usize::from(a.shard)) {
                    Some(inbox) => inbox.sse_answered(a.post, a.answer),
                    None => self.metrics.decode_error(),
                }
                return Ok(());
            }
            Ok(incoming) => incoming,
            Err(_) => {
                self.metrics.decode_error();
                return Ok(());
            }
        };
        let Some(m) = self.decode(incoming, now) else {
            return Ok(());
        };
        let shard = home_shard(m.channel(), self.inboxes.len());
        self.inboxes[shard]
            .push(ShardMsg::Cluster(Box::new(m)))
            .map_err(|_| ())
    }

    fn stored(&self, answer: StoreAnswer) -> Result<(), ()> {
        let shard = home_shard(answer.channel(), self.inboxes.len());
        self.inboxes[shard]
            .push(ShardMsg::Cluster(Box::new(FromNode::Stored(answer))))
            .map_err(|_| ())
    }

    fn placement(&self, placement: Arc<Placement>) {
        self.shared.placement.store(Some(placement));
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.ring_all();
    }

    fn link(&self, up: bool) {
        self.shared.up.store(up, Ordering::Release);
        self.ring_all();
    }
}
