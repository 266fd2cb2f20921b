//! The auditor in the end-to-end harness: [`start_auditor`] starts one on `127.0.0.1:0` with
//! a temporary data directory (its checkpoint key and, by default, its SQLite log) or a
//! fresh PostgreSQL database, and [`AuditorHandle::restart`] starts it again on the same
//! data, as a process restart would; [`AuditorHandle::down`] and [`StoppedAuditor::up`] do
//! the same in two steps, on the same port, so producers shipping to it find it again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use trias_auditor::checkpoint::{CheckpointBody, Verifier};
use trias_auditor::detect::DetectConfig;
use trias_auditor::{Auditor, AuditorConfig};
use trias_proto::v1::auditor_client::AuditorClient;
use trias_proto::v1::{
    AuditEvent, Checkpoint, Decision, EventKind, ExportRequest, LogEntry, Order, QueryRequest,
    WatchAlertsRequest,
};
use trias_runtime::access::Bearer;
use trias_runtime::clock::{Clock, ManualClock, timestamp};

use crate::validator::{ValidatorHandle, ValidatorOptions, start_validator};
use crate::{Backend, IssuerHandle, IssuerOptions, PostgresDb, fresh_postgres, start_issuer};

/// An auditor client sending a bearer token (or none).
pub type AuditorGrpc = AuditorClient<InterceptedService<Channel, Bearer>>;

/// The services that decide the auditor's security-team tokens — a private issuer and a
/// validator following it — and a security analyst's token (`audit:read` at `auditor`).
#[derive(Debug)]
pub struct AccessStack {
    pub issuer: IssuerHandle,
    pub validator: ValidatorHandle,
    /// The analyst's access token.
    pub token: String,
}

impl AccessStack {
    pub async fn start() -> AccessStack {
        let issuer = start_issuer(IssuerOptions::default()).await.unwrap();
        let validator = start_validator(&issuer, ValidatorOptions::default())
            .await
            .unwrap();
        let token = issuer
            .token_for(&["security-analyst"], "audit:read", "auditor")
            .await;
        AccessStack {
            issuer,
            validator,
            token,
        }
    }

    /// The validator's URL, as the auditor's `validator_url`.
    pub fn validator_url(&self) -> String {
        format!("http://{}", self.validator.grpc_addr)
    }

    pub async fn stop(self) {
        self.validator.stop().await;
        self.issuer.stop().await;
    }
}

/// What to start an auditor with.
#[derive(Debug, Clone)]
pub struct AuditorOptions {
    pub backend: Backend,
    /// The producers allowed to append.
    pub producers: Vec<String>,
    /// The checkpoint origin (and key name).
    pub origin: String,
    /// The detectors' settings.
    pub detectors: DetectConfig,
    /// The limits (`[limits]`).
    pub limits: trias_auditor::config::LimitsConfig,
}

impl Default for AuditorOptions {
    fn default() -> Self {
        AuditorOptions {
            backend: Backend::Sqlite,
            producers: vec!["issuer".into(), "validator".into()],
            origin: "trias.test/audit".into(),
            detectors: DetectConfig::default(),
            limits: trias_auditor::config::LimitsConfig::default(),
        }
    }
}

impl AuditorOptions {
    /// The defaults with the log on `backend`.
    pub fn on(backend: Backend) -> Self {
        AuditorOptions {
            backend,
            ..AuditorOptions::default()
        }
    }
}

/// A running auditor.
#[derive(Debug)]
pub struct AuditorHandle {
    pub grpc_addr: SocketAddr,
    /// Prometheus `GET /metrics` (plain HTTP).
    pub metrics_addr: SocketAddr,
    pub auditor: Auditor,
    pub clock: Arc<ManualClock>,
    pub dir: Arc<tempfile::TempDir>,
    config: AuditorConfig,
    database: Option<PostgresDb>,
    /// Decides the security-team tokens; shared by the auditor's restarts.
    access: Option<Arc<AccessStack>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Starts an auditor; returns `None` only for a PostgreSQL run with no server configured.
pub async fn start_auditor(options: AuditorOptions) -> Option<AuditorHandle> {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let access = Arc::new(AccessStack::start().await);
    let producers = options
        .producers
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut env = BTreeMap::from([
        ("DATA_DIR", dir.path().join("data").display().to_string()),
        ("ORIGIN", options.origin.clone()),
        ("PRODUCERS", format!("[{producers}]")),
        ("VALIDATOR_URL", access.validator_url()),
        (
            "DETECTORS__NEVER_ISSUED_GRACE",
            format!("{}ms", options.detectors.never_issued_grace.as_millis()),
        ),
        (
            "DETECTORS__DENIAL_BURST_COUNT",
            options.detectors.denial_burst_count.to_string(),
        ),
        (
            "DETECTORS__DENIAL_BURST_WINDOW",
            format!("{}ms", options.detectors.denial_burst_window.as_millis()),
        ),
        (
            "DETECTORS__LOGIN_FAILURE_COUNT",
            options.detectors.login_failure_count.to_string(),
        ),
        (
            "DETECTORS__LOGIN_FAILURE_WINDOW",
            format!("{}ms", options.detectors.login_failure_window.as_millis()),
        ),
        (
            "LIMITS__REFUSAL_ALERTS_PER_CALLER",
            options.limits.refusal_alerts_per_caller.to_string(),
        ),
    ]);
    let database = match options.backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(fresh_postgres().await?),
    };
    if let Some(db) = &database {
        env.insert("DATABASE_URL", db.url.clone());
    }
    let mut env: BTreeMap<String, String> = env
        .into_iter()
        .map(|(k, v)| (format!("{}{k}", trias_auditor::config::ENV_PREFIX), v))
        .collect();
    env.extend(crate::tls_env(trias_auditor::config::ENV_PREFIX, "auditor"));
    let config = AuditorConfig::load(None, &env).unwrap();
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Some(serve(config, dir, database, access, clock, listener).await)
}

async fn serve(
    config: AuditorConfig,
    dir: Arc<tempfile::TempDir>,
    database: Option<PostgresDb>,
    access: Arc<AccessStack>,
    clock: Arc<ManualClock>,
    listener: TcpListener,
) -> AuditorHandle {
    let grpc_addr = listener.local_addr().unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let shared: Arc<dyn Clock> = clock.clone();
    let auditor = trias_auditor::open(&config, shared).await.unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let served = auditor.clone();
    let task = tokio::spawn(async move {
        trias_auditor::serve(served, listener, Some(metrics), async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    AuditorHandle {
        grpc_addr,
        metrics_addr,
        auditor,
        clock,
        dir,
        config,
        database,
        access: Some(access),
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl AuditorHandle {
    /// A gRPC client connected to the auditor as the issuer, sending the analyst's token.
    pub async fn grpc(&self) -> AuditorGrpc {
        self.grpc_as("issuer").await
    }

    /// A gRPC client connected to the auditor as identity `name` of the test PKI, sending
    /// the analyst's token.
    pub async fn grpc_as(&self, name: &str) -> AuditorGrpc {
        self.grpc_with(name, Some(&self.access().token)).await
    }

    /// The services that decide its security-team tokens.
    pub fn access(&self) -> &AccessStack {
        self.access.as_deref().unwrap()
    }

    /// A gRPC client connected as identity `name`, sending `token` (or none).
    pub async fn grpc_with(&self, name: &str, token: Option<&str>) -> AuditorGrpc {
        let channel = crate::channel(self.grpc_addr, "auditor", name).await;
        AuditorClient::with_interceptor(channel, Bearer::new(token).unwrap())
            // Room for a full batch of maximal events.
            .max_encoding_message_size(usize::MAX)
    }

    /// The public key the auditor's checkpoints verify with.
    pub fn verifier(&self) -> Verifier {
        self.auditor.verifier().clone()
    }

    /// The log's database URL, for tests that go behind the auditor's back.
    pub fn database_url(&self) -> String {
        self.config.database_url()
    }

    /// A new event from `producer`, with a unique id.
    pub fn event(&self, producer: &str, seq: u64, subject: &str) -> AuditEvent {
        AuditEvent {
            id: format!("{producer}-{seq}-{}", random_hex()),
            producer: producer.into(),
            producer_seq: seq,
            time: Some(timestamp(self.clock.now())),
            kind: EventKind::TokenIssued as i32,
            subject: subject.into(),
            client_id: "web".into(),
            decision: Decision::Allow as i32,
            ..Default::default()
        }
    }

    /// Every entry of the log, through `Export`.
    pub async fn export(&self) -> Vec<LogEntry> {
        let mut stream = self
            .grpc()
            .await
            .export(ExportRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut entries = Vec::new();
        while let Some(entry) = stream.message().await.unwrap() {
            entries.push(entry);
        }
        entries
    }

    async fn halt(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    /// Stops the auditor and starts it again on the same data directory and database, on
    /// a new port.
    pub async fn restart(mut self) -> AuditorHandle {
        self.halt().await;
        let (config, dir, clock) = (
            self.config.clone(),
            Arc::clone(&self.dir),
            self.clock.clone(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let access = self.access.take().unwrap();
        serve(config, dir, self.database.take(), access, clock, listener).await
    }

    /// Stops the auditor, keeping its data and its address for [`StoppedAuditor::up`].
    pub async fn down(mut self) -> StoppedAuditor {
        self.halt().await;
        StoppedAuditor {
            grpc_addr: self.grpc_addr,
            config: self.config.clone(),
            dir: Arc::clone(&self.dir),
            clock: self.clock.clone(),
            database: self.database.take(),
            access: self.access.take().unwrap(),
        }
    }

    /// The auditor's gRPC URL, as producers' `audit.auditor_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Every entry matching `request` (all pages), oldest first unless it says otherwise.
    pub async fn query(&self, request: QueryRequest) -> Vec<LogEntry> {
        let mut stream = self.grpc().await.query(request).await.unwrap().into_inner();
        let mut entries = Vec::new();
        while let Some(page) = stream.message().await.unwrap() {
            entries.extend(page.entries);
        }
        entries
    }

    /// The logged events matching `request`, polling until `done` holds for them (at most
    /// ten seconds): producers ship asynchronously.
    pub async fn wait_for(
        &self,
        request: QueryRequest,
        done: impl Fn(&[AuditEvent]) -> bool,
    ) -> Vec<AuditEvent> {
        let request = QueryRequest {
            order: Order::OldestFirst as i32,
            ..request
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let events: Vec<AuditEvent> = self
                .query(request.clone())
                .await
                .into_iter()
                .filter_map(|e| e.event)
                .collect();
            if done(&events) {
                return events;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for the log; it holds {events:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Follows `WatchAlerts` from `after_index`.
    pub async fn watch_alerts(&self, after_index: u64) -> AlertWatch {
        let stream = self
            .grpc()
            .await
            .watch_alerts(WatchAlertsRequest { after_index })
            .await
            .unwrap()
            .into_inner();
        AlertWatch { stream }
    }

    /// Stops the auditor, waits for it to drain, and drops its PostgreSQL database (and
    /// stops its access stack unless a restarted handle still shares it).
    pub async fn stop(mut self) {
        self.halt().await;
        if let Some(db) = self.database.take() {
            db.drop_database().await;
        }
        if let Some(access) = self.access.take()
            && let Ok(access) = Arc::try_unwrap(access)
        {
            access.stop().await;
        }
    }
}

/// A stopped auditor whose data and address are kept.
#[derive(Debug)]
pub struct StoppedAuditor {
    grpc_addr: SocketAddr,
    config: AuditorConfig,
    dir: Arc<tempfile::TempDir>,
    clock: Arc<ManualClock>,
    database: Option<PostgresDb>,
    access: Arc<AccessStack>,
}

impl StoppedAuditor {
    /// Starts the auditor again on the same data and the same address.
    pub async fn up(self) -> AuditorHandle {
        // The old listener is closed; its port may take a moment to be free again.
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(self.grpc_addr).await {
                Ok(listener) => break listener,
                Err(error) => {
                    attempts += 1;
                    assert!(attempts < 100, "cannot bind {}: {error}", self.grpc_addr);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        serve(
            self.config,
            self.dir,
            self.database,
            self.access,
            self.clock,
            listener,
        )
        .await
    }
}

/// A `WatchAlerts` stream.
#[derive(Debug)]
pub struct AlertWatch {
    stream: tonic::Streaming<LogEntry>,
}

impl AlertWatch {
    /// The next alert, waiting at most ten seconds.
    pub async fn next(&mut self) -> LogEntry {
        tokio::time::timeout(Duration::from_secs(10), self.stream.message())
            .await
            .expect("no alert within ten seconds")
            .unwrap()
            .expect("the alert stream ended")
    }

    /// The next alert raised by `detector`, skipping others.
    pub async fn next_of(&mut self, detector: &str) -> LogEntry {
        loop {
            let entry = self.next().await;
            if entry.event.as_ref().is_some_and(|e| e.reason == detector) {
                return entry;
            }
        }
    }

    /// Whatever the stream yields next: an alert, the end (`None`) or an error.
    pub async fn message(&mut self) -> Result<Option<LogEntry>, tonic::Status> {
        self.stream.message().await
    }
}

/// Verifies a checkpoint's signed note with `verifier` and checks it says what its fields say.
#[track_caller]
pub fn verified(verifier: &Verifier, checkpoint: &Checkpoint) -> CheckpointBody {
    let body = verifier.verify(&checkpoint.note).unwrap();
    assert_eq!(body.tree_size, checkpoint.tree_size);
    assert_eq!(body.root.as_slice(), checkpoint.root_hash.as_slice());
    body
}

fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    data_encoding::HEXLOWER.encode(&bytes)
}
