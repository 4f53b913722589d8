//! The command line: configuration refusals and start-up conflicts, through the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Output};

use common::{BIN, Sidecar};

fn serve_with(config: &str, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyd.toml");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(dir.path());
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

#[test]
fn a_non_loopback_plaintext_listener_refuses_to_start() {
    let output = serve_with("[listen]\ntcp = \"0.0.0.0:50051\"\n", &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`listen.tcp`") && stderr.contains("0.0.0.0:50051"),
        "{stderr}"
    );
    assert!(stderr.contains("may only listen on loopback"), "{stderr}");
}

#[test]
fn bad_configuration_is_named_and_nothing_starts() {
    let output = serve_with(
        "region = \"us-east-1\"\n[listen]\ntpc = \"127.0.0.1:0\"\n",
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`listen.tpc`: unknown field `tpc`"),
        "{stderr}"
    );

    let output = serve_with("", &[("INSPECTOR_KEYD_ACCOUNT_ID", "not-an-account")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`account_id`"), "{stderr}");
}

#[test]
fn a_second_server_on_the_same_state_refuses_to_start() {
    let sidecar = Sidecar::start();
    let config = format!(
        "state_dir = {:?}\n[listen]\nunix_socket = {:?}\ntcp = \"127.0.0.1:0\"\n",
        sidecar.state_dir(),
        sidecar.socket
    );
    let output = serve_with(&config, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot open the backend"), "{stderr}");
    // The first server still serves.
    assert!(sidecar.socket.exists());
    let config = format!(
        "state_dir = {:?}\n[listen]\nunix_socket = {:?}\ntcp = \"\"\n",
        sidecar.dir().join("other-state"),
        sidecar.socket
    );
    let output = serve_with(&config, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another server is listening on it"),
        "{stderr}"
    );
    assert!(sidecar.socket.exists());
}
