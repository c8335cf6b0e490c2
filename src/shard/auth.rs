//! Who a connection is: `connect` under the configured `[auth]` mode (a
//! JWT checked on the shard, a Redis ticket redeemed by the ticket worker
//! while the connection waits), server-side subscriptions from the claims,
//! `refresh`, and the answers of the ticket worker.
//!
//! Verifying a JWT takes 2–70 µs (HS256 to ES256) and runs inline, as a
//! command; a ticket goes to the worker on a bounded queue and its answer
//! comes back through the inbox, so a shard never waits on Redis.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::core::{Shard, client_id};
use crate::auth::{AuthMode, TokenError, Verifier};
use crate::bridge::ticket::{TicketAnswer, TicketClaims, TicketError, TicketVerdict};
use crate::engine::codes::{CloseReason, ErrorCode};
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
        let cfg = self.session_cfg.clone();
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
        let Some(conn) = self.conn_mut(c) else {
            return;
        };
        conn.session
            .set_identity(user.clone(), claims.info, expires_at);
        // The wheel entry of the connect deadline comes due first and
        // moves on to the heartbeat's (or the expiry's) deadline.
        conn.session.accept_connect(now, &cfg);
        let config = self.ctx.config.clone();
        let ping = cfg.heartbeat.ping_interval;
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
