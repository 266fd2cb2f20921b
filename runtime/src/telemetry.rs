//! Logging and tracing set-up shared by every service: `tracing` events to stderr, filtered
//! by `RUST_LOG`, and — when `OTEL_EXPORTER_OTLP_ENDPOINT` is set — every span exported over
//! OTLP/gRPC in batches, with the W3C trace-context propagator that [`crate::trace`] uses to
//! carry a trace across gRPC calls and through audit events.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// The environment variable naming the OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Installs the global subscriber: human-readable or JSON lines, filtered by `RUST_LOG`
/// (default `info`). Calling it again, or after another subscriber was set, does nothing.
pub fn init(json: bool) {
    let _ = install(json, None);
}

/// The running telemetry of a service; [`Telemetry::shutdown`] flushes the spans not yet
/// exported.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// [`init`], plus OTLP span export as `service.name` `trias-<service>` when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (an empty value counts as unset). Must run inside a
/// Tokio runtime: the exporter's gRPC channel lives there. Without the variable nothing
/// changes.
pub fn init_service(json: bool, service: &str) -> Telemetry {
    let endpoint = std::env::var(OTLP_ENDPOINT_ENV)
        .ok()
        .filter(|e| !e.trim().is_empty());
    let provider = match endpoint {
        None => None,
        Some(endpoint) => match exporter(&endpoint, service) {
            Ok(provider) => Some(provider),
            Err(error) => {
                init(json);
                tracing::error!(%error, endpoint, "cannot export traces: OTLP disabled");
                return Telemetry { provider: None };
            }
        },
    };
    Telemetry {
        provider: install(json, provider),
    }
}

fn exporter(endpoint: &str, service: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| e.to_string())?;
    let resource = Resource::builder()
        .with_service_name(format!("trias-{service}"))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build())
}

/// Installs the subscriber; returns the provider only if it became the global one.
fn install(json: bool, provider: Option<SdkTracerProvider>) -> Option<SdkTracerProvider> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match json {
        true => Box::new(fmt.json()),
        false => Box::new(fmt),
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("trias")));
    // An error only means a subscriber is already installed, which is what the caller wants.
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .with(filter)
        .try_init()
        .is_ok();
    match (installed, provider) {
        (true, Some(provider)) => {
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            opentelemetry::global::set_tracer_provider(provider.clone());
            Some(provider)
        }
        (_, provider) => {
            if let Some(provider) = provider {
                let _ = provider.shutdown();
            }
            None
        }
    }
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still queued and stops the exporter (for at most five seconds).
    /// The provider blocks while it flushes, so it runs off the async workers.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let flushed = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(std::time::Duration::from_secs(5))
        })
        .await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "flushing spans failed"),
            Err(error) => tracing::warn!(%error, "flushing spans failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn init_is_idempotent() {
        super::init(false);
        super::init(true);
        tracing::info!(check = true, "telemetry initialised twice");
    }
}
