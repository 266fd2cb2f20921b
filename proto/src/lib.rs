//! The Trias gRPC API, package `trias.v1`, generated from `proto/trias/v1/*.proto`.

#![allow(
    clippy::all,
    missing_debug_implementations,
    reason = "generated code is not held to the workspace's hand-written style"
)]

/// Package `trias.v1`: the messages and services of the issuer, validator and auditor.
pub mod v1 {
    tonic::include_proto!("trias.v1");
}

/// The encoded `FileDescriptorSet` of package `trias.v1`, which the services' gRPC reflection
/// serves.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/trias_descriptor.bin"));
