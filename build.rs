//! Compiles proto/ with protox (no system `protoc`), writes the encoded descriptor set that
//! server reflection serves, and generates the method table (build/method_table.rs) from the
//! `(inspectorkeyd.v1.access)` option every RPC of ours declares; src/rpc.rs includes it. An
//! RPC without the option, or with no role in it, fails the build.

use std::{env, fs, path::PathBuf};

#[path = "build/method_table.rs"]
mod method_table;

fn main() -> Result<(), method_table::Error> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(method_table::PROTOS)?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // With the options of ours included, so grpcurl's `describe` shows what an RPC needs.
    fs::write(
        out_dir.join("inspectorkeyd_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let rows = method_table::method_table(&compiler.descriptor_pool())?;
    fs::write(
        out_dir.join("method_table.rs"),
        method_table::generate(&rows)?,
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
