//! `presence_store`: what it costs to keep cluster presence (the members of
//! a channel) in Redis and in NATS JetStream KV, side by side in one run.
//!
//! The layout is the one the server is to use:
//! - **Redis**: per channel a hash `wsedge:<cluster>:presence:<channel>`,
//!   field = client id (36 characters), value = the member record (JSON,
//!   ~150 bytes), the whole hash with a key-level `PEXPIRE` (presence ttl,
//!   default 60 s). A join is `HSET key field value` plus one `PEXPIRE key
//!   ttl` per channel per batch; a leave is `HDEL`; a batch of changes is
//!   one pipeline; a refresh round is one `PEXPIRE` per channel; a load is
//!   one `HGETALL`.
//! - **NATS KV**: bucket `wsedge_<cluster>_presence` (file storage, history
//!   1, `limit_markers` = ttl, which turns on the stream's
//!   `allow_msg_ttl`), key `<channel>.<client id>` (channel sanitised to KV
//!   key characters: `:` → `=3A`). async-nats 0.51's `Store::put` takes no
//!   TTL (only `create_with_ttl` does, and it fails on an existing key), so
//!   a join, and a refresh of a member (KV has no "touch"), is a JetStream
//!   publish to `$KV.<bucket>.<key>` with the `Nats-TTL` header
//!   (`PublishMessage::ttl`): the same message `put` sends, plus the TTL.
//!   A leave is the KV delete marker (`KV-Operation: DEL`) with the same
//!   TTL, so that it does not stay in the stream for ever. A batch is
//!   published without waiting (`send_publish`), then its acks are awaited:
//!   the whole batch in flight at once. A load is an ordered push consumer
//!   with `DeliverPolicy::LastPerSubject` on `$KV.<bucket>.<channel>.>`
//!   (what `Store::watch_with_history` does, with the empty-channel case
//!   handled through the consumer's `num_pending`), read until `pending`
//!   is 0, delete markers skipped.
//!
//! Measured, each repetition for both stores (fresh store state per phase):
//! 1. **join**: `--joins` joins (default 20,000) round-robin into
//!    `--channels` channels (100), in batches of `--batch` (512) changes
//!    sent back to back, each batch awaited before the next (the server
//!    sends one batch per ~50 ms tick): µs per join, joins/s; then
//!    **leave**: the same members leave, the same way.
//! 2. **load**: one channel of 1,000 and one of 10,000 members, loaded
//!    `--loads` times each (median taken): request → every member decoded
//!    (serde) into memory.
//! 3. **refresh**: 19,000 members in 1 channel, in 100, and in 19,000
//!    channels (one member each): commands (Redis) or messages (NATS) and
//!    bytes sent for one refresh round, its time; Redis bytes are
//!    `total_net_input_bytes` of `INFO stats`, NATS bytes are the client's
//!    socket byte count (`Client::statistics().out_bytes`, protocol lines
//!    and headers included).
//! 4. **memory** of those 19,000 members: Redis `used_memory` delta from
//!    the emptied store, NATS KV stream state `bytes` (what the stream
//!    holds; nats-server's own per-subject index and TTL wheel come on top,
//!    and its RSS, with Go's garbage collector, gives no usable delta).
//!
//! Each phase also records the CPU time of the store's process and of this
//! generator (from `/proc/PID/task/*/schedstat`): a ratio to wall time near
//! 1 says which of the two saturated. The binary is single-threaded
//! (current-thread tokio runtime); `bench/presence-store.sh` pins it to
//! CPU 1 and both servers to CPU 0.
//!
//! ```text
//! presence_store --redis redis://127.0.0.1:PORT --redis-pid PID \
//!                --nats nats://127.0.0.1:PORT --nats-pid PID [--reps 3] [--json FILE]
//! ```
//! Prints a markdown table (median and min–max over the repetitions) on
//! stdout, progress on stderr, and appends one JSON line with every sample
//! to `--json`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use async_nats::jetstream::{self, consumer::push, kv, message::PublishMessage, stream};
use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt as _;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use wsbench::procfs;

/// Cost of cluster presence in Redis and in NATS JetStream KV.
#[derive(Debug, Parser)]
#[command(name = "presence_store", about)]
struct Args {
    /// Redis URL.
    #[arg(long)]
    redis: String,
    /// redis-server's process id (for its CPU time).
    #[arg(long)]
    redis_pid: u32,
    /// NATS URL (JetStream on).
    #[arg(long)]
    nats: String,
    /// nats-server's process id (for its CPU time and RSS).
    #[arg(long)]
    nats_pid: u32,
    /// Cluster name in the key and bucket names.
    #[arg(long, default_value = "bench")]
    cluster: String,
    /// Repetitions of the whole set.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Joins (and then leaves) in the write phase.
    #[arg(long, default_value_t = 20_000)]
    joins: usize,
    /// Channels the joins go to (round-robin).
    #[arg(long, default_value_t = 100)]
    channels: usize,
    /// Changes per batch (one pipeline, or one set of publishes in flight).
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Members in the refresh and memory phases.
    #[arg(long, default_value_t = 19_000)]
    members: usize,
    /// Loads of each channel per repetition (median taken).
    #[arg(long, default_value_t = 5)]
    loads: usize,
    /// Presence ttl in seconds (refresh every ttl/3 in the server).
    #[arg(long, default_value_t = 60)]
    ttl: u64,
    /// KV bucket storage: file or memory.
    #[arg(long, default_value = "file")]
    kv_storage: String,
    /// Append one JSON line with every sample here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Recorded as is in the JSON line (`ts`): when the run started.
    #[arg(long, default_value = "")]
    ts: String,
    /// Recorded as is in the JSON line (`commit`): the repository's HEAD.
    #[arg(long, default_value = "")]
    commit: String,
}

/// A member record as the server would encode it.
#[derive(Debug, Serialize, Deserialize)]
struct Member {
    user: String,
    client: String,
    node: String,
    conn_info: ConnInfo,
    state: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ConnInfo {
    name: String,
}

/// Member `i`: its client id and encoded record.
#[derive(Clone)]
struct Rec {
    id: String,
    body: Bytes,
}

fn make_member(i: usize) -> Rec {
    let h = xxhash_rust::xxh3::xxh3_128(&(i as u64).to_le_bytes());
    let id = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (h >> 96) as u32,
        (h >> 80) as u16,
        ((h >> 64) as u16) & 0xfff,
        ((h >> 48) as u16) & 0xfff,
        (h as u64) & 0xffff_ffff_ffff
    );
    let m = Member {
        user: format!("u{i}"),
        client: id.clone(),
        node: "n1".into(),
        conn_info: ConnInfo {
            name: format!("Member {i:06} of the benchmark room, a name"),
        },
        state: None,
    };
    Rec {
        id,
        body: Bytes::from(serde_json::to_vec(&m).expect("serialisable")),
    }
}

/// One change: (channel index, member index, join?).
type Change = (usize, usize, bool);

/// Samples: (phase, store, metric) → one value per repetition.
type Samples = BTreeMap<(String, String, String), Vec<f64>>;

/// Wall time and CPU of the store and of this process over one phase.
struct Meter {
    t0: Instant,
    store_pid: u32,
    store0: f64,
    gen0: f64,
}

impl Meter {
    fn start(store_pid: u32) -> Result<Self> {
        Ok(Meter {
            store0: procfs::run_seconds(store_pid)?,
            gen0: procfs::run_seconds(std::process::id())?,
            store_pid,
            t0: Instant::now(),
        })
    }
    /// (wall s, store CPU s, generator CPU s)
    fn stop(&self) -> Result<(f64, f64, f64)> {
        let wall = self.t0.elapsed().as_secs_f64();
        Ok((
            wall,
            procfs::run_seconds(self.store_pid)? - self.store0,
            procfs::run_seconds(std::process::id())? - self.gen0,
        ))
    }
}

struct Redis {
    con: MultiplexedConnection,
    pid: u32,
    prefix: String,
    ttl_ms: u64,
}

impl Redis {
    fn key(&self, channel: &str) -> String {
        format!("{}{channel}", self.prefix)
    }

    async fn flush(&mut self) -> Result<()> {
        redis::cmd("FLUSHALL")
            .arg("SYNC")
            .query_async::<()>(&mut self.con)
            .await?;
        Ok(())
    }

    async fn info_field(&mut self, section: &str, field: &str) -> Result<u64> {
        let text: String = redis::cmd("INFO")
            .arg(section)
            .query_async(&mut self.con)
            .await?;
        let prefix = format!("{field}:");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .context(format!("no {field} in INFO {section}"))?
            .trim()
            .parse()
            .context(format!("parsing {field}"))
    }

    /// Bytes Redis has read from clients so far, the `INFO stats` command
    /// that asks included.
    async fn net_in(&mut self) -> Result<u64> {
        self.info_field("stats", "total_net_input_bytes").await
    }

    /// Sends `changes` in batches of `batch`: one pipeline each, `HSET` per
    /// join, `HDEL` per leave, one `PEXPIRE` per channel with a join.
    /// Returns the number of commands.
    async fn write(
        &mut self,
        keys: &[String],
        members: &[Rec],
        changes: &[Change],
        batch: usize,
    ) -> Result<u64> {
        let mut cmds = 0u64;
        let mut touched = vec![false; keys.len()];
        let mut list = Vec::new();
        for chunk in changes.chunks(batch) {
            let mut pipe = redis::pipe();
            for &(ch, m, join) in chunk {
                let r = &members[m];
                if join {
                    pipe.cmd("HSET").arg(&keys[ch]).arg(&r.id).arg(&r.body[..]);
                    if !touched[ch] {
                        touched[ch] = true;
                        list.push(ch);
                    }
                } else {
                    pipe.cmd("HDEL").arg(&keys[ch]).arg(&r.id);
                }
            }
            for ch in list.drain(..) {
                touched[ch] = false;
                pipe.cmd("PEXPIRE").arg(&keys[ch]).arg(self.ttl_ms);
            }
            let n = pipe.len() as u64;
            let replies: Vec<i64> = pipe.query_async(&mut self.con).await?;
            ensure!(
                replies.len() as u64 == n,
                "{} replies to {n}",
                replies.len()
            );
            cmds += n;
        }
        Ok(cmds)
    }

    /// One refresh round: `PEXPIRE` of every key, pipelines of `batch`.
    async fn refresh(&mut self, keys: &[String], batch: usize) -> Result<u64> {
        let mut found = 0;
        for chunk in keys.chunks(batch) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.cmd("PEXPIRE").arg(k).arg(self.ttl_ms);
            }
            let replies: Vec<i64> = pipe.query_async(&mut self.con).await?;
            found += replies.iter().sum::<i64>();
        }
        ensure!(
            found as usize == keys.len(),
            "PEXPIRE found {found} of {} keys",
            keys.len()
        );
        Ok(keys.len() as u64)
    }

    async fn load(&mut self, key: &str) -> Result<Vec<Member>> {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut self.con)
            .await?;
        pairs
            .iter()
            .map(|(_, v)| serde_json::from_slice(v).context("decoding a member"))
            .collect()
    }
}

struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
    kv: kv::Store,
    bucket: String,
    pid: u32,
    ttl: Duration,
    storage: stream::StorageType,
}

/// A channel name as a KV key token: `:` (not a KV key character) → `=3A`.
fn kv_channel(channel: &str) -> String {
    channel.replace('=', "=3D").replace(':', "=3A")
}

impl Nats {
    /// Deletes and recreates the bucket (empty stream).
    async fn reset(&mut self) -> Result<()> {
        let _ = self.js.delete_key_value(&self.bucket).await;
        self.kv = self
            .js
            .create_key_value(kv::Config {
                bucket: self.bucket.clone(),
                history: 1,
                storage: self.storage,
                limit_markers: Some(self.ttl),
                ..Default::default()
            })
            .await
            .context("creating the KV bucket")?;
        ensure!(
            self.kv.stream.cached_info().config.allow_message_ttl,
            "bucket without allow_msg_ttl"
        );
        Ok(())
    }

    fn subject(&self, channel_key: &str, id: &str) -> String {
        format!("{}{channel_key}.{id}", self.kv.prefix)
    }

    async fn state(&self) -> Result<stream::State> {
        Ok(self.kv.stream.get_info().await?.state)
    }

    /// Publishes `changes` in batches of `batch`: every publish of a batch
    /// sent, then its acks awaited. A join is a put with `Nats-TTL`, a
    /// leave a delete marker with `Nats-TTL`. Returns the messages sent.
    async fn write(
        &self,
        chans: &[String],
        members: &[Rec],
        changes: &[Change],
        batch: usize,
    ) -> Result<u64> {
        let mut acks = Vec::with_capacity(batch);
        for chunk in changes.chunks(batch) {
            for &(ch, m, join) in chunk {
                let r = &members[m];
                let msg = if join {
                    PublishMessage::build().payload(r.body.clone())
                } else {
                    PublishMessage::build().header("KV-Operation", "DEL")
                };
                let ack = self
                    .js
                    .send_publish(self.subject(&chans[ch], &r.id), msg.ttl(self.ttl))
                    .await?;
                acks.push(ack);
            }
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
        Ok(changes.len() as u64)
    }

    /// A channel's members: ordered push consumer, last per subject,
    /// filter `<channel>.>`, until nothing is pending.
    async fn load(&self, channel_key: &str) -> Result<Vec<Member>> {
        let consumer = self
            .kv
            .stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: format!("{}{channel_key}.>", self.kv.prefix),
                deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                replay_policy: jetstream::consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await?;
        let mut out = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(out);
        }
        let mut msgs = consumer.messages().await?;
        while let Some(msg) = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .context("load: no message for 10 s")?
        {
            let msg = msg?;
            let pending = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?.pending;
            let deleted = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some();
            if !deleted {
                out.push(serde_json::from_slice(&msg.payload).context("decoding a member")?);
            }
            if pending == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// Checks that `Nats-TTL` works: a key put with a 1 s TTL is gone 2.5 s later.
    async fn check_ttl(&mut self) -> Result<()> {
        self.reset().await?;
        let subject = self.subject("ttl-check", "x");
        self.js
            .send_publish(
                subject,
                PublishMessage::build()
                    .payload("v".into())
                    .ttl(Duration::from_secs(1)),
            )
            .await?
            .await?;
        ensure!(
            self.kv.get("ttl-check.x").await?.is_some(),
            "TTL check: not stored"
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        ensure!(
            self.kv.get("ttl-check.x").await?.is_none(),
            "TTL check: the key is still there after its Nats-TTL"
        );
        Ok(())
    }
}

/// Records wall, store CPU and generator CPU of a phase, per `count` units.
fn record_meter(
    s: &mut Samples,
    phase: &str,
    store: &str,
    (wall, scpu, gcpu): (f64, f64, f64),
    count: f64,
) {
    let mut put = |m: &str, v: f64| {
        s.entry((phase.into(), store.into(), m.into()))
            .or_default()
            .push(v)
    };
    put("wall_s", wall);
    put("store_cpu_s", scpu);
    put("gen_cpu_s", gcpu);
    put("us_per_op", wall * 1e6 / count);
    put("ops_per_s", count / wall);
    put("store_busy", scpu / wall);
    put("gen_busy", gcpu / wall);
}

fn put(s: &mut Samples, phase: &str, store: &str, metric: &str, v: f64) {
    s.entry((phase.into(), store.into(), metric.into()))
        .or_default()
        .push(v);
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Busy time of every core and CPU time of the processes of a run, at one
/// moment: the difference of two is the CPU that *other* processes used.
struct RepCpu {
    at: Instant,
    cores_busy_s: f64,
    ours_s: f64,
}

impl RepCpu {
    fn sample(pids: &[u32]) -> Result<Self> {
        let tck = procfs::clk_tck();
        let mut cores_busy_s = 0.0;
        for c in 0..procfs::cpus_online() {
            cores_busy_s += procfs::core_times(c)?.busy as f64 / tck;
        }
        let mut ours_s = 0.0;
        for &p in pids {
            ours_s += procfs::run_seconds(p)?;
        }
        Ok(RepCpu {
            at: Instant::now(),
            cores_busy_s,
            ours_s,
        })
    }
    /// Cores (CPU-seconds per second) used by processes not in the run
    /// since `earlier` (kernel work not charged to a process included).
    fn others_since(&self, earlier: &RepCpu) -> f64 {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        ((self.cores_busy_s - earlier.cores_busy_s) - (self.ours_s - earlier.ours_s)).max(0.0)
            / wall
    }
}

/// Busy fraction of each core over `secs` while this program does nothing.
async fn background(secs: f64) -> Result<Vec<f64>> {
    let n = procfs::cpus_online();
    let a: Vec<_> = (0..n).map(procfs::core_times).collect::<Result<_>>()?;
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let b: Vec<_> = (0..n).map(procfs::core_times).collect::<Result<_>>()?;
    Ok(a.iter().zip(&b).map(|(a, b)| b.busy_since(a)).collect())
}

async fn run(args: Args) -> Result<()> {
    ensure!(
        args.reps > 0 && args.batch > 0 && args.channels > 0,
        "zero sizes"
    );
    let ttl = Duration::from_secs(args.ttl);
    let mut rs = Redis {
        con: redis::Client::open(args.redis.as_str())?
            .get_multiplexed_async_connection()
            .await
            .context("connecting to Redis")?,
        pid: args.redis_pid,
        prefix: format!("wsedge:{}:presence:", args.cluster),
        ttl_ms: ttl.as_millis() as u64,
    };
    let client = async_nats::connect(args.nats.as_str())
        .await
        .context("connecting to NATS")?;
    let js = jetstream::new(client.clone());
    let bucket = format!("wsedge_{}_presence", args.cluster);
    let storage = match args.kv_storage.as_str() {
        "file" => stream::StorageType::File,
        "memory" => stream::StorageType::Memory,
        o => bail!("--kv-storage {o}: file or memory"),
    };
    let kv0 = js
        .create_key_value(kv::Config {
            bucket: bucket.clone(),
            history: 1,
            storage,
            limit_markers: Some(ttl),
            ..Default::default()
        })
        .await
        .context("creating the KV bucket")?;
    let mut ns = Nats {
        client: client.clone(),
        js,
        kv: kv0,
        bucket,
        pid: args.nats_pid,
        ttl,
        storage,
    };
    ns.check_ttl().await?;
    eprintln!("presence_store: Nats-TTL check passed (a 1 s key expired)");

    let total_members = args.joins.max(args.members).max(11_000);
    let members: Vec<Rec> = (0..total_members).map(make_member).collect();
    let avg_body =
        members.iter().map(|m| m.body.len()).sum::<usize>() as f64 / members.len() as f64;
    eprintln!(
        "presence_store: member record {avg_body:.0} bytes on average, e.g. {}",
        String::from_utf8_lossy(&members[123].body)
    );

    let names = |n: usize, tag: &str| -> Vec<String> {
        (0..n).map(|i| format!("chat:{tag}-{i}")).collect()
    };
    let mut samples = Samples::new();
    let mut bg_all = Vec::new();
    let mut others_all = Vec::new();

    for rep in 0..args.reps {
        let bg = background(1.0).await?;
        eprintln!("presence_store: rep {}: background busy {bg:.2?}", rep + 1);
        bg_all.push(bg);
        let rep_start = RepCpu::sample(&[rs.pid, ns.pid, std::process::id()])?;

        // 1. joins, then leaves.
        let chans = names(args.channels, "room");
        let rkeys: Vec<String> = chans.iter().map(|c| rs.key(c)).collect();
        let nkeys: Vec<String> = chans.iter().map(|c| kv_channel(c)).collect();
        let joins: Vec<Change> = (0..args.joins)
            .map(|i| (i % args.channels, i, true))
            .collect();
        let leaves: Vec<Change> = (0..args.joins)
            .map(|i| (i % args.channels, i, false))
            .collect();

        rs.flush().await?;
        let m = Meter::start(rs.pid)?;
        let cmds = rs.write(&rkeys, &members, &joins, args.batch).await?;
        record_meter(&mut samples, "join", "redis", m.stop()?, args.joins as f64);
        put(&mut samples, "join", "redis", "sent", cmds as f64);
        let mut stored = 0i64;
        for k in &rkeys {
            stored += redis::cmd("HLEN")
                .arg(k)
                .query_async::<i64>(&mut rs.con)
                .await?;
        }
        ensure!(
            stored as usize == args.joins,
            "Redis holds {stored} members after the joins"
        );
        let m = Meter::start(rs.pid)?;
        let cmds = rs.write(&rkeys, &members, &leaves, args.batch).await?;
        record_meter(&mut samples, "leave", "redis", m.stop()?, args.joins as f64);
        put(&mut samples, "leave", "redis", "sent", cmds as f64);
        let left: i64 = redis::cmd("DBSIZE").query_async(&mut rs.con).await?;
        ensure!(left == 0, "Redis holds {left} keys after the leaves");

        ns.reset().await?;
        let m = Meter::start(ns.pid)?;
        let msgs = ns.write(&nkeys, &members, &joins, args.batch).await?;
        record_meter(&mut samples, "join", "nats", m.stop()?, args.joins as f64);
        put(&mut samples, "join", "nats", "sent", msgs as f64);
        let st = ns.state().await?;
        ensure!(
            st.messages as usize == args.joins,
            "KV holds {} messages after the joins",
            st.messages
        );
        let m = Meter::start(ns.pid)?;
        let msgs = ns.write(&nkeys, &members, &leaves, args.batch).await?;
        record_meter(&mut samples, "leave", "nats", m.stop()?, args.joins as f64);
        put(&mut samples, "leave", "nats", "sent", msgs as f64);
        let left = ns.load(&nkeys[0]).await?.len();
        ensure!(
            left == 0,
            "KV channel 0 has {left} members after the leaves"
        );

        // 2. loads of a 1,000- and a 10,000-member channel.
        rs.flush().await?;
        ns.reset().await?;
        let load_chans = ["chat:load-1k".to_string(), "chat:load-10k".to_string()];
        let sizes = [1_000usize, 10_000];
        let lr: Vec<String> = load_chans.iter().map(|c| rs.key(c)).collect();
        let ln: Vec<String> = load_chans.iter().map(|c| kv_channel(c)).collect();
        let mut fill = Vec::new();
        let mut next = 0;
        for (c, &n) in sizes.iter().enumerate() {
            fill.extend((next..next + n).map(|m| (c, m, true)));
            next += n;
        }
        rs.write(&lr, &members, &fill, args.batch).await?;
        ns.write(&ln, &members, &fill, args.batch).await?;
        for (c, &n) in sizes.iter().enumerate() {
            let phase = format!("load_{}", n);
            for (store, pid) in [("redis", rs.pid), ("nats", ns.pid)] {
                let mut walls = Vec::new();
                let mut scpu = Vec::new();
                let mut gcpu = Vec::new();
                for _ in 0..args.loads {
                    let m = Meter::start(pid)?;
                    let got = if store == "redis" {
                        rs.load(&lr[c]).await?
                    } else {
                        ns.load(&ln[c]).await?
                    };
                    let (w, s, g) = m.stop()?;
                    ensure!(
                        got.len() == n,
                        "{store} loaded {} of {n} members",
                        got.len()
                    );
                    walls.push(w);
                    scpu.push(s);
                    gcpu.push(g);
                }
                put(&mut samples, &phase, store, "ms", median(&walls) * 1e3);
                put(
                    &mut samples,
                    &phase,
                    store,
                    "store_cpu_ms",
                    median(&scpu) * 1e3,
                );
                put(
                    &mut samples,
                    &phase,
                    store,
                    "gen_cpu_ms",
                    median(&gcpu) * 1e3,
                );
            }
        }

        // 3./4. 19,000 members in 1, 100 and 19,000 channels: memory, one refresh round.
        for nch in [1usize, 100, args.members] {
            let phase = format!("refresh_{nch}");
            let chans = names(nch, &format!("r{nch}"));
            let rkeys: Vec<String> = chans.iter().map(|c| rs.key(c)).collect();
            let nkeys: Vec<String> = chans.iter().map(|c| kv_channel(c)).collect();
            let fill: Vec<Change> = (0..args.members).map(|i| (i % nch, i, true)).collect();

            rs.flush().await?;
            let mem0 = rs.info_field("memory", "used_memory").await?;
            rs.write(&rkeys, &members, &fill, args.batch).await?;
            let mem1 = rs.info_field("memory", "used_memory").await?;
            put(
                &mut samples,
                &phase,
                "redis",
                "mem_bytes",
                mem1 as f64 - mem0 as f64,
            );
            let in0 = rs.net_in().await?;
            let m = Meter::start(rs.pid)?;
            let cmds = rs.refresh(&rkeys, args.batch).await?;
            let meter = m.stop()?;
            let in1 = rs.net_in().await?;
            record_meter(&mut samples, &phase, "redis", meter, 1.0);
            put(&mut samples, &phase, "redis", "sent", cmds as f64);
            // in1 also counts its own INFO command.
            let own = redis::cmd("INFO").arg("stats").get_packed_command().len() as u64;
            put(
                &mut samples,
                &phase,
                "redis",
                "bytes",
                (in1 - in0 - own) as f64,
            );

            ns.reset().await?;
            let st0 = ns.state().await?;
            ns.write(&nkeys, &members, &fill, args.batch).await?;
            let st1 = ns.state().await?;
            ensure!(
                st1.messages as usize == args.members,
                "KV holds {} messages",
                st1.messages
            );
            put(
                &mut samples,
                &phase,
                "nats",
                "mem_bytes",
                st1.bytes as f64 - st0.bytes as f64,
            );
            // A refresh re-puts every member with its record and TTL.
            let stats = ns.client.statistics();
            let out0 = stats.out_bytes.load(Ordering::Relaxed);
            let m = Meter::start(ns.pid)?;
            let msgs = ns.write(&nkeys, &members, &fill, args.batch).await?;
            let meter = m.stop()?;
            let out1 = stats.out_bytes.load(Ordering::Relaxed);
            record_meter(&mut samples, &phase, "nats", meter, 1.0);
            put(&mut samples, &phase, "nats", "sent", msgs as f64);
            put(&mut samples, &phase, "nats", "bytes", (out1 - out0) as f64);
            let st2 = ns.state().await?;
            ensure!(
                st2.messages as usize == args.members,
                "KV holds {} messages after refresh",
                st2.messages
            );
            eprintln!(
                "presence_store: rep {}: {} channels: Redis {} B, KV {} B",
                rep + 1,
                nch,
                mem1 as i64 - mem0 as i64,
                st1.bytes
            );
        }
        let others =
            RepCpu::sample(&[rs.pid, ns.pid, std::process::id()])?.others_since(&rep_start);
        eprintln!(
            "presence_store: rep {} done; other processes used {others:.2} cores meanwhile",
            rep + 1
        );
        others_all.push(others);
    }
    rs.flush().await?;
    let _ = ns.js.delete_key_value(&ns.bucket).await;

    print_table(&samples, &args, avg_body, &others_all);
    if let Some(path) = &args.json {
        let rows: Vec<_> = samples
            .iter()
            .map(|((p, s, m), v)| serde_json::json!({"phase": p, "store": s, "metric": m, "values": v}))
            .collect();
        let line = serde_json::json!({
            "workload": "presence-store",
            "ts": args.ts, "commit": args.commit,
            "reps": args.reps, "joins": args.joins, "channels": args.channels,
            "batch": args.batch, "members": args.members, "ttl_s": args.ttl,
            "kv_storage": args.kv_storage, "record_bytes": avg_body,
            "background_busy": bg_all, "others_cores": others_all, "samples": rows,
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{line}")?;
    }
    Ok(())
}

fn print_table(s: &Samples, args: &Args, avg_body: f64, others: &[f64]) {
    let get = |p: &str, st: &str, m: &str| s.get(&(p.to_string(), st.to_string(), m.to_string()));
    let fmt = |v: Option<&Vec<f64>>, scale: f64, dec: usize| -> String {
        match v {
            None => "—".into(),
            Some(v) => {
                let v: Vec<f64> = v.iter().map(|x| x * scale).collect();
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if v.len() == 1 {
                    format!("{:.dec$}", v[0])
                } else {
                    format!("{:.dec$} ({:.dec$}–{:.dec$})", median(&v), lo, hi)
                }
            }
        }
    };
    let ratio = |p: &str, m: &str| -> String {
        match (get(p, "redis", m), get(p, "nats", m)) {
            (Some(r), Some(n)) if median(r) != 0.0 => {
                let x = median(n) / median(r);
                if x >= 10.0 {
                    format!("{x:.0}×")
                } else {
                    format!("{x:.1}×")
                }
            }
            _ => "—".into(),
        }
    };
    println!(
        "median (min–max) of {} runs; record {avg_body:.0} B; batches of {}; KV storage {}; \
         other processes' CPU during each run: {} cores",
        args.reps,
        args.batch,
        args.kv_storage,
        others
            .iter()
            .map(|o| format!("{o:.2}"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    println!();
    println!("| measure | Redis | NATS KV | KV / Redis |");
    println!("|---|---|---|---|");
    let row = |label: &str, p: &str, m: &str, scale: f64, dec: usize| {
        println!(
            "| {label} | {} | {} | {} |",
            fmt(get(p, "redis", m), scale, dec),
            fmt(get(p, "nats", m), scale, dec),
            ratio(p, m)
        );
    };
    let j = args.joins;
    let c = args.channels;
    row(
        &format!("join: µs per join ({j} into {c} channels)"),
        "join",
        "us_per_op",
        1.0,
        2,
    );
    row("join: joins/s", "join", "ops_per_s", 1.0, 0);
    row("join: commands / messages sent", "join", "sent", 1.0, 0);
    row(
        "join: store CPU µs per join",
        "join",
        "store_cpu_s",
        1e6 / j as f64,
        2,
    );
    row(
        "join: generator CPU µs per join",
        "join",
        "gen_cpu_s",
        1e6 / j as f64,
        2,
    );
    row(
        "join: store busy (CPU / wall)",
        "join",
        "store_busy",
        1.0,
        2,
    );
    row(
        "join: generator busy (CPU / wall)",
        "join",
        "gen_busy",
        1.0,
        2,
    );
    row("leave: µs per leave", "leave", "us_per_op", 1.0, 2);
    row(
        "leave: store CPU µs per leave",
        "leave",
        "store_cpu_s",
        1e6 / j as f64,
        2,
    );
    for n in [1_000, 10_000] {
        let p = format!("load_{n}");
        row(&format!("load {n} members: ms"), &p, "ms", 1.0, 2);
        row(
            &format!("load {n}: store CPU ms"),
            &p,
            "store_cpu_ms",
            1.0,
            2,
        );
        row(
            &format!("load {n}: generator CPU ms"),
            &p,
            "gen_cpu_ms",
            1.0,
            2,
        );
    }
    let m = args.members;
    for nch in [1usize, 100, m] {
        let p = format!("refresh_{nch}");
        let what = format!(
            "{m} members in {nch} channel{}",
            if nch == 1 { "" } else { "s" }
        );
        row(
            &format!("refresh, {what}: commands / messages"),
            &p,
            "sent",
            1.0,
            0,
        );
        row(
            &format!("refresh, {what}: KiB sent"),
            &p,
            "bytes",
            1.0 / 1024.0,
            1,
        );
        row(
            &format!("refresh, {what}: ms per round"),
            &p,
            "wall_s",
            1e3,
            2,
        );
        row(
            &format!("refresh, {what}: store CPU ms"),
            &p,
            "store_cpu_s",
            1e3,
            2,
        );
        row(
            &format!("memory, {what}: KiB"),
            &p,
            "mem_bytes",
            1.0 / 1024.0,
            0,
        );
        row(
            &format!("memory, {what}: bytes per member"),
            &p,
            "mem_bytes",
            1.0 / m as f64,
            0,
        );
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}
