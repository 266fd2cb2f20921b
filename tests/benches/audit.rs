//! The auditor benchmark: durable appends over gRPC from concurrent producers, and queries
//! and proofs on a large log.
//!
//! Run with `cargo bench -p trias-tests --bench audit`. Two scenarios:
//! - `append`: an auditor started in-process by the e2e harness (SQLite with
//!   `synchronous = FULL`, and PostgreSQL when `TRIAS_TEST_POSTGRES_URL` is set), driven by
//!   concurrent producers each sending batches and waiting for the durable acknowledgement;
//!   reports events/s, batch latency percentiles and group commits.
//! - `query`: a SQLite log populated to N events straight through the auditor's store (the
//!   same entries, tree nodes and signed checkpoints the sequencer writes, in large
//!   transactions), then opened by a real auditor, which restores and checks it; reports
//!   p50/p99 of `Query` by subject, by token id and by time range (newest first, a page of
//!   100), `GetInclusionProof`, `GetConsistencyProof`, and proof verification.
//!
//! The auditor is served exactly as `trias_auditor::serve` serves it (mutual TLS, TCP_NODELAY;
//! queries and proofs with a security analyst's token, decided by a validator). The load
//! generator runs in the same process and runtime as the auditor, so on a small machine the
//! two share the cores.
//!
//! Environment overrides (all optional):
//! - `TRIAS_BENCH_SECONDS` (10) / `TRIAS_BENCH_WARMUP` (2): measured and warm-up seconds of
//!   the append scenario;
//! - `TRIAS_BENCH_AUDIT_STREAMS` (8) / `TRIAS_BENCH_AUDIT_BATCH` (500, the shipper's
//!   `MAX_BATCH`: what a producer with a backlog sends): producers and events per batch;
//! - `TRIAS_BENCH_AUDIT_EVENTS` (1000000): the size of the populated log;
//! - `TRIAS_BENCH_AUDIT_SAMPLES` (1000): requests measured per query or proof kind;
//! - `TRIAS_BENCH_AUDIT_SCENARIOS` (`append,query`);
//! - `TRIAS_BENCH_AUDIT_DIR`: where to build the populated log (default: a temporary
//!   directory, removed afterwards);
//! - `TRIAS_BENCH_OUTPUT` (`<workspace>/target/bench-audit.json`): the JSON report.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary fails loudly and reports on standard output"
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use trias_auditor::AuditorConfig;
use trias_auditor::auditor::leaf;
use trias_auditor::checkpoint::{CheckpointBody, SigningKey};
use trias_auditor::merkle::{Frontier, leaf_hash, verify_consistency, verify_inclusion};
use trias_auditor::store::{Batch, Entry, Store, StoredCheckpoint, timestamp_of};
use trias_proto::v1 as pb;
use trias_proto::v1::auditor_client::AuditorClient;
use trias_runtime::access::Bearer;
use trias_runtime::clock::SystemClock;
use trias_runtime::shipper::MAX_BATCH;
use trias_tests::Backend;
use trias_tests::auditor::{AccessStack, AuditorGrpc};
use trias_tests::bench::env_or;
use trias_tests::limits::Limits;

const TARGET_EVENTS_PER_SEC: f64 = 20_000.0;
const TARGET_QUERY_P99_US: u64 = 10_000;
const ORIGIN: &str = "trias.bench/audit";
/// Distinct subjects in the synthetic log.
const SUBJECTS: u64 = 10_000;
/// Event time advances one millisecond per entry: 1,000 events a second.
const SPACING_NANOS: i64 = 1_000_000;
/// The width of a time-range query.
const WINDOW_NANOS: i64 = 60 * 1_000_000_000;
/// The event time of the populated log's first entry (2026-01-01), fixed so that a kept log
/// (`TRIAS_BENCH_AUDIT_DIR`) is queried the same way on every run.
const BASE_NANOS: i64 = 1_767_225_600 * 1_000_000_000;
/// Events per populating transaction.
const POPULATE_BATCH: u64 = 10_000;

#[derive(Debug, Clone)]
struct Settings {
    measure: Duration,
    warmup: Duration,
    streams: usize,
    batch: usize,
    events: u64,
    samples: usize,
    scenarios: Vec<String>,
    dir: Option<PathBuf>,
    output: PathBuf,
}

impl Settings {
    fn from_env() -> Settings {
        let scenarios: Vec<String> = std::env::var("TRIAS_BENCH_AUDIT_SCENARIOS")
            .unwrap_or_else(|_| "append,query".into())
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        for name in &scenarios {
            assert!(
                ["append", "query"].contains(&name.as_str()),
                "unknown scenario {name} in TRIAS_BENCH_AUDIT_SCENARIOS"
            );
        }
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
            PathBuf::from,
        );
        Settings {
            measure: Duration::from_secs_f64(env_or("TRIAS_BENCH_SECONDS", 10.0)),
            warmup: Duration::from_secs_f64(env_or("TRIAS_BENCH_WARMUP", 2.0)),
            streams: env_or("TRIAS_BENCH_AUDIT_STREAMS", 8usize).max(1),
            batch: env_or("TRIAS_BENCH_AUDIT_BATCH", MAX_BATCH).clamp(1, 1000),
            events: env_or("TRIAS_BENCH_AUDIT_EVENTS", 1_000_000u64).max(2),
            samples: env_or("TRIAS_BENCH_AUDIT_SAMPLES", 1000usize).max(1),
            scenarios,
            dir: std::env::var_os("TRIAS_BENCH_AUDIT_DIR").map(PathBuf::from),
            output: std::env::var_os("TRIAS_BENCH_OUTPUT")
                .map_or_else(|| target.join("bench-audit.json"), PathBuf::from),
        }
    }
}

/// SplitMix64: spreads sequential numbers into well-mixed ones, so the synthetic log is
/// reproducible without storing what it chose.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn subject(i: u64) -> String {
    format!("user-{:05}", mix(i) % SUBJECTS)
}

/// Issuance and check pairs share a token id: entries 2k and 2k+1.
fn token_id(i: u64) -> String {
    let pair = i / 2;
    ordered_id(pair * 2, mix(pair ^ 0x5eed), mix(pair))
}

/// An id as `trias_runtime::id::time_ordered` makes it for what happened at log position `i`
/// (one millisecond apart): the time in milliseconds, then 80 well-mixed bits.
fn ordered_id(i: u64, a: u64, b: u64) -> String {
    let millis = u64::try_from(BASE_NANOS / 1_000_000).unwrap() + i;
    format!(
        "{:012x}{:04x}{:016x}",
        millis & 0xffff_ffff_ffff,
        a & 0xffff,
        b
    )
}

/// The synthetic event at log position `i`: an issuance (even) or a check of that token
/// (odd), about one of [`SUBJECTS`] users, one millisecond after the previous one.
fn synthetic(i: u64, base_nanos: i64) -> pb::AuditEvent {
    let issued = i.is_multiple_of(2);
    let denied = mix(i ^ 0xd1ce).is_multiple_of(20);
    let audiences = ["payments", "ledger", "reports", "treasury"];
    pb::AuditEvent {
        id: ordered_id(i, mix(i ^ 0xe7e7), mix(i)),
        producer: if issued { "issuer" } else { "validator" }.into(),
        producer_seq: i / 2 + 1,
        time: Some(timestamp_of(
            base_nanos + i64::try_from(i).unwrap() * SPACING_NANOS,
        )),
        kind: if issued {
            pb::EventKind::TokenIssued
        } else {
            pb::EventKind::Check
        } as i32,
        subject: subject(i & !1),
        client_id: format!("client-{:02}", mix(i / 2) % 50),
        token_id: token_id(i),
        family_id: ordered_id(i & !15, mix((i / 16) ^ 0xfa), mix(i / 16)),
        audience: audiences[(mix(i / 2) % 4) as usize].into(),
        action: if issued { "" } else { "payments:read" }.into(),
        resource: if issued {
            String::new()
        } else {
            format!("payment/{}", mix(i) % 100_000)
        },
        decision: if denied {
            pb::Decision::Deny
        } else {
            pb::Decision::Allow
        } as i32,
        reason: if denied { "insufficient_scope" } else { "" }.into(),
        trace_id: format!("{:016x}{:016x}", mix(i ^ 0x7ace), mix(i ^ 0x7acf)),
        attributes: Default::default(),
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap()
}

fn percentiles(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p90_us": h.value_at_quantile(0.90),
        "p99_us": h.value_at_quantile(0.99),
        "max_us": h.max(),
        "mean_us": h.mean(),
    })
}

fn main() {
    let settings = Settings::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut report = BTreeMap::new();
    let limits = Limits::measure(&std::env::temp_dir(), Duration::from_secs(2));
    println!("{}", limits.line());
    report.insert("limits".to_owned(), limits.json());
    report.insert(
        "settings".to_owned(),
        json!({
            "seconds": settings.measure.as_secs_f64(),
            "warmup_seconds": settings.warmup.as_secs_f64(),
            "streams": settings.streams,
            "batch": settings.batch,
            "events": settings.events,
            "samples": settings.samples,
            "cores": std::thread::available_parallelism().map_or(0, usize::from),
        }),
    );
    if settings.scenarios.iter().any(|s| s == "append") {
        let mut appends = BTreeMap::new();
        for backend in [Backend::Sqlite, Backend::Postgres] {
            if let Some(result) = runtime.block_on(append_scenario(&settings, backend)) {
                appends.insert(format!("{backend:?}").to_lowercase(), result);
            }
        }
        report.insert("append".to_owned(), json!(appends));
    }
    if settings.scenarios.iter().any(|s| s == "query") {
        report.insert(
            "query".to_owned(),
            runtime.block_on(query_scenario(&settings)),
        );
    }
    let text = serde_json::to_string_pretty(&report).unwrap();
    if let Some(parent) = settings.output.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&settings.output, &text).unwrap();
    println!("\nreport written to {}", settings.output.display());
}

/// Concurrent producers append batches for the warm-up and the measured time; only batches
/// that start and finish inside the measured window count.
async fn append_scenario(settings: &Settings, backend: Backend) -> Option<Value> {
    let dir = tempfile::tempdir().unwrap();
    let database = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(trias_tests::fresh_postgres().await?),
    };
    let config = bench_config(
        &dir.path().join("auditor"),
        database.as_ref().map(|db| db.url.as_str()),
        None,
    );
    let running = start(&config, None).await;
    println!(
        "\nappend ({backend:?}): {} producers × batches of {}, {:.0} s measured after {:.0} s warm-up",
        settings.streams,
        settings.batch,
        settings.measure.as_secs_f64(),
        settings.warmup.as_secs_f64()
    );
    let next = Arc::new(AtomicU64::new(0));
    let base = unix_now_nanos();
    let start = Instant::now();
    let measure_from = start + settings.warmup;
    let measure_to = measure_from + settings.measure;
    let mut tasks = Vec::new();
    for _ in 0..settings.streams {
        let mut client = running.client().await;
        let next = Arc::clone(&next);
        let batch = settings.batch as u64;
        tasks.push(tokio::spawn(async move {
            let mut latencies = histogram();
            let mut events = 0u64;
            let mut errors = 0u64;
            while Instant::now() < measure_to {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                // One producer per request: issuance events only.
                let batch: Vec<pb::AuditEvent> = (first..first + batch)
                    .map(|i| {
                        let mut event = synthetic(i * 2, base);
                        event.producer_seq = i + 1;
                        event
                    })
                    .collect();
                let count = batch.len() as u64;
                let sent = Instant::now();
                let outcome = client
                    .append(pb::AppendRequest {
                        producer: "issuer".into(),
                        events: batch,
                    })
                    .await;
                let done = Instant::now();
                if sent >= measure_from && done <= measure_to {
                    match outcome {
                        Ok(_) => {
                            events += count;
                            latencies.record(micros_between(sent, done)).unwrap();
                        }
                        Err(_) => errors += 1,
                    }
                }
            }
            (latencies, events, errors)
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let commits_before = running.auditor.sequencer().commits();
    let size_before = running.auditor.checkpoint().tree_size;
    tokio::time::sleep_until(measure_to.into()).await;
    let commits_after = running.auditor.sequencer().commits();
    let size_after = running.auditor.checkpoint().tree_size;
    let mut latencies = histogram();
    let (mut events, mut errors) = (0, 0);
    for task in tasks {
        let (h, e, x) = task.await.unwrap();
        latencies.add(h).unwrap();
        events += e;
        errors += x;
    }
    let seconds = settings.measure.as_secs_f64();
    let rate = events as f64 / seconds;
    let commits = commits_after - commits_before;
    let logged = size_after - size_before;
    println!(
        "  {:>12} {:>10} {:>10} {:>10} {:>10} {:>12} {:>8}",
        "events/s", "p50 ms", "p99 ms", "max ms", "commits/s", "events/commit", "errors"
    );
    println!(
        "  {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>10.1} {:>12.0} {:>8}   target ≥ {:.0} events/s: {}",
        rate,
        latencies.value_at_quantile(0.5) as f64 / 1000.0,
        latencies.value_at_quantile(0.99) as f64 / 1000.0,
        latencies.max() as f64 / 1000.0,
        commits as f64 / seconds,
        logged as f64 / commits.max(1) as f64,
        errors,
        TARGET_EVENTS_PER_SEC,
        if rate >= TARGET_EVENTS_PER_SEC {
            "met"
        } else {
            "NOT met"
        }
    );
    let result = json!({
        "events_per_sec": rate,
        "acknowledged_events": events,
        "logged_events": logged,
        "batch_latency": percentiles(&latencies),
        "commits": commits,
        "commits_per_sec": commits as f64 / seconds,
        "events_per_commit": logged as f64 / commits.max(1) as f64,
        "errors": errors,
        "target_events_per_sec": TARGET_EVENTS_PER_SEC,
        "target_met": rate >= TARGET_EVENTS_PER_SEC,
    });
    running.stop().await;
    if let Some(db) = database {
        db.drop_database().await;
    }
    Some(result)
}

fn unix_now_nanos() -> i64 {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_nanos()).unwrap()
}

/// The populated log's configuration: data directory, origin, producers.
fn bench_config(
    data_dir: &std::path::Path,
    database_url: Option<&str>,
    validator_url: Option<&str>,
) -> AuditorConfig {
    let mut env = BTreeMap::from([
        (
            "TRIAS_AUDITOR_DATA_DIR".to_owned(),
            data_dir.display().to_string(),
        ),
        ("TRIAS_AUDITOR_ORIGIN".to_owned(), ORIGIN.to_owned()),
    ]);
    if let Some(url) = database_url {
        env.insert("TRIAS_AUDITOR_DATABASE_URL".to_owned(), url.to_owned());
    }
    if let Some(url) = validator_url {
        env.insert("TRIAS_AUDITOR_VALIDATOR_URL".to_owned(), url.to_owned());
    }
    env.extend(trias_tests::tls_env("TRIAS_AUDITOR_", "auditor"));
    AuditorConfig::load(None, &env).unwrap()
}

/// Writes `events` synthetic entries with their tree nodes and a signed checkpoint per
/// transaction, as the sequencer would, generating the next batch while one is written.
async fn populate(config: &AuditorConfig, events: u64, base: i64) -> Duration {
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let key = Arc::new(SigningKey::load_or_create(&config.key_path(), &config.origin).unwrap());
    // The store creates the schema (its migrations); the rows then go in through SQL.
    let store = Store::open(&config.database_url()).await.unwrap();
    let through_store = std::env::var("TRIAS_BENCH_AUDIT_POPULATE").is_ok_and(|v| v == "store");
    let pool = if through_store {
        None
    } else {
        store.close().await;
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&config.database_url())
            .await
            .unwrap();
        // A benchmark fixture needs no durability while it is built.
        sqlx::query("PRAGMA synchronous = OFF")
            .execute(&pool)
            .await
            .unwrap();
        Some(pool)
    };
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(2);
    let generator = {
        let key = Arc::clone(&key);
        tokio::task::spawn_blocking(move || {
            let mut frontier = Frontier::new();
            let mut at = 0;
            while at < events {
                let end = events.min(at + POPULATE_BATCH);
                let mut entries = Vec::with_capacity((end - at) as usize);
                let mut nodes = Vec::with_capacity(2 * (end - at) as usize);
                for i in at..end {
                    let event = synthetic(i, base);
                    let bytes = leaf(&event);
                    nodes.extend(frontier.push(leaf_hash(&bytes)));
                    entries.push(Entry::new(i, &event, bytes));
                }
                let root = frontier.root();
                let note = key.sign(&CheckpointBody {
                    origin: key.name().to_owned(),
                    tree_size: end,
                    root,
                });
                let batch = Batch {
                    entries,
                    nodes,
                    checkpoint: StoredCheckpoint {
                        tree_size: end,
                        root,
                        note,
                        time: base + i64::try_from(end).unwrap() * SPACING_NANOS,
                    },
                    producers: vec![
                        ("issuer".into(), end.div_ceil(2)),
                        ("validator".into(), end / 2),
                    ],
                    state: Vec::new(),
                };
                if tx.blocking_send(batch).is_err() {
                    return;
                }
                at = end;
            }
        })
    };
    let mut last_report = Instant::now();
    while let Some(batch) = rx.recv().await {
        match &pool {
            Some(pool) => write_batch(pool, &batch).await,
            None => store.append(&batch).await.unwrap(),
        }
        let size = batch.checkpoint.tree_size;
        if last_report.elapsed() >= Duration::from_secs(30) || size == events {
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "  populated {size} / {events} events in {seconds:.0} s ({:.0} events/s)",
                size as f64 / seconds
            );
            last_report = Instant::now();
        }
    }
    generator.await.unwrap();
    match pool {
        Some(pool) => pool.close().await,
        None => store.close().await,
    }
    started.elapsed()
}

/// Writes a batch as `Store::append` does (same tables, same rows, one transaction) but with
/// anonymous `?` placeholders: with numbered `$n` ones SQLite's binding is quadratic in the
/// number of parameters of a statement, which makes the store's 200-row inserts CPU-bound
/// (see the report). Bulk loading a fixture is all this is for.
async fn write_batch(pool: &sqlx::AnyPool, batch: &Batch) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO checkpoints (tree_size, root, note, time) VALUES (?, ?, ?, ?)")
        .bind(i64::try_from(batch.checkpoint.tree_size).unwrap())
        .bind(batch.checkpoint.root.to_vec())
        .bind(batch.checkpoint.note.clone())
        .bind(batch.checkpoint.time)
        .execute(&mut *tx)
        .await
        .unwrap();
    for chunk in batch.entries.chunks(1000) {
        let mut insert = sqlx::QueryBuilder::<sqlx::Any>::new(
            "INSERT INTO entries (idx, event_id, producer, producer_seq, time, kind, subject, \
             client_id, token_id, family_id, audience, action, resource, decision, reason, leaf) ",
        );
        insert.push_values(chunk, |mut row, e| {
            row.push_bind(i64::try_from(e.index).unwrap())
                .push_bind(e.event_id.clone())
                .push_bind(e.producer.clone())
                .push_bind(i64::try_from(e.producer_seq).unwrap())
                .push_bind(e.time)
                .push_bind(i64::from(e.kind))
                .push_bind(e.subject.clone())
                .push_bind(e.client_id.clone())
                .push_bind(e.token_id.clone())
                .push_bind(e.family_id.clone())
                .push_bind(e.audience.clone())
                .push_bind(e.action.clone())
                .push_bind(e.resource.clone())
                .push_bind(i64::from(e.decision))
                .push_bind(e.reason.clone())
                .push_bind(e.leaf.clone());
        });
        insert.build().execute(&mut *tx).await.unwrap();
    }
    for chunk in batch.nodes.chunks(5000) {
        let mut insert =
            sqlx::QueryBuilder::<sqlx::Any>::new("INSERT INTO nodes (level, idx, hash) ");
        insert.push_values(chunk, |mut row, (id, hash)| {
            row.push_bind(i64::from(id.level))
                .push_bind(i64::try_from(id.index).unwrap())
                .push_bind(hash.to_vec());
        });
        insert.build().execute(&mut *tx).await.unwrap();
    }
    for (name, seq) in &batch.producers {
        sqlx::query(
            "INSERT INTO producers (name, last_seq) VALUES (?, ?)
             ON CONFLICT (name) DO UPDATE SET last_seq = excluded.last_seq",
        )
        .bind(name.clone())
        .bind(i64::try_from(*seq).unwrap())
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

/// A running auditor, served exactly as `trias_auditor::serve` does.
struct Running {
    addr: std::net::SocketAddr,
    auditor: trias_auditor::Auditor,
    /// The security analyst's token the queries send.
    token: Option<String>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// A client as the issuer (the producer the appends name), with the analyst's token.
    async fn client(&self) -> AuditorGrpc {
        let channel = trias_tests::channel(self.addr, "auditor", "issuer").await;
        let bearer = Bearer::new(self.token.as_deref()).unwrap();
        AuditorClient::with_interceptor(channel, bearer)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

async fn start(config: &AuditorConfig, token: Option<String>) -> Running {
    let auditor = trias_auditor::open(config, Arc::new(SystemClock))
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = auditor.clone();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        trias_auditor::serve(served, listener, None, shutdown)
            .await
            .unwrap();
    });
    Running {
        addr,
        auditor,
        token,
        stop,
        task,
    }
}

async fn query_page(client: &mut AuditorGrpc, request: pb::QueryRequest) -> usize {
    let mut stream = client.query(request).await.unwrap().into_inner();
    let mut entries = 0;
    while let Some(page) = stream.message().await.unwrap() {
        entries += page.entries.len();
    }
    entries
}

fn micros_between(from: Instant, to: Instant) -> u64 {
    u64::try_from((to - from).as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn micros_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

async fn query_scenario(settings: &Settings) -> Value {
    let n = settings.events;
    let temporary;
    let root = match &settings.dir {
        Some(dir) => dir.clone(),
        None => {
            temporary = tempfile::tempdir().unwrap();
            temporary.path().to_owned()
        }
    };
    // The services that decide the analyst's token the queries and proofs send.
    let access = AccessStack::start().await;
    let config = bench_config(&root.join("auditor"), None, Some(&access.validator_url()));
    let existing = config.data_dir.join("auditor.db").exists();
    let populate_time = if existing {
        println!("\nquery: reusing the log in {}", config.data_dir.display());
        None
    } else {
        println!("\nquery: populating a SQLite log with {n} events");
        Some(populate(&config, n, BASE_NANOS).await)
    };
    let db_bytes = ["auditor.db", "auditor.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(config.data_dir.join(f)).ok())
        .map(|m| m.len())
        .sum::<u64>();

    let mut report = json!({
        "populate_seconds": populate_time.map(|d| d.as_secs_f64()),
        "database_bytes": db_bytes,
        "target_query_p99_us": TARGET_QUERY_P99_US,
    });
    let opened = Instant::now();
    let running = start(&config, Some(access.token.clone())).await;
    let restore = opened.elapsed();
    let mut client = running.client().await;
    let checkpoint = client
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    let size = checkpoint.tree_size;
    assert!(size >= POPULATE_BATCH, "the log has {size} entries");
    if let Some(time) = populate_time {
        report["populate_events_per_sec"] = json!(size as f64 / time.as_secs_f64());
    }
    report["events"] = json!(size);
    report["restore_seconds"] = json!(restore.as_secs_f64());
    println!(
        "\n  queries and proofs: {size} entries, {:.2} GB on disk, restored and checked in {:.2} s",
        db_bytes as f64 / 1e9,
        restore.as_secs_f64()
    );
    let results = measure(&mut client, &checkpoint, settings.samples as u64).await;
    running.stop().await;
    access.stop().await;
    report["results"] = results;
    report
}

/// p50/p99 of each query and proof kind, one request at a time.
async fn measure(client: &mut AuditorGrpc, checkpoint: &pb::Checkpoint, samples: u64) -> Value {
    let size = checkpoint.tree_size;
    let mut results = BTreeMap::new();
    let mut rows = Vec::new();
    let pick = |k: u64, salt: u64| mix(k ^ salt) % size;
    let newest = |request: pb::QueryRequest| pb::QueryRequest {
        order: pb::Order::NewestFirst as i32,
        page_size: 100,
        limit: 100,
        ..request
    };
    for (name, salt) in [("subject", 1), ("token_id", 2), ("time_range", 3)] {
        let mut h = histogram();
        let mut returned = 0;
        for k in 0..samples {
            let i = pick(k, salt);
            let request = match name {
                "subject" => pb::QueryRequest {
                    subject: subject(i & !1),
                    ..Default::default()
                },
                "token_id" => pb::QueryRequest {
                    token_id: token_id(i),
                    ..Default::default()
                },
                _ => {
                    let from = BASE_NANOS + i64::try_from(i).unwrap() * SPACING_NANOS;
                    pb::QueryRequest {
                        time: Some(pb::TimeRange {
                            from: Some(timestamp_of(from)),
                            to: Some(timestamp_of(from + WINDOW_NANOS)),
                        }),
                        ..Default::default()
                    }
                }
            };
            let t = Instant::now();
            returned += query_page(client, newest(request)).await;
            h.record(micros_since(t)).unwrap();
        }
        let mean_rows = returned as f64 / samples as f64;
        rows.push((format!("Query by {name}"), h.clone(), mean_rows));
        let mut value = percentiles(&h);
        value["mean_entries"] = json!(mean_rows);
        results.insert(format!("query_{name}"), value);
    }

    let mut proof_h = histogram();
    let mut verify_ns = histogram();
    for k in 0..samples {
        let index = pick(k, 4);
        let t = Instant::now();
        let proof = client
            .get_inclusion_proof(pb::GetInclusionProofRequest {
                index,
                tree_size: size,
            })
            .await
            .unwrap()
            .into_inner();
        proof_h.record(micros_since(t)).unwrap();
        let v = Instant::now();
        verify_inclusion(
            index,
            size,
            &proof.leaf_hash,
            &proof.hashes,
            &checkpoint.root_hash,
        )
        .unwrap();
        verify_ns
            .record(u64::try_from(v.elapsed().as_nanos()).unwrap().max(1))
            .unwrap();
    }
    rows.push(("GetInclusionProof".into(), proof_h.clone(), 0.0));
    results.insert("inclusion_proof".into(), percentiles(&proof_h));
    results.insert(
        "inclusion_verify_ns".into(),
        json!({
            "p50_ns": verify_ns.value_at_quantile(0.5),
            "p99_ns": verify_ns.value_at_quantile(0.99),
        }),
    );

    let mut consistency_h = histogram();
    for k in 0..samples {
        // From the size of an older checkpoint (one is signed per populating batch): what a
        // verifier holding it asks for.
        let from = ((pick(k, 5) / POPULATE_BATCH).max(1) * POPULATE_BATCH).min(size);
        let t = Instant::now();
        client
            .get_consistency_proof(pb::GetConsistencyProofRequest {
                from_size: from,
                to_size: size,
            })
            .await
            .unwrap();
        consistency_h.record(micros_since(t)).unwrap();
    }
    // A verified one: the root of the first batch is cheap to re-derive from the synthetic log.
    let mut frontier = Frontier::new();
    for i in 0..POPULATE_BATCH {
        frontier.push(leaf_hash(&leaf(&synthetic(i, BASE_NANOS))));
    }
    let proof = client
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            from_size: POPULATE_BATCH,
            to_size: size,
        })
        .await
        .unwrap()
        .into_inner();
    let v = Instant::now();
    verify_consistency(
        POPULATE_BATCH,
        size,
        &proof.hashes,
        &frontier.root(),
        &checkpoint.root_hash,
    )
    .unwrap();
    let consistency_verify = v.elapsed();
    rows.push(("GetConsistencyProof".into(), consistency_h.clone(), 0.0));
    results.insert("consistency_proof".into(), percentiles(&consistency_h));
    results.insert(
        "consistency_verify_ns".into(),
        json!(u64::try_from(consistency_verify.as_nanos()).unwrap()),
    );

    println!(
        "  {:<22} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "request", "samples", "p50 ms", "p90 ms", "p99 ms", "max ms", "entries"
    );
    for (name, h, entries) in &rows {
        println!(
            "  {:<22} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>8.0}",
            name,
            h.len(),
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.9) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0,
            entries
        );
    }
    println!(
        "  inclusion proof verification: p50 {:.1} µs, p99 {:.1} µs; consistency proof \
         verification: {:.1} µs",
        verify_ns.value_at_quantile(0.5) as f64 / 1000.0,
        verify_ns.value_at_quantile(0.99) as f64 / 1000.0,
        consistency_verify.as_nanos() as f64 / 1000.0
    );
    let worst_query_p99 = ["query_subject", "query_token_id", "query_time_range"]
        .iter()
        .map(|k| results[*k]["p99_us"].as_u64().unwrap())
        .max()
        .unwrap();
    let met = worst_query_p99 < TARGET_QUERY_P99_US;
    println!(
        "  query p99 target < {} ms at {size} events: {}",
        TARGET_QUERY_P99_US / 1000,
        if met { "met" } else { "NOT met" }
    );
    results.insert("target_met".into(), json!(met));
    json!(results)
}
