//! Thin, checked wrappers over the Linux calls the shard's socket path
//! uses: the per-shard epoll readiness set, accept4, read, writev,
//! shutdown, getpeername (the io_uring path's own calls are in
//! `shard::uring`). Each `unsafe` block states why it is sound; the end-to-end
//! tests exercise every one of them.

use std::io::{self, IoSlice};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// An epoll instance holding every socket of one shard.
pub struct Epoll {
    fd: OwnedFd,
}

/// Readiness bits for client sockets: edge-triggered read, write and
/// peer-hangup.
pub const CONN_EVENTS: u32 =
    (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
/// Readiness bits for the listener and the doorbell (level-triggered).
pub const LEVEL_IN: u32 = libc::EPOLLIN as u32;

impl Epoll {
    /// A new epoll instance.
    pub fn new() -> io::Result<Self> {
        // SAFETY: no pointer arguments; the result is checked.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` is fresh and owned by nobody else.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The epoll descriptor (to wait on its readiness).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Gives up ownership of the descriptor (the runtime wrapper closes it).
    pub fn into_raw_fd(self) -> RawFd {
        std::os::fd::IntoRawFd::into_raw_fd(self.fd)
    }

    /// Watches `fd` for `events`, tagging its events with `token`.
    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Stops watching `fd` (closing a descriptor also does this).
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: a null event pointer is allowed for EPOLL_CTL_DEL.
        cvt(unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        })?;
        Ok(())
    }

    /// Collects ready events without blocking.
    pub fn poll(&self, events: &mut Vec<libc::epoll_event>) -> io::Result<usize> {
        events.clear();
        let cap = events.capacity() as libc::c_int;
        // SAFETY: the kernel writes at most `cap` events into the vector's
        // spare capacity; `set_len` then exposes exactly those it wrote.
        let n = cvt(unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), cap, 0) });
        match n {
            Ok(n) => {
                // SAFETY: see above; 0 <= n <= cap.
                unsafe { events.set_len(n as usize) };
                Ok(n as usize)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// Socket options a listener passes on to the sockets it accepts.
#[derive(Debug, Clone, Copy)]
pub struct ListenOpts {
    /// Accept queue length (the kernel caps it at `net.core.somaxconn`).
    pub backlog: u32,
    /// TCP_DEFER_ACCEPT: a connection is handed to `accept` only once its
    /// first bytes arrive (or after this long); zero turns it off.
    pub defer_accept: Duration,
    /// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged
    /// before the kernel drops the connection.
    pub user_timeout: Duration,
}

/// A non-blocking SO_REUSEPORT listener (one per shard on the same
/// address; the kernel spreads connections between them).
pub fn listener(addr: SocketAddr, opts: ListenOpts) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.set_cloexec(true)?;
    // Accepted sockets inherit TCP_NODELAY and TCP_USER_TIMEOUT from the
    // listener on Linux, which saves two setsockopt calls per connection.
    // Frames are already batched per loop turn, so Nagle would only add
    // latency. The user timeout reclaims sockets whose peer vanished with
    // data in flight as soon as the heartbeat would, without waiting for
    // the kernel's ~15 minutes of retransmissions.
    s.set_nodelay(true)?;
    s.set_tcp_user_timeout(Some(opts.user_timeout).filter(|d| !d.is_zero()))?;
    // A socket that connects and stays silent never reaches wsedge: no
    // descriptor, no slot, no wakeup; and the upgrade request is already
    // there when `accept` returns.
    let secs = opts.defer_accept.as_secs().min(i32::MAX as u64) as libc::c_int;
    // SAFETY: a valid socket, option and int-sized value.
    cvt(unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    s.bind(&addr.into())?;
    s.listen(opts.backlog.min(i32::MAX as u32) as i32)?;
    Ok(s)
}

/// A listener for the node's HTTP sidecars (admin, server API): like the
/// client listener, `SO_REUSEPORT`, so a new process with the same
/// configuration can start beside the old one during a restart (docs/
/// OPERATIONS.md, "Restart without downtime").
pub fn http_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_cloexec(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Accepts one connection as a non-blocking, close-on-exec socket
/// (TCP_NODELAY comes from the listener).
pub fn accept(listener: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed; the result is checked.
    let fd = cvt(unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// [`accept`], also giving the peer's address (IPv4, IPv6, or IPv4-mapped
/// IPv6 on a dual-stack listener; `None` for another family).
pub fn accept_with_peer(listener: RawFd) -> io::Result<(OwnedFd, Option<IpAddr>)> {
    // SAFETY: a zeroed sockaddr_storage is a valid (empty) address buffer.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `addr`, which is
    // that large, and stores the real length in `len`; the result is
    // checked.
    let fd = cvt(unsafe {
        libc::accept4(
            listener,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok((fd, peer_ip(&addr, len)))
}

/// The peer's IP address of a connected socket (`getpeername`), for
/// sockets accepted without it (io_uring's multishot accept gives none).
pub fn peer_of(fd: RawFd) -> Option<IpAddr> {
    // SAFETY: a zeroed sockaddr_storage is a valid (empty) address buffer.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `addr`, which is
    // that large, and stores the real length in `len`.
    let r = unsafe {
        libc::getpeername(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return None;
    }
    peer_ip(&addr, len)
}

/// The IP address in a `sockaddr_storage` the kernel filled with `len`
/// bytes.
fn peer_ip(addr: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<IpAddr> {
    let len = len as usize;
    match libc::c_int::from(addr.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // the kernel wrote at least that many bytes; sockaddr_storage
            // is aligned for every address type.
            let sin =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// Reads into `buf`; `Ok(0)` is end of stream.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// Writes the slices in order (one `writev`).
pub fn writev(fd: RawFd, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: IoSlice is ABI-compatible with iovec (std guarantees it);
    // the kernel only reads the slices, which outlive the call.
    cvt_size(unsafe { libc::writev(fd, iov.as_ptr().cast(), iov.len() as libc::c_int) })
}

/// Plain write of one buffer (used for refusals outside the shard path).
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
    cvt_size(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
}

/// Half-closes the write side (sends FIN after queued data).
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: no pointers; an error (already closed) is irrelevant here.
    unsafe {
        libc::shutdown(fd, libc::SHUT_WR);
    }
}

/// Bytes written to the socket that the peer has not acknowledged yet
/// (SIOCOUTQ: sent but unacknowledged plus not yet sent); 0 if unknown.
pub fn unacked_bytes(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ's value on sockets) stores one int in `n`.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    if r < 0 { 0 } else { n.max(0) as usize }
}

/// Whether an I/O error means "try again later".
pub fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// The process's resident set size in bytes (from /proc/self/statm).
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

/// Descriptors this process has open: the size Linux 6.2+ gives
/// `/proc/self/fd`, else a count of its entries (one directory read, so
/// call it at a scrape, not on a shard).
pub fn open_fds() -> Option<u64> {
    let size = std::fs::metadata("/proc/self/fd").ok()?.len();
    if size > 0 {
        return Some(size);
    }
    // The listing's own descriptor is among the entries.
    let entries = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(entries.saturating_sub(1))
}

/// The soft open-file limit of this process.
pub fn nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_cur
    } else {
        1024
    }
}

/// Opens /dev/null as a spare descriptor, kept to be able to accept (and
/// refuse) a connection when the process is out of descriptors.
pub fn spare_fd() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_are_nonblocking_with_nodelay_and_user_timeout() {
        let opts = ListenOpts {
            backlog: 16,
            defer_accept: Duration::from_secs(5),
            user_timeout: Duration::from_secs(35),
        };
        let l = listener("127.0.0.1:0".parse().unwrap(), opts).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        // With TCP_DEFER_ACCEPT nothing is acceptable before data arrives.
        std::thread::sleep(Duration::from_millis(50));
        let e = accept(l.as_raw_fd()).unwrap_err();
        assert!(would_block(&e), "deferred until the first bytes: {e}");
        std::io::Write::write_all(&mut client, b"G").unwrap();
        let fd = loop {
            match accept(l.as_raw_fd()) {
                Ok(fd) => break fd,
                Err(e) if would_block(&e) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        let s = Socket::from(fd);
        assert!(
            s.nodelay().unwrap(),
            "TCP_NODELAY inherited from the listener"
        );
        assert_eq!(
            s.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(35)),
            "TCP_USER_TIMEOUT inherited from the listener"
        );
        let mut buf = [0u8; 8];
        assert_eq!(read(s.as_raw_fd(), &mut buf).unwrap(), 1);
        let e = read(s.as_raw_fd(), &mut buf).unwrap_err();
        assert!(would_block(&e), "non-blocking");
    }

    #[test]
    fn the_peer_address_comes_with_the_accepted_socket() {
        let accept_one = |l: &std::net::TcpListener| loop {
            match accept_with_peer(l.as_raw_fd()) {
                Ok(got) => break got,
                Err(e) if would_block(&e) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        v4.set_nonblocking(true).unwrap();
        let _c = std::net::TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        let (fd, peer) = accept_one(&v4);
        assert_eq!(peer, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(peer_of(fd.as_raw_fd()), peer, "getpeername agrees");
        assert_eq!(peer_of(-1), None);
        // IPv6 where the machine has it (a dual-stack listener sees an
        // IPv4 client as ::ffff:a.b.c.d; the access rules map it back).
        if let Ok(v6) = std::net::TcpListener::bind("[::1]:0") {
            v6.set_nonblocking(true).unwrap();
            let _c = std::net::TcpStream::connect(v6.local_addr().unwrap()).unwrap();
            let (_fd, peer) = accept_one(&v6);
            assert_eq!(peer, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        }
        // SAFETY: an all-zero sockaddr_storage is a valid value.
        let zero: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        assert_eq!(peer_ip(&zero, 0), None, "no family: no address");
    }

    #[test]
    fn unacked_bytes_counts_what_a_peer_that_does_not_read_left_behind() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let reader = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        reader.set_recv_buffer_size(4096).unwrap();
        reader.connect(&l.local_addr().unwrap().into()).unwrap();
        let (writer, _) = l.accept().unwrap();
        writer.set_nonblocking(true).unwrap();
        assert_eq!(unacked_bytes(writer.as_raw_fd()), 0);
        let chunk = [7u8; 65536];
        let mut sent = 0;
        while let Ok(n) = write(writer.as_raw_fd(), &chunk) {
            sent += n;
        }
        let left = unacked_bytes(writer.as_raw_fd());
        assert!(
            left > 0 && left < sent,
            "{left} of {sent} bytes unacknowledged"
        );
        assert_eq!(unacked_bytes(-1), 0, "unknown is 0");
    }
}
