//! The fuzz targets' entry points in the normal suite: every input a fuzzer kept
//! (`fuzz/regressions/<target>/`, written by `scripts/fuzz.sh`) is replayed, and so are the
//! conformance corpus's policies and the configs under deploy/, through the same checks the
//! fuzzers run (a failed verification says why, the access summary's entries hold up and a
//! policy's access diff against itself is empty, merging is idempotent, an accepted config
//! has usable listeners).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../fuzz/entry_points.rs"]
mod entry_points;

use std::path::{Path, PathBuf};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path, extension: Option<&str>) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && extension.is_none_or(|x| p.extension().is_some_and(|e| e == x)))
        .collect();
    files.sort();
    files
}

#[test]
fn every_kept_fuzz_input_runs_clean() {
    type EntryPoint = fn(&[u8]);
    let targets: [(&str, EntryPoint); 4] = [
        ("policy", entry_points::policy),
        ("config", entry_points::config),
        ("requests", entry_points::requests),
        ("aws_request", entry_points::aws_request),
    ];
    for (target, run) in targets {
        for file in files(&repo().join("fuzz/regressions").join(target), None) {
            println!("{target}: {}", file.display());
            run(&std::fs::read(&file).unwrap());
        }
    }
}

#[test]
fn the_conformance_policies_pass_the_fuzz_checks() {
    let profiles = [
        "codeguru-grants",
        "amazon-q-lambda",
        "amazon-q-code-repository",
    ];
    let mut inputs = 0;
    for file in files(&repo().join("tests/conformance"), Some("json")) {
        let cases: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for case in cases {
            let text = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            // Every case under every profile: the checks hold whatever the profile. The
            // access analyses the profile does not change (a second summary, the diff) run
            // once a case.
            for selector in 0..profiles.len() as u8 {
                let mut input = vec![selector];
                input.extend(text(&case["key_policy"]).into_bytes());
                if let Some(identity) = case["identity_policies"].get(0) {
                    input.push(0);
                    input.extend(text(identity).into_bytes());
                }
                entry_points::policy_checks(&input, selector == 0);
                inputs += 1;
            }
        }
    }
    assert!(inputs > 500, "{inputs}");
}

#[test]
fn the_deploy_configs_pass_the_fuzz_checks() {
    let mut configs = 0;
    for dir in [
        "deploy/k8s/base",
        "deploy/k8s/overlays/aws",
        "deploy/k8s/overlays/mtls",
    ] {
        for file in files(&repo().join(dir), Some("toml")) {
            entry_points::config(&std::fs::read(&file).unwrap());
            configs += 1;
        }
    }
    assert!(configs >= 5);
}

/// The AWS-protocol door's fuzz checks on requests shaped as the SDKs send them: every
/// operation, with and without query, headers and body.
#[test]
fn sdk_shaped_requests_pass_the_door_fuzz_checks() {
    let cases: [(u8, &str, &str, &str); 6] = [
        (
            0,
            "/encryptionkey/get?scanType=CODE&resourceType=AWS_LAMBDA_FUNCTION",
            "content-type: application/json\nx-amz-user-agent: aws-sdk-rust",
            "",
        ),
        (
            1,
            "/encryptionkey/update",
            "content-type: application/json",
            r#"{"kmsKeyId":"arn:aws:kms:us-east-1:111122223333:key/0f2b1f8e-7a3d-4f0c-9d5e-3c1b2a4d5e6f","scanType":"CODE","resourceType":"AWS_LAMBDA_FUNCTION"}"#,
        ),
        (
            1,
            "/encryptionkey/reset",
            "content-type: application/json\nx-amz-content-sha256: 0",
            r#"{"scanType":"CODE","resourceType":"CODE_REPOSITORY"}"#,
        ),
        (
            2,
            "/codesnippet/batchget",
            "content-type: application/json\naccept: */*\naccept: text/plain",
            r#"{"findingArns":["arn:aws:inspector2:us-east-1:111122223333:finding/0123456789abcdef0123456789abcdef"]}"#,
        ),
        (
            2,
            "/findings/list?a=%20b&a=c+d",
            "x-custom:   spaced   value  ",
            "{}",
        ),
        (3, "/tags/arn%3Aaws%3Ainspector2", "", ""),
    ];
    for (selector, target, headers, body) in cases {
        let mut input = vec![selector];
        input.extend(target.as_bytes());
        input.push(0);
        input.extend(headers.as_bytes());
        input.push(0);
        input.extend(body.as_bytes());
        entry_points::aws_request(&input);
    }
}
