//! The Python grpcio client (stubs generated from proto/ at test time) against the real
//! server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::Sidecar;

#[test]
fn python_grpcio_client_flow() {
    let sidecar = Sidecar::start();
    let python = common::tool("KEYD_TEST_PYTHON", ".tools/venv/bin/python");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(python)
        .arg(root.join("tests/python/client_flow.py"))
        .arg(root.join("proto"))
        .arg(&sidecar.socket)
        .arg(sidecar.tcp.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{stdout}{stderr}\nserver log:\n{}",
        sidecar.log()
    );
    assert!(stdout.contains("python client flow: ok"), "{stdout}");
}
