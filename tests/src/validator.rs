//! The validator in the end-to-end harness: [`start_validator`] starts one on `127.0.0.1:0`
//! against a running issuer (its gRPC for keys and revocations, its `iss`, its clock), with a
//! temporary ledger on SQLite or PostgreSQL.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use data_encoding::HEXLOWER;
use ring::digest::{SHA256, digest};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use trias_proto::v1::validator_client::ValidatorClient;
use trias_proto::v1::{AuditEvent, CheckDecision, CheckRequest, EventKind};
use trias_runtime::clock::{Clock, ManualClock};
use trias_validator::Validator;

use crate::{
    Backend, HttpReply, IssuerHandle, PostgresDb, channel, fresh_postgres, reply, tls_env,
};

/// A caller of the introspection endpoint: client id, secret and the audience it is.
pub type IntrospectionCaller = (String, String, String);

/// What to start a validator with.
#[derive(Debug, Clone)]
pub struct ValidatorOptions {
    /// The ledger's database.
    pub backend: Backend,
    /// Defaults to the issuer's policy (the sample).
    pub policy: String,
    pub strict_audit: bool,
    pub clock_skew: Duration,
    pub max_token_bytes: usize,
    pub unknown_kid_min_interval: Duration,
    pub cache_capacity: usize,
    pub introspection_clients: Vec<IntrospectionCaller>,
    /// Ship the outbox to this auditor (`audit.auditor_url`).
    pub auditor_url: Option<String>,
    /// Share this PostgreSQL ledger (another validator's, see
    /// [`ValidatorHandle::database_url`]) instead of a fresh one; left for its owner to drop.
    pub shared_database: Option<String>,
    /// The audit producer name (`audit.producer`); each validator needs its own.
    pub producer: Option<String>,
}

/// The introspection caller every harness validator knows, for audience `payments`.
pub const PAYMENTS_BACKEND: (&str, &str) = ("payments-backend", "payments backend secret");

impl Default for ValidatorOptions {
    fn default() -> Self {
        ValidatorOptions {
            backend: Backend::Sqlite,
            policy: trias_policy::SAMPLE.to_owned(),
            strict_audit: true,
            clock_skew: Duration::from_secs(5),
            max_token_bytes: 8192,
            unknown_kid_min_interval: Duration::from_secs(10),
            cache_capacity: 100_000,
            introspection_clients: vec![(
                PAYMENTS_BACKEND.0.to_owned(),
                PAYMENTS_BACKEND.1.to_owned(),
                "payments".to_owned(),
            )],
            auditor_url: None,
            shared_database: None,
            producer: None,
        }
    }
}

impl ValidatorOptions {
    /// The defaults with the ledger on `backend`.
    pub fn on(backend: Backend) -> Self {
        ValidatorOptions {
            backend,
            ..ValidatorOptions::default()
        }
    }
}

/// A running validator.
#[derive(Debug)]
pub struct ValidatorHandle {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Prometheus `GET /metrics` (plain HTTP).
    pub metrics_addr: SocketAddr,
    pub validator: Validator,
    /// The issuer's clock, shared: advancing it moves both services.
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    database: Option<PostgresDb>,
    http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Starts a validator following `issuer`, sharing its clock; returns `None` only for a
/// PostgreSQL run with no server configured.
pub async fn start_validator(
    issuer: &IssuerHandle,
    options: ValidatorOptions,
) -> Option<ValidatorHandle> {
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_validator_on(issuer, options, grpc).await
}

/// [`start_validator`] serving gRPC on `grpc`, bound beforehand (so a service configured
/// before the validator starts can already name its address).
pub async fn start_validator_on(
    issuer: &IssuerHandle,
    options: ValidatorOptions,
    grpc: TcpListener,
) -> Option<ValidatorHandle> {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, &options.policy).unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
    let metrics_addr = metrics.local_addr().unwrap();
    let clients = options
        .introspection_clients
        .iter()
        .map(|(id, secret, audience)| {
            let hash = HEXLOWER.encode(digest(&SHA256, secret.as_bytes()).as_ref());
            format!(
                "{{client_id = \"{id}\", secret_sha256 = \"{hash}\", audience = \"{audience}\"}}"
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let ms = |d: Duration| format!("{}ms", d.as_millis().max(1));
    let mut env = BTreeMap::from([
        ("POLICY", policy_path.display().to_string()),
        ("DATA_DIR", dir.path().join("data").display().to_string()),
        ("HTTP_ADDR", format!("\"{http_addr}\"")),
        ("GRPC_ADDR", format!("\"{grpc_addr}\"")),
        ("ISSUER_GRPC", format!("http://{}", issuer.grpc_addr)),
        ("ISSUER", issuer.issuer.settings().issuer.clone()),
        ("AUDIT__STRICT", options.strict_audit.to_string()),
        ("CLOCK_SKEW", ms(options.clock_skew)),
        ("MAX_TOKEN_BYTES", options.max_token_bytes.to_string()),
        (
            "UNKNOWN_KID_MIN_INTERVAL",
            ms(options.unknown_kid_min_interval),
        ),
        ("CACHE_CAPACITY", options.cache_capacity.to_string()),
        ("START_TIMEOUT", "10s".to_owned()),
        ("INTROSPECTION_CLIENTS", format!("[{clients}]")),
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
        env.insert("DATABASE_URL", url.clone());
    }
    if let Some(producer) = &options.producer {
        env.insert("AUDIT__PRODUCER", producer.clone());
    }
    if let Some(url) = &options.auditor_url {
        env.insert("AUDIT__AUDITOR_URL", url.clone());
    }
    let mut env: BTreeMap<String, String> = env
        .into_iter()
        .map(|(k, v)| (format!("{}{k}", trias_validator::config::ENV_PREFIX), v))
        .collect();
    env.extend(tls_env(trias_validator::config::ENV_PREFIX, "validator"));
    let config = trias_validator::ValidatorConfig::load(None, &env).unwrap();
    let clock: Arc<dyn Clock> = issuer.clock.clone();
    let validator = trias_validator::open(&config, clock).await.unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let served = validator.clone();
    let task = tokio::spawn(async move {
        trias_validator::serve(served, grpc, http, Some(metrics), async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Some(ValidatorHandle {
        grpc_addr,
        http_addr,
        metrics_addr,
        validator,
        clock: issuer.clock.clone(),
        dir,
        database,
        http: reqwest::Client::new(),
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// The test identity bound to `audience` (the issuer's for `issuer-admin`); an audience no
/// test identity is bound to is asked as `payments`, naming it in the request.
pub fn identity_for(audience: &str) -> &str {
    match audience {
        "issuer-admin" => "issuer",
        "payments" | "reports" | "auditor" => audience,
        _ => "payments",
    }
}

impl ValidatorHandle {
    /// A gRPC client connected to the validator, as the `payments` backend.
    pub async fn grpc(&self) -> ValidatorClient<Channel> {
        self.grpc_as("payments").await
    }

    /// A gRPC client connected to the validator as identity `name` of the test PKI.
    pub async fn grpc_as(&self, name: &str) -> ValidatorClient<Channel> {
        ValidatorClient::new(channel(self.grpc_addr, "validator", name).await)
    }

    /// `Check` over gRPC; panics if the call itself fails (a deny is an answer).
    pub async fn check(
        &self,
        token: &str,
        action: &str,
        resource: &str,
        audience: &str,
    ) -> CheckDecision {
        self.grpc_as(identity_for(audience))
            .await
            .check(CheckRequest {
                token: token.into(),
                action: action.into(),
                resource: resource.into(),
                audience: audience.into(),
                context: Default::default(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// POSTs an introspection request with optional HTTP Basic credentials.
    pub async fn introspect(&self, token: &str, basic: Option<(&str, &str)>) -> HttpReply {
        let mut request = self
            .http
            .post(format!("http://{}/oauth2/introspect", self.http_addr))
            .form(&[("token", token)]);
        if let Some((id, secret)) = basic {
            request = request.basic_auth(id, Some(secret));
        }
        reply(request).await
    }

    /// The check events in the validator's outbox, oldest first.
    pub async fn check_events(&self) -> Vec<AuditEvent> {
        self.events_of(EventKind::Check).await
    }

    /// The events of one kind in the validator's outbox, oldest first.
    pub async fn events_of(&self, kind: EventKind) -> Vec<AuditEvent> {
        let mut events = self.validator.outbox().unshipped(0, 100_000).await.unwrap();
        events.retain(|e| e.kind() == kind);
        events
    }

    /// The PostgreSQL ledger this validator created, for a second validator to share.
    pub fn database_url(&self) -> Option<String> {
        self.database.as_ref().map(|db| db.url.clone())
    }

    /// Stops the validator, waits for it to drain, and drops its PostgreSQL database.
    pub async fn stop(mut self) {
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

impl IssuerHandle {
    /// Tells the issuer to stop without waiting for it: it refuses new connections at once,
    /// but its graceful shutdown waits for open revocation feeds, so a later
    /// [`IssuerHandle::stop`] completes only once the validators following it have stopped.
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
