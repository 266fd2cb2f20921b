//! The check benchmark: the validator's `Check` over gRPC, against an issuer and a validator
//! started in-process by the e2e harness (SQLite ledger, durable outbox that fsyncs every group
//! commit, strict audit: every check is recorded before it is answered).
//!
//! Scenarios, each with one token in ten bad (a forged signature, an expired token, a token for
//! another audience, or garbage), every answer compared with what it should be:
//! - `unique`: every token is new to the validator, so every check verifies a signature;
//! - `reused`: a small set of tokens used over and over, so checks hit the verified-token cache;
//! - `unique-70` / `reused-70`: open loop at 70% of the rate the closed loop reached, latency
//!   measured from each request's scheduled start (no coordinated omission).
//!
//! The physical limits are measured in the same run (`trias_tests::limits`): ring's Ed25519
//! verify on one core for unique checks, the disk's fsync latency for the latency target.
//!
//! Run with `cargo bench -p trias-tests --bench check`. Environment overrides (all optional):
//! - `TRIAS_BENCH_SECONDS` (10) / `TRIAS_BENCH_WARMUP` (2): per scenario;
//! - `TRIAS_BENCH_CONCURRENCY` (64) / `TRIAS_BENCH_CHANNELS` (4): requests in flight and
//!   the HTTP/2 connections they share;
//! - `TRIAS_BENCH_SCENARIOS` (all): comma-separated names from the list above;
//! - `TRIAS_BENCH_UNIQUE_TOKENS` (250000): tokens minted for the unique scenarios; a run that
//!   uses more wraps around, and the report says how many checks hit a token twice;
//! - `TRIAS_BENCH_SERVER_THREADS` / `TRIAS_BENCH_CLIENT_THREADS` (2 / 2): runtime workers;
//! - `TRIAS_BENCH_OUTPUT` (`<workspace>/target/bench-check.json`): the JSON report.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary fails loudly and reports on standard output"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tonic::transport::Channel;
use trias_issuer::keys::AccessClaims;
use trias_proto::v1::validator_client::ValidatorClient;
use trias_proto::v1::{CheckRequest, Reason};
use trias_runtime::clock::{Clock as _, unix_seconds};
use trias_tests::bench::{self, Call, Measured, ThreadGroups, WorkerResult, env_or, round};
use trias_tests::limits::Limits;
use trias_tests::validator::{ValidatorOptions, start_validator};
use trias_tests::{IssuerOptions, start_issuer};

/// Targets of the validator's issue, on the 2-core reference machine.
const TARGET_SHARE_OF_RAW_VERIFY: f64 = 0.70;
const TARGET_REUSED_PER_SEC: f64 = 25_000.0;
const TARGET_P99_US_AT_70: u64 = 2_000;
/// The lifetime of the expired cases, in seconds; the benchmark moves the services' clock
/// past it (and past the validator's skew) before it starts.
const EXPIRED_AFTER: i64 = 60;
/// Tokens in the reused set: few enough that every one stays cached.
const REUSED_TOKENS: usize = 1_000;
const GROUPS: &ThreadGroups = &[
    ("service-rt", "services"),
    ("bench-client", "load"),
    ("sqlx-sqlite", "sqlite"),
];
const SCENARIOS: &[&str] = &["unique", "reused", "unique-70", "reused-70"];

#[derive(Debug, Clone)]
struct Settings {
    measure: Duration,
    warmup: Duration,
    concurrency: usize,
    channels: usize,
    scenarios: Vec<String>,
    unique_tokens: usize,
    server_threads: usize,
    client_threads: usize,
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            measure: Duration::from_secs_f64(env_or("TRIAS_BENCH_SECONDS", 10.0)),
            warmup: Duration::from_secs_f64(env_or("TRIAS_BENCH_WARMUP", 2.0)),
            concurrency: env_or("TRIAS_BENCH_CONCURRENCY", 64usize).max(1),
            channels: env_or("TRIAS_BENCH_CHANNELS", 4usize).max(1),
            scenarios: bench::scenarios_from_env("TRIAS_BENCH_SCENARIOS", SCENARIOS),
            unique_tokens: env_or("TRIAS_BENCH_UNIQUE_TOKENS", 250_000usize).max(100),
            server_threads: env_or("TRIAS_BENCH_SERVER_THREADS", 2usize).max(1),
            client_threads: env_or("TRIAS_BENCH_CLIENT_THREADS", 2usize).max(1),
        }
    }
}

/// A token and the reason the validator must answer for it.
#[derive(Debug, Clone)]
struct Case {
    token: String,
    audience: &'static str,
    expected: Reason,
}

/// The cases one scenario cycles through, shared by its workers; `next` counts every use.
#[derive(Debug)]
struct Pool {
    cases: Vec<Case>,
    next: AtomicU64,
}

impl Pool {
    fn take(&self) -> (u64, &Case) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (n, &self.cases[(n % self.cases.len() as u64) as usize])
    }

    /// Checks that used a case a second time (the pool wrapped around).
    fn repeats(&self) -> u64 {
        self.next
            .load(Ordering::Relaxed)
            .saturating_sub(self.cases.len() as u64)
    }
}

/// One check, its answer compared with the expected reason.
async fn check_once(client: &mut ValidatorClient<Channel>, pool: &Pool) -> Result<(), String> {
    let (n, case) = pool.take();
    let decision = client
        .check(CheckRequest {
            token: case.token.clone(),
            action: "payment.read".into(),
            resource: format!("payment/{n}"),
            audience: case.audience.into(),
            context: Default::default(),
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    if decision.reason() == case.expected {
        Ok(())
    } else {
        Err(format!(
            "expected {:?}, got {:?} ({})",
            case.expected,
            decision.reason(),
            decision.detail
        ))
    }
}

#[derive(Debug, Clone)]
struct Worker {
    client: ValidatorClient<Channel>,
    pool: Arc<Pool>,
}

impl Call for Worker {
    async fn call(&mut self) -> Result<(), String> {
        check_once(&mut self.client, &self.pool).await
    }
}

/// Mints the cases: one in ten bad, in four kinds; `fresh` good tokens have unique `jti`s.
fn mint(issuer: &trias_issuer::Issuer, base: &AccessClaims, count: usize, tag: &str) -> Vec<Case> {
    let keys = issuer.keys();
    let sign = |claims: &AccessClaims| keys.sign(claims).unwrap().0;
    (0..count)
        .map(|i| {
            let mut claims = base.clone();
            claims.jti = format!("{tag}-{i:012}");
            match i % 40 {
                9 => {
                    // A forged signature: the last signature byte changed (costs a verify).
                    let mut token = sign(&claims).into_bytes();
                    let last = token.len() - 2;
                    token[last] = if token[last] == b'A' { b'B' } else { b'A' };
                    Case {
                        token: String::from_utf8(token).unwrap(),
                        audience: "payments",
                        expected: Reason::BadSignature,
                    }
                }
                19 => {
                    // Expired once the clock is moved on past it (see `main`).
                    claims.exp = claims.iat + EXPIRED_AFTER;
                    Case {
                        token: sign(&claims),
                        audience: "payments",
                        expected: Reason::Expired,
                    }
                }
                29 => Case {
                    token: sign(&claims),
                    audience: "auditor",
                    expected: Reason::WrongAudience,
                },
                39 => Case {
                    token: format!("not.a-{i}.jwt"),
                    audience: "payments",
                    expected: Reason::Malformed,
                },
                _ => Case {
                    token: sign(&claims),
                    audience: "payments",
                    expected: Reason::Ok,
                },
            }
        })
        .collect()
}

/// The same on every thread of the machine, to mint a large pool quickly.
fn mint_parallel(issuer: &trias_issuer::Issuer, base: &AccessClaims, count: usize) -> Vec<Case> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = count.div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = (0..threads)
            .map(|t| {
                let n = per.min(count.saturating_sub(t * per));
                scope.spawn(move || mint(issuer, base, n, &format!("unique{t}")))
            })
            .collect();
        parts.into_iter().flat_map(|p| p.join().unwrap()).collect()
    })
}

async fn clients(addr: std::net::SocketAddr, settings: &Settings) -> Vec<ValidatorClient<Channel>> {
    bench::channels(
        addr,
        "validator",
        "payments",
        settings.channels,
        settings.concurrency,
    )
    .await
    .into_iter()
    .map(ValidatorClient::new)
    .collect()
}

/// One scenario's figures.
#[derive(Debug)]
struct Report {
    name: &'static str,
    description: String,
    result: WorkerResult,
    per_sec: f64,
    cpu: Option<bench::CpuSplit>,
    repeats: u64,
}

impl Report {
    fn measured(name: &'static str, description: String, m: Measured, pool: &Pool) -> Report {
        Report {
            name,
            description,
            per_sec: m.per_sec(),
            result: m.result,
            cpu: Some(m.cpu),
            repeats: pool.repeats(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "description": self.description,
            "checks_per_sec": round(self.per_sec, 1),
            "latency_us": bench::latency_json(&self.result.latencies_us),
            "errors": self.result.errors,
            "first_error": self.result.first_error,
            "cpu_cores": self.cpu.as_ref().map(bench::CpuSplit::cores_json),
            "cpu_us_per_check": self.cpu.as_ref().map(|c| round(c.us_per_op(self.per_sec), 1)),
            "checks_that_reused_a_unique_token": self.repeats,
        })
    }
}

fn main() {
    let settings = Settings::from_env();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server = bench::runtime("service-rt", settings.server_threads);
    let client = bench::runtime("bench-client", settings.client_threads);

    println!("Trias check benchmark");
    let limits = Limits::measure(&std::env::temp_dir(), Duration::from_secs(2));
    let raw_verify = limits.ed25519_verify_per_sec;
    println!("{}", limits.line());

    let (issuer, validator, base) = server.block_on(async {
        let issuer = start_issuer(IssuerOptions::default())
            .await
            .expect("the SQLite issuer always starts");
        let options = ValidatorOptions {
            cache_capacity: 100_000,
            ..ValidatorOptions::default()
        };
        let validator = start_validator(&issuer, options)
            .await
            .expect("the SQLite validator always starts");
        let now = unix_seconds(issuer.clock.now());
        let base = AccessClaims {
            iss: issuer.issuer.settings().issuer.clone(),
            sub: "bench-service".into(),
            aud: "payments".into(),
            client_id: "bench-service".into(),
            scope: "payments:read payments:create".into(),
            iat: now,
            exp: now + 3_600,
            jti: String::new(),
            acr: None,
            auth_time: None,
            sid: None,
        };
        (issuer, validator, base)
    });

    let minting = Instant::now();
    let unique = Arc::new(Pool {
        cases: mint_parallel(&issuer.issuer, &base, settings.unique_tokens),
        next: AtomicU64::new(0),
    });
    let reused = Arc::new(Pool {
        cases: mint(&issuer.issuer, &base, REUSED_TOKENS, "reused"),
        next: AtomicU64::new(0),
    });
    // The expired cases expire; every other token lives an hour.
    issuer
        .clock
        .advance(Duration::from_secs(EXPIRED_AFTER as u64 + 60));
    println!(
        "minted {} unique and {REUSED_TOKENS} reused tokens in {:.1} s; one in ten bad",
        unique.cases.len(),
        minting.elapsed().as_secs_f64()
    );
    println!(
        "validator: SQLite ledger, durable outbox (fsync per group commit), strict audit; load: \
         {} in flight on {} HTTP/2 connections, {:.0} s warm-up + {:.0} s measured; {cpus} CPUs \
         shared by the services and the load generator in this one process",
        settings.concurrency,
        settings.channels,
        settings.warmup.as_secs_f64(),
        settings.measure.as_secs_f64()
    );

    let outbox = validator.validator.outbox().clone();
    let addr = validator.grpc_addr;
    let mut reports: Vec<Report> = Vec::new();
    for name in SCENARIOS
        .iter()
        .filter(|s| settings.scenarios.iter().any(|n| n == *s))
    {
        let report = client.block_on(async {
            let pool = if name.starts_with("unique") {
                unique.clone()
            } else {
                reused.clone()
            };
            let clients = clients(addr, &settings).await;
            match *name {
                "unique" | "reused" => {
                    let workers = clients
                        .into_iter()
                        .map(|client| Worker {
                            client,
                            pool: pool.clone(),
                        })
                        .collect();
                    let m = bench::closed_loop(
                        client.handle(),
                        workers,
                        settings.warmup,
                        settings.measure,
                        &outbox,
                        GROUPS,
                    )
                    .await;
                    let description = format!(
                        "closed loop, {} in flight, {}",
                        settings.concurrency,
                        if *name == "unique" {
                            "every token new (signature verified)"
                        } else {
                            "1,000 tokens reused (cache hits)"
                        }
                    );
                    Report::measured(name, description, m, &pool)
                }
                _ => {
                    let base_name = name.trim_end_matches("-70");
                    let max = reports
                        .iter()
                        .find(|r| r.name == base_name)
                        .map(|r| r.per_sec)
                        .expect("an open-loop scenario runs after its closed-loop one");
                    let rate = 0.7 * max;
                    let workers = clients
                        .into_iter()
                        .map(|client| Worker {
                            client,
                            pool: pool.clone(),
                        })
                        .collect();
                    let m = bench::open_loop(
                        client.handle(),
                        workers,
                        rate,
                        settings.warmup,
                        settings.measure,
                        &outbox,
                        GROUPS,
                    )
                    .await;
                    let description =
                        format!("open loop at {rate:.0}/s, 70% of the {base_name} maximum");
                    Report::measured(name, description, m, &pool)
                }
            }
        });
        let [p50, p99, p999] = bench::quantiles_ms(&report.result.latencies_us);
        println!(
            "  {:<10} {:>9.0} checks/s  p50 {:>6} ms  p99 {:>6} ms  p99.9 {:>6} ms  errors {}",
            report.name, report.per_sec, p50, p99, p999, report.result.errors,
        );
        reports.push(report);
    }

    println!();
    println!(
        "{:<10} {:>9} {:>7} {:>7} {:>8} {:>6} {:>10}   CPU cores: services / sqlite / load",
        "scenario", "checks/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "CPU µs/op"
    );
    for r in &reports {
        let [p50, p99, p999] = bench::quantiles_ms(&r.result.latencies_us);
        let cpu = r.cpu.as_ref().map_or_else(
            || "-".to_owned(),
            |c| {
                format!(
                    "{:.2} / {:.2} / {:.2}",
                    c.cores("services"),
                    c.cores("sqlite"),
                    c.cores("load")
                )
            },
        );
        println!(
            "{:<10} {:>9.0} {:>7} {:>7} {:>8} {:>6} {:>10}   {cpu}",
            r.name,
            r.per_sec,
            p50,
            p99,
            p999,
            r.result.errors,
            r.cpu.as_ref().map_or_else(
                || "-".to_owned(),
                |c| format!("{:.0}", c.us_per_op(r.per_sec))
            ),
        );
    }
    for r in &reports {
        println!("  {}: {}", r.name, r.description);
        if let Some(error) = &r.result.first_error {
            println!("  {}: first error: {error}", r.name);
        }
        if r.repeats > 0 && r.name.starts_with("unique") {
            println!(
                "  {}: warning: {} checks reused a token (raise TRIAS_BENCH_UNIQUE_TOKENS)",
                r.name, r.repeats
            );
        }
    }

    let find = |name: &str| reports.iter().find(|r| r.name == name);
    let p99 = |r: &Report| r.result.latencies_us.value_at_quantile(0.99);
    let targets = json!({
        "unique_share_of_raw_verify": find("unique").map(|r| round(r.per_sec / raw_verify, 3)),
        "unique_met": find("unique").map(|r| r.result.errors == 0 && r.per_sec >= TARGET_SHARE_OF_RAW_VERIFY * raw_verify),
        "reused_met": find("reused").map(|r| r.result.errors == 0 && r.per_sec >= TARGET_REUSED_PER_SEC),
        "unique_p99_at_70_met": find("unique-70").map(|r| r.result.errors == 0 && p99(r) < TARGET_P99_US_AT_70),
        "reused_p99_at_70_met": find("reused-70").map(|r| r.result.errors == 0 && p99(r) < TARGET_P99_US_AT_70),
    });
    println!();
    println!(
        "targets: unique ≥ {:.0}% of raw verify ({:.0}/s), reused ≥ {TARGET_REUSED_PER_SEC:.0}/s, \
         p99 < {} ms at 70% load: {targets}",
        TARGET_SHARE_OF_RAW_VERIFY * 100.0,
        TARGET_SHARE_OF_RAW_VERIFY * raw_verify,
        TARGET_P99_US_AT_70 / 1000
    );

    let output = bench::report_path("bench-check.json");
    bench::write_report(
        &output,
        &json!({
            "benchmark": "check",
            "machine": { "cpus": cpus, "note": "the load generator runs in the services' process and shares its CPUs" },
            "raw_ed25519_verify_per_sec_one_core": round(raw_verify, 0),
            "limits": limits.json(),
            "peak_rss_kib": bench::peak_rss_kib(),
            "settings": {
                "measure_seconds": settings.measure.as_secs_f64(),
                "warmup_seconds": settings.warmup.as_secs_f64(),
                "concurrency": settings.concurrency,
                "grpc_channels": settings.channels,
                "unique_tokens": settings.unique_tokens,
            },
            "targets": targets,
            "scenarios": reports.iter().map(Report::json).collect::<Vec<_>>(),
        }),
    );
    println!("report written to {}", output.display());

    server.block_on(async {
        validator.stop().await;
        issuer.stop().await;
    });
    let errors: u64 = reports.iter().map(|r| r.result.errors).sum();
    if errors > 0 {
        eprintln!("{errors} checks failed or were answered wrongly");
        std::process::exit(1);
    }
}
