//! The method table is generated from the access option on every RPC: an RPC added without
//! the option (or with no role in it) fails the build, naming the RPC.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../build/method_table.rs"]
mod method_table;

use std::path::Path;

use prost_reflect::DescriptorPool;

/// The package's protos plus `extra` (a file of the package), compiled as build.rs does.
fn compile_with(extra: &str) -> DescriptorPool {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<String> = Vec::new();
    for proto in method_table::PROTOS {
        let target = dir.path().join(proto);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(root.join(proto), &target).unwrap();
        files.push((*proto).to_owned());
    }
    let extra_file = "proto/inspectorkeyd/v1/extra.proto";
    std::fs::write(
        dir.path().join(extra_file),
        format!(
            "syntax = \"proto3\";\npackage inspectorkeyd.v1;\nimport \"inspectorkeyd/v1/access.proto\";\nmessage ExtraRequest {{}}\nmessage ExtraResponse {{}}\n{extra}\n"
        ),
    )
    .unwrap();
    files.push(extra_file.to_owned());
    let mut compiler = protox::Compiler::new([dir.path().join("proto")]).unwrap();
    compiler.include_imports(true);
    for file in &files {
        compiler
            .open_file(dir.path().join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    compiler.descriptor_pool()
}

#[test]
fn an_rpc_without_the_access_option_fails_the_build_naming_it() {
    let pool = compile_with(
        "service ExtraService {\n  rpc Forgotten(ExtraRequest) returns (ExtraResponse);\n}",
    );
    let error = method_table::method_table(&pool).err().expect("refused");
    assert!(
        error
            .to_string()
            .contains("/inspectorkeyd.v1.ExtraService/Forgotten has no `option (access)`"),
        "{error}"
    );
}

#[test]
fn an_access_option_without_a_role_fails_the_build() {
    let pool = compile_with(
        "service ExtraService {\n  rpc Roleless(ExtraRequest) returns (ExtraResponse) {\n    option (access) = {mutation: true};\n  }\n}",
    );
    let error = method_table::method_table(&pool).err().expect("refused");
    assert!(
        error
            .to_string()
            .contains("/inspectorkeyd.v1.ExtraService/Roleless: the access option names no role"),
        "{error}"
    );
}

#[test]
fn a_declared_rpc_gets_a_row_and_changing_its_role_is_one_line() {
    let pool = compile_with(
        "service ExtraService {\n  rpc Declared(ExtraRequest) returns (ExtraResponse) {\n    option (access) = {role: ROLE_READ_ONLY};\n  }\n}",
    );
    let rows = method_table::method_table(&pool).unwrap();
    let code = method_table::generate(&rows).unwrap();
    let row = code
        .lines()
        .find(|l| l.contains("\"/inspectorkeyd.v1.ExtraService/Declared\""))
        .expect("a row for the new RPC");
    assert!(row.contains("role: Some(Role::ReadOnly)"), "{row}");
    // The shipped protos: every row of the server's table, and the new one.
    assert_eq!(rows.len(), inspector_keyd::rpc::METHODS.len() + 1);
}
