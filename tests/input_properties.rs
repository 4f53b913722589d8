//! Property tests of the other entry points hostile or careless input reaches (the policy
//! parser and evaluator have theirs in `properties.rs`): the configuration parser, with its
//! environment overrides, and request validation. They never panic; a refusal names what is
//! wrong; what they accept is well-formed. The fuzz targets (`fuzz/`) drive the same
//! functions for longer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use inspector_keyd::{
    config::Settings,
    domain::{self, KeyArn},
    proto,
    service::validation::{self, FieldViolation},
    verify::Profile,
};
use proptest::prelude::*;

/// Keys the configuration knows, and some it does not.
fn config_key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "backend",
        "region",
        "account_id",
        "state_dir",
        "shutdown_timeout_secs",
        "listen.tcp",
        "listen.unix_socket",
        "listen.unix_socket_mode",
        "cache.key_ttl",
        "cache.max_stale",
        "cache.aws_owned_ttl",
        "authz.loopback_anonymous_role",
        "authz.reload_interval",
        "tls.listen",
        "tls.client_ca_files",
        "ops.metrics_listen",
        "ops.health_listen",
        "ops.max_concurrent_rpcs",
        "ops.max_streams_per_connection",
        "ops.rpc_timeout",
        "aws.max_attempts",
        "aws.kms_endpoint",
        "aws.iam_endpoint",
        "verification.permissions_boundary_file",
        "verification.principal_arn",
        "verification.lambda_profile",
        "verification.deny_external_access",
        "verification.trusted_accounts",
        "verification.organization_id",
        "local.fault_file",
        "nonsense",
        "cache.nonsense",
    ])
    .prop_map(str::to_owned)
}

/// TOML values of every type, including ones no key takes.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        "[a-z0-9:./ -]{0,24}".prop_map(|s| format!("{s:?}")),
        prop::sample::select(vec![
            "\"local\"",
            "\"aws\"",
            "\"us-east-1\"",
            "\"123456789012\"",
            "[\"444455556666\"]",
            "\"o-a1b2c3d4e5\"",
            "\"127.0.0.1:0\"",
            "\"0.0.0.0:8086\"",
            "\"https://kms.example.com\"",
            "\"http://127.0.0.1:4566\"",
            "\"http://kms.example.com\"",
            "\"10s\"",
            "\"0s\"",
            "\"0660\"",
            "\"999\"",
            "true",
            "1.5",
            "[]",
            "[\"a\", 1]",
            "{ x = 1 }",
        ])
        .prop_map(str::to_owned),
    ]
}

fn config_text() -> impl Strategy<Value = String> {
    prop::collection::vec((config_key(), toml_value()), 0..8).prop_map(|entries| {
        entries
            .into_iter()
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect()
    })
}

fn violations_name_fields(violations: &[FieldViolation], fields: &[&str]) -> bool {
    !violations.is_empty()
        && violations
            .iter()
            .all(|v| fields.contains(&v.field) && !v.description.is_empty())
}

fn key_id() -> impl Strategy<Value = String> {
    prop_oneof![
        // Near-ARNs: a valid shape with any part disturbed.
        (
            prop::sample::select(vec!["aws", "aws-cn", "aws-us-gov", "aws-x", ""]),
            "[a-z0-9-]{0,16}",
            "[0-9]{0,13}",
            prop::sample::select(vec!["key/", "alias/", "key", "keys/", ""]),
            "[0-9a-f-]{0,40}|mrk-[0-9a-f]{0,34}",
        )
            .prop_map(|(partition, region, account, kind, id)| {
                format!("arn:{partition}:kms:{region}:{account}:{kind}{id}")
            }),
        any::<String>(),
        Just(String::new()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_config_parser_never_panics_and_names_what_it_refuses(
        text in config_text(),
        overrides in prop::collection::vec(("[A-Z_]{1,24}", "[ -~]{0,16}"), 0..3),
    ) {
        let env = overrides
            .into_iter()
            .map(|(k, v)| (format!("INSPECTOR_KEYD_{k}"), v));
        match Settings::parse(Some((&text, Path::new("fuzz.toml"))), env) {
            Ok(settings) => {
                // Accepted means usable: there is a listener to serve on.
                let listeners = &settings.listeners;
                prop_assert!(
                    listeners.unix_socket.is_some() || listeners.tcp.is_some() || listeners.tls.is_some()
                );
                // Who is trusted is well formed.
                let verification = &settings.config.verification;
                prop_assert!(verification.trusted_accounts.iter().all(|a| domain::is_account_id(a)));
                prop_assert!(verification.organization_id.as_deref().is_none_or(domain::is_organization_id));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn arbitrary_config_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = Settings::parse(Some((&text, Path::new("fuzz.toml"))), std::iter::empty());
    }

    #[test]
    fn update_requests_are_accepted_only_when_well_formed(
        kms_key_id in key_id(),
        scan_type in -2i32..4,
        resource_type in -2i32..5,
    ) {
        let request = proto::UpdateEncryptionKeyRequest { kms_key_id, scan_type, resource_type, ..Default::default() };
        match validation::update_request(&request) {
            Ok((key, _target)) => {
                // Only a key ARN gets through, and it is the ARN that was sent.
                prop_assert_eq!(key.as_str(), request.kms_key_id.as_str());
                prop_assert!(KeyArn::parse(key.as_str()).is_ok());
                prop_assert!(request.kms_key_id.starts_with("arn:"));
            }
            Err(violations) => prop_assert!(violations_name_fields(
                &violations,
                &["kms_key_id", "scan_type", "resource_type"],
            )),
        }
    }

    #[test]
    fn verify_requests_never_panic_and_name_the_field(
        profile in prop_oneof![Just(String::new()), "[a-z-]{0,30}".prop_map(|s| s)],
        scan_type in -1i32..3,
        resource_type in -1i32..4,
        kms_key_id in prop::option::of(key_id()),
        principal_arn in prop_oneof![Just(String::new()), any::<String>()],
    ) {
        let request = proto::VerifyKeyPolicyRequest {
            profile,
            scan_type,
            resource_type,
            key: kms_key_id.map(proto::verify_key_policy_request::Key::KmsKeyId),
            identity_policies: Vec::new(),
            principal_arn,
            ..Default::default()
        };
        if let Err(violations) = validation::verify_request(&request, |_| Profile::CodeguruGrants) {
            prop_assert!(violations_name_fields(
                &violations,
                &["profile", "scan_type", "resource_type", "kms_key_id", "inline_key.key_metadata_json", "principal_arn"],
            ), "{:?}", violations);
        }
    }
}
