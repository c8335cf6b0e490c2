//! A connection's state above the WebSocket layer, and what each command
//! means for it: whether it has connected, its command rate, and which
//! commands it may send yet. The [`Session`](super::Session) holds one
//! [`Commands`]; the shell carries out the [`Step`] every command gives, and
//! the channel commands go on to the router.

use crate::engine::codes::ErrorCode;
use crate::engine::limits::{Admit, admit};
use crate::engine::wire::{ConnectParams, Method, ReplyBody};

/// A connection's command-level state, in eight bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Commands {
    /// The command rate window: its tick and the commands counted in it.
    window: u32,
    count: u16,
    state: Connect,
}

/// Where a connection is with `connect`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Connect {
    /// Not yet (or refused with a temporary error: it may try again).
    #[default]
    No,
    /// Asked; its credentials are being checked (a ticket in Redis).
    Pending,
    /// Accepted.
    Yes,
}

/// What one command asks of the shell.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Answer it with this at once.
    Reply(ReplyBody<'static>),
    /// `connect` accepted: answer with the connection's identity (client
    /// id, node, ping interval, and the user it gives).
    Connect(ConnectParams<'a>),
    /// A channel command: the router's.
    Channel(Method<'a>),
    /// Flooding: send the replies already batched, then close with 3503.
    Flood,
}

impl Commands {
    /// Whether `connect` was accepted.
    pub fn connected(&self) -> bool {
        self.state == Connect::Yes
    }

    /// Whether a `connect` is waiting for its credentials to be checked.
    pub fn pending(&self) -> bool {
        self.state == Connect::Pending
    }

    /// The credentials of the `connect` in progress were accepted.
    pub fn accept(&mut self) {
        self.state = Connect::Yes;
    }

    /// The `connect` in progress was refused with a temporary error: the
    /// client may send `connect` again.
    pub fn refuse(&mut self) {
        self.state = Connect::No;
    }

    /// One command (or the error its decoding gave), at tick `now`, with
    /// `limit` commands allowed per second (0 = unlimited).
    pub fn command<'a>(
        &mut self,
        now: u32,
        limit: u32,
        method: Result<Method<'a>, ErrorCode>,
    ) -> Step<'a> {
        match admit(&mut self.window, &mut self.count, now, limit) {
            Admit::Run => {}
            Admit::Refuse => return Step::Reply(ReplyBody::Error(ErrorCode::TooManyRequests)),
            Admit::Disconnect => return Step::Flood,
        }
        let method = match method {
            Ok(m) => m,
            Err(code) => return Step::Reply(ReplyBody::Error(code)),
        };
        match (method, self.state) {
            // Also while one is being checked.
            (Method::Connect(_), Connect::Yes | Connect::Pending) => {
                Step::Reply(ReplyBody::Error(ErrorCode::AlreadyConnected))
            }
            (Method::Connect(params), Connect::No) => {
                self.state = Connect::Pending;
                Step::Connect(params)
            }
            (_, Connect::No | Connect::Pending) => {
                Step::Reply(ReplyBody::Error(ErrorCode::NotConnected))
            }
            (method, Connect::Yes) => match method {
                Method::Ping => Step::Reply(ReplyBody::Ping),
                channel => Step::Channel(channel),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn sub(channel: &str) -> Method<'_> {
        Method::Subscribe {
            channel: Cow::Borrowed(channel),
            recover: false,
            since: None,
            token: None,
        }
    }

    #[test]
    fn eight_bytes() {
        assert_eq!(std::mem::size_of::<Commands>(), 8);
    }

    #[test]
    fn connect_first_then_once() {
        let mut s = Commands::default();
        assert_eq!(
            s.command(0, 0, Ok(sub("a"))),
            Step::Reply(ReplyBody::Error(ErrorCode::NotConnected))
        );
        assert_eq!(
            s.command(0, 0, Ok(Method::Ping)),
            Step::Reply(ReplyBody::Error(ErrorCode::NotConnected))
        );
        assert!(matches!(
            s.command(0, 0, Ok(Method::Connect(ConnectParams::default()))),
            Step::Connect(_)
        ));
        assert!(s.pending() && !s.connected());
        // While its credentials are checked: nothing else, no second one.
        assert_eq!(
            s.command(0, 0, Ok(Method::Ping)),
            Step::Reply(ReplyBody::Error(ErrorCode::NotConnected))
        );
        assert_eq!(
            s.command(0, 0, Ok(Method::Connect(ConnectParams::default()))),
            Step::Reply(ReplyBody::Error(ErrorCode::AlreadyConnected))
        );
        // Refused for now: it may try again.
        s.refuse();
        assert!(matches!(
            s.command(0, 0, Ok(Method::Connect(ConnectParams::default()))),
            Step::Connect(_)
        ));
        s.accept();
        assert!(s.connected());
        assert_eq!(
            s.command(0, 0, Ok(Method::Connect(ConnectParams::default()))),
            Step::Reply(ReplyBody::Error(ErrorCode::AlreadyConnected))
        );
        assert_eq!(
            s.command(0, 0, Ok(Method::Ping)),
            Step::Reply(ReplyBody::Ping)
        );
        assert_eq!(s.command(0, 0, Ok(sub("a"))), Step::Channel(sub("a")));
        assert_eq!(
            s.command(0, 0, Err(ErrorCode::UnknownMethod)),
            Step::Reply(ReplyBody::Error(ErrorCode::UnknownMethod))
        );
    }

    #[test]
    fn the_rate_limit_refuses_then_disconnects_per_second() {
        let mut s = Commands::default();
        s.command(5, 3, Ok(Method::Connect(ConnectParams::default())));
        s.accept();
        assert_eq!(
            s.command(5, 3, Ok(Method::Ping)),
            Step::Reply(ReplyBody::Ping)
        );
        assert_eq!(
            s.command(5, 3, Ok(Method::Ping)),
            Step::Reply(ReplyBody::Ping)
        );
        for _ in 0..3 {
            assert_eq!(
                s.command(5, 3, Ok(Method::Ping)),
                Step::Reply(ReplyBody::Error(ErrorCode::TooManyRequests))
            );
        }
        assert_eq!(s.command(5, 3, Ok(Method::Ping)), Step::Flood);
        // A new second starts a new window.
        assert_eq!(
            s.command(6, 3, Ok(Method::Ping)),
            Step::Reply(ReplyBody::Ping)
        );
        // Counted even when the command is malformed.
        let mut t = Commands::default();
        for _ in 0..2 {
            t.command(0, 1, Err(ErrorCode::BadRequest));
        }
        assert_eq!(t.command(0, 1, Err(ErrorCode::BadRequest)), Step::Flood);
    }
}
