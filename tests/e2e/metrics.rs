//! Prometheus metrics through the real services: tokens issued and refused at the issuer,
//! checks by decision and reason at the validator, both outboxes draining, and the
//! auditor's appends, entries by producer, alerts and log size — each read by scraping the
//! service's `GET /metrics` over HTTP and parsing the text format.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::time::Duration;

use trias_proto::v1::Reason;
use trias_tests::auditor::{AuditorOptions, start_auditor};
use trias_tests::validator::{ValidatorOptions, start_validator};
use trias_tests::{IssuerOptions, Metrics, client_credentials, scrape, start_issuer};

/// Scrapes until `done` holds for the metrics, or fails after ten seconds.
async fn scrape_until(
    addr: std::net::SocketAddr,
    what: &str,
    done: impl Fn(&Metrics) -> bool,
) -> Metrics {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = scrape(addr).await;
        if done(&metrics) {
            return metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within ten seconds; last scrape:\n{}",
            metrics.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_counts_what_it_did_on_its_metrics_port() {
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

    // Before anything happens: build info, and no tokens.
    let before = scrape(issuer.metrics_addr).await;
    let version = env!("CARGO_PKG_VERSION");
    for (addr, service) in [
        (issuer.metrics_addr, "issuer"),
        (validator.metrics_addr, "validator"),
        (auditor.metrics_addr, "auditor"),
    ] {
        let metrics = scrape(addr).await;
        let labels = [("service", service), ("version", version)];
        assert_eq!(metrics.get("trias_build_info", &labels), Some(1.0));
    }
    let grant = [("grant_type", "client_credentials")];
    assert_eq!(before.value("trias_tokens_issued_total", &grant), 0.0);

    // Two tokens for client_credentials, and one request refused with a wrong secret.
    let (id, secret) = issuer
        .service_client(&["clerk"], &["payments:create"])
        .await;
    let mut grpc = issuer.grpc().await;
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let request = client_credentials(&id, &secret, "payments:create");
        tokens.push(grpc.token(request).await.unwrap().into_inner().access_token);
    }
    let wrong = client_credentials(&id, "not the secret", "payments:create");
    assert!(grpc.token(wrong).await.is_err());

    // One check allowed, one denied for a missing scope, one token at the wrong audience.
    let allowed = validator
        .check(&tokens[0], "payment.create", "payment/1", "payments")
        .await;
    assert!(allowed.allowed, "{allowed:?}");
    let denied = validator
        .check(&tokens[0], "payment.approve", "payment/1", "payments")
        .await;
    assert_eq!(denied.reason(), Reason::InsufficientScope);
    let elsewhere = validator
        .check(&tokens[1], "audit.query", "", "auditor")
        .await;
    assert_eq!(elsewhere.reason(), Reason::WrongAudience);

    let issued = scrape(issuer.metrics_addr).await;
    assert_eq!(issued.value("trias_tokens_issued_total", &grant), 2.0);
    assert_eq!(
        issued.value(
            "trias_token_requests_refused_total",
            &[("error", "invalid_client")]
        ),
        1.0
    );
    let checks = scrape(validator.metrics_addr).await;
    let count = |decision, reason| {
        checks.value(
            "trias_checks_total",
            &[("decision", decision), ("reason", reason)],
        )
    };
    assert_eq!(count("allow", "ok"), 1.0);
    assert_eq!(count("deny", "insufficient_scope"), 1.0);
    assert_eq!(count("deny", "wrong_audience"), 1.0);

    // The shipper delivers: both outboxes back to 0, the auditor's appends timed and
    // counted by producer, and the wrong audience raised as an alert.
    for (addr, what) in [
        (issuer.metrics_addr, "the issuer's outbox drained"),
        (validator.metrics_addr, "the validator's outbox drained"),
    ] {
        let drained = scrape_until(addr, what, |m| {
            m.get("trias_outbox_depth", &[]) == Some(0.0)
        })
        .await;
        assert_eq!(
            drained.get("trias_outbox_oldest_unshipped_seconds", &[]),
            Some(0.0)
        );
    }
    let audited = scrape_until(auditor.metrics_addr, "the alert counted", |m| {
        m.value("trias_alerts_total", &[("kind", "wrong_audience")]) >= 1.0
    })
    .await;
    assert_eq!(
        audited.value("trias_alerts_total", &[("kind", "wrong_audience")]),
        1.0
    );
    // The validator's three checks; the issuer's two issuances, one refusal and the
    // client and role set-up before them.
    let appended = |producer| {
        audited.value(
            "trias_audit_events_appended_total",
            &[("producer", producer)],
        )
    };
    assert_eq!(appended("validator"), 3.0);
    assert!(appended("issuer") >= 3.0, "{}", audited.text);
    let appends = audited.value("trias_audit_append_seconds_count", &[]);
    assert!(appends > 0.0, "{}", audited.text);
    assert_eq!(
        audited.get("trias_audit_append_seconds_bucket", &[("le", "+Inf")]),
        Some(appends)
    );
    // Every entry is in the log: the producers' events and the alert.
    let size = audited.value("trias_log_size", &[]);
    assert_eq!(size, appended("validator") + appended("issuer") + 1.0);

    validator.stop().await;
    issuer.stop().await;
    auditor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_port_serves_nothing_but_metrics() {
    let issuer = start_issuer(IssuerOptions::default()).await.unwrap();
    let base = format!("http://{}", issuer.metrics_addr);
    let other = reqwest::get(format!("{base}/oauth2/token")).await.unwrap();
    assert_eq!(other.status().as_u16(), 404);
    let post = reqwest::Client::new()
        .post(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status().as_u16(), 405);
    issuer.stop().await;
}
