//! Strict audit mode: with the outbox unable to persist, the issuer mints nothing; without
//! strict mode it mints and logs the failure.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use tonic::Code;
use trias_proto::v1::EventKind;
use trias_tests::{Backend, IssuerOptions, client_credentials, refused, start_issuer};

both_backends!(strict_audit_refuses_to_mint_unrecorded_tokens);
async fn strict_audit_refuses_to_mint_unrecorded_tokens(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let (id, secret) = issuer.service_client(&["clerk"], &["payments:read"]).await;
    let recorded = issuer.events().await.len();
    issuer.issuer.outbox().close().await;

    let mut grpc = issuer.grpc().await;
    let grpc_refusal = grpc.token(client_credentials(&id, &secret, "")).await;
    refused(grpc_refusal, Code::Unavailable, "temporarily_unavailable");
    let http = issuer
        .post_form(
            "/oauth2/token",
            &[("grant_type", "client_credentials")],
            Some((&id, &secret)),
        )
        .await;
    assert_eq!(
        (http.status, http.error()),
        (503, "temporarily_unavailable")
    );
    assert!(http.body.get("access_token").is_none());
    assert_eq!(
        issuer.events().await.len(),
        recorded,
        "nothing could be recorded"
    );
    issuer.stop().await;
}

both_backends!(lenient_audit_mints_without_a_record);
async fn lenient_audit_mints_without_a_record(backend: Backend) {
    let options = IssuerOptions {
        strict_audit: false,
        ..IssuerOptions::on(backend)
    };
    let Some(issuer) = start_issuer(options).await else {
        return;
    };
    let (id, secret) = issuer.service_client(&["clerk"], &["payments:read"]).await;
    issuer.issuer.outbox().close().await;
    let mut grpc = issuer.grpc().await;
    let token = grpc
        .token(client_credentials(&id, &secret, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(!token.access_token.is_empty());
    assert!(issuer.events_of(EventKind::TokenIssued).await.is_empty());
    issuer.stop().await;
}
