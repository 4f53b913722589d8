#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Verification speed: a key policy near KMS's 32 KB limit, with many statements, verified
//! for each profile (parse, grammar checks, every required request and the probes).
//! Run: `cargo bench --bench verify`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use inspector_keyd::verify::{self, Input, KeyMetadata, Profile};
use serde_json::{Value, json};

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "111122223333";
const PRINCIPAL: &str = "arn:aws:iam::111122223333:role/inspector-keyd";

/// A policy of about 32 KB: the profile's statements after many unrelated ones with
/// conditions, so every request scans them all.
fn large_key_policy(profile: Profile) -> String {
    let rendered: Value =
        serde_json::from_str(&verify::render(profile, REGION, ACCOUNT, PRINCIPAL, None).unwrap())
            .unwrap();
    let mut statements: Vec<Value> = Vec::new();
    let mut i = 0;
    loop {
        statements.push(json!({
            "Sid": format!("Team{i}ReadOnly"),
            "Effect": if i % 7 == 0 { "Deny" } else { "Allow" },
            "Principal": {"AWS": [format!("arn:aws:iam::{ACCOUNT}:role/team-{i}"), format!("arn:aws:iam::{ACCOUNT}:role/team-{i}-ci")]},
            "Action": ["kms:Decrypt", "kms:DescribeKey", format!("kms:Get*{i}")],
            "Resource": "*",
            "Condition": {
                "StringEquals": {"kms:CallerAccount": ACCOUNT, "kms:ViaService": [format!("s3.{REGION}.amazonaws.com"), format!("ec2.{REGION}.amazonaws.com")]},
                "ArnLike": {"aws:PrincipalArn": format!("arn:aws:iam::{ACCOUNT}:role/team-{i}*")},
                "Bool": {"aws:SecureTransport": "true"}
            }
        }));
        let mut all = statements.clone();
        all.extend(rendered["Statement"].as_array().unwrap().iter().cloned());
        let text =
            serde_json::to_string_pretty(&json!({"Version": "2012-10-17", "Statement": all}))
                .unwrap();
        if text.len() > 31_000 {
            return text;
        }
        i += 1;
    }
}

fn key() -> KeyMetadata {
    KeyMetadata {
        aws_account_id: ACCOUNT.into(),
        key_id: "1234abcd-12ab-34cd-56ef-1234567890ab".into(),
        arn: format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
        enabled: true,
        key_usage: "ENCRYPT_DECRYPT".into(),
        key_state: "Enabled".into(),
        key_manager: "CUSTOMER".into(),
        key_spec: "SYMMETRIC_DEFAULT".into(),
        ..KeyMetadata::default()
    }
}

fn bench(c: &mut Criterion) {
    let key = key();
    for profile in Profile::ALL {
        let (key_policy, identity) = match profile {
            // The grant profile's statements live in the identity policy; make that one big.
            Profile::CodeguruGrants => (
                verify::render(Profile::AmazonQLambda, REGION, ACCOUNT, PRINCIPAL, None).unwrap(),
                vec![large_identity_policy()],
            ),
            _ => (large_key_policy(profile), vec![]),
        };
        let input = Input {
            profile,
            region: REGION,
            account_id: ACCOUNT,
            principal_arn: PRINCIPAL,
            key_metadata: Some(&key),
            key_policy: &key_policy,
            identity_policies: &identity,
        };
        let report = verify::verify(&input);
        assert!(report.passed, "{profile:?}: {:#?}", report.findings);
        let size = key_policy.len() + identity.iter().map(String::len).sum::<usize>();
        c.bench_function(
            &format!("verify {} ({size} bytes of policy)", profile.name()),
            |b| b.iter(|| verify::verify(black_box(&input))),
        );
    }
}

fn large_identity_policy() -> String {
    let rendered: Value = serde_json::from_str(
        &verify::render(Profile::CodeguruGrants, REGION, ACCOUNT, PRINCIPAL, None).unwrap(),
    )
    .unwrap();
    let mut statements: Vec<Value> = Vec::new();
    let mut i = 0;
    loop {
        statements.push(json!({
            "Sid": format!("Bucket{i}Access"),
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "kms:Decrypt"],
            "Resource": [format!("arn:aws:s3:::bucket-{i}/*"), format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/other-{i}")],
            "Condition": {"StringEquals": {"kms:ViaService": format!("s3.{REGION}.amazonaws.com")}}
        }));
        let mut all = statements.clone();
        all.extend(rendered["Statement"].as_array().unwrap().iter().cloned());
        let text =
            serde_json::to_string_pretty(&json!({"Version": "2012-10-17", "Statement": all}))
                .unwrap();
        if text.len() > 31_000 {
            return text;
        }
        i += 1;
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
