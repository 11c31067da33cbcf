//! Compiles `proto/seckill/v1/*.proto` with the vendored `protoc`, so the
//! build needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    let callback = root.join("seckill/v1/callback.proto");
    println!("cargo:rerun-if-changed={}", callback.display());

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(config, &[callback], &[root])?;
    Ok(())
}
