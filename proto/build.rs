//! Generates the Rust types and gRPC stubs from `proto/vigo/*.proto` with a pure-Rust
//! protobuf compiler, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/vigo/events.proto",
        "proto/vigo/bundle.proto",
        "proto/vigo/agent.proto",
        "proto/vigo/admin.proto",
        "proto/vigo/fleet.proto",
        "proto/vigo/peer.proto",
        "proto/vigo/spanner.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    // Every service uses the codec with small per-call buffers (`src/codec.rs`).
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::VigoCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
