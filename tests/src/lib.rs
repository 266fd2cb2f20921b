//! The end-to-end harness: starts Trias services on `127.0.0.1:0` with temporary databases
//! and gives tests clients for them. No fixed ports, no sleeps: a service is ready when
//! `start_*` returns, because its listeners are bound before it is started.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test harness fails loudly"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use data_encoding::BASE64URL_NOPAD;
use ring::digest::{SHA256, digest};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use trias_issuer::issuer::{Actor, ClientSpec, Issuer};
use trias_policy::GrantType;
use trias_proto::v1::issuer_client::IssuerClient;
use trias_runtime::clock::{Clock, ManualClock};

/// The environment variable naming a PostgreSQL server for the PostgreSQL suites, e.g.
/// `postgres://postgres@127.0.0.1:5432/postgres`. Each test creates its own database there.
pub const POSTGRES_ENV: &str = "TRIAS_TEST_POSTGRES_URL";

/// Which database a service under test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Creates a fresh PostgreSQL database and returns its URL, or `None` (with a printed
/// message) when no server is configured.
pub async fn fresh_postgres() -> Option<String> {
    let Ok(admin_url) = std::env::var(POSTGRES_ENV) else {
        eprintln!("skipping the PostgreSQL run: {POSTGRES_ENV} is not set");
        return None;
    };
    sqlx::any::install_default_drivers();
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    let name = format!("trias_test_{}", data_encoding::HEXLOWER.encode(&bytes));
    let pool = sqlx::AnyPool::connect(&admin_url)
        .await
        .expect("connect to the PostgreSQL test server");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(base, _)| base);
    Some(format!("{base}/{name}"))
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
}

impl Default for IssuerOptions {
    fn default() -> Self {
        IssuerOptions {
            backend: Backend::Sqlite,
            policy: trias_policy::SAMPLE.to_owned(),
            strict_audit: true,
            clock: Arc::new(ManualClock::new(SystemTime::now())),
            key_publish_delay: Duration::from_secs(60),
        }
    }
}

/// A running issuer.
#[derive(Debug)]
pub struct IssuerHandle {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub issuer: Issuer,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Starts an issuer; returns `None` only for a PostgreSQL run with no server configured.
pub async fn start_issuer(options: IssuerOptions) -> Option<IssuerHandle> {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, &options.policy).unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
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
    ]);
    if options.backend == Backend::Postgres {
        env.insert(
            "TRIAS_ISSUER_DATABASE_URL".to_owned(),
            fresh_postgres().await?,
        );
    }
    let config = trias_issuer::IssuerConfig::load(None, &env).unwrap();
    let clock: Arc<dyn Clock> = options.clock.clone();
    let issuer = trias_issuer::open(&config, clock).await.unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let served = issuer.clone();
    let task = tokio::spawn(async move {
        trias_issuer::serve(served, grpc, http, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Some(IssuerHandle {
        grpc_addr,
        http_addr,
        issuer,
        clock: options.clock,
        dir,
        shutdown: Some(tx),
        task: Some(task),
    })
}

impl IssuerHandle {
    /// A gRPC client connected to the issuer.
    pub async fn grpc(&self) -> IssuerClient<Channel> {
        IssuerClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .unwrap()
    }

    /// The base URL of the HTTP endpoints (also the `iss` of tokens).
    pub fn http_base(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Registers a client through the local (bootstrap) path; returns (client_id, secret).
    pub async fn client(
        &self,
        grants: &[GrantType],
        scopes: &[&str],
        public: bool,
    ) -> (String, Option<String>) {
        let spec = ClientSpec {
            name: "test client".into(),
            redirect_uris: vec!["https://app.example/callback".into()],
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

    /// All events in the outbox so far, oldest first.
    pub async fn events(&self) -> Vec<trias_proto::v1::AuditEvent> {
        self.issuer.outbox().unshipped(0, 100_000).await.unwrap()
    }

    /// Stops the issuer and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
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
