//! What reached the JetStream sink: the stream's message count, and a
//! read of every message (an ordered consumer) checking each event id
//! once and each channel's offsets increasing in stream order.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

/// The JetStream stream wsedge creates for `jetstream:<subject>`
/// (`WSEDGE_DURABLE_` + the subject, uppercase, `.` → `_`).
pub(crate) fn stream_name(subject: &str) -> String {
    let token: String = subject
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' => c.to_ascii_uppercase(),
            _ => '_',
        })
        .collect();
    format!("WSEDGE_DURABLE_{token}")
}

/// Messages in `stream` now (`None`: no such stream yet).
pub(crate) async fn stream_count(url: &str, stream: &str) -> Result<Option<u64>> {
    let client = tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url))
        .await
        .context("connecting to NATS: timeout")?
        .with_context(|| format!("connecting to {url}"))?;
    let js = jetstream::new(client);
    match js.get_stream(stream).await {
        Ok(mut s) => Ok(Some(s.info().await?.state.messages)),
        Err(e) if e.to_string().contains("not found") => Ok(None),
        Err(e) => Err(anyhow!("stream {stream}: {e}")),
    }
}

/// The fields of a record's JSON payload the check reads.
#[derive(Deserialize)]
struct Event {
    id: String,
    channel: String,
    epoch: String,
    offset: u64,
}

/// What a read of the whole stream found.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct StreamCheck {
    /// Messages read.
    pub read: u64,
    /// Distinct event ids.
    pub distinct: u64,
    /// Messages whose id was seen before (`read − distinct`).
    pub duplicates: u64,
    /// Messages whose offset was not above the previous one of the same
    /// channel and epoch (stream order).
    pub out_of_order: u64,
    /// Messages whose payload did not parse.
    pub unparsable: u64,
    /// Distinct ids per channel.
    #[serde(skip)]
    pub per_channel: HashMap<String, u64>,
}

/// Reads every message of `stream` (`expect` of them; stops 5 s after
/// the last one if fewer come) and checks them.
pub(crate) async fn read_stream(url: &str, stream: &str, expect: u64) -> Result<StreamCheck> {
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let js = jetstream::new(client);
    let s = js
        .get_stream(stream)
        .await
        .map_err(|e| anyhow!("stream {stream}: {e}"))?;
    let c = s
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .map_err(|e| anyhow!("ordered consumer on {stream}: {e}"))?;
    let mut messages = c
        .messages()
        .await
        .map_err(|e| anyhow!("reading {stream}: {e}"))?;
    let mut ck = StreamCheck::default();
    let mut ids: HashSet<String> = HashSet::with_capacity(expect as usize);
    let mut last: HashMap<(String, String), u64> = HashMap::new();
    while ck.read < expect {
        let m = match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(m)) => m.map_err(|e| anyhow!("reading {stream}: {e}"))?,
        };
        ck.read += 1;
        let Ok(ev) = serde_json::from_slice::<Event>(&m.payload) else {
            ck.unparsable += 1;
            continue;
        };
        let key = (ev.channel, ev.epoch);
        match last.get_mut(&key) {
            Some(l) if ev.offset <= *l => ck.out_of_order += 1,
            Some(l) => *l = ev.offset,
            None => {
                last.insert(key.clone(), ev.offset);
            }
        }
        if ids.insert(ev.id) {
            *ck.per_channel.entry(key.0).or_default() += 1;
        } else {
            ck.duplicates += 1;
        }
    }
    ck.distinct = ids.len() as u64;
    Ok(ck)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_as_wsedge_makes_them() {
        assert_eq!(stream_name("events.chat"), "WSEDGE_DURABLE_EVENTS_CHAT");
        assert_eq!(stream_name("bench.js-ack"), "WSEDGE_DURABLE_BENCH_JS-ACK");
    }
}
