//! How every service serves: its listening sockets, and the standard gRPC services (health,
//! reflection) beside its own API.

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// Accepted gRPC connections with `TCP_NODELAY`: without it Nagle's algorithm holds each
/// small response back until the client's delayed ACK (about 40 ms on Linux), which caps a
/// connection at a few dozen round trips a second whatever the server's speed.
/// (`serve_with_incoming_shutdown` over a plain listener stream leaves it off.)
pub fn nodelay(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// What every Trias service serves beside its own API: gRPC health checking
/// (`grpc.health.v1.Health`, with `service` — e.g. `trias.v1.Issuer` — and the server as a
/// whole reported serving) and server reflection (v1) over the `trias.v1` and health
/// descriptors, so standard tools (`grpcurl`, `grpc_health_probe`) work against it.
pub async fn standard_services(
    service: &str,
) -> Result<
    (
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
    ),
    String,
> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(service, tonic_health::ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(trias_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("grpc reflection: {e}"))?;
    Ok((health, reflection))
}
