//! Generates Rust code for Keel's protobuf definitions with `tonic-prost-build`.
//!
//! Invariant: the generated code is never committed; `protoc` must be on PATH (Debian's
//! `protobuf-compiler`, installed by `.ci/run`) or named by the `PROTOC` environment variable.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "etcd/mvcc.proto",
        "etcd/auth.proto",
        "etcd/rpc.proto",
        "etcd/v3lock.proto",
        "etcd/v3election.proto",
        "keel/peer.proto",
        "keel/journal.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&protos, &["."])
        .map_err(|err| {
            format!("compiling protobuf definitions failed (is `protoc` installed? apt-get install protobuf-compiler): {err}")
        })?;
    Ok(())
}
