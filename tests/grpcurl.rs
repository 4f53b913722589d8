//! A real grpcurl (installed by the test command) against the real server: reflection,
//! health, the Update/Get/Reset flow, and rich error details.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{path::Path, process::Command};

use common::Sidecar;

struct Grpcurl<'a> {
    bin: std::path::PathBuf,
    sidecar: &'a Sidecar,
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Grpcurl<'_> {
    fn new(sidecar: &Sidecar) -> Grpcurl<'_> {
        let bin = common::tool("KEYD_TEST_GRPCURL", ".tools/venv/bin/grpcurl");
        Grpcurl { bin, sidecar }
    }

    fn run(&self, args: &[&str]) -> Output {
        let output = Command::new(&self.bin).args(args).output().unwrap();
        Output {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Over loopback TCP: read-only.
    fn tcp(&self, data: Option<&str>, rest: &[&str]) -> Output {
        let addr = self.sidecar.tcp.to_string();
        let mut args = vec!["-plaintext"];
        if let Some(data) = data {
            args.extend(["-d", data]);
        }
        args.push(&addr);
        args.extend(rest);
        self.run(&args)
    }

    /// Over the Unix socket, as the README shows it: admin.
    fn unix(&self, data: Option<&str>, method: &str) -> Output {
        let socket = self.sidecar.socket.to_str().unwrap();
        let mut args = vec!["-plaintext", "-authority", "localhost", "-unix"];
        if let Some(data) = data {
            args.extend(["-d", data]);
        }
        args.extend([socket, method]);
        self.run(&args)
    }
}

fn json(output: &Output) -> serde_json::Value {
    assert_eq!(output.code, 0, "{}{}", output.stdout, output.stderr);
    serde_json::from_str(&output.stdout).unwrap()
}

const TARGET: &str =
    r#""scan_type": "SCAN_TYPE_CODE", "resource_type": "RESOURCE_TYPE_AWS_LAMBDA_FUNCTION""#;

#[test]
fn list_describe_and_health() {
    let sidecar = Sidecar::start();
    let grpcurl = Grpcurl::new(&sidecar);
    let list = grpcurl.tcp(None, &["list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    for service in [
        "grpc.health.v1.Health",
        "inspectorkeyd.v1.EncryptionKeyService",
        "inspectorkeyd.v1.LocalKmsService",
    ] {
        assert!(
            list.stdout.lines().any(|l| l == service),
            "{service} not in {}",
            list.stdout
        );
    }
    let describe = grpcurl.tcp(None, &["describe", "inspectorkeyd.v1.EncryptionKeyService"]);
    assert_eq!(describe.code, 0, "{}", describe.stderr);
    for rpc in [
        "rpc GetEncryptionKey",
        "rpc UpdateEncryptionKey",
        "rpc ResetEncryptionKey",
    ] {
        assert!(describe.stdout.contains(rpc), "{}", describe.stdout);
    }
    let health = grpcurl.tcp(None, &["grpc.health.v1.Health/Check"]);
    assert_eq!(json(&health)["status"], "SERVING");
    let health = grpcurl.unix(
        Some(r#"{"service": "inspectorkeyd.v1.EncryptionKeyService"}"#),
        "grpc.health.v1.Health/Check",
    );
    assert_eq!(json(&health)["status"], "SERVING");
}

#[test]
fn update_get_reset_flow_and_error_details() {
    let sidecar = Sidecar::start();
    let grpcurl = Grpcurl::new(&sidecar);
    let get = "inspectorkeyd.v1.EncryptionKeyService/GetEncryptionKey";

    // No key yet: NOT_FOUND (grpcurl exits 64 + 5) with the AWS_OWNED_KEY reason printed.
    let before = grpcurl.tcp(Some(&format!("{{{TARGET}}}")), &[get]);
    assert_eq!(before.code, 69, "{}{}", before.stdout, before.stderr);
    assert!(
        before.stderr.contains("Code: NotFound"),
        "{}",
        before.stderr
    );
    assert!(
        before.stderr.contains(r#""reason":"AWS_OWNED_KEY""#),
        "{}",
        before.stderr
    );

    let created = json(&grpcurl.unix(
        Some(r#"{"description": "inspector code scanning"}"#),
        "inspectorkeyd.v1.LocalKmsService/CreateKey",
    ));
    let arn = created["keyMetadata"]["arn"].as_str().unwrap().to_owned();
    assert_eq!(created["keyMetadata"]["keySpec"], "SYMMETRIC_DEFAULT");

    let update = json(&grpcurl.unix(
        Some(&format!(r#"{{"kms_key_id": "{arn}", {TARGET}}}"#)),
        "inspectorkeyd.v1.EncryptionKeyService/UpdateEncryptionKey",
    ));
    assert_eq!(update["applied"], true);
    assert_eq!(update["report"]["passed"], true);

    let after = json(&grpcurl.tcp(Some(&format!("{{{TARGET}}}")), &[get]));
    assert_eq!(after["kmsKeyId"], arn.as_str());

    // The cache says where answers come from; grpcurl -v prints the response metadata.
    let addr = sidecar.tcp.to_string();
    let target = format!("{{{TARGET}}}");
    let verbose = grpcurl.run(&["-plaintext", "-v", "-d", &target, &addr, get]);
    assert_eq!(verbose.code, 0, "{}", verbose.stderr);
    assert!(
        verbose.stdout.contains("x-keyd-cache: hit"),
        "{}",
        verbose.stdout
    );
    assert!(verbose.stdout.contains("\nage: "), "{}", verbose.stdout);

    let reset = grpcurl.unix(
        Some(&format!("{{{TARGET}}}")),
        "inspectorkeyd.v1.EncryptionKeyService/ResetEncryptionKey",
    );
    assert_eq!(json(&reset), serde_json::json!({}));
    assert_eq!(grpcurl.tcp(Some(&format!("{{{TARGET}}}")), &[get]).code, 69);

    // A refused request: INVALID_ARGUMENT (64 + 3) with the BadRequest violation printed.
    let refused = grpcurl.unix(
        Some(&format!(r#"{{"kms_key_id": "alias/inspector", {TARGET}}}"#)),
        "inspectorkeyd.v1.EncryptionKeyService/UpdateEncryptionKey",
    );
    assert_eq!(refused.code, 67, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("google.rpc.BadRequest"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains(r#""field":"kms_key_id""#),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("only key ARNs are accepted"),
        "{}",
        refused.stderr
    );

    // Read-only over TCP: PERMISSION_DENIED (64 + 7) naming the role.
    let denied = grpcurl.tcp(
        Some(&format!(r#"{{"kms_key_id": "{arn}", {TARGET}}}"#)),
        &["inspectorkeyd.v1.EncryptionKeyService/UpdateEncryptionKey"],
    );
    assert_eq!(denied.code, 71, "{}", denied.stderr);
    assert!(
        denied.stderr.contains(r#""reason":"ROLE_REQUIRED""#),
        "{}",
        denied.stderr
    );
    assert!(Path::new(&sidecar.socket).exists());
}

#[test]
fn mtls_and_bearer_tokens() {
    use common::pki::{Ca, ClientName};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("grpcurl test CA");
    let ca_file = ca.write(dir.path(), "ca");
    let server = ca.server(dir.path(), "server");
    let deployer = ca.client(
        dir.path(),
        "deployer",
        ClientName::Spiffe("spiffe://example.org/ns/prod/sa/deployer"),
    );
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nrole = \"admin\"\nspiffe_id = \"spiffe://example.org/ns/prod/sa/deployer\"\n",
    )
    .unwrap();
    let path = |p: &std::path::Path| format!("{:?}", p.to_str().unwrap());
    let sidecar = Sidecar::start_with(&format!(
        "[authz]\nrules_file = {}\n[tls]\nlisten = \"127.0.0.1:0\"\ncert_file = {}\nkey_file = {}\nclient_ca_files = [{}]\n",
        path(&rules),
        path(&server.cert),
        path(&server.key),
        path(&ca_file)
    ));
    let grpcurl = Grpcurl::new(&sidecar);
    let tls = sidecar.tls.unwrap().to_string();
    let (cacert, cert, key) = (
        ca_file.to_str().unwrap(),
        deployer.cert.to_str().unwrap(),
        deployer.key.to_str().unwrap(),
    );
    let data = format!("{{{TARGET}}}");
    let get = "inspectorkeyd.v1.EncryptionKeyService/GetEncryptionKey";

    let with_cert = grpcurl.run(&[
        "-cacert", cacert, "-cert", cert, "-key", key, "-d", &data, &tls, get,
    ]);
    assert_eq!(
        with_cert.code, 69,
        "admin reads: NOT_FOUND (AWS owned key)\n{}",
        with_cert.stderr
    );
    assert!(
        with_cert.stderr.contains("AWS_OWNED_KEY"),
        "{}",
        with_cert.stderr
    );
    let list = grpcurl.run(&["-cacert", cacert, "-cert", cert, "-key", key, &tls, "list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let without_cert = grpcurl.run(&["-cacert", cacert, "-d", &data, &tls, get]);
    assert_ne!(without_cert.code, 0);
    assert_ne!(
        without_cert.code, 69,
        "no certificate, no answer: {}",
        without_cert.stderr
    );

    // The Unix socket user is not in these rules; the generated admin token is not either
    // (a rules file replaces the defaults), so a bearer token here is unknown.
    let token = grpcurl.run(&[
        "-plaintext",
        "-H",
        "authorization: Bearer not-a-known-token",
        "-d",
        &data,
        &sidecar.tcp.to_string(),
        get,
    ]);
    assert_eq!(token.code, 64 + 16, "UNAUTHENTICATED: {}", token.stderr);
}

#[test]
fn bearer_token_over_loopback_tcp() {
    let sidecar = Sidecar::start();
    let grpcurl = Grpcurl::new(&sidecar);
    let addr = sidecar.tcp.to_string();
    let header = format!("authorization: Bearer {}", sidecar.admin_token());
    let data = format!("{{{TARGET}}}");
    let reset = "inspectorkeyd.v1.EncryptionKeyService/ResetEncryptionKey";
    let anonymous = grpcurl.run(&["-plaintext", "-d", &data, &addr, reset]);
    assert_eq!(anonymous.code, 64 + 7, "{}", anonymous.stderr);
    let admin = grpcurl.run(&["-plaintext", "-H", &header, "-d", &data, &addr, reset]);
    assert_eq!(admin.code, 0, "{}", admin.stderr);
}
