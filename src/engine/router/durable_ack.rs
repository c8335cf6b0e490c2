//! `publish {…, durable_ack: true}` in a `durable` namespace: the answer
//! waits at the channel's home until the durable sink (or its synced
//! spill) confirmed the publication's event.
//!
//! A wait opens before the publication is tried, with a token the event
//! carries to the sink ([`Output::durable`]); two things then close it, in
//! either order: the publication's own answer (its offset, or an error),
//! and the sink's outcome ([`Router::durable_confirmed`]). The publisher
//! gets the offset when both are in and the sink confirmed, error 123 when
//! the sink did not (the publication is out: it was accepted and
//! delivered), and the publication's own error when it failed. A
//! publication that made no event (a repeated idempotency key, a refusal)
//! is answered at once. Waits are bounded by the sink's queue and spill
//! (each one is an event the sink holds), and the sink answers every event
//! it took, once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::msg::Answer;
use super::{Output, ReplyTo, Router};
use crate::engine::codes::ErrorCode;

/// One publisher waiting.
#[derive(Debug)]
struct Wait {
    channel: Arc<str>,
    from: usize,
    reply_to: ReplyTo,
    /// The sink took the event: its outcome will come.
    emitted: bool,
    /// The publication's answer, once known.
    answer: Option<Answer>,
    /// The sink's outcome, once known.
    confirmed: Option<bool>,
}

/// An answer to send now.
pub(super) struct Ready {
    pub(super) channel: Arc<str>,
    pub(super) from: usize,
    pub(super) reply_to: ReplyTo,
    pub(super) answer: Answer,
}

/// The home's waiting publishers, by token.
#[derive(Debug, Default)]
pub(super) struct DurableWaits {
    next: u64,
    waits: HashMap<u64, Wait>,
}

impl DurableWaits {
    /// Opens a wait for the publication about to be tried; its token.
    pub(super) fn open(&mut self, channel: Arc<str>, from: usize, reply_to: ReplyTo) -> u64 {
        self.next += 1;
        self.waits.insert(
            self.next,
            Wait {
                channel,
                from,
                reply_to,
                emitted: false,
                answer: None,
                confirmed: None,
            },
        );
        self.next
    }

    /// The sink took `token`'s event.
    pub(super) fn emitted(&mut self, token: u64) {
        if let Some(w) = self.waits.get_mut(&token) {
            w.emitted = true;
        }
    }

    /// The publication's answer; the answer to send if the wait is over.
    pub(super) fn answered(&mut self, token: u64, answer: Answer) -> Option<Ready> {
        let w = self.waits.get_mut(&token)?;
        w.answer = Some(answer);
        self.ready(token)
    }

    /// The sink's outcome for `token`'s event; the answer to send if the
    /// wait is over.
    pub(super) fn confirmed(&mut self, token: u64, ok: bool) -> Option<Ready> {
        let w = self.waits.get_mut(&token)?;
        w.confirmed = Some(ok);
        self.ready(token)
    }

    /// Whether wait `token` is open.
    pub(super) fn is_waiting(&self, token: u64) -> bool {
        self.waits.contains_key(&token)
    }

    /// Publishers waiting now.
    pub(super) fn len(&self) -> usize {
        self.waits.len()
    }

    fn ready(&mut self, token: u64) -> Option<Ready> {
        let w = self.waits.get(&token)?;
        let answer = match (&w.answer, w.confirmed) {
            (None, _) => return None,
            // The publication failed (or made no event): nothing to wait
            // for, whatever the sink says.
            (Some(a), _) if !w.emitted || !matches!(a, Answer::Publish { .. }) => a.clone(),
            (Some(_), None) => return None,
            (Some(a), Some(true)) => a.clone(),
            (Some(_), Some(false)) => Answer::Error(ErrorCode::NotDurable),
        };
        let w = self.waits.remove(&token)?;
        Some(Ready {
            channel: w.channel,
            from: w.from,
            reply_to: w.reply_to,
            answer,
        })
    }
}

impl Router {
    /// Answers a publication that may have a durable wait (`token`): at
    /// once without one, else when the wait is over.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn answer_publish(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        from: usize,
        reply_to: ReplyTo,
        token: Option<u64>,
        answer: Answer,
        out: &mut impl Output,
    ) {
        let Some(token) = token else {
            return self.answer(now, channel, from, reply_to, answer, out);
        };
        if let Some(r) = self.durable_waits.answered(token, answer) {
            self.answer(now, &r.channel, r.from, r.reply_to, r.answer, out);
        }
    }

    /// The durable sink's outcome for the event of wait `token`
    /// (`ok`: the sink, or its synced spill, has it). Tokens no wait
    /// knows (answered already, or the event was refused) are ignored.
    pub fn durable_confirmed(&mut self, now: Instant, token: u64, ok: bool, out: &mut impl Output) {
        if !self.durable_waits.is_waiting(token) {
            return;
        }
        if !ok {
            self.stats.durable_unconfirmed += 1;
        }
        if let Some(r) = self.durable_waits.confirmed(token, ok) {
            self.answer(now, &r.channel, r.from, r.reply_to, r.answer, out);
        }
    }

    /// Publishers waiting for their durable confirmation.
    pub fn durable_waiting(&self) -> usize {
        self.durable_waits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::subs::ConnRef;

    fn waits() -> (DurableWaits, u64) {
        let mut w = DurableWaits::default();
        let reply_to = ReplyTo {
            conn: ConnRef {
                idx: 1,
                generation: 1,
            },
            cmd_id: 7,
        };
        let t = w.open(Arc::from("c"), 0, reply_to);
        (w, t)
    }

    fn offset(r: Option<Ready>) -> Option<Answer> {
        r.map(|r| r.answer)
    }

    #[test]
    fn the_answer_waits_for_both_in_either_order() {
        let (mut w, t) = waits();
        w.emitted(t);
        assert!(w.answered(t, Answer::Publish { offset: 3 }).is_none());
        assert_eq!(
            offset(w.confirmed(t, true)),
            Some(Answer::Publish { offset: 3 })
        );
        assert_eq!(w.len(), 0);

        let (mut w, t) = waits();
        w.emitted(t);
        assert!(w.confirmed(t, true).is_none());
        assert_eq!(
            offset(w.answered(t, Answer::Publish { offset: 4 })),
            Some(Answer::Publish { offset: 4 })
        );
        assert!(w.confirmed(t, true).is_none(), "answered once");
    }

    #[test]
    fn an_unconfirmed_event_is_123_and_a_failed_publication_its_own_error() {
        let (mut w, t) = waits();
        w.emitted(t);
        w.answered(t, Answer::Publish { offset: 1 });
        assert_eq!(
            offset(w.confirmed(t, false)),
            Some(Answer::Error(ErrorCode::NotDurable))
        );
        let (mut w, t) = waits();
        w.emitted(t);
        assert_eq!(
            offset(w.answered(t, Answer::Error(ErrorCode::Internal))),
            Some(Answer::Error(ErrorCode::Internal))
        );
        // The sink's late outcome finds no wait.
        assert!(w.confirmed(t, true).is_none());
    }

    #[test]
    fn a_publication_without_an_event_is_answered_at_once() {
        let (mut w, t) = waits();
        assert_eq!(
            offset(w.answered(t, Answer::Publish { offset: 9 })),
            Some(Answer::Publish { offset: 9 })
        );
        assert_eq!(w.len(), 0);
    }
}
