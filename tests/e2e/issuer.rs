//! The issuer, driven over gRPC and HTTP as clients would.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use trias_policy::GrantType;
use trias_proto::v1::{GrantType as PbGrant, TokenRequest};
use trias_tests::{IssuerOptions, oauth_error, start_issuer};

#[tokio::test]
async fn client_credentials_over_grpc() {
    let issuer = start_issuer(IssuerOptions::default()).await.unwrap();
    let (id, secret) = issuer
        .service_client(&["clerk"], &["payments:read", "payments:create"])
        .await;
    let mut grpc = issuer.grpc().await;
    let response = grpc
        .token(TokenRequest {
            grant_type: PbGrant::ClientCredentials as i32,
            client_id: id.clone(),
            client_secret: secret.clone(),
            scope: "payments:create".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.audience, "payments");
    assert_eq!(response.scope, "payments:create");
    let wrong = grpc
        .token(TokenRequest {
            grant_type: PbGrant::ClientCredentials as i32,
            client_id: id,
            client_secret: "wrong".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(oauth_error(&wrong).as_deref(), Some("invalid_client"));
    let _ = GrantType::ClientCredentials;
    issuer.stop().await;
}
