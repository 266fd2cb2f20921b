//! The validator's logic, independent of transport: runs the check pipeline on a request,
//! records the decision in the audit outbox, and answers. gRPC and HTTP are thin mappings.
//!
//! The pipeline has two stages. The token stage (size, shape, header, key, signature, claim
//! types, issuer) depends on the token alone, so its result is cached by the token's hash. The
//! request stage (time, audience, scope, revocation, dual control) runs on every call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use trias_runtime::tls::{Transport, identity_of};

use tonic::transport::Channel;
use trias_policy::Policy;
use trias_proto::v1::{EventKind, Reason};
use trias_runtime::clock::{Clock, unix_seconds};
use trias_runtime::event::EventDraft;
use trias_runtime::outbox::Outbox;

use crate::cache::{TokenCache, token_hash};
use crate::check::{self, Claims, Denial, Outcome};
use crate::config::IntrospectionClient;
use crate::error::Error;
use crate::keys::Keys;
use crate::revocation::Revocations;
use crate::store::{Recorded, Store};

/// What the validator is configured to accept.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The exact expected `iss` (shared by every cached token's claims).
    pub issuer: Arc<str>,
    pub clock_skew: Duration,
    pub max_token_bytes: usize,
    /// Refuse to answer when the outbox cannot record the decision.
    pub strict_audit: bool,
    pub jwks_refresh: Duration,
    /// Where the audit outbox is shipped; `None` keeps events in the outbox.
    pub auditor_url: Option<String>,
    /// How gRPC is served and called: mTLS, or plain text in development.
    pub transport: Transport,
    /// Audiences of callers whose identity does not name their audience.
    pub caller_audiences: BTreeMap<String, String>,
}

/// The longest audience, action or resource accepted in a check, in bytes.
pub const MAX_FIELD_BYTES: usize = 1024;
/// The most `context` entries a check may carry.
pub const MAX_CONTEXT_ENTRIES: usize = 32;
/// The longest `context` key, in bytes.
pub const MAX_CONTEXT_KEY_BYTES: usize = 64;
/// The longest `context` value, in bytes.
pub const MAX_CONTEXT_VALUE_BYTES: usize = 512;

/// One question: may this token perform this action on this object, for this audience?
#[derive(Debug, Clone, Default)]
pub struct CheckInput {
    /// The bearer token; never logged or recorded.
    pub token: String,
    /// The action; `None` for an introspection, which checks the token alone.
    pub action: Option<String>,
    pub resource: String,
    /// The calling service's audience (under mTLS, the one its identity is bound to).
    pub audience: String,
    /// An audience the request named that differs from the caller's bound one: the check is
    /// denied `wrong_audience`, whatever the token says.
    pub declared_audience: Option<String>,
    /// The caller's mTLS identity, recorded in the audit event.
    pub caller: Option<String>,
    /// Extra facts recorded in the audit event.
    pub context: BTreeMap<String, String>,
    /// How the question arrived (`grpc`, `introspection`), recorded in the audit event.
    pub via: &'static str,
}

/// The answer.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub allowed: bool,
    pub reason: Reason,
    pub detail: String,
    /// The verified claims: for an allow always, for a deny when the token itself was good.
    pub claims: Option<Arc<Claims>>,
}

impl Verdict {
    fn allow(claims: Arc<Claims>) -> Verdict {
        Verdict {
            allowed: true,
            reason: Reason::Ok,
            detail: String::new(),
            claims: Some(claims),
        }
    }

    fn deny(denial: Denial, claims: Option<Arc<Claims>>) -> Verdict {
        Verdict {
            allowed: false,
            reason: denial.reason,
            detail: denial.detail,
            claims,
        }
    }
}

#[derive(Debug)]
struct Inner {
    policy: Policy,
    settings: Settings,
    keys: Arc<Keys>,
    revocations: Arc<Revocations>,
    cache: TokenCache,
    store: Store,
    outbox: Outbox,
    clock: Arc<dyn Clock>,
    introspection_clients: Vec<(IntrospectionClient, [u8; 32])>,
    issuer_channel: Option<Channel>,
    metrics: crate::metrics::Metrics,
}

/// The validator; cheap to clone.
#[derive(Debug, Clone)]
pub struct Validator {
    inner: Arc<Inner>,
}

/// Everything a validator is built from.
#[derive(Debug)]
pub struct Parts {
    pub policy: Policy,
    pub settings: Settings,
    pub keys: Arc<Keys>,
    pub revocations: Arc<Revocations>,
    pub cache_capacity: usize,
    pub store: Store,
    pub outbox: Outbox,
    pub clock: Arc<dyn Clock>,
    pub introspection_clients: Vec<IntrospectionClient>,
    /// The issuer's gRPC channel, for the revocation feed; `None` in tests that feed
    /// revocations by hand.
    pub issuer_channel: Option<Channel>,
}

impl Validator {
    pub fn new(parts: Parts) -> Validator {
        let introspection_clients = parts
            .introspection_clients
            .into_iter()
            .filter_map(|client| {
                let hash = client.secret_hash()?;
                Some((client, hash))
            })
            .collect();
        Validator {
            inner: Arc::new(Inner {
                policy: parts.policy,
                settings: parts.settings,
                keys: parts.keys,
                revocations: parts.revocations,
                cache: TokenCache::new(parts.cache_capacity),
                store: parts.store,
                outbox: parts.outbox,
                clock: parts.clock,
                introspection_clients,
                issuer_channel: parts.issuer_channel,
                metrics: crate::metrics::Metrics::new(),
            }),
        }
    }

    /// This validator's Prometheus metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    pub fn keys(&self) -> &Arc<Keys> {
        &self.inner.keys
    }

    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.inner.revocations
    }

    pub fn cache(&self) -> &TokenCache {
        &self.inner.cache
    }

    pub fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    pub(crate) fn issuer_channel(&self) -> Option<Channel> {
        self.inner.issuer_channel.clone()
    }

    fn skew(&self) -> i64 {
        i64::try_from(self.inner.settings.clock_skew.as_secs()).unwrap_or(60)
    }

    /// The audience an introspection caller is, if its HTTP Basic credentials are right.
    pub fn introspection_audience(&self, client_id: &str, secret: &str) -> Option<String> {
        let hash = crate::cache::token_hash(secret);
        let mut found = None;
        for (client, expected) in &self.inner.introspection_clients {
            // Compare every byte of every entry so timing says nothing about the secret.
            let same = expected
                .iter()
                .zip(hash.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
            if same && client.client_id == client_id {
                found = Some(client.audience.clone());
            }
        }
        found
    }

    /// Decides a check and records it in the audit outbox before answering. Its span (never
    /// with the token) is the parent of the auditor's span that logs the decision.
    #[tracing::instrument(
        name = "check",
        skip_all,
        fields(
            audience = %input.audience,
            action = input.action.as_deref().unwrap_or(""),
            resource = %input.resource,
            caller = input.caller.as_deref().unwrap_or(""),
            via = input.via,
            decision = tracing::field::Empty,
            reason = tracing::field::Empty,
            client_id = tracing::field::Empty,
            token_id = tracing::field::Empty,
        )
    )]
    pub async fn check(&self, input: &CheckInput) -> Result<Verdict, Error> {
        self.validate_input(input)?;
        let verdict = self.decide(input).await?;
        self.audit(input, &verdict).await?;
        Ok(verdict)
    }

    fn validate_input(&self, input: &CheckInput) -> Result<(), Error> {
        if input.audience.is_empty() {
            return Err(Error::InvalidRequest("audience is required".into()));
        }
        // Everything here but the token goes into the audit event: bounded, so that an event
        // always stays far below what the auditor accepts (a refused event would hold up
        // every event behind it in the outbox).
        let fields = [
            ("audience", Some(&input.audience)),
            ("declared audience", input.declared_audience.as_ref()),
            ("action", input.action.as_ref()),
            ("resource", Some(&input.resource)),
        ];
        for (name, value) in fields {
            if value.is_some_and(|v| v.len() > MAX_FIELD_BYTES) {
                return Err(Error::InvalidRequest(format!(
                    "{name} is longer than {MAX_FIELD_BYTES} bytes"
                )));
            }
        }
        if input.context.len() > MAX_CONTEXT_ENTRIES {
            return Err(Error::InvalidRequest(format!(
                "context has more than {MAX_CONTEXT_ENTRIES} entries"
            )));
        }
        if input
            .context
            .iter()
            .any(|(k, v)| k.len() > MAX_CONTEXT_KEY_BYTES || v.len() > MAX_CONTEXT_VALUE_BYTES)
        {
            return Err(Error::InvalidRequest(format!(
                "a context key is longer than {MAX_CONTEXT_KEY_BYTES} bytes or a value longer \
                 than {MAX_CONTEXT_VALUE_BYTES}"
            )));
        }
        if let Some(action) = &input.action {
            if action.is_empty() {
                return Err(Error::InvalidRequest("action is required".into()));
            }
            let dual = self
                .inner
                .policy
                .dual_control(&input.audience)
                .is_some_and(|rule| rule.covers(action));
            if dual && input.resource.is_empty() {
                return Err(Error::InvalidRequest(format!(
                    "{action} is under dual control: resource is required"
                )));
            }
        }
        Ok(())
    }

    async fn decide(&self, input: &CheckInput) -> Result<Verdict, Error> {
        let claims = match self.verify(&input.token).await {
            Ok(claims) => claims,
            Err(denial) => return Ok(Verdict::deny(denial, None)),
        };
        Ok(match self.per_request(&claims, input).await? {
            Ok(()) => Verdict::allow(claims),
            Err(denial) => Verdict::deny(denial, Some(claims)),
        })
    }

    /// The token stage: everything that depends on the token alone. A cached token skips it.
    async fn verify(&self, token: &str) -> Outcome<Arc<Claims>> {
        let settings = &self.inner.settings;
        check::size(token, settings.max_token_bytes)?;
        let hash = token_hash(token);
        let now = unix_seconds(self.inner.clock.now());
        if let Some(claims) = self.inner.cache.get(&hash, now, self.skew()) {
            return Ok(claims);
        }
        let unverified = check::unverified(token)?;
        let key = self
            .inner
            .keys
            .get_or_refresh(&unverified.kid)
            .await
            .ok_or_else(|| Denial::new(Reason::UnknownKey, "the token names an unknown key"))?;
        let mut claims = check::verified(&unverified, &key, &settings.issuer)?;
        // The issuer and the key are the same for most tokens: the cache holds one copy.
        claims.iss = Arc::clone(&settings.issuer);
        claims.kid = Arc::clone(&key.kid);
        let claims = Arc::new(claims);
        self.inner
            .cache
            .insert(hash, Arc::clone(&claims), now, self.skew());
        Ok(claims)
    }

    /// The request stage: runs on every call, cached token or not.
    async fn per_request(&self, claims: &Claims, input: &CheckInput) -> Result<Outcome, Error> {
        let now = unix_seconds(self.inner.clock.now());
        let checks = || -> Outcome {
            check::time(claims, now, self.skew())?;
            check::declared_audience(&input.audience, input.declared_audience.as_deref())?;
            check::audience(claims, &input.audience)?;
            if let Some(action) = &input.action {
                check::scope(&self.inner.policy, claims, &input.audience, action)?;
            }
            self.not_revoked(claims)?;
            Ok(())
        };
        if let Err(denial) = checks() {
            return Ok(Err(denial));
        }
        match &input.action {
            Some(action) => self.dual_control(claims, input, action, now).await,
            None => Ok(Ok(())),
        }
    }

    fn not_revoked(&self, claims: &Claims) -> Outcome {
        if self
            .inner
            .revocations
            .is_revoked(&claims.jti, claims.sid.as_deref())
        {
            return Err(Denial::new(Reason::Revoked, "the token has been revoked"));
        }
        Ok(())
    }

    /// Dynamic separation of duties: the last check, so only an otherwise allowed action is
    /// recorded in the ledger.
    async fn dual_control(
        &self,
        claims: &Claims,
        input: &CheckInput,
        action: &str,
        now: i64,
    ) -> Result<Outcome, Error> {
        let Some(rule) = self
            .inner
            .policy
            .dual_control(&input.audience)
            .filter(|rule| rule.covers(action))
        else {
            return Ok(Ok(()));
        };
        let recorded = self
            .inner
            .store
            .record(
                rule.audience(),
                &input.resource,
                &claims.sub,
                action,
                &claims.jti,
                now,
            )
            .await
            .map_err(|error| {
                tracing::error!(%error, "dual-control ledger");
                Error::LedgerUnavailable
            })?;
        Ok(match recorded {
            Recorded::First | Recorded::Again => Ok(()),
            Recorded::Conflict { earlier_action } => Err(Denial::new(
                Reason::DutyConflict,
                format!(
                    "{} already performed {earlier_action} on {}",
                    claims.sub, input.resource
                ),
            )),
        })
    }

    /// The audience a caller with mTLS identity `id` is bound to: configured, or by
    /// convention `spiffe://trias/<name>` → audience `<name>` when the policy has it.
    pub fn audience_of(&self, id: &str) -> Option<String> {
        if let Some(audience) = self.inner.settings.caller_audiences.get(id) {
            return Some(audience.clone());
        }
        let name = id.strip_prefix(&identity_of(""))?;
        self.inner
            .policy
            .audience(name)
            .is_some()
            .then(|| name.to_owned())
    }

    /// Records a gRPC call refused for the caller's mTLS identity.
    pub async fn record_access_denied(&self, caller: &str, rpc: &str, why: &str) {
        tracing::warn!(caller, rpc, why, "call refused");
        let draft = EventDraft::new(EventKind::AccessDenied)
            .action(rpc)
            .attribute("caller", caller)
            .attribute("detail", why)
            .deny("access_denied");
        if let Err(error) = self.inner.outbox.record(draft).await {
            tracing::error!(%error, "audit outbox failed to record a refusal");
        }
    }

    /// Records the decision; never the token.
    async fn audit(&self, input: &CheckInput, verdict: &Verdict) -> Result<(), Error> {
        let mut draft = EventDraft::new(EventKind::Check)
            .audience(input.audience.clone())
            .action(input.action.clone().unwrap_or_default())
            .resource(input.resource.clone())
            .attribute("via", input.via);
        if let Some(caller) = &input.caller {
            draft = draft.attribute("caller", caller.clone());
        }
        if let Some(claims) = &verdict.claims {
            draft = draft
                .subject(claims.sub.clone())
                .client_id(claims.client_id.clone())
                .token_id(claims.jti.clone())
                .family_id(claims.sid.clone().unwrap_or_default())
                .attribute("kid", claims.kid.as_ref());
        }
        for (key, value) in &input.context {
            draft = draft.attribute(format!("context.{key}"), value.clone());
        }
        let reason = check::reason_name(verdict.reason);
        let decision = if verdict.allowed { "allow" } else { "deny" };
        let span = tracing::Span::current();
        span.record("decision", decision);
        span.record("reason", reason.as_str());
        if let Some(claims) = &verdict.claims {
            span.record("client_id", claims.client_id.as_str());
            span.record("token_id", claims.jti.as_str());
        }
        draft = if verdict.allowed {
            draft.allow()
        } else {
            draft.deny(reason.clone())
        };
        tracing::debug!(
            decision,
            reason = %reason,
            audience = %input.audience,
            action = input.action.as_deref().unwrap_or(""),
            "check decided"
        );
        if let Err(error) = self.inner.outbox.record(draft).await {
            tracing::error!(%error, "cannot record a check in the audit outbox");
            if self.inner.settings.strict_audit {
                return Err(Error::AuditUnavailable);
            }
        }
        // Counted once answered; the reason is one of the closed set of reason codes.
        self.inner.metrics.checks.with(&[decision, &reason]).inc();
        Ok(())
    }
}
