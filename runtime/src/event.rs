//! The audit event format producers write: an [`EventDraft`] built at the call site, completed
//! into an [`AuditEvent`] by the outbox, which assigns the id, sequence number and time.

use std::collections::BTreeMap;
use std::time::SystemTime;

use trias_proto::v1::{AuditEvent, Decision, EventKind};

use crate::clock::timestamp;

/// The attribute holding the W3C span id of the request that caused an event (beside its
/// `trace_id`).
pub const SPAN_ID: &str = "span_id";

/// An audit event before the outbox has given it an id, a sequence number and a time.
///
/// Never put bearer values (tokens, secrets, codes) in any field: only token ids and hashes.
#[derive(Debug, Clone, Default)]
pub struct EventDraft {
    pub kind: EventKind,
    pub subject: String,
    pub client_id: String,
    pub token_id: String,
    pub family_id: String,
    pub audience: String,
    pub action: String,
    pub resource: String,
    pub decision: Decision,
    pub reason: String,
    pub trace_id: String,
    pub attributes: BTreeMap<String, String>,
}

macro_rules! string_setters {
    ($($(#[$doc:meta])* $field:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            #[must_use]
            pub fn $field(mut self, value: impl Into<String>) -> Self {
                self.$field = value.into();
                self
            }
        )*
    };
}

impl EventDraft {
    /// An empty event of the given kind.
    /// An empty event of the given kind, carrying the trace and span ids of the current
    /// span if it is traced (`trace_id`, and the `span_id` attribute), so the auditor's
    /// span that logs it joins the same trace.
    pub fn new(kind: EventKind) -> Self {
        let mut draft = Self {
            kind,
            ..Self::default()
        };
        if let Some((trace_id, span_id)) = crate::trace::current_ids() {
            draft.trace_id = trace_id;
            draft.attributes.insert(SPAN_ID.to_owned(), span_id);
        }
        draft
    }

    string_setters! {
        /// The user or client the event is about (token `sub`).
        subject,
        /// The OAuth client involved.
        client_id,
        /// The access token's `jti`.
        token_id,
        /// The refresh-token family id (token `sid`).
        family_id,
        /// The audience (resource server) involved.
        audience,
        /// The action checked or performed.
        action,
        /// The object acted upon, e.g. `payment/7`.
        resource,
        /// Machine-readable reason, e.g. `invalid_grant` or `duty_conflict`.
        reason,
        /// W3C trace id of the request that caused the event.
        trace_id,
    }

    /// Sets the decision.
    #[must_use]
    pub fn decision(mut self, decision: Decision) -> Self {
        self.decision = decision;
        self
    }

    /// Adds a further detail; never a secret.
    #[must_use]
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }

    /// Marks the event as an allow decision.
    #[must_use]
    pub fn allow(self) -> Self {
        self.decision(Decision::Allow)
    }

    /// Marks the event as a deny decision with its reason.
    #[must_use]
    pub fn deny(self, reason: impl Into<String>) -> Self {
        self.decision(Decision::Deny).reason(reason)
    }

    /// Completes the draft into the event that is stored and shipped.
    pub fn into_event(
        self,
        id: String,
        producer: &str,
        producer_seq: u64,
        time: SystemTime,
    ) -> AuditEvent {
        AuditEvent {
            id,
            producer: producer.to_owned(),
            producer_seq,
            time: Some(timestamp(time)),
            kind: self.kind as i32,
            subject: self.subject,
            client_id: self.client_id,
            token_id: self.token_id,
            family_id: self.family_id,
            audience: self.audience,
            action: self.action,
            resource: self.resource,
            decision: self.decision as i32,
            reason: self.reason,
            trace_id: self.trace_id,
            attributes: self.attributes.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::from_unix_seconds;

    #[test]
    fn draft_becomes_event() {
        let event = EventDraft::new(EventKind::Check)
            .subject("alice")
            .client_id("web")
            .audience("payments")
            .action("approve")
            .resource("payment/7")
            .trace_id("abc")
            .attribute("scope", "payments:approve")
            .deny("duty_conflict")
            .into_event("id1".to_owned(), "validator", 7, from_unix_seconds(100));
        assert_eq!(event.id, "id1");
        assert_eq!(event.producer, "validator");
        assert_eq!(event.producer_seq, 7);
        assert_eq!(event.time.map(|t| t.seconds), Some(100));
        assert_eq!(event.kind, EventKind::Check as i32);
        assert_eq!(event.decision, Decision::Deny as i32);
        assert_eq!(event.reason, "duty_conflict");
        assert_eq!(event.subject, "alice");
        assert_eq!(event.resource, "payment/7");
        assert_eq!(
            event.attributes.get("scope").map(String::as_str),
            Some("payments:approve")
        );
    }
}
