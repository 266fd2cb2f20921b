//! Memory (and CPU) per service under load: the suite as three processes, as `trias up` runs
//! it (SQLite, durable outboxes, strict audit, mTLS, the producers shipping to the auditor),
//! while clients mint tokens over HTTP and check each new token once and a few recent ones
//! again over gRPC, so the validator's verified-token cache fills. Each service's resident
//! set (`VmRSS`, sampled every 250 ms, and the kernel's peak `VmHWM`) and CPU time are read
//! from `/proc`; the load generator runs in this process and is not counted.
//!
//! Run with `cargo bench -p trias-tests --bench memory`. Environment overrides (all
//! optional): `TRIAS_BENCH_SECONDS` (30), `TRIAS_BENCH_CONCURRENCY` (16),
//! `TRIAS_BENCH_CACHE_CAPACITY` (the validator's `cache_capacity`, default its own),
//! `TRIAS_BENCH_OUTPUT` (`<workspace>/target/bench-memory.json`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary fails loudly and reports on standard output"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;
use trias_proto::v1::CheckRequest;
use trias_tests::bench::{self, env_or, round};
use trias_tests::processes::{SERVICES, Suite};

/// Recent tokens each worker checks again (cache hits).
const REUSED: usize = 3;

/// A service's resident set now and at its peak, in KiB, and its CPU time so far in seconds.
fn sample(pid: u32) -> (u64, u64, f64) {
    let pid_text = pid.to_string();
    (
        bench::status_kib(&pid_text, "VmRSS:").unwrap(),
        bench::status_kib(&pid_text, "VmHWM:").unwrap(),
        bench::process_cpu_seconds(pid).unwrap(),
    )
}

fn mib(kib: u64) -> f64 {
    round(kib as f64 / 1024.0, 1)
}

fn main() {
    let seconds: u64 = env_or("TRIAS_BENCH_SECONDS", 30);
    let concurrency: usize = env_or("TRIAS_BENCH_CONCURRENCY", 16);
    let runtime = bench::runtime("bench-client", 2);
    runtime.block_on(async move {
        let mut suite = Suite::create().await;
        if let Ok(capacity) = std::env::var("TRIAS_BENCH_CACHE_CAPACITY") {
            suite.edit_config("validator", |text| {
                format!("cache_capacity = {capacity}\n{text}")
            });
        }
        suite.start_all().await;
        let pids: BTreeMap<&str, u32> = SERVICES.iter().map(|s| (*s, suite.pid(s))).collect();
        let idle: BTreeMap<&str, u64> = pids.iter().map(|(s, pid)| (*s, sample(*pid).0)).collect();

        let url = format!("{}/oauth2/token", suite.get("issuer_url"));
        let client = (suite.get("demo_client_id"), suite.get("demo_client_secret"));
        let http = reqwest::Client::new();
        let (minted, checks, errors) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let first_error = Arc::new(Mutex::new(None::<String>));
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let (url, client, http) = (url.clone(), client.clone(), http.clone());
            let mut validator = suite.validator().await;
            let (minted, checks, errors) = (
                Arc::clone(&minted),
                Arc::clone(&checks),
                Arc::clone(&errors),
            );
            let first_error = Arc::clone(&first_error);
            workers.push(tokio::spawn(async move {
                let mut recent: Vec<String> = Vec::new();
                while Instant::now() < end {
                    let reply = http
                        .post(&url)
                        .basic_auth(&client.0, Some(&client.1))
                        .form(&[
                            ("grant_type", "client_credentials"),
                            ("scope", "payments:read"),
                        ])
                        .send()
                        .await;
                    let token = match reply {
                        Ok(r) if r.status() == 200 => {
                            let body: Value = r.json().await.unwrap();
                            body["access_token"].as_str().unwrap().to_owned()
                        }
                        other => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error.lock().await.get_or_insert(format!("{other:?}"));
                            continue;
                        }
                    };
                    minted.fetch_add(1, Ordering::Relaxed);
                    recent.insert(0, token);
                    recent.truncate(REUSED + 1);
                    for token in &recent {
                        let decision = validator
                            .check(CheckRequest {
                                token: token.clone(),
                                action: "payment.read".into(),
                                audience: "payments".into(),
                                ..Default::default()
                            })
                            .await;
                        match decision {
                            Ok(d) if d.get_ref().allowed => {
                                checks.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                first_error.lock().await.get_or_insert(format!("{other:?}"));
                            }
                        }
                    }
                }
            }));
        }
        let started = Instant::now();
        let before: BTreeMap<&str, f64> =
            pids.iter().map(|(s, pid)| (*s, sample(*pid).2)).collect();
        let mut steady: BTreeMap<&str, u64> = BTreeMap::new();
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(250)).await;
            for (service, pid) in &pids {
                let rss = sample(*pid).0;
                let max = steady.entry(service).or_default();
                *max = (*max).max(rss);
            }
        }
        for worker in workers {
            worker.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let (minted, checks) = (
            minted.load(Ordering::Relaxed),
            checks.load(Ordering::Relaxed),
        );

        println!(
            "memory per service under load: {seconds} s, {concurrency} clients; {minted} tokens \
             minted ({:.0}/s), {checks} checks ({:.0}/s), {} errors",
            minted as f64 / elapsed,
            checks as f64 / elapsed,
            errors.load(Ordering::Relaxed)
        );
        if let Some(error) = first_error.lock().await.as_ref() {
            println!("first error: {error}");
        }
        println!(
            "{:<10} {:>10} {:>14} {:>10} {:>12} {:>16}",
            "service", "idle MiB", "max RSS MiB", "peak MiB", "CPU cores", "CPU µs per token"
        );
        let mut services = serde_json::Map::new();
        for (service, pid) in &pids {
            let (_, peak, cpu_after) = sample(*pid);
            let cpu = cpu_after - before[service];
            let per_token = if minted == 0 {
                0.0
            } else {
                cpu * 1e6 / minted as f64
            };
            println!(
                "{service:<10} {:>10} {:>14} {:>10} {:>12} {:>16}",
                mib(idle[service]),
                mib(steady[service]),
                mib(peak),
                round(cpu / elapsed, 2),
                round(per_token, 0)
            );
            services.insert(
                (*service).to_owned(),
                json!({
                    "idle_rss_mib": mib(idle[service]),
                    "max_rss_mib": mib(steady[service]),
                    "peak_rss_mib": mib(peak),
                    "cpu_cores": round(cpu / elapsed, 2),
                    "cpu_us_per_token": round(per_token, 0),
                }),
            );
        }
        let target = steady["validator"] < 100 * 1024;
        println!(
            "validator under 100 MiB RSS: {}",
            if target { "yes" } else { "no" }
        );
        let report = json!({
            "benchmark": "memory",
            "seconds": seconds,
            "concurrency": concurrency,
            "tokens_minted": minted,
            "checks": checks,
            "tokens_per_sec": round(minted as f64 / elapsed, 0),
            "checks_per_sec": round(checks as f64 / elapsed, 0),
            "errors": errors.load(Ordering::Relaxed),
            "services": services,
            "validator_under_100_mib": target,
        });
        let path = bench::report_path("bench-memory.json");
        bench::write_report(&path, &report);
        println!("report: {}", path.display());
        for service in ["validator", "issuer", "auditor"] {
            suite.stop(service).await;
        }
    });
}
