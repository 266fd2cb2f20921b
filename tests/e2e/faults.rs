//! Fault injection: the suite runs as three processes under load while a fault strikes — a
//! service killed with SIGKILL, the network between the producers and the auditor cut, the
//! auditor's disk full, the outboxes' disk full — and afterwards the invariants of the record
//! are checked (see [`invariants`]):
//!
//! - no acknowledged event lost: every token the issuer answered has its issuance in the log,
//!   and every check the validator answered has its check event there (strict mode: no token
//!   and no answer without its event);
//! - no event twice: each producer's events are in the log once each, numbered without a gap;
//! - the log verifies: `trias audit verify --full` against the signed checkpoint.
//!
//! The disk-full tests mount a small tmpfs, which needs root; elsewhere they print why they
//! skip, unless `TRIAS_TEST_FAULTS=required` (as `.ci/run` sets) makes that a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinSet;
use trias_proto::v1::{CheckRequest, EventKind};
use trias_tests::processes::{PrivatePostgres, Suite};

/// Load workers minting and checking tokens.
const WORKERS: usize = 4;

/// What the load was answered.
#[derive(Debug, Default)]
struct Seen {
    /// The token id of every token the issuer answered.
    minted: Vec<String>,
    /// The token id of every token whose check the validator answered (allow or deny).
    checked: Vec<String>,
    /// Requests that got no answer, or a refusal: each fault must cause some.
    failed: u64,
    /// Token requests the issuer refused with 503 (its outbox could not take the event).
    unavailable: u64,
    /// The status codes of failed checks, counted.
    check_errors: BTreeMap<String, u64>,
}

/// The load: each worker mints a token over HTTP and checks it once over gRPC, until told
/// to stop.
struct Load {
    running: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    answered: Arc<AtomicU64>,
    workers: JoinSet<()>,
}

impl Load {
    async fn start(suite: &Suite) -> Load {
        let running = Arc::new(AtomicBool::new(true));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let answered = Arc::new(AtomicU64::new(0));
        let mut workers = JoinSet::new();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        for _ in 0..WORKERS {
            let url = format!("{}/oauth2/token", suite.get("issuer_url"));
            let client = (suite.get("demo_client_id"), suite.get("demo_client_secret"));
            let mut validator = suite.validator().await;
            let (http, running) = (http.clone(), Arc::clone(&running));
            let (seen, answered) = (Arc::clone(&seen), Arc::clone(&answered));
            workers.spawn(async move {
                while running.load(Ordering::SeqCst) {
                    let Some(token) = mint(&http, &url, &client, &seen).await else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let jti = trias_tests::claims(&token)["jti"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    seen.lock().await.minted.push(jti.clone());
                    let check = validator
                        .check(CheckRequest {
                            token,
                            action: "payment.create".into(),
                            resource: format!("payment/{jti}"),
                            audience: "payments".into(),
                            ..Default::default()
                        })
                        .await;
                    let mut seen = seen.lock().await;
                    match check {
                        Ok(_) => seen.checked.push(jti),
                        Err(status) => {
                            seen.failed += 1;
                            *seen
                                .check_errors
                                .entry(format!("{:?}", status.code()))
                                .or_default() += 1;
                        }
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        Load {
            running,
            seen,
            answered,
            workers,
        }
    }

    /// Waits until `n` more tokens were minted and checked; 60 s at most.
    async fn progress(&self, n: u64) {
        let from = self.answered.load(Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.answered.load(Ordering::SeqCst) < from + n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the load made no progress: {:?}",
                self.seen.lock().await.failed
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn failed(&self) -> u64 {
        self.seen.lock().await.failed
    }

    async fn stop(mut self) -> Seen {
        self.running.store(false, Ordering::SeqCst);
        while let Some(done) = self.workers.join_next().await {
            done.unwrap();
        }
        Arc::try_unwrap(self.seen).unwrap().into_inner()
    }
}

/// One token request; `None` when it was not answered with a token.
async fn mint(
    http: &reqwest::Client,
    url: &str,
    client: &(String, String),
    seen: &Mutex<Seen>,
) -> Option<String> {
    let reply = http
        .post(url)
        .basic_auth(&client.0, Some(&client.1))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "payments:create"),
        ])
        .send()
        .await;
    let reply = match reply {
        Ok(reply) => reply,
        Err(_) => {
            seen.lock().await.failed += 1;
            return None;
        }
    };
    let status = reply.status().as_u16();
    let body: Value = reply.json().await.unwrap_or(Value::Null);
    match (status, body["access_token"].as_str()) {
        (200, Some(token)) => Some(token.to_owned()),
        (503, _) => {
            assert_eq!(body["error"], "temporarily_unavailable", "{body}");
            let mut seen = seen.lock().await;
            seen.failed += 1;
            seen.unavailable += 1;
            None
        }
        _ => panic!("token request answered {status}: {body}"),
    }
}

/// Stops the issuer (it ships what its outbox holds on the way out), waits for the
/// validator's outbox to drain (the validator stays up: the auditor asks it about the
/// analyst's token), and checks the record against what the load was answered. `fresh_log`:
/// the auditor's log began after the producers' first events (`trias up` shipped those to
/// the log the test then replaced).
async fn invariants(suite: &mut Suite, seen: &Seen, fresh_log: bool) {
    assert!(
        seen.minted.len() >= 100 && seen.checked.len() >= 100,
        "the load was hardly answered: {seen:?}"
    );
    let token = suite.analyst_token().await;
    suite.stop("issuer").await;
    suite.drained("validator").await;
    let log = suite.export(&token).await;

    // No event twice: each producer's sequence is 1, 2, … without a gap or a repeat.
    let mut seqs: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for event in &log {
        seqs.entry(event.producer.as_str())
            .or_default()
            .push(event.producer_seq);
    }
    for producer in ["issuer", "validator"] {
        let mut got = seqs.get(producer).cloned().unwrap_or_default();
        got.sort_unstable();
        // A log that began after the producers' first events (a new database) starts later.
        let first = if fresh_log { got[0] } else { 1 };
        let want: Vec<u64> = (first..first + got.len() as u64).collect();
        assert_eq!(got, want, "{producer}: every event once, without a gap");
    }
    let mut ids: Vec<&str> = log.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    let total = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), total, "an event id twice in the log");

    // No acknowledged event lost.
    let count = |kind: EventKind| {
        let mut by_token: HashMap<&str, usize> = HashMap::new();
        for event in log.iter().filter(|e| e.kind() == kind) {
            *by_token.entry(event.token_id.as_str()).or_default() += 1;
        }
        by_token
    };
    let issued = count(EventKind::TokenIssued);
    for jti in &seen.minted {
        assert_eq!(
            issued.get(jti.as_str()),
            Some(&1),
            "the issuance of answered token {jti}"
        );
    }
    let checks = count(EventKind::Check);
    for jti in &seen.checked {
        assert_eq!(
            checks.get(jti.as_str()),
            Some(&1),
            "the answered check of {jti}"
        );
    }
    // A check is only ever made of a minted token, once.
    assert!(checks.values().all(|n| *n == 1));

    // The log verifies without trusting the auditor.
    let report = suite.verify_log(&token).await;
    eprintln!(
        "{} entries; {} tokens answered, {} checks answered, {} requests failed ({} refused \
         503); {}",
        log.len(),
        seen.minted.len(),
        seen.checked.len(),
        seen.failed,
        seen.unavailable,
        report.lines().last().unwrap_or_default()
    );
    suite.stop("validator").await;
    suite.stop("auditor").await;
}

/// The fault was felt: both producers failed to ship for a while (and then recovered, as
/// [`invariants`] shows).
fn assert_shipping_failed(suite: &Suite) {
    for producer in ["issuer", "validator"] {
        assert!(
            suite.log(producer).contains("shipping audit events failed"),
            "the {producer} never failed to ship"
        );
    }
}

/// A user's session refreshing its token without pause through the demo frontend, signing in
/// again whenever its family ends (a rotation answered to no one, when the issuer was killed
/// mid-request, makes the retry a reuse). Every refresh token whose rotation was answered is
/// spent and must never work again.
struct Refresher {
    running: Arc<AtomicBool>,
    spent: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
    url: String,
    frontend: String,
}

impl Refresher {
    async fn start(suite: &Suite) -> Refresher {
        let env = trias_tests::stack::stack_env(&suite.dir);
        let url = format!("{}/oauth2/token", suite.get("issuer_url"));
        let frontend = suite.get("demo_frontend_client_id");
        let redirect = suite.get("demo_redirect_uri");
        let running = Arc::new(AtomicBool::new(true));
        let spent = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (url, frontend) = (url.clone(), frontend.clone());
            let (running, spent) = (Arc::clone(&running), Arc::clone(&spent));
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(2))
                    .build()
                    .unwrap();
                let mut current = None;
                while running.load(Ordering::SeqCst) {
                    let Some(token) = current.clone() else {
                        current = sign_in(&env, &frontend, &redirect).await;
                        continue;
                    };
                    let reply = refresh(&http, &url, &frontend, &token).await;
                    let Ok(reply) = reply else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let status = reply.status().as_u16();
                    let body: Value = reply.json().await.unwrap_or(Value::Null);
                    match (status, body["refresh_token"].as_str()) {
                        (200, Some(next)) => {
                            spent.lock().await.push(token);
                            current = Some(next.to_owned());
                        }
                        (400, _) if body["error"] == "invalid_grant" => current = None,
                        (503, _) => tokio::time::sleep(Duration::from_millis(20)).await,
                        _ => panic!("refresh answered {status}: {body}"),
                    }
                }
            })
        };
        Refresher {
            running,
            spent,
            task,
            url,
            frontend,
        }
    }

    /// Stops refreshing, then presents every spent token again: each is refused.
    async fn stop_and_replay(self) -> usize {
        self.running.store(false, Ordering::SeqCst);
        self.task.await.unwrap();
        let spent = self.spent.lock().await.clone();
        let http = reqwest::Client::new();
        for token in &spent {
            let reply = refresh(&http, &self.url, &self.frontend, token)
                .await
                .unwrap();
            let status = reply.status().as_u16();
            let body: Value = reply.json().await.unwrap();
            assert_eq!(
                (status, body["error"].as_str()),
                (400, Some("invalid_grant")),
                "a spent refresh token was accepted again: {body}"
            );
        }
        spent.len()
    }
}

/// A refresh-token grant at the token endpoint, for the public `frontend` client.
async fn refresh(
    http: &reqwest::Client,
    url: &str,
    frontend: &str,
    token: &str,
) -> reqwest::Result<reqwest::Response> {
    http.post(url)
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", frontend),
        ])
        .send()
        .await
}

/// `trias token --login alice` through the demo frontend; `None` while the issuer is away.
async fn sign_in(env: &[(String, String)], frontend: &str, redirect: &str) -> Option<String> {
    let output = trias_tests::stack::run_cli(
        &[
            "token",
            "--client-id",
            frontend,
            "--redirect-uri",
            redirect,
            "--login",
            "alice",
            "--password-stdin",
            "--scope",
            "payments:create",
            "--json",
        ],
        env,
        "alice-demo-password\n",
    )
    .await;
    if !output.status.success() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        return None;
    }
    let reply: Value = serde_json::from_slice(&output.stdout).unwrap();
    Some(reply["refresh_token"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_each_service_under_load_loses_no_acknowledged_event() {
    let mut suite = Suite::create().await;
    suite.start_all().await;
    let refresher = Refresher::start(&suite).await;
    let load = Load::start(&suite).await;
    for service in ["issuer", "validator", "auditor"] {
        load.progress(100).await;
        let failed = load.failed().await;
        suite.kill(service).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        suite.start(service).await;
        load.progress(100).await;
        // The auditor's absence is invisible to clients: the outboxes hold the events.
        if service != "auditor" {
            assert!(
                load.failed().await > failed,
                "killing the {service} failed no request"
            );
        }
    }
    let seen = load.stop().await;
    // No refresh token usable twice, across the issuer's kill.
    let spent = refresher.stop_and_replay().await;
    assert!(spent >= 10, "only {spent} refresh tokens were rotated");
    eprintln!("{spent} refresh tokens rotated, each refused when presented again");
    invariants(&mut suite, &seen, false).await;
}

/// How the proxy treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Forwards bytes both ways.
    None,
    /// Closes every connection and refuses new ones at once.
    Refuse,
    /// Accepts and holds connections but forwards nothing: packets dropped on the floor.
    Blackhole,
}

/// A TCP proxy in front of the auditor whose link can be cut.
struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<Cut>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, watch) = watch::channel(Cut::None);
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let (upstream, mut watch) = (upstream.clone(), watch.clone());
                tokio::spawn(async move {
                    let mode = *watch.borrow_and_update();
                    match mode {
                        Cut::Refuse => drop(inbound),
                        Cut::Blackhole => {
                            // Held, silent, until the link is restored; then closed.
                            let _ = watch.changed().await;
                            drop(inbound);
                        }
                        Cut::None => {
                            let Ok(outbound) = TcpStream::connect(&upstream).await else {
                                return;
                            };
                            let (mut a, mut b) = (inbound, outbound);
                            // A cut: a refusal closes the connection, a blackhole holds
                            // it without forwarding until the link is back.
                            let blackhole = tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut a, &mut b) => false,
                                cut = watch.wait_for(|c| *c != Cut::None) => {
                                    cut.is_ok_and(|c| *c == Cut::Blackhole)
                                }
                            };
                            if blackhole {
                                let _ = watch.wait_for(|c| *c == Cut::None).await;
                            }
                        }
                    }
                });
            }
        });
        Proxy { addr, cut, task }
    }

    fn set(&self, cut: Cut) {
        self.cut.send_replace(cut);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_cut_between_producers_and_auditor_loses_nothing() {
    let mut suite = Suite::create().await;
    let auditor = suite.setting("auditor", "grpc_addr");
    let proxy = Proxy::start(auditor.clone()).await;
    for producer in ["issuer", "validator"] {
        suite.edit_config(producer, |text| {
            text.replace(
                &format!("auditor_url = \"http://{auditor}\""),
                &format!("auditor_url = \"http://{}\"", proxy.addr),
            )
        });
    }
    suite.start_all().await;
    let load = Load::start(&suite).await;
    for cut in [Cut::Refuse, Cut::Blackhole, Cut::Refuse] {
        load.progress(100).await;
        proxy.set(cut);
        // The producers answer on from their outboxes while the auditor is out of reach.
        load.progress(100).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.set(Cut::None);
    }
    load.progress(100).await;
    let seen = load.stop().await;
    assert_eq!(
        seen.failed, 0,
        "a cut to the auditor failed a client request"
    );
    assert_shipping_failed(&suite);
    invariants(&mut suite, &seen, false).await;
}

/// A small tmpfs mounted at a path, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `megabytes` at `path`; `None` (after saying why) where mounting is
    /// not allowed, unless `TRIAS_TEST_FAULTS=required`.
    fn mount(path: &Path, megabytes: u32) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).unwrap();
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m,mode=0700")])
            .arg("tmpfs")
            .arg(path)
            .output();
        match output {
            Ok(output) if output.status.success() => Some(SmallDisk {
                path: path.to_owned(),
            }),
            other => {
                let why = match other {
                    Ok(output) => String::from_utf8_lossy(&output.stderr).into_owned(),
                    Err(error) => error.to_string(),
                };
                assert!(
                    std::env::var("TRIAS_TEST_FAULTS").as_deref() != Ok("required"),
                    "cannot mount a tmpfs for the disk-full test: {why}"
                );
                eprintln!("skipping: cannot mount a tmpfs (needs root): {why}");
                None
            }
        }
    }

    /// Fills the disk to the last byte.
    fn fill(&self) {
        use std::io::Write as _;
        let mut file = std::fs::File::create(self.filler()).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let mut byte = [0u8; 1];
        while file.write_all(&byte).is_ok() {
            byte[0] = 1;
        }
        let _ = file.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Moves a service's data directory onto a small disk and points its configuration there.
fn move_data_dir(suite: &Suite, service: &str, megabytes: u32) -> Option<SmallDisk> {
    let old = suite.dir.join(service);
    let disk = SmallDisk::mount(&suite.dir.join(format!("{service}-disk")), megabytes)?;
    for entry in std::fs::read_dir(&old).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), disk.path.join(entry.file_name())).unwrap();
    }
    std::fs::remove_dir_all(&old).unwrap();
    let (from, to) = (old.display().to_string(), disk.path.display().to_string());
    suite.edit_config(service, |text| text.replace(&from, &to));
    Some(disk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditors_disk_full_loses_nothing() {
    let mut suite = Suite::create().await;
    let Some(disk) = move_data_dir(&suite, "auditor", 64) else {
        return;
    };
    suite.start_all().await;
    let load = Load::start(&suite).await;
    for _ in 0..2 {
        load.progress(100).await;
        disk.fill();
        // Appends fail and are not acknowledged; the producers keep their events.
        load.progress(200).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        disk.free();
    }
    load.progress(100).await;
    let seen = load.stop().await;
    assert_eq!(
        seen.failed, 0,
        "the auditor's full disk failed a client request"
    );
    assert!(
        suite.log("auditor").contains("disk is full"),
        "the auditor never met its full disk"
    );
    assert_shipping_failed(&suite);
    invariants(&mut suite, &seen, false).await;
    drop(disk);
}

/// Moves a producer's outbox onto a small disk of its own and points its configuration there.
fn move_outbox(suite: &Suite, service: &str) -> Option<SmallDisk> {
    let disk = SmallDisk::mount(&suite.dir.join(format!("{service}-outbox-disk")), 16)?;
    let name = format!("{service}-outbox.db");
    for suffix in ["", "-wal", "-shm"] {
        let old = suite.dir.join(service).join(format!("{name}{suffix}"));
        if old.exists() {
            std::fs::copy(&old, disk.path.join(format!("{name}{suffix}"))).unwrap();
            std::fs::remove_file(&old).unwrap();
        }
    }
    let outbox = disk.path.join(&name).display().to_string();
    suite.edit_config(service, |text| {
        text.replace("[audit]\n", &format!("[audit]\noutbox = \"{outbox}\"\n"))
    });
    Some(disk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outboxes_disk_full_refuses_instead_of_answering_unrecorded() {
    let mut suite = Suite::create().await;
    let Some(issuer_disk) = move_outbox(&suite, "issuer") else {
        return;
    };
    let Some(validator_disk) = move_outbox(&suite, "validator") else {
        return;
    };
    suite.start_all().await;
    let load = Load::start(&suite).await;
    // Strict mode: while its event cannot be recorded, the validator answers no check
    // (UNAVAILABLE) and the issuer mints no token (503); neither crashes, and both go on
    // once there is room again.
    for (service, disk) in [("validator", &validator_disk), ("issuer", &issuer_disk)] {
        load.progress(100).await;
        let failed = load.failed().await;
        disk.fill();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let refused = load.failed().await - failed;
        assert!(
            refused >= 5,
            "the {service}'s full outbox refused only {refused} requests"
        );
        disk.free();
        load.progress(100).await;
    }
    let seen = load.stop().await;
    assert!(
        seen.unavailable > 0,
        "no token request was refused with 503"
    );
    invariants(&mut suite, &seen, false).await;
    drop((issuer_disk, validator_disk));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_loses_nothing() {
    let postgres = match PrivatePostgres::start().await {
        Ok(postgres) => postgres,
        Err(why) => {
            assert!(
                std::env::var("TRIAS_TEST_FAULTS").as_deref() != Ok("required"),
                "cannot run a private PostgreSQL server: {why}"
            );
            eprintln!("skipping: cannot run a private PostgreSQL server: {why}");
            return;
        }
    };
    let mut suite = Suite::create().await;
    // The validator's dual-control ledger and the auditor's log on PostgreSQL: the two that
    // write to their database on every check and every append.
    for service in ["validator", "auditor"] {
        postgres.create_database(service).await;
        let url = postgres.url(service);
        suite.edit_config(service, |text| format!("database_url = \"{url}\"\n{text}"));
    }
    suite.start_all().await;
    let load = Load::start(&suite).await;
    for _ in 0..2 {
        load.progress(100).await;
        postgres.restart(Duration::from_secs(1)).await;
        load.progress(100).await;
    }
    let seen = load.stop().await;
    // The restarts cut the services' connections under load.
    for service in ["validator", "auditor"] {
        assert!(
            suite.log(service).contains("terminating connection"),
            "the {service} never lost its database connection"
        );
    }
    // A check waits for the ledger (up to its pool's acquire timeout) and is then refused
    // as unavailable, or the caller gives up first; it is never answered unrecorded.
    assert!(
        seen.check_errors
            .keys()
            .all(|code| ["Unavailable", "Cancelled", "DeadlineExceeded"].contains(&code.as_str())),
        "{:?}",
        seen.check_errors
    );
    invariants(&mut suite, &seen, true).await;
}
