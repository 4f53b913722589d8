//! VerifyKeyPolicy, RenderKeyPolicy and the Update gate through the real server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use inspector_keyd::proto::{self, InlineKey, verify_key_policy_request::Key};
use tonic::Code;
use tonic_types::StatusExt;

fn codes(report: &proto::VerificationReport) -> Vec<&str> {
    report.findings.iter().map(|f| f.code.as_str()).collect()
}

fn verify_request(profile: &str, key: Key) -> proto::VerifyKeyPolicyRequest {
    proto::VerifyKeyPolicyRequest {
        profile: profile.into(),
        key: Some(key),
        ..Default::default()
    }
}

#[tokio::test]
async fn render_create_verify_update() {
    let sidecar = Sidecar::start();
    let mut reader = sidecar.code_reader_keys().await;
    let rendered = reader
        .render_key_policy(proto::RenderKeyPolicyRequest {
            profile: "amazon-q-code-repository".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rendered.document_kind(),
        proto::PolicyDocumentKind::KeyPolicy
    );
    // Defaults come from the sidecar's configuration.
    assert!(
        rendered
            .policy_json
            .contains("\"aws:SourceAccount\": \"111122223333\""),
        "{}",
        rendered.policy_json
    );
    assert!(
        rendered
            .policy_json
            .contains("arn:aws:iam::111122223333:role/inspector-keyd")
    );
    assert!(
        rendered
            .policy_json
            .contains("inspector2.us-east-1.amazonaws.com")
    );

    let arn = sidecar
        .create_key(proto::CreateKeyRequest {
            policy: rendered.policy_json.clone(),
            ..Default::default()
        })
        .await;
    // Verification by ARN reads metadata and policy from the backend; read-only may do it.
    let report = verify_report(
        &mut reader,
        verify_request("amazon-q-code-repository", Key::KmsKeyId(arn.clone())),
    )
    .await;
    assert!(report.passed, "{report:?}");
    assert_eq!(report.profile, "amazon-q-code-repository");
    assert!(codes(&report).is_empty(), "{report:?}");

    // The same key fails the Lambda profile of the Amazon Q era: its statements are missing.
    let report = verify_report(
        &mut reader,
        verify_request("amazon-q-lambda", Key::KmsKeyId(arn.clone())),
    )
    .await;
    assert!(!report.passed);
    // Amazon Q's statements for Lambda are missing; the role's Lambda-scoped requests fall to
    // the account delegation, which no identity policy was given to decide.
    let mut got = codes(&report);
    got.dedup();
    assert_eq!(
        got,
        ["REQUIRED_ACCESS_MISSING", "IDENTITY_POLICY_NOT_CHECKED"],
        "{report:?}"
    );
    // One finding per cause: Amazon Q's two statements (four data-key requests, then
    // DescribeKey), and the delegation no identity policy decides.
    assert_eq!(report.findings.len(), 3, "{report:?}");
    assert_eq!(report.findings[0].requests.len(), 4, "{report:?}");
    assert!(report.findings[0].requests[0].starts_with("kms:Encrypt for arn:aws:qdeveloper:"));
    // Verification never changes anything.
    let status = reader
        .get_encryption_key(get_request(REPOSITORY))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let mut admin = sidecar.admin_keys().await;
    let updated = admin
        .update_encryption_key(proto::UpdateEncryptionKeyRequest {
            resource_type: REPOSITORY,
            ..update_request(&arn)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(updated.applied);
    assert_eq!(updated.report.unwrap().profile, "amazon-q-code-repository");
}

#[tokio::test]
async fn inline_documents_and_profile_from_target() {
    let sidecar = Sidecar::start();
    let mut reader = sidecar.code_reader_keys().await;
    let metadata = r#"{"KeyMetadata": {"KeyId": "1234abcd-12ab-34cd-56ef-1234567890ab",
        "Arn": "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "KeyState": "PendingDeletion", "KeySpec": "SYMMETRIC_DEFAULT", "KeyUsage": "ENCRYPT_DECRYPT", "KeyManager": "CUSTOMER"}}"#;
    let policy = sidecar.rendered_policy("amazon-q-code-repository").await;
    let request = proto::VerifyKeyPolicyRequest {
        scan_type: CODE,
        resource_type: REPOSITORY,
        key: Some(Key::InlineKey(InlineKey {
            key_policy: policy,
            key_metadata_json: metadata.into(),
        })),
        ..Default::default()
    };
    let report = verify_report(&mut reader, request).await;
    assert_eq!(report.profile, "amazon-q-code-repository");
    // Inline verification uses only the documents sent: no identity policy was.
    assert_eq!(
        codes(&report),
        ["KEY_NOT_ENABLED", "IDENTITY_POLICY_NOT_CHECKED"]
    );

    let malformed = "{\"Version\": \"2012-10-17\",\n\"Statement\": [}";
    let request = verify_request(
        "amazon-q-lambda",
        Key::InlineKey(InlineKey {
            key_policy: malformed.into(),
            key_metadata_json: String::new(),
        }),
    );
    let report = verify_report(&mut reader, request).await;
    assert_eq!(
        codes(&report),
        [
            "KEY_METADATA_NOT_CHECKED",
            "POLICY_INVALID_JSON",
            "IDENTITY_POLICY_NOT_CHECKED"
        ]
    );
    let location = report.findings[1].location.as_ref().unwrap();
    assert_eq!(
        (location.path.as_str(), location.line, location.column),
        ("key_policy", 2, 15)
    );
}

#[tokio::test]
async fn bad_verify_and_render_requests_name_the_field() {
    let sidecar = Sidecar::start();
    let mut reader = sidecar.code_reader_keys().await;
    let field = |status: tonic::Status| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        status
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|v| v.field.clone())
            .collect::<Vec<_>>()
    };
    let missing_key = proto::VerifyKeyPolicyRequest {
        profile: "amazon-q-lambda".into(),
        ..Default::default()
    };
    assert_eq!(
        field(reader.verify_key_policy(missing_key).await.unwrap_err()),
        ["kms_key_id"]
    );
    let bad_profile = verify_request("strict", Key::KmsKeyId("alias/x".into()));
    assert_eq!(
        field(reader.verify_key_policy(bad_profile).await.unwrap_err()),
        ["profile", "kms_key_id"]
    );
    let no_profile = proto::VerifyKeyPolicyRequest {
        key: Some(Key::KmsKeyId("alias/x".into())),
        ..Default::default()
    };
    assert_eq!(
        field(reader.verify_key_policy(no_profile).await.unwrap_err()),
        ["profile", "kms_key_id"]
    );
    let bad_metadata = verify_request(
        "amazon-q-lambda",
        Key::InlineKey(InlineKey {
            key_policy: "{}".into(),
            key_metadata_json: "[]".into(),
        }),
    );
    assert_eq!(
        field(reader.verify_key_policy(bad_metadata).await.unwrap_err()),
        ["inline_key.key_metadata_json"]
    );

    let render = |profile: &str, region: &str, existing: &str| proto::RenderKeyPolicyRequest {
        profile: profile.into(),
        region: region.into(),
        existing_policy_json: existing.into(),
        ..Default::default()
    };
    assert_eq!(
        field(
            reader
                .render_key_policy(render("", "", ""))
                .await
                .unwrap_err()
        ),
        ["profile"]
    );
    assert_eq!(
        field(
            reader
                .render_key_policy(render("amazon-q-lambda", "<Region>", ""))
                .await
                .unwrap_err()
        ),
        ["region"]
    );
    assert_eq!(
        field(
            reader
                .render_key_policy(render("amazon-q-lambda", "", "[1, 2"))
                .await
                .unwrap_err()
        ),
        ["existing_policy_json"]
    );
    // A member named twice is refused (serde_json alone would keep the last), with where.
    let duplicate = "{\"Version\": \"2012-10-17\",\n  \"Statement\": [{\"Sid\": \"Admins\", \"Effect\": \"Allow\",\n    \"Effect\": \"Deny\"}]}";
    let status = reader
        .render_key_policy(render("amazon-q-lambda", "", duplicate))
        .await
        .unwrap_err();
    let violations = status
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations
        .clone();
    assert_eq!(field(status), ["existing_policy_json"]);
    assert_eq!(
        violations[0].description,
        "cannot merge into the existing policy: duplicate member `Effect` at line 3, column 5 (first at line 2, column 35)"
    );

    // A key unknown to the backend is a finding, not an error.
    let unknown = verify_request(
        "amazon-q-lambda",
        Key::KmsKeyId(
            "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000000".into(),
        ),
    );
    let report = verify_report(&mut reader, unknown).await;
    assert_eq!(codes(&report), ["KEY_NOT_FOUND"]);
}

#[tokio::test]
async fn update_gate_enforces_the_policy_and_names_the_denying_statement() {
    let sidecar = Sidecar::start();
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let mut kms = sidecar.kms().await;
    let policy = r#"{"Version": "2012-10-17", "Statement": [
        {"Sid": "Enable IAM User Permissions", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "NoDecryptThroughCodeGuru", "Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"StringLike": {"kms:ViaService": "codeguru-security.*"}}}
    ]}"#;
    kms.put_key_policy(proto::PutKeyPolicyRequest {
        key_id: arn.clone(),
        policy: policy.into(),
    })
    .await
    .unwrap();
    let status = sidecar
        .admin_keys()
        .await
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let details = status.get_error_details();
    let violations = &details.precondition_failure().unwrap().violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].r#type, "REQUIRED_ACCESS_EXPLICITLY_DENIED");
    assert_eq!(violations[0].subject, "NoDecryptThroughCodeGuru");
    assert!(
        violations[0]
            .description
            .contains("kms:Decrypt via codeguru-security.us-east-1.amazonaws.com"),
        "{}",
        violations[0].description
    );
    let status = sidecar
        .read_only_keys()
        .await
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "nothing changed");

    // A key policy that neither allows the principal nor its account: the grant flow is impossible.
    let closed = r#"{"Version": "2012-10-17", "Statement": [
        {"Sid": "OnlyAdmins", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/Admin"}, "Action": "kms:*", "Resource": "*"}]}"#;
    kms.put_key_policy(proto::PutKeyPolicyRequest {
        key_id: arn.clone(),
        policy: closed.into(),
    })
    .await
    .unwrap();
    let status = sidecar
        .admin_keys()
        .await
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap_err();
    let details = status.get_error_details();
    let violations = &details.precondition_failure().unwrap().violations;
    // One cause, one violation, listing the eleven requests it blocks.
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].r#type, "REQUIRED_ACCESS_MISSING");
    assert!(
        violations[0]
            .description
            .contains("neither allows `arn:aws:iam::111122223333:role/inspector-keyd` nor delegates to its account"),
        "{violations:?}"
    );
    assert_eq!(
        violations[0].description.matches("kms:").count(),
        11,
        "{violations:?}"
    );
}

#[tokio::test]
async fn configured_identity_policies_decide_the_grant_profile() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = {
        let probe = Sidecar::start();
        probe
            .read_only_keys()
            .await
            .render_key_policy(proto::RenderKeyPolicyRequest {
                profile: "codeguru-grants".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    };
    assert_eq!(
        rendered.document_kind(),
        proto::PolicyDocumentKind::IdentityPolicy
    );
    let good = dir.path().join("identity.json");
    std::fs::write(&good, &rendered.policy_json).unwrap();
    let sidecar = Sidecar::start_with(&format!(
        "[verification]\nidentity_policy_files = [{good:?}]\n"
    ));
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let report = sidecar
        .admin_keys()
        .await
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    assert!(report.passed);
    assert!(
        codes(&report).is_empty(),
        "identity policies were checked: {report:?}"
    );

    // Identity policies given inline replace the configured ones for a VerifyKeyPolicy call.
    let narrow = r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:DescribeKey", "Resource": "*"}]}"#;
    let request = proto::VerifyKeyPolicyRequest {
        profile: "codeguru-grants".into(),
        key: Some(Key::KmsKeyId(arn)),
        identity_policies: vec![narrow.into()],
        ..Default::default()
    };
    let report = verify_report(&mut sidecar.code_reader_keys().await, request).await;
    assert!(!report.passed);
    // All but the two DescribeKey requests are missing, and DescribeKey is allowed outside
    // the services that need it.
    let mut got = codes(&report);
    assert_eq!(got.pop(), Some("VIA_SERVICE_UNRESTRICTED"), "{report:?}");
    // The two statements are missing: CreateGrant, and the eight other requests.
    assert_eq!(got, ["REQUIRED_ACCESS_MISSING"; 2]);
    assert_eq!(report.findings[0].requests.len(), 1, "{report:?}");
    assert_eq!(report.findings[1].requests.len(), 8, "{report:?}");
}

/// A sidecar configured with the codeguru-grants identity policy it renders, and a
/// permissions boundary (files in `dir`) that allows everything but kms:RetireGrant; and
/// that identity policy.
async fn with_a_boundary_capping_retire_grant(dir: &std::path::Path) -> (Sidecar, String) {
    let rendered = Sidecar::start().rendered_policy("codeguru-grants").await;
    let identity = dir.join("identity.json");
    std::fs::write(&identity, &rendered).unwrap();
    let boundary = dir.join("boundary.json");
    std::fs::write(
        &boundary,
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "NotAction": "kms:RetireGrant", "Resource": "*"}]}"#,
    )
    .unwrap();
    let sidecar = Sidecar::start_with(&format!(
        "[verification]\nidentity_policy_files = [{identity:?}]\npermissions_boundary_file = {boundary:?}\n"
    ));
    (sidecar, rendered)
}

#[tokio::test]
async fn a_configured_permissions_boundary_caps_the_identity_policies() {
    let dir = tempfile::tempdir().unwrap();
    let (sidecar, _) = with_a_boundary_capping_retire_grant(dir.path()).await;
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let status = sidecar
        .admin_keys()
        .await
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let violations = status
        .get_error_details()
        .precondition_failure()
        .unwrap()
        .violations
        .clone();
    // One cause, the boundary, listing RetireGrant via inspector2 and via
    // codeguru-security; nothing else.
    assert_eq!(violations.len(), 1, "{violations:?}");
    let violation = &violations[0];
    assert_eq!(violation.r#type, "REQUIRED_ACCESS_MISSING");
    assert!(
        violation.description.contains("permissions boundary")
            && violation
                .description
                .contains("kms:RetireGrant via inspector2.us-east-1.amazonaws.com")
            && violation
                .description
                .contains("kms:RetireGrant via codeguru-security.us-east-1.amazonaws.com")
            && violation.description.matches("kms:").count() == 2,
        "{violation:?}"
    );
}

/// Inline documents are read-only: their verification uses only what the caller sent, never
/// the configured principal's identity policies or boundary, which the findings would
/// otherwise tell any caller (here: that the boundary caps kms:RetireGrant).
#[tokio::test]
async fn inline_verification_by_a_read_only_caller_uses_only_what_it_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (sidecar, rendered) = with_a_boundary_capping_retire_grant(dir.path()).await;
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let key_policy = sidecar
        .kms()
        .await
        .get_key_policy(proto::GetKeyPolicyRequest {
            key_id: arn.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .policy;
    let inline = |identity_policies: Vec<String>| proto::VerifyKeyPolicyRequest {
        profile: "codeguru-grants".into(),
        key: Some(Key::InlineKey(InlineKey {
            key_policy: key_policy.clone(),
            key_metadata_json: String::new(),
        })),
        identity_policies,
        ..Default::default()
    };
    let mut reader = sidecar.read_only_keys().await;

    // Nothing sent: the principal's policies were not checked, and the report says so
    // without a word of what they hold.
    let report = verify_report(&mut reader, inline(Vec::new())).await;
    let not_checked: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.code == "IDENTITY_POLICY_NOT_CHECKED")
        .collect();
    assert_eq!(not_checked.len(), 1, "{report:?}");
    assert!(
        report
            .findings
            .iter()
            .all(|f| !f.message.contains("boundary caps")
                && !f.message.contains("permissions boundary of")
                && f.code != "REQUIRED_ACCESS_MISSING"),
        "{report:?}"
    );
    // The same policies sent by the caller are used: the configured boundary is not.
    let report = verify_report(&mut reader, inline(vec![rendered])).await;
    assert!(report.passed, "{report:?}");
    assert_eq!(codes(&report), ["KEY_METADATA_NOT_CHECKED"], "{report:?}");

    // A stored key's verification (code-reader) uses the configured principal's policies and
    // boundary, as the Update gate does.
    let report = verify_report(
        &mut sidecar.code_reader_keys().await,
        verify_request("codeguru-grants", Key::KmsKeyId(arn)),
    )
    .await;
    assert!(!report.passed, "{report:?}");
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.code == "REQUIRED_ACCESS_MISSING"
                && f.message.contains("permissions boundary")),
        "{report:?}"
    );
}

/// The access summary entries of `report` for `grantee_id`; there must be some.
fn entries<'a>(
    report: &'a proto::VerificationReport,
    grantee_id: &str,
) -> Vec<&'a proto::AccessEntry> {
    let access = report
        .access
        .as_ref()
        .expect("the report has an access summary");
    let found: Vec<_> = access
        .entries
        .iter()
        .filter(|e| e.grantee.as_ref().is_some_and(|g| g.id == grantee_id))
        .collect();
    assert!(
        !found.is_empty(),
        "no access entry for `{grantee_id}` in {report:?}"
    );
    found
}

/// The one access summary entry of `report` for `grantee_id`.
fn entry<'a>(report: &'a proto::VerificationReport, grantee_id: &str) -> &'a proto::AccessEntry {
    let found = entries(report, grantee_id);
    assert_eq!(found.len(), 1, "{report:?}");
    found[0]
}

/// The findings of `report` with `code`.
fn findings<'a>(report: &'a proto::VerificationReport, code: &str) -> Vec<&'a proto::Finding> {
    report.findings.iter().filter(|f| f.code == code).collect()
}

/// The codes of `report`'s ERROR findings.
fn errors(report: &proto::VerificationReport) -> Vec<&str> {
    report
        .findings
        .iter()
        .filter(|f| f.severity() == proto::Severity::Error)
        .map(|f| f.code.as_str())
        .collect()
}

/// The key policy the CODE + CODE_REPOSITORY profile needs (it passes alone), with
/// `statement` added.
async fn repository_policy_with(sidecar: &Sidecar, statement: serde_json::Value) -> String {
    let rendered = sidecar.rendered_policy("amazon-q-code-repository").await;
    let mut policy: serde_json::Value = serde_json::from_str(&rendered).unwrap();
    policy["Statement"].as_array_mut().unwrap().push(statement);
    serde_json::to_string_pretty(&policy).unwrap()
}

/// The Update gate's verdict on `arn` for CODE + CODE_REPOSITORY, without putting it in use:
/// the report when it passes, the PreconditionFailure violations' types when it does not.
async fn repository_gate(
    sidecar: &Sidecar,
    arn: &str,
) -> Result<proto::VerificationReport, Vec<String>> {
    let request = proto::UpdateEncryptionKeyRequest {
        resource_type: REPOSITORY,
        validate_only: true,
        ..update_request(arn)
    };
    match sidecar
        .admin_keys()
        .await
        .update_encryption_key(request)
        .await
    {
        Ok(response) => Ok(response.into_inner().report.unwrap()),
        Err(status) => {
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            Err(status
                .get_error_details()
                .precondition_failure()
                .unwrap()
                .violations
                .iter()
                .map(|v| v.r#type.clone())
                .collect())
        }
    }
}

/// The access summary says who may decrypt with a stored key: callers who may verify the
/// stored key (code-reader, admin) get it; a read-only caller may not verify it, and its
/// Watch events carry the verdict alone, without findings or summary.
#[tokio::test]
async fn the_access_summary_is_code_reader_data() {
    let sidecar = Sidecar::start();
    let arn = sidecar.key_in_use().await;
    // The local key's default policy allows the account's root everything: its IAM
    // principals may read the code, and break scanning, each with a witness of its own.
    let check = |report: &proto::VerificationReport| {
        let account = entries(report, "111122223333");
        for entry in &account {
            let grantee = entry.grantee.as_ref().unwrap();
            assert_eq!(grantee.kind(), proto::GranteeKind::Account, "{report:?}");
            assert!(grantee.description.contains("111122223333"), "{report:?}");
            assert!(!entry.external && !entry.public, "{report:?}");
            assert_eq!(
                entry.sid.as_deref(),
                Some("Enable IAM User Permissions"),
                "{report:?}"
            );
            assert!(entry.location.is_some(), "{report:?}");
            let witness = entry.witness.as_ref().expect("a witness");
            assert!(entry.actions.contains(&witness.action), "{report:?}");
            assert_eq!(witness.resource, arn, "{report:?}");
            assert_eq!(witness.account.as_deref(), Some("111122223333"));
            assert!(!witness.description.is_empty(), "{report:?}");
        }
        let allows = |flag: fn(&proto::AccessEntry) -> bool, action: &str| {
            account
                .iter()
                .any(|e| flag(e) && e.actions.iter().any(|a| a == action))
        };
        assert!(allows(|e| e.reads_code, "kms:Decrypt"), "{report:?}");
        assert!(
            allows(|e| e.breaks_scanning, "kms:ScheduleKeyDeletion"),
            "{report:?}"
        );
        assert!(findings(report, "EXTERNAL_ACCESS").is_empty(), "{report:?}");
        assert!(findings(report, "PUBLIC_ACCESS").is_empty(), "{report:?}");
    };
    let by_arn = verify_request("codeguru-grants", Key::KmsKeyId(arn.clone()));
    let report = verify_report(&mut sidecar.code_reader_keys().await, by_arn.clone()).await;
    check(&report);
    let gate = proto::UpdateEncryptionKeyRequest {
        validate_only: true,
        ..update_request(&arn)
    };
    let report = sidecar
        .admin_keys()
        .await
        .update_encryption_key(gate)
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    check(&report);

    // A read-only caller may not verify the stored key at all.
    let status = sidecar
        .read_only_keys()
        .await
        .verify_key_policy(by_arn)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "ROLE_REQUIRED");

    // Watching the key in use: the admin's CURRENT event has the summary, the read-only
    // watcher's the verdict alone.
    let watch = proto::WatchEncryptionKeyRequest {
        scan_type: CODE,
        resource_type: LAMBDA,
        ..Default::default()
    };
    let first = |mut client: proto::encryption_key_service_client::EncryptionKeyServiceClient<
        tonic::transport::Channel,
    >| {
        let watch = watch.clone();
        async move {
            let mut stream = client
                .watch_encryption_key(watch)
                .await
                .unwrap()
                .into_inner();
            tokio::time::timeout(std::time::Duration::from_secs(20), stream.message())
                .await
                .expect("an event within 20 s")
                .unwrap()
                .expect("the stream is open")
        }
    };
    let whole = first(sidecar.admin_keys().await).await;
    assert_eq!(whole.r#type(), proto::KeyEventType::Current);
    assert_eq!(whole.kms_key_id, arn);
    check(whole.report.as_ref().expect("the key in use's report"));
    let verdict = first(sidecar.read_only_keys().await).await;
    assert_eq!(
        (verdict.r#type(), verdict.kms_key_id.as_str()),
        (proto::KeyEventType::Current, arn.as_str())
    );
    let report = verdict.report.expect("the verdict");
    assert!(report.passed, "{report:?}");
    assert_eq!(report.access, None, "{report:?}");
    assert!(report.findings.is_empty(), "{report:?}");
}

/// `"Principal": "*"` allowed kms:Decrypt with no condition: anyone may read the code. The
/// report fails (PUBLIC_ACCESS is an ERROR), inline and at the Update gate.
#[tokio::test]
async fn public_decrypt_is_public_access_and_fails_verification() {
    let sidecar = Sidecar::start();
    let policy = repository_policy_with(
        &sidecar,
        serde_json::json!({"Sid": "Public", "Effect": "Allow", "Principal": "*",
            "Action": "kms:Decrypt", "Resource": "*"}),
    )
    .await;
    let request = verify_request(
        "amazon-q-code-repository",
        Key::InlineKey(InlineKey {
            key_policy: policy.clone(),
            key_metadata_json: String::new(),
        }),
    );
    let report = verify_report(&mut sidecar.read_only_keys().await, request).await;
    assert!(!report.passed, "{report:?}");
    // The statement is the only cause of failure.
    let public = findings(&report, "PUBLIC_ACCESS");
    assert_eq!(public.len(), 1, "{report:?}");
    assert_eq!(public[0].severity(), proto::Severity::Error, "{report:?}");
    assert_eq!(public[0].sid.as_deref(), Some("Public"), "{report:?}");
    assert!(public[0].message.contains("kms:Decrypt"), "{report:?}");
    assert!(public[0].fix.is_some(), "{report:?}");
    assert_eq!(errors(&report), ["PUBLIC_ACCESS"], "{report:?}");
    let anyone = entry(&report, "");
    assert_eq!(
        anyone.grantee.as_ref().unwrap().kind(),
        proto::GranteeKind::Anyone,
        "{report:?}"
    );
    assert_eq!(anyone.sid.as_deref(), Some("Public"));
    assert_eq!(anyone.actions, ["kms:Decrypt"], "{report:?}");
    assert!(
        anyone.public && anyone.reads_code && !anyone.breaks_scanning,
        "{report:?}"
    );
    assert!(anyone.conditions.is_empty(), "{report:?}");
    assert_eq!(anyone.witness.as_ref().unwrap().action, "kms:Decrypt");

    // The Update gate refuses such a key.
    let arn = sidecar
        .create_key(proto::CreateKeyRequest {
            policy,
            ..Default::default()
        })
        .await;
    let refused = repository_gate(&sidecar, &arn).await.unwrap_err();
    assert_eq!(refused, ["PUBLIC_ACCESS"]);
}

/// A stored key whose policy also lets account 444455556666 decrypt, verified by a sidecar
/// started with `config`: the sidecar, the key's ARN and the code-reader's report.
async fn external_decrypt(config: &str) -> (Sidecar, String, proto::VerificationReport) {
    let sidecar = Sidecar::start_with(config);
    let policy = repository_policy_with(
        &sidecar,
        serde_json::json!({"Sid": "PartnerDecrypt", "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::444455556666:root"},
            "Action": "kms:Decrypt", "Resource": "*"}),
    )
    .await;
    let arn = sidecar
        .create_key(proto::CreateKeyRequest {
            policy,
            ..Default::default()
        })
        .await;
    let report = verify_report(
        &mut sidecar.code_reader_keys().await,
        verify_request("amazon-q-code-repository", Key::KmsKeyId(arn.clone())),
    )
    .await;
    (sidecar, arn, report)
}

/// Decrypt granted to another account is EXTERNAL_ACCESS: a SECURITY_WARNING by default, an
/// ERROR the Update gate refuses with `verification.deny_external_access`, and nothing once
/// the account is in `verification.trusted_accounts`.
#[tokio::test]
async fn another_accounts_decrypt_is_external_access_as_configured() {
    // By default: a warning, and the key may be put in use.
    let (sidecar, arn, report) = external_decrypt("").await;
    let external = findings(&report, "EXTERNAL_ACCESS");
    assert_eq!(external.len(), 1, "{report:?}");
    assert_eq!(
        external[0].severity(),
        proto::Severity::SecurityWarning,
        "{report:?}"
    );
    assert_eq!(external[0].sid.as_deref(), Some("PartnerDecrypt"));
    assert!(external[0].message.contains("444455556666"), "{report:?}");
    assert!(report.passed, "{report:?}");
    let partner = entry(&report, "444455556666");
    assert_eq!(
        partner.grantee.as_ref().unwrap().kind(),
        proto::GranteeKind::Account
    );
    assert!(partner.external && !partner.public, "{report:?}");
    assert_eq!(partner.actions, ["kms:Decrypt"], "{report:?}");
    let witness = partner.witness.as_ref().unwrap();
    assert_eq!(
        (
            witness.account.as_deref(),
            witness.action.as_str(),
            witness.resource.as_str()
        ),
        (Some("444455556666"), "kms:Decrypt", arn.as_str()),
        "{report:?}"
    );
    let gate = repository_gate(&sidecar, &arn).await.unwrap();
    assert_eq!(findings(&gate, "EXTERNAL_ACCESS").len(), 1, "{gate:?}");
    drop(sidecar);

    // Denied: an ERROR, and the gate refuses the key for it alone.
    let (sidecar, arn, report) =
        external_decrypt("[verification]\ndeny_external_access = true\n").await;
    let external = findings(&report, "EXTERNAL_ACCESS");
    assert_eq!(external.len(), 1, "{report:?}");
    assert_eq!(external[0].severity(), proto::Severity::Error, "{report:?}");
    assert!(!report.passed, "{report:?}");
    assert_eq!(errors(&report), ["EXTERNAL_ACCESS"], "{report:?}");
    assert_eq!(
        repository_gate(&sidecar, &arn).await.unwrap_err(),
        ["EXTERNAL_ACCESS"]
    );
    drop(sidecar);

    // Trusted, even with external access denied: the access is listed, not external.
    let (sidecar, arn, report) = external_decrypt(
        "[verification]\ndeny_external_access = true\ntrusted_accounts = [\"444455556666\"]\n",
    )
    .await;
    assert!(
        findings(&report, "EXTERNAL_ACCESS").is_empty(),
        "{report:?}"
    );
    assert!(report.passed, "{report:?}");
    let partner = entry(&report, "444455556666");
    assert!(!partner.external && !partner.public, "{report:?}");
    assert!(repository_gate(&sidecar, &arn).await.is_ok());
}
