//! The local KMS service through the real binary: key lifecycle, policies and
//! multi-Region keys, with AWS KMS semantics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use inspector_keyd::proto::{self, KeyMetadata};
use tonic::Code;
use tonic_types::StatusExt;

async fn describe(sidecar: &Sidecar, key_id: &str) -> KeyMetadata {
    sidecar
        .kms()
        .await
        .describe_key(proto::DescribeKeyRequest {
            key_id: key_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
}

#[tokio::test]
async fn keys_look_like_describe_key() {
    let sidecar = Sidecar::start();
    let mut kms = sidecar.kms().await;
    let created = kms
        .create_key(proto::CreateKeyRequest {
            description: "scans".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap();
    let uuid =
        regex::Regex::new(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
            .unwrap();
    assert!(uuid.is_match(&created.key_id), "{}", created.key_id);
    assert_eq!(
        created.arn,
        format!("arn:aws:kms:us-east-1:111122223333:key/{}", created.key_id)
    );
    assert_eq!(created.aws_account_id, "111122223333");
    assert_eq!(
        (
            created.key_spec.as_str(),
            created.key_usage.as_str(),
            created.key_state.as_str()
        ),
        ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "Enabled")
    );
    assert_eq!(
        (created.origin.as_str(), created.key_manager.as_str()),
        ("AWS_KMS", "CUSTOMER")
    );
    assert!(created.enabled && !created.multi_region && created.creation_date.is_some());
    assert_eq!(created.encryption_algorithms, ["SYMMETRIC_DEFAULT"]);

    // DescribeKey by bare id (sidecar's Region) or by ARN.
    assert_eq!(describe(&sidecar, &created.key_id).await, created);
    assert_eq!(describe(&sidecar, &created.arn).await, created);

    // The AWS default key policy delegates to the account.
    let policy = kms
        .get_key_policy(proto::GetKeyPolicyRequest {
            key_id: created.key_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(policy.policy_name, "default");
    let policy: serde_json::Value = serde_json::from_str(&policy.policy).unwrap();
    assert_eq!(
        policy["Statement"][0]["Principal"]["AWS"],
        "arn:aws:iam::111122223333:root"
    );
    assert_eq!(policy["Statement"][0]["Action"], "kms:*");

    let listed = kms
        .list_keys(proto::ListKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key_arn, created.arn);
}

#[tokio::test]
async fn key_states_follow_kms() {
    let sidecar = Sidecar::start();
    let mut kms = sidecar.kms().await;
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;

    kms.disable_key(proto::DisableKeyRequest {
        key_id: arn.clone(),
    })
    .await
    .unwrap();
    let disabled = describe(&sidecar, &arn).await;
    assert_eq!(
        (disabled.key_state.as_str(), disabled.enabled),
        ("Disabled", false)
    );

    let scheduled = kms
        .schedule_key_deletion(proto::ScheduleKeyDeletionRequest {
            key_id: arn.clone(),
            pending_window_in_days: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap();
    assert_eq!(scheduled.key_state, "PendingDeletion");
    let seconds =
        scheduled.deletion_date.unwrap().seconds - scheduled.creation_date.unwrap().seconds;
    assert!(
        (29 * 86_400..=31 * 86_400).contains(&seconds),
        "default window is 30 days: {seconds}"
    );

    // A key pending deletion can be neither enabled nor scheduled again.
    let status = kms
        .enable_key(proto::EnableKeyRequest {
            key_id: arn.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::FailedPrecondition, "INVALID_STATE")
    );
    assert!(
        status.message().contains("pending deletion"),
        "{}",
        status.message()
    );
    let again = proto::ScheduleKeyDeletionRequest {
        key_id: arn.clone(),
        pending_window_in_days: 7,
    };
    assert_eq!(
        kms.schedule_key_deletion(again).await.unwrap_err().code(),
        Code::FailedPrecondition
    );

    // Cancelling leaves the key Disabled, as in AWS KMS.
    let cancelled = kms
        .cancel_key_deletion(proto::CancelKeyDeletionRequest {
            key_id: arn.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap();
    assert_eq!(cancelled.key_state, "Disabled");
    assert!(cancelled.deletion_date.is_none());
    kms.enable_key(proto::EnableKeyRequest {
        key_id: arn.clone(),
    })
    .await
    .unwrap();
    assert_eq!(describe(&sidecar, &arn).await.key_state, "Enabled");
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let sidecar = Sidecar::start();
    let mut kms = sidecar.kms().await;
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let policy_before = kms
        .get_key_policy(proto::GetKeyPolicyRequest {
            key_id: arn.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .policy;

    let field_of = |status: &tonic::Status| {
        status
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations[0]
            .field
            .clone()
    };
    let cases = [
        (
            proto::CreateKeyRequest {
                key_spec: "AES_256".into(),
                ..Default::default()
            },
            "key_spec",
        ),
        (
            proto::CreateKeyRequest {
                key_spec: "RSA_2048".into(),
                ..Default::default()
            },
            "key_usage",
        ),
        (
            proto::CreateKeyRequest {
                key_spec: "HMAC_256".into(),
                key_usage: "ENCRYPT_DECRYPT".into(),
                ..Default::default()
            },
            "key_usage",
        ),
        (
            proto::CreateKeyRequest {
                region: "mars-1".into(),
                ..Default::default()
            },
            "region",
        ),
        (
            proto::CreateKeyRequest {
                policy: "{not json".into(),
                ..Default::default()
            },
            "policy",
        ),
    ];
    for (request, field) in cases {
        let status = kms.create_key(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
        assert_eq!(field_of(&status), field, "{request:?}");
    }

    // A member named twice: AWS readers disagree on which counts, so it is refused with
    // where, on CreateKey as on PutKeyPolicy (and the old policy stays).
    let duplicate =
        "{\"Version\": \"2012-10-17\",\n  \"Version\": \"2008-10-17\", \"Statement\": []}";
    let message_of = |status: &tonic::Status| {
        status
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations[0]
            .description
            .clone()
    };
    let expected = "duplicate member `Version` at line 2, column 3 (first at line 1, column 2)";
    let status = kms
        .create_key(proto::CreateKeyRequest {
            policy: duplicate.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(field_of(&status), "policy");
    assert!(message_of(&status).contains(expected), "{status:?}");
    let status = kms
        .put_key_policy(proto::PutKeyPolicyRequest {
            key_id: arn.clone(),
            policy: duplicate.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(field_of(&status), "policy");
    assert!(message_of(&status).contains(expected), "{status:?}");

    for policy in [
        "[]".to_owned(),
        "{\"x\": \"\u{263a}\"}".to_owned(),
        format!("{{\"Id\": \"{}\"}}", "a".repeat(33_000)),
    ] {
        let status = kms
            .put_key_policy(proto::PutKeyPolicyRequest {
                key_id: arn.clone(),
                policy,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(field_of(&status), "policy");
    }
    let policy_after = kms
        .get_key_policy(proto::GetKeyPolicyRequest {
            key_id: arn.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .policy;
    assert_eq!(policy_after, policy_before);
    let listed = kms
        .list_keys(proto::ListKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(listed.len(), 1, "no refused CreateKey made a key");

    let missing = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000000";
    let status = kms
        .disable_key(proto::DisableKeyRequest {
            key_id: missing.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::NotFound, "NOT_FOUND")
    );
    let status = kms
        .describe_key(proto::DescribeKeyRequest {
            key_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let new_policy = r#"{"Version": "2012-10-17", "Statement": []}"#;
    kms.put_key_policy(proto::PutKeyPolicyRequest {
        key_id: arn.clone(),
        policy: new_policy.into(),
    })
    .await
    .unwrap();
    let stored = kms
        .get_key_policy(proto::GetKeyPolicyRequest { key_id: arn })
        .await
        .unwrap()
        .into_inner()
        .policy;
    assert_eq!(stored, new_policy);
}

#[tokio::test]
async fn multi_region_keys_replicate() {
    let sidecar = Sidecar::start();
    let mut kms = sidecar.kms().await;
    let primary = kms
        .create_key(proto::CreateKeyRequest {
            multi_region: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap();
    let mrk = regex::Regex::new(r"^mrk-[0-9a-f]{32}$").unwrap();
    assert!(mrk.is_match(&primary.key_id), "{}", primary.key_id);
    assert_eq!(
        primary
            .multi_region_configuration
            .as_ref()
            .unwrap()
            .multi_region_key_type,
        "PRIMARY"
    );

    let replica = kms
        .replicate_key(proto::ReplicateKeyRequest {
            key_id: primary.arn.clone(),
            replica_region: "eu-west-1".into(),
            policy: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .replica_key_metadata
        .unwrap();
    assert_eq!(replica.key_id, primary.key_id);
    assert_eq!(
        replica.arn,
        format!("arn:aws:kms:eu-west-1:111122223333:key/{}", primary.key_id)
    );
    let config = replica.multi_region_configuration.unwrap();
    assert_eq!(config.multi_region_key_type, "REPLICA");
    assert_eq!(config.primary_key.unwrap().arn, primary.arn);

    let primary_now = describe(&sidecar, &primary.arn).await;
    let replicas = primary_now.multi_region_configuration.unwrap().replica_keys;
    assert_eq!(replicas.len(), 1);
    assert_eq!(
        (replicas[0].arn.as_str(), replicas[0].region.as_str()),
        (replica.arn.as_str(), "eu-west-1")
    );

    // Twice into one Region, into the primary's Region, or from a single-Region key: refused.
    for (key_id, region) in [
        (primary.arn.clone(), "eu-west-1"),
        (primary.arn.clone(), "us-east-1"),
        (
            sidecar.create_key(proto::CreateKeyRequest::default()).await,
            "eu-west-1",
        ),
        (replica.arn.clone(), "ap-south-1"),
    ] {
        let request = proto::ReplicateKeyRequest {
            key_id,
            replica_region: region.into(),
            policy: String::new(),
        };
        let status = kms.replicate_key(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
    }

    // The replica, in another Region, is usable by Inspector because it is multi-Region.
    let updated = sidecar
        .admin_keys()
        .await
        .update_encryption_key(update_request(&replica.arn))
        .await
        .unwrap();
    assert!(updated.into_inner().applied);
}

/// The field of a refusal's first BadRequest violation.
fn violated_field(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .bad_request()
        .unwrap_or_else(|| panic!("no BadRequest in {status:?}"))
        .field_violations[0]
        .field
        .clone()
}

async fn list_aliases(sidecar: &Sidecar, key_id: &str) -> Vec<proto::AliasListEntry> {
    sidecar
        .kms()
        .await
        .list_aliases(proto::ListAliasesRequest {
            key_id: key_id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .aliases
}

async fn create_alias(sidecar: &Sidecar, alias_name: &str, target_key_id: &str) {
    sidecar
        .kms()
        .await
        .create_alias(proto::CreateAliasRequest {
            alias_name: alias_name.into(),
            target_key_id: target_key_id.into(),
        })
        .await
        .unwrap_or_else(|status| panic!("CreateAlias {alias_name}: {status:?}"));
}

#[tokio::test]
async fn aliases_name_keys_as_in_kms() {
    let sidecar = Sidecar::start();
    let mut kms = sidecar.kms().await;
    let first = describe(
        &sidecar,
        &sidecar.create_key(proto::CreateKeyRequest::default()).await,
    )
    .await;
    let second = describe(
        &sidecar,
        &sidecar.create_key(proto::CreateKeyRequest::default()).await,
    )
    .await;
    // By key id, by key ARN; a key may have several aliases.
    create_alias(&sidecar, "alias/scans", &first.key_id).await;
    create_alias(&sidecar, "alias/team/scans_2-B", &first.arn).await;
    create_alias(&sidecar, "alias/other", &second.key_id).await;

    let listed = list_aliases(&sidecar, "").await;
    let names: Vec<&str> = listed.iter().map(|a| a.alias_name.as_str()).collect();
    assert_eq!(
        names,
        ["alias/other", "alias/scans", "alias/team/scans_2-B"],
        "{listed:?}"
    );
    let scans = &listed[1];
    assert_eq!(
        scans.alias_arn,
        "arn:aws:kms:us-east-1:111122223333:alias/scans"
    );
    // TargetKeyId is the key id, not its ARN.
    assert_eq!(scans.target_key_id, first.key_id);
    assert!(scans.creation_date.is_some());
    assert_eq!(scans.last_updated_date, scans.creation_date);
    // One key's aliases, by key id or key ARN.
    for key in [&second.key_id, &second.arn] {
        let of_second = list_aliases(&sidecar, key).await;
        assert_eq!(of_second.len(), 1, "{of_second:?}");
        assert_eq!(of_second[0].alias_name, "alias/other");
        assert_eq!(of_second[0].target_key_id, second.key_id);
    }

    // DescribeKey by alias name and by alias ARN.
    assert_eq!(describe(&sidecar, "alias/scans").await, first);
    assert_eq!(describe(&sidecar, &scans.alias_arn).await, first);
    assert_eq!(describe(&sidecar, "alias/other").await, second);
    // The other RPCs take a key ARN or key id only, as in KMS.
    let status = kms
        .get_key_policy(proto::GetKeyPolicyRequest {
            key_id: "alias/scans".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_field(&status), "key_id");
    // An alias in another account is not this one.
    let status = kms
        .describe_key(proto::DescribeKeyRequest {
            key_id: "arn:aws:kms:us-east-1:444455556666:alias/scans".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // A key pending deletion keeps its aliases, and DescribeKey through them.
    kms.schedule_key_deletion(proto::ScheduleKeyDeletionRequest {
        key_id: second.arn.clone(),
        pending_window_in_days: 7,
    })
    .await
    .unwrap();
    assert_eq!(
        describe(&sidecar, "alias/other").await.key_state,
        "PendingDeletion"
    );
    assert_eq!(list_aliases(&sidecar, "").await.len(), 3);

    kms.delete_alias(proto::DeleteAliasRequest {
        alias_name: "alias/scans".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let status = kms
        .describe_key(proto::DescribeKeyRequest {
            key_id: "alias/scans".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::NotFound, "NOT_FOUND")
    );
    let left: Vec<String> = list_aliases(&sidecar, &first.arn)
        .await
        .into_iter()
        .map(|a| a.alias_name)
        .collect();
    assert_eq!(left, ["alias/team/scans_2-B"]);
    // The key itself is unchanged, and the name is free again.
    assert_eq!(describe(&sidecar, &first.arn).await, first);
    create_alias(&sidecar, "alias/scans", &first.key_id).await;
}

#[tokio::test]
async fn alias_refusals_name_the_field_and_change_nothing() {
    let sidecar = Sidecar::start();
    let mut kms = sidecar.kms().await;
    let key = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    create_alias(&sidecar, "alias/taken", &key).await;
    let doomed = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    kms.schedule_key_deletion(proto::ScheduleKeyDeletionRequest {
        key_id: doomed.clone(),
        pending_window_in_days: 7,
    })
    .await
    .unwrap();
    let elsewhere = sidecar
        .create_key(proto::CreateKeyRequest {
            region: "eu-west-1".into(),
            ..Default::default()
        })
        .await;
    let missing = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000000";

    let long = format!("alias/{}", "a".repeat(251));
    let cases: [(&str, &str, Code, &str); 12] = [
        ("alias/aws/mine", &key, Code::InvalidArgument, "alias_name"),
        (
            "alias/with space",
            &key,
            Code::InvalidArgument,
            "alias_name",
        ),
        ("alias/caf\u{e9}", &key, Code::InvalidArgument, "alias_name"),
        ("alias/a:b", &key, Code::InvalidArgument, "alias_name"),
        ("scans", &key, Code::InvalidArgument, "alias_name"),
        ("alias/", &key, Code::InvalidArgument, "alias_name"),
        (&long, &key, Code::InvalidArgument, "alias_name"),
        ("", &key, Code::InvalidArgument, "alias_name"),
        ("alias/new", "", Code::InvalidArgument, "target_key_id"),
        (
            "alias/new",
            "alias/taken",
            Code::InvalidArgument,
            "target_key_id",
        ),
        ("alias/new", missing, Code::NotFound, "target_key_id"),
        ("alias/taken", &key, Code::AlreadyExists, "alias_name"),
    ];
    for (alias_name, target_key_id, code, field) in cases {
        let request = proto::CreateAliasRequest {
            alias_name: alias_name.into(),
            target_key_id: target_key_id.into(),
        };
        let status = kms.create_alias(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{request:?}: {status:?}");
        assert!(
            status.message().contains(field),
            "{request:?}: {}",
            status.message()
        );
        if code == Code::InvalidArgument {
            assert_eq!(violated_field(&status), field, "{request:?}");
            assert_eq!(reason(&status), "INVALID_REQUEST");
        }
    }
    // An alias is made in its key's account and Region, as in KMS: a name taken in the
    // sidecar's Region is free in another, and each Region lists its own.
    kms.create_alias(proto::CreateAliasRequest {
        alias_name: "alias/taken".into(),
        target_key_id: elsewhere.clone(),
    })
    .await
    .unwrap();
    let listed = |account_id: &str, region: &str| proto::ListAliasesRequest {
        account_id: account_id.into(),
        region: region.into(),
        ..Default::default()
    };
    let eu = kms
        .list_aliases(listed("", "eu-west-1"))
        .await
        .unwrap()
        .into_inner()
        .aliases;
    assert_eq!(
        eu.iter().map(|a| a.alias_arn.as_str()).collect::<Vec<_>>(),
        ["arn:aws:kms:eu-west-1:111122223333:alias/taken"]
    );
    assert_eq!(eu[0].target_key_id, elsewhere.rsplit('/').next().unwrap());
    let own = kms
        .list_aliases(listed("", ""))
        .await
        .unwrap()
        .into_inner()
        .aliases;
    assert!(
        own.iter().all(|a| a
            .alias_arn
            .starts_with("arn:aws:kms:us-east-1:111122223333:")),
        "{own:?}"
    );
    let other_account = kms
        .list_aliases(listed("222233334444", "eu-west-1"))
        .await
        .unwrap()
        .into_inner()
        .aliases;
    assert!(other_account.is_empty(), "{other_account:?}");

    // The reserved prefix and the characters are named in the message.
    let reserved = kms
        .create_alias(proto::CreateAliasRequest {
            alias_name: "alias/aws/mine".into(),
            target_key_id: key.clone(),
        })
        .await
        .unwrap_err();
    assert!(
        reserved.message().contains("alias/aws/"),
        "{}",
        reserved.message()
    );
    let bad_character = kms
        .create_alias(proto::CreateAliasRequest {
            alias_name: "alias/a*b".into(),
            target_key_id: key.clone(),
        })
        .await
        .unwrap_err();
    assert!(
        bad_character.message().contains("'*'"),
        "{}",
        bad_character.message()
    );
    // The longest name is accepted.
    create_alias(&sidecar, &format!("alias/{}", "a".repeat(250)), &key).await;
    // A key pending deletion takes no new alias.
    let status = kms
        .create_alias(proto::CreateAliasRequest {
            alias_name: "alias/new".into(),
            target_key_id: doomed.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::FailedPrecondition, "INVALID_STATE")
    );
    assert_eq!(
        reason(
            &kms.create_alias(proto::CreateAliasRequest {
                alias_name: "alias/taken".into(),
                target_key_id: key.clone(),
            })
            .await
            .unwrap_err()
        ),
        "ALREADY_EXISTS"
    );

    // Deleting: a missing alias is NOT_FOUND, a bad name INVALID_ARGUMENT.
    let status = kms
        .delete_alias(proto::DeleteAliasRequest {
            alias_name: "alias/missing".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::NotFound, "NOT_FOUND")
    );
    assert!(
        status.message().contains("alias_name"),
        "{}",
        status.message()
    );
    for alias_name in ["", "missing", "alias/bad name"] {
        let status = kms
            .delete_alias(proto::DeleteAliasRequest {
                alias_name: alias_name.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{alias_name:?}");
        assert_eq!(violated_field(&status), "alias_name");
    }
    // ListAliases of a key that does not exist.
    let status = kms
        .list_aliases(proto::ListAliasesRequest {
            key_id: missing.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // Nothing refused was stored: the two aliases made, of the one key.
    let listed = list_aliases(&sidecar, "").await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|a| key.ends_with(&a.target_key_id)));
}

#[tokio::test]
async fn aliases_survive_a_restart() {
    let sidecar = Sidecar::start();
    let key = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    create_alias(&sidecar, "alias/durable", &key).await;
    let before = list_aliases(&sidecar, "").await;
    let sidecar = sidecar.restart();
    assert_eq!(list_aliases(&sidecar, "").await, before);
    assert_eq!(describe(&sidecar, "alias/durable").await.arn, key);
}
