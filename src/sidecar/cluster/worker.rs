//! The cluster worker's loop, on the `wsedge-cluster` thread: takes the
//! shards' requests in drains (subscribes first, then publishes, in queue
//! order), hands what arrives to the sink, publishes heartbeats and keeps
//! the live set. See the parent module for the rules.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::client::PublishErrorKind;
use async_nats::{Client, ConnectOptions, Event, Message, ServerAddr, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use super::calls::{self, NodeApi, NodeCall};
use super::interest::{Interest, Op};
use super::store::Store;
use super::{ClusterOptions, ClusterSink, SHUTDOWN_FLUSH, ToCluster};
use crate::engine::cluster::membership::{Change, Heartbeat, Membership, Refusal};
use crate::engine::cluster::placement::Placement;
use crate::engine::cluster::stored::{StoreAnswer, StoreUnavailable};
use crate::engine::cluster::subject::{Subject, Subjects};
use crate::metrics::{ApiCall, ClusterDrop, ClusterMetrics, HeartbeatRefusal, Received, Sent};

/// Requests taken off the queue in one drain (one batch of interest
/// changes) before the loop looks at its other sources again.
const DRAIN_PER_TURN: usize = 8192;

/// What the worker is started with besides its queue, sink and metrics.
pub(super) struct Setup {
    pub(super) opts: ClusterOptions,
    pub(super) shards: u16,
    pub(super) incarnation: u64,
    pub(super) subjects: Subjects,
    pub(super) up: Arc<AtomicBool>,
    /// Server API calls to send to every other node.
    pub(super) calls: mpsc::Receiver<NodeCall>,
    /// Runs other nodes' calls here, once the server API is up.
    pub(super) node_api: Arc<OnceLock<Arc<dyn NodeApi>>>,
}

/// A message to publish, in queue order.
struct Outgoing {
    subject: String,
    payload: Bytes,
    kind: Sent,
}

pub(super) struct Worker {
    opts: ClusterOptions,
    shards: u16,
    subjects: Subjects,
    up: Arc<AtomicBool>,
    rx: mpsc::Receiver<ToCluster>,
    sink: Arc<dyn ClusterSink>,
    metrics: ClusterMetrics,
    membership: Membership,
    placement: Placement,
    interest: Interest,
    /// The forwarding task of each subscribed channel.
    subs: HashMap<Arc<str>, AbortHandle>,
    /// Zero of the membership clock (ms since the worker started).
    epoch: Instant,
    outgoing: Vec<Outgoing>,
    /// Writes and read-backs for the JetStream store, in queue order.
    store_ops: Vec<ToCluster>,
    /// The JetStream side, when a namespace keeps its history there.
    store: Option<Store>,
    connected_once: bool,
    /// Whether a connect failure was logged since the link was last up.
    failure_logged: bool,
    /// Whether a name clash was logged (it repeats every heartbeat).
    clash_logged: bool,
    calls: mpsc::Receiver<NodeCall>,
    node_api: Arc<OnceLock<Arc<dyn NodeApi>>>,
    /// Peer calls running now (bounded by `calls::MAX_SERVING`).
    serving: Arc<AtomicUsize>,
}

impl Worker {
    pub(super) fn new(
        setup: Setup,
        rx: mpsc::Receiver<ToCluster>,
        sink: Arc<dyn ClusterSink>,
        metrics: ClusterMetrics,
    ) -> Self {
        let timeout_ms = u64::try_from(setup.opts.node_timeout.as_millis()).unwrap_or(u64::MAX);
        let membership =
            Membership::new(setup.opts.node_name.clone(), setup.incarnation, timeout_ms);
        let placement = Placement::new(&membership);
        Worker {
            interest: Interest::new(setup.opts.unwatch_linger),
            opts: setup.opts,
            shards: setup.shards,
            subjects: setup.subjects,
            up: setup.up,
            rx,
            sink,
            metrics,
            membership,
            placement,
            subs: HashMap::new(),
            epoch: Instant::now(),
            outgoing: Vec::new(),
            store_ops: Vec::new(),
            store: None,
            connected_once: false,
            failure_logged: false,
            clash_logged: false,
            calls: setup.calls,
            node_api: setup.node_api,
            serving: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Connects (in the background) and runs until `stop` fires (or its
    /// sender is dropped), then sends what is queued within
    /// [`SHUTDOWN_FLUSH`].
    pub(super) async fn run(
        mut self,
        servers: Vec<ServerAddr>,
        connect: ConnectOptions,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let shown = super::redacted_servers(&self.opts.servers.join(","));
        // With `retry_on_initial_connect` this returns at once; it fails
        // only on options it cannot use.
        let client = match connect.connect(servers).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(servers = %shown, error = %e, "cluster: cannot start the NATS client; this node stays alone");
                return;
            }
        };
        self.store = Store::new(
            &client,
            &self.opts,
            self.subjects.clone(),
            self.sink.clone(),
            self.metrics.clone(),
        );
        let (mut heartbeats, mut home, mut api) = match self.subscribe_own(&client).await {
            Ok(subs) => subs,
            Err(e) => {
                tracing::error!(error = %e, "cluster: cannot subscribe; this node stays alone");
                return;
            }
        };
        tracing::info!(
            servers = %shown,
            node = %self.opts.node_name,
            cluster = %self.opts.cluster_name,
            "cluster: connecting to NATS in the background"
        );
        self.metrics.set_nodes(self.membership.live().len());
        self.sink.placement(Arc::new(self.placement.clone()));
        let mut beat = tokio::time::interval(self.opts.heartbeat_interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = Duration::from_secs(3600);
        loop {
            let member_due = self.membership.next_deadline().map(|ms| self.instant(ms));
            let linger_due = self.interest.next_deadline();
            let now = Instant::now();
            tokio::select! {
                _ = &mut stop => break,
                Some(event) = events.recv() => self.on_event(event, &client).await,
                req = self.rx.recv() => match req {
                    Some(req) => self.drain(req, &client).await,
                    None => break,
                },
                Some(msg) = home.next() => self.on_home(msg),
                Some(msg) = heartbeats.next() => self.on_heartbeat(&msg),
                Some(msg) = api.next() => calls::serve(
                    &client,
                    msg,
                    self.opts.node_name.clone(),
                    self.node_api.get().cloned(),
                    &self.serving,
                    &self.metrics,
                ),
                Some(call) = self.calls.recv() => self.ask(call, &client),
                _ = beat.tick() => self.send_heartbeat(&client).await,
                _ = tokio::time::sleep_until(member_due.unwrap_or(now + far).into()),
                    if member_due.is_some() => self.expire_members(),
                _ = tokio::time::sleep_until(linger_due.unwrap_or(now + far).into()),
                    if linger_due.is_some() => {
                    let ops = self.interest.expire(Instant::now());
                    self.apply(ops, &client).await;
                }
            }
        }
        // Whatever the shards queued before the stop still goes out.
        let finish = async {
            while let Ok(req) = self.rx.try_recv() {
                self.drain(req, &client).await;
            }
            if self.up.load(Ordering::Acquire) {
                let _ = client.flush().await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_FLUSH, finish).await.is_err() {
            tracing::warn!(
                "cluster: NATS did not take the last messages within {SHUTDOWN_FLUSH:?}"
            );
        }
        self.up.store(false, Ordering::Release);
        self.metrics.set_up(false);
    }

    async fn subscribe_own(
        &self,
        client: &Client,
    ) -> Result<(Subscriber, Subscriber, Subscriber), async_nats::SubscribeError> {
        let heartbeats = client.subscribe(self.subjects.all_nodes()).await?;
        let home = client
            .subscribe(self.subjects.home(&self.opts.node_name))
            .await?;
        let api = client.subscribe(self.subjects.api()).await?;
        Ok((heartbeats, home, api))
    }

    /// Sends a server API call to every other live node (in its own task,
    /// so the loop goes on while the answers come).
    fn ask(&self, call: NodeCall, client: &Client) {
        if !self.up.load(Ordering::Acquire) {
            self.metrics.api_call(ApiCall::Unreachable);
            let _ = call.reply.send(Err(calls::CallRefused::Unreachable));
            return;
        }
        let expected: Vec<Arc<str>> = self
            .membership
            .live()
            .iter()
            .filter(|n| ***n != *self.opts.node_name)
            .cloned()
            .collect();
        let ask = calls::ask(
            client.clone(),
            self.opts.node_name.clone(),
            self.subjects.api(),
            call.request,
            expected,
            self.opts.request_timeout,
        );
        let reply = call.reply;
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let answers = ask.await;
            metrics.api_call(match &answers {
                Ok(a) if a.missing.is_empty() => ApiCall::Complete,
                Ok(_) => ApiCall::Partial,
                Err(_) => ApiCall::Unreachable,
            });
            let _ = reply.send(answers);
        });
    }

    /// The membership clock: ms since the worker started.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    async fn on_event(&mut self, event: Event, client: &Client) {
        match event {
            Event::Connected => {
                if let Some(store) = &self.store {
                    store.reconnected();
                }
                self.up.store(true, Ordering::Release);
                self.metrics.set_up(true);
                if self.connected_once {
                    self.metrics.reconnected();
                    tracing::info!("cluster: reconnected to NATS");
                } else {
                    tracing::info!("cluster: connected to NATS");
                }
                self.connected_once = true;
                self.failure_logged = false;
                self.sink.link(true);
                // Let the others see this node now rather than at the
                // next tick.
                self.send_heartbeat(client).await;
            }
            Event::Disconnected => {
                self.up.store(false, Ordering::Release);
                self.metrics.set_up(false);
                self.sink.link(false);
                tracing::warn!(
                    "cluster: lost the NATS connection; reconnecting (nothing is sent meanwhile)"
                );
            }
            Event::ClientError(e) => {
                if self.failure_logged {
                    tracing::debug!(error = %e, "cluster: NATS connect attempt failed");
                } else {
                    self.failure_logged = true;
                    let what = if self.connected_once {
                        "cannot reach NATS again yet"
                    } else {
                        "cannot reach NATS at start; the node runs alone until it can"
                    };
                    tracing::warn!(error = %e, "cluster: {what} (retrying)");
                }
            }
            Event::SlowConsumer(sid) => {
                self.metrics.dropped(ClusterDrop::SlowConsumer, 1);
                tracing::warn!(
                    sid,
                    "cluster: a subscription fell behind; NATS messages dropped"
                );
            }
            Event::ServerError(e) => tracing::warn!(error = %e, "cluster: NATS server error"),
            Event::LameDuckMode => {
                tracing::info!("cluster: the NATS server is shutting down (lame duck mode)")
            }
            Event::Draining | Event::Closed => {}
        }
    }

    /// One drain of the queue, starting with `first`: interest changes are
    /// netted and applied (subscribes first), then the messages are sent in
    /// queue order.
    async fn drain(&mut self, first: ToCluster, client: &Client) {
        self.take(first);
        for _ in 1..DRAIN_PER_TURN {
            match self.rx.try_recv() {
                Ok(req) => self.take(req),
                Err(_) => break,
            }
        }
        let ops = self.interest.settle(Instant::now());
        self.apply(ops, client).await;
        let mut outgoing = std::mem::take(&mut self.outgoing);
        for msg in outgoing.drain(..) {
            self.publish(client, msg).await;
        }
        self.outgoing = outgoing;
        let mut ops = std::mem::take(&mut self.store_ops);
        for op in ops.drain(..) {
            self.store_op(op).await;
        }
        self.store_ops = ops;
    }

    /// Sends a write (in queue order) or starts a read-back.
    async fn store_op(&self, op: ToCluster) {
        let up = self.up.load(Ordering::Acquire);
        let Some(store) = &self.store else {
            let answer = match op {
                ToCluster::Persist {
                    channel, offset, ..
                } => StoreAnswer::Persisted {
                    channel,
                    offset,
                    ok: false,
                },
                ToCluster::Load { channel, .. } => StoreAnswer::Loaded {
                    channel,
                    result: Err(StoreUnavailable),
                    floor: None,
                    members: Vec::new(),
                },
                ToCluster::Members { write } => StoreAnswer::MembersUnwritten {
                    channel: write.channel,
                },
                ToCluster::Purge { channel, .. } => StoreAnswer::Purged { channel, ok: false },
                _ => return,
            };
            let _ = self.sink.stored(answer);
            return;
        };
        match op {
            ToCluster::Persist {
                ns,
                channel,
                epoch,
                offset,
                body,
            } => store.persist(up, ns, channel, epoch, offset, body).await,
            ToCluster::Load { ns, channel } => store.load(up, ns, channel),
            ToCluster::Members { write } => store.write_members(up, write).await,
            ToCluster::Purge { ns, channel, floor } => store.purge(up, ns, channel, floor).await,
            _ => {}
        }
    }

    fn take(&mut self, req: ToCluster) {
        match req {
            ToCluster::Watch { channel, on } => {
                let before = self.interest.unbalanced();
                self.interest.change(&channel, on);
                if self.interest.unbalanced() != before {
                    tracing::warn!(%channel, "cluster: a Watch off without a Watch on (ignored)");
                }
            }
            ToCluster::Publish { channel, payload } => self.outgoing.push(Outgoing {
                subject: self.subjects.channel(&channel),
                payload,
                kind: Sent::Publish,
            }),
            ToCluster::ToNode { node, payload } if node == self.opts.node_name => {
                // no_echo: NATS would not deliver it back; it is ours.
                if self.sink.received(None, payload).is_err() {
                    self.metrics.dropped(ClusterDrop::InboxFull, 1);
                }
            }
            ToCluster::ToNode { node, payload } => self.outgoing.push(Outgoing {
                subject: self.subjects.home(&node),
                payload,
                kind: Sent::ToNode,
            }),
            op @ (ToCluster::Persist { .. }
            | ToCluster::Load { .. }
            | ToCluster::Members { .. }
            | ToCluster::Purge { .. }) => self.store_ops.push(op),
        }
    }

    /// Subscribes and unsubscribes channel subjects.
    async fn apply(&mut self, ops: Vec<Op>, client: &Client) {
        if ops.is_empty() {
            return;
        }
        for op in ops {
            match op {
                Op::Sub(channel) => {
                    let subject = self.subjects.channel(&channel);
                    match client.subscribe(subject).await {
                        Ok(sub) => {
                            let task = tokio::spawn(forward(
                                sub,
                                channel.clone(),
                                self.sink.clone(),
                                self.metrics.clone(),
                            ));
                            self.subs.insert(channel, task.abort_handle());
                            self.metrics.subscribe_op(true);
                        }
                        Err(e) => {
                            tracing::error!(%channel, error = %e, "cluster: cannot subscribe")
                        }
                    }
                }
                Op::Unsub(channel) => {
                    // Dropping the subscriber (with its task) sends UNSUB;
                    // what it had not yet forwarded is dropped with it.
                    if let Some(task) = self.subs.remove(&channel) {
                        task.abort();
                        self.metrics.subscribe_op(false);
                    }
                }
            }
        }
        self.metrics.set_watched(self.subs.len());
    }

    async fn publish(&self, client: &Client, msg: Outgoing) {
        if !self.up.load(Ordering::Acquire) {
            self.metrics.dropped(ClusterDrop::Disconnected, 1);
            return;
        }
        let len = msg.payload.len();
        match client.publish(msg.subject, msg.payload).await {
            Ok(()) => self.metrics.sent(msg.kind, len),
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                self.metrics.dropped(ClusterDrop::TooLarge, 1);
                tracing::warn!(
                    bytes = len,
                    "cluster: a message above NATS max_payload was not sent"
                );
            }
            Err(e) => {
                self.metrics.dropped(ClusterDrop::Disconnected, 1);
                tracing::debug!(error = %e, "cluster: publish failed");
            }
        }
    }

    fn on_home(&self, msg: Message) {
        self.metrics.received(Received::Home, msg.payload.len());
        if self.sink.received(None, msg.payload).is_err() {
            self.metrics.dropped(ClusterDrop::InboxFull, 1);
        }
    }

    fn on_heartbeat(&mut self, msg: &Message) {
        self.metrics
            .received(Received::Heartbeat, msg.payload.len());
        let hb = match Heartbeat::decode(&msg.payload) {
            Ok(hb) => hb,
            Err(e) => {
                self.metrics.refused(HeartbeatRefusal::Malformed);
                tracing::debug!(subject = %msg.subject, error = %e, "cluster: unreadable heartbeat");
                return;
            }
        };
        match self.subjects.parse(&msg.subject) {
            Ok(Subject::Node(name)) if *name == *hb.node => {}
            _ => {
                self.metrics.refused(HeartbeatRefusal::Malformed);
                tracing::debug!(subject = %msg.subject, node = %hb.node, "cluster: heartbeat on another node's subject");
                return;
            }
        }
        match self.membership.on_heartbeat(&hb, self.now_ms()) {
            Change::Joined => tracing::info!(node = %hb.node, "cluster: node joined"),
            Change::Restarted { .. } => {
                tracing::info!(node = %hb.node, "cluster: node restarted (new incarnation)")
            }
            Change::Refreshed | Change::Own => {}
            Change::Refused(r) => {
                self.metrics.refused(HeartbeatRefusal::Membership(r));
                if r == Refusal::NameClash && !self.clash_logged {
                    self.clash_logged = true;
                    tracing::error!(node = %hb.node, "cluster: another process uses this node's name; give every node its own node_name");
                }
            }
        }
        self.update_placement();
    }

    fn expire_members(&mut self) {
        for left in self.membership.expire(self.now_ms()) {
            tracing::info!(node = %left.node, "cluster: node left (no heartbeat within node_timeout)");
        }
        self.update_placement();
    }

    /// Hands the sink a new placement if the live set changed.
    fn update_placement(&mut self) {
        if self.placement.update(&self.membership) {
            self.metrics.set_nodes(self.membership.live().len());
            self.sink.placement(Arc::new(self.placement.clone()));
        }
    }

    async fn send_heartbeat(&self, client: &Client) {
        if !self.up.load(Ordering::Acquire) {
            return;
        }
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let payload = self.membership.own_heartbeat(self.shards, unix_ms).encode();
        let len = payload.len();
        let subject = self.subjects.node(&self.opts.node_name);
        if client.publish(subject, payload).await.is_ok() {
            self.metrics.sent(Sent::Heartbeat, len);
        }
    }
}

/// Hands a channel subscription's messages to the sink until aborted.
async fn forward(
    mut sub: Subscriber,
    channel: Arc<str>,
    sink: Arc<dyn ClusterSink>,
    metrics: ClusterMetrics,
) {
    while let Some(msg) = sub.next().await {
        metrics.received(Received::Channel, msg.payload.len());
        if sink.received(Some(channel.clone()), msg.payload).is_err() {
            metrics.dropped(ClusterDrop::InboxFull, 1);
        }
    }
}
