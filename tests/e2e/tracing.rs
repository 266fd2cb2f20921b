//! OpenTelemetry traces from `trias up` with `OTEL_EXPORTER_OTLP_ENDPOINT` set: each service
//! (a process of its own, as a process has one global tracer) exports its spans over
//! OTLP/gRPC to a receiver in this test — at the latest when it stops on SIGTERM — and one
//! check and the auditor's logging of its audit event (shipped later, in a batch) are one
//! trace.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::net::TcpListener;
use trias_cli::pki::Pki;
use trias_proto::v1::CheckRequest;
use trias_proto::v1::validator_client::ValidatorClient;
use trias_runtime::tls::{Transport, identity_of};
use trias_tests::stack::Stack;

/// A span as received, with the `service.name` of the resource that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|value| match value {
                Value::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            })
    }
}

/// An in-process OTLP/gRPC trace receiver that keeps every span.
#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// Starts the receiver on `127.0.0.1:0` (plain text); returns its endpoint URL.
    async fn start(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (at most 60 s) until `found` finds something in the spans received.
    async fn wait_for<T>(&self, what: &str, found: impl Fn(&[Received]) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(value) = found(&self.spans()) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {what} within 60 s; received: {:#?}",
                self.spans()
                    .iter()
                    .map(|r| (r.service.as_str(), r.span.name.as_str()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_and_the_logging_of_its_event_are_one_trace_flushed_at_shutdown() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let mut stack = Stack::up(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // No export on the schedule: the spans reach the receiver only through the flush
        // each service makes when it stops on SIGTERM.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
    ])
    .await;

    // A token for the demo payments client, over HTTP.
    let secret = stack.get("demo_client_secret");
    let response = reqwest::Client::new()
        .post(format!("{}/oauth2/token", stack.get("issuer_url")))
        .basic_auth(stack.get("demo_client_id"), Some(&secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "payments:create"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap().to_owned();

    // A check as the payments backend, over mTLS with its certificate from the stack's PKI.
    let pki = Pki::new(stack.data_dir.join("pki"));
    let channel = Transport::load(&pki.files("payments"))
        .unwrap()
        .endpoint(&stack.get("validator_grpc"), &identity_of("validator"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let decision = ValidatorClient::new(channel)
        .check(CheckRequest {
            token: token.clone(),
            action: "payment.create".into(),
            resource: "payment/1".into(),
            audience: "payments".into(),
            context: Default::default(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(decision.allowed, "{decision:?}");

    // Once the auditor has logged the check (its metrics say so), stop the stack: every
    // span below arrives through the shutdown flush.
    let auditor_metrics = format!("127.0.0.1:{}", stack.base_port + 23)
        .parse()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = trias_tests::scrape(auditor_metrics).await;
        let appended = [("producer", "validator")];
        if metrics.value("trias_audit_events_appended_total", &appended) >= 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the check's event was not logged within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        receiver.spans().is_empty(),
        "spans exported before shutdown"
    );
    stack.stop().await;

    // The validator's span for the check, in the gRPC request's span.
    let check = receiver
        .wait_for("validator check span", |spans| {
            spans
                .iter()
                .find(|r| {
                    r.service == "trias-validator"
                        && r.span.name == "check"
                        && r.attribute("resource").as_deref() == Some("payment/1")
                })
                .cloned()
        })
        .await;
    assert_eq!(check.attribute("decision").as_deref(), Some("allow"));
    assert_eq!(check.attribute("reason").as_deref(), Some("ok"));
    assert_eq!(check.attribute("action").as_deref(), Some("payment.create"));
    let request = receiver
        .wait_for("validator request span", |spans| {
            spans
                .iter()
                .find(|r| r.span.span_id == check.span.parent_span_id)
                .cloned()
        })
        .await;
    assert_eq!(request.service, "trias-validator");
    assert_eq!(request.span.name, "/trias.v1.Validator/Check");

    // The auditor's span for logging that check's event: the same trace, the check's child.
    let integrated = receiver
        .wait_for("auditor span for the check's event", |spans| {
            spans
                .iter()
                .find(|r| {
                    r.service == "trias-auditor"
                        && r.span.name == "audit.integrate"
                        && r.span.trace_id == check.span.trace_id
                })
                .cloned()
        })
        .await;
    assert_eq!(integrated.span.parent_span_id, check.span.span_id);
    assert_eq!(
        integrated.attribute("producer").as_deref(),
        Some("validator")
    );
    assert_eq!(
        integrated.attribute("kind").as_deref(),
        Some("EVENT_KIND_CHECK")
    );

    // The issuance is traced at the issuer too, and its event logged in its trace.
    let issued = receiver
        .wait_for("issuer token span", |spans| {
            spans
                .iter()
                .find(|r| r.service == "trias-issuer" && r.span.name == "token")
                .cloned()
        })
        .await;
    assert_eq!(
        issued.attribute("grant_type").as_deref(),
        Some("client_credentials")
    );
    assert_eq!(issued.attribute("decision").as_deref(), Some("allow"));
    let http = receiver
        .wait_for("issuer HTTP request span", |spans| {
            spans
                .iter()
                .find(|r| r.span.span_id == issued.span.parent_span_id)
                .cloned()
        })
        .await;
    assert_eq!(http.span.name, "POST /oauth2/token");
    assert_eq!(
        http.attribute("http.response.status_code").as_deref(),
        Some("200")
    );
    receiver
        .wait_for("auditor span for the issuance's event", |spans| {
            spans
                .iter()
                .any(|r| {
                    r.service == "trias-auditor"
                        && r.span.name == "audit.integrate"
                        && r.span.trace_id == issued.span.trace_id
                })
                .then_some(())
        })
        .await;

    // No bearer value is ever a span attribute.
    let everything = format!("{:?}", receiver.spans());
    assert!(!everything.contains(&token), "a token leaked into a span");
    assert!(
        !everything.contains(&secret),
        "a client secret leaked into a span"
    );
}
