//! W3C trace context across the services: every internal gRPC client sends the current
//! span's `traceparent` ([`Propagate`], [`traced`]); every gRPC server makes it the parent of
//! the request's span ([`server_span`], installed by `tls::Transport::server`); and an audit
//! event records the trace and span of the request that caused it ([`current_ids`]), so the
//! auditor can parent the span that logs the event on it ([`remote_parent`]): one check and
//! the append of its event are one trace, though the event is shipped later in a batch.
//!
//! Without OpenTelemetry (`telemetry::init_service` with no endpoint) the propagator is a
//! no-op and spans have no trace ids: nothing is sent, extracted or recorded.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use tonic::codegen::http;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The client interceptor that sends the current span's W3C trace context.
#[derive(Debug, Clone, Copy, Default)]
pub struct Propagate;

impl Interceptor for Propagate {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject(request.metadata_mut());
        Ok(request)
    }
}

/// A channel whose calls carry the caller's trace context.
pub type Traced = InterceptedService<Channel, Propagate>;

/// `channel`, sending the current span's trace context with every call.
pub fn traced(channel: Channel) -> Traced {
    InterceptedService::new(channel, Propagate)
}

/// Writes the current span's trace context (`traceparent`) into `metadata`.
pub fn inject(metadata: &mut MetadataMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata));
    });
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The span of one incoming gRPC request, named after its method and the child of the
/// caller's span when the request carries a trace context.
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    let method = request.uri().path();
    let span = tracing::info_span!(
        "grpc",
        otel.name = %method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = %method,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    span
}

/// Axum middleware: the span of one HTTP request — method, path (never the query or the
/// body) and status — the child of the caller's span when the request carries a trace
/// context.
pub async fn http_span(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument as _;

    let path: String = request.uri().path().chars().take(256).collect();
    let method = request.method().clone();
    let span = tracing::info_span!(
        "http",
        otel.name = %format_args!("{method} {path}"),
        otel.kind = "server",
        http.request.method = %method,
        url.path = %path,
        http.response.status_code = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// The W3C trace id (32 hex digits) and span id (16) of the current span, if it is traced.
pub fn current_ids() -> Option<(String, String)> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let ids = span.span_context();
    ids.is_valid()
        .then(|| (ids.trace_id().to_string(), ids.span_id().to_string()))
}

/// The context of a span recorded elsewhere (e.g. in an audit event), to parent a local span
/// on; `None` unless both ids are valid hex of the right length.
pub fn remote_parent(trace_id: &str, span_id: &str) -> Option<Context> {
    if trace_id.len() != 32 || span_id.len() != 16 {
        return None;
    }
    let trace = TraceId::from_hex(trace_id).ok()?;
    let span = SpanId::from_hex(span_id).ok()?;
    let ids = SpanContext::new(trace, span, TraceFlags::SAMPLED, true, TraceState::NONE);
    ids.is_valid()
        .then(|| Context::new().with_remote_span_context(ids))
}

/// Makes the span recorded elsewhere (`trace_id`, `span_id`) the parent of `span`; false if
/// the ids are not valid or the span is not traced.
pub fn set_remote_parent(span: &tracing::Span, trace_id: &str, span_id: &str) -> bool {
    match remote_parent(trace_id, span_id) {
        Some(parent) => span.set_parent(parent).is_ok(),
        None => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn a_remote_parent_needs_valid_ids() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let span = "00f067aa0ba902b7";
        let parent = remote_parent(trace, span).unwrap();
        let ids = parent.span().span_context().clone();
        assert_eq!(ids.trace_id().to_string(), trace);
        assert_eq!(ids.span_id().to_string(), span);
        assert!(ids.is_remote());
        assert!(remote_parent("", span).is_none());
        assert!(remote_parent(&"0".repeat(32), span).is_none());
        assert!(remote_parent(trace, "not hex at all!!").is_none());
    }

    #[test]
    fn without_opentelemetry_nothing_is_sent_or_recorded() {
        let span = tracing::info_span!("untraced");
        let _entered = span.enter();
        assert!(current_ids().is_none());
        let mut metadata = MetadataMap::new();
        inject(&mut metadata);
        assert!(metadata.is_empty());
    }
}
