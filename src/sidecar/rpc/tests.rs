//! Tests of the backend call worker without a NATS server (the
//! round trips are in `tests/rpc.rs`).

use std::sync::Mutex;

use super::*;

fn req(call: RpcCall) -> RpcRequest {
    RpcRequest {
        shard: 0,
        conn: ConnRef {
            idx: 7,
            generation: 1,
        },
        id: 3,
        call,
        payload: Bytes::from_static(b"{}"),
        user: Arc::from("ann"),
        client: "c.0.1".into(),
    }
}

fn opts(queue_capacity: usize) -> RpcOptions {
    RpcOptions {
        // Nothing listens on port 1: every call is unavailable.
        servers: "nats://127.0.0.1:1".into(),
        auth: None,
        node: "edge-1".into(),
        timeout: Duration::from_secs(1),
        subject_prefix: "wsedge".into(),
        queue_capacity,
        max_reply_size: 1024,
    }
}

/// Answers and lost reports, as a sink collects them.
#[derive(Default, Clone)]
struct Collect {
    answers: Arc<Mutex<Vec<RpcAnswer>>>,
    lost: Arc<Mutex<Vec<(ConnRef, u32, CallKind)>>>,
    full: bool,
}

impl RpcSink for Collect {
    fn deliver(&self, _: usize, answer: Box<RpcAnswer>) -> Result<(), Box<RpcAnswer>> {
        if self.full {
            return Err(answer);
        }
        self.answers.lock().unwrap().push(*answer);
        Ok(())
    }
    fn lost(&self, _: usize, conn: ConnRef, id: u32, kind: CallKind) {
        self.lost.lock().unwrap().push((conn, id, kind));
    }
}

fn wait_until(f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn without_nats_calls_are_unavailable_and_free_their_slots() {
    let sink = Collect::default();
    let metrics = RpcMetrics::default();
    let worker = spawn_rpc_worker(opts(2), sink.clone(), metrics.clone()).unwrap();
    let client = worker.client();
    client
        .submit(req(RpcCall::Request {
            method: "echo".into(),
        }))
        .unwrap();
    client.submit(req(RpcCall::Send)).unwrap();
    wait_until(|| sink.answers.lock().unwrap().len() == 2);
    for a in sink.answers.lock().unwrap().iter() {
        assert_eq!(a.outcome, RpcOutcome::Unavailable);
        assert_eq!((a.conn.idx, a.id), (7, 3));
    }
    wait_until(|| metrics.in_flight() == 0);
    assert_eq!(metrics.requests("unavailable"), 1);
    assert_eq!(metrics.sends("unavailable"), 1);
    worker.shutdown();
    assert_eq!(client.submit(req(RpcCall::Send)), Err(RpcRefused::Stopped));
}

#[test]
fn the_node_wide_bound_refuses_at_once() {
    // The worker never runs (not spawned): the slots stay taken.
    let (tx, _rx) = mpsc::unbounded_channel();
    let metrics = RpcMetrics::default();
    let client = RpcClient {
        tx,
        slots: Arc::new(Semaphore::new(2)),
        metrics: metrics.clone(),
    };
    let call = || req(RpcCall::Request { method: "m".into() });
    assert_eq!(client.submit(call()), Ok(()));
    assert_eq!(client.submit(req(RpcCall::Send)), Ok(()));
    assert_eq!(client.submit(call()), Err(RpcRefused::Busy));
    assert_eq!(client.submit(req(RpcCall::Send)), Err(RpcRefused::Busy));
    assert_eq!(metrics.in_flight(), 2);
    assert_eq!(metrics.requests("refused"), 1);
    assert_eq!(metrics.sends("refused"), 1);
}

#[test]
fn an_answer_a_full_inbox_refuses_is_reported_lost() {
    let sink = Collect {
        full: true,
        ..Collect::default()
    };
    let metrics = RpcMetrics::default();
    let worker = spawn_rpc_worker(opts(4), sink.clone(), metrics.clone()).unwrap();
    worker.client().submit(req(RpcCall::Send)).unwrap();
    wait_until(|| !sink.lost.lock().unwrap().is_empty());
    let c = ConnRef {
        idx: 7,
        generation: 1,
    };
    assert_eq!(sink.lost.lock().unwrap()[..], [(c, 3, CallKind::Send)]);
    wait_until(|| metrics.in_flight() == 0);
    assert_eq!(metrics.answers_lost(), 1);
    worker.shutdown();
}

#[test]
fn bad_options_are_refused() {
    let sink = Collect::default();
    for o in [
        RpcOptions {
            servers: "http://x".into(),
            ..opts(1)
        },
        RpcOptions {
            timeout: Duration::ZERO,
            ..opts(1)
        },
        opts(0),
        RpcOptions {
            node: "a\nb".into(),
            ..opts(1)
        },
    ] {
        let e = spawn_rpc_worker(o, sink.clone(), RpcMetrics::default())
            .err()
            .expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}

#[test]
fn replies_become_outcomes() {
    let msg = |payload: &'static [u8], headers: Option<HeaderMap>, status| Message {
        subject: "_INBOX.a.1".into(),
        reply: None,
        payload: Bytes::from_static(payload),
        headers,
        status,
        description: None,
        length: payload.len(),
    };
    assert_eq!(
        reply_outcome(msg(b"{\"a\":1}", None, None), 16),
        RpcOutcome::Reply(PubData {
            bytes: Bytes::from_static(b"{\"a\":1}"),
            is_json: true
        })
    );
    assert_eq!(
        reply_outcome(msg(b"\xff", None, None), 16),
        RpcOutcome::Reply(PubData {
            bytes: Bytes::from_static(b"\xff"),
            is_json: false
        })
    );
    assert_eq!(
        reply_outcome(msg(b"", None, Some(StatusCode::NO_RESPONDERS)), 16),
        RpcOutcome::NoResponders
    );
    let mut h = HeaderMap::new();
    h.insert(HEADER_ERROR, "400 bad input");
    assert_eq!(
        reply_outcome(msg(b"", Some(h), None), 16),
        RpcOutcome::Failed("400 bad input".into())
    );
    assert_eq!(
        reply_outcome(msg(b"0123456789abcdefX", None, None), 16),
        RpcOutcome::Failed("reply too large".into())
    );
    assert_eq!(cut("héllo", 2), "h");
    assert_eq!(cut("héllo", 3), "hé");
    assert_eq!(cut("ab", 5), "ab");
}

#[test]
fn headers_name_the_caller() {
    let h = headers(&req(RpcCall::Send), "edge-1").unwrap();
    assert_eq!(h.get(HEADER_USER).unwrap().as_str(), "ann");
    assert_eq!(h.get(HEADER_CLIENT).unwrap().as_str(), "c.0.1");
    assert_eq!(h.get(HEADER_NODE).unwrap().as_str(), "edge-1");
    let mut bad = req(RpcCall::Send);
    bad.user = Arc::from("a\r\nb");
    assert!(headers(&bad, "n").is_err());
    assert!(header_safe("ann") && !header_safe("a\nb"));
}
