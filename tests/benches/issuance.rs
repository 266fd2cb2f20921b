//! The issuance benchmark: one issuer started in-process by the e2e harness (SQLite, durable
//! outbox that fsyncs every group commit, strict audit), driven in a closed loop by concurrent
//! clients over gRPC and over HTTP, reporting tokens per second, latency percentiles, errors
//! and outbox commits per second.
//!
//! Run with `cargo bench -p trias-tests --bench issuance`. The load generator runs in the same
//! process as the issuer, on its own runtime, so on a small machine the two share the cores;
//! the report splits CPU time between them so the figures can be read with that in mind.
//!
//! Environment overrides (all optional):
//! - `TRIAS_BENCH_SECONDS` (10): measured seconds per scenario;
//! - `TRIAS_BENCH_WARMUP` (2): warm-up seconds before each measurement;
//! - `TRIAS_BENCH_CONCURRENCY` (64): requests in flight;
//! - `TRIAS_BENCH_CHANNELS` (4): HTTP/2 connections the gRPC clients share;
//! - `TRIAS_BENCH_SCENARIOS` (all): which of `grpc`, `http`, `refresh`, the open loops
//!   `grpc-70` and `http-70` (70% of the closed loop's rate, latency from each request's
//!   scheduled start; each after its closed loop) and the diagnostics `inprocess`, `reads`,
//!   `no-reads`, `outbox` to run, comma-separated;
//! - `TRIAS_BENCH_STAGES` (1): `0` skips the one-at-a-time stage timings;
//! - `TRIAS_BENCH_SERVER_THREADS` / `TRIAS_BENCH_CLIENT_THREADS` (2 / 2): runtime workers;
//! - `TRIAS_BENCH_OUTPUT` (`<workspace>/target/bench-issuance.json`): the JSON report.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary fails loudly and reports on standard output"
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::runtime::Handle;
use tonic::transport::Channel;
use trias_issuer::issuer::{Issuer, TokenInput};
use trias_issuer::keys::AccessClaims;
use trias_policy::GrantType;
use trias_proto::v1 as pb;
use trias_proto::v1::issuer_client::IssuerClient;
use trias_runtime::clock::{Clock as _, unix_seconds};
use trias_runtime::event::EventDraft;
use trias_runtime::outbox::Outbox;
use trias_tests::bench::{self, Call, Measured, ThreadGroups, env_or, round};
use trias_tests::limits::Limits;
use trias_tests::{IssuerHandle, IssuerOptions, pkce_pair, start_issuer};

/// The role and scopes every benchmark subject holds (from the sample policy).
const ROLE: &str = "clerk";
const SCOPES: &[&str] = &["payments:read", "payments:create"];
/// The redirect URI the harness registers for every client.
const REDIRECT_URI: &str = "https://app.example/callback";
/// The target this benchmark checks (over gRPC, on the 2-core reference machine).
const TARGET_TOKENS_PER_SEC: f64 = 5_000.0;
const TARGET_P99_US: u64 = 10_000;
/// The report's groups of threads: the issuer's runtime, the SQLite worker threads (sqlx runs
/// each SQLite connection on its own thread), the load generator; the rest are `other`.
const GROUPS: &ThreadGroups = &[
    ("issuer-rt", "issuer"),
    ("bench-client", "load"),
    ("sqlx-sqlite", "sqlite"),
];
/// Every scenario, in the order they run by default.
const SCENARIOS: &[&str] = &[
    "grpc",
    "grpc-70",
    "http",
    "http-70",
    "refresh",
    "inprocess",
    "reads",
    "no-reads",
    "outbox",
];

/// What to run, from the environment.
#[derive(Debug, Clone)]
struct Settings {
    measure: Duration,
    warmup: Duration,
    concurrency: usize,
    channels: usize,
    scenarios: Vec<String>,
    stages: bool,
    server_threads: usize,
    client_threads: usize,
    output: PathBuf,
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            measure: Duration::from_secs_f64(env_or("TRIAS_BENCH_SECONDS", 10.0)),
            warmup: Duration::from_secs_f64(env_or("TRIAS_BENCH_WARMUP", 2.0)),
            concurrency: env_or("TRIAS_BENCH_CONCURRENCY", 64usize).max(1),
            channels: env_or("TRIAS_BENCH_CHANNELS", 4usize).max(1),
            scenarios: bench::scenarios_from_env("TRIAS_BENCH_SCENARIOS", SCENARIOS),
            stages: env_or("TRIAS_BENCH_STAGES", 1u8) != 0,
            server_threads: env_or("TRIAS_BENCH_SERVER_THREADS", 2usize).max(1),
            client_threads: env_or("TRIAS_BENCH_CLIENT_THREADS", 2usize).max(1),
            output: bench::report_path("bench-issuance.json"),
        }
    }
}

/// The subjects the scenarios use, registered once.
#[derive(Debug, Clone)]
struct Fixture {
    service_id: String,
    service_secret: String,
    /// A confidential authorization_code + refresh_token client, for the refresh scenario.
    app_id: String,
    app_secret: String,
    username: String,
    password: String,
}

impl Fixture {
    fn cc_grpc_request(&self) -> pb::TokenRequest {
        pb::TokenRequest {
            grant_type: pb::GrantType::ClientCredentials as i32,
            client_id: self.service_id.clone(),
            client_secret: self.service_secret.clone(),
            ..Default::default()
        }
    }

    /// The token request form, client_secret_post style (RFC 6749 §2.3.1).
    fn cc_form(&self) -> Vec<(&'static str, String)> {
        vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", self.service_id.clone()),
            ("client_secret", self.service_secret.clone()),
        ]
    }
}

/// One closed-loop client: sends a request, waits for the answer, sends the next. (In the
/// open loop, each scheduled request runs on a clone.)
#[derive(Clone)]
enum Worker {
    Grpc {
        client: IssuerClient<Channel>,
        request: pb::TokenRequest,
    },
    Http {
        client: reqwest::Client,
        url: String,
        form: Vec<(&'static str, String)>,
    },
    Refresh {
        client: IssuerClient<Channel>,
        fixture: Fixture,
        refresh_token: String,
    },
    InProcess {
        issuer: Issuer,
        fixture: Fixture,
    },
    Reads {
        issuer: Issuer,
        client_id: String,
    },
    NoReads {
        issuer: Issuer,
        claims: Box<AccessClaims>,
    },
    Outbox {
        outbox: Outbox,
        client_id: String,
    },
}

impl Call for Worker {
    async fn call(&mut self) -> Result<(), String> {
        match self {
            Worker::Grpc { client, request } => {
                let response = client
                    .token(request.clone())
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                check_token(&response.access_token)
            }
            Worker::Http { client, url, form } => {
                let response = client
                    .post(url.as_str())
                    .form(form)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status();
                let bytes = response.bytes().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
                }
                let body: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
                check_token(body["access_token"].as_str().unwrap_or(""))
            }
            Worker::Refresh {
                client,
                fixture,
                refresh_token,
            } => {
                let request = pb::TokenRequest {
                    grant_type: pb::GrantType::RefreshToken as i32,
                    client_id: fixture.app_id.clone(),
                    client_secret: fixture.app_secret.clone(),
                    refresh_token: refresh_token.clone(),
                    ..Default::default()
                };
                match client.token(request).await {
                    Ok(response) => {
                        let response = response.into_inner();
                        *refresh_token = response.refresh_token;
                        check_token(&response.access_token)
                    }
                    Err(status) => {
                        // The chain is broken; start a new one so the loop goes on, and count
                        // the failure.
                        if let Ok(fresh) = start_refresh_chain(client, fixture).await {
                            *refresh_token = fresh;
                        }
                        Err(format!("{:?}: {}", status.code(), status.message()))
                    }
                }
            }
            Worker::InProcess { issuer, fixture } => {
                let issued = issuer
                    .token(TokenInput {
                        grant_type: "client_credentials".into(),
                        client_id: fixture.service_id.clone(),
                        client_secret: Some(fixture.service_secret.clone()),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                check_token(&issued.access_token)
            }
            Worker::Reads { issuer, client_id } => {
                let store = issuer.store();
                store
                    .client(client_id)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("the client is gone")?;
                store
                    .roles_of(client_id)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Worker::NoReads { issuer, claims } => {
                issuer
                    .outbox()
                    .record(issued_event(&claims.client_id))
                    .await
                    .map_err(|e| e.to_string())?;
                let (token, _) = issuer.keys().sign(claims).map_err(|e| e.to_string())?;
                check_token(&token)
            }
            Worker::Outbox { outbox, client_id } => outbox
                .record(issued_event(client_id))
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }
}

/// An event shaped like the one `Issuer::issue` records.
fn issued_event(client_id: &str) -> EventDraft {
    EventDraft::new(pb::EventKind::TokenIssued)
        .subject(client_id)
        .client_id(client_id)
        .token_id("0123456789abcdef0123456789abcdef")
        .audience("payments")
        .decision(pb::Decision::Allow)
        .attribute("grant_type", "client_credentials")
        .attribute("scope", SCOPES.join(" "))
        .attribute("exp", "2000000000")
        .attribute("kid", "bench")
        .attribute("refresh", "none")
}

fn check_token(token: &str) -> Result<(), String> {
    if token.split('.').count() == 3 {
        Ok(())
    } else {
        Err("the response carries no JWT".into())
    }
}

/// Logs the user in (argon2, once per chain) and exchanges the code; returns the refresh token.
async fn start_refresh_chain(
    client: &mut IssuerClient<Channel>,
    fixture: &Fixture,
) -> Result<String, String> {
    let (verifier, challenge) = pkce_pair();
    let login = client
        .login(pb::LoginRequest {
            client_id: fixture.app_id.clone(),
            redirect_uri: REDIRECT_URI.into(),
            code_challenge: challenge,
            code_challenge_method: "S256".into(),
            username: fixture.username.clone(),
            password: fixture.password.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| format!("login: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let token = client
        .token(pb::TokenRequest {
            grant_type: pb::GrantType::AuthorizationCode as i32,
            client_id: fixture.app_id.clone(),
            client_secret: fixture.app_secret.clone(),
            code: login.code,
            code_verifier: verifier,
            redirect_uri: REDIRECT_URI.into(),
            ..Default::default()
        })
        .await
        .map_err(|s| format!("code exchange: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    if token.refresh_token.is_empty() {
        return Err("the code exchange returned no refresh token".into());
    }
    Ok(token.refresh_token)
}

/// One scenario's figures.
#[derive(Debug)]
struct Report {
    name: String,
    description: String,
    measured: Measured,
}

impl Report {
    fn tokens_per_sec(&self) -> f64 {
        self.measured.per_sec()
    }

    fn latencies_us(&self) -> &Histogram<u64> {
        &self.measured.result.latencies_us
    }

    fn errors(&self) -> u64 {
        self.measured.result.errors
    }

    fn commits_per_sec(&self) -> f64 {
        self.measured.commits as f64 / self.measured.seconds
    }

    fn json(&self) -> Value {
        let m = &self.measured;
        let per_sec = self.tokens_per_sec();
        json!({
            "name": self.name,
            "description": self.description,
            "completed": m.result.latencies_us.len(),
            "tokens_per_sec": round(per_sec, 1),
            "latency_us": bench::latency_json(&m.result.latencies_us),
            "errors": m.result.errors,
            "first_error": m.result.first_error,
            "outbox_commits": m.commits,
            "outbox_commits_per_sec": round(self.commits_per_sec(), 1),
            "events_per_commit": self.events_per_commit().map(|e| round(e, 2)),
            "cpu_cores": m.cpu.cores_json(),
            "cpu_us_per_op": round(m.cpu.us_per_op(per_sec), 1),
            "machine_cores_busy_outside_benchmark": round(m.cpu.foreign_cores, 2),
            "context_switches_per_op": round(m.cpu.switches_per_op(per_sec), 2),
        })
    }

    /// Operations per outbox commit; every measured operation records one event, except
    /// the reads-only diagnostic, which records none.
    fn events_per_commit(&self) -> Option<f64> {
        let m = &self.measured;
        (m.commits > 0).then(|| m.result.latencies_us.len() as f64 / m.commits as f64)
    }
}

/// Runs `workers` on `runtime` for warm-up plus the measured window.
async fn drive(
    name: &str,
    description: &str,
    runtime: &Handle,
    outbox: &Outbox,
    workers: Vec<Worker>,
    settings: &Settings,
) -> Report {
    let measured = bench::closed_loop(
        runtime,
        workers,
        settings.warmup,
        settings.measure,
        outbox,
        GROUPS,
    )
    .await;
    Report {
        name: name.to_owned(),
        description: description.to_owned(),
        measured,
    }
}

/// Where the scenarios send their requests: the issuer's own listeners, as
/// `trias_issuer::serve` runs them.
#[derive(Debug, Clone, Copy)]
struct Targets {
    grpc: SocketAddr,
    http: SocketAddr,
}

async fn grpc_clients(addr: SocketAddr, settings: &Settings) -> Vec<IssuerClient<Channel>> {
    bench::channels(
        addr,
        "issuer",
        "cli",
        settings.channels,
        settings.concurrency,
    )
    .await
    .into_iter()
    .map(IssuerClient::new)
    .collect()
}

#[allow(clippy::too_many_arguments, reason = "a scenario needs all of them")]
async fn run_scenario(
    name: &str,
    rate: Option<f64>,
    handle: &IssuerHandle,
    targets: Targets,
    fixture: &Fixture,
    server: &Handle,
    client: &Handle,
    settings: &Settings,
) -> Report {
    let c = settings.concurrency;
    let outbox = handle.issuer.outbox();
    if let (Some(rate), Some(base)) = (rate, name.strip_suffix("-70")) {
        let workers = match base {
            "grpc" => grpc_clients(targets.grpc, settings)
                .await
                .into_iter()
                .map(|client| Worker::Grpc {
                    client,
                    request: fixture.cc_grpc_request(),
                })
                .collect(),
            _ => {
                let http = reqwest::Client::builder()
                    .tcp_nodelay(true)
                    .pool_max_idle_per_host(c)
                    .build()
                    .unwrap();
                vec![Worker::Http {
                    client: http,
                    url: format!("http://{}/oauth2/token", targets.http),
                    form: fixture.cc_form(),
                }]
            }
        };
        let measured = bench::open_loop(
            client,
            workers,
            rate,
            settings.warmup,
            settings.measure,
            outbox,
            GROUPS,
        )
        .await;
        return Report {
            name: name.to_owned(),
            description: format!("open loop at {rate:.0}/s, 70% of the {base} maximum"),
            measured,
        };
    }
    match name {
        "grpc" => {
            let workers = grpc_clients(targets.grpc, settings)
                .await
                .into_iter()
                .map(|client| Worker::Grpc {
                    client,
                    request: fixture.cc_grpc_request(),
                })
                .collect();
            let description = format!(
                "client_credentials over gRPC, {c} in flight on {} HTTP/2 connections",
                settings.channels
            );
            drive(name, &description, client, outbox, workers, settings).await
        }
        "http" => {
            // HTTP/1.1 (the issuer's HTTP endpoints speak only HTTP/1.1): one keep-alive
            // connection per request in flight.
            let http = reqwest::Client::builder()
                .tcp_nodelay(true)
                .pool_max_idle_per_host(c)
                .build()
                .unwrap();
            let url = format!("http://{}/oauth2/token", targets.http);
            let workers = (0..c)
                .map(|_| Worker::Http {
                    client: http.clone(),
                    url: url.clone(),
                    form: fixture.cc_form(),
                })
                .collect();
            let description = format!(
                "client_credentials, POST /oauth2/token (HTTP/1.1 keep-alive), {c} in flight"
            );
            drive(name, &description, client, outbox, workers, settings).await
        }
        "refresh" => {
            let mut workers = Vec::new();
            for mut grpc in grpc_clients(targets.grpc, settings).await {
                let refresh_token = start_refresh_chain(&mut grpc, fixture).await.unwrap();
                workers.push(Worker::Refresh {
                    client: grpc,
                    fixture: fixture.clone(),
                    refresh_token,
                });
            }
            let description = format!(
                "refresh_token rotation over gRPC, {c} families rotated concurrently on {} HTTP/2 connections",
                settings.channels
            );
            drive(name, &description, client, outbox, workers, settings).await
        }
        "inprocess" => {
            let workers = (0..c)
                .map(|_| Worker::InProcess {
                    issuer: handle.issuer.clone(),
                    fixture: fixture.clone(),
                })
                .collect();
            let description = format!(
                "diagnostic: Issuer::token(client_credentials) called directly on the issuer's runtime, {c} in flight, no transport"
            );
            drive(name, &description, server, outbox, workers, settings).await
        }
        "reads" => {
            let workers = (0..c)
                .map(|_| Worker::Reads {
                    issuer: handle.issuer.clone(),
                    client_id: fixture.service_id.clone(),
                })
                .collect();
            let description = format!(
                "diagnostic: the two reads of every client_credentials request (store.client, store.roles_of) alone, {c} in flight"
            );
            drive(name, &description, server, outbox, workers, settings).await
        }
        "no-reads" => {
            let claims = Box::new(sample_claims(handle, fixture));
            let workers = (0..c)
                .map(|_| Worker::NoReads {
                    issuer: handle.issuer.clone(),
                    claims: claims.clone(),
                })
                .collect();
            let description = format!(
                "diagnostic: what issuance costs without its two reads: Outbox::record then Keyring::sign, {c} in flight"
            );
            drive(name, &description, server, outbox, workers, settings).await
        }
        "outbox" => {
            let workers = (0..c)
                .map(|_| Worker::Outbox {
                    outbox: outbox.clone(),
                    client_id: fixture.service_id.clone(),
                })
                .collect();
            let description = format!(
                "diagnostic: Outbox::record of a token_issued event alone, {c} in flight (the group-commit ceiling)"
            );
            drive(name, &description, server, outbox, workers, settings).await
        }
        other => unreachable!("scenario {other} was validated"),
    }
}

/// One step of issuance timed on its own, one call at a time.
#[derive(Debug)]
struct Stage {
    name: &'static str,
    /// Nanoseconds per call.
    nanos: Histogram<u64>,
}

impl Stage {
    fn us(&self, quantile: f64) -> f64 {
        self.nanos.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn mean_us(&self) -> f64 {
        self.nanos.mean() / 1000.0
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "iterations": self.nanos.len(),
            "mean_us": round(self.mean_us(), 2),
            "p50_us": round(self.us(0.5), 2),
            "p99_us": round(self.us(0.99), 2),
        })
    }
}

/// Times `op` `n` times; operations far below a microsecond are timed in batches of `batch`.
async fn time_stage<F, Fut>(name: &'static str, n: usize, batch: u32, mut op: F) -> Stage
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut nanos = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for _ in 0..n {
        let started = Instant::now();
        for _ in 0..batch {
            op().await;
        }
        let per_call = started.elapsed() / batch;
        nanos.saturating_record(
            u64::try_from(per_call.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1),
        );
    }
    Stage { name, nanos }
}

/// The stages of a client_credentials issuance, each timed alone on an idle issuer.
/// Claims like those of a client_credentials token for the benchmark's service client.
fn sample_claims(handle: &IssuerHandle, fixture: &Fixture) -> AccessClaims {
    let now = unix_seconds(handle.clock.now());
    AccessClaims {
        iss: handle.issuer.settings().issuer.clone(),
        sub: fixture.service_id.clone(),
        aud: "payments".into(),
        client_id: fixture.service_id.clone(),
        scope: SCOPES.join(" "),
        iat: now,
        exp: now + 300,
        jti: "0123456789abcdef0123456789abcdef".into(),
        acr: None,
        auth_time: None,
        sid: None,
    }
}

async fn stages(handle: &IssuerHandle, fixture: &Fixture) -> Vec<Stage> {
    let issuer = &handle.issuer;
    let store = issuer.store();
    let claims = sample_claims(handle, fixture);
    let (token, kid) = issuer.keys().sign(&claims).unwrap();
    let signing_input = token.rsplit_once('.').unwrap().0.as_bytes().to_vec();
    let pkcs8 = store
        .keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.kid == kid)
        .unwrap()
        .private_pkcs8;
    let parsed = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).unwrap();

    let mut out = Vec::new();
    let id = fixture.service_id.as_str();
    out.push(
        time_stage("store.client (SQLite, sqlx Any pool)", 2000, 1, || async {
            store.client(id).await.unwrap().unwrap();
        })
        .await,
    );
    out.push(
        time_stage(
            "store.roles_of (SQLite, sqlx Any pool)",
            2000,
            1,
            || async {
                store.roles_of(id).await.unwrap();
            },
        )
        .await,
    );
    out.push(
        time_stage(
            "keys.sign: jsonwebtoken EdDSA (re-parses PKCS#8 per call)",
            2000,
            1,
            || async {
                issuer.keys().sign(&claims).unwrap();
            },
        )
        .await,
    );
    out.push(
        time_stage(
            "Ed25519KeyPair::from_pkcs8_maybe_unchecked (the per-call parse)",
            2000,
            1,
            || async {
                ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).unwrap();
            },
        )
        .await,
    );
    out.push(
        time_stage(
            "ring Ed25519 sign with the key parsed once",
            2000,
            1,
            || async {
                std::hint::black_box(parsed.sign(&signing_input));
            },
        )
        .await,
    );
    out.push(
        time_stage(
            "client secret check: SHA-256 (no argon2 on this path)",
            2000,
            100,
            || async {
                std::hint::black_box(trias_issuer::secrets::hash_secret(&fixture.service_secret));
            },
        )
        .await,
    );
    out.push(
        time_stage(
            "outbox.record alone, one at a time (one fsync'd commit each)",
            200,
            1,
            || async {
                issuer.outbox().record(issued_event(id)).await.unwrap();
            },
        )
        .await,
    );
    out.push(
        time_stage(
            "Issuer::token(client_credentials) in-process, one at a time",
            200,
            1,
            || async {
                issuer
                    .token(TokenInput {
                        grant_type: "client_credentials".into(),
                        client_id: fixture.service_id.clone(),
                        client_secret: Some(fixture.service_secret.clone()),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            },
        )
        .await,
    );
    out
}

fn main() {
    let settings = Settings::from_env();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The issuer runs on its own runtime, as it would in its own process; the load generator
    // runs on another. Both share the machine's cores.
    let server = bench::runtime("issuer-rt", settings.server_threads);
    let client = bench::runtime("bench-client", settings.client_threads);

    let (handle, fixture) = server.block_on(async {
        let handle = start_issuer(IssuerOptions::default())
            .await
            .expect("the SQLite issuer always starts");
        let (service_id, service_secret) = handle.service_client(&[ROLE], SCOPES).await;
        let (app_id, app_secret) = handle
            .client(
                &[GrantType::AuthorizationCode, GrantType::RefreshToken],
                SCOPES,
                false,
            )
            .await;
        let (username, password) = ("bench-clerk".to_owned(), "correct horse battery".to_owned());
        handle.user(&username, &password, &[ROLE], false).await;
        let fixture = Fixture {
            service_id,
            service_secret,
            app_id,
            app_secret: app_secret.expect("a confidential client has a secret"),
            username,
            password,
        };
        (handle, fixture)
    });

    println!("Trias issuance benchmark");
    println!(
        "issuer: SQLite, durable outbox (group commit, fsync per commit), strict audit; \
         load: closed loop, {} in flight, {:.0} s warm-up + {:.0} s measured per scenario",
        settings.concurrency,
        settings.warmup.as_secs_f64(),
        settings.measure.as_secs_f64()
    );
    println!(
        "machine: {cpus} CPUs, shared by the issuer ({} runtime threads + SQLite threads) and the \
         load generator ({} threads) in this one process",
        settings.server_threads, settings.client_threads
    );

    let targets = Targets {
        grpc: handle.grpc_addr,
        http: handle.http_addr,
    };
    let mut reports = Vec::new();
    for name in &settings.scenarios {
        // An open-loop scenario sends at 70% of what its closed loop reached.
        let rate = name.strip_suffix("-70").map(|base| {
            0.7 * reports
                .iter()
                .find(|r: &&Report| r.name == base)
                .map(Report::tokens_per_sec)
                .unwrap_or_else(|| {
                    panic!("{name} runs after {base}: list both in TRIAS_BENCH_SCENARIOS")
                })
        });
        let report = client.block_on(run_scenario(
            name,
            rate,
            &handle,
            targets,
            &fixture,
            server.handle(),
            client.handle(),
            &settings,
        ));
        let [p50, p99, p999] = bench::quantiles_ms(report.latencies_us());
        println!(
            "  {:<13} {:>9.0} tokens/s  p50 {:>6} ms  p99 {:>6} ms  p99.9 {:>6} ms  errors {}  commits/s {:.0}",
            report.name,
            report.tokens_per_sec(),
            p50,
            p99,
            p999,
            report.errors(),
            report.commits_per_sec(),
        );
        reports.push(report);
    }

    let stage_results = if settings.stages {
        server.block_on(stages(&handle, &fixture))
    } else {
        Vec::new()
    };

    println!();
    println!(
        "{:<13} {:>9} {:>7} {:>7} {:>8} {:>6} {:>9} {:>9} {:>8} {:>8}   CPU cores: issuer / sqlite / load / outside",
        "scenario",
        "tokens/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "commits/s",
        "ev/commit",
        "CPU µs/op",
        "csw/op",
    );
    for r in &reports {
        let [p50, p99, p999] = bench::quantiles_ms(r.latencies_us());
        println!(
            "{:<13} {:>9.0} {:>7} {:>7} {:>8} {:>6} {:>9.0} {:>9} {:>8.0} {:>8.1}   {:.2} / {:.2} / {:.2} / {:.2}",
            r.name,
            r.tokens_per_sec(),
            p50,
            p99,
            p999,
            r.errors(),
            r.commits_per_sec(),
            r.events_per_commit()
                .map_or_else(|| "-".to_owned(), |e| format!("{e:.1}")),
            r.measured.cpu.us_per_op(r.tokens_per_sec()),
            r.measured.cpu.switches_per_op(r.tokens_per_sec()),
            r.measured.cpu.cores("issuer"),
            r.measured.cpu.cores("sqlite"),
            r.measured.cpu.cores("load"),
            r.measured.cpu.foreign_cores,
        );
    }
    println!(
        "  (tokens/s counts operations for the diagnostics; CPU µs/op and csw/op are this \
         process's CPU time and context switches per operation, load generator included)"
    );
    for r in &reports {
        println!("  {}: {}", r.name, r.description);
        if let Some(error) = &r.measured.result.first_error {
            println!("  {}: first error: {error}", r.name);
        }
    }
    let noisy: Vec<&str> = reports
        .iter()
        .filter(|r| r.measured.cpu.foreign_cores > 0.25)
        .map(|r| r.name.as_str())
        .collect();
    if !noisy.is_empty() {
        println!(
            "warning: other programs kept the machine busy during {}; those figures understate \
             the issuer (see \"outside\")",
            noisy.join(", ")
        );
    }
    if !stage_results.is_empty() {
        println!();
        println!("stages, one call at a time on an idle issuer:");
        println!("{:>10} {:>10} {:>10}  stage", "mean µs", "p50 µs", "p99 µs");
        for stage in &stage_results {
            println!(
                "{:>10.2} {:>10.2} {:>10.2}  {}",
                stage.mean_us(),
                stage.us(0.5),
                stage.us(0.99),
                stage.name
            );
        }
    }

    let grpc = reports.iter().find(|r| r.name == "grpc");
    let target_met = grpc.map(|r| {
        r.errors() == 0
            && r.tokens_per_sec() >= TARGET_TOKENS_PER_SEC
            && r.latencies_us().value_at_quantile(0.99) < TARGET_P99_US
    });
    println!();
    match target_met {
        Some(met) => println!(
            "target (gRPC ≥ {TARGET_TOKENS_PER_SEC:.0} tokens/s, p99 < {} ms, no errors): {}",
            TARGET_P99_US / 1000,
            if met { "met" } else { "NOT met" }
        ),
        None => println!("target: not checked (the grpc scenario did not run)"),
    }
    println!(
        "note: the load generator shares the {cpus} CPUs with the issuer; a separate client machine \
         would leave the issuer the CPU shown under \"load\""
    );

    let limits = Limits::measure(&std::env::temp_dir(), Duration::from_secs(2));
    println!("{}", limits.line());
    let report = json!({
        "benchmark": "issuance",
        "limits": limits.json(),
        "machine": { "cpus": cpus, "note": "the load generator runs in the issuer's process and shares its CPUs" },
        "issuer": { "backend": "sqlite", "outbox": "durable, group commit, fsync per commit", "strict_audit": true },
        "settings": {
            "measure_seconds": settings.measure.as_secs_f64(),
            "warmup_seconds": settings.warmup.as_secs_f64(),
            "concurrency": settings.concurrency,
            "grpc_channels": settings.channels,
            "server_threads": settings.server_threads,
            "client_threads": settings.client_threads,
        },
        "target": {
            "tokens_per_sec": TARGET_TOKENS_PER_SEC,
            "p99_us": TARGET_P99_US,
            "met": target_met,
        },
        "scenarios": reports.iter().map(Report::json).collect::<Vec<_>>(),
        "stages": stage_results.iter().map(Stage::json).collect::<Vec<_>>(),
    });
    bench::write_report(&settings.output, &report);
    println!("report written to {}", settings.output.display());

    server.block_on(handle.stop());
    let errors: u64 = reports.iter().map(Report::errors).sum();
    if errors > 0 {
        eprintln!("{errors} requests failed");
        std::process::exit(1);
    }
}
