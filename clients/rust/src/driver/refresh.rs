//! The connection token's refresh: scheduled before the credentials
//! expire (the server's `ttl`, else the token's `exp`), a new token from
//! the provider, then the protocol's `refresh` command.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::requests::PendingKind;
use super::{Driver, Link, fetch_token, unix_now};
use crate::codes;
use crate::error::{Error, ServerError};
use crate::jwt;
use crate::types::ClientEvent;

impl Driver {
    /// Schedules the refresh of credentials that expire (`ttl` seconds
    /// left by the server's count, else the token's `exp`).
    pub(super) fn schedule_refresh(&mut self, expires: bool, ttl: Option<u64>) {
        self.refresh_at = None;
        if !expires {
            return;
        }
        let remaining = match ttl {
            Some(s) => Duration::from_secs(s),
            None => match self.token.as_deref().and_then(jwt::expiry) {
                Some(exp) => Duration::from_secs(exp.saturating_sub(unix_now())),
                None => return,
            },
        };
        if self.opts.token_provider.is_none() {
            let msg = format!(
                "the connection token expires in {}s and there is no token provider to refresh it",
                remaining.as_secs()
            );
            self.emit(ClientEvent::Error(Error::Token(msg)));
            return;
        }
        self.refresh_at = Some(Instant::now() + jwt::refresh_delay(remaining));
    }

    pub(super) fn start_refresh(&mut self) {
        if let Some(p) = self.opts.token_provider.clone() {
            self.refresh_job = Some(Box::pin(fetch_token(p, self.opts.timeout)));
        }
    }

    pub(super) fn on_refresh_token(&mut self, token: Result<String, Error>) {
        match token {
            Ok(t) if t.is_empty() => {
                let reason = "unauthorized: the token provider gave no token".into();
                self.drop_link(codes::TOKEN_UNAVAILABLE, reason, false);
            }
            Ok(t) => {
                self.token = Some(t.clone());
                if matches!(self.link, Link::Open { .. }) {
                    self.enqueue("refresh", &json!({"token": t}), PendingKind::Refresh);
                }
            }
            Err(e) => {
                self.emit(ClientEvent::Error(e));
                self.retry_refresh();
            }
        }
    }

    pub(super) fn retry_refresh(&mut self) {
        if matches!(self.link, Link::Open { .. }) {
            let delay = self.backoff.delay(self.refresh_attempts, &mut self.rng);
            self.refresh_attempts = self.refresh_attempts.saturating_add(1);
            self.refresh_at = Some(Instant::now() + delay);
        }
    }

    pub(super) fn on_refresh_reply(&mut self, result: Result<Value, ServerError>) {
        match result {
            Ok(v) => {
                self.refresh_attempts = 0;
                let expires = v.get("expires").and_then(Value::as_bool).unwrap_or(false);
                let ttl = v.get("ttl").and_then(Value::as_u64);
                self.schedule_refresh(expires, ttl);
            }
            Err(e) => {
                let temporary = e.temporary;
                self.emit(ClientEvent::Error(Error::Server(e)));
                if temporary {
                    self.retry_refresh();
                }
            }
        }
    }
}
