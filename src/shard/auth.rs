//! Who a connection is: `connect` under the configured `[auth]` mode (a
//! JWT checked on the shard, a Redis ticket redeemed by the ticket worker
//! while the connection waits), server-side subscriptions from the claims,
//! `refresh`, and the answers of the ticket worker.
//!
//! Verifying a JWT takes 2–70 µs (HS256 to ES256) and runs inline, as a
//! command; a ticket goes to the worker on a bounded queue and its answer
//! comes back through the inbox, so a shard never waits on Redis.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::core::{Shard, client_id, slot};
use crate::auth::{AuthMode, TokenError, Verifier};
use crate::bridge::ticket::{TicketAnswer, TicketClaims, TicketError, TicketVerdict};
use crate::engine::codes::{CloseReason, ErrorCode};
use crate::engine::namespace::SubscribeMode;
use crate::engine::subs::ConnRef;
use crate::engine::wire::{ConnectParams, ReplyBody};
use crate::sidecar::tickets::{TicketClient, TicketRequest};

/// What a shard needs to check credentials.
#[derive(Clone, Default)]
pub struct Credentials {
    /// JWT verification (modes `jwt` and `jwt_or_ticket`).
    pub verifier: Option<Arc<Verifier>>,
    /// The ticket worker (modes `ticket` and `jwt_or_ticket`).
    pub tickets: Option<TicketClient>,
}

/// Who a `connect` turned out to be.
struct Claims {
    user: Arc<str>,
    info: Option<Bytes>,
    /// Unix seconds.
    exp: Option<u64>,
    channels: Vec<String>,
}

/// Seconds since the Unix epoch (token times are in these).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The metric label of a ticket refusal.
fn ticket_label(e: TicketError) -> &'static str {
    match e {
        TicketError::Unknown => "ticket_unknown",
        TicketError::Malformed => "ticket_malformed",
        TicketError::Unavailable => "ticket_unavailable",
        TicketError::Busy => "ticket_busy",
        TicketError::Invalid => "ticket_invalid",
    }
}

/// The error reply for a token refused for now (the client may retry).
fn retry_code(e: &TokenError) -> ErrorCode {
    match e {
        TokenError::Expired => ErrorCode::TokenExpired,
        _ => ErrorCode::Internal,
    }
}

impl Shard {
    /// `connect`: checks the credentials the mode asks for, then accepts
    /// (or refuses: a temporary error leaves the client free to retry; bad
    /// credentials close with 3502).
    pub(crate) fn connect(&mut self, c: ConnRef, id: u32, params: ConnectParams<'_>) {
        let (mode, allow_anonymous) = {
            let auth = &self.ctx.config.auth;
            (auth.mode, auth.allow_anonymous)
        };
        if mode == AuthMode::None {
            // Unauthenticated node: the client's own `user` and `info`.
            let claims = Claims {
                user: params.user.as_deref().unwrap_or("").into(),
                info: params.info.map(Bytes::copy_from_slice),
                exp: None,
                channels: Vec::new(),
            };
            return self.accept(c, id, claims);
        }
        let Some(conn) = self.conn_mut(c) else {
            return;
        };
        let handshake_token = conn.session.take_token();
        let token = params.token.as_deref().or(handshake_token.as_deref());
        let jwt = matches!(mode, AuthMode::Jwt | AuthMode::JwtOrTicket);
        let ticket = matches!(mode, AuthMode::Ticket | AuthMode::JwtOrTicket);
        match (
            token.filter(|_| jwt),
            params.ticket.as_deref().filter(|_| ticket),
        ) {
            (Some(_), Some(_)) => {
                // Both: ambiguous. Refused, the client may try again.
                self.refuse_connect(c, id, ErrorCode::BadRequest);
            }
            (Some(token), None) => {
                let verifier = self.ctx.credentials.verifier.clone();
                let Some(verifier) = verifier else {
                    return self.refuse_connect(c, id, ErrorCode::Internal);
                };
                match verifier.verify_connect(token, unix_now()) {
                    Ok(claims) => {
                        let claims = Claims {
                            user: claims.sub.into(),
                            info: claims.info,
                            exp: claims.exp,
                            channels: claims.channels,
                        };
                        self.accept(c, id, claims);
                    }
                    Err(e) => self.bad_token(c, id, &e),
                }
            }
            (None, Some(ticket)) => {
                let Some(tickets) = self.ctx.credentials.tickets.clone() else {
                    return self.refuse_connect(c, id, ErrorCode::Internal);
                };
                let req = TicketRequest {
                    shard: self.id,
                    conn: c,
                    id,
                    ticket: ticket.to_owned(),
                };
                // Pending until the answer arrives (or the connect deadline).
                if let Err(refused) = tickets.redeem(req) {
                    self.on_ticket(refused.into_answer());
                }
            }
            (None, None) if allow_anonymous => {
                let claims = Claims {
                    user: "".into(),
                    info: None,
                    exp: None,
                    channels: Vec::new(),
                };
                self.accept(c, id, claims);
            }
            (None, None) => {
                self.metrics.auth_failure("missing");
                self.close_conn(c, CloseReason::InvalidToken);
            }
        }
    }

    /// A token refused: for now (expired, keys not loaded: error reply,
    /// counted) or for good (3502, counted by reason).
    fn bad_token(&mut self, c: ConnRef, id: u32, e: &TokenError) {
        self.metrics.auth_failure(e.label());
        if e.temporary() {
            self.refuse_connect(c, id, retry_code(e));
        } else {
            self.close_conn(c, CloseReason::InvalidToken);
        }
    }

    /// Refuses the `connect` in progress with an error reply; the client may
    /// send `connect` again before its deadline.
    fn refuse_connect(&mut self, c: ConnRef, id: u32, code: ErrorCode) {
        if let Some(conn) = self.conn_mut(c) {
            conn.session.refuse_connect();
        }
        self.reply(c, id, ReplyBody::Error(code));
    }

    /// The tick at which credentials expiring at `exp` (Unix seconds) end
    /// the connection: `exp` plus the refresh grace.
    fn expiry_tick(&self, exp: u64, now_unix: u64) -> u32 {
        let grace = self.ctx.config.auth.refresh_grace.as_secs();
        let left = exp.saturating_sub(now_unix).saturating_add(grace);
        self.now_tick
            .saturating_add(u32::try_from(left).unwrap_or(u32::MAX))
    }

    /// Accepts the `connect` of `c` as `claims`: the per-user connection
    /// cap of `[access]`, identity, the reply (with the credentials'
    /// lifetime), the user index, the personal channel and the claims'
    /// server-side subscriptions.
    fn accept(&mut self, c: ConnRef, id: u32, claims: Claims) {
        let now_unix = unix_now();
        let expires_at = claims.exp.map(|e| self.expiry_tick(e, now_unix));
        let ttl = claims
            .exp
            .map(|e| u32::try_from(e.saturating_sub(now_unix)).unwrap_or(u32::MAX));
        let client = client_id(self.node_nonce, self.id, c.generation);
        let now = self.now_tick;
        let pending = self
            .conn_mut(c)
            .is_some_and(|conn| conn.session.connect_pending());
        if !pending {
            return; // closed, or timed out, while its ticket was redeemed
        }
        let user = claims.user;
        if !self.count_user(c, id, &user) {
            return; // over the per-user cap: 106, then closed with 3504
        }
        // Field-level borrows: the session config is not cloned per connect.
        let Some(conn) = slot(&mut self.conns, c) else {
            return;
        };
        conn.session
            .set_identity(user.clone(), claims.info, expires_at);
        // The wheel entry of the connect deadline comes due first and
        // moves on to the heartbeat's (or the expiry's) deadline.
        conn.session.accept_connect(now, &self.session_cfg);
        let config = self.ctx.config.clone();
        let ping = self.session_cfg.heartbeat.ping_interval;
        self.reply(
            c,
            id,
            ReplyBody::Connect {
                client: &client,
                node: &config.node_name,
                ping,
                user: &user,
                ttl,
            },
        );
        // After the connect reply: the `subscribe` pushes follow it.
        self.flush_replies(c);
        if !user.is_empty() {
            self.index_user(&user, c);
            if config.personal_channel {
                let channel = format!("{}{}", config.personal_channel_prefix, user);
                self.server_subscribe(Instant::now(), c, &channel);
            }
        }
        for channel in &claims.channels {
            self.server_subscribe(Instant::now(), c, channel);
        }
    }

    /// The ticket worker's answer for a connection waiting in `connect`.
    pub(crate) fn on_ticket(&mut self, answer: TicketAnswer) {
        let TicketAnswer {
            conn: c,
            id,
            result,
        } = answer;
        match result {
            Ok(TicketClaims {
                sub,
                info,
                channels,
                exp,
            }) => {
                if exp.is_some_and(|e| e <= unix_now()) {
                    self.metrics.auth_failure("ticket_expired");
                    return self.close_conn(c, CloseReason::InvalidToken);
                }
                if sub.is_empty() && !self.ctx.config.auth.allow_anonymous {
                    self.metrics.auth_failure("anonymous");
                    return self.close_conn(c, CloseReason::InvalidToken);
                }
                let claims = Claims {
                    user: sub.into(),
                    info,
                    exp,
                    channels,
                };
                self.accept(c, id, claims);
            }
            Err(e) => {
                let pending = self
                    .conn_mut(c)
                    .is_some_and(|conn| conn.session.connect_pending());
                if !pending {
                    return;
                }
                self.metrics.auth_failure(ticket_label(e));
                match e.verdict() {
                    TicketVerdict::Close(reason) => self.close_conn(c, reason),
                    TicketVerdict::Retry(code) => {
                        self.refuse_connect(c, id, code);
                        self.flush_replies(c);
                    }
                }
            }
        }
        // What the client sent after `connect` runs now, in order.
        self.release_held(c);
        self.apply_closes();
    }

    /// `refresh {token}`: a new connection token, for the same user, moves
    /// the expiry. An expired token is refused for now (116); another
    /// user's, or a bad one, closes with 3502.
    pub(crate) fn refresh(&mut self, c: ConnRef, id: u32, token: &str) {
        let Some(conn) = self.conn_mut(c) else {
            return;
        };
        let user = conn.session.identity().map(|i| i.user.clone());
        let expires = conn.session.expires_at().is_some();
        let Some(verifier) = self.ctx.credentials.verifier.clone() else {
            // No JWTs on this node: credentials that do not expire need no
            // refresh; ones that do (a ticket's `exp`) cannot get one.
            let body = if expires {
                ReplyBody::Error(ErrorCode::PermissionDenied)
            } else {
                ReplyBody::Refresh {
                    ttl: None,
                    subscription: false,
                }
            };
            return self.reply(c, id, body);
        };
        let now_unix = unix_now();
        match verifier.verify_connect(token, now_unix) {
            Ok(claims) if *claims.sub != *user.as_deref().unwrap_or("") => {
                self.metrics.auth_failure("wrong_user");
                self.close_conn(c, CloseReason::InvalidToken);
            }
            Ok(claims) => {
                let expires_at = claims.exp.map(|e| self.expiry_tick(e, now_unix));
                let ttl = claims
                    .exp
                    .map(|e| u32::try_from(e.saturating_sub(now_unix)).unwrap_or(u32::MAX));
                // Looked at by the connection's next wheel deadline (at most
                // a ping interval away).
                if let Some(conn) = self.conn_mut(c) {
                    conn.session.set_expiry(expires_at);
                }
                self.reply(
                    c,
                    id,
                    ReplyBody::Refresh {
                        ttl,
                        subscription: false,
                    },
                );
            }
            Err(e) if e.temporary() => {
                self.metrics.auth_failure(e.label());
                self.reply(c, id, ReplyBody::Error(retry_code(&e)));
            }
            Err(e) => {
                self.metrics.auth_failure(e.label());
                self.close_conn(c, CloseReason::InvalidToken);
            }
        }
    }
}

/// When each token-granted subscription expires, soonest first. A
/// subscription whose token expired and was not renewed by `sub_refresh`
/// within the refresh grace is ended by the server (an `unsubscribe` push).
/// Entries of connections or subscriptions that ended meanwhile are dropped
/// when they come due.
#[derive(Default)]
pub(crate) struct SubExpiries {
    current: HashMap<(ConnRef, Arc<str>), u32>,
    due: BTreeMap<u32, Vec<(ConnRef, Arc<str>)>>,
}

impl SubExpiries {
    /// The subscription of `c` to `channel` expires at tick `at`.
    pub(crate) fn set(&mut self, c: ConnRef, channel: Arc<str>, at: u32) {
        self.current.insert((c, channel.clone()), at);
        self.due.entry(at).or_default().push((c, channel));
    }

    /// The subscription no longer expires.
    pub(crate) fn clear(&mut self, c: ConnRef, channel: &str) {
        self.current.remove(&(c, Arc::from(channel)));
    }

    /// The subscriptions whose expiry (still current) is at or before `now`.
    pub(crate) fn take_due(&mut self, now: u32) -> Vec<(ConnRef, Arc<str>)> {
        let mut expired = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if *entry.key() > now {
                break;
            }
            let (at, subs) = entry.remove_entry();
            for key in subs {
                if self.current.get(&key) == Some(&at) {
                    self.current.remove(&key);
                    expired.push(key);
                }
            }
        }
        expired
    }
}

impl Shard {
    /// Whether `c` may subscribe to `channel` under its namespace's
    /// `subscribe` mode. `Ok(Some(tick))`: allowed by a subscription token
    /// expiring then (plus the refresh grace). An unknown namespace is left
    /// to the router (error 102).
    pub(crate) fn subscribe_permission(
        &mut self,
        c: ConnRef,
        channel: &str,
        token: Option<&str>,
    ) -> Result<Option<u32>, ErrorCode> {
        let mode = match self.ctx.namespaces.resolve(channel) {
            // Unknown namespace: the router's answer (102). Public: nothing
            // to check, nothing looked up.
            None => return Ok(None),
            Some((_, o)) if o.subscribe == SubscribeMode::Public => return Ok(None),
            Some((_, o)) => o.subscribe,
        };
        let user: Arc<str> = self
            .conn_mut(c)
            .and_then(|conn| conn.session.identity().map(|i| i.user.clone()))
            .unwrap_or_else(|| "".into());
        match mode {
            SubscribeMode::Public => Ok(None),
            SubscribeMode::Authenticated if user.is_empty() => Err(ErrorCode::PermissionDenied),
            SubscribeMode::Authenticated => Ok(None),
            SubscribeMode::Server => Err(ErrorCode::PermissionDenied),
            SubscribeMode::Token => {
                let now_unix = unix_now();
                let exp = self.check_sub_token(&user, channel, token, now_unix)?;
                Ok(exp.map(|e| self.expiry_tick(e, now_unix)))
            }
        }
    }

    /// Checks a subscription token for `user` and `channel`; its `exp`.
    fn check_sub_token(
        &self,
        user: &str,
        channel: &str,
        token: Option<&str>,
        now_unix: u64,
    ) -> Result<Option<u64>, ErrorCode> {
        let (Some(token), Some(verifier)) = (token, self.ctx.credentials.verifier.as_ref()) else {
            self.metrics.auth_failure("missing");
            return Err(ErrorCode::PermissionDenied);
        };
        let claims = verifier
            .verify_subscribe(token, now_unix)
            .and_then(|claims| claims.check(user, channel).map(|()| claims));
        match claims {
            Ok(claims) => Ok(claims.exp),
            Err(e) => {
                self.metrics.auth_failure(e.label());
                Err(if e.temporary() {
                    retry_code(&e)
                } else {
                    ErrorCode::PermissionDenied
                })
            }
        }
    }

    /// `sub_refresh {channel, token}`: a new subscription token moves the
    /// subscription's expiry.
    pub(crate) fn sub_refresh(&mut self, c: ConnRef, id: u32, channel: &str, token: &str) {
        if !self.router.is_subscribed(c, channel) {
            return self.reply(c, id, ReplyBody::Error(ErrorCode::NotSubscribed));
        }
        let token_mode = self
            .ctx
            .namespaces
            .resolve(channel)
            .is_some_and(|(_, o)| o.subscribe == SubscribeMode::Token);
        if !token_mode {
            // Not a token channel: the subscription never expires.
            let body = ReplyBody::Refresh {
                ttl: None,
                subscription: true,
            };
            return self.reply(c, id, body);
        }
        let user: Arc<str> = self
            .conn_mut(c)
            .and_then(|conn| conn.session.identity().map(|i| i.user.clone()))
            .unwrap_or_else(|| "".into());
        let now_unix = unix_now();
        match self.check_sub_token(&user, channel, Some(token), now_unix) {
            Ok(exp) => {
                match exp {
                    Some(e) => {
                        let at = self.expiry_tick(e, now_unix);
                        self.sub_expiries.set(c, channel.into(), at);
                    }
                    None => self.sub_expiries.clear(c, channel),
                }
                let ttl =
                    exp.map(|e| u32::try_from(e.saturating_sub(now_unix)).unwrap_or(u32::MAX));
                let body = ReplyBody::Refresh {
                    ttl,
                    subscription: true,
                };
                self.reply(c, id, body);
            }
            Err(code) => self.reply(c, id, ReplyBody::Error(code)),
        }
    }

    /// Ends the token-granted subscriptions that expired unrenewed (once per
    /// tick).
    pub(crate) fn expire_subscriptions(&mut self) {
        let due = self.sub_expiries.take_due(self.now_tick);
        if due.is_empty() {
            return;
        }
        let now = Instant::now();
        for (c, channel) in due {
            self.server_unsubscribe(now, c, &channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_current_expiry_of_a_subscription_ends_it() {
        let c = |idx| ConnRef { idx, generation: 1 };
        let mut x = SubExpiries::default();
        x.set(c(1), "p:a".into(), 10);
        x.set(c(2), "p:a".into(), 12);
        x.set(c(1), "p:b".into(), 11);
        // Renewed: the old entry at 10 no longer counts.
        x.set(c(1), "p:a".into(), 20);
        // Cleared: never expires.
        x.clear(c(1), "p:b");
        assert!(x.take_due(9).is_empty());
        assert!(x.take_due(11).is_empty(), "renewed and cleared");
        assert_eq!(x.take_due(12), vec![(c(2), Arc::from("p:a"))]);
        assert!(x.take_due(19).is_empty());
        assert_eq!(x.take_due(25), vec![(c(1), Arc::from("p:a"))]);
        assert!(
            x.current.is_empty() && x.due.is_empty(),
            "nothing left behind"
        );
    }
}
