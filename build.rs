//! Compiles the wire contract in `proto/` with a vendored `protoc`, so a clean checkout builds
//! without any system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_with_config(
            config,
            &[
                "proto/secrets.proto",
                "proto/sshforward.proto",
                "proto/control.proto",
                "proto/fsutil.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
