//! The auditor killed with SIGKILL under load, several times, and started again on the same
//! data: every event the issuer and the validator recorded reaches the log exactly once, every
//! receipt a producer was given still names its event, and the log still verifies from its
//! signed checkpoint down to every leaf.
//!
//! The auditor runs as a separate process (this test binary run again as
//! [`auditor_process`]), so a kill really is a kill: no destructor, no flush, no graceful
//! shutdown. The issuer and the validator run in this process and ship their outboxes to it;
//! a third producer appends directly and keeps every receipt.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use trias_proto::v1::validator_client::ValidatorClient;
use trias_runtime::tls::identity_of;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use trias_auditor::merkle::{Frontier, leaf_hash};
use trias_cli::audit::run_args;
use trias_proto::v1::auditor_client::AuditorClient;
use trias_proto::v1::{
    AppendRequest, AuditEvent, Decision, EventKind, ExportRequest, GetCheckpointRequest,
};
use trias_runtime::access::Bearer;
use trias_runtime::clock::timestamp;
use trias_tests::auditor::AccessStack;
use trias_tests::validator::{ValidatorHandle, ValidatorOptions, start_validator};
use trias_tests::{
    Backend, IssuerHandle, IssuerOptions, PostgresDb, client_credentials, fresh_postgres,
    start_issuer,
};

/// Set in the environment of the child process: the auditor's configuration file.
const CHILD_CONFIG: &str = "TRIAS_E2E_AUDITOR_CONFIG";
/// Set in the environment of the child process: the address to listen on (`127.0.0.1:0`
/// the first time, the same address after a kill).
const CHILD_ADDR: &str = "TRIAS_E2E_AUDITOR_ADDR";
/// The line the child prints once it is listening: `<prefix> <addr> <verifier key>`.
const READY: &str = "trias-e2e-auditor listening";
/// The producer that appends directly and keeps its receipts.
const DIRECT: &str = "loadgen";
/// How many times the auditor is killed.
const KILLS: usize = 3;
/// How much the log must grow between two kills, so each kill lands under load.
const GROWTH_BETWEEN_KILLS: u64 = 150;

/// Not a test of its own: the auditor process of the SIGKILL tests. They run this binary
/// again with `--ignored --exact audit_crash::auditor_process` and the configuration in the
/// environment; it serves until it is killed.
#[test]
#[ignore = "the auditor process the SIGKILL tests start; runs only inside them"]
fn auditor_process() {
    let Some(config) = std::env::var_os(CHILD_CONFIG) else {
        return;
    };
    let addr = std::env::var(CHILD_ADDR).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let env = BTreeMap::new();
        let config = trias_auditor::AuditorConfig::load(Some(Path::new(&config)), &env).unwrap();
        let auditor = trias_auditor::open(&config, Arc::new(trias_runtime::clock::SystemClock))
            .await
            .unwrap();
        // The old process's port may take a moment to be free again.
        let mut attempts = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(&addr).await {
                Ok(listener) => break listener,
                Err(error) => {
                    attempts += 1;
                    assert!(attempts < 200, "cannot bind {addr}: {error}");
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        };
        let bound = listener.local_addr().unwrap();
        #[allow(clippy::print_stdout, reason = "the parent test reads this line")]
        {
            println!("{READY} {bound} {}", auditor.verifier());
        }
        trias_auditor::serve(auditor, listener, None, std::future::pending())
            .await
            .unwrap();
    });
}

/// A running auditor process.
struct AuditorProcess {
    child: Child,
    addr: String,
    verifier: String,
}

/// Starts the auditor process on `config`, listening on `addr`, and waits for its ready line.
async fn spawn_auditor(config: &Path, addr: &str) -> AuditorProcess {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "audit_crash::auditor_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_CONFIG, config)
        .env(CHILD_ADDR, addr)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // libtest prints the test's name first, on the same line.
            if let Some(at) = line.find(READY) {
                return line[at + READY.len()..].trim().to_owned();
            }
        }
        panic!("the auditor process ended before it was listening");
    })
    .await
    .expect("the auditor process did not start within a minute");
    // Keep draining its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (addr, verifier) = ready.split_once(' ').unwrap();
    AuditorProcess {
        child,
        addr: addr.to_owned(),
        verifier: verifier.to_owned(),
    }
}

impl AuditorProcess {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL, and wait until the process is gone.
    async fn kill(mut self) -> String {
        self.child.kill().await.unwrap();
        self.addr
    }

    async fn client(&self) -> AuditorClient<Channel> {
        AuditorClient::new(
            trias_tests::channel(self.addr.parse().unwrap(), "auditor", "issuer").await,
        )
        .max_decoding_message_size(usize::MAX)
    }

    async fn size(&self) -> u64 {
        self.client()
            .await
            .get_checkpoint(GetCheckpointRequest {})
            .await
            .unwrap()
            .into_inner()
            .tree_size
    }
}

both_backends!(sigkill_under_load_loses_nothing_and_doubles_nothing);

async fn sigkill_under_load_loses_nothing_and_doubles_nothing(backend: Backend) {
    let database = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => match fresh_postgres().await {
            Some(db) => Some(db),
            None => return,
        },
    };
    let dir = tempfile::tempdir().unwrap();
    // The services that decide the security-team token the final verification uses.
    let access = AccessStack::start().await;
    let config = write_config(dir.path(), database.as_ref(), &access.validator_url());
    let mut auditor = spawn_auditor(&config, "127.0.0.1:0").await;

    let issuer = start_issuer(IssuerOptions {
        auditor_url: Some(auditor.url()),
        ..IssuerOptions::on(backend)
    })
    .await
    .unwrap();
    let validator = start_validator(
        &issuer,
        ValidatorOptions {
            auditor_url: Some(auditor.url()),
            ..ValidatorOptions::on(backend)
        },
    )
    .await
    .unwrap();

    // The load: clients minting and checking tokens, and a producer appending directly.
    let running = Arc::new(AtomicBool::new(true));
    let minted = Arc::new(Mutex::new(Vec::<String>::new()));
    let receipts = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
    let refused = Arc::new(AtomicU64::new(0));
    let mut load = JoinSet::new();
    for _ in 0..3 {
        load.spawn(mint_and_check(
            issuer_client(&issuer).await,
            validator_client(&validator).await,
            Arc::clone(&running),
            Arc::clone(&minted),
            issuer_service_client(&issuer).await,
        ));
    }
    load.spawn(append_directly(
        auditor.url(),
        Arc::clone(&running),
        Arc::clone(&receipts),
        Arc::clone(&refused),
    ));

    for _ in 0..KILLS {
        let from = auditor.size().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while auditor.size().await < from + GROWTH_BETWEEN_KILLS {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the log stopped growing"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let addr = auditor.kill().await;
        // Producers keep recording while the auditor is gone.
        tokio::time::sleep(Duration::from_millis(200)).await;
        auditor = spawn_auditor(&config, &addr).await;
    }
    running.store(false, Ordering::SeqCst);
    while let Some(done) = load.join_next().await {
        done.unwrap();
    }
    // Each kill landed while the load was running: appends failed and were retried.
    assert!(
        refused.load(Ordering::SeqCst) >= KILLS as u64,
        "only {} appends failed",
        refused.load(Ordering::SeqCst)
    );

    // Every recorded event is acknowledged in the end: both outboxes drain.
    for (producer, outbox) in [
        ("issuer", issuer.issuer.outbox()),
        ("validator", validator.validator.outbox()),
    ] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while outbox.depth().await.unwrap() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the {producer}'s outbox did not drain: {} events left",
                outbox.depth().await.unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let issuer_last = issuer.issuer.outbox().last_seq();
    let validator_last = validator.validator.outbox().last_seq();

    let log = export(&auditor, &access.token).await;
    // Each producer's events are in the log exactly once, numbered without a hole, up to the
    // last one it recorded.
    let mut seqs: HashMap<&str, Vec<u64>> = HashMap::new();
    for event in &log {
        seqs.entry(event.producer.as_str())
            .or_default()
            .push(event.producer_seq);
    }
    for (producer, last) in [
        ("issuer", issuer_last),
        ("validator", validator_last),
        (DIRECT, u64::try_from(receipts.lock().await.len()).unwrap()),
    ] {
        let mut got = seqs.remove(producer).unwrap_or_default();
        got.sort_unstable();
        assert_eq!(
            got,
            (1..=last).collect::<Vec<_>>(),
            "{producer}: every event exactly once"
        );
    }
    // The kills raised no false alarm: no gap was ever seen, nothing else is in the log.
    assert!(
        seqs.is_empty(),
        "unexpected entries: {:?}",
        seqs.keys().collect::<Vec<_>>()
    );
    // Every minted token's issuance is there once, and each was checked once.
    let minted = minted.lock().await;
    assert!(minted.len() > 50, "the load minted {} tokens", minted.len());
    eprintln!(
        "{backend:?}: {} entries after {KILLS} kills; {} tokens minted and checked, {} direct appends retried",
        log.len(),
        minted.len(),
        refused.load(Ordering::SeqCst)
    );
    for kind in [EventKind::TokenIssued, EventKind::Check] {
        let mut logged: Vec<&str> = log
            .iter()
            .filter(|e| e.kind() == kind)
            .map(|e| e.token_id.as_str())
            .collect();
        logged.sort_unstable();
        let mut want: Vec<&str> = minted.iter().map(String::as_str).collect();
        want.sort_unstable();
        assert_eq!(logged, want, "{kind:?} once per minted token");
    }
    // Every receipt given before a kill still names its event.
    let by_id: HashMap<&str, usize> = log
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.as_str(), i))
        .collect();
    for (id, index) in receipts.lock().await.iter() {
        assert_eq!(
            by_id.get(id.as_str()).map(|i| *i as u64),
            Some(*index),
            "receipt of {id}"
        );
    }
    // The log verifies without trusting the auditor: signature, and every leaf re-derived.
    let mut report = Vec::new();
    run_args(
        [
            "verify",
            "--auditor",
            &auditor.url(),
            "--key",
            &auditor.verifier,
            "--full",
            "--pki",
            &trias_tests::pki().dir.display().to_string(),
            "--token",
            &access.token,
        ],
        &mut report,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", String::from_utf8_lossy(&report)));

    validator.stop().await;
    issuer.stop().await;
    auditor.kill().await;
    access.stop().await;
    if let Some(db) = database {
        db.drop_database().await;
    }
}

/// The auditor's configuration file in `dir`, on SQLite there or on `database`.
fn write_config(dir: &Path, database: Option<&PostgresDb>, validator_url: &str) -> PathBuf {
    let mut text = format!(
        "data_dir = {:?}\norigin = \"trias.test/crash\"\nproducers = [\"issuer\", \"validator\", \"{DIRECT}\"]\nvalidator_url = {validator_url:?}\n",
        dir.join("data").display().to_string()
    );
    if let Some(db) = database {
        text.push_str(&format!("database_url = {:?}\n", db.url));
    }
    let tls = trias_tests::pki().files("auditor");
    text.push_str(&format!(
        "[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        tls.ca.display().to_string(),
        tls.cert.display().to_string(),
        tls.key.display().to_string()
    ));
    let path = dir.join("auditor.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn issuer_client(
    issuer: &IssuerHandle,
) -> trias_proto::v1::issuer_client::IssuerClient<Channel> {
    issuer.grpc().await
}

async fn validator_client(validator: &ValidatorHandle) -> ValidatorClient<Channel> {
    validator.grpc().await
}

async fn issuer_service_client(issuer: &IssuerHandle) -> (String, String) {
    issuer
        .service_client(&["clerk"], &["payments:create"])
        .await
}

/// Mints a token and checks it, over and over, until told to stop; keeps each token id.
async fn mint_and_check(
    mut issuer: trias_proto::v1::issuer_client::IssuerClient<Channel>,
    mut validator: ValidatorClient<Channel>,
    running: Arc<AtomicBool>,
    minted: Arc<Mutex<Vec<String>>>,
    (client_id, secret): (String, String),
) {
    let mut object = 0u64;
    while running.load(Ordering::SeqCst) {
        let token = issuer
            .token(client_credentials(&client_id, &secret, "payments:create"))
            .await
            .unwrap()
            .into_inner()
            .access_token;
        let jti = trias_tests::claims(&token)["jti"]
            .as_str()
            .unwrap()
            .to_owned();
        object += 1;
        let decision = validator
            .check(trias_proto::v1::CheckRequest {
                token,
                action: "payment.create".into(),
                resource: format!("payment/{jti}/{object}"),
                audience: "payments".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(decision.allowed, "{decision:?}");
        minted.lock().await.push(jti);
    }
}

/// Appends batches as a producer of its own, retrying each batch until acknowledged (as a
/// shipper does), and keeps the index of every acknowledged event.
async fn append_directly(
    url: String,
    running: Arc<AtomicBool>,
    receipts: Arc<Mutex<HashMap<String, u64>>>,
    refused: Arc<AtomicU64>,
) {
    let transport = trias_tests::transport(DIRECT);
    let mut seq = 0u64;
    while running.load(Ordering::SeqCst) {
        let events: Vec<AuditEvent> = (0..20)
            .map(|_| {
                seq += 1;
                AuditEvent {
                    id: format!("{DIRECT}-{seq}"),
                    producer: DIRECT.into(),
                    producer_seq: seq,
                    time: Some(timestamp(SystemTime::now())),
                    kind: EventKind::LoginSucceeded as i32,
                    subject: format!("operator-{}", seq % 5),
                    decision: Decision::Allow as i32,
                    ..Default::default()
                }
            })
            .collect();
        loop {
            let connected = match transport.endpoint(&url, &identity_of("auditor")) {
                Ok(endpoint) => endpoint.connect().await.map(AuditorClient::new),
                Err(error) => panic!("{error}"),
            };
            let answer = match connected {
                Ok(mut client) => client
                    .append(AppendRequest {
                        producer: DIRECT.into(),
                        events: events.clone(),
                    })
                    .await
                    .map(tonic::Response::into_inner),
                Err(error) => Err(tonic::Status::unavailable(error.to_string())),
            };
            match answer {
                Ok(response) => {
                    let mut receipts = receipts.lock().await;
                    for receipt in response.receipts {
                        receipts.insert(receipt.event_id, receipt.index);
                    }
                    break;
                }
                // The auditor is down: the same batch again, as a shipper would.
                Err(_) => {
                    refused.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        }
    }
}

/// Every event of the log, through `Export`, checking each leaf is what the entry says.
async fn export(auditor: &AuditorProcess, token: &str) -> Vec<AuditEvent> {
    let channel = trias_tests::channel(auditor.addr.parse().unwrap(), "auditor", "cli").await;
    let mut stream = AuditorClient::with_interceptor(channel, Bearer::new(Some(token)).unwrap())
        .max_decoding_message_size(usize::MAX)
        .export(ExportRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut frontier = Frontier::new();
    let mut events = Vec::new();
    while let Some(entry) = stream.message().await.unwrap() {
        frontier.push(leaf_hash(&entry.leaf));
        events.push(entry.event.unwrap());
    }
    let checkpoint = auditor
        .client()
        .await
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checkpoint.tree_size, events.len() as u64);
    assert_eq!(frontier.root().as_slice(), checkpoint.root_hash.as_slice());
    events
}
