//! Compiles proto/ with protox (no system `protoc`) and writes the encoded descriptor set
//! that server reflection serves.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/inspectorkeyd/v1/types.proto",
    "proto/inspectorkeyd/v1/code_snippet.proto",
    "proto/inspectorkeyd/v1/verification.proto",
    "proto/inspectorkeyd/v1/encryption_key.proto",
    "proto/inspectorkeyd/v1/local_kms.proto",
    "proto/inspectorkeyd/v1/local_code_scanning.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("inspectorkeyd_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
