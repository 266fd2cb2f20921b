//! What every service serves beside its API, over mTLS: gRPC health checking (its own service
//! reported serving) and server reflection listing its services.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::net::SocketAddr;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use trias_tests::auditor::{AuditorOptions, start_auditor};
use trias_tests::validator::{ValidatorOptions, start_validator};
use trias_tests::{IssuerOptions, channel, start_issuer};

/// Asks the health and reflection services of `server` at `addr` about `service`.
async fn serves(addr: SocketAddr, server: &str, service: &str) {
    let mut health = HealthClient::new(channel(addr, server, "cli").await);
    let status = health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving, "{service}");
    let unknown = health
        .check(HealthCheckRequest {
            service: "trias.v1.Nothing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let mut reflection = ServerReflectionClient::new(channel(addr, server, "cli").await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a list of services: {answer:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&service), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_answers_health_checks_and_reflection() {
    let issuer = start_issuer(IssuerOptions::default()).await.unwrap();
    let validator = start_validator(&issuer, ValidatorOptions::default())
        .await
        .unwrap();
    let auditor = start_auditor(AuditorOptions::default()).await.unwrap();
    serves(issuer.grpc_addr, "issuer", "trias.v1.Issuer").await;
    serves(validator.grpc_addr, "validator", "trias.v1.Validator").await;
    serves(auditor.grpc_addr, "auditor", "trias.v1.Auditor").await;
    auditor.stop().await;
    validator.stop().await;
    issuer.stop().await;
}
