//! The gRPC API end to end through the real binary, with a tonic client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use inspector_keyd::proto;
use tonic::Code;
use tonic_types::StatusExt;

fn bad_fields(status: &tonic::Status) -> Vec<String> {
    let details = status.get_error_details();
    let bad = details.bad_request().expect("BadRequest details");
    bad.field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect()
}

fn precondition_types(status: &tonic::Status) -> Vec<String> {
    let details = status.get_error_details();
    let failure = details
        .precondition_failure()
        .expect("PreconditionFailure details");
    failure
        .violations
        .iter()
        .map(|v| v.r#type.clone())
        .collect()
}

async fn assert_aws_owned(sidecar: &Sidecar, resource_type: i32) {
    let status = sidecar
        .read_only_keys()
        .await
        .get_encryption_key(get_request(resource_type))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(reason(&status), "AWS_OWNED_KEY");
}

async fn current_key(sidecar: &Sidecar) -> String {
    sidecar
        .read_only_keys()
        .await
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap()
        .into_inner()
        .kms_key_id
}

#[tokio::test]
async fn get_update_get_reset_get() {
    let sidecar = Sidecar::start();
    assert_aws_owned(&sidecar, LAMBDA).await;

    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let mut admin = sidecar.admin_keys().await;
    let updated = admin
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap()
        .into_inner();
    assert!(updated.applied);
    let report = updated.report.unwrap();
    assert!(report.passed);
    assert_eq!(report.profile, "codeguru-grants");
    // The default key policy delegates to the account, and no identity policy is configured.
    let codes: Vec<_> = report.findings.iter().map(|f| f.code.as_str()).collect();
    assert_eq!(codes, ["IDENTITY_POLICY_NOT_CHECKED"]);
    assert_eq!(report.findings[0].severity(), proto::Severity::Warning);

    assert_eq!(current_key(&sidecar).await, arn);
    // Targets are independent.
    assert_aws_owned(&sidecar, REPOSITORY).await;

    let reset = proto::ResetEncryptionKeyRequest {
        scan_type: CODE,
        resource_type: LAMBDA,
        ..Default::default()
    };
    admin.reset_encryption_key(reset.clone()).await.unwrap();
    assert_aws_owned(&sidecar, LAMBDA).await;
    // Idempotent.
    admin.reset_encryption_key(reset).await.unwrap();
    assert_aws_owned(&sidecar, LAMBDA).await;
}

#[tokio::test]
async fn validate_only_changes_nothing() {
    let sidecar = Sidecar::start();
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let mut request = update_request(&arn);
    request.validate_only = true;
    let response = sidecar
        .admin_keys()
        .await
        .update_encryption_key(request)
        .await
        .unwrap()
        .into_inner();
    assert!(!response.applied);
    assert!(response.report.unwrap().passed);
    assert_aws_owned(&sidecar, LAMBDA).await;
}

#[tokio::test]
async fn invalid_requests_name_each_bad_field_and_change_nothing() {
    let sidecar = Sidecar::start();
    let good = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let mut admin = sidecar.admin_keys().await;
    admin
        .update_encryption_key(update_request(&good))
        .await
        .unwrap();

    let key_id = good.rsplit('/').next().unwrap().to_owned();
    let cases: Vec<(proto::UpdateEncryptionKeyRequest, Vec<&str>, &str)> = vec![
        (
            update_request("alias/inspector"),
            vec!["kms_key_id"],
            "only key ARNs are accepted",
        ),
        (
            update_request("arn:aws:kms:us-east-1:111122223333:alias/inspector"),
            vec!["kms_key_id"],
            "is an alias",
        ),
        (
            update_request(&key_id),
            vec!["kms_key_id"],
            "is a bare key id",
        ),
        (update_request(""), vec!["kms_key_id"], "is required"),
        (
            update_request(&format!("{good}x")),
            vec!["kms_key_id"],
            "not a KMS key ARN",
        ),
        (
            proto::UpdateEncryptionKeyRequest {
                scan_type: 0,
                resource_type: 0,
                ..update_request(&good)
            },
            vec!["scan_type", "resource_type"],
            "is required",
        ),
        (
            proto::UpdateEncryptionKeyRequest {
                scan_type: proto::ScanType::Package as i32,
                ..update_request(&good)
            },
            vec!["scan_type"],
            "supported pairs: CODE + AWS_LAMBDA_FUNCTION, CODE + CODE_REPOSITORY",
        ),
        (
            proto::UpdateEncryptionKeyRequest {
                resource_type: proto::ResourceType::AwsEcrRepository as i32,
                ..update_request(&good)
            },
            vec!["resource_type"],
            "not supported for CODE + AWS_ECR_REPOSITORY",
        ),
        (
            proto::UpdateEncryptionKeyRequest {
                resource_type: 1234,
                ..update_request(&good)
            },
            vec!["resource_type"],
            "1234 is not a ResourceType value",
        ),
    ];
    for (request, fields, message) in cases {
        let status = admin
            .update_encryption_key(request.clone())
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{request:?}: {status:?}"
        );
        assert_eq!(bad_fields(&status), fields, "{request:?}");
        assert!(
            status.message().contains(message),
            "{request:?}: {}",
            status.message()
        );
        assert_eq!(
            current_key(&sidecar).await,
            good,
            "state changed by {request:?}"
        );
    }

    let status = sidecar
        .read_only_keys()
        .await
        .get_encryption_key(proto::GetEncryptionKeyRequest {
            scan_type: CODE,
            resource_type: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["resource_type"]);

    let status = admin
        .reset_encryption_key(proto::ResetEncryptionKeyRequest {
            scan_type: 0,
            resource_type: LAMBDA,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["scan_type"]);
    assert_eq!(current_key(&sidecar).await, good);
}

#[tokio::test]
async fn unusable_keys_are_refused_with_a_violation_each_and_change_nothing() {
    let sidecar = Sidecar::start();
    let good = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let mut admin = sidecar.admin_keys().await;
    admin
        .update_encryption_key(update_request(&good))
        .await
        .unwrap();
    let mut kms = sidecar.kms().await;

    let disabled = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    kms.disable_key(proto::DisableKeyRequest {
        key_id: disabled.clone(),
    })
    .await
    .unwrap();
    let asymmetric = sidecar
        .create_key(proto::CreateKeyRequest {
            key_spec: "RSA_2048".into(),
            key_usage: "ENCRYPT_DECRYPT".into(),
            ..Default::default()
        })
        .await;
    let signing = sidecar
        .create_key(proto::CreateKeyRequest {
            key_spec: "ECC_NIST_P256".into(),
            key_usage: "SIGN_VERIFY".into(),
            ..Default::default()
        })
        .await;
    let elsewhere = sidecar
        .create_key(proto::CreateKeyRequest {
            region: "eu-west-1".into(),
            ..Default::default()
        })
        .await;
    let pending = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    kms.schedule_key_deletion(proto::ScheduleKeyDeletionRequest {
        key_id: pending.clone(),
        pending_window_in_days: 7,
    })
    .await
    .unwrap();
    let unknown = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000000";

    let cases: [(&str, &[&str]); 6] = [
        (&disabled, &["KEY_NOT_ENABLED"]),
        (&asymmetric, &["KEY_NOT_SYMMETRIC"]),
        (
            &signing,
            &["KEY_NOT_SYMMETRIC", "KEY_USAGE_NOT_ENCRYPT_DECRYPT"],
        ),
        (&elsewhere, &["KEY_REGION_MISMATCH"]),
        (&pending, &["KEY_NOT_ENABLED"]),
        (unknown, &["KEY_NOT_FOUND"]),
    ];
    for (arn, codes) in cases {
        for validate_only in [false, true] {
            let request = proto::UpdateEncryptionKeyRequest {
                validate_only,
                ..update_request(arn)
            };
            let status = admin.update_encryption_key(request).await.unwrap_err();
            assert_eq!(status.code(), Code::FailedPrecondition, "{arn}: {status:?}");
            assert_eq!(reason(&status), "KEY_VERIFICATION_FAILED");
            assert_eq!(precondition_types(&status), codes, "{arn}");
            let details = status.get_error_details();
            let subjects: Vec<_> = details
                .precondition_failure()
                .unwrap()
                .violations
                .iter()
                .map(|v| v.subject.clone())
                .collect();
            assert!(subjects.iter().all(|s| s == arn), "{subjects:?}");
            assert_eq!(current_key(&sidecar).await, good, "state changed by {arn}");
        }
    }

    // Re-enabling makes the disabled key usable; a multi-Region key from another Region is fine.
    kms.enable_key(proto::EnableKeyRequest {
        key_id: disabled.clone(),
    })
    .await
    .unwrap();
    admin
        .update_encryption_key(update_request(&disabled))
        .await
        .unwrap();
    assert_eq!(current_key(&sidecar).await, disabled);
    let multi_region = sidecar
        .create_key(proto::CreateKeyRequest {
            region: "eu-west-1".into(),
            multi_region: true,
            ..Default::default()
        })
        .await;
    assert!(multi_region.contains(":key/mrk-"), "{multi_region}");
    admin
        .update_encryption_key(update_request(&multi_region))
        .await
        .unwrap();
    assert_eq!(current_key(&sidecar).await, multi_region);
}

#[tokio::test]
async fn loopback_tcp_callers_are_read_only() {
    let sidecar = Sidecar::start();
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let mut read_only = sidecar.read_only_keys().await;
    let status = read_only
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "ROLE_REQUIRED");
    let details = status.get_error_details();
    let info = details.error_info().unwrap();
    assert_eq!(info.domain, "inspector-keyd");
    assert_eq!(info.metadata["required_role"], "admin");
    assert!(info.metadata["caller"].starts_with("tcp:127.0.0.1:"));
    let reset = proto::ResetEncryptionKeyRequest {
        scan_type: CODE,
        resource_type: LAMBDA,
        ..Default::default()
    };
    assert_eq!(
        read_only
            .reset_encryption_key(reset)
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let mut kms =
        proto::local_kms_service_client::LocalKmsServiceClient::new(sidecar.tcp_channel().await);
    let status = kms
        .create_key(proto::CreateKeyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_aws_owned(&sidecar, LAMBDA).await;
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let mut sidecar = Sidecar::start();
    let lambda_key = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let repository_key = sidecar.create_repository_key().await;
    let mut admin = sidecar.admin_keys().await;
    admin
        .update_encryption_key(update_request(&lambda_key))
        .await
        .unwrap();
    admin
        .update_encryption_key(proto::UpdateEncryptionKeyRequest {
            resource_type: REPOSITORY,
            ..update_request(&repository_key)
        })
        .await
        .unwrap();
    admin
        .reset_encryption_key(proto::ResetEncryptionKeyRequest {
            scan_type: CODE,
            resource_type: REPOSITORY,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut kms = sidecar.kms().await;
    kms.disable_key(proto::DisableKeyRequest {
        key_id: repository_key.clone(),
    })
    .await
    .unwrap();

    sidecar.kill_9();
    let sidecar = sidecar.restart();
    assert_eq!(current_key(&sidecar).await, lambda_key);
    assert_aws_owned(&sidecar, REPOSITORY).await;
    let described = sidecar
        .kms()
        .await
        .describe_key(proto::DescribeKeyRequest {
            key_id: repository_key,
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap();
    assert_eq!(described.key_state, "Disabled");
    assert!(!described.enabled);
}

#[tokio::test]
async fn health_serves_both_names_and_sigterm_stops_cleanly() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut sidecar = Sidecar::start();
    let mut health = HealthClient::new(sidecar.tcp_channel().await);
    for service in ["", "inspectorkeyd.v1.EncryptionKeyService"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    let socket = sidecar.socket.clone();
    let started = std::time::Instant::now();
    sidecar.signal("TERM");
    // The watcher sees the server go NOT_SERVING; once it hangs up nothing is in flight.
    let next = watch.message().await;
    assert!(
        matches!(&next, Ok(Some(r)) if r.status() == ServingStatus::NotServing),
        "{next:?}"
    );
    drop((watch, health));
    let status = sidecar.wait_exit(std::time::Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}\n{}", sidecar.log());
    // Drained, not cut off by the 5 s shutdown timeout.
    assert!(
        !sidecar
            .log()
            .contains("did not finish before the shutdown timeout"),
        "{}",
        sidecar.log()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(!socket.exists(), "the socket file is removed on shutdown");
}

#[tokio::test]
async fn reflection_v1_lists_the_services() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let sidecar = Sidecar::start();
    let mut client = ServerReflectionClient::new(sidecar.tcp_channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "inspectorkeyd.v1.EncryptionKeyService",
        "inspectorkeyd.v1.LocalKmsService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[tokio::test]
async fn reads_say_where_the_answer_came_from() {
    let sidecar = Sidecar::start();
    let mut reader = sidecar.read_only_keys().await;
    let header = |metadata: &tonic::metadata::MetadataMap, name: &str| {
        metadata
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    // The AWS owned key answer (NOT_FOUND) is cached too, and says so.
    let first = reader
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    assert_eq!(header(first.metadata(), "x-keyd-cache"), "miss");
    assert_eq!(header(first.metadata(), "age"), "0");
    let second = reader
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    assert_eq!(second.code(), Code::NotFound);
    assert_eq!(reason(&second), "AWS_OWNED_KEY");
    assert_eq!(header(second.metadata(), "x-keyd-cache"), "hit");

    // An update writes through: the next read is a hit with the new key.
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    sidecar
        .admin_keys()
        .await
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap();
    let read = reader
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap();
    assert_eq!(header(read.metadata(), "x-keyd-cache"), "hit");
    assert!(header(read.metadata(), "age").parse::<u64>().is_ok());
    assert_eq!(read.into_inner().kms_key_id, arn);

    let reset = proto::ResetEncryptionKeyRequest {
        scan_type: CODE,
        resource_type: LAMBDA,
        ..Default::default()
    };
    sidecar
        .admin_keys()
        .await
        .reset_encryption_key(reset)
        .await
        .unwrap();
    let after = reader
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    assert_eq!(
        (
            after.code(),
            header(after.metadata(), "x-keyd-cache").as_str()
        ),
        (Code::NotFound, "hit")
    );
}
