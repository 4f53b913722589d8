//! Caller identity and authorization through the real server: mTLS with SPIFFE IDs, Unix
//! peer credentials, bearer tokens, hot reload of the rules and of the TLS files, and the
//! audit log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use common::{
    pki::{Ca, ClientName, Pair},
    *,
};
use inspector_keyd::proto::{
    self, encryption_key_service_client::EncryptionKeyServiceClient,
    local_kms_service_client::LocalKmsServiceClient,
};
use tonic::{Code, Request};
use tonic_types::StatusExt;

const DEPLOYER: &str = "spiffe://example.org/ns/prod/sa/deployer";
const APP: &str = "spiffe://example.org/ns/prod/sa/app";

fn my_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

fn toml_path(path: &Path) -> String {
    format!("{:?}", path.to_str().unwrap())
}

struct TlsSetup {
    dir: tempfile::TempDir,
    ca: Ca,
    server: Pair,
}

impl TlsSetup {
    fn new() -> TlsSetup {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test clients and server CA");
        let server = ca.server(dir.path(), "server");
        TlsSetup { dir, ca, server }
    }

    fn config(&self, rules: &Path, extra: &str) -> String {
        let ca_file = self.ca.write(self.dir.path(), "ca");
        format!(
            "[authz]\nrules_file = {}\nreload_interval = \"100ms\"\n[tls]\nlisten = \"127.0.0.1:0\"\ncert_file = {}\nkey_file = {}\nclient_ca_files = [{}]\n{extra}\n",
            toml_path(rules),
            toml_path(&self.server.cert),
            toml_path(&self.server.key),
            toml_path(&ca_file),
        )
    }
}

fn write_rules(path: &Path, rules: &str) {
    write_whole(path, rules, 0o644);
}

#[tokio::test]
async fn mtls_spiffe_ids_map_to_roles() {
    let setup = TlsSetup::new();
    let rules = setup.dir.path().join("rules.toml");
    write_rules(
        &rules,
        &format!(
            "[[rule]]\nrole = \"admin\"\nspiffe_id = \"{DEPLOYER}\"\n[[rule]]\nrole = \"read-only\"\nspiffe_trust_domain = \"example.org\"\n"
        ),
    );
    let sidecar = Sidecar::start_with(&setup.config(&rules, ""));
    let tls = sidecar.tls.expect("TLS listener");
    let ca = setup.ca.pem();
    let deployer = setup
        .ca
        .client(setup.dir.path(), "deployer", ClientName::Spiffe(DEPLOYER));
    let app = setup
        .ca
        .client(setup.dir.path(), "app", ClientName::Spiffe(APP));

    let admin_channel = tls_channel(tls, &ca, Some(&deployer)).await.unwrap();
    let arn = LocalKmsServiceClient::new(admin_channel.clone())
        .create_key(proto::CreateKeyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .arn;
    let mut admin = EncryptionKeyServiceClient::new(admin_channel);
    admin
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap();

    let mut reader =
        EncryptionKeyServiceClient::new(tls_channel(tls, &ca, Some(&app)).await.unwrap());
    assert_eq!(
        reader
            .get_encryption_key(get_request(LAMBDA))
            .await
            .unwrap()
            .into_inner()
            .kms_key_id,
        arn
    );
    let status = reader
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "ROLE_REQUIRED");
    let details = status.get_error_details();
    let info = details.error_info().unwrap();
    assert_eq!(info.metadata["caller"], APP);
    assert_eq!(info.metadata["required_role"], "admin");

    // A certificate from another CA, or none at all, does not get a connection.
    let stranger_ca = Ca::new("someone else's CA");
    let stranger = stranger_ca.client(setup.dir.path(), "stranger", ClientName::Spiffe(DEPLOYER));
    for client in [Some(&stranger), None] {
        let result = match tls_channel(tls, &ca, client).await {
            Ok(channel) => EncryptionKeyServiceClient::new(channel)
                .get_encryption_key(get_request(LAMBDA))
                .await
                .map(drop),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        };
        // With TLS 1.3 the client learns of the refusal at its first request, as a broken
        // transport (reported as UNAVAILABLE, UNKNOWN or CANCELLED), never an answer.
        let status = result.unwrap_err();
        assert!(
            matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ),
            "{status:?}"
        );
    }
    let logged = eventually(Duration::from_secs(5), || async {
        sidecar.log().contains("TLS handshake refused")
    })
    .await;
    assert!(logged, "{}", sidecar.log());
    // The Unix socket user has no rule here: deny by default.
    let status = sidecar
        .admin_keys()
        .await
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn dns_and_common_names_identify_callers_without_spiffe_ids() {
    let setup = TlsSetup::new();
    let rules = setup.dir.path().join("rules.toml");
    write_rules(
        &rules,
        "[[rule]]\nrole = \"read-only\"\ndns_name = \"reader.internal\"\n[[rule]]\nrole = \"read-only\"\ncommon_name = \"batch-reader\"\n",
    );
    let sidecar = Sidecar::start_with(&setup.config(&rules, ""));
    let ca = setup.ca.pem();
    for (stem, name) in [
        ("dns", ClientName::Dns("reader.internal")),
        ("cn", ClientName::CommonName("batch-reader")),
    ] {
        let client = setup.ca.client(setup.dir.path(), stem, name);
        let mut reader = EncryptionKeyServiceClient::new(
            tls_channel(sidecar.tls.unwrap(), &ca, Some(&client))
                .await
                .unwrap(),
        );
        let status = reader
            .get_encryption_key(get_request(LAMBDA))
            .await
            .unwrap_err();
        assert_eq!(reason(&status), "AWS_OWNED_KEY", "{stem}: {status:?}");
    }
    let unknown = setup.ca.client(
        setup.dir.path(),
        "unknown",
        ClientName::CommonName("someone"),
    );
    let mut client = EncryptionKeyServiceClient::new(
        tls_channel(sidecar.tls.unwrap(), &ca, Some(&unknown))
            .await
            .unwrap(),
    );
    let status = client
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::PermissionDenied, "ROLE_REQUIRED")
    );
    assert!(
        status.message().contains("cn:someone"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn unix_peers_by_uid_and_rules_reload_on_change_and_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    write_rules(
        &rules,
        &format!("[[rule]]\nrole = \"read-only\"\nunix_uid = {}\n", my_uid()),
    );
    let sidecar = Sidecar::start_with(&format!(
        "[authz]\nrules_file = {}\nreload_interval = \"100ms\"\n",
        toml_path(&rules)
    ));
    let arn = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000000";
    let mut keys = sidecar.admin_keys().await;
    // Whether an Update is soon answered `code`: FAILED_PRECONDITION (the unknown key is
    // refused by verification) means authorization let it through.
    let probe = keys.clone();
    let soon_answered = |code: Code| {
        let keys = probe.clone();
        eventually(Duration::from_secs(10), move || {
            let mut keys = keys.clone();
            async move {
                keys.update_encryption_key(update_request(arn))
                    .await
                    .unwrap_err()
                    .code()
                    == code
            }
        })
    };
    let status = keys
        .update_encryption_key(update_request(arn))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::PermissionDenied, "ROLE_REQUIRED")
    );
    assert!(
        status.message().contains(&format!("unix:uid={}", my_uid())),
        "{}",
        status.message()
    );

    // Made admin in the file: the change is picked up without a restart.
    write_rules(
        &rules,
        &format!("[[rule]]\nrole = \"admin\"\nunix_uid = {}\n", my_uid()),
    );
    let admitted = soon_answered(Code::FailedPrecondition).await;
    assert!(
        admitted,
        "the new rules were not applied:\n{}",
        sidecar.log()
    );

    // A broken file is refused and the rules in force stay, also on SIGHUP.
    write_rules(&rules, "[[rule]]\nrole = \"admin\"\n");
    sidecar.signal("HUP");
    let refused = eventually(Duration::from_secs(10), || async {
        sidecar.log().contains("new authorization rules refused")
    })
    .await;
    assert!(refused, "{}", sidecar.log());
    assert!(
        sidecar.log().contains("rule 1 (admin): give one of"),
        "{}",
        sidecar.log()
    );
    let status = keys
        .update_encryption_key(update_request(arn))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "still admin: {status:?}"
    );

    // SIGHUP alone (no time for the change check) applies a valid file.
    write_rules(
        &rules,
        &format!(
            "[[rule]]\nrole = \"read-only\"\nunix_gid = {}\n",
            rustix::process::getgid().as_raw()
        ),
    );
    sidecar.signal("HUP");
    let demoted = soon_answered(Code::PermissionDenied).await;
    assert!(demoted, "{}", sidecar.log());

    // A file others may write is refused at a reload too, and the rules in force stay; once
    // its mode is fixed (the same content), it is read again.
    use std::os::unix::fs::PermissionsExt;
    write_whole(
        &rules,
        &format!("[[rule]]\nrole = \"admin\"\nunix_uid = {}\n", my_uid()),
        0o666,
    );
    let refused = eventually(Duration::from_secs(10), || async {
        sidecar
            .log()
            .contains("writable by group or others (mode 0666)")
    })
    .await;
    assert!(refused, "{}", sidecar.log());
    let status = keys
        .update_encryption_key(update_request(arn))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "still read-only");
    std::fs::set_permissions(&rules, std::fs::Permissions::from_mode(0o644)).unwrap();
    let admitted = soon_answered(Code::FailedPrecondition).await;
    assert!(admitted, "{}", sidecar.log());
}

#[tokio::test]
async fn bearer_tokens_are_hashed_in_config_and_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let admin_token = "admin-token-4f1c2a9e7d3b";
    let reader_token = "reader-token-81be0c55aa12";
    let sha = sha256_hex;
    let rules = dir.path().join("rules.toml");
    write_rules(
        &rules,
        &format!(
            "[[rule]]\nrole = \"admin\"\ntoken_sha256 = \"{}\"\n[[rule]]\nrole = \"read-only\"\ntoken_sha256 = \"{}\"\n",
            sha(admin_token),
            sha(reader_token)
        ),
    );
    assert!(
        !std::fs::read_to_string(&rules)
            .unwrap()
            .contains(admin_token)
    );
    let audit = dir.path().join("audit.jsonl");
    let sidecar = Sidecar::start_with(&format!(
        "[authz]\nrules_file = {}\nloopback_anonymous_role = \"none\"\naudit_file = {}\n",
        toml_path(&rules),
        toml_path(&audit)
    ));
    let mut client = sidecar.read_only_keys().await;
    let arn = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000000";

    let status = client
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::Unauthenticated, "UNAUTHENTICATED")
    );
    let status = client
        .get_encryption_key(with_token(get_request(LAMBDA), "guessed-token"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut malformed = Request::new(get_request(LAMBDA));
    malformed
        .metadata_mut()
        .insert("authorization", "Basic YWRtaW46YWRtaW4=".parse().unwrap());
    assert_eq!(
        client
            .get_encryption_key(malformed)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    let status = client
        .get_encryption_key(with_token(get_request(LAMBDA), reader_token))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "AWS_OWNED_KEY", "the reader token reads");
    let status = client
        .update_encryption_key(with_token(update_request(arn), reader_token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("token:sha256:"),
        "{}",
        status.message()
    );
    let status = client
        .update_encryption_key(with_token(update_request(arn), admin_token))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "the admin token passes authorization"
    );

    // A secret-bearing read that is allowed is audited; a plain read that is allowed is not.
    let reads = client
        .batch_get_code_snippet(with_token(
            proto::BatchGetCodeSnippetRequest {
                finding_arns: vec![
                    "arn:aws:inspector2:us-east-1:111122223333:finding/0123456789abcdef0123456789abcdef"
                        .into(),
                ],
            },
            admin_token,
        ))
        .await;
    assert!(reads.is_ok(), "{reads:?}");

    let audit_text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<serde_json::Value> = audit_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let allowed = |rpc: &str| {
        lines
            .iter()
            .filter(|l| {
                l["rpc"].as_str().is_some_and(|r| r.ends_with(rpc)) && l["decision"] == "allowed"
            })
            .count()
    };
    assert_eq!(allowed("/BatchGetCodeSnippet"), 1, "{audit_text}");
    assert_eq!(allowed("/GetEncryptionKey"), 0, "{audit_text}");
    for secret in [
        admin_token,
        reader_token,
        "guessed-token",
        "YWRtaW46YWRtaW4=",
    ] {
        assert!(!sidecar.log().contains(secret), "{secret} in the log");
        assert!(!audit_text.contains(secret), "{secret} in the audit file");
    }
}

#[tokio::test]
async fn the_generated_admin_token_gives_admin_over_loopback_tcp() {
    let sidecar = Sidecar::start();
    let token = sidecar.admin_token();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(sidecar.state_dir().join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let mut tcp = sidecar.read_only_keys().await;
    assert_eq!(
        tcp.update_encryption_key(update_request(&arn))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    tcp.update_encryption_key(with_token(update_request(&arn), &token))
        .await
        .unwrap();
    assert!(!sidecar.log().contains(&token));
}

fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn audit_lines_for_allowed_refused_and_cancelled_mutations() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    // Writes take a known 200 ms in the backend, which the audited latency must cover.
    let sidecar = Sidecar::start_with(&format!(
        "[authz]\naudit_file = {}\n[local]\nwrite_latency = \"200ms\"\n",
        toml_path(&audit)
    ));
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let mut admin = sidecar.admin_keys().await;
    let mut allowed = Request::new(update_request(&arn));
    allowed
        .metadata_mut()
        .insert("x-request-id", "req-allowed-1".parse().unwrap());
    let called = Instant::now();
    let response = admin.update_encryption_key(allowed).await.unwrap();
    let round_trip_ms = called.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "req-allowed-1"
    );
    let mut refused = Request::new(update_request(&arn));
    refused
        .metadata_mut()
        .insert("x-request-id", "req-refused-1".parse().unwrap());
    let status = sidecar
        .read_only_keys()
        .await
        .update_encryption_key(refused)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Reads that are allowed are not audited.
    sidecar
        .read_only_keys()
        .await
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap();

    let lines = audit_lines(&audit);
    let find = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no line for {id}: {lines:?}"))
            .clone()
    };
    let line = find("req-allowed-1");
    assert_eq!(
        line["caller"],
        format!(
            "unix:uid={},gid={}",
            my_uid(),
            rustix::process::getgid().as_raw()
        )
    );
    assert_eq!(line["role"], "admin");
    assert_eq!(
        line["rpc"],
        "/inspectorkeyd.v1.EncryptionKeyService/UpdateEncryptionKey"
    );
    assert_eq!(line["key_arn"], arn.as_str());
    assert_eq!(line["scan_type"], "CODE");
    assert_eq!(line["resource_type"], "AWS_LAMBDA_FUNCTION");
    assert_eq!(line["decision"], "allowed");
    assert_eq!(line["code"], "OK");
    // The server's time for the call: at least the backend's write, and within what the
    // client waited for the answer.
    let latency_ms = line["latency_ms"].as_f64().unwrap();
    assert!(
        (200.0..=round_trip_ms).contains(&latency_ms),
        "latency_ms {latency_ms}, round trip {round_trip_ms} ms"
    );
    assert!(
        time::OffsetDateTime::parse(
            line["time"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok()
    );
    let line = find("req-refused-1");
    assert!(
        line["caller"]
            .as_str()
            .unwrap()
            .starts_with("tcp:127.0.0.1:")
    );
    assert_eq!(
        line["role"], "read-only",
        "the role the caller has, which is not enough"
    );
    assert_eq!(line["decision"], "denied");
    assert_eq!(line["code"], "PERMISSION_DENIED");
    assert_eq!(
        lines.len(),
        3,
        "CreateKey, the allowed and the refused Update: {lines:?}"
    );
    // The same lines go to the log's audit target.
    let log = sidecar.log_once_it_has("req-refused-1").await;
    assert!(
        log.contains("inspector_keyd::audit") && log.contains("req-refused-1"),
        "{log}"
    );
}

#[tokio::test]
async fn a_cancelled_mutation_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let sidecar = Sidecar::start_with(&format!(
        "[authz]\naudit_file = {}\n[local]\nwrite_latency = \"3s\"\n",
        toml_path(&audit)
    ));
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let mut admin = sidecar.admin_keys().await;
    // A read first, so the connection is up before the timed call (reads are not audited).
    admin.get_encryption_key(get_request(LAMBDA)).await.ok();
    let mut request = Request::new(update_request(&arn));
    request
        .metadata_mut()
        .insert("x-request-id", "req-cancelled-1".parse().unwrap());
    let called = Instant::now();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(800),
        admin.update_encryption_key(request),
    )
    .await;
    let waited_ms = called.elapsed().as_secs_f64() * 1000.0;
    assert!(gave_up.is_err(), "the client gave up first");
    let written = eventually(Duration::from_secs(10), || async {
        audit_lines(&audit)
            .iter()
            .any(|l| l["request_id"] == "req-cancelled-1")
    })
    .await;
    assert!(written, "{}", sidecar.log());
    let line = audit_lines(&audit)
        .into_iter()
        .find(|l| l["request_id"] == "req-cancelled-1")
        .unwrap();
    assert_eq!(line["decision"], "cancelled");
    assert_eq!(line["code"], "CANCELLED");
    assert_eq!(line["key_arn"], arn.as_str());
    // Timed until the client went away, not until the 3 s write would have ended: at least
    // most of the 800 ms the client waited (the server starts timing when the call arrives,
    // a little after the client started), and well short of the write latency.
    let latency_ms = line["latency_ms"].as_f64().unwrap();
    assert!(
        (waited_ms - 400.0..2000.0).contains(&latency_ms),
        "latency_ms {latency_ms}, the client waited {waited_ms} ms"
    );
}

#[tokio::test]
async fn tls_files_reload_when_they_change() {
    let setup = TlsSetup::new();
    let rules = setup.dir.path().join("rules.toml");
    write_rules(
        &rules,
        "[[rule]]\nrole = \"read-only\"\nspiffe_trust_domain = \"example.org\"\n",
    );
    let sidecar = Sidecar::start_with(&setup.config(&rules, ""));
    let app = setup
        .ca
        .client(setup.dir.path(), "app", ClientName::Spiffe(APP));
    let call = |ca_pem: String, app: &Pair| {
        let cert_pem = app.cert_pem.clone();
        let key_pem = app.key_pem.clone();
        let tls = sidecar.tls.unwrap();
        async move {
            let pair = Pair {
                cert: Default::default(),
                key: Default::default(),
                cert_pem,
                key_pem,
            };
            match tls_channel(tls, &ca_pem, Some(&pair)).await {
                Ok(channel) => {
                    let status = EncryptionKeyServiceClient::new(channel)
                        .get_encryption_key(get_request(LAMBDA))
                        .await
                        .unwrap_err();
                    status.code() == Code::NotFound
                }
                Err(_) => false,
            }
        }
    };
    assert!(call(setup.ca.pem(), &app).await);

    // A new server certificate from another CA replaces the old one in place.
    let new_ca = Ca::new("rotated server CA");
    let rotated = new_ca.server(setup.dir.path(), "rotated");
    std::fs::copy(&rotated.key, &setup.server.key).unwrap();
    std::fs::copy(&rotated.cert, &setup.server.cert).unwrap();
    let picked_up = eventually(Duration::from_secs(10), || call(new_ca.pem(), &app)).await;
    assert!(picked_up, "{}", sidecar.log());
    assert!(
        !call(setup.ca.pem(), &app).await,
        "the old server certificate is gone"
    );
}

#[tokio::test]
async fn token_only_tls_callers_need_a_token() {
    let setup = TlsSetup::new();
    let rules = setup.dir.path().join("rules.toml");
    let token = "tls-reader-token-77";
    let hash = sha256_hex(token);
    write_rules(
        &rules,
        &format!("[[rule]]\nrole = \"read-only\"\ntoken_sha256 = \"{hash}\"\n"),
    );
    let sidecar = Sidecar::start_with(&setup.config(&rules, "allow_token_only = true"));
    let channel = tls_channel(sidecar.tls.unwrap(), &setup.ca.pem(), None)
        .await
        .unwrap();
    let mut client = EncryptionKeyServiceClient::new(channel);
    let status = client
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "no certificate and no token"
    );
    let status = client
        .get_encryption_key(with_token(get_request(LAMBDA), token))
        .await
        .unwrap_err();
    assert_eq!(
        reason(&status),
        "AWS_OWNED_KEY",
        "the token is enough: {status:?}"
    );
}

#[tokio::test]
async fn tls_handshakes_are_bounded_and_a_silent_tls_client_meets_the_preface_deadline() {
    let setup = TlsSetup::new();
    let rules = setup.dir.path().join("rules.toml");
    write_rules(
        &rules,
        &format!("[[rule]]\nrole = \"read-only\"\nspiffe_id = \"{APP}\"\n"),
    );
    let sidecar = Sidecar::start_with(&setup.config(
        &rules,
        "[connections]\nmax_tls_handshakes = 2\ntls_handshake_timeout = \"2s\"\npreface_timeout = \"1s\"\n",
    ));
    let tls = sidecar.tls.expect("TLS listener");
    // Two clients that never start their handshakes hold both places; a third is closed
    // at once instead of waiting.
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(tls).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = tokio::net::TcpStream::connect(tls).await.unwrap();
    assert!(closed_within(&mut third, Duration::from_millis(500)).await);
    // The silent two are closed at their handshake deadline, and others get in again.
    for io in &mut silent {
        assert!(closed_within(io, Duration::from_secs(10)).await);
    }
    assert!(started.elapsed() >= Duration::from_secs(2));
    let app = setup
        .ca
        .client(setup.dir.path(), "app", ClientName::Spiffe(APP));
    let channel = tls_channel(tls, &setup.ca.pem(), Some(&app)).await.unwrap();
    let status = EncryptionKeyServiceClient::new(channel)
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // A client that finishes its handshake but never sends the HTTP/2 preface is closed
    // at the preface deadline.
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    roots
        .add(CertificateDer::from_pem_slice(setup.ca.pem().as_bytes()).unwrap())
        .unwrap();
    let client_config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(app.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(app.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_config));
    let handshaken = Instant::now();
    let mut quiet = connector
        .connect(
            ServerName::try_from("localhost").unwrap(),
            tokio::net::TcpStream::connect(tls).await.unwrap(),
        )
        .await
        .unwrap();
    assert!(closed_within(&mut quiet, Duration::from_secs(5)).await);
    assert!(handshaken.elapsed() >= Duration::from_millis(900));

    let metrics = sidecar.scrape_metrics();
    let count = |family: &str, reason: &str| {
        sample(
            &metrics,
            family,
            "_total",
            &[("listener", "tls"), ("reason", reason)],
        )
    };
    assert_eq!(
        count("inspector_keyd_connections_refused", "tls_handshakes_full"),
        Some(1.0)
    );
    assert_eq!(
        count("inspector_keyd_connections_cut", "no_preface"),
        Some(1.0)
    );
}

/// `serve` in `dir` with loopback ports and `config`, expected to refuse to start: its
/// stderr.
fn refused_start(dir: &Path, config: &str) -> String {
    let config_file = dir.join("config.toml");
    std::fs::write(&config_file, config).unwrap();
    let mut command = std::process::Command::new(BIN);
    command
        .arg("serve")
        .arg("--config")
        .arg(&config_file)
        .current_dir(dir);
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("INSPECTOR_KEYD_")) {
        command.env_remove(name);
    }
    command
        .env("INSPECTOR_KEYD_LISTEN__TCP", "127.0.0.1:0")
        .env("INSPECTOR_KEYD_OPS__METRICS_LISTEN", "127.0.0.1:0")
        .env("INSPECTOR_KEYD_AWS_API__LISTEN", "127.0.0.1:0");
    // Bounded: a server that starts after all must fail the test, not hang it.
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{stderr}");
    stderr
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test]
async fn files_the_sidecar_creates_are_private_and_files_it_trusts_must_be() {
    use std::os::unix::fs::PermissionsExt;
    let set_mode = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // A planted admin token others can write does not make its writer admin.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let token = state.join("admin.token");
    std::fs::write(&token, "a\n").unwrap();
    set_mode(&token, 0o644);
    let stderr = refused_start(dir.path(), "");
    assert!(
        stderr.contains("admin.token") && stderr.contains("mode 0644"),
        "{stderr}"
    );
    // Private, but too short to be a token the sidecar made.
    set_mode(&token, 0o600);
    let stderr = refused_start(dir.path(), "");
    assert!(stderr.contains("holds 1 bytes"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&token).unwrap(), "a\n");
    // A link where the token would be is not followed.
    std::fs::remove_file(&token).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::write(&elsewhere, format!("{}\n", "c".repeat(64))).unwrap();
    set_mode(&elsewhere, 0o600);
    std::os::unix::fs::symlink(&elsewhere, &token).unwrap();
    let stderr = refused_start(dir.path(), "");
    assert!(stderr.contains("not a regular file"), "{stderr}");
    std::fs::remove_file(&token).unwrap();

    // A rules file others may write is refused, naming it and its mode.
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "[[rule]]\nrole = \"admin\"\nunix_uid = 0\n").unwrap();
    set_mode(&rules, 0o666);
    let stderr = refused_start(dir.path(), &format!("[authz]\nrules_file = {rules:?}\n"));
    assert!(
        stderr.contains("rules.toml") && stderr.contains("writable by group or others (mode 0666)"),
        "{stderr}"
    );
    // So is an identity policy file.
    let policy = dir.path().join("identity.json");
    std::fs::write(&policy, "{\"Version\":\"2012-10-17\",\"Statement\":[]}").unwrap();
    set_mode(&policy, 0o664);
    let stderr = refused_start(
        dir.path(),
        &format!("[verification]\nidentity_policy_files = [{policy:?}]\n"),
    );
    assert!(
        stderr.contains("identity.json") && stderr.contains("mode 0664"),
        "{stderr}"
    );
    // And a permissions boundary file.
    let stderr = refused_start(
        dir.path(),
        &format!("[verification]\npermissions_boundary_file = {policy:?}\n"),
    );
    assert!(
        stderr.contains("cannot read permissions boundary file")
            && stderr.contains("identity.json")
            && stderr.contains("mode 0664"),
        "{stderr}"
    );

    // What a fresh start creates is private to the server.
    let audit_dir = tempfile::tempdir().unwrap();
    let audit = audit_dir.path().join("audit.log");
    let sidecar = Sidecar::start_with(&format!("[authz]\naudit_file = {audit:?}\n"));
    sidecar
        .admin_keys()
        .await
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    let state = sidecar.state_dir();
    assert_eq!(mode_of(&state), 0o700);
    for file in [
        state.join("admin.token"),
        state.join("keyd.redb"),
        state.join("kek"),
        audit,
    ] {
        assert_eq!(mode_of(&file), 0o600, "{file:?}");
    }
}

/// The attack of issue 28: the rules file in a directory another user (here, the group) may
/// write, its link swapped there to rules of that user's choosing.
#[tokio::test]
async fn a_rules_file_reached_through_a_group_writable_directory_or_a_link_swapped_there_is_refused_and_the_trusted_rules_stay()
 {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let set_mode = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    set_mode(&shared, 0o755);
    write_rules(
        &shared.join("read-only.toml"),
        &format!("[[rule]]\nrole = \"read-only\"\nunix_uid = {}\n", my_uid()),
    );
    write_rules(
        &shared.join("admin.toml"),
        &format!("[[rule]]\nrole = \"admin\"\nunix_uid = {}\n", my_uid()),
    );
    let rules = shared.join("rules.toml");
    symlink("read-only.toml", &rules).unwrap();
    let config = format!(
        "[authz]\nrules_file = {}\nreload_interval = \"100ms\"\n",
        toml_path(&rules)
    );
    let loose = format!(
        "`{}` (on the way to `{}`) is writable by group (mode 0775) and not sticky",
        shared.display(),
        rules.display()
    );

    // Running on the trusted rules (read-only), the directory becomes group-writable and the
    // link is swapped there to rules making the caller admin: refused, at the change check
    // and at SIGHUP, and the caller stays read-only.
    let sidecar = Sidecar::start_with(&config);
    let arn = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000000";
    let mut keys = sidecar.admin_keys().await;
    let status = keys
        .update_encryption_key(update_request(arn))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::PermissionDenied, "ROLE_REQUIRED")
    );
    set_mode(&shared, 0o775);
    let swapped = shared.join("rules.swap");
    symlink("admin.toml", &swapped).unwrap();
    std::fs::rename(&swapped, &rules).unwrap();
    let refusals = || {
        sidecar
            .log()
            .lines()
            .filter(|l| l.contains("new authorization rules refused") && l.contains(&loose))
            .count()
    };
    let refused = eventually(Duration::from_secs(10), || async { refusals() >= 1 }).await;
    assert!(refused, "{}", sidecar.log());
    // A forced reload, which surely reads the swapped link.
    sidecar.signal("HUP");
    let refused = eventually(Duration::from_secs(10), || async { refusals() >= 2 }).await;
    assert!(refused, "{}", sidecar.log());
    let status = keys
        .update_encryption_key(update_request(arn))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::PermissionDenied, "ROLE_REQUIRED"),
        "the trusted rules stay: {status:?}"
    );

    // Once the directory is the server's alone again, what it holds is read again.
    set_mode(&shared, 0o755);
    let admitted = eventually(Duration::from_secs(10), || {
        let mut keys = keys.clone();
        async move {
            keys.update_encryption_key(update_request(arn))
                .await
                .unwrap_err()
                .code()
                == Code::FailedPrecondition
        }
    })
    .await;
    assert!(admitted, "{}", sidecar.log());

    // At start: refused, naming the directory and its mode.
    set_mode(&shared, 0o775);
    let stderr = refused_start(dir.path(), &config);
    assert!(stderr.contains(&loose), "{stderr}");
}

#[tokio::test]
async fn source_code_and_stored_key_verification_need_the_code_reader_role() {
    use proto::verify_key_policy_request::Key;
    let dir = tempfile::tempdir().unwrap();
    let sha = sha256_hex;
    let (reader, code_reader) = (
        "reader-token-3b7f19e2c0d4",
        "code-reader-token-9a2e4d61f7b8",
    );
    let rules = dir.path().join("rules.toml");
    write_rules(
        &rules,
        &format!(
            "[[rule]]\nrole = \"admin\"\nunix_uid = {}\n[[rule]]\nrole = \"read-only\"\ntoken_sha256 = \"{}\"\n[[rule]]\nrole = \"code-reader\"\ntoken_sha256 = \"{}\"\n",
            my_uid(),
            sha(reader),
            sha(code_reader)
        ),
    );
    let audit = dir.path().join("audit.jsonl");
    let sidecar = Sidecar::start_with(&format!(
        "[authz]\nrules_file = {}\naudit_file = {}\n",
        toml_path(&rules),
        toml_path(&audit)
    ));
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let snippets = || proto::BatchGetCodeSnippetRequest {
        finding_arns: vec![
            "arn:aws:inspector2:us-east-1:111122223333:finding/0123456789abcdef0123456789abcdef"
                .into(),
        ],
    };
    let stored = |principal: &str| proto::VerifyKeyPolicyRequest {
        profile: "codeguru-grants".into(),
        key: Some(Key::KmsKeyId(arn.clone())),
        principal_arn: principal.into(),
        ..Default::default()
    };
    let inline = proto::VerifyKeyPolicyRequest {
        profile: "codeguru-grants".into(),
        key: Some(Key::InlineKey(proto::InlineKey {
            key_policy: r#"{"Version": "2012-10-17", "Statement": []}"#.into(),
            key_metadata_json: String::new(),
        })),
        ..Default::default()
    };
    let mut client = sidecar.read_only_keys().await;
    let role_required = |status: tonic::Status| {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(reason(&status), "ROLE_REQUIRED");
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.metadata["required_role"], "code-reader", "{status:?}");
    };

    // Anonymous loopback callers and read-only tokens: no source code, no stored key's
    // report; documents given inline are verified.
    for token in [None, Some(reader)] {
        fn request<T>(message: T, token: Option<&str>) -> Request<T> {
            match token {
                Some(token) => with_token(message, token),
                None => Request::new(message),
            }
        }
        role_required(
            client
                .batch_get_code_snippet(request(snippets(), token))
                .await
                .unwrap_err(),
        );
        role_required(
            client
                .verify_key_policy(request(stored(""), token))
                .await
                .unwrap_err(),
        );
        // Answered (what it finds in these documents is not the point here).
        let report = client
            .verify_key_policy(request(inline.clone(), token))
            .await
            .unwrap()
            .into_inner()
            .report;
        assert!(report.is_some());
    }

    // code-reader: both, for the configured principal only; still not admin.
    let answer = client
        .batch_get_code_snippet(with_token(snippets(), code_reader))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.errors.len(), 1);
    let report = client
        .verify_key_policy(with_token(stored(""), code_reader))
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    assert!(report.passed, "{report:?}");
    let picked = client
        .verify_key_policy(with_token(
            stored("arn:aws:iam::111122223333:role/someone-else"),
            code_reader,
        ))
        .await
        .unwrap_err();
    assert_eq!(picked.code(), Code::InvalidArgument);
    assert!(picked.message().contains("principal_arn"), "{picked:?}");
    let status = client
        .update_encryption_key(with_token(update_request(&arn), code_reader))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // The audit names who asked about what, allowed or not; a token is named as itself,
    // whatever connection carried it.
    let mut admin_over_socket = sidecar.admin_keys().await;
    let unknown = admin_over_socket
        .verify_key_policy(with_token(stored(""), "not-a-known-token-5d1e"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);
    let lines = audit_lines(&audit);
    let verify = "/inspectorkeyd.v1.EncryptionKeyService/VerifyKeyPolicy";
    let of = |caller_prefix: &str, decision: &str| {
        lines
            .iter()
            .filter(|l| {
                l["rpc"] == verify
                    && l["decision"] == decision
                    && l["caller"].as_str().unwrap().starts_with(caller_prefix)
            })
            .count()
    };
    let code_reader_id = format!("token:sha256:{}", &sha(code_reader)[..12]);
    let reader_id = format!("token:sha256:{}", &sha(reader)[..12]);
    let unknown_id = format!("token:sha256:{}", &sha("not-a-known-token-5d1e")[..12]);
    assert_eq!(of(&code_reader_id, "allowed"), 2, "{lines:#?}");
    assert_eq!(of(&reader_id, "denied"), 1, "{lines:#?}");
    assert_eq!(of("tcp:127.0.0.1", "denied"), 1, "{lines:#?}");
    let refused_token = lines
        .iter()
        .find(|l| l["caller"] == unknown_id.as_str())
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(refused_token["decision"], "denied");
    assert_eq!(refused_token["role"], serde_json::Value::Null);
    assert!(
        refused_token["connection"]
            .as_str()
            .unwrap()
            .starts_with(&format!("unix:uid={}", my_uid())),
        "{refused_token}"
    );
    let allowed = lines
        .iter()
        .find(|l| l["caller"] == code_reader_id.as_str() && l["code"] == "OK" && l["rpc"] == verify)
        .unwrap();
    assert_eq!(allowed["key_arn"], arn.as_str());
    // Inline verifications are audited too (the method is secret-bearing), but never
    // as anyone's stored key.
    assert!(
        lines
            .iter()
            .all(|l| !l.to_string().contains("reader-token"))
    );
}

#[tokio::test]
async fn each_caller_has_a_quota_of_uncached_backend_calls() {
    let sidecar =
        Sidecar::start_with("[ops]\nuncached_calls_per_minute = 60\nuncached_burst = 2\n");
    let snippets = || proto::BatchGetCodeSnippetRequest {
        finding_arns: vec![
            "arn:aws:inspector2:us-east-1:111122223333:finding/0123456789abcdef0123456789abcdef"
                .into(),
        ],
    };
    let mut socket = sidecar.code_reader_keys().await;
    for _ in 0..2 {
        socket.batch_get_code_snippet(snippets()).await.unwrap();
    }
    let spent = socket.batch_get_code_snippet(snippets()).await.unwrap_err();
    assert_eq!(spent.code(), Code::ResourceExhausted, "{spent:?}");
    assert_eq!(reason(&spent), "CALLER_QUOTA_EXCEEDED");
    let retry = spent.get_details_retry_info().unwrap().retry_delay.unwrap();
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(1),
        "{retry:?}"
    );
    // A stored key's verification draws on the same quota; cached reads do not.
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let stored = proto::VerifyKeyPolicyRequest {
        profile: "codeguru-grants".into(),
        key: Some(proto::verify_key_policy_request::Key::KmsKeyId(arn)),
        ..Default::default()
    };
    let status = socket.verify_key_policy(stored.clone()).await.unwrap_err();
    assert_eq!(reason(&status), "CALLER_QUOTA_EXCEEDED");
    assert_eq!(
        socket
            .get_encryption_key(get_request(LAMBDA))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // Another caller (the admin token, over TCP) has a quota of its own.
    let mut other = sidecar.read_only_keys().await;
    let token = sidecar.admin_token();
    other
        .batch_get_code_snippet(with_token(snippets(), &token))
        .await
        .unwrap();
    // The bucket fills again: one call a second.
    tokio::time::sleep(retry).await;
    socket.verify_key_policy(stored).await.unwrap();
}

#[tokio::test]
async fn each_trust_domain_is_vouched_for_by_its_own_ca_bundle_and_an_svid_has_one_uri() {
    let setup = TlsSetup::new();
    let dir = setup.dir.path();
    let other_ca = Ca::new("b.example CA");
    let (a_file, b_file) = (setup.ca.write(dir, "ca-a"), other_ca.write(dir, "ca-b"));
    let rules = dir.join("rules.toml");
    write_rules(
        &rules,
        "[[rule]]\nrole = \"read-only\"\nspiffe_trust_domain = \"a.example\"\n[[rule]]\nrole = \"read-only\"\nspiffe_trust_domain = \"b.example\"\n[[rule]]\nrole = \"read-only\"\nspiffe_trust_domain = \"c.example\"\n",
    );
    let sidecar = Sidecar::start_with(&format!(
        "[authz]\nrules_file = {}\n[tls]\nlisten = \"127.0.0.1:0\"\ncert_file = {}\nkey_file = {}\n[tls.trust_domain_ca_files]\n\"a.example\" = [{}]\n\"b.example\" = [{}]\n",
        toml_path(&rules),
        toml_path(&setup.server.cert),
        toml_path(&setup.server.key),
        toml_path(&a_file),
        toml_path(&b_file),
    ));
    let tls = sidecar.tls.expect("TLS listener");
    let ca = setup.ca.pem();
    let read = |pair: Pair| {
        let ca = ca.clone();
        async move {
            let channel = tls_channel(tls, &ca, Some(&pair)).await?;
            Ok::<_, tonic::transport::Error>(
                EncryptionKeyServiceClient::new(channel)
                    .get_encryption_key(get_request(LAMBDA))
                    .await,
            )
        }
    };
    let served = |outcome: Result<Result<_, tonic::Status>, _>| match outcome {
        Ok(Err(status)) => status.code() == Code::NotFound,
        _ => false,
    };
    // Vouched for by its own trust domain's CA: served. The scheme's case does not matter.
    let own = setup
        .ca
        .client(dir, "own", ClientName::Spiffe("spiffe://a.example/app"));
    assert!(served(read(own).await));
    let shouting = setup.ca.client(
        dir,
        "shouting",
        ClientName::Spiffe("SPIFFE://a.example/app"),
    );
    assert!(served(read(shouting).await));
    // b.example's CA cannot vouch for a.example, nor anyone for an unbound trust domain.
    let forged = other_ca.client(dir, "forged", ClientName::Spiffe("spiffe://a.example/app"));
    assert!(!served(read(forged).await));
    let unbound = setup
        .ca
        .client(dir, "unbound", ClientName::Spiffe("spiffe://c.example/app"));
    assert!(!served(read(unbound).await));
    // Two URI SANs: not an X.509-SVID, whichever one a reader would pick.
    let two = setup.ca.client(
        dir,
        "two",
        ClientName::Uris(&["spiffe://a.example/app", "spiffe://a.example/admin"]),
    );
    assert!(!served(read(two).await));
    // b.example's own IDs from its CA are served.
    let b = other_ca.client(dir, "b", ClientName::Spiffe("spiffe://b.example/app"));
    assert!(served(read(b).await));
    for why in [
        "does not chain to the CAs of trust domain `a.example`",
        "trust domain `c.example` is not in tls.trust_domain_ca_files",
        "has 2 URI SANs",
    ] {
        let log = sidecar.log_once_it_has(why).await;
        assert!(log.contains(why), "{why} not in:\n{log}");
    }
}
