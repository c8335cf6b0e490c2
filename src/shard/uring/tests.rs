//! Tests of the io_uring layer against real sockets.

use super::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

/// A connected pair: the server end (non-blocking, owned) and the
/// client.
fn pair() -> (OwnedFd, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    (OwnedFd::from(server), client)
}

fn conn(idx: u32) -> ConnRef {
    ConnRef { idx, generation: 1 }
}

/// Submits, then collects completions until `done` says so (or 5 s).
fn run(u: &mut Uring, mut done: impl FnMut(&mut Uring, Completion) -> bool) {
    run_all(u, |u, ev| ev.is_some_and(|ev| done(u, ev)));
}

/// [`run`], also asking `done` after completions that mean nothing to
/// the shard (`None`).
fn run_all(u: &mut Uring, mut done: impl FnMut(&mut Uring, Option<Completion>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut batch = Vec::new();
    loop {
        u.rearm_recvs();
        u.submit();
        assert!(Instant::now() < deadline, "timed out");
        u.wait(Duration::from_millis(50));
        batch.clear();
        u.reap(&mut batch, CQE_BATCH);
        for cqe in batch.drain(..) {
            let ev = u.on_cqe(cqe);
            if done(u, ev) {
                return;
            }
        }
    }
}

#[test]
fn unavailable_says_why_and_what_to_do() {
    let e = unavailable(io::Error::from_raw_os_error(libc::EPERM)).to_string();
    assert!(e.contains("io_uring_disabled"), "{e}");
    assert!(e.contains("set io = \"epoll\""), "{e}");
    assert!(e.contains("Linux 6.0"), "{e}");
    let e = unavailable(io::Error::from_raw_os_error(libc::ENOSYS)).to_string();
    assert!(e.contains("no io_uring"), "{e}");
    probe().expect("the test machine runs io_uring");
}

#[test]
fn a_closed_listener_is_held_until_its_accept_is_cancelled() {
    let mut u = Uring::new().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    let l = OwnedFd::from(l);
    u.arm_accept(l.as_raw_fd());
    u.submit();
    // One accepted connection, as the shard would see it.
    let _client = TcpStream::connect(addr).unwrap();
    run(&mut u, |_, ev| matches!(ev, Completion::Accepted(Ok(_))));
    // The drain hands the listener over: open until the cancel lands.
    u.cancel_accept(Some(l));
    assert!(u.closed_listener.is_some());
    run_all(&mut u, |u, _| !u.accept_armed);
    assert!(
        u.closed_listener.is_none(),
        "closed with the last completion"
    );
    // The cancel's own completion.
    if u.in_flight > 0 {
        run_all(&mut u, |u, _| u.in_flight == 0);
    }
    assert_eq!(u.stats.accept_errors, 0);
    // The socket closes as the kernel lets go of the operation.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "the listener stayed open");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn user_data_round_trips() {
    for (k, s) in [(Kind::Recv, 0), (Kind::Send, 12345), (Kind::Accept, 0)] {
        assert_eq!(kind_of(user_data(k, s)), Some((k, s)));
    }
    assert_eq!(kind_of(0), None);
    assert_ne!(TOKEN_RING, crate::shard::conn::TOKEN_LISTENER);
    assert_ne!(TOKEN_RING, crate::shard::conn::TOKEN_DOORBELL);
}

#[test]
fn received_bytes_come_in_buffers_that_go_back_to_the_ring() {
    let mut u = Uring::new().unwrap();
    let (fd, mut client) = pair();
    let c = conn(3);
    u.attach(c, fd.as_raw_fd());
    // Many more messages than buffers: each is given back after use, so
    // the ring never runs dry.
    let rounds = RECV_BUFFERS as usize * 2 + 3;
    let mut seen = Vec::new();
    for i in 0..rounds {
        let msg = format!("message {i};");
        client.write_all(msg.as_bytes()).unwrap();
        let mut got = 0;
        run(&mut u, |u, ev| match ev {
            Completion::Data { conn, bid, len } => {
                assert_eq!(conn, c);
                // SAFETY: the buffer holds `len` received bytes until
                // it is given back.
                let b = unsafe { std::slice::from_raw_parts(u.buffer(bid), len) };
                seen.extend_from_slice(b);
                u.give_back(bid);
                got += len;
                got == msg.len()
            }
            other => panic!("{other:?}"),
        });
    }
    let want: String = (0..rounds).map(|i| format!("message {i};")).collect();
    assert_eq!(seen, want.as_bytes());
    assert_eq!(u.stats.enobufs, 0);
    assert_eq!(u.stats.rearms, 0, "the one multishot recv stayed armed");
    // The peer's close is an end of stream.
    drop(client);
    run(
        &mut u,
        |_, ev| matches!(ev, Completion::Closed { conn, error: None } if conn == c),
    );
    u.detach(c, fd);
    assert_eq!(u.slots_in_use(), 0);
}

#[test]
fn an_empty_buffer_ring_ends_the_recv_and_the_rearm_reads_the_rest() {
    let mut u = Uring::new().unwrap();
    let (fd, mut client) = pair();
    let c = conn(0);
    u.attach(c, fd.as_raw_fd());
    // Keep every buffer: the kernel runs out and ends the recv with
    // ENOBUFS, leaving the rest in the socket.
    let chunk = vec![7u8; RECV_BUFFER_SIZE];
    let total = RECV_BUFFER_SIZE * (RECV_BUFFERS as usize + 8);
    let writer = std::thread::spawn(move || {
        for _ in 0..total / RECV_BUFFER_SIZE {
            client.write_all(&chunk).unwrap();
        }
        client
    });
    let mut held = Vec::new();
    let mut got = 0;
    run_all(&mut u, |u, ev| {
        if let Some(Completion::Data { bid, len, .. }) = ev {
            held.push(bid);
            got += len;
        }
        u.stats.enobufs > 0
    });
    assert!(held.len() <= RECV_BUFFERS as usize);
    assert!(!u.slots[0].recv, "ENOBUFS ended the multishot recv");
    for bid in held.drain(..) {
        u.give_back(bid);
    }
    // Re-armed at the next submit, the recv reads what waited.
    run(&mut u, |u, ev| {
        if let Completion::Data { bid, len, .. } = ev {
            got += len;
            u.give_back(bid);
        }
        got == total
    });
    assert!(u.stats.rearms >= 1);
    let _client = writer.join().unwrap();
    u.detach(c, fd);
}

#[test]
fn a_freed_connection_is_cancelled_and_closed_only_after_its_last_completion() {
    let mut u = Uring::new().unwrap();
    let (fd, mut client) = pair();
    let c = conn(9);
    u.attach(c, fd.as_raw_fd());
    u.submit();
    // Freed while its recv waits in the kernel: the socket stays open
    // (the slot holds it) until the cancel's completion came.
    u.detach(c, fd);
    assert_eq!(u.slots_in_use(), 1, "held until the recv completes");
    assert_eq!(u.send_state(c), SendState::Idle, "no longer attached");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut batch = Vec::new();
    while u.slots_in_use() > 0 {
        assert!(Instant::now() < deadline);
        u.submit();
        u.wait(Duration::from_millis(50));
        batch.clear();
        u.reap(&mut batch, CQE_BATCH);
        for cqe in batch.drain(..) {
            assert!(u.on_cqe(cqe).is_none(), "nothing reaches the shard");
        }
    }
    assert_eq!(u.in_flight, 0);
    // Now closed: the client reads the end of the stream.
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 8];
    assert_eq!(client.read(&mut b).unwrap(), 0);
}

#[test]
fn a_short_send_keeps_the_rest_for_the_next_write_in_order() {
    let mut u = Uring::new().unwrap();
    let (fd, client) = pair();
    let sock = socket2::SockRef::from(&fd);
    sock.set_send_buffer_size(4096).unwrap();
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(4096)
        .unwrap();
    let c = conn(1);
    u.attach(c, fd.as_raw_fd());
    let data: Vec<u8> = (0..SEND_MAX).map(|i| (i % 251) as u8).collect();
    let (a, b) = data.split_at(1000);
    let n = u.send_copy(c, &[IoSlice::new(a), IoSlice::new(b)]);
    assert_eq!(n, SEND_MAX, "copied whole: the caller consumes it now");
    assert_eq!(u.send_state(c), SendState::InFlight);
    assert_eq!(u.pending_bytes(c), SEND_MAX);
    // The client reads slowly on its own thread.
    let reader = std::thread::spawn(move || {
        let mut client = client;
        let mut got = Vec::new();
        let mut b = [0u8; 1024];
        while got.len() < SEND_MAX {
            let n = client.read(&mut b).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&b[..n]);
        }
        got
    });
    let mut written = 0;
    run(&mut u, |u, ev| match ev {
        Completion::Sent { conn, result } => {
            assert_eq!(conn, c);
            written += result.unwrap();
            match u.send_state(c) {
                SendState::Remainder => {
                    assert_eq!(u.pending_bytes(c), SEND_MAX - written);
                    u.send_remainder(c);
                    false
                }
                SendState::Idle => true,
                SendState::InFlight => panic!("one send in flight at most"),
            }
        }
        Completion::Data { bid, .. } => {
            u.give_back(bid);
            false
        }
        other => panic!("{other:?}"),
    });
    assert_eq!(written, SEND_MAX);
    assert_eq!(reader.join().unwrap(), data, "every byte, in order");
    u.detach(c, fd);
}
