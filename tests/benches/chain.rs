//! The whole chain: a token issued over gRPC, checked at the validator, and both events in
//! the auditor's log. An auditor, an issuer and a validator run in-process as the e2e harness
//! starts them (SQLite, durable outboxes, strict audit, mTLS), the producers shipping to the
//! auditor.
//!
//! Each closed-loop request is one chain (client_credentials, then `Check` of the new token);
//! one chain in `TRIAS_BENCH_CHAIN_SAMPLE` is also followed until the auditor has logged both
//! its issuance and its check, which gives the latency from the token request to "recorded".
//!
//! Run with `cargo bench -p trias-tests --bench chain`. Environment overrides (all optional):
//! `TRIAS_BENCH_SECONDS` (10), `TRIAS_BENCH_WARMUP` (2), `TRIAS_BENCH_CONCURRENCY` (32),
//! `TRIAS_BENCH_CHANNELS` (4), `TRIAS_BENCH_CHAIN_SAMPLE` (200), `TRIAS_BENCH_OUTPUT`
//! (`<workspace>/target/bench-chain.json`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary fails loudly and reports on standard output"
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tonic::transport::Channel;
use trias_auditor::store::{Filter, Order};
use trias_proto::v1 as pb;
use trias_proto::v1::issuer_client::IssuerClient;
use trias_proto::v1::validator_client::ValidatorClient;
use trias_tests::auditor::{AuditorOptions, start_auditor};
use trias_tests::bench::{self, Call, ThreadGroups, env_or, round};
use trias_tests::limits::Limits;
use trias_tests::validator::{ValidatorOptions, start_validator};
use trias_tests::{IssuerOptions, start_issuer};

const GROUPS: &ThreadGroups = &[
    ("service-rt", "services"),
    ("bench-client", "load"),
    ("sqlx-sqlite", "sqlite"),
];

/// Chains waiting to be seen in the log: token id and when the chain started.
type Pending = Arc<Mutex<Vec<(String, Instant)>>>;

#[derive(Clone)]
struct Worker {
    issuer: IssuerClient<Channel>,
    validator: ValidatorClient<Channel>,
    request: pb::TokenRequest,
    started: Arc<AtomicU64>,
    sample_every: u64,
    pending: Pending,
}

impl Call for Worker {
    async fn call(&mut self) -> Result<(), String> {
        let t0 = Instant::now();
        let issued = self
            .issuer
            .token(self.request.clone())
            .await
            .map_err(|s| format!("token: {}", s.message()))?
            .into_inner();
        let decision = self
            .validator
            .check(pb::CheckRequest {
                token: issued.access_token,
                action: "payment.read".into(),
                resource: "payment/1".into(),
                ..Default::default()
            })
            .await
            .map_err(|s| format!("check: {}", s.message()))?
            .into_inner();
        if !decision.allowed {
            return Err(format!("check denied: {}", decision.detail));
        }
        if self
            .started
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(self.sample_every)
        {
            self.pending.lock().unwrap().push((issued.token_id, t0));
        }
        Ok(())
    }
}

fn main() {
    let measure = Duration::from_secs_f64(env_or("TRIAS_BENCH_SECONDS", 10.0));
    let warmup = Duration::from_secs_f64(env_or("TRIAS_BENCH_WARMUP", 2.0));
    let concurrency = env_or("TRIAS_BENCH_CONCURRENCY", 32usize).max(1);
    let connections = env_or("TRIAS_BENCH_CHANNELS", 4usize).max(1);
    let sample_every = env_or("TRIAS_BENCH_CHAIN_SAMPLE", 200u64).max(1);
    let output = std::env::var_os("TRIAS_BENCH_OUTPUT")
        .map_or_else(|| bench::report_path("bench-chain.json"), Into::into);
    let server = bench::runtime("service-rt", 2);
    let client = bench::runtime("bench-client", 2);

    println!("Trias chain benchmark: issue → check → both recorded");
    let limits = Limits::measure(&std::env::temp_dir(), Duration::from_secs(2));
    println!("{}", limits.line());
    let (auditor, issuer, validator, request) = server.block_on(async {
        let auditor = start_auditor(AuditorOptions::default()).await.unwrap();
        let issuer = start_issuer(IssuerOptions {
            auditor_url: Some(auditor.url()),
            ..IssuerOptions::default()
        })
        .await
        .unwrap();
        let validator = start_validator(
            &issuer,
            ValidatorOptions {
                auditor_url: Some(auditor.url()),
                ..ValidatorOptions::default()
            },
        )
        .await
        .unwrap();
        let (id, secret) = issuer.service_client(&["clerk"], &["payments:read"]).await;
        let request = pb::TokenRequest {
            grant_type: pb::GrantType::ClientCredentials as i32,
            client_id: id,
            client_secret: secret,
            scope: "payments:read".into(),
            ..Default::default()
        };
        (auditor, issuer, validator, request)
    });

    let pending: Pending = Arc::default();
    let recorded = Arc::new(Mutex::new(bench::histogram()));
    let measured = client.block_on(async {
        let issuers =
            bench::channels(issuer.grpc_addr, "issuer", "cli", connections, concurrency).await;
        let validators = bench::channels(
            validator.grpc_addr,
            "validator",
            "payments",
            connections,
            concurrency,
        )
        .await;
        let started = Arc::new(AtomicU64::new(0));
        let workers: Vec<Worker> = (0..concurrency)
            .map(|i| Worker {
                issuer: IssuerClient::new(issuers[i % issuers.len()].clone()),
                validator: ValidatorClient::new(validators[i % validators.len()].clone()),
                request: request.clone(),
                started: Arc::clone(&started),
                sample_every,
                pending: Arc::clone(&pending),
            })
            .collect();
        // Follows the sampled chains until the auditor has logged both of their events.
        let follower = {
            let (auditor, pending, recorded) = (
                auditor.auditor.clone(),
                Arc::clone(&pending),
                Arc::clone(&recorded),
            );
            tokio::spawn(async move {
                let deadline = Instant::now() + warmup + measure + Duration::from_secs(30);
                while Instant::now() < deadline {
                    let waiting: Vec<(String, Instant)> = pending.lock().unwrap().clone();
                    let mut done = Vec::new();
                    for (token_id, t0) in &waiting {
                        let filter = Filter {
                            token_id: Some(token_id.clone()),
                            ..Filter::default()
                        };
                        let page = auditor
                            .query_page(&filter, Order::OldestFirst, None, 10)
                            .await
                            .unwrap();
                        if page.entries.len() >= 2 {
                            recorded
                                .lock()
                                .unwrap()
                                .saturating_record(bench::micros(t0.elapsed()));
                            done.push(token_id.clone());
                        }
                    }
                    pending.lock().unwrap().retain(|(id, _)| !done.contains(id));
                    if Instant::now() > deadline - Duration::from_secs(30)
                        && pending.lock().unwrap().is_empty()
                    {
                        return;
                    }
                    // Each look is a query per waiting chain: not so often that the
                    // follower becomes the load.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let measured = bench::closed_loop(
            client.handle(),
            workers,
            warmup,
            measure,
            issuer.issuer.outbox(),
            GROUPS,
        )
        .await;
        follower.await.unwrap();
        measured
    });
    let recorded = recorded.lock().unwrap().clone();
    let unrecorded = pending.lock().unwrap().len();
    let per_sec = measured.per_sec();
    let [p50, p99, p999] = bench::quantiles_ms(&measured.result.latencies_us);
    let [r50, r99, r999] = bench::quantiles_ms(&recorded);
    println!(
        "auditor, issuer and validator in this process (SQLite, durable outboxes shipping to the auditor); \
         {concurrency} chains in flight, {} s warm-up + {} s measured",
        warmup.as_secs_f64(),
        measure.as_secs_f64()
    );
    println!(
        "  issue + check   {per_sec:>7.0} chains/s  p50 {p50:>6} ms  p99 {p99:>6} ms  p99.9 {p999:>6} ms  errors {}",
        measured.result.errors
    );
    println!(
        "  both recorded   {:>7} sampled    p50 {r50:>6} ms  p99 {r99:>6} ms  p99.9 {r999:>6} ms  never recorded {unrecorded}",
        recorded.len()
    );
    println!(
        "  CPU µs per chain {:.0}; cores: {}",
        measured.cpu.us_per_op(per_sec),
        measured.cpu.cores_json()
    );
    bench::write_report(
        &output,
        &json!({
            "benchmark": "chain",
            "limits": limits.json(),
            "settings": { "concurrency": concurrency, "connections": connections, "sample_every": sample_every,
                          "measure_seconds": measure.as_secs_f64(), "warmup_seconds": warmup.as_secs_f64() },
            "chains_per_sec": round(per_sec, 1),
            "issue_and_check_latency_us": bench::latency_json(&measured.result.latencies_us),
            "recorded_latency_us": bench::latency_json(&recorded),
            "recorded_samples": recorded.len(),
            "never_recorded": unrecorded,
            "errors": measured.result.errors,
            "first_error": measured.result.first_error,
            "cpu_cores": measured.cpu.cores_json(),
            "cpu_us_per_chain": round(measured.cpu.us_per_op(per_sec), 1),
        }),
    );
    println!("report written to {}", output.display());
    server.block_on(async {
        validator.stop().await;
        issuer.stop().await;
        auditor.stop().await;
    });
    if measured.result.errors > 0 || unrecorded > 0 {
        std::process::exit(1);
    }
}
