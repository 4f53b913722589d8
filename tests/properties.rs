//! Property tests of the verification library: what `render` produces, `verify` accepts,
//! for any Region, account and principal; rendering is idempotent and keeps other
//! statements; and no input (arbitrary bytes, arbitrary JSON, policy-shaped noise) panics
//! the parser or the evaluator.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use inspector_keyd::verify::{
    self, Input, KeyMetadata, Profile, profile::account_delegation_statement,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn region() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("us-east-1".to_owned()),
        Just("eu-central-2".to_owned()),
        Just("cn-north-1".to_owned()),
        Just("us-gov-west-1".to_owned()),
        "[a-z]{2}-[a-z]{4,10}-[1-9]",
    ]
}

fn account() -> impl Strategy<Value = String> {
    "[0-9]{12}"
}

fn principal(account: String, region: &str) -> impl Strategy<Value = String> + use<> {
    let partition = inspector_keyd::domain::partition_of(region);
    ("(role|user)", "[A-Za-z0-9+=,.@_-]{1,40}")
        .prop_map(move |(kind, name)| format!("arn:{partition}:iam::{account}:{kind}/{name}"))
}

fn params() -> impl Strategy<Value = (String, String, String)> {
    (region(), account()).prop_flat_map(|(region, account)| {
        let principals = principal(account.clone(), &region);
        (Just(region), Just(account), principals)
    })
}

fn profile() -> impl Strategy<Value = Profile> {
    prop::sample::select(Profile::ALL.to_vec())
}

fn key_for(region: &str, account: &str) -> KeyMetadata {
    let partition = inspector_keyd::domain::partition_of(region);
    KeyMetadata {
        aws_account_id: account.to_owned(),
        key_id: "1234abcd-12ab-34cd-56ef-1234567890ab".into(),
        arn: format!(
            "arn:{partition}:kms:{region}:{account}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        ),
        enabled: true,
        key_usage: "ENCRYPT_DECRYPT".into(),
        key_state: "Enabled".into(),
        origin: "AWS_KMS".into(),
        key_manager: "CUSTOMER".into(),
        key_spec: "SYMMETRIC_DEFAULT".into(),
        ..KeyMetadata::default()
    }
}

/// Verifies a rendered policy where it belongs: the key policy for the Amazon Q profiles;
/// for the grant profile, the identity policy beside the default key policy.
fn verify_rendered(
    profile: Profile,
    region: &str,
    account: &str,
    principal: &str,
    rendered: &str,
) -> verify::Report {
    let key = key_for(region, account);
    let default_key_policy = json!({"Version": "2012-10-17", "Statement": [account_delegation_statement(region, account)]}).to_string();
    let (key_policy, identity) = match profile {
        Profile::CodeguruGrants => (default_key_policy, vec![rendered.to_owned()]),
        _ => (rendered.to_owned(), vec![]),
    };
    verify::verify(&Input {
        profile,
        region,
        account_id: account,
        principal_arn: principal,
        key_metadata: Some(&key),
        key_policy: &key_policy,
        identity_policies: &identity,
        identity_policies_complete: false,
        permissions_boundary: None,
        trust: verify::access::Trust::default(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 200,
        // Failures are reported with their minimal input; nothing is written into the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn render_then_verify_passes((region, account, principal) in params(), profile in profile()) {
        let rendered = verify::render(profile, &region, &account, &principal, None).unwrap();
        let report = verify_rendered(profile, &region, &account, &principal, &rendered);
        prop_assert!(report.passed, "{rendered}\n{:#?}", report.findings);
        prop_assert!(
            report.findings.iter().all(|f| f.severity == verify::Severity::Warning),
            "{:#?}", report.findings
        );
    }

    #[test]
    fn merging_is_idempotent_and_keeps_other_statements(
        (region, account, principal) in params(),
        profile in profile(),
        sids in prop::collection::vec("[A-Za-z0-9]{1,20}", 0..5),
    ) {
        let others: Vec<Value> = sids
            .iter()
            .enumerate()
            .map(|(i, sid)| {
                let mut statement = json!({"Sid": format!("Keep{i}{sid}"), "Effect": "Allow", "Action": "kms:DescribeKey", "Resource": "*"});
                // Identity policies name no principal; key policy statements must.
                if profile != Profile::CodeguruGrants {
                    statement["Principal"] = json!({"AWS": format!("arn:aws:iam::{account}:role/admin{i}")});
                }
                statement
            })
            .collect();
        let existing = json!({"Version": "2012-10-17", "Id": "mine", "Statement": others}).to_string();
        let once = verify::render(profile, &region, &account, &principal, Some(&existing)).unwrap();
        let twice = verify::render(profile, &region, &account, &principal, Some(&once)).unwrap();
        prop_assert_eq!(&once, &twice);
        let merged: Value = serde_json::from_str(&once).unwrap();
        let merged_sids: Vec<&str> = merged["Statement"].as_array().unwrap().iter().filter_map(|s| s["Sid"].as_str()).collect();
        let kept: Vec<&str> = merged_sids.iter().copied().filter(|s| s.starts_with("Keep")).collect();
        let expected: Vec<String> = sids.iter().enumerate().map(|(i, sid)| format!("Keep{i}{sid}")).collect();
        prop_assert_eq!(kept, expected.iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert_eq!(&merged["Id"], "mine");
        let report = verify_rendered(profile, &region, &account, &principal, &once);
        prop_assert!(report.passed, "{once}\n{:#?}", report.findings);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), profile in profile()) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let report = verify::verify(&Input {
            profile,
            region: "us-east-1",
            account_id: "111122223333",
            principal_arn: "arn:aws:iam::111122223333:role/x",
            key_metadata: None,
            key_policy: &text,
            identity_policies: std::slice::from_ref(&text),
            identity_policies_complete: true,
            permissions_boundary: Some(&text),
            trust: verify::access::Trust::default(),
        });
        prop_assert!(!report.passed);
        let _ = verify::parse_describe_key(&text);
    }

    #[test]
    fn arbitrary_json_never_panics(value in json_value(), profile in profile()) {
        let text = value.to_string();
        let report = verify::verify(&Input {
            profile,
            region: "us-east-1",
            account_id: "111122223333",
            principal_arn: "arn:aws:iam::111122223333:role/x",
            key_metadata: None,
            key_policy: &text,
            identity_policies: std::slice::from_ref(&text),
            identity_policies_complete: true,
            permissions_boundary: Some(&text),
            trust: verify::access::Trust::default(),
        });
        prop_assert!(!report.profile.is_empty());
    }

    #[test]
    fn policy_shaped_noise_never_panics(statements in prop::collection::vec(statement(), 0..8), profile in profile()) {
        let text = json!({"Version": "2012-10-17", "Statement": statements}).to_string();
        let key = key_for("us-east-1", "111122223333");
        let report = verify::verify(&Input {
            profile,
            region: "us-east-1",
            account_id: "111122223333",
            principal_arn: "arn:aws:iam::111122223333:role/inspector-keyd",
            key_metadata: Some(&key),
            key_policy: &text,
            identity_policies: std::slice::from_ref(&text),
            identity_policies_complete: true,
            permissions_boundary: Some(&text),
            trust: verify::access::Trust::default(),
        });
        prop_assert_eq!(report.passed, report.findings.iter().all(|f| f.severity != verify::Severity::Error));
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[ -~]{0,20}".prop_map(Value::String),
        prop::sample::select(vec![
            "*",
            "kms:*",
            "Allow",
            "Deny",
            "2012-10-17",
            "StringEquals",
            "kms:ViaService"
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((element_name(), inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

fn element_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "Version",
            "Statement",
            "Sid",
            "Effect",
            "Principal",
            "NotPrincipal",
            "AWS",
            "Service",
            "Action",
            "NotAction",
            "Resource",
            "NotResource",
            "Condition",
            "StringEquals",
            "ForAllValues:StringEquals",
            "ForAnyValue:StringLike",
            "StringNotEqualsIfExists",
            "Null",
            "Bool",
            "ArnLike",
            "kms:ViaService",
            "kms:GrantOperations",
        ])
        .prop_map(str::to_owned),
        "[A-Za-z:]{1,12}",
    ]
}

fn string_or_list(options: Vec<&'static str>) -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(options.clone()).prop_map(|s| json!(s)),
        prop::collection::vec(prop::sample::select(options), 0..4).prop_map(|v| json!(v)),
    ]
}

fn statement() -> impl Strategy<Value = Value> {
    let effect = prop::sample::select(vec!["Allow", "Deny", "allow"]);
    let principal = prop_oneof![
        Just(json!("*")),
        Just(json!({"AWS": "arn:aws:iam::111122223333:root"})),
        Just(json!({"AWS": ["111122223333", "arn:aws:iam::111122223333:role/inspector-keyd"]})),
        Just(json!({"Service": "q.amazonaws.com"})),
        Just(json!(42)),
    ];
    let action = string_or_list(vec![
        "kms:*",
        "kms:Decrypt",
        "KMS:encrypt",
        "kms:Generate*",
        "kms:CreateGrant",
        "kms:?escribeKey",
        "s3:*",
    ]);
    let resource = string_or_list(vec![
        "*",
        "arn:aws:kms:*:111122223333:key/*",
        "arn:aws:kms:us-east-1:111122223333:key/other",
    ]);
    let operator = prop::sample::select(vec![
        "StringEquals",
        "StringNotEquals",
        "StringLike",
        "ForAllValues:StringEquals",
        "ForAnyValue:StringEquals",
        "ForAllValues:StringNotEquals",
        "StringEqualsIfExists",
        "ArnLike",
        "Bool",
        "Null",
        "NumericLessThan",
        "StringEqual",
    ]);
    let key = prop::sample::select(vec![
        "kms:ViaService",
        "kms:GrantOperations",
        "aws:SourceAccount",
        "KMS:CALLERACCOUNT",
        "aws:PrincipalArn",
        "kms:EncryptionContext:aws:qdeveloper:codesecurity-scope",
    ]);
    let value = string_or_list(vec![
        "inspector2.us-east-1.amazonaws.com",
        "codeguru-security.us-east-1.amazonaws.com",
        "111122223333",
        "Decrypt",
        "Encrypt",
        "true",
        "*",
        "arn:aws:*",
    ]);
    let condition = prop::collection::vec((operator, key, value), 0..3);
    (
        effect,
        prop::option::of(principal),
        any::<bool>(),
        action,
        any::<bool>(),
        resource,
        condition,
    )
        .prop_map(
            |(effect, principal, not_action, action, not_resource, resource, condition)| {
                let mut statement = serde_json::Map::new();
                statement.insert("Effect".into(), json!(effect));
                if let Some(principal) = principal {
                    statement.insert("Principal".into(), principal);
                }
                statement.insert(
                    if not_action { "NotAction" } else { "Action" }.into(),
                    action,
                );
                statement.insert(
                    if not_resource {
                        "NotResource"
                    } else {
                        "Resource"
                    }
                    .into(),
                    resource,
                );
                if !condition.is_empty() {
                    let mut block = serde_json::Map::new();
                    for (operator, key, value) in condition {
                        let entry = block
                            .entry(operator.to_owned())
                            .or_insert_with(|| json!({}));
                        entry[key] = value;
                    }
                    statement.insert("Condition".into(), Value::Object(block));
                }
                Value::Object(statement)
            },
        )
}
