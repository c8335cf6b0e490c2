//! Publishing to many channels from one connection, pipelined: the
//! publisher of `history-memory` and `recover-storm`. Also asks a
//! channel's `history`.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::clock::mono_ns;
use crate::conn::{Conn, Control, handle_control};
use crate::payload::build_publish;
use crate::scan::{ServerMsg, classify, for_each_object};
use crate::wsclient::OP_TEXT;

/// What one [`Bulk::round`] did.
#[derive(Debug, Default, Clone)]
pub struct BulkStats {
    /// Publications sent.
    pub sent: u64,
    /// Publish replies (success).
    pub acked: u64,
    /// Publish error replies.
    pub errors: u64,
    /// The first error reply.
    pub first_error: Option<String>,
}

impl BulkStats {
    /// Adds `o` to these counters.
    pub fn add(&mut self, o: &BulkStats) {
        self.sent += o.sent;
        self.acked += o.acked;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
    }
}

/// A connected (not subscribed) publisher connection.
pub struct Bulk {
    conn: Conn,
    next_id: u64,
    msg: Vec<u8>,
    /// Most publishes sent and not yet answered.
    pub window: usize,
}

impl Bulk {
    /// Wraps `conn` (its `connect` used id 1).
    pub fn new(conn: Conn, window: usize) -> Self {
        Self {
            conn,
            next_id: 2,
            msg: Vec::with_capacity(1024),
            window: window.max(1),
        }
    }

    /// Publishes `per_channel` publications to each of the channels
    /// `{prefix}0` … `{prefix}{channels-1}`, channel by channel within a
    /// pass (pass r publishes the r-th publication of every channel), with
    /// at most `window` unanswered; each `data` is `{"t":<ns>,"p":"xx…"}`
    /// of `payload` bytes. Returns when every publish is answered.
    pub async fn round(
        &mut self,
        prefix: &str,
        channels: u64,
        per_channel: u64,
        payload: usize,
    ) -> Result<BulkStats> {
        let mut st = BulkStats::default();
        let total = channels * per_channel;
        let mut inflight: u64 = 0;
        while st.sent < total || inflight > 0 {
            while st.sent < total && inflight < self.window as u64 {
                let ch = st.sent % channels;
                let channel_json = format!("\"{prefix}{ch}\"");
                self.msg.clear();
                build_publish(
                    &mut self.msg,
                    self.next_id,
                    &channel_json,
                    mono_ns(),
                    payload,
                );
                self.conn.writer.queue(OP_TEXT, &self.msg);
                self.next_id += 1;
                st.sent += 1;
                inflight += 1;
                if self.conn.writer.queued() >= 64 * 1024 {
                    break;
                }
            }
            self.conn.writer.flush().await?;
            if inflight == 0 {
                continue;
            }
            let h = tokio::time::timeout(Duration::from_secs(30), self.conn.reader.next_frame())
                .await
                .context("no publish reply within 30 s")??;
            if let Some(ctl) =
                handle_control(&mut self.conn.reader, &mut self.conn.writer, &h).await?
            {
                if let Control::Closed(code) = ctl {
                    bail!("publisher connection closed by the server (code {code})");
                }
                continue;
            }
            for_each_object(self.conn.reader.payload(&h), |o| match classify(o) {
                ServerMsg::Reply { .. } => {
                    inflight = inflight.saturating_sub(1);
                    st.acked += 1;
                }
                ServerMsg::Error { .. } => {
                    inflight = inflight.saturating_sub(1);
                    st.errors += 1;
                    if st.first_error.is_none() {
                        st.first_error = Some(String::from_utf8_lossy(o).into_owned());
                    }
                }
                _ => {}
            });
            self.conn.reader.consume(&h);
        }
        Ok(st)
    }

    /// Asks `history` of `channel` (at most `limit` publications) and
    /// returns how many publications the reply holds.
    pub async fn history_len(&mut self, channel: &str, limit: u32) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let cmd = format!(
            "{{\"id\":{id},\"history\":{{\"channel\":{},\"limit\":{limit}}}}}",
            serde_json::to_string(channel)?
        );
        self.conn.writer.send(OP_TEXT, cmd.as_bytes()).await?;
        loop {
            let h = tokio::time::timeout(Duration::from_secs(10), self.conn.reader.next_frame())
                .await
                .context("no history reply within 10 s")??;
            if handle_control(&mut self.conn.reader, &mut self.conn.writer, &h)
                .await?
                .is_some()
            {
                continue;
            }
            let mut found: Option<Result<u64>> = None;
            for_each_object(self.conn.reader.payload(&h), |o| match classify(o) {
                ServerMsg::Reply { id: i, .. } if i == id => {
                    found = Some(history_count(o));
                }
                ServerMsg::Error { id: i, .. } if i == id => {
                    found = Some(Err(anyhow::anyhow!(
                        "history error: {}",
                        String::from_utf8_lossy(o)
                    )));
                }
                _ => {}
            });
            self.conn.reader.consume(&h);
            if let Some(r) = found {
                return r;
            }
        }
    }
}

/// The number of `publications` in a `history` reply object.
pub fn history_count(obj: &[u8]) -> Result<u64> {
    let v: serde_json::Value = serde_json::from_slice(obj).context("history reply JSON")?;
    v.pointer("/history/publications")
        .and_then(|p| p.as_array())
        .map(|a| a.len() as u64)
        .ok_or_else(|| anyhow::anyhow!("no publications in {}", String::from_utf8_lossy(obj)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_history() {
        let r = br#"{"id":3,"history":{"publications":[{"offset":121,"b64data":"/wA="},{"offset":120,"data":{"text":"yo"}}],"epoch":"9d3c1f0a7b2e4c55","offset":121}}"#;
        assert_eq!(history_count(r).unwrap(), 2);
        assert!(history_count(br#"{"id":3,"history":{}}"#).is_err());
    }
}
