//! The audit pipeline end to end: the issuer's and the validator's outboxes shipped to a
//! running auditor, an auditor restart that loses and doubles nothing, and each detector
//! firing on a scripted scenario — across the real issuer and validator where they can
//! produce the events, through `Append` where only a forged or lost event can.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;
use std::time::Duration;

use trias_auditor::detect::DetectConfig;
use trias_proto::v1::{
    AppendRequest, AuditEvent, Decision, EventKind, LogEntry, QueryRequest, Reason,
};
use trias_runtime::clock::{Clock as _, timestamp};
use trias_tests::auditor::{AlertWatch, AuditorHandle, AuditorOptions, start_auditor};
use trias_tests::validator::{ValidatorHandle, ValidatorOptions, start_validator};
use trias_tests::{Backend, IssuerHandle, IssuerOptions, refused, start_issuer};

both_backends!(
    issued_and_checked_tokens_reach_the_auditor,
    an_auditor_restart_loses_nothing_and_doubles_nothing,
    a_check_of_a_token_never_issued_is_an_alert_after_the_grace,
    a_producer_sequence_gap_is_an_alert,
);

/// An auditor and an issuer and validator shipping to it.
async fn pipeline(
    backend: Backend,
    policy: &str,
    detectors: DetectConfig,
) -> Option<(AuditorHandle, IssuerHandle, ValidatorHandle)> {
    let auditor = start_auditor(AuditorOptions {
        detectors,
        ..AuditorOptions::on(backend)
    })
    .await?;
    let issuer = start_issuer(IssuerOptions {
        policy: policy.into(),
        auditor_url: Some(auditor.url()),
        ..IssuerOptions::on(backend)
    })
    .await?;
    let validator = start_validator(
        &issuer,
        ValidatorOptions {
            policy: policy.into(),
            auditor_url: Some(auditor.url()),
            ..ValidatorOptions::on(backend)
        },
    )
    .await?;
    Some((auditor, issuer, validator))
}

async fn stop(auditor: AuditorHandle, issuer: IssuerHandle, validator: ValidatorHandle) {
    validator.stop().await;
    issuer.stop().await;
    auditor.stop().await;
}

/// A service client holding `roles` and a token for `scope`: (token, jti).
async fn token(issuer: &IssuerHandle, roles: &[&str], scope: &str) -> (String, String) {
    let token = issuer.token_for(roles, scope, "").await;
    let jti = trias_tests::claims(&token)["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    (token, jti)
}

fn by_token(token_id: &str) -> QueryRequest {
    QueryRequest {
        token_id: token_id.into(),
        ..Default::default()
    }
}

async fn issued_and_checked_tokens_reach_the_auditor(backend: Backend) {
    let Some((auditor, issuer, validator)) =
        pipeline(backend, trias_policy::SAMPLE, DetectConfig::default()).await
    else {
        return;
    };
    let (token, jti) = token(&issuer, &["clerk"], "payments:create").await;
    let decision = validator
        .check(&token, "payment.create", "payment/1", "payments")
        .await;
    assert!(decision.allowed, "{decision:?}");

    let events = auditor
        .wait_for(by_token(&jti), |events| events.len() >= 2)
        .await;
    let issued = events
        .iter()
        .find(|e| e.kind() == EventKind::TokenIssued)
        .expect("the issuance is logged");
    assert_eq!(issued.producer, "issuer");
    let check = events
        .iter()
        .find(|e| e.kind() == EventKind::Check)
        .expect("the check is logged");
    assert_eq!(check.producer, "validator");
    assert_eq!(check.decision(), Decision::Allow);
    assert_eq!(check.resource, "payment/1");
    assert_eq!(events.len(), 2, "{events:#?}");
    // Both outboxes drain: everything they hold is acknowledged.
    for outbox in [issuer.issuer.outbox(), validator.validator.outbox()] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while outbox.depth().await.unwrap() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "outbox not drained");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Nothing in the pipeline looks like an attack.
    assert!(alerts(&auditor).await.is_empty());
    stop(auditor, issuer, validator).await;
}

async fn alerts(auditor: &AuditorHandle) -> Vec<AuditEvent> {
    auditor
        .query(QueryRequest {
            kinds: vec![EventKind::Alert as i32],
            ..Default::default()
        })
        .await
        .into_iter()
        .filter_map(|e| e.event)
        .collect()
}

async fn an_auditor_restart_loses_nothing_and_doubles_nothing(backend: Backend) {
    let Some(auditor) = start_auditor(AuditorOptions::on(backend)).await else {
        return;
    };
    let Some(issuer) = start_issuer(IssuerOptions {
        auditor_url: Some(auditor.url()),
        ..IssuerOptions::on(backend)
    })
    .await
    else {
        return;
    };
    let issued_kind = QueryRequest {
        kinds: vec![EventKind::TokenIssued as i32],
        ..Default::default()
    };
    let mut jtis = Vec::new();
    for _ in 0..3 {
        jtis.push(token(&issuer, &["clerk"], "payments:read").await.1);
    }
    auditor
        .wait_for(issued_kind.clone(), |events| events.len() == 3)
        .await;

    // The auditor goes away; the issuer keeps minting, each event safe in its outbox.
    let stopped = auditor.down().await;
    for _ in 0..6 {
        jtis.push(token(&issuer, &["clerk"], "payments:read").await.1);
    }
    assert!(issuer.issuer.outbox().depth().await.unwrap() >= 6);
    let auditor = stopped.up().await;

    let logged = auditor
        .wait_for(issued_kind, |events| events.len() >= 9)
        .await;
    let mut logged_jtis: Vec<String> = logged.iter().map(|e| e.token_id.clone()).collect();
    logged_jtis.sort();
    jtis.sort();
    assert_eq!(logged_jtis, jtis, "every issuance once");
    // Every event of the issuer is in the log exactly once, numbered without a hole.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while issuer.issuer.outbox().depth().await.unwrap() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "outbox not drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut seqs: Vec<u64> = auditor
        .export()
        .await
        .into_iter()
        .filter_map(|e| e.event)
        .filter(|e| e.producer == "issuer")
        .map(|e| e.producer_seq)
        .collect();
    seqs.sort_unstable();
    let last = *seqs.last().unwrap();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
    assert!(alerts(&auditor).await.is_empty(), "no gap was seen");
    issuer.stop().await;
    auditor.stop().await;
}

/// Gathers alerts from `watch` until one of each of `detectors` has come; by detector.
async fn collect(watch: &mut AlertWatch, detectors: &[&str]) -> BTreeMap<String, LogEntry> {
    let mut seen = BTreeMap::new();
    while !detectors.iter().all(|d| seen.contains_key(*d)) {
        let entry = watch.next().await;
        let reason = entry.event.as_ref().unwrap().reason.clone();
        seen.entry(reason).or_insert(entry);
    }
    seen
}

/// The triggering entries an alert names, read back from the log.
async fn evidence(auditor: &AuditorHandle, alert: &AuditEvent) -> Vec<AuditEvent> {
    let indexes: Vec<u64> = alert.attributes["indexes"]
        .split(',')
        .map(|i| i.parse().unwrap())
        .collect();
    let log = auditor.export().await;
    indexes
        .iter()
        .map(|i| log[usize::try_from(*i).unwrap()].event.clone().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_reuse_is_an_alert() {
    let auditor = start_auditor(AuditorOptions::default()).await.unwrap();
    let issuer = start_issuer(IssuerOptions {
        auditor_url: Some(auditor.url()),
        ..IssuerOptions::default()
    })
    .await
    .unwrap();
    let mut watch = auditor.watch_alerts(0).await;
    issuer
        .user("alice", "correct horse battery", &["clerk"], false)
        .await;
    let frontend = issuer.frontend(&["payments:read"], false).await;
    let first = issuer
        .sign_in(&frontend, "alice", "correct horse battery", "payments:read")
        .await;
    let mut grpc = issuer.grpc().await;
    grpc.token(frontend.refresh(&first.refresh_token))
        .await
        .unwrap();
    let reuse = grpc.token(frontend.refresh(&first.refresh_token)).await;
    refused(reuse, tonic::Code::PermissionDenied, "invalid_grant");

    let alert = watch.next_of("refresh_reuse").await;
    let event = alert.event.unwrap();
    assert_eq!(event.kind(), EventKind::Alert);
    assert_eq!(event.producer, "auditor");
    assert_eq!(event.decision(), Decision::Unspecified);
    assert_eq!(event.client_id, frontend.client_id);
    assert!(!event.family_id.is_empty());
    let reused = evidence(&auditor, &event).await;
    assert_eq!(reused[0].kind(), EventKind::RefreshReuse);
    assert_eq!(reused[0].family_id, event.family_id);
    assert!(
        alert.index > evidence_index(&event),
        "the alert follows its evidence"
    );
    issuer.stop().await;
    auditor.stop().await;
}

fn evidence_index(alert: &AuditEvent) -> u64 {
    alert.attributes["indexes"]
        .split(',')
        .next_back()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duty_violations_wrong_audiences_and_denial_bursts_are_alerts() {
    let detectors = DetectConfig {
        denial_burst_count: 3,
        ..DetectConfig::default()
    };
    let (auditor, issuer, validator) = pipeline(
        Backend::Sqlite,
        &trias_tests::policy_without_static_conflict(),
        detectors,
    )
    .await
    .unwrap();
    let mut watch = auditor.watch_alerts(0).await;
    let (alice, jti) = token(
        &issuer,
        &["clerk", "approver"],
        "payments:create payments:approve",
    )
    .await;
    let created = validator
        .check(&alice, "payment.create", "payment/7", "payments")
        .await;
    assert!(created.allowed, "{created:?}");
    // Alice approving her own payment: the attempt is denied, and it is an alert.
    let approved = validator
        .check(&alice, "payment.approve", "payment/7", "payments")
        .await;
    assert_eq!(approved.reason(), Reason::DutyConflict);
    // Her token presented to a service it was not minted for.
    let elsewhere = validator.check(&alice, "audit.query", "", "auditor").await;
    assert_eq!(elsewhere.reason(), Reason::WrongAudience);
    // A third denial within the window: a burst, for her and for her client.
    let unknown = validator
        .check(&alice, "payment.execute", "payment/7", "payments")
        .await;
    assert!(!unknown.allowed);

    let seen = collect(
        &mut watch,
        &["dual_control_violation", "wrong_audience", "denial_burst"],
    )
    .await;
    let violation = seen["dual_control_violation"].event.clone().unwrap();
    assert_eq!(violation.subject, created.subject);
    assert_eq!(violation.token_id, jti);
    assert_eq!(violation.resource, "payment/7");
    assert_eq!(violation.action, "payment.approve");
    let attempt = evidence(&auditor, &violation).await;
    assert_eq!(attempt[0].reason, "duty_conflict");
    assert_eq!(attempt[0].producer, "validator");

    let wrong = seen["wrong_audience"].event.clone().unwrap();
    assert_eq!(wrong.audience, "auditor");
    assert_eq!(wrong.token_id, jti);

    let burst = seen["denial_burst"].event.clone().unwrap();
    assert_eq!(burst.attributes["count"], "3");
    let denials = evidence(&auditor, &burst).await;
    assert_eq!(denials.len(), 3);
    assert!(denials.iter().all(|e| e.decision() == Decision::Deny));

    // Alerts are queryable like any entry, and each is in the signed tree.
    let by_reason = auditor
        .query(QueryRequest {
            kinds: vec![EventKind::Alert as i32],
            reason: "dual_control_violation".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(by_reason.len(), 1);
    assert_eq!(by_reason[0].index, seen["dual_control_violation"].index);
    let checkpoint = auditor.auditor.checkpoint();
    assert!(checkpoint.tree_size > seen["denial_burst"].index);
    // Two bursts (subject and client) at most, and no never_issued: the token was issued.
    let all = alerts(&auditor).await;
    assert!(all.iter().all(|a| a.reason != "never_issued"), "{all:#?}");
    stop(auditor, issuer, validator).await;
}

/// An event from `producer` as a shipper would send it.
fn forged(auditor: &AuditorHandle, producer: &str, seq: u64, kind: EventKind) -> AuditEvent {
    AuditEvent {
        kind: kind as i32,
        time: Some(timestamp(auditor.clock.now())),
        ..auditor.event(producer, seq, "mallory")
    }
}

fn passed_check(auditor: &AuditorHandle, seq: u64, token_id: &str) -> AuditEvent {
    AuditEvent {
        token_id: token_id.into(),
        decision: Decision::Allow as i32,
        audience: "payments".into(),
        action: "payment.execute".into(),
        resource: "payment/9".into(),
        ..forged(auditor, "validator", seq, EventKind::Check)
    }
}

async fn append(auditor: &AuditorHandle, producer: &str, events: Vec<AuditEvent>) {
    auditor
        .grpc_as(producer)
        .await
        .append(AppendRequest {
            producer: producer.into(),
            events,
        })
        .await
        .unwrap();
}

async fn a_check_of_a_token_never_issued_is_an_alert_after_the_grace(backend: Backend) {
    let Some(auditor) = start_auditor(AuditorOptions {
        detectors: DetectConfig {
            never_issued_grace: Duration::from_secs(5),
            ..DetectConfig::default()
        },
        ..AuditorOptions::on(backend)
    })
    .await
    else {
        return;
    };
    let mut watch = auditor.watch_alerts(0).await;
    // A token minted with a stolen key: the validator passed it, the issuer never saw it.
    append(
        &auditor,
        "validator",
        vec![passed_check(&auditor, 1, "jti-ghost")],
    )
    .await;
    // An honest token whose issuance reaches the auditor after its check did.
    append(
        &auditor,
        "validator",
        vec![passed_check(&auditor, 2, "jti-real")],
    )
    .await;
    let mut issued = forged(&auditor, "issuer", 1, EventKind::TokenIssued);
    issued.token_id = "jti-real".into();
    append(&auditor, "issuer", vec![issued]).await;

    // Within the grace nothing is decided.
    auditor.clock.advance(Duration::from_secs(4));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(alerts(&auditor).await.is_empty());

    auditor.clock.advance(Duration::from_secs(2));
    let alert = watch.next_of("never_issued").await.event.unwrap();
    assert_eq!(alert.token_id, "jti-ghost");
    assert_eq!(alert.attributes["checked_by"], "validator");
    assert_eq!(evidence(&auditor, &alert).await[0].token_id, "jti-ghost");

    // A second check of the ghost and one of another unknown token, then a restart
    // inside their grace: the pending check survives it, the ghost is not alerted twice.
    append(
        &auditor,
        "validator",
        vec![
            passed_check(&auditor, 3, "jti-ghost"),
            passed_check(&auditor, 4, "jti-ghost-2"),
        ],
    )
    .await;
    let after = alerts(&auditor).await.len();
    assert_eq!(after, 1);
    let auditor = auditor.restart().await;
    let mut watch = auditor.watch_alerts(0).await;
    auditor.clock.advance(Duration::from_secs(6));
    let first = watch.next().await.event.unwrap();
    assert_eq!(
        first.token_id, "jti-ghost",
        "the replay starts with the old alert"
    );
    let second = watch.next().await.event.unwrap();
    assert_eq!(second.reason, "never_issued");
    assert_eq!(second.token_id, "jti-ghost-2");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let all = alerts(&auditor).await;
    assert_eq!(all.len(), 2, "{all:#?}");
    auditor.stop().await;
}

async fn a_producer_sequence_gap_is_an_alert(backend: Backend) {
    let Some(auditor) = start_auditor(AuditorOptions::on(backend)).await else {
        return;
    };
    let one = forged(&auditor, "validator", 1, EventKind::Check);
    let three = forged(&auditor, "validator", 3, EventKind::Check);
    append(&auditor, "validator", vec![one]).await;
    append(&auditor, "validator", vec![three.clone()]).await;
    let mut watch = auditor.watch_alerts(0).await;
    let gap = watch.next_of("producer_sequence_gap").await;
    let event = gap.event.unwrap();
    assert_eq!(event.attributes["producer"], "validator");
    assert_eq!(event.attributes["missing_from"], "2");
    assert_eq!(event.attributes["missing_to"], "2");
    assert_eq!(event.attributes["event_ids"], three.id);

    // A retried batch and the late event are no further gap.
    append(&auditor, "validator", vec![three]).await;
    append(
        &auditor,
        "validator",
        vec![forged(&auditor, "validator", 2, EventKind::Check)],
    )
    .await;
    append(
        &auditor,
        "validator",
        vec![forged(&auditor, "validator", 4, EventKind::Check)],
    )
    .await;
    assert_eq!(alerts(&auditor).await.len(), 1);

    // A watch that is following live ends when the auditor stops, without holding it up.
    let mut live = auditor.watch_alerts(gap.index).await;
    tokio::time::timeout(Duration::from_secs(10), auditor.stop())
        .await
        .expect("the auditor stops while an alert watch is open");
    let end = tokio::time::timeout(Duration::from_secs(5), live.message())
        .await
        .expect("the watch ends with the server");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}
