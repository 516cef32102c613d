//! Compiles proto/ with a vendored protoc, so a fresh clone builds with no system packages.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not baked in with env!(): clones at different paths that share one
    // CARGO_TARGET_DIR (CI) reuse the compiled build script, which then pointed at the clone it
    // was first compiled in.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut protos = vec![
        root.join("cim/common/v1/command.proto"),
        root.join("cim/common/v1/envelope.proto"),
        root.join("cim/common/v1/paging.proto"),
        root.join("cim/graph/v1/graph.proto"),
        root.join("cim/document/v1/document.proto"),
        root.join("cim/agent/v1/agent.proto"),
        root.join("cim/workflow/v1/workflow.proto"),
        root.join("cim/webhook/v1/webhook.proto"),
    ];
    if std::env::var_os("CARGO_FEATURE_TESTING").is_some() {
        protos.push(root.join("cim/testing/v1/probe.proto"));
    }

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Well-known types (Struct, Timestamp) come from the vendored include directory.
    let includes = [root.clone(), protoc_bin_vendored::include_path()?];

    tonic_prost_build::configure()
        // Undecodable requests are INVALID_ARGUMENT, not prost's INTERNAL (src/codec.rs).
        .codec_path("crate::codec::StrictCodec")
        .file_descriptor_set_path(out.join("cim_descriptor.bin"))
        .compile_with_config(config, &protos, &includes)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
