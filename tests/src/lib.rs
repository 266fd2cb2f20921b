//! The end-to-end harness: starts Trias services on `127.0.0.1:0` with temporary databases
//! and gives tests clients for them. No fixed ports, no sleeps: a service is ready when
//! `start_*` returns, because its listeners are bound before it is started.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test harness fails loudly"
)]

pub mod auditor;
pub mod bench;
pub mod limits;
pub mod processes;
pub mod stack;
pub mod validator;
pub mod webdriver;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use ring::digest::{SHA256, digest};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use trias_cli::pki::Pki;
use trias_issuer::issuer::{Actor, ClientSpec, Issuer};
use trias_policy::GrantType;
use trias_proto::v1::issuer_client::IssuerClient;
use trias_proto::v1::{
    AuditEvent, EventKind, GrantType as PbGrant, LoginRequest, Revocation, TokenRequest,
    TokenResponse,
};
use trias_runtime::clock::{Clock, ManualClock, unix_seconds};
use trias_runtime::tls::{Transport, identity_of};

pub use trias_runtime::testing::{POSTGRES_ENV, PostgresDb, fresh_postgres};

/// The test PKI's identities beyond the services and `cli`: two backends, a test producer
/// of audit events, and an impostor (a certificate from the right CA with an identity no
/// service grants anything to).
pub const TEST_BACKENDS: [&str; 4] = ["payments", "reports", "loadgen", "impostor"];

/// The test PKI, made once per test process: a CA, the services, `cli` and [`TEST_BACKENDS`].
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<(tempfile::TempDir, Pki)> = OnceLock::new();
    &PKI.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path().join("pki"));
        let names: Vec<String> = TEST_BACKENDS.iter().map(|s| (*s).to_owned()).collect();
        pki.init(&names).unwrap();
        (dir, pki)
    })
    .1
}

/// The `[tls]` settings of identity `name` as environment entries under `prefix`.
pub fn tls_env(prefix: &str, name: &str) -> Vec<(String, String)> {
    let files = pki().files(name);
    [("CA", files.ca), ("CERT", files.cert), ("KEY", files.key)]
        .into_iter()
        .map(|(key, path)| (format!("{prefix}TLS__{key}"), path.display().to_string()))
        .collect()
}

/// The mTLS transport of identity `name` from the test PKI.
pub fn transport(name: &str) -> Transport {
    Transport::load(&pki().files(name)).unwrap()
}

/// A gRPC channel to `addr`, whose server must prove identity `server`, presenting the
/// certificate of `client` (identity names of the test PKI).
pub async fn channel(addr: SocketAddr, server: &str, client: &str) -> Channel {
    transport(client)
        .endpoint(&format!("http://{addr}"), &identity_of(server))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A gRPC channel like [`channel`]'s, whose connection comes from the local address `from`
/// (any of 127.0.0.0/8 on Linux), so tests can act as several source addresses.
pub async fn channel_from(
    addr: SocketAddr,
    server: &str,
    client: &str,
    from: std::net::IpAddr,
) -> Channel {
    transport(client)
        .endpoint(&format!("http://{addr}"), &identity_of(server))
        .unwrap()
        .local_address(Some(from))
        .connect()
        .await
        .unwrap()
}

/// The redirect URIs every test client registers; logins use the first.
pub const REDIRECT_URIS: [&str; 2] = [
    "https://app.example/callback",
    "https://app.example/other-callback",
];

/// Every admin scope of the sample policy.
pub const ADMIN_SCOPES: &str = "admin:clients admin:users admin:roles admin:keys";

/// Which database a service under test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What to start an issuer with.
#[derive(Debug, Clone)]
pub struct IssuerOptions {
    pub backend: Backend,
    pub policy: String,
    pub strict_audit: bool,
    /// The issuer's clock; the tests advance it instead of sleeping.
    pub clock: Arc<ManualClock>,
    pub key_publish_delay: Duration,
    pub access_token_ttl: Duration,
    /// Ship the outbox to this auditor (`audit.auditor_url`).
    pub auditor_url: Option<String>,
    /// Start a validator beside the issuer to decide its admin tokens (`validator_url`).
    pub admin_validator: bool,
    /// Share this PostgreSQL database (another issuer's, see [`IssuerHandle::database_url`])
    /// instead of a fresh one; it is left for its owner to drop.
    pub shared_database: Option<String>,
    /// The `iss` (`issuer_url`); several issuers behind one address share one.
    pub issuer_url: Option<String>,
    /// The audit producer name (`audit.producer`); each issuer sharing a database needs its own.
    pub producer: Option<String>,
    /// The rate limits (`[limits]`).
    pub limits: trias_issuer::config::LimitsConfig,
}

impl Default for IssuerOptions {
    fn default() -> Self {
        IssuerOptions {
            backend: Backend::Sqlite,
            policy: trias_policy::SAMPLE.to_owned(),
            strict_audit: true,
            clock: Arc::new(ManualClock::new(SystemTime::now())),
            key_publish_delay: Duration::from_secs(60),
            access_token_ttl: Duration::from_secs(300),
            auditor_url: None,
            admin_validator: true,
            shared_database: None,
            issuer_url: None,
            producer: None,
            limits: trias_issuer::config::LimitsConfig::default(),
        }
    }
}

impl IssuerOptions {
    /// The defaults (sample policy, strict audit) on `backend`.
    pub fn on(backend: Backend) -> Self {
        IssuerOptions {
            backend,
            ..IssuerOptions::default()
        }
    }
}

/// A running issuer.
#[derive(Debug)]
pub struct IssuerHandle {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Prometheus `GET /metrics` (plain HTTP).
    pub metrics_addr: SocketAddr,
    pub issuer: Issuer,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    database: Option<PostgresDb>,
    http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// The validator that decides this issuer's admin tokens.
    admin_validator: Option<Box<validator::ValidatorHandle>>,
}

/// Starts an issuer; returns `None` only for a PostgreSQL run with no server configured.
pub async fn start_issuer(options: IssuerOptions) -> Option<IssuerHandle> {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, &options.policy).unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
    let metrics_addr = metrics.local_addr().unwrap();
    let mut env = std::collections::BTreeMap::from([
        (
            "TRIAS_ISSUER_POLICY".to_owned(),
            policy_path.display().to_string(),
        ),
        (
            "TRIAS_ISSUER_DATA_DIR".to_owned(),
            dir.path().join("data").display().to_string(),
        ),
        (
            "TRIAS_ISSUER_HTTP_ADDR".to_owned(),
            format!("\"{http_addr}\""),
        ),
        (
            "TRIAS_ISSUER_GRPC_ADDR".to_owned(),
            format!("\"{grpc_addr}\""),
        ),
        (
            "TRIAS_ISSUER_AUDIT__STRICT".to_owned(),
            options.strict_audit.to_string(),
        ),
        (
            "TRIAS_ISSUER_KEY_PUBLISH_DELAY".to_owned(),
            format!("{}s", options.key_publish_delay.as_secs().max(1)),
        ),
        (
            "TRIAS_ISSUER_ACCESS_TOKEN_TTL".to_owned(),
            format!("{}s", options.access_token_ttl.as_secs().max(1)),
        ),
    ]);
    let database = match (options.backend, &options.shared_database) {
        (_, Some(_)) | (Backend::Sqlite, None) => None,
        (Backend::Postgres, None) => Some(fresh_postgres().await?),
    };
    if let Some(url) = database
        .as_ref()
        .map(|db| &db.url)
        .or(options.shared_database.as_ref())
    {
        env.insert("TRIAS_ISSUER_DATABASE_URL".to_owned(), url.clone());
    }
    if let Some(url) = &options.auditor_url {
        env.insert("TRIAS_ISSUER_AUDIT__AUDITOR_URL".to_owned(), url.clone());
    }
    if let Some(url) = &options.issuer_url {
        env.insert("TRIAS_ISSUER_ISSUER_URL".to_owned(), url.clone());
    }
    if let Some(producer) = &options.producer {
        env.insert("TRIAS_ISSUER_AUDIT__PRODUCER".to_owned(), producer.clone());
    }
    let limits = &options.limits;
    for (key, value) in [
        ("TOKEN_PER_CLIENT", limits.token_per_client.to_string()),
        (
            "FAILED_LOGINS_PER_USER",
            limits.failed_logins_per_user.to_string(),
        ),
        (
            "FAILURES_PER_SOURCE",
            limits.failures_per_source.to_string(),
        ),
        ("TRACKED_KEYS", limits.tracked_keys.to_string()),
    ] {
        env.insert(format!("TRIAS_ISSUER_LIMITS__{key}"), value);
    }
    env.extend(tls_env(trias_issuer::config::ENV_PREFIX, "issuer"));
    // The admin validator's listener is bound now, so the issuer can name it.
    let admin_listener = match options.admin_validator {
        true => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        false => None,
    };
    if let Some(listener) = &admin_listener {
        env.insert(
            "TRIAS_ISSUER_VALIDATOR_URL".to_owned(),
            format!("http://{}", listener.local_addr().unwrap()),
        );
    }
    let config = trias_issuer::IssuerConfig::load(None, &env).unwrap();
    let clock: Arc<dyn Clock> = options.clock.clone();
    let issuer = trias_issuer::open(&config, clock).await.unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let served = issuer.clone();
    let task = tokio::spawn(async move {
        trias_issuer::serve(served, grpc, http, Some(metrics), async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    let mut handle = IssuerHandle {
        grpc_addr,
        http_addr,
        metrics_addr,
        issuer,
        clock: options.clock,
        dir,
        database,
        http: reqwest::Client::new(),
        shutdown: Some(tx),
        task: Some(task),
        admin_validator: None,
    };
    if let Some(listener) = admin_listener {
        let validator_options = validator::ValidatorOptions {
            policy: options.policy.clone(),
            introspection_clients: Vec::new(),
            ..validator::ValidatorOptions::default()
        };
        let validator = validator::start_validator_on(&handle, validator_options, listener)
            .await
            .unwrap();
        handle.admin_validator = Some(Box::new(validator));
    }
    Some(handle)
}

/// A login frontend registered at the issuer: an authorization_code (and refresh_token) client.
#[derive(Debug, Clone)]
pub struct Frontend {
    pub client_id: String,
    /// `None` for a public client.
    pub secret: Option<String>,
}

impl Frontend {
    /// A login at the first registered redirect URI with a fresh PKCE pair; returns the
    /// request (adjust fields with struct update syntax) and the PKCE verifier.
    pub fn login(&self, username: &str, password: &str, scope: &str) -> (LoginRequest, String) {
        let (verifier, challenge) = pkce_pair();
        let request = LoginRequest {
            client_id: self.client_id.clone(),
            redirect_uri: REDIRECT_URIS[0].into(),
            code_challenge: challenge,
            code_challenge_method: "S256".into(),
            scope: scope.into(),
            username: username.into(),
            password: password.into(),
            ..Default::default()
        };
        (request, verifier)
    }

    /// The token request exchanging a code at the first registered redirect URI.
    pub fn exchange(&self, code: &str, verifier: &str) -> TokenRequest {
        TokenRequest {
            grant_type: PbGrant::AuthorizationCode as i32,
            client_id: self.client_id.clone(),
            client_secret: self.secret.clone().unwrap_or_default(),
            code: code.into(),
            code_verifier: verifier.into(),
            redirect_uri: REDIRECT_URIS[0].into(),
            ..Default::default()
        }
    }

    /// The token request spending a refresh token.
    pub fn refresh(&self, refresh_token: &str) -> TokenRequest {
        TokenRequest {
            grant_type: PbGrant::RefreshToken as i32,
            client_id: self.client_id.clone(),
            client_secret: self.secret.clone().unwrap_or_default(),
            refresh_token: refresh_token.into(),
            ..Default::default()
        }
    }
}

/// An administrator: a user holding the `admin` role, enrolled in TOTP, with a frontend
/// allowed the admin scopes to log in through.
#[derive(Debug, Clone)]
pub struct Admin {
    pub user_id: String,
    pub username: String,
    pub password: String,
    pub totp_secret: String,
    pub frontend: Frontend,
}

/// An HTTP response: status, headers and the body as JSON (`Null` when it is not JSON).
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl HttpReply {
    /// The value of a header, or "" if absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The RFC 6749 `error` field.
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

impl IssuerHandle {
    /// The validator that decides this issuer's admin tokens, if it has one.
    pub fn admin_validator(&self) -> Option<&validator::ValidatorHandle> {
        self.admin_validator.as_deref()
    }

    /// A gRPC client connected to the issuer, as the operator's CLI.
    pub async fn grpc(&self) -> IssuerClient<Channel> {
        self.grpc_as("cli").await
    }

    /// A gRPC client connected to the issuer as identity `name` of the test PKI.
    pub async fn grpc_as(&self, name: &str) -> IssuerClient<Channel> {
        IssuerClient::new(channel(self.grpc_addr, "issuer", name).await)
    }

    /// The base URL of the HTTP endpoints (also the `iss` of tokens).
    pub fn http_base(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The issuer's time, in unix seconds.
    pub fn now(&self) -> i64 {
        unix_seconds(self.clock.now())
    }

    /// Moves the issuer's clock forward.
    pub fn advance(&self, seconds: u64) {
        self.clock.advance(Duration::from_secs(seconds));
    }

    /// Registers a client through the local (bootstrap) path; returns (client_id, secret).
    pub async fn client(
        &self,
        grants: &[GrantType],
        scopes: &[&str],
        public: bool,
    ) -> (String, Option<String>) {
        self.client_redirecting_to(grants, scopes, public, &REDIRECT_URIS)
            .await
    }

    /// Registers a client with its own redirect URIs; returns (client_id, secret).
    pub async fn client_redirecting_to(
        &self,
        grants: &[GrantType],
        scopes: &[&str],
        public: bool,
        redirect_uris: &[&str],
    ) -> (String, Option<String>) {
        let spec = ClientSpec {
            name: "test client".into(),
            redirect_uris: redirect_uris.iter().map(|u| (*u).to_owned()).collect(),
            grant_types: grants.iter().copied().collect(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            public,
        };
        let created = self
            .issuer
            .register_client(&Actor::Local, spec)
            .await
            .unwrap();
        (created.client.client_id, created.secret)
    }

    /// A confidential client_credentials client holding `roles`.
    pub async fn service_client(&self, roles: &[&str], scopes: &[&str]) -> (String, String) {
        let (id, secret) = self
            .client(&[GrantType::ClientCredentials], scopes, false)
            .await;
        for role in roles {
            self.issuer.assign_role_locally(&id, role).await.unwrap();
        }
        (id, secret.unwrap())
    }

    /// A client_credentials token for a new service client holding `roles`, for `scope`
    /// at `resource` (RFC 8707; "" for the policy's default audience).
    pub async fn token_for(&self, roles: &[&str], scope: &str, resource: &str) -> String {
        let scopes: Vec<&str> = scope.split(' ').collect();
        let (id, secret) = self.service_client(roles, &scopes).await;
        let request = TokenRequest {
            resource: resource.into(),
            ..client_credentials(&id, &secret, scope)
        };
        self.grpc()
            .await
            .token(request)
            .await
            .unwrap()
            .into_inner()
            .access_token
    }

    /// A frontend using authorization_code and refresh_token, allowed `scopes`.
    pub async fn frontend(&self, scopes: &[&str], public: bool) -> Frontend {
        let grants = [GrantType::AuthorizationCode, GrantType::RefreshToken];
        let (client_id, secret) = self.client(&grants, scopes, public).await;
        Frontend { client_id, secret }
    }

    /// Creates a user holding `roles`; returns (user_id, TOTP secret base32 if asked).
    pub async fn user(
        &self,
        username: &str,
        password: &str,
        roles: &[&str],
        totp: bool,
    ) -> (String, Option<String>) {
        let created = self
            .issuer
            .create_user(&Actor::Local, username, password, totp)
            .await
            .unwrap();
        for role in roles {
            self.issuer
                .assign_role_locally(&created.user.user_id, role)
                .await
                .unwrap();
        }
        (created.user.user_id, created.totp_secret)
    }

    /// The TOTP code of a base32 secret at the issuer's current time.
    pub fn totp(&self, secret_base32: &str) -> String {
        let secret = BASE32_NOPAD.decode(secret_base32.as_bytes()).unwrap();
        trias_issuer::secrets::totp_at(&secret, u64::try_from(self.now()).unwrap())
    }

    /// Logs in through `frontend` and exchanges the code; panics on any refusal.
    pub async fn sign_in(
        &self,
        frontend: &Frontend,
        username: &str,
        password: &str,
        scope: &str,
    ) -> TokenResponse {
        let mut grpc = self.grpc().await;
        let (login, verifier) = frontend.login(username, password, scope);
        let code = grpc.login(login).await.unwrap().into_inner().code;
        grpc.token(frontend.exchange(&code, &verifier))
            .await
            .unwrap()
            .into_inner()
    }

    /// Creates an administrator (role `admin`, TOTP enrolled) and a frontend for them.
    pub async fn admin(&self, username: &str) -> Admin {
        let password = format!("{username} password");
        let (user_id, totp) = self.user(username, &password, &["admin"], true).await;
        let scopes: Vec<&str> = ADMIN_SCOPES.split(' ').collect();
        Admin {
            user_id,
            username: username.to_owned(),
            password,
            totp_secret: totp.unwrap(),
            frontend: self.frontend(&scopes, false).await,
        }
    }

    /// An admin access token for `scopes` (space-separated), from a login with TOTP at the
    /// admin audience: the stronger flow the admin API demands.
    pub async fn admin_token(&self, admin: &Admin, scopes: &str) -> String {
        let mut grpc = self.grpc().await;
        let (login, verifier) = admin
            .frontend
            .login(&admin.username, &admin.password, scopes);
        let login = LoginRequest {
            resource: "issuer-admin".into(),
            totp: self.totp(&admin.totp_secret),
            ..login
        };
        let code = grpc.login(login).await.unwrap().into_inner().code;
        let token = grpc
            .token(admin.frontend.exchange(&code, &verifier))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(token.audience, "issuer-admin");
        token.access_token
    }

    /// POSTs a form to an HTTP endpoint, with HTTP Basic client authentication if given.
    pub async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> HttpReply {
        let mut request = self
            .http
            .post(format!("{}{path}", self.http_base()))
            .form(form);
        if let Some((id, secret)) = basic {
            request = request.basic_auth(id, Some(secret));
        }
        reply(request).await
    }

    /// POSTs a raw body with a content type.
    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> HttpReply {
        let request = self
            .http
            .post(format!("{}{path}", self.http_base()))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        reply(request).await
    }

    /// GETs an HTTP endpoint.
    pub async fn get(&self, path: &str) -> HttpReply {
        reply(self.http.get(format!("{}{path}", self.http_base()))).await
    }

    /// All events in the outbox so far, oldest first.
    pub async fn events(&self) -> Vec<AuditEvent> {
        self.issuer.outbox().unshipped(0, 100_000).await.unwrap()
    }

    /// The events of one kind, oldest first.
    pub async fn events_of(&self, kind: EventKind) -> Vec<AuditEvent> {
        let mut events = self.events().await;
        events.retain(|e| e.kind() == kind);
        events
    }

    /// The PostgreSQL database this issuer created, for a second issuer to share.
    pub fn database_url(&self) -> Option<String> {
        self.database.as_ref().map(|db| db.url.clone())
    }

    /// Stops the issuer (and its admin validator), waits for it to drain, and drops its
    /// PostgreSQL database.
    pub async fn stop(mut self) {
        if let Some(validator) = self.admin_validator.take() {
            validator.stop().await;
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        if let Some(db) = self.database.take() {
            db.drop_database().await;
        }
    }
}

async fn reply(request: reqwest::RequestBuilder) -> HttpReply {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    HttpReply {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// A client_credentials token request.
pub fn client_credentials(client_id: &str, secret: &str, scope: &str) -> TokenRequest {
    TokenRequest {
        grant_type: PbGrant::ClientCredentials as i32,
        client_id: client_id.into(),
        client_secret: secret.into(),
        scope: scope.into(),
        ..Default::default()
    }
}

/// A gRPC request carrying `authorization: Bearer <token>`.
pub fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The sample policy without its static payments conflict, so one subject can hold both the
/// create and the approve scope and only dual control stands between them.
pub fn policy_without_static_conflict() -> String {
    let conflict = "[[conflict]]\nname  = \"payments maker-checker\"\nroles = [\"clerk\", \"approver\", \"treasurer\"]\n";
    assert!(trias_policy::SAMPLE.contains(conflict));
    trias_policy::SAMPLE.replace(conflict, "")
}

/// A PKCE verifier and its S256 challenge.
pub fn pkce_pair() -> (String, String) {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    let verifier = BASE64URL_NOPAD.encode(&bytes);
    let challenge = BASE64URL_NOPAD.encode(digest(&SHA256, verifier.as_bytes()).as_ref());
    (verifier, challenge)
}

/// The OAuth error code in a gRPC status's `google.rpc.ErrorInfo`, if any.
pub fn oauth_error(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    status.get_details_error_info().map(|info| info.reason)
}

/// Asserts that a call failed with `code` and the OAuth error `error`; returns the status.
#[track_caller]
pub fn refused<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    error: &str,
) -> tonic::Status {
    let status = result.expect_err("the call should have been refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(oauth_error(&status).as_deref(), Some(error), "{status:?}");
    status
}

/// The decoded (not verified) header and claims of a JWT.
pub fn jwt_parts(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(
        parts.len(),
        3,
        "a JWS compact serialization has three parts"
    );
    let decode = |part: &str| -> Value {
        serde_json::from_slice(&BASE64URL_NOPAD.decode(part.as_bytes()).unwrap()).unwrap()
    };
    (decode(parts[0]), decode(parts[1]))
}

/// The claims of a JWT, not verified.
pub fn claims(token: &str) -> Value {
    jwt_parts(token).1
}

/// Asserts that no bearer value (token, code, secret, password) appears in any event.
#[track_caller]
pub fn assert_no_bearer_values(events: &[AuditEvent], values: &[&str]) {
    let text = format!("{events:?}");
    for value in values.iter().filter(|v| !v.is_empty()) {
        assert!(
            !text.contains(value),
            "a bearer value leaked into the audit events"
        );
    }
}

/// Scrapes a Prometheus endpoint; panics unless it answers 200 in the text format.
pub async fn scrape(metrics_addr: SocketAddr) -> Metrics {
    let response = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    Metrics::parse(&response.text().await.unwrap())
}

/// A parsed Prometheus text exposition: each sample by name and sorted labels.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub text: String,
    samples: Vec<Sample>,
}

/// One sample: name, labels (sorted by name) and value.
type Sample = (String, Vec<(String, String)>, f64);

impl Metrics {
    /// Parses the text format (escaped label values included); panics on a malformed line.
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                other => other.parse().expect("a sample value"),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), Vec::new()),
                Some((name, rest)) => {
                    let rest = rest.strip_suffix('}').expect("labels close");
                    (name.to_owned(), parse_labels(rest))
                }
            };
            samples.push((name, labels, value));
        }
        Metrics {
            text: text.to_owned(),
            samples,
        }
    }

    /// The value of the sample `name` with exactly these labels, if present.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        wanted.sort();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == wanted)
            .map(|(_, _, v)| *v)
    }

    /// [`Metrics::get`], 0 when the sample is absent (a counter not yet incremented).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "a label value opens with a quote");
        let mut value = String::new();
        loop {
            match chars.next().expect("a label value closes") {
                '"' => break,
                '\\' => match chars.next().expect("an escape") {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        }
        labels.push((name.trim_start_matches(',').to_owned(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels.sort();
    labels
}

/// The next revocation on a feed; fails the test if none arrives within five seconds.
pub async fn next_revocation(stream: &mut tonic::Streaming<Revocation>) -> Revocation {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a revocation within five seconds")
        .unwrap()
        .expect("the feed stays open")
}
