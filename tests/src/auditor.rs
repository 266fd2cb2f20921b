//! The auditor in the end-to-end harness: [`start_auditor`] starts one on `127.0.0.1:0` with
//! a temporary data directory (its checkpoint key and, by default, its SQLite log) or a
//! fresh PostgreSQL database, and [`AuditorHandle::restart`] starts it again on the same
//! data, as a process restart would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use trias_auditor::checkpoint::{CheckpointBody, Verifier};
use trias_auditor::{Auditor, AuditorConfig};
use trias_proto::v1::auditor_client::AuditorClient;
use trias_proto::v1::{AuditEvent, Checkpoint, Decision, EventKind, ExportRequest, LogEntry};
use trias_runtime::clock::{Clock, ManualClock, timestamp};

use crate::{Backend, PostgresDb, fresh_postgres};

/// What to start an auditor with.
#[derive(Debug, Clone)]
pub struct AuditorOptions {
    pub backend: Backend,
    /// The producers allowed to append.
    pub producers: Vec<String>,
    /// The checkpoint origin (and key name).
    pub origin: String,
}

impl Default for AuditorOptions {
    fn default() -> Self {
        AuditorOptions {
            backend: Backend::Sqlite,
            producers: vec!["issuer".into(), "validator".into()],
            origin: "trias.test/audit".into(),
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
    pub auditor: Auditor,
    pub clock: Arc<ManualClock>,
    pub dir: Arc<tempfile::TempDir>,
    config: AuditorConfig,
    database: Option<PostgresDb>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Starts an auditor; returns `None` only for a PostgreSQL run with no server configured.
pub async fn start_auditor(options: AuditorOptions) -> Option<AuditorHandle> {
    let dir = Arc::new(tempfile::tempdir().unwrap());
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
    ]);
    let database = match options.backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(fresh_postgres().await?),
    };
    if let Some(db) = &database {
        env.insert("DATABASE_URL", db.url.clone());
    }
    let env = env
        .into_iter()
        .map(|(k, v)| (format!("{}{k}", trias_auditor::config::ENV_PREFIX), v))
        .collect();
    let config = AuditorConfig::load(None, &env).unwrap();
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    Some(serve(config, dir, database, clock).await)
}

async fn serve(
    config: AuditorConfig,
    dir: Arc<tempfile::TempDir>,
    database: Option<PostgresDb>,
    clock: Arc<ManualClock>,
) -> AuditorHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = listener.local_addr().unwrap();
    let shared: Arc<dyn Clock> = clock.clone();
    let auditor = trias_auditor::open(&config, shared).await.unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let served = auditor.clone();
    let task = tokio::spawn(async move {
        trias_auditor::serve(served, listener, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    AuditorHandle {
        grpc_addr,
        auditor,
        clock,
        dir,
        config,
        database,
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl AuditorHandle {
    /// A gRPC client connected to the auditor.
    pub async fn grpc(&self) -> AuditorClient<Channel> {
        AuditorClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .unwrap()
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
        serve(config, dir, self.database.take(), clock).await
    }

    /// Stops the auditor, waits for it to drain, and drops its PostgreSQL database.
    pub async fn stop(mut self) {
        self.halt().await;
        if let Some(db) = self.database.take() {
            db.drop_database().await;
        }
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
