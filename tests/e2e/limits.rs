//! Resource limits end to end: each service flooded — past its rate limits, with oversized
//! requests, with refused calls — keeps answering a legitimate request within seconds, and
//! the flood gets the documented errors; a brute force on one user's password is limited,
//! recorded and raised as an alert at the auditor.
//!
//! Floods come from 127.0.0.2 and 127.0.0.3 (Linux routes all of 127.0.0.0/8 to the loopback
//! interface), so the per-source limits can tell the flooder from everyone else.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Url;
use tokio::task::JoinSet;
use tonic::Code;
use tonic_types::StatusExt;
use trias_auditor::detect::DetectConfig;
use trias_issuer::config::LimitsConfig;
use trias_proto::v1::issuer_client::IssuerClient;
use trias_proto::v1::{
    AppendRequest, AuditEvent, CheckBatchRequest, CheckRequest, EventKind, GetCheckpointRequest,
    QueryRequest, TokenRequest,
};
use trias_tests::auditor::{AuditorOptions, start_auditor};
use trias_tests::validator::{ValidatorOptions, start_validator};
use trias_tests::{
    Backend, IssuerHandle, IssuerOptions, REDIRECT_URIS, assert_no_bearer_values, channel_from,
    client_credentials, oauth_error, pkce_pair, refused, scrape, start_issuer,
};

both_backends!(
    a_client_over_its_token_rate_is_slowed_down_while_others_are_served,
    failures_from_one_address_are_limited_while_other_addresses_are_served,
    an_issuer_flooded_with_oversized_and_unauthenticated_requests_stays_responsive,
    a_brute_force_on_one_user_is_limited_recorded_and_alerted,
    the_login_page_limits_failures_per_source_across_usernames,
    a_validator_flooded_with_checks_stays_responsive,
    an_auditor_flooded_with_refused_calls_and_oversized_appends_stays_responsive,
);

/// How long a legitimate request may take while a flood is on: generous, for a loaded
/// two-core machine running other tests beside.
const RESPONSIVE: Duration = Duration::from_secs(10);
const PASSWORD: &str = "correct horse battery";
const WRONG: &str = "wrong password 4f2a";

fn from(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Loops of concurrent calls, until stopped; keeps every outcome.
struct Flood<T> {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    tasks: JoinSet<Vec<T>>,
}

impl<T: Send + 'static> Flood<T> {
    /// `workers` loops, each making `call()` again as soon as the last one is answered.
    fn start<F, Fut>(workers: usize, call: F) -> Flood<T>
    where
        F: Fn() -> Fut + Clone + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        for _ in 0..workers {
            let (call, stop, done) = (call.clone(), Arc::clone(&stop), Arc::clone(&done));
            tasks.spawn(async move {
                let mut outcomes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    outcomes.push(call().await);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                outcomes
            });
        }
        Flood { stop, done, tasks }
    }

    /// Waits until the flood has been answered `n` times.
    async fn reached(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.done.load(Ordering::Relaxed) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the flood stalled at {} calls",
                self.done.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the flood; every outcome.
    async fn stop(mut self) -> Vec<T> {
        self.stop.store(true, Ordering::Relaxed);
        let mut outcomes = Vec::new();
        while let Some(worker) = self.tasks.join_next().await {
            outcomes.extend(worker.unwrap());
        }
        outcomes
    }
}

/// `work` finishes within [`RESPONSIVE`].
async fn promptly<T>(what: &str, work: impl Future<Output = T>) -> T {
    tokio::time::timeout(RESPONSIVE, work)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {RESPONSIVE:?} during the flood"))
}

/// Asserts a rate-limited gRPC refusal: RESOURCE_EXHAUSTED, `slow_down`, and a RetryInfo
/// within `(0, max]`; returns the delay.
#[track_caller]
fn slowed_down(status: &tonic::Status, max: Duration) -> Duration {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        oauth_error(status).as_deref(),
        Some("slow_down"),
        "{status:?}"
    );
    let delay = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a google.rpc.RetryInfo");
    assert!(delay >= Duration::from_secs(1) && delay <= max, "{delay:?}");
    delay
}

fn attribute<'a>(event: &'a AuditEvent, key: &str) -> &'a str {
    event.attributes.get(key).map_or("", String::as_str)
}

/// A client_credentials request over HTTP with Basic authentication.
fn token_post(
    http: &reqwest::Client,
    issuer: &IssuerHandle,
    client: &str,
    secret: &str,
) -> reqwest::RequestBuilder {
    http.post(format!("{}/oauth2/token", issuer.http_base()))
        .basic_auth(client, Some(secret))
        .form(&[("grant_type", "client_credentials")])
}

/// An issuer with `limits`; `None` only for a PostgreSQL run with no server configured.
async fn limited_issuer(backend: Backend, limits: LimitsConfig) -> Option<IssuerHandle> {
    start_issuer(IssuerOptions {
        limits,
        ..IssuerOptions::on(backend)
    })
    .await
}

fn http_from(address: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(address)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn a_client_over_its_token_rate_is_slowed_down_while_others_are_served(backend: Backend) {
    let Some(issuer) = limited_issuer(
        backend,
        LimitsConfig {
            token_per_client: "20/1m".parse().unwrap(),
            ..LimitsConfig::default()
        },
    )
    .await
    else {
        return;
    };
    let (flooder, flooder_secret) = issuer
        .service_client(&["clerk"], &["payments:create"])
        .await;
    let (other, other_secret) = issuer
        .service_client(&["clerk"], &["payments:create"])
        .await;
    let grpc = issuer.grpc().await;
    let request = client_credentials(&flooder, &flooder_secret, "");
    let flood = Flood::start(16, move || {
        let (mut grpc, request) = (grpc.clone(), request.clone());
        async move { grpc.token(request).await.map(drop) }
    });
    flood.reached(300).await;
    // Another client is served during the flood, promptly.
    let mut own = issuer.grpc().await;
    let served = promptly(
        "another client's token",
        own.token(client_credentials(&other, &other_secret, "")),
    )
    .await
    .unwrap();
    assert!(!served.into_inner().access_token.is_empty());
    let outcomes = flood.stop().await;

    // The flooder got its burst (the clock stands still) and then only refusals.
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 20);
    for status in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        // 20 a minute: one every 3 s.
        assert_eq!(
            slowed_down(status, Duration::from_secs(60)),
            Duration::from_secs(3)
        );
    }
    // Over HTTP too: 429 with Retry-After.
    let reply = issuer
        .post_form(
            "/oauth2/token",
            &[("grant_type", "client_credentials")],
            Some((&flooder, &flooder_secret)),
        )
        .await;
    assert_eq!((reply.status, reply.error()), (429, "slow_down"));
    assert_eq!(reply.header("retry-after"), "3");
    assert_eq!(reply.header("cache-control"), "no-store");

    // Every refusal is on record, naming the limit; the other client was never limited.
    let limited: Vec<AuditEvent> = issuer
        .events_of(EventKind::TokenRefused)
        .await
        .into_iter()
        .filter(|e| e.reason == "slow_down")
        .collect();
    assert_eq!(limited.len(), outcomes.len() - 20 + 1);
    for event in &limited {
        assert_eq!(event.client_id, flooder);
        assert_eq!(attribute(event, "limit"), "token_per_client");
        assert_eq!(attribute(event, "retry_after"), "3");
        assert_eq!(attribute(event, "source"), "127.0.0.1");
    }
    let metrics = scrape(issuer.metrics_addr).await;
    assert_eq!(
        metrics.value("trias_rate_limited_total", &[("limit", "token_per_client")]),
        limited.len() as f64
    );
    // A minute later the whole burst is back.
    issuer.advance(60);
    for _ in 0..20 {
        own.token(client_credentials(&flooder, &flooder_secret, ""))
            .await
            .unwrap();
    }
    slowed_down(
        &own.token(client_credentials(&flooder, &flooder_secret, ""))
            .await
            .unwrap_err(),
        Duration::from_secs(60),
    );
    issuer.stop().await;
}

async fn failures_from_one_address_are_limited_while_other_addresses_are_served(backend: Backend) {
    let Some(issuer) = limited_issuer(
        backend,
        LimitsConfig {
            failures_per_source: "5/1m".parse().unwrap(),
            ..LimitsConfig::default()
        },
    )
    .await
    else {
        return;
    };
    let (client, secret) = issuer
        .service_client(&["clerk"], &["payments:create"])
        .await;
    let flooder = http_from(from(2));
    for _ in 0..5 {
        let reply = token_post(&flooder, &issuer, &client, "not the secret")
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 401);
    }
    // The address has no failures left: it is refused before any client is looked up, the
    // right secret included…
    let reply = token_post(&flooder, &issuer, &client, &secret)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 429);
    assert_eq!(reply.headers()["retry-after"], "12");
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(body["error"], "slow_down");
    // …at the revocation endpoint and over gRPC as well: the address is the key.
    let reply = flooder
        .post(format!("{}/oauth2/revoke", issuer.http_base()))
        .basic_auth(&client, Some(&secret))
        .form(&[("token", "some-refresh-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 429);
    let mut grpc =
        IssuerClient::new(channel_from(issuer.grpc_addr, "issuer", "cli", from(2)).await);
    slowed_down(
        &grpc
            .token(client_credentials(&client, &secret, ""))
            .await
            .unwrap_err(),
        Duration::from_secs(12),
    );
    // Every other address is served.
    let reply = issuer
        .post_form(
            "/oauth2/token",
            &[("grant_type", "client_credentials")],
            Some((&client, &secret)),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);

    let from_flooder: Vec<AuditEvent> = issuer
        .events()
        .await
        .into_iter()
        .filter(|e| attribute(e, "source") == "127.0.0.2")
        .collect();
    let reasons: Vec<&str> = from_flooder.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "invalid_client",
            "invalid_client",
            "invalid_client",
            "invalid_client",
            "invalid_client",
            "slow_down",
            "slow_down",
            "slow_down"
        ]
    );
    for event in from_flooder.iter().filter(|e| e.reason == "slow_down") {
        assert_eq!(attribute(event, "limit"), "failures_per_source");
    }
    assert_no_bearer_values(&issuer.events().await, &[&secret]);
    // A minute later the address may try again.
    issuer.advance(60);
    let reply = token_post(&flooder, &issuer, &client, &secret)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    issuer.stop().await;
}

async fn an_issuer_flooded_with_oversized_and_unauthenticated_requests_stays_responsive(
    backend: Backend,
) {
    // The default limits.
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let (client, secret) = issuer
        .service_client(&["clerk"], &["payments:create"])
        .await;
    // Bodies past the 16 KiB cap, from 127.0.0.2, each on a new connection.
    let url = format!("{}/oauth2/token", issuer.http_base());
    let oversized = reqwest::Client::builder()
        .local_address(from(2))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let bodies = Flood::start(4, move || {
        let request = oversized
            .post(url.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=client_credentials&padding={}",
                "x".repeat(20 * 1024)
            ));
        async move { request.send().await.map(|r| r.status().as_u16()) }
    });
    // gRPC messages past the 64 KiB cap.
    let grpc = issuer.grpc().await;
    let big = TokenRequest {
        scope: "x".repeat(100 * 1024),
        ..client_credentials(&client, &secret, "")
    };
    let messages = Flood::start(4, move || {
        let (mut grpc, big) = (grpc.clone(), big.clone());
        async move { grpc.token(big).await.map(drop) }
    });
    // Client ids nobody registered, from 127.0.0.3, each a new key for nothing.
    let strangers =
        IssuerClient::new(channel_from(issuer.grpc_addr, "issuer", "cli", from(3)).await);
    let counter = Arc::new(AtomicUsize::new(0));
    let unknown = Flood::start(8, move || {
        let mut grpc = strangers.clone();
        let n = counter.fetch_add(1, Ordering::Relaxed);
        async move {
            grpc.token(client_credentials(&format!("stranger-{n}"), "guess", ""))
                .await
                .map(drop)
        }
    });
    bodies.reached(50).await;
    messages.reached(50).await;
    unknown.reached(300).await;

    // Meanwhile a legitimate client is served, over gRPC and over HTTP.
    let mut own = issuer.grpc().await;
    promptly(
        "a token over gRPC",
        own.token(client_credentials(&client, &secret, "")),
    )
    .await
    .unwrap();
    let reply = promptly(
        "a token over HTTP",
        issuer.post_form(
            "/oauth2/token",
            &[("grant_type", "client_credentials")],
            Some((&client, &secret)),
        ),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);

    for outcome in bodies.stop().await {
        assert_eq!(outcome.unwrap(), 413);
    }
    for outcome in messages.stop().await {
        let status = outcome.unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    }
    let outcomes = unknown.stop().await;
    let unauthenticated = outcomes
        .iter()
        .filter(|o| o.as_ref().is_err_and(|s| s.code() == Code::Unauthenticated))
        .count();
    // The default allows 100 failures per address; attempts already past the check when
    // the hundredth failed (at most one per worker) still count.
    assert!(
        (100..=108).contains(&unauthenticated),
        "{unauthenticated} failures before the limit"
    );
    for status in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        if status.code() != Code::Unauthenticated {
            slowed_down(status, Duration::from_secs(300));
        }
    }
    issuer.stop().await;
}

/// The login page as a browser from `address` sees it: the form for an authorization
/// request of `client_id`, then the POST of `username` and `password`. Returns the status,
/// the headers and the text of the answer.
async fn page_login(
    issuer: &IssuerHandle,
    address: IpAddr,
    client_id: &str,
    username: &str,
    password: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let http = http_from(address);
    let (_, challenge) = pkce_pair();
    let params = [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT_URIS[0]),
        ("scope", "payments:read"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let url = Url::parse_with_params(&format!("{}/oauth2/authorize", issuer.http_base()), params)
        .unwrap();
    let form = http.get(url).send().await.unwrap();
    assert_eq!(form.status(), 200);
    let cookie = form.headers()["set-cookie"].to_str().unwrap().to_owned();
    let csrf = cookie
        .strip_prefix("trias_csrf=")
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    let mut fields: Vec<(&str, &str)> = params.to_vec();
    fields.extend([
        ("csrf", csrf.as_str()),
        ("username", username),
        ("password", password),
    ]);
    let answer = http
        .post(format!("{}/oauth2/authorize", issuer.http_base()))
        .header("cookie", format!("trias_csrf={csrf}"))
        .form(&fields)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    (status, headers, answer.text().await.unwrap())
}

async fn a_brute_force_on_one_user_is_limited_recorded_and_alerted(backend: Backend) {
    let Some(auditor) = start_auditor(AuditorOptions::on(backend)).await else {
        return;
    };
    // The default limits and detectors: 10 failed logins per user in 5 minutes.
    assert_eq!(LimitsConfig::default().failed_logins_per_user.count, 10);
    assert_eq!(DetectConfig::default().login_failure_count, 10);
    let issuer = start_issuer(IssuerOptions {
        auditor_url: Some(auditor.url()),
        ..IssuerOptions::on(backend)
    })
    .await
    .unwrap();
    let mut alerts = auditor.watch_alerts(0).await;
    issuer.user("alice", PASSWORD, &["clerk"], false).await;
    issuer.user("bob", PASSWORD, &["clerk"], false).await;
    let frontend = issuer.frontend(&["payments:read"], false).await;
    let mut grpc = issuer.grpc().await;

    for _ in 0..10 {
        let (login, _) = frontend.login("alice", WRONG, "payments:read");
        refused(
            grpc.login(login).await,
            Code::Unauthenticated,
            "access_denied",
        );
    }
    // Alice's failures are spent: the right password is refused too, before it is checked.
    let (login, _) = frontend.login("alice", PASSWORD, "payments:read");
    let status = grpc.login(login).await.unwrap_err();
    // 10 in 5 minutes: one more every 30 s.
    assert_eq!(
        slowed_down(&status, Duration::from_secs(300)),
        Duration::from_secs(30)
    );
    // The login page says so, with Retry-After.
    let (code, headers, text) =
        page_login(&issuer, from(1), &frontend.client_id, "alice", PASSWORD).await;
    assert_eq!(code, 429, "{text}");
    assert_eq!(headers["retry-after"], "30");
    assert!(text.contains("Too many failed sign-in attempts. Try again in 30 seconds."));
    // Another user signs in as ever.
    issuer
        .sign_in(&frontend, "bob", PASSWORD, "payments:read")
        .await;

    // Each attempt is on record at the auditor, with the username and never a password.
    let alices = |events: &[AuditEvent]| -> Vec<AuditEvent> {
        events
            .iter()
            .filter(|e| attribute(e, "username") == "alice")
            .cloned()
            .collect()
    };
    let logged = auditor
        .wait_for(
            QueryRequest {
                kinds: vec![EventKind::LoginFailed as i32],
                ..QueryRequest::default()
            },
            |events| alices(events).len() >= 12,
        )
        .await;
    let failed = alices(&logged);
    let reasons: Vec<&str> = failed.iter().map(|e| e.reason.as_str()).collect();
    let mut expected = vec!["access_denied"; 10];
    expected.extend(["slow_down", "slow_down"]);
    assert_eq!(reasons, expected);
    for event in failed.iter().filter(|e| e.reason == "slow_down") {
        assert_eq!(attribute(event, "limit"), "failed_logins_per_user");
    }
    assert_no_bearer_values(&logged, &[PASSWORD, WRONG]);

    // The auditor raises a brute-force alert on alice, naming the failures.
    let alert = alerts.next_of("login_brute_force").await;
    let alert = alert.event.unwrap();
    assert_eq!(attribute(&alert, "key"), "username");
    assert_eq!(attribute(&alert, "username"), "alice");
    assert_eq!(attribute(&alert, "count"), "10");
    let evidence: Vec<&str> = attribute(&alert, "event_ids").split(',').collect();
    let first_ten: Vec<&str> = failed[..10].iter().map(|e| e.id.as_str()).collect();
    assert_eq!(evidence, first_ten);

    // Once the window has passed, alice signs in.
    issuer.advance(300);
    issuer
        .sign_in(&frontend, "alice", PASSWORD, "payments:read")
        .await;
    issuer.stop().await;
    auditor.stop().await;
}

async fn the_login_page_limits_failures_per_source_across_usernames(backend: Backend) {
    let Some(issuer) = limited_issuer(
        backend,
        LimitsConfig {
            failures_per_source: "5/1m".parse().unwrap(),
            ..LimitsConfig::default()
        },
    )
    .await
    else {
        return;
    };
    issuer.user("alice", PASSWORD, &["clerk"], false).await;
    let frontend = issuer.frontend(&["payments:read"], false).await;
    // One address tries a password on five usernames…
    for n in 0..5 {
        let username = format!("user{n}");
        let (code, _, text) =
            page_login(&issuer, from(2), &frontend.client_id, &username, WRONG).await;
        assert_eq!(code, 401, "{text}");
    }
    // …and is refused from then on, even alice with her password.
    let (code, headers, _) =
        page_login(&issuer, from(2), &frontend.client_id, "alice", PASSWORD).await;
    assert_eq!(code, 429);
    assert_eq!(headers["retry-after"], "12");
    // Alice, from her own address, signs in.
    let (code, headers, text) =
        page_login(&issuer, from(1), &frontend.client_id, "alice", PASSWORD).await;
    assert_eq!(code, 303, "{text}");
    assert!(headers["location"].to_str().unwrap().contains("code="));
    // A frontend's gRPC Login relays every user's login: its address is not limited.
    let mut relayed =
        IssuerClient::new(channel_from(issuer.grpc_addr, "issuer", "cli", from(2)).await);
    let (login, _) = frontend.login("alice", PASSWORD, "payments:read");
    relayed.login(login).await.unwrap();

    let from_flooder: Vec<AuditEvent> = issuer
        .events_of(EventKind::LoginFailed)
        .await
        .into_iter()
        .filter(|e| attribute(e, "source") == "127.0.0.2")
        .collect();
    let reasons: Vec<&str> = from_flooder.iter().map(|e| e.reason.as_str()).collect();
    let mut expected = vec!["access_denied"; 5];
    expected.push("slow_down");
    assert_eq!(reasons, expected);
    assert_eq!(attribute(&from_flooder[5], "limit"), "failures_per_source");
    assert_eq!(attribute(&from_flooder[5], "username"), "alice");
    issuer.stop().await;
}

async fn a_validator_flooded_with_checks_stays_responsive(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let validator = start_validator(&issuer, ValidatorOptions::on(backend))
        .await
        .unwrap();
    let token = issuer.token_for(&["clerk"], "payments:create", "").await;
    let check = |token: &str, resource: &str| CheckRequest {
        token: token.into(),
        action: "payment.create".into(),
        resource: resource.into(),
        audience: "payments".into(),
        context: Default::default(),
    };
    let grpc = validator.grpc().await;
    // Tokens past the 8 KiB cap: denied before any parsing.
    let huge = check(&"a".repeat(9000), "payment/1");
    let denials = Flood::start(8, {
        let grpc = grpc.clone();
        move || {
            let (mut grpc, huge) = (grpc.clone(), huge.clone());
            async move { grpc.check(huge).await.map(|r| r.into_inner()) }
        }
    });
    // Requests that cannot be decided: a resource past 1 KiB, a batch of 1001 checks.
    let long_resource = check(&token, &"r".repeat(2000));
    let too_many = CheckBatchRequest {
        checks: vec![check(&token, "payment/1"); 1001],
    };
    let invalid = Flood::start(4, {
        let grpc = grpc.clone();
        move || {
            let (mut grpc, long, many) = (grpc.clone(), long_resource.clone(), too_many.clone());
            async move {
                let one = grpc.check(long).await.map(drop);
                let batch = grpc.check_batch(many).await.map(drop);
                (one, batch)
            }
        }
    });
    // A message past the decoding cap (1000 checks of 10 KiB tokens: 10 MB).
    let oversized = CheckBatchRequest {
        checks: vec![check(&"b".repeat(10 * 1024), "payment/1"); 1000],
    };
    let messages = Flood::start(1, {
        let grpc = grpc.clone();
        move || {
            let (mut grpc, oversized) = (grpc.clone(), oversized.clone());
            async move { grpc.check_batch(oversized).await.map(drop) }
        }
    });
    denials.reached(500).await;
    invalid.reached(20).await;
    messages.reached(3).await;

    // Meanwhile a backend's check of a good token is decided, promptly.
    let decision = promptly(
        "a check",
        validator.check(&token, "payment.create", "payment/1", "payments"),
    )
    .await;
    assert!(decision.allowed, "{decision:?}");

    for decision in denials.stop().await {
        let decision = decision.unwrap();
        assert!(!decision.allowed);
        assert_eq!(
            decision.reason(),
            trias_proto::v1::Reason::TokenTooLarge,
            "{decision:?}"
        );
    }
    for (one, batch) in invalid.stop().await {
        for status in [one.unwrap_err(), batch.unwrap_err()] {
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        }
    }
    for outcome in messages.stop().await {
        let status = outcome.unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    }
    validator.stop().await;
    issuer.stop().await;
}

async fn an_auditor_flooded_with_refused_calls_and_oversized_appends_stays_responsive(
    backend: Backend,
) {
    let Some(auditor) = start_auditor(AuditorOptions::on(backend)).await else {
        return;
    };
    // Queries without a token, from a peer that holds a certificate: each refused.
    let anonymous = auditor.grpc_with("cli", None).await;
    let refusals = Flood::start(8, move || {
        let mut grpc = anonymous.clone();
        async move {
            match grpc.query(QueryRequest::default()).await {
                Ok(_) => Ok(()),
                Err(status) => Err(status.code()),
            }
        }
    });
    // Appends past the 16 MiB cap (300 events of 60 KiB), from the issuer's identity.
    let issuer_client = auditor.grpc_as("issuer").await;
    let mut padded = auditor.event("issuer", 1, "alice");
    padded
        .attributes
        .insert("padding".into(), "p".repeat(60 * 1024));
    let oversized = AppendRequest {
        producer: "issuer".into(),
        events: vec![padded; 300],
    };
    let appends = Flood::start(1, {
        let issuer_client = issuer_client.clone();
        move || {
            let (mut grpc, oversized) = (issuer_client.clone(), oversized.clone());
            async move { grpc.append(oversized).await.map(drop) }
        }
    });
    refusals.reached(300).await;
    appends.reached(3).await;

    // Meanwhile the issuer's append is logged and the checkpoint is served, promptly.
    let mut grpc = issuer_client.clone();
    let appended = promptly(
        "an append",
        grpc.append(AppendRequest {
            producer: "issuer".into(),
            events: vec![auditor.event("issuer", 1, "alice")],
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(appended.receipts.len(), 1);
    promptly(
        "the checkpoint",
        grpc.get_checkpoint(GetCheckpointRequest {}),
    )
    .await
    .unwrap();

    let outcomes = refusals.stop().await;
    assert!(outcomes.iter().all(|o| *o == Err(Code::Unauthenticated)));
    for outcome in appends.stop().await {
        let status = outcome.unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    }
    // The refused caller left its quota of alerts (10 a minute) in the log, not one per call.
    let refused_alerts = auditor
        .query(QueryRequest {
            kinds: vec![EventKind::Alert as i32],
            ..QueryRequest::default()
        })
        .await
        .into_iter()
        .filter_map(|entry| entry.event)
        .filter(|e| e.reason == "access_refused" && attribute(e, "rpc") == "Query")
        .count();
    assert_eq!(refused_alerts, 10);
    let metrics = scrape(auditor.metrics_addr).await;
    assert_eq!(
        metrics.value("trias_refusals_unlogged_total", &[]),
        (outcomes.len() - 10) as f64
    );
    auditor.stop().await;
}
