//! The issuer's logic, independent of transport: client and user authentication, the
//! grants, revocation, and administration. gRPC (`grpc`) and HTTP (`http`) are thin layers
//! over [`Issuer`].
//!
//! Every outcome a security team may ask about becomes an audit event in the durable outbox
//! before the caller gets an answer; an issued token's event is durable before the token is
//! signed, so in strict mode no token exists that the record does not show.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use trias_runtime::access::TokenChecker;
use trias_runtime::tls::{Transport, identity_of};

use ring::rand::SystemRandom;
use tokio::sync::watch;
use trias_policy::{Acr, GrantType, Policy, RoleError, ScopeError};
use trias_proto::v1::{Decision, EventKind, Reason};
use trias_runtime::clock::{Clock, unix_seconds};
use trias_runtime::event::EventDraft;
use trias_runtime::limit::{Limited, RateLimiter, source_key};
use trias_runtime::outbox::Outbox;

use crate::config::LimitsConfig;
use crate::error::{Error, Limit};
use crate::keys::{AccessClaims, KeyAlgorithm, Keyring, SigningKey};
use crate::secrets;
use crate::store::{
    Approval, ClientRecord, CodeRecord, FamilyRecord, Redeem, RevocationRecord, RoleGrantRecord,
    Spend, Store, UserRecord,
};

/// Largest accepted length of any one request field, in bytes; longer is `invalid_request`.
pub const MAX_FIELD_LEN: usize = 4096;
/// Largest accepted bearer token (access or refresh) in a request.
pub const MAX_TOKEN_LEN: usize = 8192;

/// The issuer's tunables (from its configuration).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `iss` of every token: the issuer's URL.
    pub issuer: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub code_ttl: Duration,
    /// How long a new key is published before it signs.
    pub key_publish_delay: Duration,
    pub key_algorithm: KeyAlgorithm,
    /// Refuse to mint when the audit outbox cannot persist the event.
    pub strict_audit: bool,
    pub role_grant_ttl: Duration,
    /// The audience of tokens accepted by the admin API.
    pub admin_audience: String,
    /// Where the audit outbox is shipped; `None` keeps events in the outbox.
    pub auditor_url: Option<String>,
    /// How gRPC is served and called: mTLS, or plain text in development.
    pub transport: Transport,
    /// The identities that may follow the revocation feed (validators).
    pub validators: Vec<String>,
    /// The validator that decides admin tokens; without one the admin API refuses all calls.
    pub admin_check: Option<TokenChecker>,
    /// The rate limits on the token endpoint and logins.
    pub limits: LimitsConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            issuer: "http://127.0.0.1:8443".into(),
            access_ttl: Duration::from_secs(300),
            refresh_ttl: Duration::from_secs(8 * 3600),
            code_ttl: Duration::from_secs(60),
            key_publish_delay: Duration::from_secs(60),
            key_algorithm: KeyAlgorithm::EdDSA,
            strict_audit: true,
            role_grant_ttl: Duration::from_secs(24 * 3600),
            admin_audience: "issuer-admin".into(),
            auditor_url: None,
            transport: Transport::plaintext(),
            validators: vec![identity_of("validator")],
            admin_check: None,
            limits: LimitsConfig::default(),
        }
    }
}

/// A token request, whatever the transport.
#[derive(Default)]
pub struct TokenInput {
    pub grant_type: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub scope: Option<String>,
    pub resource: Option<String>,
    pub code: Option<String>,
    pub code_verifier: Option<String>,
    pub redirect_uri: Option<String>,
    pub refresh_token: Option<String>,
    /// The address the request came from (the peer of the connection), for the per-source
    /// limit on failed client authentication; `None` when unknown.
    pub source: Option<IpAddr>,
}

impl std::fmt::Debug for TokenInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenInput")
            .field("grant_type", &self.grant_type)
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .field("resource", &self.resource)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A minted token response.
#[derive(Clone)]
pub struct Issued {
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: Option<String>,
    pub scope: String,
    pub audience: String,
    pub token_id: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("token_id", &self.token_id)
            .field("audience", &self.audience)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// A login request from a frontend.
#[derive(Default)]
pub struct LoginInput {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub code_challenge_method: String,
    pub scope: Option<String>,
    pub resource: Option<String>,
    pub username: String,
    pub password: String,
    pub totp: Option<String>,
    /// The user's address, when the issuer sees it (the login page: the browser's); it
    /// counts towards the per-source limit on failures. `None` for a frontend's gRPC `Login`,
    /// whose peer is the frontend relaying every user's login.
    pub source: Option<IpAddr>,
}

impl std::fmt::Debug for LoginInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginInput")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A successful login: a single-use authorization code.
#[derive(Clone)]
pub struct LoginOutcome {
    pub code: String,
    pub expires_in: u64,
    pub redirect_uri: String,
    pub acr: Acr,
}

impl std::fmt::Debug for LoginOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginOutcome")
            .field("acr", &self.acr)
            .finish_non_exhaustive()
    }
}

/// Who is performing an administrative operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An administrator authenticated by an admin access token (`sub`).
    Admin(String),
    /// An operator on the issuer's own machine, through its local commands (bootstrap).
    Local,
}

impl Actor {
    fn name(&self) -> &str {
        match self {
            Actor::Admin(subject) => subject,
            Actor::Local => "local",
        }
    }
}

/// What registering a client returns: the secret is shown once.
#[derive(Clone)]
pub struct NewClient {
    pub client: ClientRecord,
    pub secret: Option<String>,
}

impl std::fmt::Debug for NewClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewClient")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// What creating a user returns: the TOTP secret (base32) is shown once.
#[derive(Clone)]
pub struct NewUser {
    pub user: UserRecord,
    pub totp_secret: Option<String>,
    pub totp_uri: Option<String>,
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// An administrator made by [`Issuer::bootstrap`]: shown once, never stored in clear.
pub struct BootstrapAdmin {
    pub user: NewUser,
    pub password: String,
}

impl std::fmt::Debug for BootstrapAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapAdmin")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A client registration request.
#[derive(Debug, Clone, Default)]
pub struct ClientSpec {
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub grant_types: BTreeSet<GrantType>,
    pub scopes: BTreeSet<String>,
    pub public: bool,
}

/// The issuer: cheap to clone, shared by the gRPC and HTTP layers.
#[derive(Debug, Clone)]
pub struct Issuer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    policy: Policy,
    keys: Keyring,
    outbox: Outbox,
    clock: Arc<dyn Clock>,
    rng: SystemRandom,
    settings: Settings,
    /// The newest revocation sequence number this process wrote; wakes feed subscribers.
    revoked: watch::Sender<i64>,
    metrics: crate::metrics::Metrics,
    limits: Limiters,
}

/// The issuer's rate limiters, one per `[limits]` key.
#[derive(Debug)]
struct Limiters {
    token_per_client: RateLimiter,
    failed_logins_per_user: RateLimiter,
    failures_per_source: RateLimiter,
}

impl Limiters {
    fn new(config: &LimitsConfig) -> Limiters {
        let limiter = |quota| RateLimiter::new(quota, config.tracked_keys);
        Limiters {
            token_per_client: limiter(config.token_per_client),
            failed_logins_per_user: limiter(config.failed_logins_per_user),
            failures_per_source: limiter(config.failures_per_source),
        }
    }
}

/// The error of a request a limit refused.
fn slow_down(limit: Limit) -> impl FnOnce(Limited) -> Error {
    move |limited| Error::SlowDown {
        limit,
        retry_after: limited.retry_after_secs(),
    }
}

fn field<'a>(name: &str, value: &'a str, max: usize) -> Result<&'a str, Error> {
    if value.len() > max {
        return Err(Error::InvalidRequest(format!("{name} is too long")));
    }
    Ok(value)
}

fn required<'a>(name: &str, value: Option<&'a str>) -> Result<&'a str, Error> {
    match value {
        Some(v) if !v.is_empty() => field(name, v, MAX_FIELD_LEN),
        _ => Err(Error::InvalidRequest(format!("{name} is required"))),
    }
}

/// Parses a space-separated scope parameter (RFC 6749 §3.3 scope-token characters).
fn parse_scope(text: &str) -> Result<BTreeSet<String>, Error> {
    field("scope", text, MAX_FIELD_LEN)?;
    let mut scopes = BTreeSet::new();
    for token in text.split(' ').filter(|t| !t.is_empty()) {
        if !token
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        {
            return Err(Error::InvalidScope(
                "scope contains characters RFC 6749 does not allow".into(),
            ));
        }
        scopes.insert(token.to_owned());
    }
    Ok(scopes)
}

fn join_scopes(scopes: &BTreeSet<String>) -> String {
    scopes
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

fn grant_name(grant: GrantType) -> &'static str {
    grant.as_str()
}

impl Issuer {
    /// Builds the issuer over an opened store and outbox, loading (or creating) its keys.
    pub async fn new(
        store: Store,
        policy: Policy,
        outbox: Outbox,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Result<Issuer, Error> {
        let rng = SystemRandom::new();
        let now = unix_seconds(clock.now());
        let keys = Keyring::open(store.clone(), &rng, settings.key_algorithm, now).await?;
        let (revoked, _) = watch::channel(0);
        let limits = Limiters::new(&settings.limits);
        Ok(Issuer {
            inner: Arc::new(Inner {
                store,
                policy,
                keys,
                outbox,
                clock,
                rng,
                settings,
                revoked,
                metrics: crate::metrics::Metrics::new(),
                limits,
            }),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// This issuer's Prometheus metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }

    pub fn keys(&self) -> &Keyring {
        &self.inner.keys
    }

    fn now(&self) -> i64 {
        unix_seconds(self.inner.clock.now())
    }

    /// Writes an event to the outbox. In strict mode a failure is an error (the caller must
    /// not go on to issue); otherwise it is logged and the operation proceeds.
    async fn record(&self, draft: EventDraft) -> Result<(), Error> {
        match self.inner.outbox.record(draft).await {
            Ok(_) => Ok(()),
            Err(e) if self.inner.settings.strict_audit => {
                tracing::error!(error = %e, "audit outbox failed; refusing (strict mode)");
                Err(Error::AuditUnavailable)
            }
            Err(e) => {
                tracing::error!(error = %e, "audit outbox failed; proceeding (non-strict mode)");
                Ok(())
            }
        }
    }

    /// Records a gRPC call refused for the caller's mTLS identity.
    pub async fn record_access_denied(&self, caller: &str, rpc: &str, why: &str) {
        tracing::warn!(caller, rpc, why, "call refused");
        let draft = EventDraft::new(EventKind::AccessDenied)
            .decision(Decision::Deny)
            .reason("access_denied")
            .action(rpc)
            .attribute("caller", caller)
            .attribute("detail", why);
        self.record_refusal(draft).await;
    }

    /// Adds what the issuer knows of a refused request's origin to its audit event — the
    /// source address — and for a rate-limited request the limit and the wait (and counts
    /// it in `trias_rate_limited_total`).
    fn annotate(&self, mut draft: EventDraft, source: Option<IpAddr>, error: &Error) -> EventDraft {
        if let Some(source) = source {
            draft = draft.attribute("source", source.to_string());
        }
        if let Error::SlowDown { limit, retry_after } = error {
            self.inner.metrics.rate_limited.with(&[limit.name()]).inc();
            draft = draft
                .attribute("limit", limit.name())
                .attribute("retry_after", retry_after.to_string());
        }
        draft
    }

    /// Records a refusal; the refusal itself is the answer, so a failing outbox only logs.
    async fn record_refusal(&self, draft: EventDraft) {
        if let Err(e) = self.inner.outbox.record(draft).await {
            tracing::error!(error = %e, "audit outbox failed to record a refusal");
        }
    }

    fn publish_revocations(&self, revocations: &[RevocationRecord]) {
        if let Some(max) = revocations.iter().map(|r| r.seq).max() {
            self.inner.revoked.send_if_modified(|seq| {
                let newer = max > *seq;
                if newer {
                    *seq = max;
                }
                newer
            });
        }
    }

    /// A receiver that changes whenever this process writes a revocation.
    pub fn revocation_signal(&self) -> watch::Receiver<i64> {
        self.inner.revoked.subscribe()
    }

    // ----- clients -----

    /// RFC 6749 §2.3: a confidential client proves its secret; a public client has none.
    async fn authenticate_client(
        &self,
        client_id: &str,
        secret: Option<&str>,
    ) -> Result<ClientRecord, Error> {
        if client_id.is_empty() {
            return Err(Error::InvalidClient);
        }
        field("client_id", client_id, MAX_FIELD_LEN)?;
        let client = self
            .inner
            .store
            .client(client_id)
            .await?
            .ok_or(Error::InvalidClient)?;
        match (&client.secret_hash, secret) {
            (Some(stored), Some(given)) if !given.is_empty() && given.len() <= MAX_FIELD_LEN => {
                if *stored == secrets::hash_secret(given) {
                    Ok(client)
                } else {
                    Err(Error::InvalidClient)
                }
            }
            (None, None) if client.public => Ok(client),
            (None, Some("")) if client.public => Ok(client),
            _ => Err(Error::InvalidClient),
        }
    }

    /// Client authentication under the per-source limit on failures: a source that failed
    /// too often is refused before anything is looked up, and each failure counts.
    async fn authenticate_from(
        &self,
        client_id: &str,
        secret: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<ClientRecord, Error> {
        let limiter = &self.inner.limits.failures_per_source;
        let source = source.map(source_key);
        if let Some(key) = &source {
            limiter
                .check(key, self.inner.clock.now())
                .map_err(slow_down(Limit::FailuresPerSource))?;
        }
        let result = self.authenticate_client(client_id, secret).await;
        if let (Err(Error::InvalidClient), Some(key)) = (&result, &source) {
            limiter.charge(key, self.inner.clock.now());
        }
        result
    }

    /// The audience a token is for: the RFC 8707 resource, else the policy's default.
    fn resolve_audience(&self, resource: Option<&str>) -> Result<String, Error> {
        let policy = &self.inner.policy;
        match resource.filter(|r| !r.is_empty()) {
            Some(resource) => {
                field("resource", resource, MAX_FIELD_LEN)?;
                policy
                    .audience_for_resource(resource)
                    .map(|a| a.id().to_owned())
                    .ok_or_else(|| Error::InvalidTarget(format!("unknown resource {resource}")))
            }
            None => policy
                .default_audience()
                .map(|a| a.id().to_owned())
                .ok_or_else(|| {
                    Error::InvalidTarget(
                        "resource is required: the policy has no default audience".into(),
                    )
                }),
        }
    }

    /// Chooses a token's scopes: those requested (or, if none, all available at the
    /// audience), each known to the policy, available to the subject and used by the
    /// audience, and together spanning no duty conflict.
    fn choose_scopes(
        &self,
        requested: Option<&str>,
        available: &BTreeSet<String>,
        audience: &str,
    ) -> Result<BTreeSet<String>, Error> {
        let policy = &self.inner.policy;
        let aud = policy
            .audience(audience)
            .ok_or_else(|| Error::InvalidTarget(format!("unknown audience {audience}")))?;
        let requested = parse_scope(requested.unwrap_or(""))?;
        let scopes = if requested.is_empty() {
            let defaults: BTreeSet<String> = available
                .iter()
                .filter(|s| aud.uses_scope(s))
                .cloned()
                .collect();
            if defaults.is_empty() {
                return Err(Error::InvalidScope(format!(
                    "no scope for audience {audience} is available to this subject"
                )));
            }
            defaults
        } else {
            for scope in &requested {
                if !policy.is_known_scope(scope) {
                    return Err(Error::InvalidScope(format!("unknown scope {scope}")));
                }
                if !available.contains(scope) {
                    return Err(Error::InvalidScope(format!(
                        "scope {scope} is not available to this subject"
                    )));
                }
                if !aud.uses_scope(scope) {
                    return Err(Error::InvalidScope(format!(
                        "scope {scope} is not used by audience {audience}"
                    )));
                }
            }
            requested
        };
        policy.check_token_scopes(&scopes).map_err(|e| match e {
            ScopeError::UnknownScope(s) => Error::InvalidScope(format!("unknown scope {s}")),
            ScopeError::Conflict { conflict, roles } => Error::InvalidScope(format!(
                "scopes combine the duties of {} and {}, which conflict \"{conflict}\" separates",
                roles.0, roles.1
            )),
        })?;
        Ok(scopes)
    }

    /// The scopes a subject's roles grant, limited to what the client may ask for.
    async fn available_scopes(
        &self,
        subject: &str,
        client: &ClientRecord,
    ) -> Result<BTreeSet<String>, Error> {
        let roles = self.inner.store.roles_of(subject).await?;
        let granted = self
            .inner
            .policy
            .scopes_of_roles(roles.iter().map(String::as_str));
        Ok(granted.intersection(&client.scopes).cloned().collect())
    }

    /// Enforces the policy's per-scope rules (grant types, minimum acr) and returns the
    /// lifetime and whether refresh is allowed.
    fn apply_constraints(
        &self,
        scopes: &BTreeSet<String>,
        grant: GrantType,
        acr: Option<Acr>,
    ) -> Result<(Duration, bool), Error> {
        let constraints = self.inner.policy.constraints(scopes);
        constraints
            .permits(grant, acr)
            .map_err(|v| Error::InvalidScope(v.to_string()))?;
        let ttl = constraints.cap_ttl(self.inner.settings.access_ttl);
        Ok((ttl, constraints.refresh))
    }

    // ----- the token endpoint -----

    /// The token endpoint: every grant. A refusal is an audit event too. Its span names the
    /// grant, the client and the outcome, never a secret, code or token.
    #[tracing::instrument(
        name = "token",
        skip_all,
        fields(
            grant_type = tracing::field::Empty,
            client_id = %truncate(&input.client_id),
            decision = tracing::field::Empty,
            error = tracing::field::Empty,
            token_id = tracing::field::Empty,
        )
    )]
    pub async fn token(&self, input: TokenInput) -> Result<Issued, Error> {
        let grant = input.grant_type.clone();
        let client_id = input.client_id.clone();
        let source = input.source;
        // Parsed, so the label and the field are always one of the closed set of grant names.
        let name = grant
            .parse::<GrantType>()
            .map_or("unknown", GrantType::as_str);
        let span = tracing::Span::current();
        span.record("grant_type", name);
        match self.token_inner(input).await {
            Ok(issued) => {
                span.record("decision", "allow");
                span.record("token_id", issued.token_id.as_str());
                self.inner.metrics.tokens_issued.with(&[name]).inc();
                Ok(issued)
            }
            Err(error) => {
                span.record("decision", "deny");
                span.record("error", error.oauth_code());
                Err(self.refuse_token(&client_id, &grant, source, error).await)
            }
        }
    }

    /// Records a refused token request (also one refused before it reached [`Issuer::token`],
    /// such as a malformed HTTP form) and hands the error back.
    pub async fn refuse_token(
        &self,
        client_id: &str,
        grant_type: &str,
        source: Option<IpAddr>,
        error: Error,
    ) -> Error {
        let code = error.oauth_code();
        self.inner
            .metrics
            .token_requests_refused
            .with(&[code])
            .inc();
        let draft = EventDraft::new(EventKind::TokenRefused)
            .client_id(truncate(client_id))
            .decision(Decision::Deny)
            .reason(error.oauth_code())
            .attribute("grant_type", truncate(grant_type))
            .attribute("detail", error.to_string());
        let mut draft = self.annotate(draft, source, &error);
        if matches!(error, Error::AuditUnavailable) {
            draft = draft.attribute("strict", "true");
        }
        self.record_refusal(draft).await;
        error
    }

    /// Records a refused revocation request and hands the error back.
    pub async fn refuse_revocation(
        &self,
        client_id: &str,
        source: Option<IpAddr>,
        error: Error,
    ) -> Error {
        let draft = EventDraft::new(EventKind::TokenRevoked)
            .client_id(truncate(client_id))
            .decision(Decision::Deny)
            .reason(error.oauth_code())
            .attribute("detail", error.to_string());
        self.record_refusal(self.annotate(draft, source, &error))
            .await;
        error
    }

    async fn token_inner(&self, input: TokenInput) -> Result<Issued, Error> {
        let grant: GrantType = match input.grant_type.as_str() {
            "" => return Err(Error::InvalidRequest("grant_type is required".into())),
            other => other
                .parse()
                .map_err(|_| Error::UnsupportedGrantType(truncate(other)))?,
        };
        let client = self
            .authenticate_from(
                &input.client_id,
                input.client_secret.as_deref(),
                input.source,
            )
            .await?;
        self.inner
            .limits
            .token_per_client
            .acquire(&client.client_id, self.inner.clock.now())
            .map_err(slow_down(Limit::TokenPerClient))?;
        if !client.grant_types.contains(&grant) {
            return Err(Error::UnauthorizedClient(format!(
                "client may not use the {} grant",
                grant_name(grant)
            )));
        }
        match grant {
            GrantType::ClientCredentials => self.client_credentials(&client, &input).await,
            GrantType::AuthorizationCode => self.authorization_code(&client, &input).await,
            GrantType::RefreshToken => self.refresh(&client, &input).await,
        }
    }

    async fn client_credentials(
        &self,
        client: &ClientRecord,
        input: &TokenInput,
    ) -> Result<Issued, Error> {
        if client.public {
            return Err(Error::UnauthorizedClient(
                "a public client may not use client_credentials".into(),
            ));
        }
        let audience = self.resolve_audience(input.resource.as_deref())?;
        let available = self.available_scopes(&client.client_id, client).await?;
        let scopes = self.choose_scopes(input.scope.as_deref(), &available, &audience)?;
        let (ttl, _refresh) =
            self.apply_constraints(&scopes, GrantType::ClientCredentials, None)?;
        let now = self.now();
        let claims = self.claims(
            &client.client_id,
            client,
            &audience,
            &scopes,
            now,
            ttl,
            None,
            None,
        )?;
        self.issue(claims, GrantType::ClientCredentials, None).await
    }

    async fn authorization_code(
        &self,
        client: &ClientRecord,
        input: &TokenInput,
    ) -> Result<Issued, Error> {
        let code = required("code", input.code.as_deref())?;
        let verifier = required("code_verifier", input.code_verifier.as_deref())?;
        let redirect_uri = required("redirect_uri", input.redirect_uri.as_deref())?;
        let code_hash = secrets::hash_secret(code);
        let now = self.now();
        let record = match self.inner.store.redeem_code(&code_hash, now).await? {
            Redeem::Fresh(record) => record,
            Redeem::Unknown => {
                return Err(Error::InvalidGrant("unknown authorization code".into()));
            }
            Redeem::Replayed { revocations } => {
                self.publish_revocations(&revocations);
                for rev in &revocations {
                    self.record_refusal(revocation_event(rev, &client.client_id))
                        .await;
                }
                return Err(Error::InvalidGrant(
                    "authorization code was already used; what it issued is revoked".into(),
                ));
            }
        };
        // The code is spent whatever happens next: a stolen code cannot be retried.
        if record.client_id != client.client_id {
            return Err(Error::InvalidGrant(
                "authorization code was issued to another client".into(),
            ));
        }
        if record.expires_at <= now {
            return Err(Error::InvalidGrant("authorization code has expired".into()));
        }
        if record.redirect_uri != redirect_uri {
            return Err(Error::InvalidGrant(
                "redirect_uri does not match the authorization request".into(),
            ));
        }
        if !secrets::is_valid_pkce_value(verifier)
            || !secrets::pkce_matches(verifier, &record.code_challenge)
        {
            return Err(Error::InvalidGrant(
                "code_verifier does not match the code challenge".into(),
            ));
        }
        if let Some(resource) = input.resource.as_deref().filter(|r| !r.is_empty())
            && self.resolve_audience(Some(resource))? != record.audience
        {
            return Err(Error::InvalidTarget(
                "resource differs from the authorization request".into(),
            ));
        }
        let granted = parse_scope(&record.scope)?;
        let scopes = match input.scope.as_deref().filter(|s| !s.is_empty()) {
            Some(requested) => {
                let requested = parse_scope(requested)?;
                if !requested.is_subset(&granted) {
                    return Err(Error::InvalidScope(
                        "scope exceeds what the user authorized".into(),
                    ));
                }
                requested
            }
            None => granted,
        };
        // Roles may have been revoked since the login: check again.
        let available = self.available_scopes(&record.user_id, client).await?;
        let scopes =
            self.choose_scopes(Some(&join_scopes(&scopes)), &available, &record.audience)?;
        let acr: Acr = record
            .acr
            .parse()
            .map_err(|_| Error::Internal("stored acr".into()))?;
        let (ttl, refresh_allowed) =
            self.apply_constraints(&scopes, GrantType::AuthorizationCode, Some(acr))?;
        let refresh = refresh_allowed && client.grant_types.contains(&GrantType::RefreshToken);
        let family_id = if refresh {
            Some(secrets::time_ordered_id(
                &self.inner.rng,
                self.inner.clock.now(),
            )?)
        } else {
            None
        };
        let claims = self.claims(
            &record.user_id,
            client,
            &record.audience,
            &scopes,
            now,
            ttl,
            Some((acr, record.auth_time)),
            family_id.clone(),
        )?;
        let refresh_token = match &family_id {
            Some(family_id) => {
                let token = secrets::random_token(&self.inner.rng)?;
                let family = FamilyRecord {
                    family_id: family_id.clone(),
                    client_id: client.client_id.clone(),
                    subject: record.user_id.clone(),
                    scope: join_scopes(&scopes),
                    audience: record.audience.clone(),
                    acr: record.acr.clone(),
                    auth_time: record.auth_time,
                    created_at: now,
                    expires_at: now + secs(self.inner.settings.refresh_ttl),
                    revoked_at: None,
                };
                self.inner
                    .store
                    .create_family(&family, &secrets::hash_secret(&token))
                    .await?;
                Some(token)
            }
            None => None,
        };
        self.inner
            .store
            .note_code_exchange(&code_hash, &claims.jti, family_id.as_deref())
            .await?;
        self.issue(claims, GrantType::AuthorizationCode, refresh_token)
            .await
    }

    async fn refresh(&self, client: &ClientRecord, input: &TokenInput) -> Result<Issued, Error> {
        let presented = required("refresh_token", input.refresh_token.as_deref())?;
        if presented.len() > MAX_TOKEN_LEN {
            return Err(Error::InvalidRequest("refresh_token is too long".into()));
        }
        let presented_hash = secrets::hash_secret(presented);
        // A request refused for what it asks (a wider scope, say) must leave a live token
        // usable: spent, the client's corrected retry would look like reuse and revoke the
        // whole family. So the request is checked before the token is spent, and again after.
        if let Some(family) = self
            .inner
            .store
            .family_of_live_token(&presented_hash)
            .await?
            && family.client_id == client.client_id
            && family.revoked_at.is_none()
        {
            self.refresh_grant(client, &family, input.scope.as_deref())
                .await?;
        }
        let now = self.now();
        let next = secrets::random_token(&self.inner.rng)?;
        let spend = self
            .inner
            .store
            .rotate_refresh(
                &presented_hash,
                &client.client_id,
                &secrets::hash_secret(&next),
                now,
            )
            .await?;
        let family = match spend {
            Spend::Rotated(family) => family,
            Spend::Unknown => return Err(Error::InvalidGrant("unknown refresh token".into())),
            Spend::Refused(reason) => return Err(Error::InvalidGrant(reason)),
            Spend::Reused {
                family_id,
                revocation,
            } => {
                if let Some(rev) = &revocation {
                    self.publish_revocations(std::slice::from_ref(rev));
                }
                let draft = EventDraft::new(EventKind::RefreshReuse)
                    .client_id(&client.client_id)
                    .family_id(&family_id)
                    .decision(Decision::Deny)
                    .reason("invalid_grant")
                    .attribute(
                        "revocation_seq",
                        revocation.map(|r| r.seq.to_string()).unwrap_or_default(),
                    );
                self.record_refusal(draft).await;
                return Err(Error::InvalidGrant(
                    "refresh token was already used; its whole family is revoked".into(),
                ));
            }
        };
        let (scopes, acr, ttl) = self
            .refresh_grant(client, &family, input.scope.as_deref())
            .await?;
        let claims = self.claims(
            &family.subject,
            client,
            &family.audience,
            &scopes,
            now,
            ttl,
            Some((acr, family.auth_time)),
            Some(family.family_id.clone()),
        )?;
        self.issue(claims, GrantType::RefreshToken, Some(next))
            .await
    }

    /// What a refresh of `family` may carry: the requested scopes (at most the original
    /// grant's, still granted by the subject's roles), the acr and the lifetime.
    async fn refresh_grant(
        &self,
        client: &ClientRecord,
        family: &FamilyRecord,
        requested: Option<&str>,
    ) -> Result<(BTreeSet<String>, Acr, Duration), Error> {
        let granted = parse_scope(&family.scope)?;
        let scopes = match requested.filter(|s| !s.is_empty()) {
            Some(requested) => {
                let requested = parse_scope(requested)?;
                if !requested.is_subset(&granted) {
                    return Err(Error::InvalidScope(
                        "scope exceeds the original grant".into(),
                    ));
                }
                requested
            }
            None => granted,
        };
        let available = self.available_scopes(&family.subject, client).await?;
        let scopes =
            self.choose_scopes(Some(&join_scopes(&scopes)), &available, &family.audience)?;
        let acr: Acr = family
            .acr
            .parse()
            .map_err(|_| Error::Internal("stored acr".into()))?;
        let (ttl, refresh_allowed) =
            self.apply_constraints(&scopes, GrantType::RefreshToken, Some(acr))?;
        if !refresh_allowed {
            return Err(Error::InvalidGrant(
                "the policy allows no refresh for these scopes".into(),
            ));
        }
        Ok((scopes, acr, ttl))
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the claims of a token are many and all needed"
    )]
    fn claims(
        &self,
        subject: &str,
        client: &ClientRecord,
        audience: &str,
        scopes: &BTreeSet<String>,
        now: i64,
        ttl: Duration,
        authn: Option<(Acr, i64)>,
        family_id: Option<String>,
    ) -> Result<AccessClaims, Error> {
        Ok(AccessClaims {
            iss: self.inner.settings.issuer.clone(),
            sub: subject.to_owned(),
            aud: audience.to_owned(),
            client_id: client.client_id.clone(),
            scope: join_scopes(scopes),
            iat: now,
            exp: now + secs(ttl),
            jti: secrets::time_ordered_id(&self.inner.rng, self.inner.clock.now())?,
            acr: authn.map(|(acr, _)| acr.as_str().to_owned()),
            auth_time: authn.map(|(_, t)| t),
            sid: family_id,
        })
    }

    /// Records the issuance durably, then signs. The order matters: a token never exists
    /// without its event (strict mode), at worst an event exists for a token never delivered.
    async fn issue(
        &self,
        claims: AccessClaims,
        grant: GrantType,
        refresh_token: Option<String>,
    ) -> Result<Issued, Error> {
        let kid = self.inner.keys.signer(claims.iat)?.kid;
        let mut draft = EventDraft::new(EventKind::TokenIssued)
            .subject(&claims.sub)
            .client_id(&claims.client_id)
            .token_id(&claims.jti)
            .audience(&claims.aud)
            .decision(Decision::Allow)
            .attribute("grant_type", grant_name(grant))
            .attribute("scope", &claims.scope)
            .attribute("exp", claims.exp.to_string())
            .attribute("kid", &kid)
            .attribute(
                "refresh",
                if refresh_token.is_some() {
                    "rotated"
                } else {
                    "none"
                },
            );
        if let Some(sid) = &claims.sid {
            draft = draft.family_id(sid);
        }
        if let Some(acr) = &claims.acr {
            draft = draft.attribute("acr", acr);
        }
        self.record(draft).await?;
        let (access_token, _) = self.inner.keys.sign(&claims)?;
        tracing::info!(token_id = %claims.jti, client_id = %claims.client_id, audience = %claims.aud, grant = grant_name(grant), "token issued");
        Ok(Issued {
            access_token,
            expires_in: u64::try_from(claims.exp - claims.iat).unwrap_or(0),
            refresh_token,
            scope: claims.scope,
            audience: claims.aud,
            token_id: claims.jti,
        })
    }

    // ----- login -----

    /// Authenticates a user for a client and returns a single-use authorization code.
    ///
    /// Failed logins are limited per username and (when the user's address is known) per
    /// source: past the limit a login is refused `slow_down` before the password is looked
    /// at, and every failure is an audit event naming the username, never the password.
    pub async fn login(&self, input: LoginInput) -> Result<LoginOutcome, Error> {
        let client_id = input.client_id.clone();
        let username = input.username.clone();
        let source = input.source;
        match self.login_inner(input).await {
            Ok((outcome, user_id)) => {
                let draft = EventDraft::new(EventKind::LoginSucceeded)
                    .subject(user_id)
                    .client_id(&client_id)
                    .decision(Decision::Allow)
                    .attribute("acr", outcome.acr.as_str());
                self.record(draft).await?;
                Ok(outcome)
            }
            Err(error) => {
                if matches!(error, Error::LoginFailed) {
                    self.count_failed_login(&username, source);
                }
                let draft = EventDraft::new(EventKind::LoginFailed)
                    .client_id(truncate(&client_id))
                    .decision(Decision::Deny)
                    .reason(error.oauth_code())
                    .attribute("username", truncate(&username))
                    .attribute("detail", error.to_string());
                self.record_refusal(self.annotate(draft, source, &error))
                    .await;
                Err(error)
            }
        }
    }

    /// Refuses a login whose username or source has no failures left.
    fn check_login_limits(&self, username: &str, source: Option<IpAddr>) -> Result<(), Error> {
        let (limits, now) = (&self.inner.limits, self.inner.clock.now());
        limits
            .failed_logins_per_user
            .check(username, now)
            .map_err(slow_down(Limit::FailedLoginsPerUser))?;
        if let Some(source) = source {
            limits
                .failures_per_source
                .check(&source_key(source), now)
                .map_err(slow_down(Limit::FailuresPerSource))?;
        }
        Ok(())
    }

    /// Counts a wrong password or one-time code against the username and the source.
    fn count_failed_login(&self, username: &str, source: Option<IpAddr>) {
        let (limits, now) = (&self.inner.limits, self.inner.clock.now());
        limits.failed_logins_per_user.charge(username, now);
        if let Some(source) = source {
            limits.failures_per_source.charge(&source_key(source), now);
        }
    }

    /// The client of an authorization request and its exactly registered redirect URI
    /// (RFC 6749 §3.1.2.3). An error here means the request must not be redirected anywhere
    /// (§4.1.2.1): the login page shows it to the user instead.
    pub async fn authorization_client(
        &self,
        client_id: &str,
        redirect_uri: &str,
    ) -> Result<ClientRecord, Error> {
        let client_id = required("client_id", Some(client_id))?;
        let client = self
            .inner
            .store
            .client(client_id)
            .await?
            .ok_or(Error::InvalidClient)?;
        let redirect_uri = required("redirect_uri", Some(redirect_uri))?;
        if !client.redirect_uris.iter().any(|u| u == redirect_uri) {
            return Err(Error::InvalidRequest(
                "redirect_uri is not registered for this client".into(),
            ));
        }
        Ok(client)
    }

    /// Checks what an authorization request says before anyone has logged in — the client
    /// may use the grant, PKCE S256, the audience, the requested scopes are known — and
    /// returns the weakest acr a login needs for those scopes (for no scope, for every scope
    /// the client may ask for at the audience), so a login page knows whether to ask for the
    /// second factor. [`Issuer::login`] checks all of it again, with the user's roles.
    pub fn check_authorization(
        &self,
        client: &ClientRecord,
        challenge_method: &str,
        challenge: &str,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> Result<Acr, Error> {
        client_may_log_in(client)?;
        check_challenge(challenge_method, challenge)?;
        let policy = &self.inner.policy;
        let audience = self.resolve_audience(resource)?;
        let aud = policy
            .audience(&audience)
            .ok_or_else(|| Error::InvalidTarget(format!("unknown audience {audience}")))?;
        let mut scopes = parse_scope(scope.unwrap_or(""))?;
        if let Some(unknown) = scopes.iter().find(|s| !policy.is_known_scope(s)) {
            return Err(Error::InvalidScope(format!("unknown scope {unknown}")));
        }
        if scopes.is_empty() {
            scopes = client
                .scopes
                .iter()
                .filter(|s| aud.uses_scope(s))
                .cloned()
                .collect();
        }
        Ok(policy.constraints(&scopes).min_acr.unwrap_or(Acr::Pwd))
    }

    async fn login_inner(&self, input: LoginInput) -> Result<(LoginOutcome, String), Error> {
        let client = self
            .authorization_client(&input.client_id, &input.redirect_uri)
            .await?;
        let redirect_uri = input.redirect_uri.as_str();
        client_may_log_in(&client)?;
        check_challenge(&input.code_challenge_method, &input.code_challenge)?;
        let audience = self.resolve_audience(input.resource.as_deref())?;
        let username = required("username", Some(&input.username))?;
        field("password", &input.password, 1024)?;
        self.check_login_limits(username, input.source)?;
        let user = self.inner.store.user_by_name(username).await?;
        // Verify against a dummy hash for unknown users so timing does not reveal who exists.
        let stored = user
            .as_ref()
            .map_or(secrets::DUMMY_PASSWORD_HASH, |u| u.password_hash.as_str());
        let password_ok = secrets::verify_password(stored, &input.password);
        let user = match user {
            Some(user) if password_ok => user,
            _ => return Err(Error::LoginFailed),
        };
        let available = self.available_scopes(&user.user_id, &client).await?;
        let scopes = self.choose_scopes(input.scope.as_deref(), &available, &audience)?;
        let constraints = self.inner.policy.constraints(&scopes);
        let now = self.now();
        let totp = input.totp.as_deref().filter(|t| !t.is_empty());
        let acr = match (totp, &user.totp_secret) {
            (Some(code), Some(secret)) => {
                if !secrets::verify_totp(secret, code, u64::try_from(now).unwrap_or(0)) {
                    return Err(Error::LoginFailed);
                }
                Acr::Mfa
            }
            (Some(_), None) => {
                return Err(Error::AccessDenied(
                    "the user has no second factor enrolled".into(),
                ));
            }
            (None, _) => Acr::Pwd,
        };
        if constraints.min_acr.is_some_and(|min| acr < min) {
            return if user.totp_secret.is_some() {
                Err(Error::MfaRequired)
            } else {
                Err(Error::AccessDenied(
                    "the requested scope needs a second factor, which the user has not enrolled"
                        .into(),
                ))
            };
        }
        constraints
            .permits(GrantType::AuthorizationCode, Some(acr))
            .map_err(|v| Error::InvalidScope(v.to_string()))?;
        let code = secrets::random_token(&self.inner.rng)?;
        let ttl = secs(self.inner.settings.code_ttl);
        let record = CodeRecord {
            client_id: client.client_id.clone(),
            user_id: user.user_id.clone(),
            redirect_uri: redirect_uri.to_owned(),
            code_challenge: input.code_challenge.clone(),
            scope: join_scopes(&scopes),
            audience,
            acr: acr.as_str().to_owned(),
            auth_time: now,
            expires_at: now + ttl,
        };
        self.inner
            .store
            .insert_code(&secrets::hash_secret(&code), &record)
            .await?;
        Ok((
            LoginOutcome {
                code,
                expires_in: u64::try_from(ttl).unwrap_or(0),
                redirect_uri: redirect_uri.to_owned(),
                acr,
            },
            user.user_id,
        ))
    }

    // ----- revocation -----

    /// RFC 7009: a client revokes one of its refresh tokens (the whole family) or access
    /// tokens (by jti). Tokens the issuer does not know are not an error.
    /// `source` is the requester's address, for the per-source limit on failed client
    /// authentication.
    pub async fn revoke(
        &self,
        client_id: &str,
        client_secret: Option<&str>,
        token: &str,
        hint: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<(), Error> {
        match self
            .revoke_inner(client_id, client_secret, token, hint, source)
            .await
        {
            Ok(()) => Ok(()),
            Err(error) => Err(self.refuse_revocation(client_id, source, error).await),
        }
    }

    async fn revoke_inner(
        &self,
        client_id: &str,
        client_secret: Option<&str>,
        token: &str,
        hint: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<(), Error> {
        let client = self
            .authenticate_from(client_id, client_secret, source)
            .await?;
        if token.is_empty() {
            return Err(Error::InvalidRequest("token is required".into()));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(Error::InvalidRequest("token is too long".into()));
        }
        match hint {
            None | Some("") | Some("access_token") | Some("refresh_token") => {}
            Some(_) => return Err(Error::UnsupportedTokenType),
        }
        let now = self.now();
        let revocation = if token.matches('.').count() == 2 {
            // An access token: ours only if it verifies with one of our keys.
            let Ok(claims) =
                self.inner
                    .keys
                    .verify(token, &self.inner.settings.issuer, None, now, false)
            else {
                return Ok(());
            };
            if claims.client_id != client.client_id {
                return Err(Error::UnauthorizedClient(
                    "the token was issued to another client".into(),
                ));
            }
            if claims.exp <= now {
                return Ok(());
            }
            Some(
                self.inner
                    .store
                    .revoke_token(&claims.jti, claims.exp, "revoked_by_client", now)
                    .await?,
            )
        } else {
            let Some(family) = self
                .inner
                .store
                .family_of_token(&secrets::hash_secret(token))
                .await?
            else {
                return Ok(());
            };
            if family.client_id != client.client_id {
                return Err(Error::UnauthorizedClient(
                    "the token was issued to another client".into(),
                ));
            }
            self.inner
                .store
                .revoke_family(&family.family_id, "revoked_by_client", now)
                .await?
        };
        if let Some(rev) = revocation {
            self.publish_revocations(std::slice::from_ref(&rev));
            self.record(revocation_event(&rev, &client.client_id))
                .await?;
        }
        Ok(())
    }

    /// Revocations after `after_seq` that still matter.
    pub async fn revocations_after(
        &self,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<RevocationRecord>, Error> {
        Ok(self
            .inner
            .store
            .revocations_after(after_seq, self.now(), limit)
            .await?)
    }

    // ----- keys -----

    /// The public keys published now.
    pub fn jwks(&self) -> Vec<trias_proto::v1::Jwk> {
        self.inner.keys.published(self.now())
    }

    /// Re-reads the keys from the database (another issuer may have rotated).
    pub async fn reload_keys(&self) -> Result<(), Error> {
        self.inner.keys.reload().await
    }

    /// Rotates the signing key; see [`Keyring::rotate`].
    pub async fn rotate_keys(
        &self,
        actor: &Actor,
        algorithm: Option<KeyAlgorithm>,
    ) -> Result<SigningKey, Error> {
        let settings = &self.inner.settings;
        let algorithm = algorithm.unwrap_or(settings.key_algorithm);
        // A retired key stays published as long as any token it signed can live, plus the
        // largest clock skew a validator accepts.
        let linger = secs(settings.access_ttl) + 60;
        let key = self
            .inner
            .keys
            .rotate(
                &self.inner.rng,
                algorithm,
                self.now(),
                secs(settings.key_publish_delay),
                linger,
            )
            .await?;
        self.record(
            EventDraft::new(EventKind::KeyCreated)
                .subject(actor.name())
                .attribute("kid", &key.kid)
                .attribute("algorithm", algorithm.as_str())
                .attribute("activates_at", key.activates_at.to_string()),
        )
        .await?;
        Ok(key)
    }

    // ----- administration -----

    /// Checks an admin bearer token: one of this issuer's tokens, for the admin audience,
    /// unexpired, unrevoked, carrying `scope`. A refusal is an audit event.
    pub async fn authorize_admin(
        &self,
        bearer: Option<&str>,
        scope: &str,
        operation: &str,
    ) -> Result<Actor, Error> {
        let outcome = self.authorize_admin_inner(bearer, scope, operation).await;
        if let Err(error) = &outcome {
            let draft = EventDraft::new(EventKind::AdminDenied)
                .decision(Decision::Deny)
                .reason(error.oauth_code())
                .action(operation)
                .attribute("required_scope", scope)
                .attribute("detail", error.to_string());
            self.record_refusal(draft).await;
        }
        outcome
    }

    /// The validator decides the token (signature, expiry, audience `issuer-admin`, the
    /// scope the policy's action needs, revocations it has heard of); the issuer adds what it
    /// knows first-hand: the token was not revoked a moment ago, and it comes from a login
    /// with a second factor. The issuer never validates a token for its own admin API.
    async fn authorize_admin_inner(
        &self,
        bearer: Option<&str>,
        scope: &str,
        operation: &str,
    ) -> Result<Actor, Error> {
        let token = bearer
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::InvalidToken("an admin access token is required".into()))?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(Error::InvalidToken("access token is too large".into()));
        }
        let settings = &self.inner.settings;
        let checker = settings.admin_check.as_ref().ok_or_else(|| {
            Error::Unavailable(
                "the admin api is off: no validator is configured to check admin tokens".into(),
            )
        })?;
        let action = self
            .inner
            .policy
            .audience(&settings.admin_audience)
            .and_then(|audience| {
                audience
                    .actions()
                    .iter()
                    .find(|(_, needs)| needs.as_str() == scope)
                    .map(|(action, _)| action.clone())
            })
            .ok_or_else(|| {
                Error::Internal(format!(
                    "the policy's audience {} has no action needing {scope}",
                    settings.admin_audience
                ))
            })?;
        let decision = checker
            .check(token, &action, operation)
            .await
            .map_err(|status| Error::Unavailable(status.message().to_owned()))?;
        if !decision.allowed {
            let reason = decision.reason();
            return Err(match reason {
                Reason::InsufficientScope => {
                    Error::InsufficientScope(format!("the call needs scope {scope}"))
                }
                _ => Error::InvalidToken(format!(
                    "the admin token was refused: {}",
                    reason
                        .as_str_name()
                        .trim_start_matches("REASON_")
                        .to_lowercase()
                )),
            });
        }
        if self
            .inner
            .store
            .is_revoked(&decision.token_id, None)
            .await?
        {
            return Err(Error::InvalidToken("access token is revoked".into()));
        }
        // The policy already lets admin scopes come only from the stronger flow; checking the
        // token's acr here too means a policy mistake alone does not open the admin API.
        if decision.acr != Acr::Mfa.as_str() {
            return Err(Error::InsufficientScope(
                "the admin api needs a token from a login with a second factor (acr mfa)".into(),
            ));
        }
        Ok(Actor::Admin(decision.subject))
    }

    /// Registers a client; returns its secret once (confidential clients).
    pub async fn register_client(
        &self,
        actor: &Actor,
        spec: ClientSpec,
    ) -> Result<NewClient, Error> {
        let name = required("name", Some(&spec.name))?;
        if spec.grant_types.is_empty() {
            return Err(Error::InvalidRequest(
                "at least one grant type is required".into(),
            ));
        }
        if spec.public
            && spec
                .grant_types
                .iter()
                .any(|g| *g == GrantType::ClientCredentials)
        {
            return Err(Error::InvalidRequest(
                "a public client may not use client_credentials".into(),
            ));
        }
        for uri in &spec.redirect_uris {
            field("redirect_uri", uri, MAX_FIELD_LEN)?;
            let absolute = uri
                .split_once("://")
                .is_some_and(|(scheme, rest)| !scheme.is_empty() && !rest.is_empty());
            if !absolute || uri.contains(char::is_whitespace) || uri.contains('#') {
                return Err(Error::InvalidRequest(format!(
                    "redirect_uri {uri} must be an absolute uri without fragment"
                )));
            }
        }
        if spec.grant_types.contains(&GrantType::AuthorizationCode) && spec.redirect_uris.is_empty()
        {
            return Err(Error::InvalidRequest(
                "authorization_code needs at least one redirect_uri".into(),
            ));
        }
        for scope in &spec.scopes {
            if !self.inner.policy.is_known_scope(scope) {
                return Err(Error::InvalidScope(format!("unknown scope {scope}")));
            }
        }
        let client_id = format!("c-{}", secrets::random_id(&self.inner.rng)?);
        let secret = if spec.public {
            None
        } else {
            Some(secrets::random_token(&self.inner.rng)?)
        };
        let client = ClientRecord {
            client_id,
            name: name.to_owned(),
            secret_hash: secret.as_deref().map(secrets::hash_secret),
            redirect_uris: spec.redirect_uris,
            grant_types: spec.grant_types,
            scopes: spec.scopes,
            public: spec.public,
            created_at: self.now(),
        };
        self.inner.store.insert_client(&client).await?;
        self.record(
            EventDraft::new(EventKind::ClientRegistered)
                .subject(actor.name())
                .client_id(&client.client_id)
                .attribute("name", &client.name)
                .attribute("scopes", join_scopes(&client.scopes))
                .attribute("public", client.public.to_string()),
        )
        .await?;
        Ok(NewClient { client, secret })
    }

    /// Creates a user; returns the TOTP secret once if one was asked for.
    pub async fn create_user(
        &self,
        actor: &Actor,
        username: &str,
        password: &str,
        totp: bool,
    ) -> Result<NewUser, Error> {
        let username = required("username", Some(username))?;
        if username.len() > 128
            || !username
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
        {
            return Err(Error::InvalidRequest(
                "username must be at most 128 characters of letters, digits and ._@-".into(),
            ));
        }
        if password.chars().count() < 8 || password.len() > 1024 {
            return Err(Error::InvalidRequest(
                "password must be 8 to 1024 characters".into(),
            ));
        }
        let rng = &self.inner.rng;
        let totp_secret = if totp {
            Some(secrets::new_totp_secret(rng)?)
        } else {
            None
        };
        let user = UserRecord {
            user_id: format!("u-{}", secrets::random_id(rng)?),
            username: username.to_owned(),
            password_hash: secrets::hash_password(rng, password)?,
            totp_secret: totp_secret.clone(),
            created_at: self.now(),
        };
        self.inner.store.insert_user(&user).await?;
        self.record(
            EventDraft::new(EventKind::UserCreated)
                .subject(actor.name())
                .attribute("user_id", &user.user_id)
                .attribute("username", &user.username)
                .attribute("totp", totp.to_string()),
        )
        .await?;
        let issuer = &self.inner.settings.issuer;
        Ok(NewUser {
            totp_uri: totp_secret
                .as_deref()
                .map(|s| secrets::totp_uri(issuer, username, s)),
            totp_secret: totp_secret.as_deref().map(secrets::totp_secret_base32),
            user,
        })
    }

    /// Asks for a role to be granted; an approval by another administrator makes it real.
    pub async fn request_role_grant(
        &self,
        actor: &Actor,
        subject: &str,
        role: &str,
        justification: &str,
    ) -> Result<RoleGrantRecord, Error> {
        let outcome = self
            .request_role_grant_inner(actor, subject, role, justification)
            .await;
        if let Err(error) = &outcome {
            self.record_refusal(
                EventDraft::new(EventKind::RoleGrantRefused)
                    .subject(truncate(subject))
                    .decision(Decision::Deny)
                    .reason(error.oauth_code())
                    .attribute("role", truncate(role))
                    .attribute("requested_by", actor.name())
                    .attribute("detail", error.to_string()),
            )
            .await;
        }
        outcome
    }

    async fn request_role_grant_inner(
        &self,
        actor: &Actor,
        subject: &str,
        role: &str,
        justification: &str,
    ) -> Result<RoleGrantRecord, Error> {
        let subject = required("subject", Some(subject))?;
        let role = required("role", Some(role))?;
        field("justification", justification, MAX_FIELD_LEN)?;
        if actor.name() == subject {
            return Err(Error::AccessDenied(
                "no one may request a role for themselves".into(),
            ));
        }
        if !self.inner.policy.has_role(role) {
            return Err(Error::InvalidRequest(format!("unknown role {role}")));
        }
        if !self.inner.store.subject_exists(subject).await? {
            return Err(Error::NotFound(format!("subject {subject} not found")));
        }
        let held = self.inner.store.roles_of(subject).await?;
        self.inner
            .policy
            .may_hold_role(&held, role)
            .map_err(role_refusal)?;
        let now = self.now();
        let grant = RoleGrantRecord {
            id: format!("g-{}", secrets::random_id(&self.inner.rng)?),
            subject: subject.to_owned(),
            role: role.to_owned(),
            justification: justification.to_owned(),
            requested_by: actor.name().to_owned(),
            approved_by: None,
            state: "pending".into(),
            requested_at: now,
            expires_at: now + secs(self.inner.settings.role_grant_ttl),
        };
        self.inner.store.insert_role_grant(&grant).await?;
        self.record(
            EventDraft::new(EventKind::RoleGrantRequested)
                .subject(subject)
                .attribute("grant_id", &grant.id)
                .attribute("role", role)
                .attribute("requested_by", actor.name()),
        )
        .await?;
        Ok(grant)
    }

    /// Approves another administrator's pending request, checking the duty policy again.
    pub async fn approve_role_grant(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<RoleGrantRecord, Error> {
        let outcome = self.approve_role_grant_inner(actor, id).await;
        if let Err(error) = &outcome {
            self.record_refusal(
                EventDraft::new(EventKind::RoleGrantRefused)
                    .decision(Decision::Deny)
                    .reason(error.oauth_code())
                    .attribute("grant_id", truncate(id))
                    .attribute("approver", actor.name())
                    .attribute("detail", error.to_string()),
            )
            .await;
        }
        outcome
    }

    async fn approve_role_grant_inner(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<RoleGrantRecord, Error> {
        let id = required("id", Some(id))?;
        let grant = self
            .inner
            .store
            .role_grant(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("role grant {id} not found")))?;
        if grant.requested_by == actor.name() {
            return Err(Error::AccessDenied(
                "a role grant must be approved by someone other than its requester".into(),
            ));
        }
        if grant.subject == actor.name() {
            return Err(Error::AccessDenied(
                "no one may approve a role for themselves".into(),
            ));
        }
        let now = self.now();
        if grant.state == "pending" && grant.expires_at <= now {
            self.inner
                .store
                .mark_grant_state(id, "pending", "expired")
                .await?;
            return Err(Error::AccessDenied(
                "the role grant request has expired".into(),
            ));
        }
        match self
            .inner
            .store
            .approve_grant(id, actor.name(), &self.inner.policy, now)
            .await?
        {
            Approval::Approved => {}
            Approval::NotApprovable => {
                return Err(Error::AccessDenied(format!(
                    "role grant {id} is not pending"
                )));
            }
            Approval::Conflict(refusal) => return Err(role_refusal(refusal)),
        }
        self.record(
            EventDraft::new(EventKind::RoleGrantApproved)
                .subject(&grant.subject)
                .decision(Decision::Allow)
                .attribute("grant_id", id)
                .attribute("role", &grant.role)
                .attribute("requested_by", &grant.requested_by)
                .attribute("approved_by", actor.name()),
        )
        .await?;
        self.inner
            .store
            .role_grant(id)
            .await?
            .ok_or_else(|| Error::Internal("approved grant vanished".into()))
    }

    /// Creates the first two administrators (TOTP enrolled, random passwords) holding `role`,
    /// directly in the database: the one-time, local way in before two administrators exist
    /// to approve each other's role grants. Refused once anyone holds `role`.
    pub async fn bootstrap(
        &self,
        usernames: [&str; 2],
        role: &str,
    ) -> Result<[BootstrapAdmin; 2], Error> {
        if usernames[0] == usernames[1] {
            return Err(Error::InvalidRequest(
                "bootstrap needs two different administrators".into(),
            ));
        }
        if !self.inner.policy.has_role(role) {
            return Err(Error::InvalidRequest(format!("unknown role {role}")));
        }
        if self.inner.store.role_is_held(role).await? {
            return Err(Error::AlreadyExists(format!(
                "bootstrap was done already: someone holds {role}; grant roles through the admin api"
            )));
        }
        let mut made = Vec::with_capacity(2);
        for username in usernames {
            let password = secrets::random_token(&self.inner.rng)?;
            let user = self
                .create_user(&Actor::Local, username, &password, true)
                .await?;
            self.assign_role_locally(&user.user.user_id, role).await?;
            made.push(BootstrapAdmin { user, password });
        }
        made.try_into().map_err(|_| {
            Error::Internal("bootstrap made the wrong number of administrators".into())
        })
    }

    /// Assigns a role directly, without the two-person rule: only for the local bootstrap of
    /// the first administrators and demo data. The duty policy still applies.
    pub async fn assign_role_locally(&self, subject: &str, role: &str) -> Result<(), Error> {
        if !self.inner.policy.has_role(role) {
            return Err(Error::InvalidRequest(format!("unknown role {role}")));
        }
        if !self.inner.store.subject_exists(subject).await? {
            return Err(Error::NotFound(format!("subject {subject} not found")));
        }
        let assigned = self
            .inner
            .store
            .assign_role(subject, role, "local", &self.inner.policy, self.now())
            .await?;
        if let Err(refusal) = assigned {
            let error = role_refusal(refusal);
            self.record_refusal(
                EventDraft::new(EventKind::RoleGrantRefused)
                    .subject(subject)
                    .decision(Decision::Deny)
                    .reason(error.oauth_code())
                    .attribute("role", role)
                    .attribute("requested_by", Actor::Local.name())
                    .attribute("detail", error.to_string()),
            )
            .await;
            return Err(error);
        }
        self.record(
            EventDraft::new(EventKind::RoleGrantApproved)
                .subject(subject)
                .decision(Decision::Allow)
                .attribute("role", role)
                .attribute("approved_by", Actor::Local.name()),
        )
        .await
    }

    /// Removes a role from a subject.
    pub async fn revoke_role(&self, actor: &Actor, subject: &str, role: &str) -> Result<(), Error> {
        if !self.inner.store.remove_role(subject, role).await? {
            return Err(Error::NotFound(format!(
                "{subject} does not hold role {role}"
            )));
        }
        self.record(
            EventDraft::new(EventKind::RoleRevoked)
                .subject(subject)
                .attribute("role", role)
                .attribute("revoked_by", actor.name()),
        )
        .await
    }
}

fn client_may_log_in(client: &ClientRecord) -> Result<(), Error> {
    if client.grant_types.contains(&GrantType::AuthorizationCode) {
        Ok(())
    } else {
        Err(Error::UnauthorizedClient(
            "client may not use the authorization_code grant".into(),
        ))
    }
}

/// RFC 7636: only S256, and the challenge is a base64url SHA-256.
fn check_challenge(method: &str, challenge: &str) -> Result<(), Error> {
    if method != "S256" {
        return Err(Error::InvalidRequest(
            "code_challenge_method must be S256".into(),
        ));
    }
    if !secrets::is_valid_pkce_value(challenge) || challenge.len() != 43 {
        return Err(Error::InvalidRequest(
            "code_challenge must be a base64url SHA-256 (43 characters)".into(),
        ));
    }
    Ok(())
}

fn role_refusal(refusal: RoleError) -> Error {
    match refusal {
        RoleError::UnknownRole(role) => Error::InvalidRequest(format!("unknown role {role}")),
        RoleError::Conflict {
            conflict,
            role,
            held,
        } => Error::AccessDenied(format!(
            "role {role} conflicts with role {held} the subject holds (conflict \"{conflict}\")"
        )),
    }
}

fn revocation_event(rev: &RevocationRecord, client_id: &str) -> EventDraft {
    let mut draft = EventDraft::new(EventKind::TokenRevoked)
        .client_id(client_id)
        .reason(&rev.reason)
        .attribute("seq", rev.seq.to_string());
    if let Some(token_id) = &rev.token_id {
        draft = draft.token_id(token_id);
    }
    if let Some(family_id) = &rev.family_id {
        draft = draft.family_id(family_id);
    }
    draft
}

/// Bounds an untrusted value before it goes into an audit event.
fn truncate(value: &str) -> String {
    value.chars().take(256).collect()
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}
