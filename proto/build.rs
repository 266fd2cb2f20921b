//! Compiles `trias/v1/*.proto` with protox (pure Rust), so the build needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "trias/v1/common.proto",
        "trias/v1/issuer.proto",
        "trias/v1/validator.proto",
        "trias/v1/auditor.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    // The encoded descriptors, for the gRPC reflection service every Trias service runs.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("trias_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        // Maps as BTreeMap: encoding then follows key order, so an event re-encoded anywhere
        // gives the same bytes (an audit leaf is an event's encoding).
        .btree_map(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
